//! The data path against real PostgreSQL: simple and extended protocol,
//! pipelines, COPY, pool modes and session parameters.

mod support;

use bytes::BytesMut;
use futures_util::future::join_all;
use postgres_protocol::message::frontend;
use support::*;
use tokio_postgres::types::Type;

#[tokio::test]
async fn simple_and_extended_queries() {
    // One server, so the named statement below stays where it was prepared.
    let addr = pooler("default_pool_size = 1").await;
    let c = connect(addr).await;
    let rows = c.simple_query("SELECT 1; SELECT 'two'").await.unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(values, vec!["1", "two"]);
    let row = c
        .query_one("SELECT $1::int + 1, $2::text", &[&41i32, &"x"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "x");
    let stmt = c.prepare("SELECT generate_series(1, $1)").await.unwrap();
    assert_eq!(c.query(&stmt, &[&1000i32]).await.unwrap().len(), 1000);
}

#[tokio::test]
async fn two_hundred_clients_share_five_servers() {
    let addr = pooler_with(
        "default_pool_size = 5\npool_mode = \"transaction\"",
        PRIMARY_ONLY,
    )
    .await;
    let tasks = (0..200i64).map(|i| async move {
        let c = connect(addr).await;
        let mut pids = std::collections::HashSet::new();
        for j in 0..5i64 {
            // Unnamed statements (Parse/Bind/Execute/Sync in one go): named
            // ones across transactions are the prepared-statement issue's.
            let rows = c
                .query_typed(
                    "SELECT $1::bigint * 1000 + $2::bigint, pg_backend_pid()",
                    &[(&i, Type::INT8), (&j, Type::INT8)],
                )
                .await
                .unwrap();
            assert_eq!(rows[0].get::<_, i64>(0), i * 1000 + j);
            pids.insert(rows[0].get::<_, i32>(1));
        }
        let tx_sum: i64 = c
            .simple_query(&format!("BEGIN; SELECT {i}; COMMIT"))
            .await
            .unwrap()
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    r.get(0).and_then(|v| v.parse::<i64>().ok())
                }
                _ => None,
            })
            .sum();
        assert_eq!(tx_sum, i);
        pids
    });
    let pids: std::collections::HashSet<i32> =
        join_all(tasks).await.into_iter().flatten().collect();
    assert!(
        pids.len() <= 5,
        "{} server connections for a pool of 5",
        pids.len()
    );
}

#[tokio::test]
async fn pipelined_queries_on_one_connection() {
    let addr = pooler("default_pool_size = 1").await;
    let c = connect(addr).await;
    let stmt = c.prepare("SELECT $1::int * 2").await.unwrap();
    // tokio-postgres pipelines concurrent requests on one connection.
    let futures = (0..100i32).map(|i| {
        let c = &c;
        let stmt = &stmt;
        async move { c.query_one(stmt, &[&i]).await.unwrap().get::<_, i32>(0) }
    });
    let got = join_all(futures).await;
    assert_eq!(got, (0..100).map(|i| i * 2).collect::<Vec<_>>());
}

#[tokio::test]
async fn extended_batch_with_flush_and_no_sync() {
    let addr = pooler("default_pool_size = 1").await;
    let mut raw = Raw::login(addr, "app").await;
    let mut out = BytesMut::new();
    frontend::parse("s1", "SELECT $1::int + 1", [23u32], &mut out).unwrap();
    frontend::describe(b'S', "s1", &mut out).unwrap();
    frontend::flush(&mut out);
    raw.send(&out).await;
    // Flush makes the server answer without a Sync; the pooler must forward.
    let tags: Vec<u8> = [raw.recv().await, raw.recv().await, raw.recv().await]
        .into_iter()
        .map(|m| m.expect("reply").0)
        .collect();
    assert_eq!(tags, b"1tT");
    out.clear();
    for v in ["1", "41"] {
        frontend::bind(
            "",
            "s1",
            [0i16],
            [v],
            |v, buf| {
                buf.extend_from_slice(v.as_bytes());
                Ok(postgres_protocol::IsNull::No)
            },
            [0i16],
            &mut out,
        )
        .map_err(|_| "bind")
        .unwrap();
        frontend::execute("", 0, &mut out).unwrap();
        frontend::sync(&mut out);
    }
    raw.send(&out).await;
    let first = raw.until_ready().await;
    let second = raw.until_ready().await;
    let value = |msgs: &Vec<(u8, BytesMut)>| {
        let (_, row) = msgs.iter().find(|(t, _)| *t == b'D').expect("data row");
        String::from_utf8_lossy(&row[6..]).to_string()
    };
    assert_eq!(value(&first), "2");
    assert_eq!(value(&second), "42");
    // An error mid-pipeline skips to Sync; the next batch still works.
    out.clear();
    frontend::query("SELECT 1/0", &mut out).unwrap();
    frontend::parse("", "SELECT 7", [], &mut out).unwrap();
    frontend::sync(&mut out);
    raw.send(&out).await;
    let err = raw.until_ready().await;
    assert!(err
        .iter()
        .any(|(t, b)| *t == b'E' && error_code(b) == "22012"));
    let next = raw.until_ready().await;
    assert!(next.iter().any(|(t, _)| *t == b'1'));
}

#[tokio::test]
async fn copy_in_and_out_100_megabytes() {
    let addr = pooler("default_pool_size = 2").await;
    let c = connect(addr).await;
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS copy_big (id int, payload text); TRUNCATE copy_big",
    )
    .await
    .unwrap();
    let line_payload = "x".repeat(1000);
    let rows = 100_000usize;
    let sink = c.copy_in("COPY copy_big FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    use futures_util::SinkExt;
    let mut chunk = String::with_capacity(1 << 20);
    let mut sent = 0usize;
    for i in 0..rows {
        chunk.push_str(&format!("{i}\t{line_payload}\n"));
        if chunk.len() >= 1 << 20 {
            sent += chunk.len();
            sink.send(bytes::Bytes::from(std::mem::take(&mut chunk)))
                .await
                .unwrap();
        }
    }
    sent += chunk.len();
    sink.send(bytes::Bytes::from(chunk)).await.unwrap();
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied as usize, rows);
    assert!(sent >= 100_000_000);

    let stream = c.copy_out("COPY copy_big TO STDOUT").await.unwrap();
    futures_util::pin_mut!(stream);
    use futures_util::StreamExt;
    let mut received = 0usize;
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len();
    }
    assert_eq!(received, sent);
    let n: i64 = c
        .query_one("SELECT count(*) FROM copy_big", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as usize, rows);
    c.batch_execute("DROP TABLE copy_big").await.unwrap();
}

#[tokio::test]
async fn copy_error_midway_keeps_connection_usable() {
    let addr = pooler("default_pool_size = 1").await;
    let c = connect(addr).await;
    c.batch_execute("CREATE TABLE IF NOT EXISTS copy_bad (id int)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY copy_bad FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    use futures_util::SinkExt;
    let _ = sink
        .send(bytes::Bytes::from_static(b"1\nnot-a-number\n"))
        .await;
    assert!(sink.finish().await.is_err());
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn transaction_mode_holds_the_server_for_the_whole_transaction() {
    let addr = pooler_with("default_pool_size = 1", PRIMARY_ONLY).await;
    let a = connect(addr).await;
    let b = connect(addr).await;
    a.batch_execute(
        "BEGIN; CREATE TEMP TABLE t_hold (x int) ON COMMIT DROP; INSERT INTO t_hold VALUES (1)",
    )
    .await
    .unwrap();
    // b must wait: the only server is inside a's transaction.
    let b_query = tokio::spawn(async move {
        b.query_one("SELECT 5", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!b_query.is_finished(), "b ran inside a's transaction");
    let n: i64 = a
        .query_one("SELECT count(*) FROM t_hold", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(b_query.await.unwrap().unwrap(), 5);
}

#[tokio::test]
async fn waiting_clients_are_served_first_come_first_served() {
    // Primary only: one server in all, and BEGIN takes it at once (a routing
    // pooler would hold BEGIN until the transaction's first statement).
    let addr = pooler_with("default_pool_size = 1", PRIMARY_ONLY).await;
    let holder = connect(addr).await;
    holder.batch_execute("BEGIN").await.unwrap();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..5 {
        let c = connect(addr).await;
        let order = order.clone();
        waiters.push(tokio::spawn(async move {
            // One simple query: one checkout, so completion order is queue order.
            c.simple_query("SELECT 1").await.unwrap();
            order.lock().unwrap().push(i);
        }));
        // Let each waiter reach the queue before the next one.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        order.lock().unwrap().is_empty(),
        "every waiter waits for the holder's server"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn session_mode_keeps_state_then_resets_it() {
    let addr = pooler("default_pool_size = 1\npool_mode = \"session\"").await;
    let a = connect(addr).await;
    a.batch_execute("SET statement_timeout = '12345ms'; CREATE TEMP TABLE sess_t (x int)")
        .await
        .unwrap();
    let v: String = a
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "12345ms");
    let pid_a: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    drop(a);
    let b = connect(addr).await;
    let pid_b: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid_a, pid_b, "the one server is reused");
    let v: String = b
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "0", "DISCARD ALL ran at release");
    assert!(b.query("SELECT * FROM sess_t", &[]).await.is_err());
}

#[tokio::test]
async fn session_mode_listen_notify() {
    let addr = pooler("pool_mode = \"session\"").await;
    let mut raw = Raw::login(addr, "app").await;
    let mut out = BytesMut::new();
    frontend::query("LISTEN sluice_chan", &mut out).unwrap();
    raw.send(&out).await;
    raw.until_ready().await;
    let other = connect(addr).await;
    other
        .batch_execute("NOTIFY sluice_chan, 'hello'")
        .await
        .unwrap();
    let (tag, body) = raw.recv().await.expect("notification");
    assert_eq!(tag, b'A');
    assert!(String::from_utf8_lossy(&body).contains("hello"));
}

/// LISTEN in transaction and statement mode pins the client to its server,
/// with routing on or off: notifications arrive, the pin is counted, and the
/// server is reset before anyone else gets it.
#[tokio::test]
async fn listen_pins_the_client_in_transaction_and_statement_mode() {
    for (mode, tail) in [
        ("transaction", ""),
        ("transaction", PRIMARY_ONLY),
        ("statement", ""),
    ] {
        let text = config_text(
            sluice::cluster::free_port(),
            &format!("pool_mode = \"{mode}\"\ndefault_pool_size = 1"),
            tail,
        );
        let cfg = sluice::config::Config::parse(&text, "test").unwrap();
        let (app, addr) = start_app(cfg).await;
        let channel = format!("chan_{mode}_{}", tail.len());
        let mut listener = Raw::login(addr, "app").await;
        let msgs = listener.run(&format!("LISTEN {channel}")).await;
        assert_eq!(msgs[0].0, b'C', "{mode} {tail}: {msgs:?}");
        // More work on the same connection keeps the same server.
        listener.run("SELECT 1").await;
        let notifier = connect(addr).await;
        notifier
            .batch_execute(&format!("NOTIFY {channel}, 'hello'"))
            .await
            .unwrap();
        let (tag, body) = listener.recv().await.expect("notification");
        assert_eq!(tag, b'A', "{mode} {tail}");
        assert!(String::from_utf8_lossy(&body).contains("hello"));
        let scrape = scrape_metrics(&app).await;
        assert!(
            scrape.contains("sluice_pins_total{reason=\"listen\"} 1"),
            "{mode} {tail}: {scrape}"
        );
        // The one server of the listener's pool is reset before reuse.
        drop(listener);
        let mut next = Raw::login(addr, "app").await;
        let msgs = next
            .run("/* sluice:primary */ SELECT count(*) FROM pg_listening_channels()")
            .await;
        let row = msgs.iter().find(|(t, _)| *t == b'D').expect("a row");
        assert!(row.1.ends_with(b"0"), "{mode} {tail}: still listening");
    }
}

#[tokio::test]
async fn statement_mode_refuses_transactions() {
    // Primary only: pg_stat_activity below must be the one BEGIN reached.
    let addr = pooler_with(
        "pool_mode = \"statement\"\ndefault_pool_size = 1",
        PRIMARY_ONLY,
    )
    .await;
    let c = connect(addr).await;
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    let e = c.batch_execute("BEGIN").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25001"));
    assert!(e
        .as_db_error()
        .unwrap()
        .message()
        .contains("statement pooling"));
    // Nothing is left open on the server; the client goes on.
    let status: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, 0);
    // A whole transaction in one statement string is one statement.
    c.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
}

#[tokio::test]
async fn startup_parameters_follow_the_client_across_servers() {
    let addr = pooler("default_pool_size = 1").await;
    let mk = |app: &'static str, tz: &'static str, path: &'static str| async move {
        let conn = format!(
            "{} application_name={app} options='-c TimeZone={tz} -c search_path={path}'",
            conn_string(addr, "app", APP_PASSWORD, "app")
        );
        let (c, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c
    };
    let a = mk("alpha", "UTC", "pg_catalog").await;
    let b = mk("beta", "Asia/Tokyo", "public").await;
    for _ in 0..3 {
        for (c, app, tz, path) in [
            (&a, "alpha", "UTC", "pg_catalog"),
            (&b, "beta", "Asia/Tokyo", "public"),
        ] {
            let row = c
                .query_one(
                    "SELECT current_setting('application_name'), current_setting('TimeZone'), current_setting('search_path')",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), app);
            assert_eq!(row.get::<_, String>(1), tz);
            assert_eq!(row.get::<_, String>(2), path);
        }
    }
}

#[tokio::test]
async fn client_set_of_reported_parameter_is_reported_and_kept() {
    let addr = pooler("default_pool_size = 2").await;
    let mut raw = Raw::login(addr, "app").await;
    let mut out = BytesMut::new();
    frontend::query("SET TimeZone = 'America/New_York'", &mut out).unwrap();
    raw.send(&out).await;
    let msgs = raw.until_ready().await;
    let status = msgs
        .iter()
        .find(|(t, _)| *t == b'S')
        .expect("ParameterStatus");
    assert!(String::from_utf8_lossy(&status.1).contains("America/New_York"));
    // Busy the other server connections so the next query may land elsewhere.
    let others: Vec<_> = futures_util::future::join_all((0..4).map(|_| connect(addr))).await;
    let busy = join_all(
        others
            .iter()
            .map(|c| c.query_one("SELECT pg_sleep(0.05)", &[])),
    );
    out.clear();
    frontend::query("SHOW TimeZone", &mut out).unwrap();
    raw.send(&out).await;
    let (_, mine) = tokio::join!(busy, raw.until_ready());
    let row = mine.iter().find(|(t, _)| *t == b'D').expect("row");
    assert!(String::from_utf8_lossy(&row.1).contains("America/New_York"));
}

#[tokio::test]
async fn notices_and_function_calls_pass_through() {
    let addr = pooler("").await;
    let mut raw = Raw::login(addr, "app").await;
    let mut out = BytesMut::new();
    frontend::query("DO $$BEGIN RAISE NOTICE 'sluice-notice'; END$$", &mut out).unwrap();
    raw.send(&out).await;
    let msgs = raw.until_ready().await;
    assert!(msgs
        .iter()
        .any(|(t, b)| *t == b'N' && String::from_utf8_lossy(b).contains("sluice-notice")));
    // FunctionCall: pg_backend_pid() is OID 2026.
    let mut body = Vec::new();
    body.extend_from_slice(&2026u32.to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes()); // argument formats
    body.extend_from_slice(&0u16.to_be_bytes()); // arguments
    body.extend_from_slice(&0u16.to_be_bytes()); // result format: text
    raw.send(&frame(b'F', &body)).await;
    let msgs = raw.until_ready().await;
    assert_eq!(msgs[0].0, b'V', "{msgs:?}");
}

#[tokio::test]
async fn settable_parameters_from_options_are_applied() {
    let addr = pooler("default_pool_size = 1").await;
    let conn = format!(
        "{} options='-c default_transaction_read_only=on'",
        conn_string(addr, "app", APP_PASSWORD, "app")
    );
    let (ro, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let e = ro
        .simple_query("INSERT INTO items (note) VALUES ('must-not-write')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25006"));
    // The next client on the same server is not read-only.
    drop(ro);
    let rw = connect(addr).await;
    rw.simple_query("INSERT INTO items (note) VALUES ('may-write')")
        .await
        .unwrap();
}

#[tokio::test]
async fn normalised_parameter_values_are_reported() {
    let addr = pooler("default_pool_size = 1").await;
    let mut raw = Raw::tcp(addr).await;
    let mut out = BytesMut::new();
    frontend::startup_message(
        [
            ("user", "trust_user"),
            ("database", "app"),
            ("DateStyle", "iso"),
        ],
        &mut out,
    )
    .unwrap();
    raw.send(&out).await;
    raw.until_ready().await;
    out.clear();
    frontend::query("SELECT 1", &mut out).unwrap();
    raw.send(&out).await;
    let msgs = raw.until_ready().await;
    let status = msgs
        .iter()
        .find(|(t, b)| *t == b'S' && b.starts_with(b"DateStyle"))
        .expect("DateStyle reported after the server normalised it");
    assert!(String::from_utf8_lossy(&status.1).contains("ISO, MDY"));
}

/// Settings replayed on every server are bounded per client, in number and
/// in bytes: past the limit a SET fails with 54000 and the client goes on
/// with what it has.
#[tokio::test]
async fn tracked_settings_are_bounded_per_client() {
    let addr = pooler("default_pool_size = 2").await;
    for (value, at_least, at_most) in [("v".to_string(), 200, 256), ("x".repeat(4000), 50, 66)] {
        let c = connect(addr).await;
        let mut kept = 0;
        let refused = loop {
            let set = format!("SET sluice_t.k{kept} = '{value}'");
            match c.batch_execute(&set).await {
                Ok(()) => kept += 1,
                Err(e) => break e,
            }
            assert!(kept <= at_most, "no limit reached");
        };
        assert_eq!(sqlstate(&refused).as_deref(), Some("54000"), "{refused}");
        assert!(kept >= at_least, "only {kept} settings kept");
        // A setting the client has can still change; the others still follow it.
        c.batch_execute("SET sluice_t.k0 = 'changed'")
            .await
            .unwrap();
        let v: String = c
            .query_one(
                "SELECT current_setting('sluice_t.k0') || current_setting('sluice_t.k1')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, format!("changed{value}"));
    }
}

#[tokio::test]
async fn reset_all_does_not_leave_sluice_guessing_parameters() {
    // Primary only: SHOW must run on the server that ran RESET ALL.
    let addr = pooler_with("default_pool_size = 1", PRIMARY_ONLY).await;
    let conn = format!(
        "{} options='-c search_path=pg_catalog'",
        conn_string(addr, "app", APP_PASSWORD, "app")
    );
    let (a, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    a.batch_execute("RESET ALL").await.unwrap();
    // The next transaction has the client's startup setting again, as the
    // session default it is in PostgreSQL.
    let v = a.simple_query("SHOW search_path").await.unwrap();
    let shown = v.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(shown.as_deref(), Some("pg_catalog"));
}

/// A primary given as a socket directory (`/dir:port`, as libpq reads a host
/// that starts with `/`) is reached over its Unix-domain socket: queries,
/// session parameters and cancel all work, and the server sees no TCP peer.
#[tokio::test]
async fn primary_over_a_unix_socket() {
    let c = cluster();
    let text = config_text(
        sluice::cluster::free_port(),
        "default_pool_size = 2",
        PRIMARY_ONLY,
    )
    .replace(
        &format!("primary = \"127.0.0.1:{}\"", c.primary.port),
        &format!(
            "primary = \"{}:{}\"",
            c.socket_dir.display(),
            c.primary.port
        ),
    );
    assert!(text.contains(&c.socket_dir.display().to_string()));
    let cfg = sluice::config::Config::parse(&text, "test").expect("valid test config");
    let addr = start_in_shared_runtime(cfg).await;
    let client = connect(addr).await;
    let row = client
        .query_one(
            "SELECT inet_server_port() IS NULL, current_setting('application_name'), $1::int4 + 1",
            &[&41i32],
        )
        .await
        .expect("query over the Unix socket");
    assert!(row.get::<_, bool>(0), "the server saw a TCP connection");
    assert_eq!(row.get::<_, i32>(2), 42);
    // Cancel reaches the server over the same socket.
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        client
            .simple_query("SELECT pg_sleep(30) AS over_unix")
            .await
    });
    let watch = connect_primary().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "pg_sleep never showed up as a Unix-socket client"
        );
        let running: i64 = watch
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                 AND query = 'SELECT pg_sleep(30) AS over_unix' AND client_port = -1",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if running > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let started = std::time::Instant::now();
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send cancel");
    let err = sleeper
        .await
        .expect("join")
        .expect_err("pg_sleep was cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
