//! Pools of server connections, one per (database, user, server), on the
//! handoff pool in `slots.rs`. A `PoolGroup` holds a (database, user)'s
//! primary pool and one pool per replica, plus the database's routing state.
//!
//! The pooler resets a connection before it returns it; checkout checks that
//! an idle one is still fit; a maintenance task reaps idle connections, keeps
//! `min_pool_size` warm and ends waits past `query_wait_timeout`.

mod reload;
mod slots;

use slots::{Grant, Lease, Reservation, Slots, Take};
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

/// A server connection checked out of its pool; dropped, it goes back.
/// How often waits are checked against query_wait_timeout: a wait ends
/// within this much after its limit.
const WAIT_CHECK: Duration = Duration::from_millis(100);

pub type PooledServer = Lease<Box<ServerConn>>;

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

impl ServerManager {
    async fn create(&self) -> Result<Box<ServerConn>, ServerError> {
        self.connecting.fetch_add(1, Ordering::Relaxed);
        let counted = Connecting(&self.connecting);
        let mut conn = ServerConn::connect(&self.target, self.keepalive).await?;
        drop(counted);
        tracing::debug!(server = %conn.peer, pid = conn.pid, db = %self.target.dbname, "new server connection");
        let local = conn.stream.local_addr();
        let info = Arc::new(ServerInfo::new(
            conn.id,
            conn.peer.clone(),
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
        // Boxed: the pool moves its connections in and out of its stack and
        // through its handoff channel by value, and a ServerConn is several
        // hundred bytes.
        Ok(Box::new(conn))
    }

    /// Why an idle connection must not serve again, if it must not.
    fn unfit(&self, conn: &mut ServerConn, now: Instant) -> Option<&'static str> {
        if conn.broken || !conn.is_clean() {
            return Some("connection is not clean");
        }
        if conn
            .info
            .as_ref()
            .is_some_and(|i| i.epoch < self.current_epoch())
        {
            return Some("closed by RECONNECT or reload");
        }
        if self
            .lifetime
            .is_some_and(|max| now.saturating_duration_since(conn.created_at) > max)
        {
            return Some("server_lifetime reached");
        }
        if self
            .idle_timeout
            .is_some_and(|max| now.saturating_duration_since(conn.returned_at) > max)
        {
            return Some("server_idle_timeout reached");
        }
        if !conn.idle_socket_ok() {
            return Some("server closed the connection or sent unasked data");
        }
        None
    }
}

/// One pool: its key, its mode and the handoff pool behind it.
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
    manager: ServerManager,
    slots: Arc<Slots<Box<ServerConn>>>,
    /// query_wait_timeout
    wait_timeout: Option<Duration>,
    /// server_connect_timeout
    connect_timeout: Option<Duration>,
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
        Some(ServerPool {
            database: database.to_string(),
            user: user.to_string(),
            addr: addr.to_string(),
            role,
            mode: cfg.pool_mode_for(database, user),
            min_size: cfg.min_pool_size_for(database),
            reset_query: p.server_reset_query.clone(),
            reset_always: p.server_reset_query_always,
            manager,
            slots: Slots::new(cfg.pool_size_for(database, user)),
            wait_timeout: p.query_wait_timeout.enabled(),
            connect_timeout: p.server_connect_timeout.enabled(),
            retired: AtomicBool::new(false),
            resetting: AtomicUsize::new(0),
            gauges: ServerGauges::new(m, database, user, addr, role),
        })
    }

    /// Waits (first come, first served) for a server connection; `now` is
    /// the caller's clock read of this moment. Returns the server and the
    /// time it was had: `now` itself when an idle one was there at once.
    pub async fn checkout(&self, now: Instant) -> Result<(PooledServer, Instant), CheckoutError> {
        let mut waited = false;
        loop {
            let mut lease = match self.slots.take(now) {
                Take::Ready(lease) => lease,
                Take::Open(place) => return Ok((self.open(place).await?, Instant::now())),
                Take::Wait(grant) => {
                    waited = true;
                    match grant.await {
                        Ok(Grant::Ready(lease)) => lease,
                        Ok(Grant::Open(place)) => {
                            return Ok((self.open(place).await?, Instant::now()))
                        }
                        Ok(Grant::TimedOut) => return Err(CheckoutError::WaitTimeout),
                        Err(_) => return Err(CheckoutError::Closed),
                    }
                }
            };
            // A waiter's own clock read is from before its wait.
            let had_at = if waited { Instant::now() } else { now };
            match self.manager.unfit(&mut lease, had_at) {
                None => return Ok((lease, had_at)),
                Some(why) => {
                    tracing::debug!(server = %lease.peer, "closing an idle server connection: {why}");
                    self.discard(lease);
                }
            }
        }
    }

    /// Opens a connection in a place the pool counted for it.
    async fn open(
        &self,
        place: Reservation<Box<ServerConn>>,
    ) -> Result<PooledServer, CheckoutError> {
        let conn = match self.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, self.manager.create())
                .await
                .map_err(|_| CheckoutError::ConnectTimeout)??,
            None => self.manager.create().await?,
        };
        Ok(place.fill(conn))
    }

    /// Fails the checkouts that have waited longer than query_wait_timeout.
    pub fn expire_waits(&self, now: Instant) {
        if let Some(limit) = self.wait_timeout {
            if let Some(cutoff) = now.checked_sub(limit) {
                self.slots.expire_waiters(cutoff);
            }
        }
    }

    /// Where and as whom this pool connects.
    pub fn target(&self) -> &ServerTarget {
        &self.manager.target
    }

    /// Server connections checked out now.
    pub fn in_use(&self) -> usize {
        self.status().active
    }

    /// The parameters a fresh server reports, once one has connected.
    pub fn defaults(&self) -> Option<ParamMap> {
        self.manager
            .defaults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts, for SHOW POOLS and the metrics.
    pub fn status(&self) -> PoolStatus {
        let s = self.slots.counts();
        let connecting = self.manager.connecting.load(Ordering::Relaxed);
        PoolStatus {
            max_size: self.slots.max_size(),
            // Places being opened count in the size until they connect.
            active: s.size.saturating_sub(s.idle + connecting),
            idle: s.idle,
            used: self.resetting.load(Ordering::Relaxed),
            connecting,
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
            .manager
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
        self.manager.epoch.fetch_add(1, Ordering::Relaxed);
        self.close_idle();
    }

    /// Opened before the last RECONNECT or reload: closes once free.
    pub fn is_stale(&self, server: &ServerInfo) -> bool {
        self.retired.load(Ordering::Relaxed) || server.epoch < self.manager.current_epoch()
    }

    /// Connections still open from before the last RECONNECT (WAIT_CLOSE).
    pub fn old_connections(&self) -> usize {
        let epoch = self.manager.current_epoch();
        self.servers().iter().filter(|s| s.epoch < epoch).count()
    }

    /// Closes the idle connections.
    pub fn close_idle(&self) {
        for conn in self.slots.remove_idle(|_| false) {
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
                .is_some_and(|i| i.epoch < self.manager.current_epoch());
        if stale {
            tokio::spawn(server.detach().terminate());
        } else if server.is_clean() {
            server.returned_at = now;
            drop(server);
        } else {
            tracing::debug!(server = ?*server, "closing a server connection that is not clean");
            tokio::spawn(server.detach().terminate());
        }
    }

    /// Closes a connection that must not be reused.
    pub fn discard(&self, server: PooledServer) {
        tokio::spawn(server.detach().terminate());
    }

    /// Reaps idle connections past their idle time or lifetime, and opens
    /// connections up to the minimum size.
    pub async fn maintain(&self) {
        let lifetime = self.manager.lifetime;
        let idle = self.manager.idle_timeout;
        let now = Instant::now();
        let removed = self.slots.remove_idle(|conn| {
            let too_old =
                lifetime.is_some_and(|l| now.saturating_duration_since(conn.created_at) > l);
            let too_idle =
                idle.is_some_and(|i| now.saturating_duration_since(conn.returned_at) > i);
            !(too_old || too_idle || conn.broken)
        });
        for conn in removed {
            tokio::spawn(conn.terminate());
        }
        // Opened one at a time and returned, so a client that arrives
        // meanwhile is served first (a reservation is only taken while
        // nobody waits).
        while self.slots.counts().size < self.min_size {
            let Some(place) = self.slots.reserve() else {
                break;
            };
            if let Err(e) = self.open(place).await {
                tracing::warn!(db = %self.database, user = %self.user, "min_pool_size: {e}");
                break;
            }
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

    /// Ends waits past query_wait_timeout, checking every `WAIT_CHECK`, until
    /// the process ends. Apart from maintenance, which may wait on connects.
    pub async fn wait_expiry_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(WAIT_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            for pool in self.all() {
                pool.expire_waits(now);
            }
        }
    }
}
