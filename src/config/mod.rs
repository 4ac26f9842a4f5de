//! `pooler.toml`: the schema, its defaults, validation and the effective-config
//! printout of `sluice check`.
//!
//! Names follow PgBouncer where the concept is the same. Unknown keys are an
//! error that names the key and its line.

mod values;

use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use values::{env_string, env_string_list, opt_env_string};
pub use values::{expand_env, format_duration, parse_duration, Dur, OneOrMany};

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub pooler: PoolerConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub users: BTreeMap<String, UserConfig>,
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Session,
    #[default]
    Transaction,
    Statement,
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        })
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
pub enum AuthType {
    #[serde(rename = "trust")]
    Trust,
    #[serde(rename = "md5")]
    Md5,
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolerConfig {
    #[serde(deserialize_with = "env_string_list")]
    pub listen: Vec<String>,
    pub pool_mode: PoolMode,
    pub max_client_conn: usize,
    pub default_pool_size: usize,
    pub min_pool_size: usize,
    pub admin_users: Vec<String>,
    pub stats_users: Vec<String>,
    /// How long a client may wait for a server connection.
    pub query_wait_timeout: Dur,
    /// How long a client may take to log in.
    pub client_login_timeout: Dur,
    /// Close a client idle (not in a transaction) this long; 0 disables.
    pub client_idle_timeout: Dur,
    /// Close a client idle inside a transaction this long; 0 disables.
    pub idle_transaction_timeout: Dur,
    pub server_connect_timeout: Dur,
    /// Close a pooled server connection unused this long; 0 disables.
    pub server_idle_timeout: Dur,
    /// Close a server connection this old (checked at checkout and by the
    /// maintenance task); 0 disables.
    pub server_lifetime: Dur,
    /// Run at release in session mode (and in every mode when
    /// `server_reset_query_always`).
    pub server_reset_query: String,
    pub server_reset_query_always: bool,
    /// Largest message the pooler buffers whole (queries, Parse); bulk data
    /// (rows, COPY, Bind) streams through whatever its size.
    pub max_packet_size: usize,
    /// Prepared statements kept per server connection in transaction and
    /// statement mode (least recently used are closed); 0 turns statement
    /// mapping off.
    pub max_prepared_statements: usize,
    /// Bytes of statement text the pooler-wide statement registry may hold.
    pub max_prepared_statement_memory: usize,
    /// How long a drain on SIGTERM waits for open transactions.
    pub shutdown_timeout: Dur,
    /// How long a drain keeps accepting new clients after /ready turns 503,
    /// so that load balancers stop sending them first.
    pub shutdown_delay: Dur,
    pub tcp_keepalive: bool,
    /// Runtime worker threads; 0 uses one per CPU (or $TOKIO_WORKER_THREADS).
    /// 1 runs a current-thread runtime, which spends the least CPU per
    /// transaction; more use more cores.
    pub workers: usize,
    /// How Linux schedules the runtime threads: `batch` (SCHED_BATCH) lets a
    /// woken pooler wait for the running task's slice instead of preempting
    /// it, so events gather and each wake-up serves many; `normal` is the
    /// default policy of other processes.
    pub sched_policy: SchedPolicy,
    /// Bind listeners with SO_REUSEPORT, so that a second process can share
    /// the port (rolling restarts); off by default so a port clash is an error.
    pub so_reuseport: bool,
    pub log_connections: bool,
    pub log_disconnections: bool,
    /// `text` (readable) or `json` (one object per line).
    pub log_format: LogFormat,
    /// A tracing filter: `info`, `debug`, `sluice=debug,warn`; `SLUICE_LOG`
    /// wins over it when set. Changes on reload.
    pub log_level: String,
    /// The period SHOW STATS averages over.
    pub stats_period: Dur,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SchedPolicy {
    #[default]
    Batch,
    Normal,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for PoolerConfig {
    fn default() -> Self {
        PoolerConfig {
            listen: vec!["127.0.0.1:6432".into()],
            pool_mode: PoolMode::Transaction,
            max_client_conn: 10_000,
            default_pool_size: 20,
            min_pool_size: 0,
            admin_users: vec![],
            stats_users: vec![],
            query_wait_timeout: Dur::secs(120),
            client_login_timeout: Dur::secs(60),
            client_idle_timeout: Dur::ZERO,
            idle_transaction_timeout: Dur::ZERO,
            server_connect_timeout: Dur::secs(15),
            server_idle_timeout: Dur::secs(600),
            server_lifetime: Dur::secs(3600),
            server_reset_query: "DISCARD ALL".into(),
            server_reset_query_always: false,
            max_packet_size: 64 * 1024 * 1024,
            max_prepared_statements: 200,
            max_prepared_statement_memory: 64 * 1024 * 1024,
            shutdown_timeout: Dur::secs(30),
            shutdown_delay: Dur::ZERO,
            tcp_keepalive: true,
            workers: 0,
            sched_policy: SchedPolicy::Batch,
            so_reuseport: false,
            log_connections: true,
            log_disconnections: true,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            stats_period: Dur::secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    #[serde(rename = "type")]
    pub auth_type: AuthType,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    #[serde(deserialize_with = "env_string")]
    pub listen: String,
    pub enabled: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9930".into(),
            enabled: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalance {
    #[default]
    RoundRobin,
    Random,
    LeastConnections,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    #[default]
    ReadYourWrites,
    Eventual,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaFallback {
    #[default]
    Primary,
    Error,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    #[default]
    Auto,
    Primary,
}

/// A replica lag limit: a duration (`"5s"`) or a number of WAL bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagLimit {
    Time(Dur),
    Bytes(u64),
}

impl<'de> Deserialize<'de> for LagLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(LagLimit::Bytes(b)),
            Raw::Text(t) => {
                let t = expand_env(&t).map_err(serde::de::Error::custom)?;
                parse_duration(&t)
                    .map(|d| LagLimit::Time(Dur(d)))
                    .map_err(serde::de::Error::custom)
            }
        }
    }
}

impl Serialize for LagLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LagLimit::Time(d) => d.serialize(s),
            LagLimit::Bytes(b) => b.serialize(s),
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Read/write routing.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub read_write_split: bool,
    pub load_balance: LoadBalance,
    pub consistency: Consistency,
    pub max_replica_lag: LagLimit,
    pub lag_check_interval: Dur,
    pub health_check_interval: Dur,
    pub health_check_timeout: Dur,
    pub ban_time: Dur,
    pub catalog_refresh_interval: Dur,
    pub classify_cache_memory: usize,
    pub replica_fallback: ReplicaFallback,
    pub read_only_functions: Vec<String>,
    pub write_functions: Vec<String>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            read_write_split: true,
            load_balance: LoadBalance::RoundRobin,
            consistency: Consistency::ReadYourWrites,
            max_replica_lag: LagLimit::Time(Dur::secs(5)),
            lag_check_interval: Dur::millis(250),
            health_check_interval: Dur::secs(5),
            health_check_timeout: Dur::secs(2),
            ban_time: Dur::secs(30),
            catalog_refresh_interval: Dur::secs(30),
            classify_cache_memory: 8 * 1024 * 1024,
            replica_fallback: ReplicaFallback::Primary,
            read_only_functions: vec![],
            write_functions: vec![],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Plaintext, `md5<32 hex>` or `SCRAM-SHA-256$<iter>:<salt>$<stored>:<server>`.
    #[serde(default, deserialize_with = "opt_env_string", serialize_with = "mask")]
    pub password: Option<String>,
    /// Per-user override of `[auth] type`.
    #[serde(default)]
    pub auth: Option<AuthType>,
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    #[serde(default)]
    pub pool_size: Option<usize>,
    #[serde(default)]
    pub route: Option<Route>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(deserialize_with = "env_string")]
    pub primary: String,
    #[serde(default, deserialize_with = "env_string_list")]
    pub replicas: Vec<String>,
    /// Load-balancing weight of each replica, in the order of `replicas`;
    /// empty means 1 each, 0 takes a replica out of rotation.
    #[serde(default)]
    pub replica_weights: Vec<u32>,
    /// Server-side database name; the table key by default.
    #[serde(default, deserialize_with = "opt_env_string")]
    pub dbname: Option<String>,
    #[serde(default)]
    pub pool_size: Option<usize>,
    #[serde(default)]
    pub min_pool_size: Option<usize>,
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    #[serde(default, deserialize_with = "opt_env_string")]
    pub server_user: Option<String>,
    #[serde(default, deserialize_with = "opt_env_string", serialize_with = "mask")]
    pub server_password: Option<String>,
    #[serde(default)]
    pub route: Option<Route>,
}

fn mask<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("********"),
        None => s.serialize_none(),
    }
}

/// A configuration error, with the line and column where the file has them.
#[derive(Debug)]
pub struct ConfigError {
    pub path: String,
    pub line: Option<usize>,
    pub col: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.col) {
            (Some(l), Some(c)) => write!(f, "{}:{}:{}: {}", self.path, l, c, self.message),
            (Some(l), None) => write!(f, "{}:{}: {}", self.path, l, self.message),
            _ => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            line: None,
            col: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates a config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, col) = match e.span() {
                Some(span) => {
                    let (l, c) = line_col(text, span.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            ConfigError {
                path: origin.to_string(),
                line,
                col,
                message: e.message().trim().to_string(),
            }
        })?;
        cfg.validate().map_err(|(key, message)| ConfigError {
            path: origin.to_string(),
            line: find_key_line(text, &key),
            col: None,
            message: format!("{key}: {message}"),
        })?;
        Ok(cfg)
    }

    /// Semantic checks serde cannot express. Errors name the dotted key.
    fn validate(&self) -> Result<(), (String, String)> {
        let p = &self.pooler;
        if p.listen.is_empty() {
            return Err((
                "pooler.listen".into(),
                "at least one address is required".into(),
            ));
        }
        for addr in &p.listen {
            addr.parse::<SocketAddr>().map_err(|_| {
                (
                    "pooler.listen".to_string(),
                    format!("{addr:?} is not an ip:port address"),
                )
            })?;
        }
        if p.default_pool_size == 0 {
            return Err((
                "pooler.default_pool_size".into(),
                "must be at least 1".into(),
            ));
        }
        if p.min_pool_size > p.default_pool_size {
            return Err((
                "pooler.min_pool_size".into(),
                "must not exceed default_pool_size".into(),
            ));
        }
        if p.max_client_conn == 0 {
            return Err(("pooler.max_client_conn".into(), "must be at least 1".into()));
        }
        if p.max_packet_size < 1024 {
            return Err((
                "pooler.max_packet_size".into(),
                "must be at least 1024".into(),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&p.log_level) {
            return Err(("pooler.log_level".into(), format!("not a log filter: {e}")));
        }
        if p.stats_period.0.is_zero() {
            return Err(("pooler.stats_period".into(), "must be more than 0".into()));
        }
        if self.http.listen.parse::<SocketAddr>().is_err() {
            return Err((
                "http.listen".into(),
                format!("{:?} is not an ip:port address", self.http.listen),
            ));
        }
        for (name, user) in &self.users {
            if let Some(pw) = &user.password {
                crate::auth::Secret::parse(pw)
                    .map_err(|e| (format!("users.{name}.password"), e))?;
            }
            if user.pool_size == Some(0) {
                return Err((
                    format!("users.{name}.pool_size"),
                    "must be at least 1".into(),
                ));
            }
            let auth = user.auth.unwrap_or(self.auth.auth_type);
            if auth != AuthType::Trust && user.password.is_none() {
                return Err((
                    format!("users.{name}.password"),
                    format!("required for {auth:?} authentication"),
                ));
            }
        }
        for (name, db) in &self.databases {
            if name == "pgbouncer" || name == "sluice" {
                return Err((
                    format!("databases.{name}"),
                    "this name is reserved for the admin console".into(),
                ));
            }
            check_host_port(&db.primary).map_err(|e| (format!("databases.{name}.primary"), e))?;
            for r in &db.replicas {
                check_host_port(r).map_err(|e| (format!("databases.{name}.replicas"), e))?;
            }
            if !db.replica_weights.is_empty() && db.replica_weights.len() != db.replicas.len() {
                return Err((
                    format!("databases.{name}.replica_weights"),
                    format!(
                        "has {} entries for {} replicas",
                        db.replica_weights.len(),
                        db.replicas.len()
                    ),
                ));
            }
            if db.pool_size == Some(0) {
                return Err((
                    format!("databases.{name}.pool_size"),
                    "must be at least 1".into(),
                ));
            }
            if db.server_password.is_some() && db.server_user.is_none() {
                return Err((
                    format!("databases.{name}.server_password"),
                    "needs server_user".into(),
                ));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, with secrets masked.
    pub fn render(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// `route` for a (database, user) pair: `primary` on either wins.
    pub fn route_for(&self, db: &str, user: &str) -> Route {
        let user = self.users.get(user).and_then(|u| u.route);
        let db = self.databases.get(db).and_then(|d| d.route);
        if user == Some(Route::Primary) || db == Some(Route::Primary) {
            Route::Primary
        } else {
            Route::Auto
        }
    }

    /// Pool mode for a (database, user) pair: user, then database, then global.
    pub fn pool_mode_for(&self, db: &str, user: &str) -> PoolMode {
        self.users
            .get(user)
            .and_then(|u| u.pool_mode)
            .or_else(|| self.databases.get(db).and_then(|d| d.pool_mode))
            .unwrap_or(self.pooler.pool_mode)
    }

    /// Server connections per pool for a (database, user) pair.
    pub fn pool_size_for(&self, db: &str, user: &str) -> usize {
        self.users
            .get(user)
            .and_then(|u| u.pool_size)
            .or_else(|| self.databases.get(db).and_then(|d| d.pool_size))
            .unwrap_or(self.pooler.default_pool_size)
    }

    pub fn min_pool_size_for(&self, db: &str) -> usize {
        self.databases
            .get(db)
            .and_then(|d| d.min_pool_size)
            .unwrap_or(self.pooler.min_pool_size)
    }
}

fn check_host_port(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} must be host:port"))?;
    if host.is_empty() {
        return Err(format!("{addr:?} has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("{addr:?} has an invalid port"))?;
    Ok(())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, col)
}

/// Best-effort line of a dotted key (`databases.app.primary`) in the file: the
/// last component's assignment after the table header that holds it.
fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let parts: Vec<&str> = dotted.split('.').collect();
    let (table, key) = match parts.len() {
        0 | 1 => return None,
        2 => (parts[0].to_string(), parts[1]),
        n => (parts[..n - 1].join("."), parts[n - 1]),
    };
    let mut in_table = false;
    let mut table_line = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let name = t
                .trim_matches(|c| c == '[' || c == ']')
                .replace(['"', ' '], "");
            in_table = name == table;
            if in_table {
                table_line = Some(i + 1);
            }
            continue;
        }
        if in_table {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim().trim_matches('"') == key {
                    return Some(i + 1);
                }
            }
        }
    }
    table_line
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[pooler]
listen = "127.0.0.1:6432"
pool_mode = "transaction"
query_wait_timeout = "30s"

[users.app]
password = "secret"

[databases.app]
primary = "127.0.0.1:5432"
replicas = ["127.0.0.1:5433"]
"#;

    /// The example file is the reference users copy: every key the code
    /// accepts is in it, and its values are the defaults.
    #[test]
    fn example_file_lists_every_key_with_its_default() {
        let text = include_str!("../../pooler.toml").replace("${APP_PASSWORD}", "x");
        let example = Config::parse(&text, "pooler.toml").unwrap();
        let default = Config::default();
        assert_eq!(example.pooler, default.pooler);
        assert_eq!(example.auth, default.auth);
        assert_eq!(example.http, default.http);
        assert_eq!(example.routing, default.routing);
        // Every optional key shows when set, so this renders every key there is.
        let mut all = default;
        all.users.insert(
            "u".into(),
            UserConfig {
                password: Some("x".into()),
                auth: Some(AuthType::Md5),
                pool_mode: Some(PoolMode::Session),
                pool_size: Some(1),
                route: Some(Route::Primary),
            },
        );
        all.databases.insert(
            "d".into(),
            DatabaseConfig {
                primary: "h:1".into(),
                replicas: vec!["h:2".into()],
                replica_weights: vec![1],
                dbname: Some("d".into()),
                pool_size: Some(1),
                min_pool_size: Some(1),
                pool_mode: Some(PoolMode::Session),
                server_user: Some("s".into()),
                server_password: Some("x".into()),
                route: Some(Route::Primary),
            },
        );
        let rendered: toml::Table = toml::from_str(&all.render()).unwrap();
        let listed = |key: &str| {
            text.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.strip_prefix(key)
                    .is_some_and(|r| r.trim_start().starts_with('='))
            })
        };
        let mut missing = Vec::new();
        for (section, table) in &rendered {
            let tables: Vec<&toml::Table> = match section.as_str() {
                "users" | "databases" => table
                    .as_table()
                    .into_iter()
                    .flat_map(|t| t.values().filter_map(|v| v.as_table()))
                    .collect(),
                _ => table.as_table().into_iter().collect(),
            };
            for key in tables.iter().flat_map(|t| t.keys()) {
                if !listed(key) {
                    missing.push(format!("{section}.{key}"));
                }
            }
        }
        assert!(missing.is_empty(), "not in pooler.toml: {missing:?}");
    }

    #[test]
    fn parses_a_good_file() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.pooler.query_wait_timeout, Dur::secs(30));
        assert_eq!(c.databases["app"].replicas.len(), 1);
        assert_eq!(c.pool_size_for("app", "app"), 20);
        assert!(c.render().contains("********"));
        assert!(!c.render().contains("secret"));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "[pooler]\nlisten = \"127.0.0.1:6432\"\npool_sise = 5\n";
        let e = Config::parse(text, "t.toml").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("pool_sise"), "{}", e.message);
    }

    #[test]
    fn sched_policy_is_batch_unless_set_and_names_a_bad_value() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.pooler.sched_policy, SchedPolicy::Batch);
        let c = Config::parse("[pooler]\nsched_policy = \"normal\"\n", "t.toml").unwrap();
        assert_eq!(c.pooler.sched_policy, SchedPolicy::Normal);
        let e = Config::parse("[pooler]\nsched_policy = \"fifo\"\n", "t.toml").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("fifo"), "{}", e.message);
    }

    #[test]
    fn durations_without_units_are_rejected() {
        let text = "[pooler]\nquery_wait_timeout = 30\n";
        let e = Config::parse(text, "t.toml").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("unit"));
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let text = "[databases.app]\nprimary = \"nohost\"\n";
        let e = Config::parse(text, "t.toml").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("databases.app.primary"));
    }

    #[test]
    fn env_secrets() {
        std::env::set_var("SLUICE_CFG_TEST_PW", "pw-from-env");
        let text = "[users.app]\npassword = \"${SLUICE_CFG_TEST_PW}\"\n";
        let c = Config::parse(text, "t.toml").unwrap();
        assert_eq!(c.users["app"].password.as_deref(), Some("pw-from-env"));
        let text = "[users.app]\npassword = \"${SLUICE_CFG_TEST_UNSET}\"\n";
        assert!(Config::parse(text, "t.toml").is_err());
    }
}
