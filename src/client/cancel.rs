//! Cancel keys. Each client gets its own random BackendKeyData; a CancelRequest
//! with that key is sent on to the server running the client's query, with that
//! server's key.

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
    server: Mutex<Option<ServerKey>>,
}

impl CancelSlot {
    pub fn secret(&self) -> i32 {
        self.secret
    }

    pub fn attach(&self, key: ServerKey) {
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }

    pub fn detach(&self) {
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn current(&self) -> Option<ServerKey> {
        self.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
                server: Mutex::new(None),
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

    /// Forwards a cancel to the server now serving the client with this key.
    /// A wrong key or an idle client is a silent no-op, as in PostgreSQL.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .cloned();
        let Some(slot) = slot else { return };
        if !bool::from(slot.secret.to_be_bytes().ct_eq(&secret.to_be_bytes())) {
            tracing::warn!(pid, "cancel request with a wrong secret key");
            return;
        }
        let Some(server) = slot.current() else { return };
        if let Err(e) = send_cancel(&server).await {
            tracing::warn!(server = %server.addr, "cancel request failed: {e}");
        }
    }
}

async fn send_cancel(key: &ServerKey) -> std::io::Result<()> {
    let mut stream = key.addr.connect().await?;
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(key.pid, key.secret, &mut buf);
    stream.write_all(&buf).await?;
    stream.shutdown().await?;
    Ok(())
}
