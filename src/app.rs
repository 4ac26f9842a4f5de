//! The state every client task shares: configuration (swapped on reload),
//! credentials, pools, cancel keys, metrics, and the operator's controls
//! (pause, kill, drain).

use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

use crate::auth::client::Credentials;
use crate::auth::Secret;
use crate::client::cancel::CancelRegistry;
use crate::client::prepared::Registry;
use crate::client::registry::ClientRegistry;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::router::classify::{Classifier, PinReason};

pub struct App {
    config: ArcSwap<Config>,
    credentials: ArcSwap<HashMap<String, Credentials>>,
    pub pools: Arc<Pools>,
    pub cancels: CancelRegistry,
    /// Every distinct prepared statement, shared by all clients.
    pub statements: Registry,
    /// Statement classification for routing, with its cache.
    pub classifier: Classifier,
    pub metrics: Arc<Metrics>,
    /// Logged-in clients (SHOW CLIENTS, KILL).
    pub clients: ClientRegistry,
    /// Connections counted against max_client_conn (logging in or in).
    connections: AtomicUsize,
    /// Admin console sessions now.
    pub admin_sessions: AtomicUsize,
    /// Where RELOAD and SIGHUP re-read the configuration from.
    config_path: Mutex<Option<PathBuf>>,
    /// Serialises reloads.
    reload_lock: tokio::sync::Mutex<()>,
    /// Bumped whenever a control changes (pause, resume, kill, drain,
    /// reload) or, while draining, a session ends; each session is woken
    /// through its own `ClientInfo::wake` at the same time.
    control: watch::Sender<u64>,
    paused_all: AtomicBool,
    paused: Mutex<HashSet<String>>,
    /// Some database is paused: only then is `paused` looked at.
    any_db_paused: AtomicBool,
    draining: AtomicBool,
    /// Admin SHUTDOWN asks the binary to stop; `Some(true)`: drain first.
    shutdown: watch::Sender<Option<bool>>,
    /// The accept loops, stopped when a drain begins.
    listeners: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pub(crate) http_addr: Mutex<Option<SocketAddr>>,
    /// idle_transaction_timeout and client_idle_timeout in nanoseconds (0:
    /// off), copied out of the config on every apply: a session reads them
    /// twice per transaction, and two relaxed loads are cheaper than two
    /// `ArcSwap` loads.
    idle_limits: [AtomicU64; 2],
}

impl App {
    pub fn new(config: Config) -> Arc<App> {
        let credentials = build_credentials(&config);
        let statements = Registry::new(config.pooler.max_prepared_statement_memory);
        let classifier = Classifier::new(config.routing.classify_cache_memory);
        let metrics = Arc::new(Metrics::new());
        metrics
            .max_client_conn
            .set(config.pooler.max_client_conn as f64);
        let idle_limits = idle_limits_of(&config).map(AtomicU64::new);
        Arc::new(App {
            idle_limits,
            config: ArcSwap::from_pointee(config),
            credentials: ArcSwap::from_pointee(credentials),
            pools: Arc::new(Pools::new(metrics.clone())),
            cancels: CancelRegistry::default(),
            statements,
            classifier,
            metrics,
            clients: ClientRegistry::default(),
            connections: AtomicUsize::new(0),
            admin_sessions: AtomicUsize::new(0),
            config_path: Mutex::new(None),
            reload_lock: tokio::sync::Mutex::new(()),
            control: watch::channel(0).0,
            paused_all: AtomicBool::new(false),
            paused: Mutex::new(HashSet::new()),
            any_db_paused: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            shutdown: watch::channel(None).0,
            listeners: Mutex::new(Vec::new()),
            http_addr: Mutex::new(None),
        })
    }

    /// The configuration now in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The configuration now in force, for a short look on the hot path:
    /// no shared reference count is touched. Not to be held across awaits.
    pub fn config_ref(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// (idle_transaction_timeout, client_idle_timeout), each `None` when off.
    pub fn idle_limits(&self) -> (Option<Duration>, Option<Duration>) {
        let get = |i: usize| match self.idle_limits[i].load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        };
        (get(0), get(1))
    }

    pub fn credentials(&self, user: &str) -> Option<Credentials> {
        self.credentials.load().get(user).cloned()
    }

    pub fn count_pin(&self, reason: PinReason) {
        self.metrics.count_pin(reason);
    }

    /// The address the HTTP endpoint listens on, once it does.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        *self.http_addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection; `None` when max_client_conn is reached.
    pub fn admit_client(self: &Arc<Self>) -> Option<ClientSlot> {
        let max = self.config_ref().pooler.max_client_conn;
        let prev = self.connections.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ClientSlot { app: self.clone() })
    }

    /// Connections counted against max_client_conn.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    pub(crate) fn add_listener(&self, task: tokio::task::JoinHandle<()>) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    // ---- controls -------------------------------------------------------

    /// A receiver that wakes when any control changes.
    pub fn watch_control(&self) -> watch::Receiver<u64> {
        self.control.subscribe()
    }

    fn poke(&self) {
        self.control.send_modify(|n| *n = n.wrapping_add(1));
        for c in self.clients.all() {
            c.wake.notify_one();
        }
    }

    pub fn is_paused(&self, database: &str) -> bool {
        self.paused_all.load(Ordering::Acquire)
            || (self.any_db_paused.load(Ordering::Acquire)
                && self
                    .paused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(database))
    }

    /// New transactions of `database` (all when `None`) wait until resumed.
    pub fn pause(&self, database: Option<&str>) {
        match database {
            None => self.paused_all.store(true, Ordering::Release),
            Some(db) => {
                self.paused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(db.to_string());
                self.any_db_paused.store(true, Ordering::Release);
            }
        }
        self.poke();
    }

    /// Lifts a pause; `None` lifts every pause.
    pub fn resume(&self, database: Option<&str>) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        match database {
            None => {
                self.paused_all.store(false, Ordering::Release);
                paused.clear();
            }
            Some(db) => {
                paused.remove(db);
            }
        }
        self.any_db_paused
            .store(!paused.is_empty(), Ordering::Release);
        drop(paused);
        self.poke();
    }

    /// Drops every client and server connection of `database` now; new
    /// transactions on it wait for RESUME. Returns the clients killed.
    pub fn kill(&self, database: &str) -> usize {
        self.pause(Some(database));
        let mut n = 0;
        for c in self.clients.all() {
            if c.database == database {
                c.killed.store(true, Ordering::Release);
                n += 1;
            }
        }
        for g in self.pools.groups() {
            if g.database == database {
                for p in g.all() {
                    p.reconnect();
                }
            }
        }
        self.poke();
        n
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Why /ready answers 503, or `None` when sluice is ready for new
    /// clients: not draining, not paused (PAUSE of everything), and each
    /// database's primary answered its monitor's last check.
    pub fn not_ready_because(&self) -> Option<String> {
        if self.is_draining() {
            return Some("draining".into());
        }
        if self.paused_all.load(Ordering::Acquire) {
            return Some("paused".into());
        }
        self.pools
            .all_routing()
            .iter()
            .find(|(_, r)| !r.primary_reachable())
            .map(|(db, _)| format!("the primary of {db} is unreachable"))
    }

    /// Begins a drain: /ready answers 503 at once; after `shutdown_delay`
    /// the listeners close and idle clients are told 57P01; then it waits
    /// up to `shutdown_timeout` for the rest to finish their transactions.
    /// Returns the clients still connected at the end.
    pub async fn drain(&self) -> usize {
        let cfg = self.config();
        self.draining.store(true, Ordering::Release);
        self.metrics.draining.set(1.0);
        tracing::info!(
            clients = self.clients.len(),
            "draining: not ready; closing the listeners in {}",
            cfg.pooler.shutdown_delay
        );
        tokio::time::sleep(cfg.pooler.shutdown_delay.0).await;
        for task in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
        self.poke();
        let deadline = tokio::time::Instant::now() + cfg.pooler.shutdown_timeout.0;
        let mut control = self.watch_control();
        while !self.clients.is_empty() && tokio::time::Instant::now() < deadline {
            // Sessions poke when they end; the timer covers the rest.
            let _ = tokio::time::timeout(Duration::from_millis(100), control.changed()).await;
        }
        let left = self.clients.len();
        if left > 0 {
            tracing::warn!(
                clients = left,
                "shutdown_timeout reached with clients in a transaction"
            );
        } else {
            tracing::info!("drained: no clients left");
        }
        left
    }

    /// Sessions call this when they end, so that a drain sees it at once.
    pub fn session_ended(&self) {
        if self.is_draining() {
            self.control.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Asks the binary to stop (admin SHUTDOWN); `drain` first or not.
    pub fn request_shutdown(&self, drain: bool) {
        self.shutdown.send_replace(Some(drain));
    }

    /// Resolves when SHUTDOWN was asked for, with whether to drain.
    pub async fn shutdown_requested(&self) -> bool {
        let mut rx = self.shutdown.subscribe();
        loop {
            if let Some(drain) = *rx.borrow_and_update() {
                return drain;
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    }

    // ---- reload ---------------------------------------------------------

    pub fn set_config_path(&self, path: PathBuf) {
        *self.config_path.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    /// Re-reads the configuration file and applies it. An invalid file
    /// changes nothing; its error is logged and returned.
    pub async fn reload(&self) -> Result<String, String> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let path = self
            .config_path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(path) = path else {
            return Err("no configuration file to reload from".into());
        };
        let path2 = path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path2))
            .await
            .map_err(|e| e.to_string())?;
        match loaded {
            Ok(new) => Ok(self.apply(new)),
            Err(e) => {
                self.metrics.reloads_error.increment(1);
                tracing::error!(
                    "reload of {} rejected, the running configuration stays: {e}",
                    path.display()
                );
                Err(e.to_string())
            }
        }
    }

    /// Swaps in a validated configuration: pools whose settings changed are
    /// replaced (sessions move over between transactions), credentials and
    /// the log level change at once.
    pub fn apply(&self, new: Config) -> String {
        let old = self.config();
        let mut restart_needed = Vec::new();
        if old.pooler.listen != new.pooler.listen {
            restart_needed.push("pooler.listen");
        }
        if old.http != new.http {
            restart_needed.push("http");
        }
        if old.pooler.workers != new.pooler.workers {
            restart_needed.push("pooler.workers");
        }
        if old.pooler.sched_policy != new.pooler.sched_policy {
            restart_needed.push("pooler.sched_policy");
        }
        if old.pooler.log_format != new.pooler.log_format {
            restart_needed.push("pooler.log_format");
        }
        if old.pooler.so_reuseport != new.pooler.so_reuseport {
            restart_needed.push("pooler.so_reuseport");
        }
        if old.routing.classify_cache_memory != new.routing.classify_cache_memory {
            restart_needed.push("routing.classify_cache_memory");
        }
        if old.pooler.max_prepared_statement_memory != new.pooler.max_prepared_statement_memory {
            restart_needed.push("pooler.max_prepared_statement_memory");
        }
        if old.pooler.log_level != new.pooler.log_level {
            crate::logging::set_level(&new.pooler.log_level);
        }
        self.credentials.store(Arc::new(build_credentials(&new)));
        self.metrics
            .max_client_conn
            .set(new.pooler.max_client_conn as f64);
        let new = Arc::new(new);
        self.config.store(new.clone());
        for (slot, v) in self.idle_limits.iter().zip(idle_limits_of(&new)) {
            slot.store(v, Ordering::Relaxed);
        }
        let replaced = self.pools.reload(&old, &new);
        self.metrics.reloads_ok.increment(1);
        self.poke();
        let mut msg = format!("configuration reloaded; {replaced} pool(s) replaced");
        if !restart_needed.is_empty() {
            msg.push_str(&format!(
                "; these take effect only after a restart: {}",
                restart_needed.join(", ")
            ));
        }
        tracing::info!("{msg}");
        msg
    }
}

/// Holds one place under max_client_conn until dropped.
pub struct ClientSlot {
    app: Arc<App>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.app.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

fn build_credentials(cfg: &Config) -> HashMap<String, Credentials> {
    cfg.users
        .iter()
        .map(|(name, u)| {
            let method = u.auth.unwrap_or(cfg.auth.auth_type);
            let secret = u.password.as_deref().and_then(|p| Secret::parse(p).ok());
            (name.clone(), Credentials::new(method, secret))
        })
        .collect()
}

fn idle_limits_of(config: &Config) -> [u64; 2] {
    let ns = |d: Option<Duration>| d.map_or(0, |d| d.as_nanos().clamp(1, u64::MAX as u128) as u64);
    [
        ns(config.pooler.idle_transaction_timeout.enabled()),
        ns(config.pooler.client_idle_timeout.enabled()),
    ]
}
