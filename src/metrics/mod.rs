//! Prometheus metrics. Each App owns a recorder (not the process-global
//! one, so that several pooler instances in one test process keep their own
//! figures). Handles are registered once, when a pool or database is first
//! used; the hot path only touches atomics and histogram handles.
//!
//! Counters that SHOW STATS also reports live in `stats::GroupStats` atomics;
//! a scrape copies them (and the live gauges) into the registry, then renders.

pub mod stats;

use metrics::{Counter, Gauge, Key, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::collections::HashMap;
use std::sync::Mutex;

use crate::router::classify::PinReason;

/// Histogram buckets, in seconds: from a loopback round trip to a stuck pool.
pub(crate) const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Why a unit of work went where it went (a label of `sluice_routed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteReason {
    /// Provably read-only, on a replica.
    Read,
    /// A READ ONLY transaction, on a replica.
    ReadOnlyTransaction,
    /// May write (or is not all here yet to tell).
    Write,
    /// A transaction that may write, or must run on the primary.
    Transaction,
    /// Pinned to its server (temporary table, advisory lock, ...).
    Pinned,
    /// Routing is off for this client (session mode, `route = "primary"`,
    /// `read_write_split = false`, no replicas).
    RoutingOff,
    /// No replica has replayed the client's last write (or a schema change).
    ReadYourWrites,
    /// No replica is fit (down, banned, lagging): fell back to the primary.
    NoReplica,
}

impl RouteReason {
    const ALL: [RouteReason; 8] = [
        RouteReason::Read,
        RouteReason::ReadOnlyTransaction,
        RouteReason::Write,
        RouteReason::Transaction,
        RouteReason::Pinned,
        RouteReason::RoutingOff,
        RouteReason::ReadYourWrites,
        RouteReason::NoReplica,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteReason::Read => "read",
            RouteReason::ReadOnlyTransaction => "read_only_transaction",
            RouteReason::Write => "write",
            RouteReason::Transaction => "transaction",
            RouteReason::Pinned => "pinned",
            RouteReason::RoutingOff => "routing_off",
            RouteReason::ReadYourWrites => "read_your_writes",
            RouteReason::NoReplica => "no_replica",
        }
    }
}

fn pin_label(reason: PinReason) -> &'static str {
    match reason {
        PinReason::TempTable => "temp_table",
        PinReason::AdvisoryLock => "advisory_lock",
        PinReason::WithHoldCursor => "with_hold_cursor",
        PinReason::Listen => "listen",
    }
}

const PINS: [PinReason; 4] = [
    PinReason::TempTable,
    PinReason::AdvisoryLock,
    PinReason::WithHoldCursor,
    PinReason::Listen,
];

/// Counters of routing decisions for one database: `[replica?][reason]`.
pub struct RouteCounters {
    counters: [[Counter; 8]; 2],
}

impl RouteCounters {
    /// Sets the counters to a database's totals, `[replica?][reason]`.
    pub fn publish(&self, totals: &[[u64; 8]; 2]) {
        for (row, counts) in self.counters.iter().zip(totals) {
            for (c, n) in row.iter().zip(counts) {
                c.absolute(*n);
            }
        }
    }
}

/// The App's metric registry and the handles that are not per pool.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub clients_connected: Gauge,
    pub max_client_conn: Gauge,
    pub draining: Gauge,
    pub prepared_hits: Counter,
    pub prepared_misses: Counter,
    pub logins_ok: Counter,
    pub logins_refused: Counter,
    pub reloads_ok: Counter,
    pub reloads_error: Counter,
    pins: [Counter; 4],
    /// By SQLSTATE class; a class gets its handle the first time it is seen.
    errors: Mutex<HashMap<[u8; 2], Counter>>,
    paused: Mutex<HashMap<String, Gauge>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        // The duration histograms are sluice's own (`stats.rs`): the
        // exporter keeps counters and gauges only.
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        let c = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
            recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
        };
        let g = |name: &'static str| recorder.register_gauge(&Key::from_name(name), &METADATA);
        let pins = PINS.map(|r| c("sluice_pins_total", &[("reason", pin_label(r))]));
        Metrics {
            clients_connected: g("sluice_clients_connected"),
            max_client_conn: g("sluice_max_client_conn"),
            draining: g("sluice_draining"),
            prepared_hits: c("sluice_prepared_cache_hits_total", &[]),
            prepared_misses: c("sluice_prepared_cache_misses_total", &[]),
            logins_ok: c("sluice_client_logins_total", &[("result", "ok")]),
            logins_refused: c("sluice_client_logins_total", &[("result", "refused")]),
            reloads_ok: c("sluice_config_reloads_total", &[("result", "ok")]),
            reloads_error: c("sluice_config_reloads_total", &[("result", "error")]),
            pins,
            errors: Mutex::new(HashMap::new()),
            paused: Mutex::new(HashMap::new()),
            recorder,
            handle,
        }
    }

    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    pub fn route_counters(&self, database: &str) -> RouteCounters {
        let row = |target: &str| {
            RouteReason::ALL.map(|r| {
                self.counter(
                    "sluice_routed_total",
                    &[
                        ("database", database),
                        ("target", target),
                        ("reason", r.as_str()),
                    ],
                )
            })
        };
        RouteCounters {
            counters: [row("primary"), row("replica")],
        }
    }

    pub fn count_pin(&self, reason: PinReason) {
        let i = PINS.iter().position(|r| *r == reason).unwrap_or(0);
        self.pins[i].increment(1);
    }

    /// Counts an ErrorResponse a client received, by SQLSTATE class.
    pub fn count_error(&self, sqlstate: &str) {
        let b = sqlstate.as_bytes();
        let class = match b {
            [a, b, ..] if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() => [*a, *b],
            _ => *b"XX",
        };
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        let counter = errors.entry(class).or_insert_with(|| {
            let label = String::from_utf8_lossy(&class).into_owned();
            self.counter("sluice_errors_total", &[("class", &label)])
        });
        counter.increment(1);
    }

    pub fn set_paused(&self, database: &str, paused: bool) {
        let mut map = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(database) {
            let g = self.gauge("sluice_paused", &[("database", database)]);
            map.insert(database.to_string(), g);
        }
        if let Some(g) = map.get(database) {
            g.set(if paused { 1.0 } else { 0.0 });
        }
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, SharedString::from(v.to_string())))
        .collect();
    Key::from_parts(name, labels)
}

fn describe(r: &PrometheusRecorder) {
    let d = |name: &'static str, unit: Option<Unit>, help: &'static str, kind: u8| {
        let name = metrics::KeyName::from_const_str(name);
        let help = SharedString::const_str(help);
        if kind == 0 {
            r.describe_counter(name, unit, help)
        } else {
            r.describe_gauge(name, unit, help)
        }
    };
    d(
        "sluice_clients_active",
        None,
        "Logged-in clients not waiting for a server",
        1,
    );
    d(
        "sluice_clients_waiting",
        None,
        "Clients waiting for a server connection",
        1,
    );
    d(
        "sluice_clients_connected",
        None,
        "All client connections, logging in or logged in",
        1,
    );
    d(
        "sluice_max_client_conn",
        None,
        "The max_client_conn setting",
        1,
    );
    d(
        "sluice_servers_active",
        None,
        "Server connections serving a client",
        1,
    );
    d(
        "sluice_servers_idle",
        None,
        "Server connections idle in the pool",
        1,
    );
    d(
        "sluice_servers_used",
        None,
        "Server connections being reset before reuse",
        1,
    );
    d(
        "sluice_servers_connecting",
        None,
        "Server connections being opened",
        1,
    );
    d(
        "sluice_pool_size",
        None,
        "Most server connections a pool may open",
        1,
    );
    d("sluice_paused", None, "1 while the database is paused", 1);
    d(
        "sluice_draining",
        None,
        "1 while sluice drains for shutdown",
        1,
    );
    d(
        "sluice_replica_lag_seconds",
        Some(Unit::Seconds),
        "Replay lag of a replica",
        1,
    );
    d(
        "sluice_replica_lag_bytes",
        Some(Unit::Bytes),
        "WAL bytes a replica has yet to replay",
        1,
    );
    d(
        "sluice_replica_banned",
        None,
        "1 while a replica gets no reads (banned or down)",
        1,
    );
    d(
        "sluice_queries_total",
        None,
        "Queries (requests answered by ReadyForQuery)",
        0,
    );
    d(
        "sluice_transactions_total",
        None,
        "Transactions (units that ended idle)",
        0,
    );
    d(
        "sluice_received_bytes_total",
        Some(Unit::Bytes),
        "Bytes received from clients",
        0,
    );
    d(
        "sluice_sent_bytes_total",
        Some(Unit::Bytes),
        "Bytes sent to clients",
        0,
    );
    d(
        "sluice_errors_total",
        None,
        "ErrorResponses sent to clients, by SQLSTATE class",
        0,
    );
    d(
        "sluice_routed_total",
        None,
        "Routing decisions, by target and reason",
        0,
    );
    d(
        "sluice_prepared_cache_hits_total",
        None,
        "Prepared statements a server already held",
        0,
    );
    d(
        "sluice_prepared_cache_misses_total",
        None,
        "Prepared statements sent to a server",
        0,
    );
    d(
        "sluice_pins_total",
        None,
        "Clients pinned to a server connection, by reason",
        0,
    );
    d(
        "sluice_config_reloads_total",
        None,
        "Configuration reloads, by result",
        0,
    );
    d(
        "sluice_client_logins_total",
        None,
        "Client logins, by result",
        0,
    );
    d(
        "sluice_client_wait_seconds",
        Some(Unit::Seconds),
        "Time clients waited for a server",
        2,
    );
    d(
        "sluice_query_duration_seconds",
        Some(Unit::Seconds),
        "Query time on the server",
        2,
    );
    d(
        "sluice_transaction_duration_seconds",
        Some(Unit::Seconds),
        "Transaction time",
        2,
    );
}
