//! Per (database, user) statistics: the totals SHOW STATS reports and the
//! Prometheus counters copy, kept across pool rebuilds on reload.
//!
//! A session counts into a `LocalStats` of its own and adds it here once per
//! transaction, so the shared atomics are touched a few times per
//! transaction, not per message.

use metrics::{Counter, Gauge};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Metrics;

/// PgBouncer's SHOW STATS counters, in its order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub server_assignments: u64,
    pub xacts: u64,
    pub queries: u64,
    pub received: u64,
    pub sent: u64,
    /// Microseconds.
    pub xact_time: u64,
    pub query_time: u64,
    pub wait_time: u64,
    pub client_parses: u64,
    pub server_parses: u64,
    pub binds: u64,
}

impl Totals {
    fn minus(&self, o: &Totals) -> Totals {
        Totals {
            server_assignments: self.server_assignments.saturating_sub(o.server_assignments),
            xacts: self.xacts.saturating_sub(o.xacts),
            queries: self.queries.saturating_sub(o.queries),
            received: self.received.saturating_sub(o.received),
            sent: self.sent.saturating_sub(o.sent),
            xact_time: self.xact_time.saturating_sub(o.xact_time),
            query_time: self.query_time.saturating_sub(o.query_time),
            wait_time: self.wait_time.saturating_sub(o.wait_time),
            client_parses: self.client_parses.saturating_sub(o.client_parses),
            server_parses: self.server_parses.saturating_sub(o.server_parses),
            binds: self.binds.saturating_sub(o.binds),
        }
    }

    pub fn add(&mut self, o: &Totals) {
        self.server_assignments += o.server_assignments;
        self.xacts += o.xacts;
        self.queries += o.queries;
        self.received += o.received;
        self.sent += o.sent;
        self.xact_time += o.xact_time;
        self.query_time += o.query_time;
        self.wait_time += o.wait_time;
        self.client_parses += o.client_parses;
        self.server_parses += o.server_parses;
        self.binds += o.binds;
    }

    /// PgBouncer's averages over a period: counts and bytes per second, times
    /// per transaction, query and server assignment.
    pub fn averages(&self, period: Duration) -> Totals {
        let secs = period.as_secs_f64().max(0.001);
        let per_sec = |v: u64| (v as f64 / secs).round() as u64;
        let per = |t: u64, n: u64| t.checked_div(n).unwrap_or(0);
        Totals {
            server_assignments: per_sec(self.server_assignments),
            xacts: per_sec(self.xacts),
            queries: per_sec(self.queries),
            received: per_sec(self.received),
            sent: per_sec(self.sent),
            xact_time: per(self.xact_time, self.xacts),
            query_time: per(self.query_time, self.queries),
            wait_time: per(self.wait_time, self.server_assignments),
            client_parses: per_sec(self.client_parses),
            server_parses: per_sec(self.server_parses),
            binds: per_sec(self.binds),
        }
    }
}

/// Histograms kept per (database, user): client wait, query and
/// transaction duration.
pub const WAIT: usize = 0;
pub const QUERY: usize = 1;
pub const XACT: usize = 2;
const HISTOGRAMS: [(&str, &str); 3] = [
    (
        "sluice_client_wait_seconds",
        "Time clients waited for a server",
    ),
    ("sluice_query_duration_seconds", "Query time on the server"),
    ("sluice_transaction_duration_seconds", "Transaction time"),
];
/// Buckets plus the overflow (+Inf) one.
const SLOTS: usize = super::BUCKETS.len() + 1;

/// `BUCKETS` in microseconds, so that an observation needs no float.
const BUCKETS_US: [u64; SLOTS - 1] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// The slot of a duration in microseconds.
fn slot(us: u64) -> usize {
    BUCKETS_US.partition_point(|&b| b < us)
}

/// One histogram's observations since the last flush. Its count is the sum
/// of its slots and its sum is the matching total (`wait_time`,
/// `query_time`, `xact_time`), so neither is counted twice.
#[derive(Debug, Default, Clone, Copy)]
struct LocalHistogram {
    slots: [u32; SLOTS],
    count: u32,
}

/// What one session counted since it last flushed.
#[derive(Debug, Default)]
pub struct LocalStats {
    pub totals: Totals,
    /// Mapped Parses answered without sending one to a server.
    pub prepared_hits: u64,
    /// Routing decisions, `[replica?][reason]`.
    routes: [[u32; 8]; 2],
    histograms: [LocalHistogram; 3],
}

impl LocalStats {
    /// Counts a duration in its histogram and adds it to the matching total.
    pub fn observe(&mut self, histogram: usize, d: std::time::Duration) {
        let us = d.as_micros() as u64;
        let h = &mut self.histograms[histogram];
        h.slots[slot(us)] += 1;
        h.count += 1;
        let total = match histogram {
            WAIT => &mut self.totals.wait_time,
            QUERY => &mut self.totals.query_time,
            _ => &mut self.totals.xact_time,
        };
        *total += us;
    }

    pub fn route(&mut self, replica: bool, reason: super::RouteReason) {
        self.routes[replica as usize][reason as usize] += 1;
    }
}

#[derive(Default)]
struct AtomicTotals {
    server_assignments: AtomicU64,
    xacts: AtomicU64,
    queries: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    xact_time: AtomicU64,
    query_time: AtomicU64,
    wait_time: AtomicU64,
    client_parses: AtomicU64,
    server_parses: AtomicU64,
    binds: AtomicU64,
}

#[derive(Default)]
struct AtomicHistogram {
    slots: [AtomicU64; SLOTS],
}

/// One worker thread's share of a group's counters. Each thread adds only
/// to its own shard, so the shared counters are not a cache line that
/// every core fights over on every transaction; readers sum the shards.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    totals: AtomicTotals,
    /// A signed count kept in two's complement, so that it is added to as
    /// every other counter is (one shard's share may be negative: a wait can
    /// end on another worker than it began on).
    waiting: AtomicU64,
    routes: [[AtomicU64; 8]; 2],
    histograms: [AtomicHistogram; 3],
}

const SHARDS: usize = 8;
/// The shard every thread past the first `SHARDS - 1` shares.
const SHARED_SHARD: usize = SHARDS - 1;

/// This thread's shard, and whether the thread owns it. The first threads to
/// flush (the runtime's workers) each own a shard and are its only writer, so
/// they add with a plain load and store; any later thread shares the last
/// shard and adds atomically.
fn shard_index() -> (usize, bool) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: (usize, bool) = {
            let n = NEXT.fetch_add(1, Relaxed);
            if n < SHARED_SHARD { (n, true) } else { (SHARED_SHARD, false) }
        };
    }
    INDEX.with(|i| *i)
}

/// Adds `v` to a shard's counter: the owner needs no read-modify-write (a
/// locked instruction per counter per transaction), readers still see
/// whole values.
#[inline]
fn add_to(c: &AtomicU64, v: u64, owned: bool) {
    if owned {
        c.store(c.load(Relaxed).wrapping_add(v), Relaxed);
    } else {
        c.fetch_add(v, Relaxed);
    }
}

pub struct GroupStats {
    pub database: String,
    pub user: String,
    shards: Box<[Shard; SHARDS]>,
    /// Logged-in clients of this (database, user), waiting or not.
    pub clients: AtomicUsize,
    queries_c: Counter,
    xacts_c: Counter,
    received_c: Counter,
    sent_c: Counter,
    clients_active_g: Gauge,
    clients_waiting_g: Gauge,
    pub pool_size_g: Gauge,
    /// Averages over the last full stats period.
    averages: Mutex<(Totals, Totals, Instant, Duration)>,
}

impl GroupStats {
    fn new(m: &Metrics, database: &str, user: &str) -> GroupStats {
        let l = [("database", database), ("user", user)];
        GroupStats {
            database: database.to_string(),
            user: user.to_string(),
            shards: Box::default(),
            clients: AtomicUsize::new(0),
            queries_c: m.counter("sluice_queries_total", &l),
            xacts_c: m.counter("sluice_transactions_total", &l),
            received_c: m.counter("sluice_received_bytes_total", &l),
            sent_c: m.counter("sluice_sent_bytes_total", &l),
            clients_active_g: m.gauge("sluice_clients_active", &l),
            clients_waiting_g: m.gauge("sluice_clients_waiting", &l),
            pool_size_g: m.gauge("sluice_pool_size", &l),
            averages: Mutex::new((
                Totals::default(),
                Totals::default(),
                Instant::now(),
                Duration::ZERO,
            )),
        }
    }

    /// Adds what a session counted to this thread's shard and clears it.
    pub fn flush(&self, local: &mut LocalStats) {
        let t = std::mem::take(&mut local.totals);
        let (index, owned) = shard_index();
        let shard = &self.shards[index];
        let a = &shard.totals;
        let add = |c: &AtomicU64, v: u64| {
            if v != 0 {
                add_to(c, v, owned);
            }
        };
        add(&a.server_assignments, t.server_assignments);
        add(&a.xacts, t.xacts);
        add(&a.queries, t.queries);
        add(&a.received, t.received);
        add(&a.sent, t.sent);
        add(&a.xact_time, t.xact_time);
        add(&a.query_time, t.query_time);
        add(&a.wait_time, t.wait_time);
        add(&a.client_parses, t.client_parses);
        add(&a.server_parses, t.server_parses);
        add(&a.binds, t.binds);
        for (r, row) in local.routes.iter_mut().enumerate() {
            for (i, n) in row.iter_mut().enumerate() {
                if *n != 0 {
                    add_to(&shard.routes[r][i], std::mem::take(n) as u64, owned);
                }
            }
        }
        for (h, lh) in local.histograms.iter_mut().enumerate() {
            if lh.count == 0 {
                continue;
            }
            let sh = &shard.histograms[h];
            for (i, n) in lh.slots.iter().enumerate() {
                if *n != 0 {
                    add_to(&sh.slots[i], *n as u64, owned);
                }
            }
            *lh = LocalHistogram::default();
        }
    }

    /// Changes the waiting count at once (not at the next flush): SHOW
    /// POOLS and the gauge must see a client that waits now.
    pub fn set_waiting(&self, on: bool) {
        let (index, owned) = shard_index();
        let d: i64 = if on { 1 } else { -1 };
        add_to(&self.shards[index].waiting, d as u64, owned);
    }

    /// Clients waiting for a server now.
    pub fn waiting(&self) -> usize {
        let n: i64 = self
            .shards
            .iter()
            .map(|s| s.waiting.load(Relaxed) as i64)
            .sum();
        n.max(0) as usize
    }

    pub fn totals(&self) -> Totals {
        let mut sum = Totals::default();
        for s in self.shards.iter() {
            let a = &s.totals;
            sum.add(&Totals {
                server_assignments: a.server_assignments.load(Relaxed),
                xacts: a.xacts.load(Relaxed),
                queries: a.queries.load(Relaxed),
                received: a.received.load(Relaxed),
                sent: a.sent.load(Relaxed),
                xact_time: a.xact_time.load(Relaxed),
                query_time: a.query_time.load(Relaxed),
                wait_time: a.wait_time.load(Relaxed),
                client_parses: a.client_parses.load(Relaxed),
                server_parses: a.server_parses.load(Relaxed),
                binds: a.binds.load(Relaxed),
            });
        }
        sum
    }

    /// Routing decisions so far, `[replica?][reason]`.
    pub fn routes(&self) -> [[u64; 8]; 2] {
        let mut out = [[0u64; 8]; 2];
        for s in self.shards.iter() {
            for (r, row) in s.routes.iter().enumerate() {
                for (i, n) in row.iter().enumerate() {
                    out[r][i] += n.load(Relaxed);
                }
            }
        }
        out
    }

    /// The last full period's differences and its length.
    pub fn last_period(&self) -> (Totals, Duration) {
        let a = self.averages.lock().unwrap_or_else(|e| e.into_inner());
        (a.1, a.3)
    }

    /// Closes a stats period: the averages become those since the last call.
    pub fn roll_period(&self) {
        let now = self.totals();
        let mut a = self.averages.lock().unwrap_or_else(|e| e.into_inner());
        a.1 = now.minus(&a.0);
        a.0 = now;
        a.3 = a.2.elapsed();
        a.2 = Instant::now();
    }

    /// Copies the totals and client gauges into the Prometheus registry.
    pub fn publish(&self) {
        let t = self.totals();
        self.queries_c.absolute(t.queries);
        self.xacts_c.absolute(t.xacts);
        self.received_c.absolute(t.received);
        self.sent_c.absolute(t.sent);
        let clients = self.clients.load(Relaxed);
        let waiting = self.waiting();
        self.clients_active_g
            .set(clients.saturating_sub(waiting) as f64);
        self.clients_waiting_g.set(waiting as f64);
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text of the three duration histograms of every group.
/// They are kept in the sharded atomics above rather than in the exporter's
/// registry, whose histograms take a shared atomic push and a clock read per
/// observation; so they are rendered here, in the same text format.
pub fn render_histograms(groups: &[Arc<GroupStats>]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (h, (name, help)) in HISTOGRAMS.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for g in groups {
            let mut slots = [0u64; SLOTS];
            let mut sum_us = 0u64;
            for s in g.shards.iter() {
                let a = &s.histograms[h];
                for (i, n) in a.slots.iter().enumerate() {
                    slots[i] += n.load(Relaxed);
                }
                let t = &s.totals;
                sum_us += match h {
                    WAIT => t.wait_time.load(Relaxed),
                    QUERY => t.query_time.load(Relaxed),
                    _ => t.xact_time.load(Relaxed),
                };
            }
            let count: u64 = slots.iter().sum();
            let labels = format!(
                "database=\"{}\",user=\"{}\"",
                escape_label(&g.database),
                escape_label(&g.user)
            );
            let mut cumulative = 0;
            for (i, bound) in super::BUCKETS.iter().enumerate() {
                cumulative += slots[i];
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let _ = writeln!(
                out,
                "{name}_sum{{{labels}}} {}",
                sum_us as f64 / 1_000_000.0
            );
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
    }
    out
}

/// Every (database, user)'s statistics, created on first use and kept.
#[derive(Default)]
pub struct StatsRegistry {
    map: Mutex<HashMap<(String, String), Arc<GroupStats>>>,
}

impl StatsRegistry {
    pub fn get(&self, m: &Metrics, database: &str, user: &str) -> Arc<GroupStats> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((database.to_string(), user.to_string()))
            .or_insert_with(|| Arc::new(GroupStats::new(m, database, user)))
            .clone()
    }

    pub fn all(&self) -> Vec<Arc<GroupStats>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.values().cloned().collect();
        v.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_are_rates_and_times_per_unit() {
        let t = Totals {
            xacts: 100,
            queries: 200,
            xact_time: 5_000,
            query_time: 4_000,
            server_assignments: 10,
            wait_time: 1_000,
            received: 1000,
            ..Totals::default()
        };
        let a = t.averages(Duration::from_secs(10));
        assert_eq!(a.xacts, 10);
        assert_eq!(a.queries, 20);
        assert_eq!(a.received, 100);
        assert_eq!(a.xact_time, 50);
        assert_eq!(a.query_time, 20);
        assert_eq!(a.wait_time, 100);
        assert_eq!(Totals::default().averages(Duration::ZERO).xact_time, 0);
    }

    #[test]
    fn microsecond_buckets_match_the_published_ones() {
        for (us, secs) in BUCKETS_US.iter().zip(super::super::BUCKETS) {
            assert_eq!(*us, (secs * 1_000_000.0).round() as u64);
        }
        assert_eq!(slot(0), 0);
        assert_eq!(slot(100), 0, "le is inclusive");
        assert_eq!(slot(101), 1);
        assert_eq!(slot(30_000_000), SLOTS - 2);
        assert_eq!(slot(30_000_001), SLOTS - 1);
    }

    #[test]
    fn flush_adds_and_clears() {
        let m = Metrics::new();
        let g = GroupStats::new(&m, "db", "u");
        let mut l = LocalStats::default();
        l.totals.xacts = 3;
        l.totals.sent = 10;
        g.flush(&mut l);
        assert_eq!(l.totals, Totals::default());
        let mut one = LocalStats::default();
        one.totals.xacts = 1;
        one.observe(WAIT, Duration::from_micros(300));
        one.observe(WAIT, Duration::from_secs(100));
        g.flush(&mut one);
        assert_eq!(g.totals().xacts, 4);
        assert_eq!(g.totals().sent, 10);
        g.publish();
        assert!(m
            .render()
            .contains("sluice_transactions_total{database=\"db\",user=\"u\"} 4"));
    }
}
