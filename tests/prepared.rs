//! Named prepared statements in transaction and statement mode: a client's
//! statements work on whichever server serves its next transaction.

mod support;

use bytes::BytesMut;
use futures_util::future::join_all;
use postgres_protocol::message::frontend;
use support::*;

#[tokio::test]
async fn many_clients_prepare_on_few_servers() {
    let addr = pooler("default_pool_size = 4").await;
    let tasks = (0..40i32).map(|i| async move {
        let c = connect(addr).await;
        let double = c.prepare("SELECT $1::int * 2").await.unwrap();
        let concat = c
            .prepare("SELECT $1::text || '-' || $2::text")
            .await
            .unwrap();
        for j in 0..20i32 {
            let v: i32 = c
                .query_one(&double, &[&(i * 100 + j)])
                .await
                .unwrap()
                .get(0);
            assert_eq!(v, (i * 100 + j) * 2);
            let s: String = c
                .query_one(&concat, &[&i.to_string(), &j.to_string()])
                .await
                .unwrap()
                .get(0);
            assert_eq!(s, format!("{i}-{j}"));
            // The plain query() path prepares and closes an unnamed-looking
            // statement under a fresh name each time.
            let n: i64 = c
                .query_one("SELECT $1::bigint + 1", &[&(j as i64)])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, j as i64 + 1);
        }
    });
    join_all(tasks).await;
}

#[tokio::test]
async fn pipelined_prepared_queries() {
    let addr = pooler("default_pool_size = 2").await;
    let clients = join_all((0..6).map(|_| connect(addr))).await;
    let work = clients.iter().enumerate().map(|(k, c)| async move {
        let stmt = c.prepare("SELECT $1::int + $2::int").await.unwrap();
        let futures = (0..50i32).map(|i| {
            let stmt = &stmt;
            async move {
                c.query_one(stmt, &[&i, &(k as i32)])
                    .await
                    .unwrap()
                    .get::<_, i32>(0)
            }
        });
        let got = join_all(futures).await;
        assert_eq!(got, (0..50).map(|i| i + k as i32).collect::<Vec<_>>());
    });
    join_all(work).await;
}

#[tokio::test]
async fn statements_are_shared_and_answered_without_a_round_trip() {
    // One server in all: with replicas the count below could be read from a
    // replica that never served these two clients.
    let addr = pooler_with("default_pool_size = 1", PRIMARY_ONLY).await;
    let a = connect(addr).await;
    let b = connect(addr).await;
    let sa = a.prepare("SELECT 'shared'::text, $1::int").await.unwrap();
    let sb = b.prepare("SELECT 'shared'::text, $1::int").await.unwrap();
    let ra = a.query_one(&sa, &[&1i32]).await.unwrap();
    let rb = b.query_one(&sb, &[&2i32]).await.unwrap();
    assert_eq!(
        (ra.get::<_, String>(0), ra.get::<_, i32>(1)),
        ("shared".into(), 1)
    );
    assert_eq!(
        (rb.get::<_, String>(0), rb.get::<_, i32>(1)),
        ("shared".into(), 2)
    );
    // One statement on the one server, whatever the two clients called it.
    let rows = a
        .query_typed(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT ''shared''::text, $1::int'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 1);
}

#[tokio::test]
async fn servers_hold_at_most_max_prepared_statements() {
    // Primary only: the count must be read on the server that ran them all.
    let addr = pooler_with(
        "default_pool_size = 1\nmax_prepared_statements = 3",
        PRIMARY_ONLY,
    )
    .await;
    let c = connect(addr).await;
    let mut stmts = Vec::new();
    for i in 0..8 {
        stmts.push(
            c.prepare(&format!("SELECT {i}::int + $1::int"))
                .await
                .unwrap(),
        );
    }
    for round in 0..3 {
        for (i, s) in stmts.iter().enumerate() {
            let v: i32 = c.query_one(s, &[&round]).await.unwrap().get(0);
            assert_eq!(v, i as i32 + round);
        }
    }
    let held: i64 = c
        .query_typed("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert!(held <= 3, "{held} statements held");
}

/// Prepared statement names are sluice's to keep in transaction mode, so
/// they are bounded per client: past the limit in number or in bytes the
/// client is closed with 54000, and others go on.
#[tokio::test]
async fn prepared_statements_are_bounded_per_client() {
    let addr = pooler("max_prepared_statement_memory = 65536").await;
    // Bytes: distinct 1 KiB texts until the budget is spent.
    let mut raw = Raw::login(addr, "app").await;
    let mut closed = None;
    for i in 0..100 {
        let mut out = BytesMut::new();
        let sql = format!("SELECT {i} AS \"{}\"", "x".repeat(1000));
        frontend::parse(&format!("s{i}"), &sql, [], &mut out).unwrap();
        frontend::sync(&mut out);
        raw.send(&out).await;
        let msgs = raw.until_ready_or_close().await;
        if let Some(e) = msgs.iter().find(|(t, _)| *t == b'E') {
            closed = Some((i, error_code(&e.1)));
            break;
        }
    }
    let (at, code) = closed.expect("the client is closed past the budget");
    assert_eq!(code, "54000");
    assert!((60..=66).contains(&at), "closed after {at} statements");
    // Number: one pipeline of 10,001 names for one text.
    let mut raw = Raw::login(addr, "app").await;
    let mut out = BytesMut::new();
    for i in 0..10_001 {
        frontend::parse(&format!("n{i}"), "SELECT 1", [], &mut out).unwrap();
    }
    frontend::sync(&mut out);
    raw.send(&out).await;
    let msgs = raw.until_ready_or_close().await;
    let e = msgs.iter().find(|(t, _)| *t == b'E').expect("an error");
    assert_eq!(error_code(&e.1), "54000");
    // Everyone else goes on.
    let c = connect(addr).await;
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

/// A pipeline that binds a large statement in segment after segment before
/// its Parse is answered: sluice prepares it again for each, sends what it
/// staged as it goes rather than all at once, and every reply comes back in
/// order.
#[tokio::test]
async fn a_large_statement_bound_in_many_segments_of_one_pipeline() {
    let addr = pooler_with("default_pool_size = 1", PRIMARY_ONLY).await;
    let mut raw = Raw::login(addr, "app").await;
    let mut out = BytesMut::new();
    let sql = format!("SELECT 42 AS \"{}\"", "c".repeat(60)) + &" ".repeat(100_000);
    frontend::parse("big", &sql, [], &mut out).unwrap();
    frontend::sync(&mut out);
    for _ in 0..40 {
        bind_no_params("big", &mut out);
        frontend::execute("", 0, &mut out).unwrap();
        frontend::sync(&mut out);
    }
    raw.send(&out).await;
    let first = raw.until_ready().await;
    assert_eq!(first[0].0, b'1', "{first:?}");
    for i in 0..40 {
        let msgs = raw.until_ready().await;
        let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"2DCZ", "segment {i}: {msgs:?}");
        assert!(msgs[1].1.ends_with(b"42"));
    }
}

/// Replies sluice answers itself (Close of a mapped statement) cannot pile
/// up without bound behind a slow query: the client is closed with 54000.
#[tokio::test]
async fn replies_owed_to_a_client_are_bounded() {
    let text = config_text(sluice::cluster::free_port(), "", PRIMARY_ONLY);
    let cfg = sluice::config::Config::parse(&text, "test").unwrap();
    let (app, addr) = start_app(cfg).await;
    // The slow query waits for a lock this test holds until the end, so
    // however slowly the flood is taken in, the reply stays owed.
    let locker = connect_primary().await;
    locker
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS owed_lock (x int); GRANT ALL ON owed_lock TO PUBLIC",
        )
        .await
        .unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE owed_lock IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut raw = Raw::login_and_prepare(addr, "app", "s", "SELECT 1").await;
    raw.query("SELECT count(*) FROM owed_lock").await;
    let mut out = BytesMut::new();
    for _ in 0..(1 << 17) {
        frontend::close(b'S', "s", &mut out).unwrap();
    }
    let mut error = None;
    for _ in 0..9 {
        // The last may meet the close.
        if !raw.try_send(&out).await {
            break;
        }
    }
    while let Some((tag, body)) = raw.recv().await {
        if tag == b'E' {
            error = Some(error_code(&body));
            break;
        }
    }
    // The FATAL may be lost to the reset of a close with input unread; the
    // metrics count it either way.
    assert!(
        matches!(error.as_deref(), None | Some("54000")),
        "{error:?}"
    );
    let scrape = scrape_metrics(&app).await;
    assert!(
        scrape.contains("sluice_errors_total{class=\"54\"} 1"),
        "{scrape}"
    );
    let c = connect(addr).await;
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    locker.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn close_forgets_only_the_clients_name() {
    let addr = pooler("default_pool_size = 1").await;
    let mut raw = Raw::login_and_prepare(addr, "app", "mine", "SELECT 41 + 1").await;
    let mut out = BytesMut::new();
    frontend::close(b'S', "mine", &mut out).unwrap();
    frontend::sync(&mut out);
    raw.send(&out).await;
    let msgs = raw.until_ready().await;
    assert_eq!(msgs[0].0, b'3');
    // The name is gone, as in PostgreSQL.
    out.clear();
    bind_no_params("mine", &mut out);
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    raw.send(&out).await;
    let msgs = raw.until_ready().await;
    let (_, err) = msgs.iter().find(|(t, _)| *t == b'E').expect("error");
    assert_eq!(error_code(err), "26000");
}

#[tokio::test]
async fn failed_parse_leaves_no_statement_and_pipeline_recovers() {
    let addr = pooler("default_pool_size = 1").await;
    let mut raw = Raw::login(addr, "app").await;
    let mut out = BytesMut::new();
    frontend::parse("bad", "SELEC 1", [], &mut out).unwrap();
    frontend::parse("good", "SELECT 5", [], &mut out).unwrap();
    frontend::sync(&mut out);
    frontend::parse("good", "SELECT 5", [], &mut out).unwrap();
    bind_no_params("good", &mut out);
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    raw.send(&out).await;
    let first = raw.until_ready().await;
    let tags: Vec<u8> = first.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        tags, b"EZ",
        "syntax error, then the second Parse is skipped"
    );
    let second = raw.until_ready().await;
    let tags: Vec<u8> = second.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"12DCZ");
    out.clear();
    bind_no_params("bad", &mut out);
    frontend::sync(&mut out);
    raw.send(&out).await;
    let third = raw.until_ready().await;
    let (_, err) = third.iter().find(|(t, _)| *t == b'E').expect("error");
    assert_eq!(error_code(err), "26000");
}

#[tokio::test]
async fn deallocate_all_and_discard_all_clear_statements() {
    let addr = pooler("default_pool_size = 1").await;
    let c = connect(addr).await;
    let s = c.prepare("SELECT 1").await.unwrap();
    c.query_one(&s, &[]).await.unwrap();
    c.batch_execute("DEALLOCATE ALL").await.unwrap();
    let e = c.query_one(&s, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("26000"));
    let s = c.prepare("SELECT 2").await.unwrap();
    assert_eq!(c.query_one(&s, &[]).await.unwrap().get::<_, i32>(0), 2);
    c.batch_execute("DISCARD ALL").await.unwrap();
    let s = c.prepare("SELECT 3").await.unwrap();
    assert_eq!(c.query_one(&s, &[]).await.unwrap().get::<_, i32>(0), 3);
}

#[tokio::test]
async fn statement_mode_maps_statements_too() {
    let addr = pooler("pool_mode = \"statement\"\ndefault_pool_size = 2").await;
    let clients = join_all((0..5).map(|_| connect(addr))).await;
    join_all(clients.iter().enumerate().map(|(i, c)| async move {
        let s = c.prepare("SELECT $1::int * 10").await.unwrap();
        for _ in 0..20 {
            assert_eq!(
                c.query_one(&s, &[&(i as i32)])
                    .await
                    .unwrap()
                    .get::<_, i32>(0),
                i as i32 * 10
            );
        }
    }))
    .await;
}

/// Runs pgbench through a pooler and returns its output.
async fn pgbench(addr: std::net::SocketAddr, args: &[&str]) -> String {
    let out = pg_tool("pgbench", addr)
        .args(args)
        .arg("app")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench failed: {text}");
    text
}

#[tokio::test]
async fn pgbench_prepared_and_extended_have_no_failures() {
    let seconds = std::env::var("SLUICE_PGBENCH_SECONDS").unwrap_or_else(|_| "30".into());
    let addr = pooler("default_pool_size = 10").await;
    // Its own tables: pgbench -i through the pooler.
    pgbench(addr, &["-i", "-q", "-s", "1"]).await;
    for mode in ["prepared", "extended"] {
        let out = pgbench(
            addr,
            &["-n", "-M", mode, "-c", "50", "-j", "2", "-T", &seconds],
        )
        .await;
        assert!(
            out.contains("number of failed transactions: 0 "),
            "{mode}: {out}"
        );
        let processed = out
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split('/').next()?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        assert!(processed > 0, "{mode}: {out}");
    }
}

#[tokio::test]
async fn schema_change_under_a_prepared_statement_is_retried() {
    // One server, and the ALTER from another client seen at once: primary only.
    let addr = pooler_with("default_pool_size = 1", PRIMARY_ONLY).await;
    let c = connect(addr).await;
    c.batch_execute("DROP TABLE IF EXISTS plan_t; CREATE TABLE plan_t (a int); INSERT INTO plan_t VALUES (1); GRANT ALL ON plan_t TO PUBLIC")
        .await
        .unwrap();
    let mut raw = Raw::login_and_prepare(addr, "app", "all_rows", "SELECT * FROM plan_t").await;
    let mut out = BytesMut::new();
    // Bind, Describe of the portal, Execute: the client learns the row shape
    // from this batch, so a retry cannot surprise it.
    let run = |out: &mut BytesMut| {
        out.clear();
        bind_no_params("all_rows", out);
        frontend::describe(b'P', "", out).unwrap();
        frontend::execute("", 0, out).unwrap();
        frontend::sync(out);
    };
    run(&mut out);
    raw.send(&out).await;
    let before = raw.until_ready().await;
    assert_tags(&before, b"2TDCZ");
    c.batch_execute("ALTER TABLE plan_t ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    run(&mut out);
    raw.send(&out).await;
    let after = raw.until_ready().await;
    // No error: the statement was prepared again and the row has both columns.
    assert_tags(&after, b"2TDCZ");
    let (_, row) = after.iter().find(|(t, _)| *t == b'D').unwrap();
    assert_eq!(u16::from_be_bytes([row[0], row[1]]), 2);
    // Inside an explicit transaction PostgreSQL's error stands.
    out.clear();
    frontend::query("BEGIN", &mut out).unwrap();
    raw.send(&out).await;
    raw.until_ready().await;
    c.batch_execute("ALTER TABLE plan_t ADD COLUMN c int")
        .await
        .unwrap();
    run(&mut out);
    raw.send(&out).await;
    let in_tx = raw.until_ready().await;
    let (_, err) = in_tx
        .iter()
        .find(|(t, _)| *t == b'E')
        .expect("error inside a transaction");
    assert_eq!(error_code(err), "0A000");
}

#[tokio::test]
async fn schema_change_without_describe_reaches_the_client() {
    // A client that decodes rows with a description it cached must see
    // PostgreSQL's error, as it would without a pooler, and re-prepare.
    let addr = pooler("default_pool_size = 1").await;
    let c = connect(addr).await;
    c.batch_execute(
        "DROP TABLE IF EXISTS plan_u; CREATE TABLE plan_u (a int); INSERT INTO plan_u VALUES (1)",
    )
    .await
    .unwrap();
    let stmt = c.prepare("SELECT * FROM plan_u").await.unwrap();
    assert_eq!(c.query(&stmt, &[]).await.unwrap().len(), 1);
    c.batch_execute("ALTER TABLE plan_u ADD COLUMN b int")
        .await
        .unwrap();
    let e = c.query(&stmt, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"));
    let fresh = c.prepare("SELECT * FROM plan_u").await.unwrap();
    assert_eq!(c.query(&fresh, &[]).await.unwrap()[0].len(), 2);
}

#[tokio::test]
async fn schema_change_reaches_a_client_whose_statement_must_be_prepared_again() {
    // The server forgets the statement (it holds one at most), then another
    // client alters the table. Preparing the old text afresh would plan it in
    // the new shape under the description this client cached: it must get
    // PostgreSQL's error instead, and a client that describes the portal
    // gets the answer in the new shape.
    let (addr, c) = one_statement_per_server("plan_w (a int)", "1").await;
    let stmt = c.prepare("SELECT * FROM plan_w").await.unwrap();
    assert_eq!(c.query(&stmt, &[]).await.unwrap().len(), 1);
    let mut raw = Raw::login_and_prepare(addr, "app", "described", "SELECT * FROM plan_w").await;
    let mut out = BytesMut::new();
    let other = c.prepare("SELECT 1").await.unwrap();
    c.query(&other, &[]).await.unwrap();
    let admin = connect(addr).await;
    admin
        .batch_execute("ALTER TABLE plan_w ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    let e = c.query(&stmt, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e}");
    let fresh = c.prepare("SELECT * FROM plan_w").await.unwrap();
    assert_eq!(c.query(&fresh, &[]).await.unwrap()[0].len(), 2);

    out.clear();
    bind_no_params("described", &mut out);
    frontend::describe(b'P', "", &mut out).unwrap();
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    raw.send(&out).await;
    let replies = raw.until_ready().await;
    assert_tags(&replies, b"2TDCZ");
    let (_, row) = replies.iter().find(|(t, _)| *t == b'D').unwrap();
    assert_eq!(u16::from_be_bytes([row[0], row[1]]), 2);
}

#[tokio::test]
async fn schema_change_made_outside_sluice_reaches_a_client_asking_for_column_formats() {
    // A migration run straight against the primary, which sluice never sees.
    // A client that asks for each column's format (pgjdbc does, once it reads
    // binary), whose statement must be prepared again on its server, sends as
    // many formats as its cached description has columns. It gets the error
    // PostgreSQL gives on a server that held the old plan, which drivers
    // answer by preparing again, not "bind message has 2 result formats but
    // query has 3 columns".
    let (addr, _c) = one_statement_per_server("plan_f (a int, b int)", "1, 2").await;
    let mut raw = Raw::login_and_prepare(addr, "app", "cols", "SELECT * FROM plan_f").await;
    let mut out = BytesMut::new();
    let run = |columns: u16, out: &mut BytesMut| {
        let mut body = b"\0cols\0\0\0\0\0".to_vec();
        body.extend_from_slice(&columns.to_be_bytes());
        for _ in 0..columns {
            body.extend_from_slice(&1u16.to_be_bytes());
        }
        out.extend_from_slice(&frame(b'B', &body));
        frontend::execute("", 0, out).unwrap();
        frontend::sync(out);
    };
    out.clear();
    run(2, &mut out);
    raw.send(&out).await;
    assert_tags(&raw.until_ready().await, b"2DCZ");

    // The client's server forgets the statement (it holds one at most).
    out.clear();
    frontend::parse("other", "SELECT 1", [], &mut out).unwrap();
    bind_no_params("other", &mut out);
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    raw.send(&out).await;
    assert_tags(&raw.until_ready().await, b"12DCZ");
    connect_primary()
        .await
        .batch_execute("ALTER TABLE plan_f ADD COLUMN c int")
        .await
        .unwrap();
    out.clear();
    run(2, &mut out);
    raw.send(&out).await;
    let replies = raw.until_ready().await;
    let (_, err) = replies
        .iter()
        .find(|(t, _)| *t == b'E')
        .expect("an error for the stale description");
    assert_eq!(
        error_code(err),
        "0A000",
        "{:?}",
        String::from_utf8_lossy(err)
    );

    // Prepared again, the statement answers in the new shape.
    out.clear();
    frontend::close(b'S', "cols", &mut out).unwrap();
    frontend::parse("cols", "SELECT * FROM plan_f", [], &mut out).unwrap();
    run(3, &mut out);
    raw.send(&out).await;
    let replies = raw.until_ready().await;
    assert_tags(&replies, b"312DCZ");
    let (_, row) = replies.iter().find(|(t, _)| *t == b'D').unwrap();
    assert_eq!(u16::from_be_bytes([row[0], row[1]]), 3);
}

#[tokio::test]
async fn sql_prepare_execute_deallocate_across_servers() {
    let addr = pooler("default_pool_size = 3").await;
    let a = connect(addr).await;
    let b = connect(addr).await;
    a.batch_execute("PREPARE triple (int) AS SELECT $1 * 3")
        .await
        .unwrap();
    // Another client can use the same name for something else.
    b.batch_execute("PREPARE triple AS SELECT 'not mine'")
        .await
        .unwrap();
    for _ in 0..6 {
        // Keep the other servers busy so executions move between servers.
        let holders = join_all((0..2).map(|_| connect(addr))).await;
        let busy = join_all(
            holders
                .iter()
                .map(|h| h.simple_query("SELECT pg_sleep(0.02)")),
        );
        let (_, got) = tokio::join!(busy, first_value(&a, "EXECUTE triple(5)"));
        assert_eq!(got.as_deref(), Some("15"));
        assert_eq!(
            first_value(&b, "EXECUTE triple").await.as_deref(),
            Some("not mine")
        );
    }
    a.batch_execute("DEALLOCATE triple").await.unwrap();
    let e = a.simple_query("EXECUTE triple(5)").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("26000"));
    assert_eq!(
        first_value(&b, "EXECUTE triple").await.as_deref(),
        Some("not mine")
    );
}

/// The first column of the first row a simple query returns.
async fn first_value(c: &tokio_postgres::Client, sql: &str) -> Option<String> {
    c.simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
}

/// A primary-only sluice with one server per pool, each holding one prepared
/// statement at most, and a fresh table (`table` is its name and columns)
/// holding one row of `values`; with a client connected through it.
async fn one_statement_per_server(
    table: &str,
    values: &str,
) -> (std::net::SocketAddr, tokio_postgres::Client) {
    let addr = pooler_with(
        "default_pool_size = 1\nmax_prepared_statements = 1",
        PRIMARY_ONLY,
    )
    .await;
    let c = connect(addr).await;
    let name = table.split(' ').next().unwrap_or(table);
    c.batch_execute(&format!(
        "DROP TABLE IF EXISTS {name}; CREATE TABLE {table}; INSERT INTO {name} VALUES ({values}); GRANT ALL ON {name} TO PUBLIC"
    ))
    .await
    .unwrap();
    (addr, c)
}

/// The replies' message types are `want`; on failure, shows their bodies.
fn assert_tags(replies: &[(u8, BytesMut)], want: &[u8]) {
    let tags: Vec<u8> = replies.iter().map(|(t, _)| *t).collect();
    let bodies: Vec<_> = replies
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).to_string())
        .collect();
    assert_eq!(tags, want, "{bodies:?}");
}
