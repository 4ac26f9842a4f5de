//! The untagged packets a client sends before its session starts: SSLRequest,
//! GSSENCRequest, CancelRequest and StartupMessage.

use tokio::io::{AsyncRead, AsyncReadExt};

/// PostgreSQL's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
const CANCEL_REQUEST: u32 = 80877102;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: i32,
    },
    Startup {
        minor: u16,
        /// Parameters other than `_pq_.` protocol options, in the order sent.
        params: Vec<(String, String)>,
        /// `_pq_.` options, which we do not support and must name back.
        protocol_options: Vec<String>,
    },
    /// A major version other than 3.
    Unsupported {
        major: u16,
        minor: u16,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("connection closed before the startup packet")]
    Closed,
    #[error("invalid length of startup packet: {0}")]
    BadLength(usize),
    #[error("invalid startup packet layout")]
    BadLayout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one startup-phase packet.
pub async fn read_startup_packet<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<StartupPacket, StartupError> {
    let mut len_buf = [0u8; 4];
    match stream.read_exact(&mut len_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(StartupError::Closed)
        }
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).await?;
    parse_startup_body(&body)
}

/// Parses the packet after its length word.
pub fn parse_startup_body(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST if rest.is_empty() => return Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST if rest.is_empty() => return Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST if rest.len() == 8 => {
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let secret = i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            return Ok(StartupPacket::Cancel { pid, secret });
        }
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => return Err(StartupError::BadLayout),
        _ => {}
    }
    let major = (code >> 16) as u16;
    let minor = (code & 0xffff) as u16;
    if major != 3 {
        return Ok(StartupPacket::Unsupported { major, minor });
    }
    let mut params = Vec::new();
    let mut protocol_options = Vec::new();
    let mut cur = rest;
    loop {
        let (key, after_key) = super::read_cstr(cur).ok_or(StartupError::BadLayout)?;
        if key.is_empty() {
            break;
        }
        let (value, after_value) = super::read_cstr(after_key).ok_or(StartupError::BadLayout)?;
        if key.starts_with("_pq_.") {
            protocol_options.push(key.to_string());
        } else {
            params.push((key.to_string(), value.to_string()));
        }
        cur = after_value;
    }
    Ok(StartupPacket::Startup {
        minor,
        params,
        protocol_options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut v = code.to_be_bytes().to_vec();
        v.extend_from_slice(rest);
        v
    }

    #[test]
    fn parses_startup_params_and_protocol_options() {
        let body = packet(196610, b"user\0app\0database\0db\0_pq_.x\0\x31\0\0");
        let parsed = parse_startup_body(&body).unwrap();
        assert_eq!(
            parsed,
            StartupPacket::Startup {
                minor: 2,
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "db".into())
                ],
                protocol_options: vec!["_pq_.x".into()],
            }
        );
    }

    #[test]
    fn parses_special_requests() {
        assert_eq!(
            parse_startup_body(&packet(SSL_REQUEST, b"")).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            parse_startup_body(&packet(GSSENC_REQUEST, b"")).unwrap(),
            StartupPacket::GssEncRequest
        );
        let mut rest = 7i32.to_be_bytes().to_vec();
        rest.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(
            parse_startup_body(&packet(CANCEL_REQUEST, &rest)).unwrap(),
            StartupPacket::Cancel { pid: 7, secret: 9 }
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_startup_body(&packet(196608, b"user\0app")).is_err());
        assert_eq!(
            parse_startup_body(&packet(2 << 16, b"\0")).unwrap(),
            StartupPacket::Unsupported { major: 2, minor: 0 }
        );
    }
}
