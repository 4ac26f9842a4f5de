//! SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL speaks it, server side.
//!
//! Written here rather than taken from pgwire because pgwire's server does not
//! expose the recovered ClientKey (needed to log into servers with a client's
//! proof later) and compares proofs with plain `==`; ours uses `subtle`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{b64, unb64};

/// A stored verifier: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScramSecret(iterations {})", self.iterations)
    }
}

impl ScramSecret {
    pub fn parse(text: &str) -> Result<ScramSecret, String> {
        let bad = || {
            "invalid SCRAM-SHA-256 secret (want SCRAM-SHA-256$<iter>:<salt>$<stored>:<server>)"
                .to_string()
        };
        let rest = text.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
        let (iter_salt, keys) = rest.split_once('$').ok_or_else(bad)?;
        let (iter, salt) = iter_salt.split_once(':').ok_or_else(bad)?;
        let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
        let iterations: u32 = iter.parse().map_err(|_| bad())?;
        if iterations == 0 {
            return Err(bad());
        }
        let salt = unb64(salt).ok_or_else(bad)?;
        let stored_key: [u8; 32] = unb64(stored)
            .and_then(|v| v.try_into().ok())
            .ok_or_else(bad)?;
        let server_key: [u8; 32] = unb64(server)
            .and_then(|v| v.try_into().ok())
            .ok_or_else(bad)?;
        Ok(ScramSecret {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }
}

impl ScramSecret {
    /// The verifier an unknown user is challenged with. Like PostgreSQL's
    /// mock authentication: the salt is derived from the user name with a
    /// per-process key, so asking twice gives the same salt as a real user's
    /// would, and no key derivation runs (an unknown user costs no more CPU
    /// than a known one). No password matches its random keys.
    pub fn mock(user: &str) -> ScramSecret {
        static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(|| {
            let mut k = [0u8; 32];
            rand::Rng::fill_bytes(&mut rand::rng(), &mut k);
            k
        });
        let mut stored_key = [0u8; 32];
        let mut server_key = [0u8; 32];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut stored_key);
        rand::Rng::fill_bytes(&mut rand::rng(), &mut server_key);
        ScramSecret {
            iterations: 4096,
            salt: hmac(key, &[b"salt", user.as_bytes()])[..16].to_vec(),
            stored_key,
            server_key,
        }
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("hmac takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Why a SCRAM exchange failed; all of them end in 28P01 for the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported without TLS")]
    ChannelBinding,
    #[error("nonce mismatch")]
    Nonce,
    #[error("wrong password")]
    Proof,
}

/// One server-side exchange, between client-first and client-final.
pub struct ScramServer {
    secret: ScramSecret,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header: String,
}

impl ScramServer {
    /// Handles client-first-message; returns the exchange and server-first-message.
    pub fn start(
        secret: ScramSecret,
        client_first: &[u8],
    ) -> Result<(ScramServer, String), ScramError> {
        let text =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not utf-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed("authzid is not supported"));
        }
        let gs2_header = format!("{flag},{authzid},");
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(ScramError::Malformed("no client nonce"))?;
        let mut server_nonce = [0u8; 18];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut server_nonce);
        let nonce = format!("{client_nonce}{}", b64(&server_nonce));
        let server_first = format!("r={nonce},s={},i={}", b64(&secret.salt), secret.iterations);
        Ok((
            ScramServer {
                secret,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
                gs2_header,
            },
            server_first,
        ))
    }

    /// Handles client-final-message. On success returns server-final-message and
    /// the ClientKey the client proved it knows.
    pub fn finish(self, client_final: &[u8]) -> Result<(String, [u8; 32]), ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not utf-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                channel = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        let channel = channel.ok_or(ScramError::Malformed("no channel binding attribute"))?;
        if unb64(channel).as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::ChannelBinding);
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Nonce);
        }
        let proof: [u8; 32] = unb64(proof)
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("bad proof"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.secret.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !bool::from(stored.ct_eq(&self.secret.stored_key)) {
            return Err(ScramError::Proof);
        }
        let server_signature = hmac(&self.secret.server_key, &[auth_message.as_bytes()]);
        Ok((format!("v={}", b64(&server_signature)), client_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// An unknown user is asked with the same salt every time, as a known one
    /// is, so a second try does not reveal that the user does not exist.
    #[test]
    fn mock_secret_keeps_a_salt_per_user() {
        let (a, again, b) = (
            ScramSecret::mock("nobody"),
            ScramSecret::mock("nobody"),
            ScramSecret::mock("somebody"),
        );
        assert_eq!(a.salt, again.salt);
        assert_eq!(a.salt.len(), 16);
        assert_ne!(a.salt, b.salt);
        assert_eq!(a.iterations, 4096);
        assert_ne!(a.stored_key, again.stored_key, "keys are random");
    }

    fn run(password_stored: &str, password_given: &str) -> Result<(), ScramError> {
        let verifier = postgres_protocol::password::scram_sha_256(password_stored.as_bytes());
        let secret = ScramSecret::parse(&verifier).unwrap();
        let mut client = ScramSha256::new(password_given.as_bytes(), ChannelBinding::unsupported());
        let (server, server_first) = ScramServer::start(secret, client.message())?;
        client.update(server_first.as_bytes()).unwrap();
        let (server_final, _key) = server.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .expect("client verifies the server");
        Ok(())
    }

    #[test]
    fn right_password_passes_both_ways() {
        run("correct horse", "correct horse").unwrap();
    }

    #[test]
    fn wrong_password_fails() {
        assert_eq!(
            run("correct horse", "battery staple"),
            Err(ScramError::Proof)
        );
    }

    #[test]
    fn garbage_is_rejected() {
        let secret = ScramSecret::parse(&postgres_protocol::password::scram_sha_256(b"x")).unwrap();
        assert!(ScramServer::start(secret.clone(), b"garbage").is_err());
        assert!(ScramServer::start(secret.clone(), b"p=tls-server-end-point,,n=,r=abc").is_err());
        let (s, _) = ScramServer::start(secret, b"n,,n=,r=abc").unwrap();
        assert!(s.finish(b"c=biws,r=wrong,p=AAAA").is_err());
    }
}
