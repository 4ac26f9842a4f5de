//! Cancel keys. Each client gets its own random BackendKeyData; a CancelRequest
//! with that key marks the client (`ClientInfo::request_cancel`) and wakes its
//! session, which sends the cancel on to the server running its query, with
//! that server's key.
//!
//! The session resolves the server itself, at cancel time, rather than
//! publishing the server's key on every checkout: that was a mutex and a key
//! copy twice per transaction, for a request that comes seldom. It also means
//! a cancel can only ever reach the server the client is attached to.

use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;

use crate::server::ServerAddr;

/// The server a client is attached to, as a cancel needs it.
#[derive(Debug, Clone)]
pub struct ServerKey {
    pub addr: ServerAddr,
    pub pid: i32,
    pub secret: i32,
}

#[derive(Debug)]
pub struct CancelSlot {
    pub pid: i32,
    secret: i32,
}

impl CancelSlot {
    pub fn secret(&self) -> i32 {
        self.secret
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    slots: Mutex<HashMap<i32, Arc<CancelSlot>>>,
}

impl CancelRegistry {
    /// Issues a fresh key from the OS-seeded CSPRNG and registers it.
    pub fn register(&self) -> Arc<CancelSlot> {
        use rand::RngExt;
        let mut rng = rand::rng();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let pid: i32 = rng.random_range(1..i32::MAX);
            if slots.contains_key(&pid) {
                continue;
            }
            let slot = Arc::new(CancelSlot {
                pid,
                secret: rng.random(),
            });
            slots.insert(pid, slot.clone());
            return slot;
        }
    }

    pub fn unregister(&self, pid: i32) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
    }

    /// Whether this is a client's key (the caller then marks that client). A
    /// wrong key is a silent no-op, as in PostgreSQL.
    pub fn matches(&self, pid: i32, secret: i32) -> bool {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .cloned();
        let Some(slot) = slot else { return false };
        if !bool::from(slot.secret.to_be_bytes().ct_eq(&secret.to_be_bytes())) {
            tracing::warn!(pid, "cancel request with a wrong secret key");
            return false;
        }
        true
    }
}

/// How long sending one CancelRequest may take, connect included.
const CANCEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends a CancelRequest for `key`, in its own task: the session goes on
/// waiting for its server's answer.
pub fn spawn_cancel(key: ServerKey) {
    tokio::spawn(async move {
        // A server that does not answer must not keep the task forever.
        match tokio::time::timeout(CANCEL_TIMEOUT, send_cancel(&key)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(server = %key.addr, "cancel request failed: {e}"),
            Err(_) => tracing::warn!(server = %key.addr, "cancel request timed out"),
        }
    });
}

async fn send_cancel(key: &ServerKey) -> std::io::Result<()> {
    let mut stream = key.addr.connect().await?;
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(key.pid, key.secret, &mut buf);
    stream.write_all(&buf).await?;
    stream.shutdown().await?;
    Ok(())
}
