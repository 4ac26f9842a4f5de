//! The logged-in clients, as SHOW CLIENTS and KILL see them. A session
//! updates its entry with relaxed atomic stores when it waits for, gets and
//! releases a server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::server::info::now_ms;

/// Logged in, no server (idle, or between transactions).
pub const IDLE: u8 = 0;
/// Waiting for a server connection.
pub const WAITING: u8 = 1;
/// Linked to a server connection.
pub const ACTIVE: u8 = 2;

#[derive(Debug)]
pub struct ClientInfo {
    /// The client's BackendKeyData pid: unique while it is connected.
    pub id: i32,
    pub addr: SocketAddr,
    pub local: Option<SocketAddr>,
    pub user: String,
    pub database: String,
    pub application_name: String,
    /// Milliseconds since the Unix epoch.
    pub connect_time: u64,
    state: AtomicU8,
    request_time: AtomicU64,
    /// The linked server connection's id, 0 when none.
    server: AtomicU64,
    /// Named prepared statements the client holds.
    pub prepared: AtomicUsize,
    /// Set by KILL: the session ends at once.
    pub killed: AtomicBool,
    /// Woken when the session must look at the operator's controls (pause,
    /// kill, drain, reload). One per session, so waiting on it costs an
    /// uncontended lock, where a shared channel would be a lock every
    /// session takes on every request.
    pub wake: tokio::sync::Notify,
}

impl ClientInfo {
    pub fn new(
        id: i32,
        addr: SocketAddr,
        local: Option<SocketAddr>,
        user: &str,
        database: &str,
        application_name: &str,
    ) -> ClientInfo {
        let now = now_ms();
        ClientInfo {
            id,
            addr,
            local,
            user: user.to_string(),
            database: database.to_string(),
            application_name: application_name.to_string(),
            connect_time: now,
            state: AtomicU8::new(IDLE),
            request_time: AtomicU64::new(now),
            server: AtomicU64::new(0),
            prepared: AtomicUsize::new(0),
            killed: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        }
    }

    pub fn waiting(&self) {
        self.state.store(WAITING, Relaxed);
        self.request_time.store(now_ms(), Relaxed);
    }

    pub fn linked(&self, server: u64) {
        self.server.store(server, Relaxed);
        self.state.store(ACTIVE, Relaxed);
    }

    pub fn unlinked(&self) {
        self.server.store(0, Relaxed);
        self.state.store(IDLE, Relaxed);
    }

    pub fn state(&self) -> u8 {
        self.state.load(Relaxed)
    }

    pub fn request_time(&self) -> u64 {
        self.request_time.load(Relaxed)
    }

    pub fn server(&self) -> u64 {
        self.server.load(Relaxed)
    }
}

#[derive(Default)]
pub struct ClientRegistry {
    map: Mutex<HashMap<i32, Arc<ClientInfo>>>,
}

impl ClientRegistry {
    pub fn add(&self, info: Arc<ClientInfo>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(info.id, info);
    }

    pub fn remove(&self, id: i32) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&id);
    }

    /// Every logged-in client, oldest first.
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.values().cloned().collect();
        v.sort_by_key(|c| (c.connect_time, c.id));
        v
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
