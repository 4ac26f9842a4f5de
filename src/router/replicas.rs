//! A database's routing state: what the monitor knows of each replica (health,
//! bans, replay position, lag) and of the primary's WAL position, the function
//! catalog, and the load balancer that picks a replica for a read.

use arc_swap::ArcSwap;
use rand::RngExt;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::functions::FunctionPolicy;
use crate::config::{Config, LagLimit, LoadBalance};
use crate::server::ServerTarget;

/// Primary WAL positions kept to date a replica's replay position.
const HISTORY: usize = 4096;

pub struct DbRouting {
    pub database: String,
    pub config: Arc<Config>,
    pub replicas: Vec<ReplicaState>,
    /// (when the sample was asked for, the primary's WAL insert position).
    history: Mutex<VecDeque<(Instant, u64)>>,
    pub primary_ok: AtomicBool,
    policy: ArcSwap<FunctionPolicy>,
    /// Replica indexes repeated by weight, for round robin.
    schedule: Vec<usize>,
    next: AtomicUsize,
    /// Set when the pooler that owns this state goes away: the monitor stops.
    pub stopped: AtomicBool,
    /// Schema changes running now, by any client: every read goes to the
    /// primary meanwhile.
    schema_changes: AtomicUsize,
    /// When the last schema change finished: every client's reads then need
    /// a replica that has replayed it (read-your-writes for everyone).
    last_schema_change: Mutex<Option<Instant>>,
    /// The WAL position `last_schema_change` resolved to, once the primary
    /// was sampled after it; `UNRESOLVED` until then. Read on every routed
    /// read, so without the lock and the history search.
    schema_lsn: AtomicU64,
    /// Lag, lag bytes and ban gauges per replica, registered at first scrape.
    gauges: std::sync::OnceLock<Vec<[metrics::Gauge; 3]>>,
}

/// `DbRouting::schema_lsn` before the primary was sampled after the last
/// schema change.
const UNRESOLVED: u64 = u64::MAX;

/// Held while a client's attachment runs a schema change (DDL); dropping it
/// dates the change for every client's reads.
pub struct SchemaChange(Arc<DbRouting>);

impl SchemaChange {
    pub fn start(routing: &Arc<DbRouting>) -> SchemaChange {
        routing.schema_changes.fetch_add(1, Ordering::AcqRel);
        SchemaChange(routing.clone())
    }
}

impl Drop for SchemaChange {
    fn drop(&mut self) {
        let r = &self.0;
        {
            let mut last = r
                .last_schema_change
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *last = Some(Instant::now());
            r.schema_lsn.store(UNRESOLVED, Ordering::Release);
        }
        r.schema_changes.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the monitor knows of one replica.
pub struct ReplicaState {
    pub addr: String,
    pub weight: u32,
    /// The last check passed and the server is a standby.
    up: AtomicBool,
    /// Milliseconds since `epoch` until which the replica is banned; 0: none.
    banned_until_ms: AtomicU64,
    epoch: Instant,
    /// pg_last_wal_replay_lsn() at the last check.
    pub replay_lsn: AtomicU64,
    pub lag_bytes: AtomicU64,
    pub lag_ms: AtomicU64,
    /// Lag over `max_replica_lag` at the last check.
    lagging: AtomicBool,
}

impl ReplicaState {
    fn new(addr: &str, weight: u32) -> ReplicaState {
        ReplicaState {
            addr: addr.to_string(),
            weight,
            up: AtomicBool::new(false),
            banned_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            replay_lsn: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            lagging: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn banned(&self) -> bool {
        // 0 (never banned, or cleared by a passing check) needs no clock.
        let until = self.banned_until_ms.load(Ordering::Acquire);
        until != 0 && until > self.now_ms()
    }

    /// Forgets a ban that has run out, so that `banned` stops reading the
    /// clock; a ban set meanwhile stays.
    fn clear_expired_ban(&self) {
        let until = self.banned_until_ms.load(Ordering::Acquire);
        if until != 0 && until <= self.now_ms() {
            let _ = self.banned_until_ms.compare_exchange(
                until,
                0,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// Leaves the replica out for `ban_time`; it comes back after that once a
    /// check passes.
    pub fn ban(&self, ban_time: Duration, why: &str) {
        let until = self.now_ms() + ban_time.as_millis() as u64;
        let before = self.banned_until_ms.swap(until.max(1), Ordering::AcqRel);
        self.up.store(false, Ordering::Release);
        if before <= self.now_ms() {
            tracing::warn!(replica = %self.addr, "replica banned for {ban_time:?}: {why}");
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn is_lagging(&self) -> bool {
        self.lagging.load(Ordering::Acquire)
    }

    /// Fit for reads: up, not banned, not lagging.
    pub fn usable(&self) -> bool {
        self.is_up() && !self.banned() && !self.is_lagging()
    }
}

/// Why no replica was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoReplica {
    /// Every replica is down, banned or lagging (or there is none).
    Unfit,
    /// Fit replicas exist but none has replayed the client's last write yet.
    NotCaughtUp,
}

impl DbRouting {
    /// The routing state of a database; starts its monitor when it has
    /// replicas and routing is on.
    pub fn start(config: Arc<Config>, database: &str, primary: &ServerTarget) -> Arc<DbRouting> {
        let db = config.databases.get(database);
        let replicas: Vec<ReplicaState> = db
            .map(|d| {
                d.replicas
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        ReplicaState::new(a, d.replica_weights.get(i).copied().unwrap_or(1))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut schedule = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            for _ in 0..r.weight.min(100) {
                schedule.push(i);
            }
        }
        let routing = &config.routing;
        let policy =
            FunctionPolicy::new(None, &routing.read_only_functions, &routing.write_functions);
        let state = Arc::new(DbRouting {
            database: database.to_string(),
            replicas,
            history: Mutex::new(VecDeque::with_capacity(64)),
            primary_ok: AtomicBool::new(true),
            policy: ArcSwap::from_pointee(policy),
            schedule,
            next: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            schema_changes: AtomicUsize::new(0),
            last_schema_change: Mutex::new(None),
            schema_lsn: AtomicU64::new(0),
            gauges: std::sync::OnceLock::new(),
            config: config.clone(),
        });
        if state.routes() {
            super::monitor::spawn(&state, primary.clone());
        }
        state
    }

    /// Copies each replica's lag and ban state into the metrics.
    pub fn publish(&self, m: &crate::metrics::Metrics) {
        let gauges = self.gauges.get_or_init(|| {
            self.replicas
                .iter()
                .map(|r| {
                    let l = [
                        ("database", self.database.as_str()),
                        ("server", r.addr.as_str()),
                    ];
                    [
                        m.gauge("sluice_replica_lag_seconds", &l),
                        m.gauge("sluice_replica_lag_bytes", &l),
                        m.gauge("sluice_replica_banned", &l),
                    ]
                })
                .collect()
        });
        for (r, [secs, bytes, banned]) in self.replicas.iter().zip(gauges) {
            secs.set(r.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0);
            bytes.set(r.lag_bytes.load(Ordering::Relaxed) as f64);
            banned.set(if r.usable() { 0.0 } else { 1.0 });
        }
    }

    /// The primary answered the monitor's last check (true until one ran).
    pub fn primary_reachable(&self) -> bool {
        self.primary_ok.load(Ordering::Acquire)
    }

    /// Reads may go to replicas at all.
    pub fn routes(&self) -> bool {
        self.config.routing.read_write_split && !self.replicas.is_empty()
    }

    pub fn policy(&self) -> arc_swap::Guard<Arc<FunctionPolicy>> {
        self.policy.load()
    }

    pub(super) fn set_policy(&self, policy: FunctionPolicy) {
        self.policy.store(Arc::new(policy));
    }

    /// Records a sample of the primary's WAL position, asked for at `asked`.
    pub(super) fn record_primary(&self, asked: Instant, lsn: u64) {
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back((asked, lsn));
    }

    /// Records a replica's replay position and updates its lag and fitness.
    pub(super) fn record_replica(&self, index: usize, replay: u64) {
        let Some(r) = self.replicas.get(index) else {
            return;
        };
        let (lag_bytes, lag) = {
            let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
            let latest = h.back().map(|&(_, l)| l).unwrap_or(0);
            // The oldest primary sample the replica has not replayed dates
            // its lag: it has been behind at least since then.
            let first_unreplayed = h.partition_point(|&(_, l)| l <= replay);
            let lag = h
                .get(first_unreplayed)
                .map(|&(t, _)| t.elapsed())
                .unwrap_or(Duration::ZERO);
            (latest.saturating_sub(replay), lag)
        };
        tracing::trace!(replica = %r.addr, replay = format_args!("{replay:X}"), lag_bytes, lag_ms = lag.as_millis() as u64, "replica checked");
        r.replay_lsn.store(replay, Ordering::Release);
        r.lag_bytes.store(lag_bytes, Ordering::Release);
        r.lag_ms.store(lag.as_millis() as u64, Ordering::Release);
        let over = match self.config.routing.max_replica_lag {
            LagLimit::Time(d) => !d.0.is_zero() && lag > d.0,
            LagLimit::Bytes(b) => b > 0 && lag_bytes > b,
        };
        let was = r.lagging.swap(over, Ordering::AcqRel);
        if over != was {
            if over {
                tracing::warn!(replica = %r.addr, db = %self.database, lag_ms = lag.as_millis() as u64, lag_bytes, "replica lag over max_replica_lag: no reads until it catches up");
            } else {
                tracing::info!(replica = %r.addr, db = %self.database, lag_ms = lag.as_millis() as u64, lag_bytes, "replica caught up: serving reads again");
            }
        }
        r.clear_expired_ban();
        if !r.banned() && !r.up.swap(true, Ordering::AcqRel) {
            tracing::info!(replica = %r.addr, db = %self.database, "replica is up");
        }
    }

    /// Marks a replica down after a failed check (it stays out of rotation
    /// for `ban_time`).
    pub(super) fn replica_failed(&self, index: usize, why: &str) {
        if let Some(r) = self.replicas.get(index) {
            r.ban(self.config.routing.ban_time.0, why);
        }
    }

    /// The WAL position a read must see to include everything committed
    /// before `since`: the first primary sample asked for after it. `None`
    /// when no such sample exists yet.
    pub fn lsn_after(&self, since: Instant) -> Option<u64> {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let i = h.partition_point(|&(t, _)| t <= since);
        h.get(i).map(|&(_, l)| l)
    }

    /// The WAL position every client's reads need after schema changes;
    /// `None` while one runs or has not been sampled since it finished (reads
    /// then go to the primary).
    pub fn schema_lsn(&self) -> Option<u64> {
        if self.schema_changes.load(Ordering::Acquire) > 0 {
            return None;
        }
        let known = self.schema_lsn.load(Ordering::Acquire);
        if known != UNRESOLVED {
            return Some(known);
        }
        // Under the lock, so that a newer change cannot be overwritten by the
        // resolution of an older one.
        let last = self
            .last_schema_change
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let lsn = match *last {
            None => 0,
            Some(at) => self.lsn_after(at)?,
        };
        self.schema_lsn.store(lsn, Ordering::Release);
        Some(lsn)
    }

    /// Picks a fit replica that has replayed `min_lsn`, skipping `exclude`.
    /// `advance` is false for work that executes nothing (a prepare): round
    /// robin then picks the replica the next execution will get, where the
    /// statement is then already prepared.
    pub fn pick(
        &self,
        min_lsn: u64,
        exclude: Option<usize>,
        advance: bool,
        in_use: impl Fn(usize) -> usize,
    ) -> Result<usize, NoReplica> {
        let fit = |i: usize| {
            let r = &self.replicas[i];
            Some(i) != exclude && r.weight > 0 && r.usable()
        };
        let caught_up = |i: usize| self.replicas[i].replay_lsn.load(Ordering::Acquire) >= min_lsn;
        let any_fit = (0..self.replicas.len()).any(fit);
        if !any_fit {
            return Err(NoReplica::Unfit);
        }
        let ok = |i: usize| fit(i) && caught_up(i);
        let picked = match self.config.routing.load_balance {
            LoadBalance::RoundRobin => {
                let n = self.schedule.len();
                let start = if advance {
                    self.next.fetch_add(1, Ordering::Relaxed)
                } else {
                    self.next.load(Ordering::Relaxed)
                };
                (0..n)
                    .map(|k| self.schedule[(start + k) % n])
                    .find(|&i| ok(i))
            }
            LoadBalance::Random => {
                let total: u64 = (0..self.replicas.len())
                    .filter(|&i| ok(i))
                    .map(|i| self.replicas[i].weight as u64)
                    .sum();
                if total == 0 {
                    None
                } else {
                    let mut at = rand::rng().random_range(0..total);
                    (0..self.replicas.len()).filter(|&i| ok(i)).find(|&i| {
                        let w = self.replicas[i].weight as u64;
                        if at < w {
                            true
                        } else {
                            at -= w;
                            false
                        }
                    })
                }
            }
            LoadBalance::LeastConnections => {
                let n = self.replicas.len();
                // Ties go round robin: one offset per pick, not per candidate.
                let offset = self.next.fetch_add(1, Ordering::Relaxed) % n;
                (0..n)
                    .filter(|&i| ok(i))
                    // Fewest connections per unit of weight.
                    .min_by_key(|&i| {
                        let w = self.replicas[i].weight.max(1) as usize;
                        (in_use(i) * 1000 / w, (i + n - offset) % n)
                    })
            }
        };
        picked.ok_or(NoReplica::NotCaughtUp)
    }
}

impl DbRouting {
    /// Ends this database's monitors: they check nothing and log nothing
    /// from now on.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }
}

impl Drop for DbRouting {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The end of the last WAL record before an insert position. When the last
/// record filled its page, `pg_current_wal_insert_lsn()` points past the next
/// page's header (24 bytes, or 40 at a segment start), where no replay
/// position can ever be; records are at least 24 bytes long and never end
/// inside a header, so those offsets mean the page start.
pub fn record_end(insert_lsn: u64) -> u64 {
    const WAL_PAGE: u64 = 8192;
    match insert_lsn % WAL_PAGE {
        24 | 40 => insert_lsn - insert_lsn % WAL_PAGE,
        _ => insert_lsn,
    }
}

/// Parses a PostgreSQL LSN (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(parse_lsn("nonsense"), None);
        assert_eq!(parse_lsn("1/zz"), None);
    }

    #[test]
    fn insert_positions_past_a_page_header_mean_the_page_start() {
        assert_eq!(record_end(0x3000028), 0x3000000); // long header at a segment start
        assert_eq!(record_end(0x3002018), 0x3002000); // short header
        assert_eq!(record_end(0x3002060), 0x3002060); // mid-page: the record end itself
    }
}
