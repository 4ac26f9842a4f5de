//! The server side of login: answer whatever authentication a PostgreSQL
//! server asks of the pooler, with postgres-protocol's md5 and SCRAM client.

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{md5_response, Secret};
use crate::protocol::error_fields::ErrorFields;
use crate::protocol::{btag, read_message, ReadError};

const MAX_LOGIN_MESSAGE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerAuthError {
    #[error("server refused login: {0}")]
    Refused(ErrorFields),
    #[error("server asks for a password and none is configured for user {0:?}")]
    NoPassword(String),
    #[error("server asks for {0}, which needs the plaintext password")]
    NeedsPlaintext(&'static str),
    #[error("unsupported authentication request {0} from server")]
    Unsupported(i32),
    #[error("protocol error during server login: {0}")]
    Protocol(String),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Answers authentication requests until AuthenticationOk. The caller has sent
/// the StartupMessage; messages after AuthenticationOk stay in `rbuf`.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    user: &str,
    password: Option<&Secret>,
) -> Result<(), ServerAuthError> {
    let mut out = BytesMut::new();
    let mut scram: Option<ScramSha256> = None;
    loop {
        let (tag, body) = read_message(stream, rbuf, MAX_LOGIN_MESSAGE).await?;
        match tag {
            btag::ERROR_RESPONSE => {
                return Err(ServerAuthError::Refused(ErrorFields::parse(&body)))
            }
            btag::NEGOTIATE_PROTOCOL => continue,
            btag::AUTHENTICATION => {}
            other => {
                return Err(ServerAuthError::Protocol(format!(
                    "unexpected message '{}' during login",
                    other as char
                )))
            }
        }
        if body.len() < 4 {
            return Err(ServerAuthError::Protocol(
                "short authentication message".into(),
            ));
        }
        let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let data = &body[4..];
        let need_password =
            || password.ok_or_else(|| ServerAuthError::NoPassword(user.to_string()));
        out.clear();
        match code {
            0 => return Ok(()),
            3 => {
                let Secret::Plain(pw) = need_password()? else {
                    return Err(ServerAuthError::NeedsPlaintext("cleartext password"));
                };
                frontend::password_message(pw.as_bytes(), &mut out)?;
            }
            5 => {
                let salt: [u8; 4] = data
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| ServerAuthError::Protocol("short md5 salt".into()))?;
                let stored = need_password()?
                    .to_md5(user)
                    .ok_or(ServerAuthError::NeedsPlaintext("md5"))?;
                frontend::password_message(md5_response(&stored, salt).as_bytes(), &mut out)?;
            }
            10 => {
                let Secret::Plain(pw) = need_password()? else {
                    return Err(ServerAuthError::NeedsPlaintext("SCRAM-SHA-256"));
                };
                let mechanisms: Vec<&[u8]> =
                    data.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                if !mechanisms.contains(&&b"SCRAM-SHA-256"[..]) {
                    return Err(ServerAuthError::Protocol(
                        "server offers no SCRAM-SHA-256".into(),
                    ));
                }
                let client = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response("SCRAM-SHA-256", client.message(), &mut out)?;
                scram = Some(client);
            }
            11 => {
                let client = scram.as_mut().ok_or_else(|| {
                    ServerAuthError::Protocol("SASL continue before start".into())
                })?;
                client
                    .update(data)
                    .map_err(|e| ServerAuthError::Protocol(e.to_string()))?;
                frontend::sasl_response(client.message(), &mut out)?;
            }
            12 => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| ServerAuthError::Protocol("SASL final before start".into()))?;
                client
                    .finish(data)
                    .map_err(|e| ServerAuthError::Protocol(format!("server signature: {e}")))?;
                continue;
            }
            other => return Err(ServerAuthError::Unsupported(other)),
        }
        stream.write_all(&out).await?;
    }
}
