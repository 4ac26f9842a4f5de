//! Test harness: one PostgreSQL primary with two streaming replicas per test
//! binary, and sluice instances started in-process on free ports.

#![allow(dead_code)]

use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use sluice::cluster::{free_port, Cluster};

pub const APP_PASSWORD: &str = "app-pw";
pub const MD5_PASSWORD: &str = "md5-pw";

const SETUP_SQL: &str = "
CREATE ROLE app LOGIN PASSWORD 'app-pw';
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD 'md5-pw';
RESET password_encryption;
CREATE ROLE trust_user LOGIN;
CREATE DATABASE app OWNER app;
";

const APP_DB_SQL: &str = "
GRANT ALL ON SCHEMA public TO PUBLIC;
CREATE TABLE items (id bigserial PRIMARY KEY, note text);
GRANT ALL ON items, items_id_seq TO PUBLIC;
";

struct Shared {
    cluster: Cluster,
    runtime: tokio::runtime::Runtime,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("SLUICE_TEST_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
            )
            .with_test_writer()
            .try_init();
        let dir = std::env::temp_dir().join(format!(
            "sluice-test-{}-{}",
            std::process::id(),
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace("::", "-")
        ));
        let cluster = Cluster::start(&dir, 2, SETUP_SQL).expect("start PostgreSQL cluster");
        cluster
            .psql_db(cluster.primary.port, "postgres", "app", APP_DB_SQL)
            .expect("set up database app");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("pooler runtime");
        Shared { cluster, runtime }
    })
}

pub fn cluster() -> &'static Cluster {
    &shared().cluster
}

pub fn primary_port() -> u16 {
    cluster().primary.port
}

/// The config text of a pooler in front of the test cluster, with `pooler_extra`
/// lines added to `[pooler]` and `tail` appended.
pub fn config_text(port: u16, pooler_extra: &str, tail: &str) -> String {
    let c = cluster();
    let replicas: Vec<String> = c
        .replicas
        .iter()
        .map(|r| format!("\"127.0.0.1:{}\"", r.port))
        .collect();
    format!(
        r#"
[pooler]
listen = "127.0.0.1:{port}"
log_connections = false
log_disconnections = false
{pooler_extra}

[users.app]
password = "{APP_PASSWORD}"

[users.md5_user]
password = "{MD5_PASSWORD}"
auth = "md5"

[users.trust_user]
auth = "trust"

[databases.app]
primary = "127.0.0.1:{primary}"
replicas = [{replicas}]

{tail}
"#,
        primary = c.primary.port,
        replicas = replicas.join(", "),
    )
}

/// A `tail` for tests that count the primary's server connections, or that
/// read what another client just wrote (read-your-writes is per client).
pub const PRIMARY_ONLY: &str = "[routing]\nread_write_split = false";

/// Starts a pooler with `pooler_extra` in its `[pooler]` section; returns its address.
pub async fn pooler(pooler_extra: &str) -> SocketAddr {
    pooler_with(pooler_extra, "").await
}

pub async fn pooler_with(pooler_extra: &str, tail: &str) -> SocketAddr {
    let text = config_text(free_port(), pooler_extra, tail);
    let cfg = sluice::config::Config::parse(&text, "test").expect("valid test config");
    start_in_shared_runtime(cfg).await
}

/// Starts a pooler with this config on the runtime that outlives the tests.
pub async fn start_in_shared_runtime(cfg: sluice::config::Config) -> SocketAddr {
    start_app(cfg).await.1
}

/// Starts a pooler on the shared runtime; returns its state and address. The
/// HTTP endpoint gets a free port unless the config names one.
pub async fn start_app(
    mut cfg: sluice::config::Config,
) -> (std::sync::Arc<sluice::app::App>, SocketAddr) {
    if cfg.http.listen == sluice::config::Config::default().http.listen {
        cfg.http.listen = "127.0.0.1:0".into();
    }
    let s = shared();
    let (app, addrs) = s
        .runtime
        .spawn(async move { sluice::start(cfg).await })
        .await
        .expect("pooler task")
        .expect("pooler starts");
    (app, addrs[0])
}

pub fn conn_string(addr: SocketAddr, user: &str, password: &str, db: &str) -> String {
    let password = if password.is_empty() {
        String::new()
    } else {
        format!("password={password} ")
    };
    format!(
        "host={} port={} user={user} {password}dbname={db} connect_timeout=10",
        addr.ip(),
        addr.port()
    )
}

/// A tokio-postgres client through the pooler as `app`.
pub async fn connect(addr: SocketAddr) -> tokio_postgres::Client {
    connect_as(addr, "app", APP_PASSWORD, "app")
        .await
        .expect("connect through sluice")
}

pub async fn connect_as(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(
        &conn_string(addr, user, password, db),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A tokio-postgres client straight to the primary, as the superuser.
pub async fn connect_primary() -> tokio_postgres::Client {
    connect_superuser(primary_port()).await
}

/// A tokio-postgres client straight to a node of the cluster, as the superuser.
pub async fn connect_superuser(port: u16) -> tokio_postgres::Client {
    let conn = format!("host=127.0.0.1 port={port} user=postgres dbname=app");
    let (client, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("connect primary");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The SQLSTATE of a tokio-postgres error, if the server sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// A raw wire-protocol client, for what drivers do not do on purpose.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn tcp(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("tcp connect"),
            buf: BytesMut::new(),
        }
    }

    /// Logs in as `trust_user` (no password) and reads up to ReadyForQuery.
    pub async fn login(addr: SocketAddr, db: &str) -> Raw {
        let mut raw = Raw::tcp(addr).await;
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [("user", "trust_user"), ("database", db)],
            &mut out,
        )
        .unwrap();
        raw.send(&out).await;
        let msgs = raw.until_ready().await;
        assert!(
            msgs.iter().any(|(t, _)| *t == b'R'),
            "authentication ok expected: {msgs:?}"
        );
        raw
    }

    /// Logs in as `login` does, then prepares `name` as `sql` (Parse, Sync).
    pub async fn login_and_prepare(addr: SocketAddr, db: &str, name: &str, sql: &str) -> Raw {
        let mut raw = Raw::login(addr, db).await;
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::parse(name, sql, [], &mut out).unwrap();
        postgres_protocol::message::frontend::sync(&mut out);
        raw.send(&out).await;
        let msgs = raw.until_ready().await;
        assert_eq!(msgs[0].0, b'1', "ParseComplete expected: {msgs:?}");
        raw
    }

    /// Sends a simple Query.
    pub async fn query(&mut self, sql: &str) {
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut out).unwrap();
        self.send(&out).await;
    }

    /// Sends a simple Query and reads its replies up to ReadyForQuery.
    pub async fn run(&mut self, sql: &str) -> Vec<(u8, BytesMut)> {
        self.query(sql).await;
        self.until_ready().await
    }

    /// Sends, or says the connection is gone.
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw write");
    }

    /// The next message, or None when the connection closed.
    pub async fn recv(&mut self) -> Option<(u8, BytesMut)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let mut msg = self.buf.split_to(len + 1);
                    let tag = msg[0];
                    msg.advance(5);
                    return Some((tag, msg));
                }
            }
            let n =
                tokio::time::timeout(Duration::from_secs(20), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("raw read timed out")
                    .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<(u8, BytesMut)> {
        let mut out = Vec::new();
        while let Some((t, body)) = self.recv().await {
            out.push((t, body));
            if t == b'Z' {
                return out;
            }
        }
        panic!("connection closed before ReadyForQuery: {out:?}");
    }

    /// Messages up to the next ReadyForQuery, or up to the close.
    pub async fn until_ready_or_close(&mut self) -> Vec<(u8, BytesMut)> {
        let mut out = Vec::new();
        while let Some((t, body)) = self.recv().await {
            out.push((t, body));
            if t == b'Z' {
                break;
            }
        }
        out
    }

    /// Reads one byte (the answer to SSLRequest).
    pub async fn recv_byte(&mut self) -> u8 {
        let mut b = [0u8; 1];
        self.stream.read_exact(&mut b).await.expect("read byte");
        b[0]
    }
}

/// The SQLSTATE in an ErrorResponse body.
pub fn error_code(body: &[u8]) -> String {
    sluice::protocol::error_fields::ErrorFields::parse(body).code
}

/// A frame built by hand: tag, then body.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Appends a Bind of the unnamed portal to `statement`, with no parameters.
pub fn bind_no_params(statement: &str, out: &mut BytesMut) {
    let mut body = vec![0u8];
    body.extend_from_slice(statement.as_bytes());
    body.push(0);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&frame(b'B', &body));
}

/// The user a client is logged into the server as.
pub async fn current_user(c: &tokio_postgres::Client) -> String {
    c.query_one("SELECT current_user::text", &[])
        .await
        .expect("current_user")
        .get(0)
}

/// A PostgreSQL client program (psql, pgbench) pointed at a pooler as `app`.
pub fn pg_tool(program: &str, addr: SocketAddr) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(cluster().bin.join(program));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &addr.port().to_string(),
        "-U",
        "app",
    ])
    .env("PGPASSWORD", APP_PASSWORD);
    cmd
}

/// The ports of the cluster's replicas.
pub fn replica_ports() -> Vec<u16> {
    cluster().replicas.iter().map(|r| r.port).collect()
}

/// The port of the server that answered `sql`, whose last column must be
/// `inet_server_port()`.
pub async fn port_of(c: &tokio_postgres::Client, sql: &str) -> u16 {
    let row = c
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get::<_, i32>(row.len() - 1) as u16
}

/// Waits until reads through the pooler have reached both replicas (its
/// monitor has seen them up and loaded the function catalog).
pub async fn wait_for_both_replicas(addr: SocketAddr) {
    let c = connect(addr).await;
    let replicas = replica_ports();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < replicas.len() {
        let p = port_of(&c, "SELECT inet_server_port()").await;
        assert!(
            std::time::Instant::now() < deadline,
            "reads never reached both replicas {replicas:?}: {seen:?}, last {p}"
        );
        if replicas.contains(&p) {
            seen.insert(p);
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The Prometheus scrape of a pooler started with `start_app`.
pub async fn scrape_metrics(app: &sluice::app::App) -> String {
    http_get(app.http_addr().expect("HTTP endpoint"), "/metrics")
        .await
        .1
}

/// A GET over HTTP/1.1; `(0, "")` when nothing answers (yet).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
