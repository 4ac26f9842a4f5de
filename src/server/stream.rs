//! A server connection's socket: TCP, or a Unix-domain socket when the
//! configured host is a directory (`/var/run/postgresql:5432`, as libpq reads
//! a host that starts with `/`). A pooler beside its server saves the TCP
//! stack's work on every message that way.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    Tcp(SocketAddr),
    /// The socket directory and port: the socket is `<dir>/.s.PGSQL.<port>`.
    Unix {
        dir: Arc<str>,
        port: u16,
    },
}

impl ServerAddr {
    /// A `dir:port` address whose host is a directory, or None.
    pub fn unix_of(addr: &str) -> Option<ServerAddr> {
        let (dir, port) = addr.rsplit_once(':')?;
        if !dir.starts_with('/') {
            return None;
        }
        Some(ServerAddr::Unix {
            dir: dir.into(),
            port: port.parse().ok()?,
        })
    }

    /// The host part as SHOW SERVERS prints it.
    pub fn host(&self) -> String {
        match self {
            ServerAddr::Tcp(a) => a.ip().to_string(),
            ServerAddr::Unix { dir, .. } => dir.to_string(),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            ServerAddr::Tcp(a) => a.port(),
            ServerAddr::Unix { port, .. } => *port,
        }
    }

    /// Opens a new connection (server logins and cancel requests).
    pub async fn connect(&self) -> io::Result<ServerStream> {
        match self {
            ServerAddr::Tcp(a) => TcpStream::connect(a).await.map(ServerStream::Tcp),
            ServerAddr::Unix { dir, port } => {
                let path = format!("{dir}/.s.PGSQL.{port}");
                UnixStream::connect(path).await.map(ServerStream::Unix)
            }
        }
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp(a) => a.fmt(f),
            ServerAddr::Unix { dir, port } => write!(f, "{dir}:{port}"),
        }
    }
}

/// A connected server socket.
#[derive(Debug)]
pub enum ServerStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl ServerStream {
    /// Reads what is there without waiting; WouldBlock when nothing is.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ServerStream::Tcp(s) => s.try_read(buf),
            ServerStream::Unix(s) => s.try_read(buf),
        }
    }

    /// The local TCP address (SHOW SERVERS); None for a Unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            ServerStream::Tcp(s) => s.local_addr().ok(),
            ServerStream::Unix(_) => None,
        }
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_host_is_a_unix_socket() {
        let a = ServerAddr::unix_of("/var/run/postgresql:5433").expect("unix");
        assert_eq!(a.host(), "/var/run/postgresql");
        assert_eq!(a.port(), 5433);
        assert_eq!(a.to_string(), "/var/run/postgresql:5433");
        assert_eq!(ServerAddr::unix_of("127.0.0.1:5432"), None);
        assert_eq!(ServerAddr::unix_of("db.example:5432"), None);
        assert_eq!(ServerAddr::unix_of("/tmp:x"), None);
    }
}
