//! The PostgreSQL wire protocol, as far as a pooler needs it: the frame splitter
//! for the data path, the startup packet, and builders for the few replies the
//! pooler writes itself.

pub mod error_fields;
pub mod frames;
pub mod messages;
pub mod startup;

pub use frames::{FrameError, FrameScanner, Piece};

/// Frontend (client to server) message tags the pooler looks at.
pub mod tag {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const TERMINATE: u8 = b'X';
    pub const PASSWORD: u8 = b'p';
}

/// Backend (server to client) message tags the pooler looks at.
pub mod btag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION: u8 = b'A';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const NO_DATA: u8 = b'n';
    pub const DATA_ROW: u8 = b'D';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const EMPTY_QUERY: u8 = b'I';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const COPY_IN: u8 = b'G';
    pub const COPY_OUT: u8 = b'H';
    pub const COPY_BOTH: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL: u8 = b'v';
}

/// Reads a NUL-terminated string from `buf`, returning it and the rest.
pub fn read_cstr(buf: &[u8]) -> Option<(&str, &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&buf[..nul]).ok()?;
    Some((s, &buf[nul + 1..]))
}

/// Why reading one message during login failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed")]
    Closed,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one whole tagged message of at most `max` bytes. Used in the login
/// phases only; the data path uses [`FrameScanner`] directly.
pub async fn read_message<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut bytes::BytesMut,
    max: usize,
) -> Result<(u8, bytes::BytesMut), ReadError> {
    use bytes::Buf;
    use tokio::io::AsyncReadExt;
    let mut scanner = FrameScanner::new(max, |_| false);
    loop {
        if let Piece::Frame { tag, len } = scanner.next(buf, 0)? {
            let mut msg = buf.split_to(len);
            msg.advance(frames::HEADER_LEN);
            return Ok((tag, msg));
        }
        let want = scanner.wanted(buf, 0);
        if want > buf.len() {
            buf.reserve(want - buf.len());
        } else {
            buf.reserve(1024);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
}
