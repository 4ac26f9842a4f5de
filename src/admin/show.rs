//! The SHOW commands. PgBouncer's columns come first, in its order, so that
//! its exporters and dashboards read sluice unchanged; sluice's own columns
//! (server, role, lag, bans, routing) follow.
//!
//! Columns PgBouncer has for features sluice does not have are there with
//! the value that is true of sluice: no reserve pool (0), cancel requests
//! forwarded at once rather than queued (0), no test queries on idle
//! connections (sv_tested 0), no TLS yet (empty).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::table::{timestamp, Cell, Table};
use crate::app::App;
use crate::client::registry::{self, ClientInfo};
use crate::config::Config;
use crate::metrics::stats::Totals;
use crate::server::info::{self, now_ms};

pub const TOPICS: &[&str] = &[
    "POOLS",
    "CLIENTS",
    "SERVERS",
    "STATS",
    "STATS_TOTALS",
    "STATS_AVERAGES",
    "DATABASES",
    "USERS",
    "CONFIG",
    "LISTS",
    "VERSION",
    "MEM",
];

/// The table for `SHOW topic`, or `None` for an unknown topic.
pub fn show(app: &App, topic: &str) -> Option<Table> {
    Some(match topic.to_ascii_uppercase().as_str() {
        "POOLS" => pools(app),
        "CLIENTS" => clients(app),
        "SERVERS" => servers(app),
        "STATS" => stats(app),
        "STATS_TOTALS" => stats_totals(app),
        "STATS_AVERAGES" => stats_averages(app),
        "DATABASES" => databases(app),
        "USERS" => users(app),
        "CONFIG" => config(app),
        "LISTS" => lists(app),
        "VERSION" => version(),
        "MEM" => mem(app),
        _ => return None,
    })
}

fn split_host_port(addr: &str) -> (String, Option<u16>) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.trim_matches(['[', ']']).to_string(), p.parse().ok()),
        None => (addr.to_string(), None),
    }
}

fn waiting_clients<'a>(
    clients: &'a [Arc<ClientInfo>],
    db: &'a str,
    user: &'a str,
) -> impl Iterator<Item = &'a Arc<ClientInfo>> {
    clients
        .iter()
        .filter(move |c| c.database == db && c.user == user && c.state() == registry::WAITING)
}

fn pools(app: &App) -> Table {
    let mut t = Table::new(&[
        "database",
        "user",
        "cl_active:int",
        "cl_waiting:int",
        "cl_active_cancel_req:int",
        "cl_waiting_cancel_req:int",
        "sv_active:int",
        "sv_active_cancel:int",
        "sv_being_canceled:int",
        "sv_idle:int",
        "sv_used:int",
        "sv_tested:int",
        "sv_login:int",
        "maxwait:int",
        "maxwait_us:int",
        "pool_mode",
        "server",
        "role",
        "paused:int",
        "replica_lag_ms:int",
        "replica_banned:int",
    ]);
    let clients = app.clients.all();
    let now = now_ms();
    for g in app.pools.groups() {
        let all = g.stats.clients.load(Ordering::Relaxed);
        let waiting = g.stats.waiting();
        let replica_status: Vec<_> = g.replicas.iter().map(|p| p.status()).collect();
        let on_replicas: usize = replica_status.iter().map(|s| s.active).sum();
        let waiting_on_replicas: usize = replica_status.iter().map(|s| s.waiting).sum();
        let longest = waiting_clients(&clients, &g.database, &g.user)
            .map(|c| now.saturating_sub(c.request_time()))
            .max()
            .unwrap_or(0);
        let paused = app.is_paused(&g.database);
        for (i, pool) in g.all().enumerate() {
            let s = pool.status();
            let (cl_active, cl_waiting, maxwait_ms) = if i == 0 {
                let cl_waiting = waiting.saturating_sub(waiting_on_replicas);
                let cl_active = all.saturating_sub(waiting).saturating_sub(on_replicas);
                (cl_active, cl_waiting, longest)
            } else {
                (s.active, s.waiting, 0)
            };
            let replica = (i > 0).then(|| &g.routing.replicas[i - 1]);
            t.push(vec![
                (&g.database).into(),
                (&g.user).into(),
                cl_active.into(),
                cl_waiting.into(),
                0usize.into(),
                0usize.into(),
                s.active.saturating_sub(s.used).into(),
                0usize.into(),
                0usize.into(),
                s.idle.into(),
                s.used.into(),
                0usize.into(),
                s.connecting.into(),
                (maxwait_ms / 1000).into(),
                (maxwait_ms % 1000 * 1000).into(),
                pool.mode.to_string().into(),
                (&pool.addr).into(),
                pool.role.into(),
                paused.into(),
                replica.map(|r| r.lag_ms.load(Ordering::Relaxed)).into(),
                replica.map(|r| !r.usable()).into(),
            ]);
        }
    }
    t
}

const CONNECTION_COLUMNS: &[&str] = &[
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port:int",
    "local_addr",
    "local_port:int",
    "connect_time",
    "request_time",
    "wait:int",
    "wait_us:int",
    "close_needed:int",
    "ptr",
    "link",
    "remote_pid:int",
    "tls",
    "application_name",
    "prepared_statements:int",
];

fn clients(app: &App) -> Table {
    let mut cols = CONNECTION_COLUMNS.to_vec();
    cols.extend(["id:int", "server"]);
    let mut t = Table::new(&cols);
    let now = now_ms();
    // Which server each linked client is on.
    let mut servers = BTreeMap::new();
    for p in app.pools.all() {
        for s in p.servers() {
            servers.insert(s.id, p.addr.clone());
        }
    }
    for c in app.clients.all() {
        let waiting = c.state() == registry::WAITING;
        let wait_ms = if waiting {
            now.saturating_sub(c.request_time())
        } else {
            0
        };
        let server = c.server();
        t.push(vec![
            "C".into(),
            (&c.user).into(),
            (&c.database).into(),
            "none".into(),
            if waiting { "waiting" } else { "active" }.into(),
            c.addr.ip().to_string().into(),
            c.addr.port().into(),
            c.local.map(|a| a.ip().to_string()).into(),
            c.local.map(|a| a.port()).into(),
            timestamp(c.connect_time).into(),
            timestamp(c.request_time()).into(),
            (wait_ms / 1000).into(),
            (wait_ms % 1000 * 1000).into(),
            0usize.into(),
            format!("{:x}", c.id as u32).into(),
            if server == 0 {
                String::new()
            } else {
                format!("s{server:x}")
            }
            .into(),
            0usize.into(),
            "".into(),
            (&c.application_name).into(),
            c.prepared.load(Ordering::Relaxed).into(),
            c.id.into(),
            servers.get(&server).cloned().into(),
        ]);
    }
    t
}

fn servers(app: &App) -> Table {
    let mut cols = CONNECTION_COLUMNS.to_vec();
    cols.extend(["id:int", "role"]);
    let mut t = Table::new(&cols);
    for g in app.pools.groups() {
        for p in g.all() {
            for s in p.servers() {
                let state = match s.state() {
                    info::ACTIVE => "active",
                    info::USED => "used",
                    _ => "idle",
                };
                let client = s.client();
                t.push(vec![
                    "S".into(),
                    (&g.user).into(),
                    (&g.database).into(),
                    "none".into(),
                    state.into(),
                    s.peer.host().into(),
                    s.peer.port().into(),
                    s.local.map(|a| a.ip().to_string()).into(),
                    s.local.map(|a| a.port()).into(),
                    timestamp(s.connect_time).into(),
                    timestamp(s.request_time()).into(),
                    0usize.into(),
                    0usize.into(),
                    p.is_stale(&s).into(),
                    format!("s{:x}", s.id).into(),
                    if client == 0 {
                        String::new()
                    } else {
                        format!("{:x}", client as u32)
                    }
                    .into(),
                    s.pid.into(),
                    "".into(),
                    "".into(),
                    s.prepared().into(),
                    (s.id as i64).into(),
                    p.role.into(),
                ]);
            }
        }
    }
    t
}

/// Totals and last-period differences per database, over its users.
fn per_database(app: &App) -> BTreeMap<String, (Totals, Totals, std::time::Duration)> {
    let mut by_db: BTreeMap<String, (Totals, Totals, std::time::Duration)> = BTreeMap::new();
    for s in app.pools.stats.all() {
        let e = by_db.entry(s.database.clone()).or_default();
        e.0.add(&s.totals());
        let (diff, period) = s.last_period();
        e.1.add(&diff);
        e.2 = e.2.max(period);
    }
    by_db
}

fn totals_cells(t: &Totals) -> Vec<Cell> {
    vec![
        t.server_assignments.into(),
        t.xacts.into(),
        t.queries.into(),
        t.received.into(),
        t.sent.into(),
        t.xact_time.into(),
        t.query_time.into(),
        t.wait_time.into(),
        t.client_parses.into(),
        t.server_parses.into(),
        t.binds.into(),
    ]
}

fn stats(app: &App) -> Table {
    let mut t = Table::new(&[
        "database",
        "total_server_assignment_count:int",
        "total_xact_count:int",
        "total_query_count:int",
        "total_received:int",
        "total_sent:int",
        "total_xact_time:int",
        "total_query_time:int",
        "total_wait_time:int",
        "total_client_parse_count:int",
        "total_server_parse_count:int",
        "total_bind_count:int",
        "avg_server_assignment_count:int",
        "avg_xact_count:int",
        "avg_query_count:int",
        "avg_recv:int",
        "avg_sent:int",
        "avg_xact_time:int",
        "avg_query_time:int",
        "avg_wait_time:int",
        "avg_client_parse_count:int",
        "avg_server_parse_count:int",
        "avg_bind_count:int",
    ]);
    for (db, (totals, diff, period)) in per_database(app) {
        let mut row = vec![Cell::from(db)];
        row.extend(totals_cells(&totals));
        row.extend(totals_cells(&diff.averages(period)));
        t.push(row);
    }
    t
}

const STAT_NAMES: &[&str] = &[
    "database",
    "server_assignment_count:int",
    "xact_count:int",
    "query_count:int",
    "bytes_received:int",
    "bytes_sent:int",
    "xact_time:int",
    "query_time:int",
    "wait_time:int",
    "client_parse_count:int",
    "server_parse_count:int",
    "bind_count:int",
];

fn stats_totals(app: &App) -> Table {
    let mut t = Table::new(STAT_NAMES);
    for (db, (totals, _, _)) in per_database(app) {
        let mut row = vec![Cell::from(db)];
        row.extend(totals_cells(&totals));
        t.push(row);
    }
    t
}

fn stats_averages(app: &App) -> Table {
    let mut t = Table::new(STAT_NAMES);
    for (db, (_, diff, period)) in per_database(app) {
        let mut row = vec![Cell::from(db)];
        row.extend(totals_cells(&diff.averages(period)));
        t.push(row);
    }
    t
}

fn databases(app: &App) -> Table {
    let mut t = Table::new(&[
        "name",
        "host",
        "port:int",
        "database",
        "force_user",
        "pool_size:int",
        "min_pool_size:int",
        "reserve_pool:int",
        "server_lifetime:int",
        "pool_mode",
        "max_connections:int",
        "current_connections:int",
        "paused:int",
        "disabled:int",
        "replicas",
        "route",
    ]);
    let cfg = app.config();
    let groups = app.pools.groups();
    for (name, db) in &cfg.databases {
        let (host, port) = split_host_port(&db.primary);
        let current: usize = groups
            .iter()
            .filter(|g| &g.database == name)
            .flat_map(|g| g.all().map(|p| p.servers().len()).collect::<Vec<_>>())
            .sum();
        t.push(vec![
            name.into(),
            host.into(),
            port.into(),
            db.dbname.clone().unwrap_or_else(|| name.clone()).into(),
            db.server_user.clone().into(),
            db.pool_size.unwrap_or(cfg.pooler.default_pool_size).into(),
            db.min_pool_size.unwrap_or(cfg.pooler.min_pool_size).into(),
            0usize.into(),
            cfg.pooler.server_lifetime.0.as_secs().into(),
            db.pool_mode
                .unwrap_or(cfg.pooler.pool_mode)
                .to_string()
                .into(),
            0usize.into(),
            current.into(),
            app.is_paused(name).into(),
            0usize.into(),
            db.replicas.join(",").into(),
            format!("{:?}", cfg.route_for(name, ""))
                .to_ascii_lowercase()
                .into(),
        ]);
    }
    t
}

fn users(app: &App) -> Table {
    let mut t = Table::new(&[
        "name",
        "pool_size:int",
        "reserve_pool_size:int",
        "pool_mode",
        "max_user_connections:int",
        "current_connections:int",
        "max_user_client_connections:int",
        "current_client_connections:int",
    ]);
    let cfg = app.config();
    let groups = app.pools.groups();
    let clients = app.clients.all();
    for (name, u) in &cfg.users {
        let servers: usize = groups
            .iter()
            .filter(|g| &g.user == name)
            .flat_map(|g| g.all().map(|p| p.servers().len()).collect::<Vec<_>>())
            .sum();
        let client_count = clients.iter().filter(|c| &c.user == name).count();
        t.push(vec![
            name.into(),
            u.pool_size.map(|n| n as i64).into(),
            0usize.into(),
            u.pool_mode.map(|m| m.to_string()).into(),
            0usize.into(),
            servers.into(),
            0usize.into(),
            client_count.into(),
        ]);
    }
    t
}

/// Settings that a reload does not change (they need a restart).
pub const RESTART_ONLY: &[&str] = &[
    "listen",
    "workers",
    "sched_policy",
    "log_format",
    "so_reuseport",
    "max_prepared_statement_memory",
    "routing.classify_cache_memory",
    "http.listen",
    "http.enabled",
];

fn flatten(cfg: &Config) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(toml::Value::Table(top)) = toml::Value::try_from(cfg) else {
        return out;
    };
    for section in ["pooler", "auth", "http", "routing"] {
        if let Some(toml::Value::Table(keys)) = top.get(section) {
            for (k, v) in keys {
                let text = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                // [pooler] keys are PgBouncer's names: its exporters read
                // them bare (max_client_conn, default_pool_size, ...).
                let key = if section == "pooler" {
                    k.clone()
                } else {
                    format!("{section}.{k}")
                };
                out.insert(key, text);
            }
        }
    }
    out
}

fn config(app: &App) -> Table {
    let mut t = Table::new(&["key", "value", "default", "changeable"]);
    let defaults = flatten(&Config::default());
    for (k, v) in flatten(&app.config()) {
        let changeable = if RESTART_ONLY.contains(&k.as_str()) {
            "no"
        } else {
            "yes"
        };
        t.push(vec![
            k.as_str().into(),
            v.into(),
            defaults.get(&k).cloned().into(),
            changeable.into(),
        ]);
    }
    t
}

fn lists(app: &App) -> Table {
    let mut t = Table::new(&["list", "items:int"]);
    let cfg = app.config();
    let logged_in = app.clients.len() + app.admin_sessions.load(Ordering::Relaxed);
    let servers: usize = app.pools.all().iter().map(|p| p.servers().len()).sum();
    let (statements, _) = app.statements.usage();
    let rows: [(&str, usize); 7] = [
        ("databases", cfg.databases.len()),
        ("users", cfg.users.len()),
        ("pools", app.pools.all().len()),
        ("used_clients", logged_in),
        ("login_clients", app.connections().saturating_sub(logged_in)),
        ("used_servers", servers),
        ("prepared_statements", statements),
    ];
    for (name, n) in rows {
        t.push(vec![name.into(), n.into()]);
    }
    t
}

pub fn version_string() -> String {
    format!("sluice {}", env!("CARGO_PKG_VERSION"))
}

fn version() -> Table {
    let mut t = Table::new(&["version"]);
    t.push(vec![version_string().into()]);
    t
}

fn mem(app: &App) -> Table {
    let mut t = Table::new(&["name", "size:int", "used:int", "free:int", "memtotal:int"]);
    let cfg = app.config();
    let (_, statement_bytes) = app.statements.usage();
    let limit = cfg.pooler.max_prepared_statement_memory;
    t.push(vec![
        "prepared_statement_text".into(),
        1usize.into(),
        statement_bytes.into(),
        limit.saturating_sub(statement_bytes).into(),
        limit.into(),
    ]);
    let (_, classify_bytes) = app.classifier.cache_usage();
    let limit = cfg.routing.classify_cache_memory as u64;
    t.push(vec![
        "classify_cache".into(),
        1usize.into(),
        classify_bytes.into(),
        limit.saturating_sub(classify_bytes).into(),
        limit.into(),
    ]);
    t
}
