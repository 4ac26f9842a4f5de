//! From accept to ReadyForQuery: protocol negotiation, authentication, the
//! database check and the first ParameterStatus burst.

use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::app::App;
use crate::auth::client::{authenticate, AuthError};
use crate::pool::PoolGroup;
use crate::protocol::messages::{self, sqlstate, Severity};
use crate::protocol::startup::{read_startup_packet, StartupError, StartupPacket};
use crate::server::params::{is_startup_only, parse_options};
use crate::server::ParamMap;

/// A client that has logged in.
pub struct LoggedIn {
    pub user: String,
    pub database: String,
    pub pools: Arc<PoolGroup>,
    /// Parameters the client asked for (startup packet and `options`).
    pub wanted: ParamMap,
    /// Parameters the client has been told (ParameterStatus).
    pub reported: ParamMap,
    /// Bytes the client sent after its login messages.
    pub rbuf: BytesMut,
    /// AuthenticationOk and the ParameterStatus burst, not yet sent: the
    /// session adds BackendKeyData and ReadyForQuery and writes them at once.
    pub greeting: BytesMut,
}

/// A client of the admin console.
pub struct AdminLogin {
    pub user: String,
    /// `stats_users` only: SHOW, nothing else.
    pub read_only: bool,
    pub rbuf: BytesMut,
    pub greeting: BytesMut,
}

/// Where a login leads.
pub enum Login {
    Pooled(LoggedIn),
    Admin(AdminLogin),
}

/// The virtual databases of the admin console.
pub fn is_admin_database(app: &App, name: &str) -> bool {
    (name == "pgbouncer" || name == "sluice") && !app.config().databases.contains_key(name)
}

/// How a login ended without a session.
#[derive(Debug)]
pub enum LoginEnd {
    /// A CancelRequest was handled; close quietly.
    Cancel,
    /// The client went away or was refused; the reason is for the log.
    Refused(String),
}

async fn refuse(stream: &mut TcpStream, code: &str, message: &str) -> LoginEnd {
    let mut out = BytesMut::new();
    messages::error(&mut out, Severity::Fatal, code, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    LoginEnd::Refused(format!("{code}: {message}"))
}

/// Runs the login. The caller applies client_login_timeout around it.
pub async fn login(
    app: &Arc<App>,
    stream: &mut TcpStream,
    admitted: bool,
) -> Result<Login, LoginEnd> {
    let (minor, params, protocol_options) = loop {
        match read_startup_packet(stream).await {
            Ok(StartupPacket::SslRequest) | Ok(StartupPacket::GssEncRequest) => {
                // No TLS or GSS encryption yet: the client may go on in clear.
                stream
                    .write_all(b"N")
                    .await
                    .map_err(|e| LoginEnd::Refused(e.to_string()))?;
            }
            Ok(StartupPacket::Cancel { pid, secret }) => {
                if app.cancels.matches(pid, secret) {
                    if let Some(client) = app.clients.get(pid) {
                        client.request_cancel();
                    }
                }
                return Err(LoginEnd::Cancel);
            }
            Ok(StartupPacket::Unsupported { major, minor }) => {
                let msg = format!(
                    "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
                );
                return Err(refuse(stream, sqlstate::PROTOCOL_VIOLATION, &msg).await);
            }
            Ok(StartupPacket::Startup {
                minor,
                params,
                protocol_options,
            }) => break (minor, params, protocol_options),
            Err(StartupError::Closed) => {
                return Err(LoginEnd::Refused("closed before startup".into()))
            }
            Err(StartupError::Io(e)) => return Err(LoginEnd::Refused(e.to_string())),
            Err(e) => {
                return Err(refuse(stream, sqlstate::PROTOCOL_VIOLATION, &e.to_string()).await)
            }
        }
    };
    if !admitted {
        return Err(refuse(
            stream,
            sqlstate::TOO_MANY_CONNECTIONS,
            "no more connections allowed (max_client_conn)",
        )
        .await);
    }
    let mut out = BytesMut::new();
    if minor > 0 || !protocol_options.is_empty() {
        messages::negotiate_protocol_version(&mut out, protocol_options);
        stream
            .write_all(&out)
            .await
            .map_err(|e| LoginEnd::Refused(e.to_string()))?;
        out.clear();
    }

    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(user) = get("user").filter(|u| !u.is_empty()) else {
        return Err(refuse(
            stream,
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        )
        .await);
    };
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if get("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        return Err(refuse(
            stream,
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported through sluice",
        )
        .await);
    }

    let mut rbuf = BytesMut::with_capacity(8192);
    let cfg = app.config();
    let creds = app.credentials(&user);
    match authenticate(stream, &mut rbuf, &user, creds.as_ref(), cfg.auth.auth_type).await {
        Ok(_) => {}
        Err(AuthError::Failed(reason)) => {
            tracing::warn!(client = ?stream.peer_addr().ok(), %user, %database, "login failed: {reason}");
            let msg = format!("password authentication failed for user \"{user}\"");
            return Err(refuse(stream, sqlstate::INVALID_PASSWORD, &msg).await);
        }
        Err(AuthError::Protocol(reason)) => {
            return Err(refuse(stream, sqlstate::PROTOCOL_VIOLATION, &reason).await);
        }
        Err(e) => return Err(LoginEnd::Refused(e.to_string())),
    }
    messages::auth_ok(&mut out);

    if is_admin_database(app, &database) {
        let full = cfg.pooler.admin_users.contains(&user);
        if !full && !cfg.pooler.stats_users.contains(&user) {
            stream.write_all(&out).await.ok();
            let msg =
                format!("permission denied: \"{user}\" is in neither admin_users nor stats_users");
            return Err(refuse(stream, sqlstate::INSUFFICIENT_PRIVILEGE, &msg).await);
        }
        let app_name = get("application_name").unwrap_or_default();
        for (name, value) in crate::admin::parameters(&app_name) {
            messages::parameter_status(&mut out, name, &value);
        }
        return Ok(Login::Admin(AdminLogin {
            user,
            read_only: !full,
            rbuf,
            greeting: out,
        }));
    }

    let Some(pools) = app.pools.get_or_create(&cfg, &database, &user) else {
        stream.write_all(&out).await.ok();
        let msg = format!("database \"{database}\" does not exist");
        return Err(refuse(stream, sqlstate::INVALID_CATALOG_NAME, &msg).await);
    };

    let mut wanted = ParamMap::new();
    for (name, value) in &params {
        if name == "options" {
            match parse_options(value) {
                Ok(settings) => settings.iter().for_each(|(n, v)| wanted.set(n, v, false)),
                Err(e) => {
                    stream.write_all(&out).await.ok();
                    let msg = format!("invalid options: {e}");
                    return Err(refuse(stream, sqlstate::PROTOCOL_VIOLATION, &msg).await);
                }
            }
        } else if !is_startup_only(name) {
            wanted.set(name, value, false);
        }
    }

    // The first client of a pool waits for one server to learn what a server
    // reports at login (server_version, encodings...).
    let pool = &pools.primary;
    let defaults = match pool.defaults() {
        Some(d) => d,
        None => match pool.checkout(std::time::Instant::now()).await {
            Ok((server, _)) => {
                let d = server.defaults.clone();
                pool.release(server);
                d
            }
            Err(e) => {
                stream.write_all(&out).await.ok();
                tracing::warn!(client = ?stream.peer_addr().ok(), %user, %database, "cannot reach the server: {e}");
                let msg = format!("server login failed: {e}");
                return Err(refuse(stream, sqlstate::CANNOT_CONNECT_NOW, &msg).await);
            }
        },
    };
    let mut reported = defaults.clone();
    for (name, value) in wanted.iter() {
        reported.set(name, &normalize(name, value), false);
    }
    for (name, value) in reported.iter() {
        messages::parameter_status(&mut out, name, value);
    }
    Ok(Login::Pooled(LoggedIn {
        user,
        database,
        pools,
        wanted,
        reported,
        rbuf,
        greeting: out,
    }))
}

/// Spellings PostgreSQL reports for the values clients most often send, so
/// the first ParameterStatus already matches what the server will say.
fn normalize(name: &str, value: &str) -> String {
    if name.eq_ignore_ascii_case("client_encoding") {
        let v = value.to_ascii_uppercase().replace(['-', '_'], "");
        return if v == "UNICODE" { "UTF8".into() } else { v };
    }
    value.to_string()
}
