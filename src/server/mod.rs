//! One backend connection: connect, log in, learn its parameters and cancel
//! key, and keep the queue of replies it still owes.

pub mod info;
pub mod owed;
pub mod params;
pub mod prepared;
pub mod stream;

use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub use stream::{ServerAddr, ServerStream};

use crate::auth::server::{login, ServerAuthError};
use crate::auth::Secret;
use crate::protocol::error_fields::ErrorFields;
use crate::protocol::frames::server_streamable;
use crate::protocol::{btag, messages, read_cstr, read_message, FrameScanner, ReadError};
pub use owed::{Handled, OutOfSync, Owed, Progress, Reply};
pub use params::ParamMap;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// `host:port`, resolved at each connect.
    pub addr: String,
    pub dbname: String,
    pub user: String,
    pub password: Option<Secret>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] ServerAuthError),
    #[error("server error: {0}")]
    Postgres(ErrorFields),
    #[error("server closed the connection")]
    Closed,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    OutOfSync(#[from] OutOfSync),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<ReadError> for ServerError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Closed => ServerError::Closed,
            ReadError::Frame(f) => ServerError::Protocol(f.to_string()),
            ReadError::Io(io) => ServerError::Io(io),
        }
    }
}

/// The columns of a DataRow body as text.
fn parse_data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let count = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let mut at = 2;
    let mut cols = Vec::with_capacity(count);
    for _ in 0..count {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            cols.push(None);
            continue;
        }
        let end = at.checked_add(len as usize)?;
        cols.push(Some(
            String::from_utf8_lossy(body.get(at..end)?).into_owned(),
        ));
        at = end;
    }
    Some(cols)
}

/// Size of a server connection's read buffer.
pub const READ_BUF: usize = 64 * 1024;
/// Largest non-bulk message accepted from a server.
const MAX_SERVER_MESSAGE: usize = 256 * 1024 * 1024;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub struct ServerConn {
    pub id: u64,
    pub stream: ServerStream,
    pub rbuf: BytesMut,
    pub scanner: FrameScanner,
    pub peer: ServerAddr,
    /// The server's own cancel key.
    pub pid: i32,
    pub secret: i32,
    /// The parameters as the server reported them at login.
    pub defaults: ParamMap,
    /// The parameters now in effect where they differ from `defaults`.
    pub overrides: ParamMap,
    /// The content hashes of (a client's wanted, that client's reported,
    /// this server's overrides) when the server was last brought in line
    /// with a client and the client told every value: the same three again
    /// need neither a SET nor a ParameterStatus.
    pub params_in_line: Option<(u64, u64, u64)>,
    pub owed: Owed,
    /// Status byte of the last ReadyForQuery.
    pub tx_status: u8,
    pub created_at: Instant,
    pub returned_at: Instant,
    /// Set when the connection must not be reused.
    pub broken: bool,
    /// Until the first ReadyForQuery, reported parameters are the defaults.
    logging_in: bool,
    /// Pooler-wide prepared statements this server holds.
    pub prepared: prepared::HeldStatements,
    /// Shown by SHOW SERVERS; set by the pool that opened the connection.
    pub info: Option<std::sync::Arc<info::ServerInfo>>,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerConn#{}({} pid {})", self.id, self.peer, self.pid)
    }
}

impl ServerConn {
    pub async fn connect(
        target: &ServerTarget,
        keepalive: bool,
    ) -> Result<ServerConn, ServerError> {
        let connect_error = |source| ServerError::Connect {
            addr: target.addr.clone(),
            source,
        };
        let (stream, peer) = match ServerAddr::unix_of(&target.addr) {
            Some(unix) => (unix.connect().await.map_err(connect_error)?, unix),
            None => {
                let tcp = TcpStream::connect(&target.addr)
                    .await
                    .map_err(connect_error)?;
                tcp.set_nodelay(true)?;
                if keepalive {
                    let ka = socket2::TcpKeepalive::new()
                        .with_time(Duration::from_secs(60))
                        .with_interval(Duration::from_secs(10));
                    socket2::SockRef::from(&tcp).set_tcp_keepalive(&ka)?;
                }
                let peer = ServerAddr::Tcp(tcp.peer_addr()?);
                (ServerStream::Tcp(tcp), peer)
            }
        };
        let mut conn = ServerConn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            stream,
            rbuf: BytesMut::with_capacity(READ_BUF),
            scanner: FrameScanner::new(MAX_SERVER_MESSAGE, server_streamable),
            peer,
            pid: 0,
            secret: 0,
            defaults: ParamMap::new(),
            overrides: ParamMap::new(),
            params_in_line: None,
            owed: Owed::new(),
            tx_status: b'I',
            created_at: Instant::now(),
            returned_at: Instant::now(),
            broken: false,
            logging_in: true,
            prepared: prepared::HeldStatements::default(),
            info: None,
        };
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [
                ("user", target.user.as_str()),
                ("database", target.dbname.as_str()),
            ],
            &mut out,
        )?;
        conn.stream.write_all(&out).await?;
        login(
            &mut conn.stream,
            &mut conn.rbuf,
            &target.user,
            target.password.as_ref(),
        )
        .await?;
        conn.read_until_ready(true).await?;
        conn.logging_in = false;
        Ok(conn)
    }

    /// Reads the server's messages up to ReadyForQuery, recording
    /// ParameterStatus and BackendKeyData. Returns the first error it reported.
    async fn read_until_ready(&mut self, login: bool) -> Result<Option<ErrorFields>, ServerError> {
        let mut first_error = None;
        loop {
            let (tag, body) =
                read_message(&mut self.stream, &mut self.rbuf, MAX_SERVER_MESSAGE).await?;
            match tag {
                btag::PARAMETER_STATUS => {
                    self.record_parameter(&body);
                }
                btag::BACKEND_KEY_DATA if body.len() >= 8 => {
                    self.pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    self.secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                }
                btag::READY_FOR_QUERY => {
                    self.tx_status = body.first().copied().unwrap_or(b'I');
                    return Ok(first_error);
                }
                btag::ERROR_RESPONSE => {
                    let e = ErrorFields::parse(&body);
                    if login || e.is_fatal() {
                        self.broken = true;
                        return Err(ServerError::Postgres(e));
                    }
                    first_error.get_or_insert(e);
                }
                _ => {}
            }
        }
    }

    /// Applies a ParameterStatus body; returns (name, value). During login the
    /// values are the defaults; afterwards they are overrides.
    pub fn record_parameter(&mut self, body: &[u8]) -> Option<(String, String)> {
        let (name, rest) = read_cstr(body)?;
        let (value, _) = read_cstr(rest)?;
        self.set_param(name, value, true);
        Some((name.to_string(), value.to_string()))
    }

    fn set_param(&mut self, name: &str, value: &str, canonical: bool) {
        if self.logging_in {
            self.defaults.set(name, value, canonical);
        } else if self.defaults.get(name) == Some(value) {
            self.overrides.remove(name);
        } else {
            self.overrides.set(name, value, canonical);
        }
    }

    /// The value of a parameter now in effect, as far as the pooler knows.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.overrides.get(name).or_else(|| self.defaults.get(name))
    }

    /// Runs pooler-issued SQL (SET, ROLLBACK, DISCARD ALL) outside any client
    /// exchange and waits for ReadyForQuery. Returns the server's error, if any.
    pub async fn run_internal(&mut self, sql: &str) -> Result<Option<ErrorFields>, ServerError> {
        debug_assert!(self.owed.is_empty());
        let mut out = BytesMut::with_capacity(sql.len() + 6);
        messages::query(&mut out, sql);
        self.stream.write_all(&out).await?;
        let result = self.read_until_ready(false).await;
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    /// Runs a query of the pooler's own (monitoring, catalog) and returns its
    /// rows as text; NULL is `None`. An error the server reports is an `Err`.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        debug_assert!(self.owed.is_empty());
        let mut out = BytesMut::with_capacity(sql.len() + 6);
        messages::query(&mut out, sql);
        self.stream.write_all(&out).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let read = read_message(&mut self.stream, &mut self.rbuf, MAX_SERVER_MESSAGE).await;
            let (tag, body) = match read {
                Ok(m) => m,
                Err(e) => {
                    self.broken = true;
                    return Err(e.into());
                }
            };
            match tag {
                btag::DATA_ROW => rows.push(parse_data_row(&body).ok_or_else(|| {
                    self.broken = true;
                    ServerError::Protocol("malformed DataRow".into())
                })?),
                btag::ERROR_RESPONSE => {
                    let e = ErrorFields::parse(&body);
                    if e.is_fatal() {
                        self.broken = true;
                        return Err(ServerError::Postgres(e));
                    }
                    error.get_or_insert(e);
                }
                btag::READY_FOR_QUERY => {
                    self.tx_status = body.first().copied().unwrap_or(b'I');
                    return match error {
                        Some(e) => Err(ServerError::Postgres(e)),
                        None => Ok(rows),
                    };
                }
                _ => {}
            }
        }
    }

    /// Makes the server's parameters match `wanted`, with one round trip where
    /// anything differs. Returns what the server reported on the way, so the
    /// client can be told the normalised values.
    pub async fn sync_params(
        &mut self,
        wanted: &ParamMap,
    ) -> Result<Option<ErrorFields>, ServerError> {
        let Some(sql) = params::sync_statements(wanted, &self.overrides, &self.defaults) else {
            return Ok(None);
        };
        tracing::trace!(server = %self.peer, %sql, "parameter sync");
        let err = self.run_internal(&sql).await?;
        if err.is_none() {
            // Reported parameters came back as ParameterStatus with the
            // server's spelling; unreported ones (search_path...) did not:
            // record what we set, and forget what we reset.
            for (name, value) in wanted.iter() {
                if self.defaults.get(name).is_none() {
                    self.set_param(name, value, false);
                }
            }
            let reset: Vec<String> = self
                .overrides
                .iter()
                .filter(|(n, _)| wanted.get(n).is_none())
                .map(|(n, _)| n.to_string())
                .collect();
            for n in reset {
                self.overrides.remove(&n);
            }
        }
        Ok(err)
    }

    /// True when the server is idle outside a transaction with nothing owed.
    pub fn is_clean(&self) -> bool {
        !self.broken
            && self.owed.is_empty()
            && self.tx_status == b'I'
            && self.rbuf.is_empty()
            && !self.scanner.in_tail()
    }

    /// Checks, without blocking, that an idle connection has neither been closed
    /// by the server nor sent anything unasked (which would put it out of sync).
    pub fn idle_socket_ok(&mut self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Rolls back an open transaction so the connection can be reused.
    pub async fn rollback(&mut self) -> Result<(), ServerError> {
        self.run_internal("ROLLBACK").await?;
        if self.tx_status != b'I' {
            self.broken = true;
        }
        Ok(())
    }

    /// Sends Terminate and closes; errors are irrelevant at this point.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        messages::terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_millis(100), self.stream.write_all(&out)).await;
    }
}
