//! Operating sluice: the admin console (through tokio-postgres and psql),
//! the HTTP endpoint's metrics during a pgbench run, and live reload under
//! load.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio_postgres::SimpleQueryMessage;

const ADMINS: &str = "admin_users = [\"app\"]\nstats_users = [\"md5_user\"]";

async fn admin(addr: SocketAddr) -> tokio_postgres::Client {
    connect_as(addr, "app", APP_PASSWORD, "pgbouncer")
        .await
        .expect("admin console login")
}

/// A SHOW through the console: its column names and rows (text values).
async fn show(
    c: &tokio_postgres::Client,
    what: &str,
) -> (Vec<String>, Vec<HashMap<String, Option<String>>>) {
    let msgs = c
        .simple_query(&format!("SHOW {what}"))
        .await
        .unwrap_or_else(|e| panic!("SHOW {what}: {e}"));
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(d) => {
                columns = d.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                let row = r
                    .columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).map(str::to_string)))
                    .collect();
                rows.push(row);
            }
            _ => {}
        }
    }
    (columns, rows)
}

fn num(row: &HashMap<String, Option<String>>, col: &str) -> i64 {
    row.get(col)
        .and_then(|v| v.as_deref())
        .unwrap_or_else(|| panic!("column {col} missing or NULL in {row:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("column {col} is not a number in {row:?}"))
}

fn text<'a>(row: &'a HashMap<String, Option<String>>, col: &str) -> &'a str {
    row.get(col).and_then(|v| v.as_deref()).unwrap_or("")
}

/// The primary's row of SHOW POOLS for database app, user app.
async fn primary_pool_row(c: &tokio_postgres::Client) -> HashMap<String, Option<String>> {
    let (_, rows) = show(c, "POOLS").await;
    rows.into_iter()
        .find(|r| {
            text(r, "database") == "app" && text(r, "user") == "app" && text(r, "role") == "primary"
        })
        .expect("a primary pool row for app/app")
}

/// Polls `cond` until it holds (a readiness check, not a sleep).
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn show_commands_return_pgbouncer_columns_and_live_state() {
    let addr = pooler_with(&format!("default_pool_size = 2\n{ADMINS}"), PRIMARY_ONLY).await;
    let console = admin(addr).await;

    // Two clients hold both servers in open transactions; a third waits.
    let a = connect(addr).await;
    let b = connect(addr).await;
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    b.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = connect(addr).await;
    let waiting = tokio::spawn(async move {
        waiter
            .query_one("SELECT 42", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    eventually("a client waiting in SHOW POOLS", || async {
        num(&primary_pool_row(&console).await, "cl_waiting") == 1
    })
    .await;

    let (cols, _) = show(&console, "POOLS").await;
    let pgbouncer_pools = [
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "cl_active_cancel_req",
        "cl_waiting_cancel_req",
        "sv_active",
        "sv_active_cancel",
        "sv_being_canceled",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
    ];
    assert_eq!(&cols[..pgbouncer_pools.len()], &pgbouncer_pools[..]);
    assert!(cols.contains(&"role".to_string()) && cols.contains(&"replica_lag_ms".to_string()));
    let row = primary_pool_row(&console).await;
    assert_eq!(num(&row, "sv_active"), 2, "{row:?}");
    assert_eq!(num(&row, "cl_active"), 2, "{row:?}");
    assert_eq!(text(&row, "pool_mode"), "transaction");

    let (cols, clients) = show(&console, "CLIENTS").await;
    assert_eq!(
        &cols[..5],
        &["type", "user", "database", "replication", "state"]
    );
    let app_clients: Vec<_> = clients
        .iter()
        .filter(|r| text(r, "database") == "app")
        .collect();
    assert_eq!(app_clients.len(), 3, "{clients:?}");
    assert_eq!(
        app_clients
            .iter()
            .filter(|r| text(r, "state") == "waiting")
            .count(),
        1
    );
    assert_eq!(
        app_clients
            .iter()
            .filter(|r| !text(r, "link").is_empty())
            .count(),
        2
    );

    let (cols, servers) = show(&console, "SERVERS").await;
    assert_eq!(
        &cols[..6],
        &["type", "user", "database", "replication", "state", "addr"]
    );
    let active: Vec<_> = servers
        .iter()
        .filter(|r| text(r, "state") == "active")
        .collect();
    assert_eq!(active.len(), 2, "{servers:?}");
    for s in &active {
        assert_eq!(num(s, "port"), primary_port() as i64);
        assert!(num(s, "remote_pid") > 0);
    }

    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), 42);
    b.batch_execute("COMMIT").await.unwrap();

    // The counters moved, and every topic answers with its documented columns.
    // A session adds its counts just after it answers: wait for the last.
    eventually("b's COMMIT counted", || async {
        let (_, rows) = show(&console, "STATS").await;
        rows.iter()
            .any(|r| text(r, "database") == "app" && num(r, "total_query_count") >= 6)
    })
    .await;
    let (cols, rows) = show(&console, "STATS").await;
    assert_eq!(
        &cols[..9],
        &[
            "database",
            "total_server_assignment_count",
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_query_time",
            "total_wait_time"
        ]
    );
    let app_stats = rows
        .iter()
        .find(|r| text(r, "database") == "app")
        .expect("app stats");
    assert!(num(app_stats, "total_xact_count") >= 3, "{app_stats:?}");
    assert!(num(app_stats, "total_query_count") >= 6, "{app_stats:?}");
    assert!(num(app_stats, "total_received") > 0 && num(app_stats, "total_sent") > 0);
    assert!(
        num(app_stats, "total_wait_time") > 0,
        "the third client waited"
    );

    for (topic, first) in [
        (
            "STATS_TOTALS",
            vec![
                "database",
                "server_assignment_count",
                "xact_count",
                "query_count",
            ],
        ),
        (
            "STATS_AVERAGES",
            vec![
                "database",
                "server_assignment_count",
                "xact_count",
                "query_count",
            ],
        ),
        (
            "DATABASES",
            vec![
                "name",
                "host",
                "port",
                "database",
                "force_user",
                "pool_size",
            ],
        ),
        (
            "USERS",
            vec!["name", "pool_size", "reserve_pool_size", "pool_mode"],
        ),
        ("CONFIG", vec!["key", "value", "default", "changeable"]),
        ("LISTS", vec!["list", "items"]),
        ("VERSION", vec!["version"]),
        ("MEM", vec!["name", "size", "used", "free", "memtotal"]),
    ] {
        let (cols, rows) = show(&console, topic).await;
        assert_eq!(&cols[..first.len()], &first[..], "SHOW {topic}");
        assert!(!rows.is_empty(), "SHOW {topic} has rows");
    }
    let (_, dbs) = show(&console, "DATABASES").await;
    let app_db = dbs.iter().find(|r| text(r, "name") == "app").unwrap();
    assert_eq!(num(app_db, "pool_size"), 2);
    assert_eq!(num(app_db, "port"), primary_port() as i64);
    let (_, config) = show(&console, "CONFIG").await;
    let size = config
        .iter()
        .find(|r| text(r, "key") == "default_pool_size")
        .unwrap();
    assert_eq!(text(size, "value"), "2");
    assert_eq!(text(size, "default"), "20");
    let (_, lists) = show(&console, "LISTS").await;
    let used = lists
        .iter()
        .find(|r| text(r, "list") == "used_clients")
        .unwrap();
    assert!(
        num(used, "items") >= 3,
        "two clients and the console: {lists:?}"
    );

    let err = console.simple_query("SHOW NOTHING").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42601"));
    let err = console.simple_query("DROP TABLE items").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42601"));
    let err = console
        .simple_query(&"SHOW CLIENTS;".repeat(65))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("54000"));
    // The console still answers after an error.
    assert_eq!(show(&console, "VERSION").await.1.len(), 1);
}

#[tokio::test]
async fn console_access_is_by_role() {
    let addr = pooler(ADMINS).await;
    // Neither admin nor stats user: refused as PostgreSQL refuses privileges.
    let err = connect_as(addr, "trust_user", "", "pgbouncer")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"));
    // A stats user may SHOW, and nothing else.
    let stats = connect_as(addr, "md5_user", MD5_PASSWORD, "sluice")
        .await
        .unwrap();
    assert!(!show(&stats, "POOLS").await.0.is_empty());
    for cmd in ["PAUSE", "RELOAD", "KILL app", "SHUTDOWN"] {
        let err = stats.simple_query(cmd).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{cmd}");
    }
    // A wrong password is still a wrong password.
    let err = connect_as(addr, "app", "nope", "pgbouncer")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
}

#[tokio::test]
async fn psql_reads_the_console() {
    let addr = pooler(ADMINS).await;
    let out = pg_tool("psql", addr)
        .args([
            "-d",
            "pgbouncer",
            "-X",
            "-A",
            "-t",
            "-c",
            "SHOW VERSION",
            "-c",
            "SHOW LISTS",
        ])
        .output()
        .await
        .expect("run psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sluice "), "{stdout}");
    assert!(stdout.contains("databases|1"), "{stdout}");
}

#[tokio::test]
async fn pause_holds_new_transactions_until_resume() {
    let addr = pooler_with(ADMINS, PRIMARY_ONLY).await;
    let console = admin(addr).await;
    let client = connect(addr).await;
    client.batch_execute("SELECT 1").await.unwrap();
    // An open transaction finishes before PAUSE returns.
    let open = connect(addr).await;
    open.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let pausing = {
        let console = admin(addr).await;
        tokio::spawn(async move { console.simple_query("PAUSE app").await.map(|_| ()) })
    };
    open.batch_execute("COMMIT").await.unwrap();
    pausing.await.unwrap().expect("PAUSE");

    let held = tokio::spawn(async move {
        client
            .query_one("SELECT 7", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    eventually("the paused client shown waiting", || async {
        let (_, clients) = show(&console, "CLIENTS").await;
        clients
            .iter()
            .any(|r| text(r, "database") == "app" && text(r, "state") == "waiting")
    })
    .await;
    assert!(
        !held.is_finished(),
        "a paused database must hold new transactions"
    );
    let (_, dbs) = show(&console, "DATABASES").await;
    assert_eq!(
        num(
            dbs.iter().find(|r| text(r, "name") == "app").unwrap(),
            "paused"
        ),
        1
    );
    console.simple_query("RESUME app").await.expect("RESUME");
    assert_eq!(held.await.unwrap().unwrap(), 7);
}

#[tokio::test]
async fn kill_drops_a_databases_connections() {
    let addr = pooler_with(ADMINS, PRIMARY_ONLY).await;
    let console = admin(addr).await;
    let victim = connect(addr).await;
    victim.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let idle = connect(addr).await;
    idle.batch_execute("SELECT 1").await.unwrap();
    console.simple_query("KILL app").await.expect("KILL");
    eventually("killed clients disconnected", || async {
        victim.is_closed() && idle.is_closed()
    })
    .await;
    let (_, servers) = show(&console, "SERVERS").await;
    eventually("no server connections left", || async {
        show(&console, "SERVERS")
            .await
            .1
            .iter()
            .all(|r| text(r, "database") != "app")
    })
    .await;
    drop(servers);
    // New clients of the killed database wait for RESUME.
    let next = connect(addr).await;
    let q = tokio::spawn(async move {
        next.query_one("SELECT 3", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    console.simple_query("RESUME").await.unwrap();
    assert_eq!(q.await.unwrap().unwrap(), 3);
    let err = console.simple_query("KILL nosuchdb").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("3D000"));
}

/// The value of a sample line `name{labels} value` (labels in any order
/// must all be present).
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|l| {
        let (head, value) = l.rsplit_once(' ')?;
        let (n, rest) = head.split_once('{').unwrap_or((head, ""));
        if n != name
            || !labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            return None;
        }
        value.parse().ok()
    })
}

#[tokio::test]
async fn metrics_add_up_to_what_pgbench_ran() {
    let text = config_text(sluice::cluster::free_port(), ADMINS, "");
    let cfg = sluice::config::Config::parse(&text, "test").unwrap();
    let (app, addr) = start_app(cfg).await;
    let http = app.http_addr().expect("HTTP endpoint");
    assert_eq!(http_get(http, "/health").await.0, 200);
    assert_eq!(http_get(http, "/ready").await, (200, "ready\n".into()));
    assert_eq!(http_get(http, "/nothing").await.0, 404);

    let labels = [("database", "app"), ("user", "app")];
    let before = http_get(http, "/metrics").await.1;
    let xacts0 = sample(&before, "sluice_transactions_total", &labels).unwrap_or(0.0);
    let queries0 = sample(&before, "sluice_queries_total", &labels).unwrap_or(0.0);

    let dir = std::env::temp_dir().join(format!("sluice-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("select.sql");
    std::fs::write(&script, "SELECT count(*) FROM items;\n").unwrap();
    // -n and a custom script: pgbench runs nothing but these 4 x 250.
    let bench = pg_tool("pgbench", addr)
        .args(["-n", "-c", "4", "-t", "250", "-f"])
        .arg(&script)
        .arg("app")
        .output();
    let bench = tokio::spawn(bench);
    // A scrape while it runs renders and shows the pool in use.
    let during = http_get(http, "/metrics").await;
    assert_eq!(during.0, 200);
    let out = bench.await.unwrap().expect("run pgbench");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench: {report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let processed: f64 = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .expect("pgbench reports its transactions");
    assert_eq!(processed, 1000.0);

    // A failing statement counts in its SQLSTATE class.
    let c = connect(addr).await;
    assert!(c.batch_execute("SELECT 1/0").await.is_err());
    drop(c);

    // Sessions add their counts just after answering: wait for the last.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let scrape = http_get(http, "/metrics").await.1;
        let x = sample(&scrape, "sluice_transactions_total", &labels).unwrap_or(0.0) - xacts0;
        if x >= processed + 1.0 || Instant::now() > deadline {
            break scrape;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let xacts = sample(&after, "sluice_transactions_total", &labels).unwrap() - xacts0;
    let queries = sample(&after, "sluice_queries_total", &labels).unwrap() - queries0;
    // pgbench's 1000, plus the failed SELECT 1/0.
    assert_eq!(xacts, processed + 1.0, "{after}");
    assert_eq!(queries, processed + 1.0);
    assert!(sample(&after, "sluice_errors_total", &[("class", "22")]).unwrap() >= 1.0);
    let wait_count = sample(&after, "sluice_client_wait_seconds_count", &labels).unwrap();
    assert!(
        wait_count >= processed,
        "every transaction waited for a server, however briefly"
    );
    let routed: f64 = after
        .lines()
        .filter(|l| l.starts_with("sluice_routed_total{") && l.contains("database=\"app\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(routed >= processed, "each transaction was routed: {routed}");
    assert!(sample(&after, "sluice_received_bytes_total", &labels).unwrap() > 0.0);
    assert!(sample(&after, "sluice_sent_bytes_total", &labels).unwrap() > 0.0);
    assert!(after.contains("# TYPE sluice_client_wait_seconds histogram"));

    // Every metric the dashboard and the alert rules use is in the scrape.
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "deploy/grafana/sluice-dashboard.json",
        "deploy/compose/alerts.yml",
    ] {
        let body = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let mut names: Vec<String> = Vec::new();
        let bytes = body.as_bytes();
        let mut i = 0;
        while let Some(at) = body[i..].find("sluice_") {
            let start = i + at;
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                end += 1;
            }
            let is_word_start = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            if is_word_start {
                names.push(body[start..end].to_string());
            }
            i = end;
        }
        names.sort();
        names.dedup();
        assert!(names.len() >= 5, "{file} uses sluice metrics: {names:?}");
        for name in names {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                after.contains(&format!("# TYPE {base} ")),
                "{file} uses {name}, which /metrics does not have"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The SHOW POOLS rows of user reload_user.
async fn pool_row(c: &tokio_postgres::Client) -> Vec<HashMap<String, Option<String>>> {
    let (_, rows) = show(c, "POOLS").await;
    rows.into_iter()
        .filter(|r| text(r, "user") == "reload_user")
        .collect()
}

/// A pooler started from a config file, so that RELOAD re-reads it.
struct Reloadable {
    path: std::path::PathBuf,
    addr: SocketAddr,
    console: tokio_postgres::Client,
}

impl Reloadable {
    async fn write_and_reload(&self, text: &str) -> Result<(), tokio_postgres::Error> {
        std::fs::write(&self.path, text).unwrap();
        self.console.simple_query("RELOAD").await.map(|_| ())
    }
}

#[tokio::test]
async fn reload_under_load_changes_pools_replicas_and_passwords_without_errors() {
    let port = sluice::cluster::free_port();
    let c = cluster();
    let (r1, r2) = (c.replicas[0].port, c.replicas[1].port);
    let config_for = |pool: usize, replicas: &str, password: &str| {
        format!(
            "[pooler]\nlisten = \"127.0.0.1:{port}\"\ndefault_pool_size = {pool}\n{ADMINS}\n\
             log_connections = false\nlog_disconnections = false\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [users.app]\npassword = \"{APP_PASSWORD}\"\n\
             [users.md5_user]\npassword = \"{MD5_PASSWORD}\"\nauth = \"md5\"\n\
             [users.reload_user]\npassword = \"{password}\"\n\
             [databases.app]\nprimary = \"127.0.0.1:{}\"\nreplicas = [{replicas}]\n\
             server_user = \"trust_user\"\n",
            c.primary.port
        )
    };
    let both = format!("\"127.0.0.1:{r1}\", \"127.0.0.1:{r2}\"");
    let one = format!("\"127.0.0.1:{r1}\"");
    let dir = std::env::temp_dir().join(format!("sluice-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pooler.toml");
    std::fs::write(&path, config_for(4, &both, "first-pw")).unwrap();
    let cfg = sluice::config::Config::load(&path).unwrap();
    let (app, addr) = start_app(cfg).await;
    app.set_config_path(path.clone());
    let r = Reloadable {
        path: path.clone(),
        addr,
        console: admin(addr).await,
    };

    // The load: 12 clients reading and writing until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for i in 0..12 {
        let (stop, done) = (stop.clone(), done.clone());
        let client = connect_as(addr, "reload_user", "first-pw", "app")
            .await
            .unwrap();
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if n.is_multiple_of(4) {
                    client
                        .execute(
                            "INSERT INTO items (note) VALUES ($1)",
                            &[&format!("reload {i}")],
                        )
                        .await
                        .map_err(|e| format!("client {i} insert: {e:?}"))?;
                } else {
                    client
                        .query_one("SELECT count(*) FROM items", &[])
                        .await
                        .map_err(|e| format!("client {i} select: {e:?}"))?;
                }
                let tx = client
                    .simple_query("BEGIN; SELECT 1; COMMIT")
                    .await
                    .map_err(|e| format!("client {i} transaction: {e:?}"));
                tx?;
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<u64, String>(n)
        }));
    }
    let progress = |d: &Arc<AtomicUsize>| d.load(Ordering::Relaxed);
    let step = |label: &'static str| {
        let done = done.clone();
        async move {
            let at = progress(&done);
            eventually(label, || {
                let done = done.clone();
                async move { progress(&done) >= at + 50 }
            })
            .await;
        }
    };
    step("load running").await;

    // Pool size up, then down.
    r.write_and_reload(&config_for(8, &both, "first-pw"))
        .await
        .expect("reload: pool size 8");
    step("load after pool size 8").await;
    let (_, dbs) = show(&r.console, "DATABASES").await;
    assert_eq!(text(&dbs[0], "pool_size"), "8");
    r.write_and_reload(&config_for(2, &both, "first-pw"))
        .await
        .expect("reload: pool size 2");
    step("load after pool size 2").await;
    eventually("at most 2 server connections per pool", || async {
        pool_row(&r.console)
            .await
            .iter()
            .all(|row| num(row, "sv_active") + num(row, "sv_idle") <= 2)
    })
    .await;

    // A replica removed, then added back.
    r.write_and_reload(&config_for(2, &one, "first-pw"))
        .await
        .expect("reload: one replica");
    step("load after removing a replica").await;
    eventually("one replica pool", || async {
        pool_row(&r.console)
            .await
            .iter()
            .filter(|row| text(row, "role") == "replica")
            .count()
            == 1
    })
    .await;
    r.write_and_reload(&config_for(2, &both, "first-pw"))
        .await
        .expect("reload: two replicas");
    step("load after adding it back").await;
    eventually("two replica pools", || async {
        pool_row(&r.console)
            .await
            .iter()
            .filter(|row| text(row, "role") == "replica")
            .count()
            == 2
    })
    .await;

    // A password change for the clients (the servers are logged into as
    // server_user, whose login does not change).
    r.write_and_reload(&config_for(2, &both, "second-pw"))
        .await
        .expect("reload: password");
    step("load after the password change").await;
    let fresh = connect_as(addr, "reload_user", "second-pw", "app")
        .await
        .expect("new password logs in");
    fresh
        .query_one("SELECT 1", &[])
        .await
        .expect("and is served");
    let err = connect_as(addr, "reload_user", "first-pw", "app")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));

    // A broken file is refused; the running config stays.
    let err = r
        .write_and_reload("[pooler]\nnot_a_key = 1\n")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("F0000"));
    assert!(
        err.to_string().contains("not_a_key") || format!("{err:?}").contains("not_a_key"),
        "{err:?}"
    );
    step("load after a broken file").await;
    let (_, config) = show(&r.console, "CONFIG").await;
    let size = config
        .iter()
        .find(|row| text(row, "key") == "default_pool_size")
        .unwrap();
    assert_eq!(text(size, "value"), "2");

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for task in load {
        total += task.await.unwrap().expect("no client error during reloads");
    }
    assert!(total > 300, "the load ran throughout: {total}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = r.addr;
}

#[tokio::test]
async fn reload_removing_a_database_closes_its_clients_after_their_transaction() {
    let port = sluice::cluster::free_port();
    let c = cluster();
    let base = format!(
        "[pooler]\nlisten = \"127.0.0.1:{port}\"\n{ADMINS}\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [users.app]\npassword = \"{APP_PASSWORD}\"\n[users.md5_user]\npassword = \"{MD5_PASSWORD}\"\nauth = \"md5\"\n\
         [databases.app]\nprimary = \"127.0.0.1:{p}\"\n",
        p = c.primary.port
    );
    let with_extra = format!(
        "{base}[databases.extra]\nprimary = \"127.0.0.1:{}\"\ndbname = \"app\"\n",
        c.primary.port
    );
    let dir = std::env::temp_dir().join(format!("sluice-reload-db-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pooler.toml");
    std::fs::write(&path, &with_extra).unwrap();
    let (app, addr) = start_app(sluice::config::Config::load(&path).unwrap()).await;
    app.set_config_path(path.clone());
    let client = connect_as(addr, "app", APP_PASSWORD, "extra")
        .await
        .unwrap();
    client.batch_execute("BEGIN; SELECT 1").await.unwrap();
    std::fs::write(&path, &base).unwrap();
    let console = admin(addr).await;
    console.simple_query("RELOAD").await.expect("reload");
    // The open transaction finishes; the next one is refused.
    client
        .batch_execute("SELECT 2; COMMIT")
        .await
        .expect("the transaction ends normally");
    let err = client.batch_execute("SELECT 3").await.unwrap_err();
    assert!(
        client.is_closed() || sqlstate(&err).as_deref() == Some("57P01"),
        "{err:?}"
    );
    let err = connect_as(addr, "app", APP_PASSWORD, "extra")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("3D000"));
    let _ = std::fs::remove_dir_all(&dir);
}
