//! The admin console: the virtual database `pgbouncer` (or `sluice`), spoken
//! to with the simple query protocol, as PgBouncer's is. `admin_users` may
//! run every command; `stats_users` only SHOW.

pub mod show;
pub mod table;

use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::app::App;
use crate::client::login::AdminLogin;
use crate::protocol::messages::{self, sqlstate, Severity};
use crate::protocol::{read_message, tag, ReadError};

/// Largest query the console reads.
const MAX_QUERY: usize = 64 * 1024;

/// The ParameterStatus values the console reports at login: enough for psql
/// and the drivers to go on (psql reads server_version).
pub fn parameters(application_name: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "server_version",
            format!("15.0 ({})", show::version_string()),
        ),
        ("server_encoding", "UTF8".into()),
        ("client_encoding", "UTF8".into()),
        ("DateStyle", "ISO, MDY".into()),
        ("TimeZone", "UTC".into()),
        ("integer_datetimes", "on".into()),
        ("standard_conforming_strings", "on".into()),
        ("application_name", application_name.to_string()),
    ]
}

/// Serves one console client until it leaves.
pub async fn serve(app: Arc<App>, mut stream: TcpStream, peer: SocketAddr, mut login: AdminLogin) {
    let mut out = std::mem::take(&mut login.greeting);
    // Cancel keys of the console are never honoured; any values do.
    messages::backend_key_data(&mut out, 0, 0);
    messages::ready_for_query(&mut out, b'I');
    if stream.write_all(&out).await.is_err() {
        return;
    }
    tracing::info!(client = %peer, user = %login.user, "admin console login");
    app.admin_sessions.fetch_add(1, Ordering::Relaxed);
    serve_commands(&app, &mut stream, login).await;
    app.admin_sessions.fetch_sub(1, Ordering::Relaxed);
}

async fn serve_commands(app: &Arc<App>, stream: &mut TcpStream, login: AdminLogin) {
    let mut out = BytesMut::new();
    let mut rbuf = login.rbuf;
    // After an extended-protocol message: skip to Sync, as a server does.
    let mut skipping = false;
    loop {
        let (t, body) = match read_message(stream, &mut rbuf, MAX_QUERY).await {
            Ok(m) => m,
            Err(ReadError::Frame(e)) => {
                out.clear();
                messages::error(
                    &mut out,
                    Severity::Fatal,
                    sqlstate::PROTOCOL_VIOLATION,
                    &e.to_string(),
                );
                let _ = stream.write_all(&out).await;
                return;
            }
            Err(_) => return,
        };
        out.clear();
        match t {
            tag::TERMINATE => return,
            tag::QUERY => {
                let sql = body.strip_suffix(b"\0").unwrap_or(&body);
                let sql = String::from_utf8_lossy(sql).into_owned();
                let end = run(app, &login.user, login.read_only, &sql, &mut out).await;
                messages::ready_for_query(&mut out, b'I');
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                if end == End::Close {
                    return;
                }
            }
            tag::SYNC => {
                skipping = false;
                messages::ready_for_query(&mut out, b'I');
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
            tag::FLUSH => {}
            _ if skipping => {}
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE => {
                skipping = true;
                messages::error(
                    &mut out,
                    Severity::Error,
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "the admin console speaks only the simple query protocol",
                );
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
            other => {
                let msg = format!("invalid frontend message type {other}");
                messages::error(
                    &mut out,
                    Severity::Fatal,
                    sqlstate::PROTOCOL_VIOLATION,
                    &msg,
                );
                let _ = stream.write_all(&out).await;
                return;
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    Continue,
    Close,
}

/// A parsed console command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Show(String),
    Pause(Option<String>),
    Resume(Option<String>),
    Reload,
    Kill(String),
    Reconnect(Option<String>),
    WaitClose(Option<String>),
    /// `true`: SHUTDOWN WAIT_FOR_CLIENTS (drain first).
    Shutdown(bool),
}

/// Parses one statement of the console's grammar. Names may be double
/// quoted; keywords are case-insensitive.
pub fn parse(sql: &str) -> Result<Command, String> {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let arg = |i: usize| words.get(i).map(|w| w.trim_matches('"').to_string());
    let Some(first) = words.first() else {
        return Err("empty command".into());
    };
    let n = words.len();
    let cmd = match first.to_ascii_uppercase().as_str() {
        "SHOW" if n == 2 => Command::Show(words[1].to_ascii_uppercase()),
        "PAUSE" if n <= 2 => Command::Pause(arg(1)),
        "RESUME" if n <= 2 => Command::Resume(arg(1)),
        "RELOAD" if n == 1 => Command::Reload,
        "KILL" if n == 2 => Command::Kill(arg(1).unwrap_or_default()),
        "RECONNECT" if n <= 2 => Command::Reconnect(arg(1)),
        "WAIT_CLOSE" if n <= 2 => Command::WaitClose(arg(1)),
        "SHUTDOWN" if n == 1 => Command::Shutdown(false),
        "SHUTDOWN" if n == 2 && words[1].eq_ignore_ascii_case("WAIT_FOR_CLIENTS") => {
            Command::Shutdown(true)
        }
        _ => {
            return Err(format!(
                "unknown command: {sql:?}; try SHOW {}, PAUSE [db], RESUME [db], RELOAD, \
                 KILL db, RECONNECT [db], WAIT_CLOSE [db], SHUTDOWN [WAIT_FOR_CLIENTS]",
                show::TOPICS.join("|")
            ))
        }
    };
    Ok(cmd)
}

/// Most statements in one admin console Query.
const MAX_STATEMENTS: usize = 64;

/// Runs every statement of a Query message; the first error ends it.
async fn run(app: &Arc<App>, user: &str, read_only: bool, sql: &str, out: &mut BytesMut) -> End {
    let statements: Vec<&str> = sql
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .take(MAX_STATEMENTS + 1)
        .collect();
    if statements.is_empty() {
        out.extend_from_slice(&[b'I', 0, 0, 0, 4]); // EmptyQueryResponse
        return End::Continue;
    }
    if statements.len() > MAX_STATEMENTS {
        // Each answer is built whole before it is sent.
        let msg = format!("at most {MAX_STATEMENTS} statements in one admin console query");
        messages::error(out, Severity::Error, sqlstate::PROGRAM_LIMIT_EXCEEDED, &msg);
        return End::Continue;
    }
    for text in statements {
        let cmd = match parse(text) {
            Ok(c) => c,
            Err(e) => {
                messages::error(out, Severity::Error, sqlstate::SYNTAX_ERROR, &e);
                return End::Continue;
            }
        };
        if read_only && !matches!(cmd, Command::Show(_)) {
            let msg = format!("permission denied: \"{user}\" is a stats user (SHOW only)");
            messages::error(out, Severity::Error, sqlstate::INSUFFICIENT_PRIVILEGE, &msg);
            return End::Continue;
        }
        if !matches!(cmd, Command::Show(_)) {
            tracing::info!(%user, command = %text, "admin command");
        }
        match execute(app, cmd, out).await {
            Ok(End::Continue) => {}
            Ok(End::Close) => return End::Close,
            Err((code, msg)) => {
                messages::error(out, Severity::Error, code, &msg);
                return End::Continue;
            }
        }
    }
    End::Continue
}

fn known_database(app: &App, db: &Option<String>) -> Result<(), (&'static str, String)> {
    match db {
        Some(name) if !app.config().databases.contains_key(name) => Err((
            sqlstate::INVALID_CATALOG_NAME,
            format!("no such database: {name}"),
        )),
        _ => Ok(()),
    }
}

async fn execute(
    app: &Arc<App>,
    cmd: Command,
    out: &mut BytesMut,
) -> Result<End, (&'static str, String)> {
    match cmd {
        Command::Show(topic) => {
            let table = show::show(app, &topic).ok_or_else(|| {
                (
                    sqlstate::SYNTAX_ERROR,
                    format!(
                        "unknown SHOW topic {topic}; try {}",
                        show::TOPICS.join(", ")
                    ),
                )
            })?;
            table.encode(out);
        }
        Command::Pause(db) => {
            known_database(app, &db)?;
            app.pause(db.as_deref());
            // PgBouncer's PAUSE returns once every server is released; then
            // the idle ones are closed.
            let pools: Vec<_> = app
                .pools
                .all()
                .into_iter()
                .filter(|p| db.as_ref().is_none_or(|d| &p.database == d))
                .collect();
            while pools.iter().any(|p| p.status().active > 0) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for p in &pools {
                p.close_idle();
            }
            messages::command_complete(out, "PAUSE");
        }
        Command::Resume(db) => {
            known_database(app, &db)?;
            app.resume(db.as_deref());
            messages::command_complete(out, "RESUME");
        }
        Command::Reload => match app.reload().await {
            Ok(msg) => {
                messages::notice(out, &msg);
                messages::command_complete(out, "RELOAD");
            }
            Err(e) => return Err((sqlstate::CONFIG_FILE_ERROR, format!("reload rejected: {e}"))),
        },
        Command::Kill(db) => {
            known_database(app, &Some(db.clone()))?;
            let n = app.kill(&db);
            messages::notice(
                out,
                &format!("{n} client(s) of {db} disconnected; {db} is paused until RESUME"),
            );
            messages::command_complete(out, "KILL");
        }
        Command::Reconnect(db) => {
            known_database(app, &db)?;
            for p in app.pools.all() {
                if db.as_ref().is_none_or(|d| &p.database == d) {
                    p.reconnect();
                }
            }
            messages::command_complete(out, "RECONNECT");
        }
        Command::WaitClose(db) => {
            known_database(app, &db)?;
            loop {
                let left: usize = app
                    .pools
                    .all()
                    .iter()
                    .filter(|p| db.as_ref().is_none_or(|d| &p.database == d))
                    .map(|p| p.old_connections())
                    .sum();
                if left == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            messages::command_complete(out, "WAIT_CLOSE");
        }
        Command::Shutdown(drain) => {
            app.request_shutdown(drain);
            messages::command_complete(out, "SHUTDOWN");
            return Ok(End::Close);
        }
    }
    Ok(End::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_commands() {
        assert_eq!(parse("show pools").unwrap(), Command::Show("POOLS".into()));
        assert_eq!(
            parse("SHOW   stats_totals").unwrap(),
            Command::Show("STATS_TOTALS".into())
        );
        assert_eq!(parse("PAUSE").unwrap(), Command::Pause(None));
        assert_eq!(
            parse("pause app").unwrap(),
            Command::Pause(Some("app".into()))
        );
        assert_eq!(
            parse("RESUME \"app\"").unwrap(),
            Command::Resume(Some("app".into()))
        );
        assert_eq!(parse("kill app").unwrap(), Command::Kill("app".into()));
        assert_eq!(parse("reload").unwrap(), Command::Reload);
        assert_eq!(parse("RECONNECT").unwrap(), Command::Reconnect(None));
        assert_eq!(
            parse("WAIT_CLOSE app").unwrap(),
            Command::WaitClose(Some("app".into()))
        );
        assert_eq!(parse("SHUTDOWN").unwrap(), Command::Shutdown(false));
        assert_eq!(
            parse("shutdown wait_for_clients").unwrap(),
            Command::Shutdown(true)
        );
        assert!(parse("KILL").is_err());
        assert!(parse("DROP TABLE x").is_err());
        assert!(parse("SHOW").is_err());
    }
}
