//! The client side of login: ask for and check a password the way the user's
//! configured method says.

use bytes::BytesMut;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::scram::{ScramSecret, ScramServer};
use super::{md5_response, Secret};
use crate::config::AuthType;
use crate::protocol::{messages, read_cstr, read_message, tag, ReadError};

/// Largest password or SASL message we accept.
const MAX_AUTH_MESSAGE: usize = 8192;

/// What a user may log in with, derived once from `[users]`.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub method: AuthType,
    pub secret: Option<Secret>,
    /// Precomputed verifier, for SCRAM.
    pub scram: Option<ScramSecret>,
}

impl Credentials {
    pub fn new(method: AuthType, secret: Option<Secret>) -> Credentials {
        let scram = match method {
            AuthType::Trust => None,
            _ => secret.as_ref().and_then(Secret::to_scram),
        };
        Credentials {
            method,
            secret,
            scram,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The client failed to prove the password; the reason is for the log only.
    #[error("password authentication failed: {0}")]
    Failed(String),
    #[error("protocol violation during authentication: {0}")]
    Protocol(String),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The result of a successful login.
#[derive(Debug, Default)]
pub struct Authenticated {
    /// The SCRAM ClientKey the client proved, when it used SCRAM.
    pub client_key: Option<[u8; 32]>,
}

/// Runs the authentication exchange. `creds` is `None` for an unknown user: the
/// exchange still runs (against a random verifier) so that a probe cannot tell
/// unknown users from wrong passwords, as PostgreSQL does.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    user: &str,
    creds: Option<&Credentials>,
    default_method: AuthType,
) -> Result<Authenticated, AuthError> {
    let method = creds.map(|c| c.method).unwrap_or(default_method);
    match (method, creds) {
        (AuthType::Trust, Some(_)) => Ok(Authenticated::default()),
        (AuthType::Md5, Some(c)) if c.secret.as_ref().and_then(|s| s.to_md5(user)).is_some() => {
            md5_exchange(stream, rbuf, user, c).await
        }
        // A SCRAM verifier cannot answer md5, so PostgreSQL falls back to SCRAM.
        (_, Some(c)) if c.scram.is_some() => {
            let secret = c.scram.clone().expect("checked above");
            scram_exchange(stream, rbuf, secret).await
        }
        (_, Some(_)) => Err(AuthError::Failed(format!(
            "user {user:?} has no password usable for {method:?}"
        ))),
        (_, None) => scram_exchange(stream, rbuf, ScramSecret::mock(user))
            .await
            .and(Err(AuthError::Failed(format!("no such user {user:?}")))),
    }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, buf: &BytesMut) -> Result<(), AuthError> {
    stream.write_all(buf).await?;
    stream.flush().await?;
    Ok(())
}

async fn read_password_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
) -> Result<BytesMut, AuthError> {
    let (t, body) = read_message(stream, rbuf, MAX_AUTH_MESSAGE).await?;
    if t != tag::PASSWORD {
        return Err(AuthError::Protocol(format!(
            "expected password response, got message type '{}'",
            t as char
        )));
    }
    Ok(body)
}

async fn md5_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    user: &str,
    creds: &Credentials,
) -> Result<Authenticated, AuthError> {
    let stored = creds
        .secret
        .as_ref()
        .and_then(|s| s.to_md5(user))
        .ok_or_else(|| AuthError::Failed("no md5 secret".into()))?;
    let mut salt = [0u8; 4];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut salt);
    let mut out = BytesMut::new();
    messages::auth_md5(&mut out, salt);
    send(stream, &out).await?;
    let body = read_password_message(stream, rbuf).await?;
    let (given, _) =
        read_cstr(&body).ok_or_else(|| AuthError::Protocol("bad password message".into()))?;
    let expected = md5_response(&stored, salt);
    if given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(Authenticated::default())
    } else {
        Err(AuthError::Failed("md5 response does not match".into()))
    }
}

async fn scram_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    secret: ScramSecret,
) -> Result<Authenticated, AuthError> {
    let mut out = BytesMut::new();
    messages::auth_sasl(&mut out, &["SCRAM-SHA-256"]);
    send(stream, &out).await?;

    // SASLInitialResponse: mechanism, then an int32 length and the data.
    let body = read_password_message(stream, rbuf).await?;
    let (mechanism, rest) =
        read_cstr(&body).ok_or_else(|| AuthError::Protocol("bad SASL response".into()))?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(AuthError::Protocol(format!(
            "unsupported SASL mechanism {mechanism:?}"
        )));
    }
    if rest.len() < 4 {
        return Err(AuthError::Protocol("bad SASL response".into()));
    }
    let declared = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    if declared < 0 || declared as usize != data.len() {
        return Err(AuthError::Protocol("bad SASL data length".into()));
    }
    let (server, server_first) =
        ScramServer::start(secret, data).map_err(|e| AuthError::Protocol(e.to_string()))?;
    out.clear();
    messages::auth_sasl_continue(&mut out, server_first.as_bytes());
    send(stream, &out).await?;

    let body = read_password_message(stream, rbuf).await?;
    let (server_final, client_key) = server.finish(&body).map_err(|e| match e {
        super::scram::ScramError::Proof => AuthError::Failed("wrong SCRAM proof".into()),
        other => AuthError::Protocol(other.to_string()),
    })?;
    out.clear();
    messages::auth_sasl_final(&mut out, server_final.as_bytes());
    send(stream, &out).await?;
    Ok(Authenticated {
        client_key: Some(client_key),
    })
}
