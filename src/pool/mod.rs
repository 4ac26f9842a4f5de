//! Pools of server connections, one per (database, user, server), on deadpool.
//! A `PoolGroup` holds a (database, user)'s primary pool and one pool per
//! replica, plus the database's routing state.
//!
//! deadpool gives the bounded pool, the FIFO wait queue (its semaphore is
//! fair), the wait and connect timeouts and `retain` for reaping. It has no
//! hook on return and no minimum size, so the pooler resets a connection
//! before it drops the handle, and a maintenance task reaps idle connections
//! and keeps `min_pool_size` warm.

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult, Timeouts};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::Secret;
use crate::config::{Config, PoolMode};
use crate::router::replicas::DbRouting;
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
}

impl managed::Manager for ServerManager {
    type Type = ServerConn;
    type Error = ServerError;

    async fn create(&self) -> Result<ServerConn, ServerError> {
        let conn = ServerConn::connect(&self.target, self.keepalive).await?;
        tracing::debug!(server = %conn.peer, pid = conn.pid, db = %self.target.dbname, "new server connection");
        let mut d = self.defaults.lock().unwrap_or_else(|e| e.into_inner());
        if d.is_none() {
            *d = Some(conn.defaults.clone());
        }
        Ok(conn)
    }

    async fn recycle(
        &self,
        conn: &mut ServerConn,
        metrics: &Metrics,
    ) -> RecycleResult<ServerError> {
        if conn.broken || !conn.is_clean() {
            return Err(RecycleError::message("connection is not clean"));
        }
        if let Some(max) = self.lifetime {
            if metrics.age() > max {
                return Err(RecycleError::message("server_lifetime reached"));
            }
        }
        if let Some(max) = self.idle_timeout {
            if conn.returned_at.elapsed() > max {
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
    pub mode: PoolMode,
    pub min_size: usize,
    pub reset_query: String,
    pub reset_always: bool,
    inner: managed::Pool<ServerManager>,
    timeouts: Timeouts,
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
    pub fn build(cfg: &Config, database: &str, user: &str, addr: &str) -> Option<ServerPool> {
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
            mode: cfg.pool_mode_for(database, user),
            min_size: cfg.min_pool_size_for(database),
            reset_query: p.server_reset_query.clone(),
            reset_always: p.server_reset_query_always,
            inner,
            timeouts,
        })
    }

    /// Waits (first come, first served) for a server connection.
    pub async fn checkout(&self) -> Result<PooledServer, CheckoutError> {
        self.inner
            .timeout_get(&self.timeouts)
            .await
            .map_err(|e| match e {
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

    /// Returns a connection to the pool, or closes it when it is not clean.
    pub fn release(&self, mut server: PooledServer) {
        if server.is_clean() {
            server.returned_at = Instant::now();
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
            let now = Timeouts {
                wait: Some(Duration::ZERO),
                ..self.timeouts
            };
            let mut held = Vec::with_capacity(want);
            for _ in 0..want {
                match self.inner.timeout_get(&now).await {
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
    pub primary: Arc<ServerPool>,
    /// In the order of `[databases.*] replicas`, like `routing.replicas`.
    pub replicas: Vec<Arc<ServerPool>>,
    pub routing: Arc<DbRouting>,
    /// `route = "primary"` for this user or database.
    pub primary_only: bool,
}

impl PoolGroup {
    fn all(&self) -> impl Iterator<Item = &Arc<ServerPool>> {
        std::iter::once(&self.primary).chain(self.replicas.iter())
    }
}

/// All pools, created on first use, and each database's routing state.
#[derive(Default)]
pub struct Pools {
    map: Mutex<HashMap<(String, String), Arc<PoolGroup>>>,
    routing: Mutex<HashMap<String, Arc<DbRouting>>>,
}

impl Pools {
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
        let primary = Arc::new(ServerPool::build(cfg, database, user, &db.primary)?);
        let replicas = db
            .replicas
            .iter()
            .map(|addr| ServerPool::build(cfg, database, user, addr).map(Arc::new))
            .collect::<Option<Vec<_>>>()?;
        let routing = {
            let mut routing = self.routing.lock().unwrap_or_else(|e| e.into_inner());
            routing
                .entry(database.to_string())
                .or_insert_with(|| DbRouting::start(cfg.clone(), database, primary.target()))
                .clone()
        };
        let primary_only = cfg.route_for(database, user) == crate::config::Route::Primary;
        let group = Arc::new(PoolGroup {
            primary,
            replicas,
            routing,
            primary_only,
        });
        map.insert(key, group.clone());
        Some(group)
    }

    pub fn all(&self) -> Vec<Arc<ServerPool>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|g| g.all().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Each database's routing state.
    pub fn routing(&self, database: &str) -> Option<Arc<DbRouting>> {
        self.routing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(database)
            .cloned()
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
