//! Pools of server connections, one per (database, user, server), on deadpool.
//! A `PoolGroup` holds a (database, user)'s primary pool and one pool per
//! replica, plus the database's routing state.
//!
//! deadpool gives the bounded pool, the FIFO wait queue (its semaphore is
//! fair), the wait and connect timeouts and `retain` for reaping. It has no
//! hook on return and no minimum size, so the pooler resets a connection
//! before it drops the handle, and a maintenance task reaps idle connections
//! and keeps `min_pool_size` warm.

mod reload;

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult, Timeouts};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::auth::Secret;
use crate::config::{Config, PoolMode};
use crate::metrics::stats::{GroupStats, StatsRegistry};
use crate::metrics::{Metrics as Registry, RouteCounters};
use crate::router::replicas::DbRouting;
use crate::server::info::{self, ServerInfo};
use crate::server::{ParamMap, ServerConn, ServerError, ServerTarget};

pub type PooledServer = Object<ServerManager>;

/// Creates and checks server connections for one pool.
pub struct ServerManager {
    pub target: ServerTarget,
    keepalive: bool,
    lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
    /// The parameters a fresh server reports, learned from the first one.
    defaults: Mutex<Option<ParamMap>>,
    /// Connections being opened now.
    connecting: AtomicUsize,
    /// Bumped by RECONNECT: connections from an older epoch are closed as
    /// soon as they are free.
    epoch: AtomicU64,
    /// Every connection this pool opened that still exists (SHOW SERVERS).
    servers: Mutex<Vec<Weak<ServerInfo>>>,
}

/// Counts a connection attempt for as long as it runs.
struct Connecting<'a>(&'a AtomicUsize);

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServerManager {
    fn current_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }
}

impl managed::Manager for ServerManager {
    // Boxed: deadpool moves its objects in and out of its queue by value on
    // every checkout and return, and a ServerConn is several hundred bytes.
    type Type = Box<ServerConn>;
    type Error = ServerError;

    async fn create(&self) -> Result<Box<ServerConn>, ServerError> {
        self.connecting.fetch_add(1, Ordering::Relaxed);
        let counted = Connecting(&self.connecting);
        let mut conn = ServerConn::connect(&self.target, self.keepalive).await?;
        drop(counted);
        tracing::debug!(server = %conn.peer, pid = conn.pid, db = %self.target.dbname, "new server connection");
        let local = conn.stream.local_addr().ok();
        let info = Arc::new(ServerInfo::new(
            conn.id,
            conn.peer,
            local,
            conn.pid,
            self.current_epoch(),
        ));
        {
            let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
            servers.retain(|w| w.strong_count() > 0);
            servers.push(Arc::downgrade(&info));
        }
        conn.info = Some(info);
        let mut d = self.defaults.lock().unwrap_or_else(|e| e.into_inner());
        if d.is_none() {
            *d = Some(conn.defaults.clone());
        }
        Ok(Box::new(conn))
    }

    async fn recycle(
        &self,
        conn: &mut Box<ServerConn>,
        metrics: &Metrics,
    ) -> RecycleResult<ServerError> {
        if conn.broken || !conn.is_clean() {
            return Err(RecycleError::message("connection is not clean"));
        }
        if conn
            .info
            .as_ref()
            .is_some_and(|i| i.epoch < self.current_epoch())
        {
            return Err(RecycleError::message("closed by RECONNECT or reload"));
        }
        let now = Instant::now();
        if let Some(max) = self.lifetime {
            if now.saturating_duration_since(metrics.created) > max {
                return Err(RecycleError::message("server_lifetime reached"));
            }
        }
        if let Some(max) = self.idle_timeout {
            if now.saturating_duration_since(conn.returned_at) > max {
                return Err(RecycleError::message("server_idle_timeout reached"));
            }
        }
        if !conn.idle_socket_ok() {
            return Err(RecycleError::message(
                "server closed the connection or sent unasked data",
            ));
        }
        Ok(())
    }
}

/// One pool: its key, its mode and the deadpool behind it.
pub struct ServerPool {
    pub database: String,
    pub user: String,
    /// `host:port` of the server.
    pub addr: String,
    /// `primary` or `replica`.
    pub role: &'static str,
    pub mode: PoolMode,
    pub min_size: usize,
    pub reset_query: String,
    pub reset_always: bool,
    inner: managed::Pool<ServerManager>,
    timeouts: Timeouts,
    /// `timeouts` with a zero wait: take a free server or none, without
    /// building a wait timer.
    no_wait: Timeouts,
    /// Set on reload when a new pool replaces this one: connections close
    /// when they come back.
    retired: AtomicBool,
    /// Connections being reset before they go back (sv_used).
    resetting: AtomicUsize,
    gauges: ServerGauges,
}

struct ServerGauges {
    active: metrics::Gauge,
    idle: metrics::Gauge,
    used: metrics::Gauge,
    connecting: metrics::Gauge,
}

impl ServerGauges {
    fn new(m: &Registry, database: &str, user: &str, server: &str, role: &str) -> Self {
        let l = [
            ("database", database),
            ("user", user),
            ("server", server),
            ("role", role),
        ];
        ServerGauges {
            active: m.gauge("sluice_servers_active", &l),
            idle: m.gauge("sluice_servers_idle", &l),
            used: m.gauge("sluice_servers_used", &l),
            connecting: m.gauge("sluice_servers_connecting", &l),
        }
    }
}

/// A pool's connection counts now.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStatus {
    pub max_size: usize,
    /// Checked out (serving a client), including those being reset.
    pub active: usize,
    pub idle: usize,
    /// Being reset before reuse.
    pub used: usize,
    pub connecting: usize,
    /// Clients waiting for a connection of this pool.
    pub waiting: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("query_wait_timeout: no server connection became free in time")]
    WaitTimeout,
    #[error("server_connect_timeout: connecting to the server took too long")]
    ConnectTimeout,
    #[error("the pool is closed")]
    Closed,
    #[error(transparent)]
    Server(#[from] ServerError),
}

impl ServerPool {
    pub fn build(
        cfg: &Config,
        m: &Registry,
        database: &str,
        user: &str,
        addr: &str,
        role: &'static str,
    ) -> Option<ServerPool> {
        let db = cfg.databases.get(database)?;
        let password = match &db.server_user {
            Some(_) => db
                .server_password
                .as_deref()
                .and_then(|p| Secret::parse(p).ok()),
            None => cfg
                .users
                .get(user)
                .and_then(|u| u.password.as_deref())
                .and_then(|p| Secret::parse(p).ok()),
        };
        let target = ServerTarget {
            addr: addr.to_string(),
            dbname: db.dbname.clone().unwrap_or_else(|| database.to_string()),
            user: db.server_user.clone().unwrap_or_else(|| user.to_string()),
            password,
        };
        let p = &cfg.pooler;
        let manager = ServerManager {
            target,
            keepalive: p.tcp_keepalive,
            lifetime: p.server_lifetime.enabled(),
            idle_timeout: p.server_idle_timeout.enabled(),
            defaults: Mutex::new(None),
            connecting: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            servers: Mutex::new(Vec::new()),
        };
        let timeouts = Timeouts {
            wait: p.query_wait_timeout.enabled(),
            create: p.server_connect_timeout.enabled(),
            // recycle() never blocks: no timer needed.
            recycle: None,
        };
        let inner = managed::Pool::builder(manager)
            .max_size(cfg.pool_size_for(database, user))
            .timeouts(timeouts)
            .queue_mode(deadpool::managed::QueueMode::Lifo)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .ok()?;
        Some(ServerPool {
            database: database.to_string(),
            user: user.to_string(),
            addr: addr.to_string(),
            role,
            mode: cfg.pool_mode_for(database, user),
            min_size: cfg.min_pool_size_for(database),
            reset_query: p.server_reset_query.clone(),
            reset_always: p.server_reset_query_always,
            inner,
            timeouts,
            no_wait: Timeouts {
                wait: Some(Duration::ZERO),
                ..timeouts
            },
            retired: AtomicBool::new(false),
            resetting: AtomicUsize::new(0),
            gauges: ServerGauges::new(m, database, user, addr, role),
        })
    }

    /// Waits (first come, first served) for a server connection.
    pub async fn checkout(&self) -> Result<PooledServer, CheckoutError> {
        // Most checkouts find a server at once. A zero wait takes a permit
        // without building the wait timeout (a clock read and a timer entry);
        // it never jumps the queue, since tokio's semaphore hands a returned
        // permit to the longest waiter before anyone else can take it.
        let got = match self.inner.timeout_get(&self.no_wait).await {
            Err(PoolError::Timeout(managed::TimeoutType::Wait)) => {
                self.inner.timeout_get(&self.timeouts).await
            }
            got => got,
        };
        got.map_err(|e| match e {
            PoolError::Timeout(managed::TimeoutType::Wait) => CheckoutError::WaitTimeout,
            PoolError::Timeout(_) => CheckoutError::ConnectTimeout,
            PoolError::Backend(e) => CheckoutError::Server(e),
            _ => CheckoutError::Closed,
        })
    }

    /// Where and as whom this pool connects.
    pub fn target(&self) -> &ServerTarget {
        &self.inner.manager().target
    }

    /// Server connections checked out now.
    pub fn in_use(&self) -> usize {
        let s = self.inner.status();
        s.size.saturating_sub(s.available)
    }

    /// The parameters a fresh server reports, once one has connected.
    pub fn defaults(&self) -> Option<ParamMap> {
        self.inner
            .manager()
            .defaults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts, for SHOW POOLS and the metrics.
    pub fn status(&self) -> PoolStatus {
        let s = self.inner.status();
        PoolStatus {
            max_size: s.max_size,
            active: s.size.saturating_sub(s.available),
            idle: s.available,
            used: self.resetting.load(Ordering::Relaxed),
            connecting: self.inner.manager().connecting.load(Ordering::Relaxed),
            waiting: s.waiting,
        }
    }

    /// Copies the counts into the Prometheus gauges.
    pub fn publish(&self) {
        let s = self.status();
        let g = &self.gauges;
        g.active.set(s.active.saturating_sub(s.used) as f64);
        g.idle.set(s.idle as f64);
        g.used.set(s.used as f64);
        g.connecting.set(s.connecting as f64);
    }

    /// Every connection this pool has open, idle or serving.
    pub fn servers(&self) -> Vec<Arc<ServerInfo>> {
        let servers = self
            .inner
            .manager()
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        servers.iter().filter_map(Weak::upgrade).collect()
    }

    /// Marks a connection as being reset before its return (sv_used).
    pub fn resetting(&self, srv: &ServerConn, on: bool) {
        if on {
            self.resetting.fetch_add(1, Ordering::Relaxed);
        } else {
            self.resetting.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(i) = &srv.info {
            i.set_state(if on { info::USED } else { info::ACTIVE });
        }
    }

    /// Closes every connection as soon as it is free (RECONNECT): idle ones
    /// now, the others when they come back.
    pub fn reconnect(&self) {
        self.inner.manager().epoch.fetch_add(1, Ordering::Relaxed);
        self.close_idle();
    }

    /// Opened before the last RECONNECT or reload: closes once free.
    pub fn is_stale(&self, server: &ServerInfo) -> bool {
        self.retired.load(Ordering::Relaxed) || server.epoch < self.inner.manager().current_epoch()
    }

    /// Connections still open from before the last RECONNECT (WAIT_CLOSE).
    pub fn old_connections(&self) -> usize {
        let epoch = self.inner.manager().current_epoch();
        self.servers().iter().filter(|s| s.epoch < epoch).count()
    }

    /// Closes the idle connections.
    pub fn close_idle(&self) {
        let removed = self.inner.retain(|_, _| false);
        for conn in removed.removed {
            tokio::spawn(conn.terminate());
        }
    }

    /// A new pool replaces this one: close what is idle, and the rest when
    /// it comes back.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.reconnect();
        let g = &self.gauges;
        for gauge in [&g.active, &g.idle, &g.used, &g.connecting] {
            gauge.set(0.0);
        }
    }

    /// Returns a connection to the pool, or closes it when it is not clean.
    pub fn release(&self, server: PooledServer) {
        self.release_at(server, Instant::now());
    }

    /// `release` with the caller's clock read of this moment.
    pub fn release_at(&self, mut server: PooledServer, now: Instant) {
        if let Some(i) = &server.info {
            i.set_state(info::IDLE);
            i.set_prepared(server.prepared.len());
        }
        let stale = self.retired.load(Ordering::Relaxed)
            || server
                .info
                .as_ref()
                .is_some_and(|i| i.epoch < self.inner.manager().current_epoch());
        if stale {
            let conn = Object::take(server);
            tokio::spawn(conn.terminate());
        } else if server.is_clean() {
            server.returned_at = now;
            drop(server);
        } else {
            tracing::debug!(server = ?*server, "closing a server connection that is not clean");
            let conn = Object::take(server);
            tokio::spawn(conn.terminate());
        }
    }

    /// Closes a connection that must not be reused.
    pub fn discard(&self, server: PooledServer) {
        let conn = Object::take(server);
        tokio::spawn(conn.terminate());
    }

    /// Reaps idle connections past their idle time or lifetime, and opens
    /// connections up to the minimum size.
    pub async fn maintain(&self) {
        let lifetime = self.inner.manager().lifetime;
        let idle = self.inner.manager().idle_timeout;
        let removed = self.inner.retain(|conn, metrics| {
            let too_old = lifetime.is_some_and(|l| metrics.age() > l);
            let too_idle = idle.is_some_and(|i| conn.returned_at.elapsed() > i);
            !(too_old || too_idle || conn.broken)
        });
        for conn in removed.removed {
            tokio::spawn(conn.terminate());
        }
        let status = self.inner.status();
        if status.size < self.min_size {
            // deadpool opens a connection only when no idle one is left, so
            // hold every idle one plus the missing number at once; a zero wait
            // never blocks on a busy pool.
            let want = self.min_size - status.size + status.available;
            let mut held = Vec::with_capacity(want);
            for _ in 0..want {
                match self.inner.timeout_get(&self.no_wait).await {
                    Ok(c) => held.push(c),
                    Err(PoolError::Timeout(_)) => break,
                    Err(e) => {
                        tracing::warn!(db = %self.database, user = %self.user, "min_pool_size: {e}");
                        break;
                    }
                }
            }
            drop(held);
        }
    }
}

/// The pools a (database, user) pair is served from.
pub struct PoolGroup {
    pub database: String,
    pub user: String,
    pub primary: Arc<ServerPool>,
    /// In the order of `[databases.*] replicas`, like `routing.replicas`.
    pub replicas: Vec<Arc<ServerPool>>,
    pub routing: Arc<DbRouting>,
    /// `route = "primary"` for this user or database.
    pub primary_only: bool,
    pub stats: Arc<GroupStats>,
    pub routes: RouteCounters,
    /// Replaced on reload (or its database removed): sessions move to the
    /// new group before their next transaction.
    retired: AtomicBool,
}

impl PoolGroup {
    pub fn all(&self) -> impl Iterator<Item = &Arc<ServerPool>> {
        std::iter::once(&self.primary).chain(self.replicas.iter())
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        for p in self.all() {
            p.retire();
        }
    }
}

/// All pools, created on first use, and each database's routing state.
pub struct Pools {
    map: Mutex<HashMap<(String, String), Arc<PoolGroup>>>,
    /// Each database's routing state, with the user its monitor logs in as.
    routing: Mutex<HashMap<String, (Arc<DbRouting>, String)>>,
    pub metrics: Arc<Registry>,
    pub stats: StatsRegistry,
}

impl Pools {
    pub fn new(metrics: Arc<Registry>) -> Pools {
        Pools {
            map: Mutex::default(),
            routing: Mutex::default(),
            metrics,
            stats: StatsRegistry::default(),
        }
    }

    pub fn get_or_create(
        &self,
        cfg: &Arc<Config>,
        database: &str,
        user: &str,
    ) -> Option<Arc<PoolGroup>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let key = (database.to_string(), user.to_string());
        if let Some(p) = map.get(&key) {
            return Some(p.clone());
        }
        let db = cfg.databases.get(database)?;
        let m = &self.metrics;
        let primary = Arc::new(ServerPool::build(
            cfg,
            m,
            database,
            user,
            &db.primary,
            "primary",
        )?);
        let replicas = db
            .replicas
            .iter()
            .map(|addr| ServerPool::build(cfg, m, database, user, addr, "replica").map(Arc::new))
            .collect::<Option<Vec<_>>>()?;
        let routing = {
            let mut routing = self.routing.lock().unwrap_or_else(|e| e.into_inner());
            routing
                .entry(database.to_string())
                .or_insert_with(|| {
                    let r = DbRouting::start(cfg.clone(), database, primary.target());
                    (r, user.to_string())
                })
                .0
                .clone()
        };
        let primary_only = cfg.route_for(database, user) == crate::config::Route::Primary;
        let stats = self.stats.get(m, database, user);
        stats.pool_size_g.set(primary.status().max_size as f64);
        let group = Arc::new(PoolGroup {
            database: database.to_string(),
            user: user.to_string(),
            primary,
            replicas,
            routing,
            primary_only,
            stats,
            routes: m.route_counters(database),
            retired: AtomicBool::new(false),
        });
        map.insert(key, group.clone());
        Some(group)
    }

    pub fn all(&self) -> Vec<Arc<ServerPool>> {
        self.groups()
            .iter()
            .flat_map(|g| g.all().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Every (database, user)'s pools, sorted by database and user.
    pub fn groups(&self) -> Vec<Arc<PoolGroup>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.values().cloned().collect();
        v.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        v
    }

    /// Each database's routing state, sorted by database.
    pub fn all_routing(&self) -> Vec<(String, Arc<DbRouting>)> {
        let map = self.routing.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Each database's routing state.
    pub fn routing(&self, database: &str) -> Option<Arc<DbRouting>> {
        self.routing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(database)
            .map(|(r, _)| r.clone())
    }

    /// Runs pool maintenance every second until the process ends.
    pub async fn maintenance_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            for pool in self.all() {
                pool.maintain().await;
            }
        }
    }
}
