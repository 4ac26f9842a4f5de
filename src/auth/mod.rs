//! Authentication: the secrets in `[users]`, the client side (trust, md5 and a
//! SCRAM-SHA-256 server of our own), and the server side (trust, cleartext, md5
//! and SCRAM-SHA-256 through postgres-protocol's client).

pub mod client;
pub mod scram;
pub mod server;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

pub use scram::ScramSecret;

/// A password as `[users]` may hold it.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Plain(String),
    /// `md5` followed by md5(password || username) in hex.
    Md5(String),
    Scram(ScramSecret),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secret::Plain(_) => "Secret::Plain(..)",
            Secret::Md5(_) => "Secret::Md5(..)",
            Secret::Scram(_) => "Secret::Scram(..)",
        })
    }
}

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, String> {
        if let Some(hex) = text.strip_prefix("md5") {
            if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Secret::Md5(text.to_ascii_lowercase()));
            }
        }
        if text.starts_with("SCRAM-SHA-256$") {
            return ScramSecret::parse(text).map(Secret::Scram);
        }
        Ok(Secret::Plain(text.to_string()))
    }

    /// The SCRAM verifier for this secret; a plaintext password gets a fresh
    /// salt. An md5 hash cannot be turned into one.
    pub fn to_scram(&self) -> Option<ScramSecret> {
        match self {
            Secret::Plain(pw) => {
                let verifier = postgres_protocol::password::scram_sha_256(pw.as_bytes());
                ScramSecret::parse(&verifier).ok()
            }
            Secret::Scram(s) => Some(s.clone()),
            Secret::Md5(_) => None,
        }
    }

    /// The `md5...` hash Postgres stores for (user, password), if derivable.
    pub fn to_md5(&self, user: &str) -> Option<String> {
        match self {
            Secret::Plain(pw) => Some(postgres_protocol::password::md5(pw.as_bytes(), user)),
            Secret::Md5(h) => Some(h.clone()),
            Secret::Scram(_) => None,
        }
    }
}

/// The answer a client must give to an md5 challenge: `md5` + md5(hash || salt),
/// where `hash` is the 32 hex digits after the `md5` prefix of the stored hash.
pub fn md5_response(stored: &str, salt: [u8; 4]) -> String {
    use md5_impl::md5_hex;
    let hex = stored.strip_prefix("md5").unwrap_or(stored);
    let mut input = hex.as_bytes().to_vec();
    input.extend_from_slice(&salt);
    format!("md5{}", md5_hex(&input))
}

/// MD5 in hex through postgres-protocol, already a dependency, instead of a
/// separate md5 crate: its `password::md5(p, u)` is "md5" + hex(md5(p || u)),
/// so with an empty user name it is the plain digest we need for the outer
/// step md5(stored hash || salt), which its `md5_hash` cannot do from a hash.
mod md5_impl {
    pub fn md5_hex(input: &[u8]) -> String {
        let s = postgres_protocol::password::md5(input, "");
        s[3..].to_string()
    }
}

pub fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

pub fn unb64(text: &str) -> Option<Vec<u8>> {
    B64.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_secret_kinds() {
        assert!(matches!(
            Secret::parse("hunter2").unwrap(),
            Secret::Plain(_)
        ));
        assert!(matches!(
            Secret::parse("md5a3556571e93b0d20722ba62be61e8c2d").unwrap(),
            Secret::Md5(_)
        ));
        let v = postgres_protocol::password::scram_sha_256(b"pw");
        assert!(matches!(Secret::parse(&v).unwrap(), Secret::Scram(_)));
        assert!(Secret::parse("SCRAM-SHA-256$garbage").is_err());
    }

    #[test]
    fn md5_response_matches_libpq() {
        let salt = [1, 2, 3, 4];
        let stored = Secret::Plain("pw".into()).to_md5("app").unwrap();
        let expected = postgres_protocol::authentication::md5_hash(b"app", b"pw", salt);
        assert_eq!(md5_response(&stored, salt), expected);
    }
}
