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
    /// A CancelRequest with the client's key came and the session has not
    /// taken it yet. Here rather than beside the key: the session looks at
    /// it on every request, and this struct's lines are warm then anyway.
    cancel: AtomicBool,
    /// Woken when the session must look at the operator's controls (pause,
    /// kill, drain, reload). One per session, so a shared channel's lock is
    /// not taken by every session on every request.
    pub wake: Wake,
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
            cancel: AtomicBool::new(false),
            wake: Wake::default(),
        }
    }

    /// Waiting for a server since `at`.
    pub fn waiting(&self, at: std::time::Instant) {
        self.state.store(WAITING, Relaxed);
        self.request_time
            .store(crate::server::info::ms_at(at), Relaxed);
    }

    pub fn linked(&self, server: u64) {
        self.server.store(server, Relaxed);
        self.state.store(ACTIVE, Relaxed);
    }

    /// Asks the session to cancel the query it runs now, if it runs one.
    pub fn request_cancel(&self) {
        self.cancel
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
    }

    /// Takes the cancel asked for since the last take, if one was.
    pub fn take_cancel(&self) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Relaxed};
        // A plain load first: almost always nothing was asked.
        self.cancel.load(Relaxed) && self.cancel.swap(false, AcqRel)
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

    pub fn get(&self, id: i32) -> Option<Arc<ClientInfo>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&id).cloned()
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

/// A wake-up for one waiting task, kept until it is taken (like
/// `Notify::notify_one` with a single waiter). A session polls it beside its
/// sockets on every pass of its loop; tokio's `Notify` takes a mutex on each
/// such poll, this takes two uncontended atomics.
#[derive(Default)]
pub struct Wake {
    pending: AtomicBool,
    waker: atomic_waker::AtomicWaker,
}

impl Wake {
    /// Wakes the waiting task, or the next one to wait.
    pub fn notify_one(&self) {
        self.pending
            .store(true, std::sync::atomic::Ordering::Release);
        self.waker.wake();
    }

    /// Completes once `notify_one` has been called since the last wake-up
    /// was taken.
    pub fn notified(&self) -> Notified<'_> {
        Notified(self)
    }
}

impl std::fmt::Debug for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wake")
            .field("pending", &self.pending.load(Relaxed))
            .finish()
    }
}

/// The future of [`Wake::notified`]. Unlike most futures it may be polled
/// again after it completed: it then waits for the next `notify_one`, so one
/// can serve a whole session.
pub struct Notified<'a>(&'a Wake);

impl std::future::Future for Notified<'_> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        let wake = self.0;
        // A plain load first: the flag is almost always clear.
        if wake.pending.load(Acquire) && wake.pending.swap(false, AcqRel) {
            return std::task::Poll::Ready(());
        }
        wake.waker.register(cx.waker());
        // A notify between the check and the registration.
        if wake.pending.swap(false, AcqRel) {
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::Wake;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_wake_is_kept_until_taken_and_reaches_a_waiter() {
        let wake = Arc::new(Wake::default());
        wake.notify_one();
        // Kept: the next wait completes at once, and takes it.
        wake.notified().await;
        let pending = tokio::time::timeout(Duration::from_millis(20), wake.notified()).await;
        assert!(pending.is_err(), "a wake-up was taken twice");
        let waiter = tokio::spawn({
            let wake = wake.clone();
            async move { wake.notified().await }
        });
        tokio::task::yield_now().await;
        wake.notify_one();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiting task was not woken")
            .unwrap();
    }
}
