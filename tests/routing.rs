//! Read/write routing against a real primary and two streaming replicas: the
//! server that answered is checked with inet_server_port().

mod support;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::*;

/// Functions and tables the routing tests use, created once per binary (and
/// replicated) before any pooler loads the function catalog.
fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let sql = "
            CREATE FUNCTION write_fn() RETURNS int LANGUAGE sql VOLATILE
                AS 'INSERT INTO items(note) VALUES (''write_fn'') RETURNING 1';
            CREATE FUNCTION stable_fn() RETURNS int LANGUAGE sql STABLE AS 'SELECT 7';
            CREATE FUNCTION flip_fn() RETURNS int LANGUAGE sql STABLE AS 'SELECT 8';
            CREATE SCHEMA routing_s;
            CREATE TABLE routing_s.marker (v text);
            INSERT INTO routing_s.marker VALUES ('in routing_s');
            GRANT USAGE ON SCHEMA routing_s TO PUBLIC;
            GRANT ALL ON routing_s.marker TO PUBLIC;
            GRANT EXECUTE ON FUNCTION write_fn(), stable_fn() TO PUBLIC;
            INSERT INTO items(note) VALUES ('seed');
        ";
        cluster()
            .psql_db(primary_port(), "postgres", "app", sql)
            .expect("routing setup");
    });
}

/// A pooler with routing on, once its monitor has seen the replicas up.
async fn routed_pooler(pooler_extra: &str, tail: &str) -> SocketAddr {
    setup();
    let addr = pooler_with(pooler_extra, tail).await;
    wait_for_both_replicas(addr).await;
    addr
}

#[tokio::test]
async fn reads_go_to_replicas_and_spread_over_both() {
    let addr = routed_pooler("pool_mode = \"transaction\"", "").await;
    let c = connect(addr).await;
    let replicas = replica_ports();
    let mut count = std::collections::HashMap::new();
    for _ in 0..40 {
        let p = port_of(&c, "SELECT inet_server_port()").await;
        assert!(replicas.contains(&p), "a read went to {p}");
        *count.entry(p).or_insert(0) += 1;
        // Simple protocol too.
        let rows = c
            .simple_query("SELECT inet_server_port() FROM items LIMIT 1")
            .await
            .expect("simple read");
        let p: u16 = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
                _ => None,
            })
            .expect("a row");
        assert!(replicas.contains(&p), "a simple read went to {p}");
        *count.entry(p).or_insert(0) += 1;
    }
    assert_eq!(count.len(), 2, "both replicas serve reads: {count:?}");
    // Answers from replicas are standbys' answers.
    let row = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
}

#[tokio::test]
async fn writes_locks_and_writing_functions_go_to_the_primary() {
    let addr = routed_pooler("", "").await;
    let c = connect(addr).await;
    let primary = primary_port();
    for sql in [
        "INSERT INTO items(note) VALUES ('w') RETURNING inet_server_port()",
        "WITH x AS (INSERT INTO items(note) VALUES ('cte') RETURNING id) SELECT inet_server_port() FROM x",
        "SELECT inet_server_port() FROM items LIMIT 1 FOR UPDATE",
        "SELECT inet_server_port() FROM items LIMIT 1 FOR NO KEY UPDATE",
        "SELECT inet_server_port() FROM items LIMIT 1 FOR SHARE",
        "SELECT nextval('items_id_seq'), inet_server_port()",
        "SELECT write_fn(), inet_server_port()",
        "SELECT set_config('application_name', 'x', false), inet_server_port()",
        "/* sluice:primary */ SELECT inet_server_port()",
    ] {
        assert_eq!(port_of(&c, sql).await, primary, "{sql}");
    }
    // Provably read-only functions still go to a replica (asked by another
    // client: this one's reads wait for its writes to replay).
    let replicas = replica_ports();
    let c = connect(addr).await;
    for sql in [
        "SELECT stable_fn(), inet_server_port()",
        "SELECT now(), lower('X'), inet_server_port()",
        "/* sluice:replica */ SELECT inet_server_port()",
    ] {
        let p = port_of(&c, sql).await;
        assert!(replicas.contains(&p), "{sql} went to {p}");
    }
    // The write function really wrote, on the primary.
    let n: i64 = connect_primary()
        .await
        .query_one("SELECT count(*) FROM items WHERE note = 'write_fn'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n >= 1);
}

#[tokio::test]
async fn read_write_transaction_runs_whole_on_the_primary() {
    let addr = routed_pooler("", "").await;
    let mut c = connect(addr).await;
    let primary = primary_port();
    let tx = c.transaction().await.unwrap();
    for _ in 0..3 {
        let p: i32 = tx
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(p as u16, primary);
    }
    tx.execute("INSERT INTO items(note) VALUES ('tx')", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // psql's BEGIN ... COMMIT, simple protocol.
    let msgs = c
        .simple_query("BEGIN; SELECT inet_server_port(); COMMIT")
        .await
        .unwrap();
    let port = msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(port, Some(primary.to_string()));
}

#[tokio::test]
async fn read_only_transaction_stays_on_one_replica() {
    let addr = routed_pooler("", "").await;
    let c = connect(addr).await;
    let replicas = replica_ports();
    for begin in [
        "BEGIN READ ONLY",
        "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        "BEGIN",
    ] {
        c.batch_execute(begin).await.unwrap();
        if begin == "BEGIN" {
            c.batch_execute("SET TRANSACTION READ ONLY").await.unwrap();
        }
        let mut seen = HashSet::new();
        for _ in 0..10 {
            let row = c
                .query_one("SELECT inet_server_port(), pg_backend_pid()", &[])
                .await
                .unwrap();
            let port: i32 = row.get(0);
            let pid: i32 = row.get(1);
            seen.insert((port as u16, pid));
        }
        assert_eq!(
            seen.len(),
            1,
            "{begin}: one server for the whole transaction: {seen:?}"
        );
        let (port, _) = *seen.iter().next().unwrap();
        assert!(replicas.contains(&port), "{begin} ran on {port}");
        // A write inside it fails as PostgreSQL would say.
        let err = c
            .execute("INSERT INTO items(note) VALUES ('ro')", &[])
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{begin}");
        c.batch_execute("ROLLBACK").await.unwrap();
    }
    // An empty transaction is answered without a server.
    c.batch_execute("BEGIN READ ONLY").await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    let p = port_of(&c, "SELECT inet_server_port()").await;
    assert!(replicas.contains(&p));
}

#[tokio::test]
async fn session_settings_follow_the_client_to_replicas_and_the_primary() {
    // Two servers per pool and four clients: each client moves between servers.
    let addr = routed_pooler("default_pool_size = 2", "").await;
    let primary = primary_port();
    let replicas = replica_ports();
    let mut handles = Vec::new();
    for i in 0..4 {
        handles.push(tokio::spawn(async move {
            let c = connect(addr).await;
            c.batch_execute("SET search_path = routing_s, public").await.unwrap();
            let timeout = format!("{}s", 100 + i);
            c.batch_execute(&format!("SET statement_timeout = '{timeout}'"))
                .await
                .unwrap();
            let mut ports = HashSet::new();
            for _ in 0..20 {
                let row = c
                    .query_one("SELECT v, current_setting('statement_timeout'), inet_server_port() FROM marker WHERE v = 'in routing_s'", &[])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, String>(0), "in routing_s");
                assert_eq!(row.get::<_, String>(1), timeout);
                ports.insert(row.get::<_, i32>(2) as u16);
                let row = c
                    .query_one("INSERT INTO marker VALUES ('w') RETURNING current_setting('statement_timeout'), inet_server_port()", &[])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, String>(0), timeout);
                assert_eq!(row.get::<_, i32>(1) as u16, primary);
            }
            ports
        }));
    }
    let mut all = HashSet::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    assert!(
        all.iter().any(|p| replicas.contains(p)),
        "reads reached replicas: {all:?}"
    );
    // RESET goes back to the server default everywhere.
    let c = connect(addr).await;
    c.batch_execute("SET statement_timeout = '5min'")
        .await
        .unwrap();
    c.batch_execute("RESET statement_timeout").await.unwrap();
    for _ in 0..6 {
        let v: String = c
            .query_one("SELECT current_setting('statement_timeout')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, "0");
    }
}

#[tokio::test]
async fn prepared_statements_route_by_their_own_class() {
    let addr = routed_pooler("", "").await;
    let c = connect(addr).await;
    let primary = primary_port();
    let replicas = replica_ports();
    let read = c.prepare("SELECT inet_server_port()").await.unwrap();
    let write = c
        .prepare("INSERT INTO items(note) VALUES ('p') RETURNING inet_server_port()")
        .await
        .unwrap();
    for _ in 0..10 {
        let p: i32 = c.query_one(&write, &[]).await.unwrap().get(0);
        assert_eq!(p as u16, primary);
        let p: i32 = c.query_one(&read, &[]).await.unwrap().get(0);
        assert!(replicas.contains(&(p as u16)) || p as u16 == primary);
    }
    // Once the writes have replayed, the read statement runs on replicas again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p: i32 = c.query_one(&read, &[]).await.unwrap().get(0);
        if replicas.contains(&(p as u16)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the prepared read never left the primary"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A session remembers the class of the statements it runs again and again;
/// when the primary's catalog says a function has become volatile, that
/// memory must not keep a statement calling it on the replicas.
#[tokio::test]
async fn a_prepared_read_follows_its_function_to_the_primary_once_volatile() {
    let addr = routed_pooler("", "[routing]\ncatalog_refresh_interval = \"200ms\"").await;
    let c = connect(addr).await;
    let primary = primary_port();
    let replicas = replica_ports();
    let stmt = c
        .prepare("SELECT flip_fn(), inet_server_port()")
        .await
        .unwrap();
    // The function reaches the replicas by replication: wait for it there.
    run_until(
        &c,
        &stmt,
        |p| p.is_some(),
        "flip_fn never reached the replicas",
    )
    .await;
    for _ in 0..5 {
        let p: i32 = c.query_one(&stmt, &[]).await.unwrap().get(1);
        assert!(
            replicas.contains(&(p as u16)),
            "a stable function's read ran on {p}"
        );
    }
    cluster()
        .psql_db(
            primary_port(),
            "postgres",
            "app",
            "ALTER FUNCTION flip_fn() VOLATILE",
        )
        .expect("alter function");
    run_until(
        &c,
        &stmt,
        |p| p == Some(primary),
        "the statement stayed on the replicas after its function became volatile",
    )
    .await;
    for _ in 0..5 {
        let p: i32 = c.query_one(&stmt, &[]).await.unwrap().get(1);
        assert_eq!(p as u16, primary);
    }
}

/// Runs `stmt` until `done` holds for the port of the server that answered
/// (`None`: an error), for at most 10 s.
async fn run_until(
    c: &tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
    done: impl Fn(Option<u16>) -> bool,
    why: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let port = c.query_one(stmt, &[]).await.ok();
        if done(port.map(|r| r.get::<_, i32>(1) as u16)) {
            return;
        }
        assert!(Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn temporary_tables_pin_the_client_to_its_server() {
    let addr = routed_pooler("default_pool_size = 2", "").await;
    let c = connect(addr).await;
    c.batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    for i in 0..10 {
        c.execute("INSERT INTO scratch VALUES ($1)", &[&i])
            .await
            .unwrap();
        let n: i64 = c
            .query_one("SELECT count(*) FROM scratch", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, i as i64 + 1);
    }
    // When the pinned client leaves, its server is reset before reuse: the
    // temporary table is gone.
    drop(c);
    let admin = connect_primary().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relpersistence = 't'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pinned server kept its temporary table"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// State that cannot move between servers pins the client wherever it is
/// made: at the start of a transaction or in its middle, with routing on or
/// off. Another client then takes the other server, and the pinned one still
/// sees its state.
#[tokio::test]
async fn session_state_made_mid_transaction_pins_too() {
    setup();
    for tail in ["", PRIMARY_ONLY] {
        for (n, steps) in [
            &["CREATE TEMP TABLE scratch_p (x int)"][..],
            &[
                "BEGIN",
                "SELECT 1",
                "CREATE TEMP TABLE scratch_p (x int)",
                "COMMIT",
            ][..],
            &[
                "BEGIN",
                "INSERT INTO items(note) VALUES ('pin')",
                "CREATE TEMP TABLE scratch_p (x int)",
                "COMMIT",
            ][..],
        ]
        .iter()
        .enumerate()
        {
            let addr = pooler_with("default_pool_size = 2", tail).await;
            if tail.is_empty() {
                wait_for_both_replicas(addr).await;
            }
            let c = connect(addr).await;
            for step in *steps {
                c.batch_execute(step).await.unwrap();
            }
            // Another client holds a primary server in a transaction.
            let other = connect(addr).await;
            other
                .batch_execute("BEGIN; INSERT INTO items(note) VALUES ('other')")
                .await
                .unwrap();
            for _ in 0..3 {
                c.batch_execute("INSERT INTO scratch_p VALUES (1)")
                    .await
                    .unwrap_or_else(|e| panic!("case {n} {tail:?}: {e}"));
            }
            other.batch_execute("COMMIT").await.unwrap();
        }
    }
}

/// Raw extended-protocol run of `sql` in the unnamed statement, or under
/// `name` when given: Parse, Bind, Execute, Sync.
fn extended(out: &mut BytesMut, name: &str, sql: &str) {
    frontend::parse(name, sql, [], out).unwrap();
    bind_no_params(name, out);
    frontend::execute("", 0, out).unwrap();
    frontend::sync(out);
}

/// Pins found where the router plans nothing: the second unit of a pipeline
/// sent outside a transaction, and a statement whose Parse sluice answered
/// itself (its Bind names it only). Another client then takes a free server
/// and the pinned one must still see its table.
#[tokio::test]
async fn pins_in_a_pipeline_and_in_a_statement_parsed_without_a_server() {
    setup();
    for tail in ["", PRIMARY_ONLY] {
        let addr = pooler_with("default_pool_size = 3", tail).await;
        if tail.is_empty() {
            wait_for_both_replicas(addr).await;
        }
        // A pipeline: an INSERT, then a temporary table, in one write.
        let mut c = Raw::login(addr, "app").await;
        let mut out = BytesMut::new();
        extended(&mut out, "", "INSERT INTO items(note) VALUES ('pipe')");
        extended(&mut out, "", "CREATE TEMP TABLE scratch_q (x int)");
        c.send(&out).await;
        c.until_ready().await;
        let msgs = c.until_ready().await;
        assert!(msgs.iter().all(|(t, _)| *t != b'E'), "{tail:?}: {msgs:?}");
        // The same temporary table made by a statement prepared before by
        // another client: sluice answers its Parse itself.
        let mut first = Raw::login(addr, "app").await;
        out.clear();
        extended(&mut out, "mk", "CREATE TEMP TABLE scratch_r (x int)");
        first.send(&out).await;
        first.until_ready().await;
        let mut d = Raw::login(addr, "app").await;
        out.clear();
        frontend::parse("mk2", "CREATE TEMP TABLE scratch_r (x int)", [], &mut out).unwrap();
        frontend::sync(&mut out);
        d.send(&out).await;
        d.until_ready().await;
        out.clear();
        bind_no_params("mk2", &mut out);
        frontend::execute("", 0, &mut out).unwrap();
        frontend::sync(&mut out);
        d.send(&out).await;
        let msgs = d.until_ready().await;
        assert!(msgs.iter().all(|(t, _)| *t != b'E'), "{tail:?}: {msgs:?}");
        // Three pinned clients hold the three servers; one more waits for
        // none of them, and each pinned client still has its table.
        drop(first);
        for (client, table) in [(&mut c, "scratch_q"), (&mut d, "scratch_r")] {
            for _ in 0..3 {
                let msgs = client.run(&format!("INSERT INTO {table} VALUES (1)")).await;
                assert!(
                    msgs.iter().all(|(t, _)| *t != b'E'),
                    "{tail:?} {table}: {msgs:?}"
                );
            }
        }
        let mut other = Raw::login(addr, "app").await;
        other.run("BEGIN").await;
        let msgs = other.run("INSERT INTO items(note) VALUES ('other')").await;
        assert!(msgs.iter().all(|(t, _)| *t != b'E'), "{msgs:?}");
        for (client, table) in [(&mut c, "scratch_q"), (&mut d, "scratch_r")] {
            let msgs = client.run(&format!("SELECT count(*) FROM {table}")).await;
            assert!(
                msgs.iter().all(|(t, _)| *t != b'E'),
                "{tail:?} {table}: {msgs:?}"
            );
        }
        other.run("COMMIT").await;
    }
}

/// A READ ONLY transaction runs on a replica; a session advisory lock taken
/// inside it must not keep the client there, where it could never write.
#[tokio::test]
async fn a_lock_inside_a_read_only_transaction_does_not_pin_to_a_replica() {
    let addr = routed_pooler("", "").await;
    let c = connect(addr).await;
    c.batch_execute("BEGIN READ ONLY").await.unwrap();
    let p = port_of(&c, "SELECT inet_server_port()").await;
    assert!(replica_ports().contains(&p), "on a replica");
    c.batch_execute("SELECT pg_advisory_lock(4242)")
        .await
        .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    c.execute("INSERT INTO items(note) VALUES ('after ro')", &[])
        .await
        .expect("the client writes again");
    // The replica's server was reset before reuse: the lock is gone.
    let replica = connect_superuser(p).await;
    let held: i64 = replica
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0, "the replica's server kept the lock");
}

/// A temporary table dropped at commit does not outlive its transaction, so
/// it pins nothing: the client's next reads go to the replicas again.
#[tokio::test]
async fn a_temporary_table_dropped_at_commit_does_not_pin() {
    let addr = routed_pooler("", "").await;
    let c = connect(addr).await;
    c.batch_execute(
        "BEGIN; CREATE TEMP TABLE scratch (a int) ON COMMIT DROP; \
         INSERT INTO scratch VALUES (1); COMMIT",
    )
    .await
    .unwrap();
    let replicas = replica_ports();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Read-your-writes may keep a read or two on the primary until the
    // replicas have replayed the commit.
    while !replicas.contains(&port_of(&c, "SELECT inet_server_port()").await) {
        assert!(
            Instant::now() < deadline,
            "the client stayed on the primary"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A BEGIN after extended-protocol messages in one unit is not held by
/// sluice: the server answers all of it, the Parse included.
#[tokio::test]
async fn begin_after_a_parse_in_one_unit_reaches_the_server() {
    let addr = routed_pooler("", "").await;
    let mut raw = Raw::login(addr, "app").await;
    let mut out = BytesMut::new();
    frontend::parse("", "SELECT 1", [], &mut out).unwrap();
    frontend::query("BEGIN", &mut out).unwrap();
    raw.send(&out).await;
    let msgs = raw.until_ready().await;
    let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"1CZ", "{msgs:?}");
    assert_eq!(&msgs[2].1[..], b"T", "inside the transaction");
    let msgs = raw.run("ROLLBACK").await;
    assert_eq!(&msgs.last().unwrap().1[..], b"I", "{msgs:?}");
}

#[tokio::test]
async fn route_primary_or_routing_off_sends_everything_to_the_primary() {
    setup();
    for tail in ["route = \"primary\"", PRIMARY_ONLY] {
        let text = config_text(sluice::cluster::free_port(), "", tail);
        let cfg = sluice::config::Config::parse(&text, "test").unwrap();
        let (app, addr) = start_app(cfg).await;
        let c = connect(addr).await;
        for _ in 0..10 {
            let p = port_of(&c, "SELECT inet_server_port()").await;
            assert_eq!(p, primary_port(), "{tail}");
        }
        // The primary answered because of the policy, not because the monitor
        // had not admitted the replicas yet: the metrics say why.
        let scrape = scrape_metrics(&app).await;
        assert!(
            routed(&scrape, "primary", Some("routing_off")) >= 10.0,
            "{tail}: {scrape}"
        );
        assert_eq!(routed(&scrape, "replica", None), 0.0, "{tail}");
        assert_eq!(
            routed(&scrape, "primary", None),
            routed(&scrape, "primary", Some("routing_off")),
            "{tail}: every unit went to the primary as routing_off"
        );
    }
}

/// The sum of `sluice_routed_total` for database `app`, this target, and
/// this reason (or every reason).
fn routed(scrape: &str, target: &str, reason: Option<&str>) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with("sluice_routed_total{") && l.contains("database=\"app\""))
        .filter(|l| l.contains(&format!("target=\"{target}\"")))
        .filter(|l| reason.is_none_or(|r| l.contains(&format!("reason=\"{r}\""))))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn no_fit_replica_falls_back_or_fails_as_configured() {
    setup();
    let dead = sluice::cluster::free_port();
    let c = support::cluster();
    let text = |fallback: &str, port: u16| {
        format!(
            "[pooler]\nlisten = \"127.0.0.1:{port}\"\n[users.app]\npassword = \"{APP_PASSWORD}\"\n\
             [databases.app]\nprimary = \"127.0.0.1:{}\"\nreplicas = [\"127.0.0.1:{dead}\"]\n\
             [routing]\nreplica_fallback = \"{fallback}\"\n",
            c.primary.port
        )
    };
    for fallback in ["primary", "error"] {
        let cfg = sluice::config::Config::parse(&text(fallback, 0), "test").unwrap();
        let (app, addr) = start_app(cfg).await;
        let client = connect(addr).await;
        // A read that calls no function: it does not wait for the function
        // catalog, so it goes straight to a replica or, with none fit, to the
        // fallback. Asked until the answer settles, in case of a slow start.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = client
                .query_one(
                    "SELECT setting::int FROM pg_settings WHERE name = 'port'",
                    &[],
                )
                .await;
            match (fallback, r) {
                ("primary", Ok(row)) => {
                    assert_eq!(row.get::<_, i32>(0) as u16, primary_port());
                    let scrape = scrape_metrics(&app).await;
                    assert!(
                        routed(&scrape, "primary", Some("no_replica")) >= 1.0,
                        "the read fell back for want of a replica: {scrape}"
                    );
                    break;
                }
                ("error", Err(e)) => {
                    assert_eq!(sqlstate(&e).as_deref(), Some("57P03"), "{e}");
                    break;
                }
                (_, r) => {
                    assert!(Instant::now() < deadline, "{fallback}: {r:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        // Writes are unaffected either way.
        client
            .execute("INSERT INTO items(note) VALUES ('fallback')", &[])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn classify_command_explains_the_route() {
    setup();
    let dir = std::env::temp_dir().join(format!("sluice-classify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pooler.toml");
    std::fs::write(&path, config_text(sluice::cluster::free_port(), "", "")).unwrap();
    let cfg = path.to_string_lossy().into_owned();
    // Without a config every function outside the built-in list is unknown;
    // with one and a database, the primary's catalog decides.
    let with_catalog = ["-c", cfg.as_str(), "classify", "--database", "app"];
    for (prefix, sql, want) in [
        (
            &["classify"][..],
            "SELECT * FROM t WHERE id = 1",
            "replica (read-only)",
        ),
        (
            &["classify"][..],
            "SELECT * FROM t FOR UPDATE",
            "primary (FOR UPDATE lock)",
        ),
        (
            &["classify"][..],
            "SELECT nextval('s')",
            "primary (function nextval writes)",
        ),
        (
            &with_catalog[..],
            "SELECT write_fn()",
            "primary (function write_fn is volatile)",
        ),
        (
            &with_catalog[..],
            "SELECT stable_fn()",
            "replica (read-only)",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(prefix)
            .arg(sql)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.starts_with(want), "{sql}: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn every_client_sees_a_schema_change_at_once() {
    let addr = routed_pooler("", "").await;
    let admin = connect(addr).await;
    let reader = connect(addr).await;
    admin
        .batch_execute("DROP TABLE IF EXISTS shape_t; CREATE TABLE shape_t (id int); INSERT INTO shape_t VALUES (1)")
        .await
        .unwrap();
    for i in 0..20 {
        admin
            .batch_execute(&format!(
                "ALTER TABLE shape_t ADD COLUMN c{i} int DEFAULT {i}"
            ))
            .await
            .unwrap();
        // Another client, at once: its read must not reach a replica that has
        // not replayed the ALTER.
        let row = reader
            .query_one(&format!("SELECT c{i} FROM shape_t"), &[])
            .await
            .unwrap_or_else(|e| panic!("column c{i} missing: {e}"));
        assert_eq!(row.get::<_, i32>(0), i);
    }
}
