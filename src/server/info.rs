//! What the admin console shows of one pooled server connection. The session
//! serving from it updates the state with relaxed atomic stores, once per
//! checkout and release.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

pub const IDLE: u8 = 0;
pub const ACTIVE: u8 = 1;
/// Being reset (rolled back, DISCARD ALL) before it goes back to the pool.
pub const USED: u8 = 2;

#[derive(Debug)]
pub struct ServerInfo {
    pub id: u64,
    pub peer: super::ServerAddr,
    pub local: Option<SocketAddr>,
    pub pid: i32,
    /// Milliseconds since the Unix epoch.
    pub connect_time: u64,
    /// The pool's reconnect epoch when this connection was opened: RECONNECT
    /// and reload close connections from an older epoch.
    pub epoch: u64,
    state: AtomicU8,
    /// The client's BackendKeyData pid while linked, else 0.
    client: AtomicI32,
    request_time: AtomicU64,
    /// Prepared statements it held when last released.
    prepared: AtomicU64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wall-clock milliseconds of `at`, from one wall-clock reading taken at
/// the first call. Sessions stamp the admin console's request times with the
/// monotonic clock reads they take anyway; the two clocks drift apart by no
/// more than NTP's slew, which millisecond timestamps do not show.
pub fn ms_at(at: std::time::Instant) -> u64 {
    static ANCHOR: std::sync::OnceLock<(std::time::Instant, u64)> = std::sync::OnceLock::new();
    let (i0, ms0) = *ANCHOR.get_or_init(|| (std::time::Instant::now(), now_ms()));
    match at.checked_duration_since(i0) {
        Some(d) => ms0 + d.as_millis() as u64,
        None => ms0.saturating_sub(i0.duration_since(at).as_millis() as u64),
    }
}

impl ServerInfo {
    pub fn new(
        id: u64,
        peer: super::ServerAddr,
        local: Option<SocketAddr>,
        pid: i32,
        epoch: u64,
    ) -> Self {
        let now = now_ms();
        ServerInfo {
            id,
            peer,
            local,
            pid,
            connect_time: now,
            epoch,
            state: AtomicU8::new(IDLE),
            client: AtomicI32::new(0),
            request_time: AtomicU64::new(now),
            prepared: AtomicU64::new(0),
        }
    }

    /// Serving `client` since `at`.
    pub fn link(&self, client: i32, at: std::time::Instant) {
        self.client.store(client, Relaxed);
        self.state.store(ACTIVE, Relaxed);
        self.request_time.store(ms_at(at), Relaxed);
    }

    pub fn set_state(&self, state: u8) {
        if state == IDLE {
            self.client.store(0, Relaxed);
        }
        self.state.store(state, Relaxed);
    }

    pub fn state(&self) -> u8 {
        self.state.load(Relaxed)
    }

    pub fn client(&self) -> i32 {
        self.client.load(Relaxed)
    }

    pub fn set_prepared(&self, n: usize) {
        self.prepared.store(n as u64, Relaxed);
    }

    pub fn prepared(&self) -> u64 {
        self.prepared.load(Relaxed)
    }

    pub fn request_time(&self) -> u64 {
        self.request_time.load(Relaxed)
    }
}
