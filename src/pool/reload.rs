//! Applying a new configuration to the pools. A (database, user)'s pools are
//! replaced when anything they were built from changed; sessions move to the
//! new ones before their next transaction, and the old connections close as
//! they come back. Unchanged pools keep their connections.

use crate::config::{Config, DatabaseConfig, Dur, PoolMode, UserConfig};

use super::Pools;

/// The `[pooler]` settings a pool is built from.
#[derive(PartialEq)]
struct PoolerInputs {
    default_pool_size: usize,
    min_pool_size: usize,
    pool_mode: PoolMode,
    query_wait_timeout: Dur,
    server_connect_timeout: Dur,
    server_idle_timeout: Dur,
    server_lifetime: Dur,
    server_reset_query: String,
    server_reset_query_always: bool,
    tcp_keepalive: bool,
}

impl PoolerInputs {
    fn of(cfg: &Config) -> PoolerInputs {
        let p = &cfg.pooler;
        PoolerInputs {
            default_pool_size: p.default_pool_size,
            min_pool_size: p.min_pool_size,
            pool_mode: p.pool_mode,
            query_wait_timeout: p.query_wait_timeout,
            server_connect_timeout: p.server_connect_timeout,
            server_idle_timeout: p.server_idle_timeout,
            server_lifetime: p.server_lifetime,
            server_reset_query: p.server_reset_query.clone(),
            server_reset_query_always: p.server_reset_query_always,
            tcp_keepalive: p.tcp_keepalive,
        }
    }
}

fn group_inputs<'a>(
    cfg: &'a Config,
    db: &str,
    user: &str,
) -> Option<(&'a DatabaseConfig, Option<&'a UserConfig>)> {
    Some((cfg.databases.get(db)?, cfg.users.get(user)))
}

impl Pools {
    /// Replaces the pools and routing state that `new` changes. Returns the
    /// number of (database, user) pools replaced or removed.
    pub fn reload(&self, old: &Config, new: &Config) -> usize {
        let pooler_changed = PoolerInputs::of(old) != PoolerInputs::of(new);
        let mut kept_routing = Vec::new();
        {
            let mut routing = self.routing.lock().unwrap_or_else(|e| e.into_inner());
            routing.retain(|db, (state, monitor_user)| {
                // The monitor logs in as the user of the pool that started it.
                let keep = old.routing == new.routing
                    && old.databases.contains_key(db)
                    && old.databases.get(db) == new.databases.get(db)
                    && old.users.get(monitor_user) == new.users.get(monitor_user);
                if keep {
                    kept_routing.push(db.clone());
                } else {
                    state
                        .stopped
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                keep
            });
        }
        let mut changed = 0;
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(db, user), group| {
            let keep = !pooler_changed
                && kept_routing.contains(db)
                && group_inputs(old, db, user).is_some()
                && group_inputs(old, db, user) == group_inputs(new, db, user);
            if !keep {
                tracing::info!(db = %db, user = %user, "reload: pools replaced");
                group.retire();
                changed += 1;
            }
            keep
        });
        changed
    }
}
