//! Client connections: the accept loop, login, and the session that follows.

pub mod cancel;
pub mod login;
pub mod prepared;
pub mod registry;
pub mod session;
pub mod sql_prepared;

use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::app::App;
use crate::protocol::messages;
use login::{Login, LoginEnd};
use registry::ClientInfo;
use session::{Exit, Session};

/// Binds a listening socket; with `reuseport`, SO_REUSEPORT lets a new
/// process bind the same port during a rolling restart while this one runs.
pub fn bind(addr: SocketAddr, reuseport: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(reuseport)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts clients until the listener fails for good.
pub async fn accept_loop(app: Arc<App>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(handle_client(app.clone(), stream, peer));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::error!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle_client(app: Arc<App>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let cfg = app.config();
    if cfg.pooler.tcp_keepalive {
        let ka = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(10));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka);
    }
    let slot = app.admit_client();
    app.metrics.clients_connected.set(app.connections() as f64);
    let timeout = cfg
        .pooler
        .client_login_timeout
        .enabled()
        .unwrap_or(Duration::MAX);
    let admitted = slot.is_some() && !app.is_draining();
    let login = tokio::time::timeout(timeout, login::login(&app, &mut stream, admitted)).await;
    let logged_in = match login {
        Ok(Ok(Login::Pooled(l))) => l,
        Ok(Ok(Login::Admin(a))) => {
            app.metrics.logins_ok.increment(1);
            crate::admin::serve(app.clone(), stream, peer, a).await;
            drop(slot);
            app.metrics.clients_connected.set(app.connections() as f64);
            return;
        }
        Ok(Err(LoginEnd::Cancel)) => return,
        Ok(Err(LoginEnd::Refused(reason))) => {
            app.metrics.logins_refused.increment(1);
            tracing::info!(client = %peer, "login refused: {reason}");
            return;
        }
        Err(_) => {
            app.metrics.logins_refused.increment(1);
            let mut out = BytesMut::new();
            messages::error(
                &mut out,
                messages::Severity::Fatal,
                messages::sqlstate::PROTOCOL_VIOLATION,
                "client_login_timeout: login took too long",
            );
            let _ = stream.write_all(&out).await;
            tracing::info!(client = %peer, "login timed out");
            return;
        }
    };
    app.metrics.logins_ok.increment(1);
    let cancel = app.cancels.register();
    let mut greeting = logged_in.greeting.clone();
    messages::backend_key_data(&mut greeting, cancel.pid, cancel.secret());
    messages::ready_for_query(&mut greeting, b'I');
    if stream.write_all(&greeting).await.is_err() {
        app.cancels.unregister(cancel.pid);
        return;
    }
    let (user, database) = (logged_in.user.clone(), logged_in.database.clone());
    if cfg.pooler.log_connections {
        tracing::info!(client = %peer, %user, db = %database, "login");
    }
    let info = Arc::new(ClientInfo::new(
        cancel.pid,
        peer,
        stream.local_addr().ok(),
        &user,
        &database,
        logged_in.wanted.get("application_name").unwrap_or(""),
    ));
    app.clients.add(info.clone());
    let ended = SessionEnded {
        app: app.clone(),
        id: info.id,
        slot,
    };
    let exit = Session::new(app.clone(), stream, peer, logged_in, cancel, info.clone())
        .run()
        .await;
    if app.config().pooler.log_disconnections {
        match exit {
            Exit::Quit => {
                tracing::info!(client = %peer, %user, db = %database, "client closed the session")
            }
            Exit::Gone => {
                tracing::info!(client = %peer, %user, db = %database, "client connection lost")
            }
            Exit::Closed(reason) => {
                tracing::info!(client = %peer, %user, db = %database, "session closed: {reason}")
            }
        }
    }
    drop(ended);
}

/// What a session's end must always do, however the session ended (a panic
/// included): leave SHOW CLIENTS, and let a drain that waits for it go on.
struct SessionEnded {
    app: Arc<App>,
    id: i32,
    /// The client's place under `max_client_conn`, given back first.
    slot: Option<crate::app::ClientSlot>,
}

impl Drop for SessionEnded {
    fn drop(&mut self) {
        drop(self.slot.take());
        self.app.clients.remove(self.id);
        self.app
            .metrics
            .clients_connected
            .set(self.app.connections() as f64);
        self.app.session_ended();
    }
}
