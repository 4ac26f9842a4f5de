//! Failures and limits: cancel, clients and servers that vanish, garbage on
//! the wire, and the timeouts.

mod support;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use std::time::{Duration, Instant};
use support::*;

#[tokio::test]
async fn cancel_reaches_the_running_query() {
    let addr = pooler("default_pool_size = 2").await;
    let c = connect(addr).await;
    let token = c.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = sleeper.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("57014"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cancel took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn cancel_of_an_idle_client_is_a_no_op() {
    let addr = pooler("default_pool_size = 1").await;
    let idle = connect(addr).await;
    let busy = connect(addr).await;
    // idle's cancel key must not touch busy's query on the shared server.
    let running =
        tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(0.5)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    idle.cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    running
        .await
        .unwrap()
        .expect("busy's query was not cancelled");
    assert_eq!(
        idle.query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn cancel_reaches_the_running_query_in_session_mode() {
    let addr = pooler("pool_mode = \"session\"").await;
    let c = connect(addr).await;
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), sleeper)
        .await
        .expect("the cancel reached the query")
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("57014"));
}

/// A cancel is for the query running when it comes: one that comes between
/// queries (in transaction mode and in session mode, where the server stays
/// attached) must not stop the client's next query.
#[tokio::test]
async fn a_cancel_between_queries_does_not_stop_the_next_one() {
    for mode in ["transaction", "session"] {
        let addr = pooler(&format!("pool_mode = \"{mode}\"")).await;
        let c = connect(addr).await;
        c.simple_query("SELECT 1").await.unwrap();
        c.cancel_token()
            .cancel_query(tokio_postgres::NoTls)
            .await
            .unwrap();
        // Give the cancel time to reach the session before the next query.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The notice reaches the pooler at once, while the sleep runs: a
        // cancel still pending then would stop it.
        c.simple_query("DO $$ BEGIN RAISE NOTICE 'started'; PERFORM pg_sleep(0.3); END $$")
            .await
            .unwrap_or_else(|e| panic!("{mode}: the next query was cancelled: {e}"));
    }
}

#[tokio::test]
async fn a_wrong_cancel_key_does_nothing() {
    let addr = pooler("").await;
    let c = connect(addr).await;
    let running =
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(0.5)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut raw = Raw::tcp(addr).await;
    let mut out = BytesMut::new();
    frontend::cancel_request(12345, 67890, &mut out);
    raw.send(&out).await;
    assert!(
        raw.recv().await.is_none(),
        "cancel connections are closed without reply"
    );
    running.await.unwrap().expect("not cancelled");
}

#[tokio::test]
async fn client_killed_mid_transaction_leaves_nothing_committed() {
    // Primary only: the next client must get the very server the killed one had.
    let addr = pooler_with("default_pool_size = 1", PRIMARY_ONLY).await;
    let marker = format!("killed-{}", std::process::id());
    let mut raw = Raw::login(addr, "app").await;
    let mut out = BytesMut::new();
    frontend::query(
        &format!("BEGIN; INSERT INTO items (note) VALUES ('{marker}')"),
        &mut out,
    )
    .unwrap();
    raw.send(&out).await;
    let msgs = raw.until_ready().await;
    assert_eq!(msgs.last().unwrap().1[0], b'T', "inside the transaction");
    drop(raw);
    // The only server connection is rolled back and serves the next client.
    let c = connect(addr).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM items WHERE note = $1", &[&marker])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let primary = connect_primary().await;
    let n: i64 = primary
        .query_one("SELECT count(*) FROM items WHERE note = $1", &[&marker])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let open: i64 = primary
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0, "no server is left inside the killed transaction");
}

#[tokio::test]
async fn client_killed_mid_query_does_not_poison_the_pool() {
    // Primary only: the count must run on the one server the killed client had.
    let addr = pooler_with("default_pool_size = 1", PRIMARY_ONLY).await;
    let mut raw = Raw::login(addr, "app").await;
    let mut out = BytesMut::new();
    frontend::query(
        "BEGIN; INSERT INTO items (note) VALUES ('mid-query'); SELECT pg_sleep(1)",
        &mut out,
    )
    .unwrap();
    raw.send(&out).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(raw);
    let c = connect(addr).await;
    let rows = c
        .simple_query("SELECT count(*) FROM items WHERE note = 'mid-query'")
        .await
        .unwrap();
    let count = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(count.as_deref(), Some("0"));
}

#[tokio::test]
async fn server_killed_mid_query_gives_an_error_and_the_pool_heals() {
    // Primary only: the pid read and the pg_sleep must share one server.
    let addr = pooler_with("default_pool_size = 1", PRIMARY_ONLY).await;
    let c = connect(addr).await;
    let pid: i32 = c.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0);
    let sleeper = tokio::spawn(async move {
        let r = c.simple_query("SELECT pg_sleep(10)").await;
        (c, r)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let primary = connect_primary().await;
    primary
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let (_c, r) = sleeper.await.unwrap();
    assert!(r.is_err(), "the client learns its query died");
    let fresh = connect(addr).await;
    let new_pid: i32 = fresh
        .query_typed("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_ne!(new_pid, pid);
}

#[tokio::test]
async fn server_closed_while_idle_in_pool_is_replaced() {
    // Primary only: the pid is terminated on the primary.
    let addr = pooler_with("default_pool_size = 1", PRIMARY_ONLY).await;
    let c = connect(addr).await;
    let pid: i32 = c.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0);
    let primary = connect_primary().await;
    primary
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The dead idle connection is noticed at checkout; the client sees nothing.
    let new_pid: i32 = c.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0);
    assert_ne!(new_pid, pid);
}

#[tokio::test]
async fn garbage_and_oversized_packets_are_refused_while_others_work() {
    let addr = pooler("max_packet_size = 65536\ndefault_pool_size = 2").await;
    let survivor = connect(addr).await;
    // Random bytes instead of a startup packet.
    let mut raw = Raw::tcp(addr).await;
    raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let reply = raw.recv().await;
    assert!(reply.is_none() || reply.unwrap().0 == b'E');
    // A startup packet claiming to be huge.
    let mut raw = Raw::tcp(addr).await;
    raw.send(&0x7fff_0000u32.to_be_bytes()).await;
    let reply = raw.recv().await;
    assert!(reply.is_none() || reply.unwrap().0 == b'E');
    // A logged-in client sends a query larger than max_packet_size.
    let mut raw = Raw::login(addr, "app").await;
    let mut out = BytesMut::new();
    frontend::query(&format!("SELECT '{}'", "x".repeat(100_000)), &mut out).unwrap();
    raw.send(&out).await;
    let (t, body) = raw.recv().await.unwrap();
    assert_eq!((t, error_code(&body).as_str()), (b'E', "08P01"));
    // An unknown message type.
    let mut raw = Raw::login(addr, "app").await;
    raw.send(&frame(b'@', b"junk")).await;
    let (t, body) = raw.recv().await.unwrap();
    assert_eq!((t, error_code(&body).as_str()), (b'E', "08P01"));
    // A negative length.
    let mut raw = Raw::login(addr, "app").await;
    raw.send(&[b'Q', 0xff, 0xff, 0xff, 0xf0]).await;
    let (t, body) = raw.recv().await.unwrap();
    assert_eq!((t, error_code(&body).as_str()), (b'E', "08P01"));
    // Garbage in the middle of SCRAM.
    let mut raw = Raw::tcp(addr).await;
    let mut out = BytesMut::new();
    frontend::startup_message([("user", "app"), ("database", "app")], &mut out).unwrap();
    raw.send(&out).await;
    let (t, _) = raw.recv().await.unwrap();
    assert_eq!(t, b'R');
    raw.send(&frame(b'p', b"SCRAM-SHA-256\0\xff\xff\xff\xffgarbage"))
        .await;
    let (t, body) = raw.recv().await.unwrap();
    assert_eq!((t, error_code(&body).as_str()), (b'E', "08P01"));

    assert_eq!(
        survivor
            .query_one("SELECT 7", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7
    );
}

/// A message too large to take is refused at once, not after waiting for a
/// server: here the only one is held by another client's transaction.
#[tokio::test]
async fn an_oversized_message_is_refused_without_waiting_for_a_server() {
    let addr = pooler_with(
        "max_packet_size = 65536\ndefault_pool_size = 1",
        PRIMARY_ONLY,
    )
    .await;
    let mut holder = Raw::login(addr, "app").await;
    holder.run("BEGIN").await;
    let mut raw = Raw::login(addr, "app").await;
    raw.query(&format!("SELECT '{}'", "x".repeat(100_000)))
        .await;
    let (t, body) = raw.recv().await.unwrap();
    assert_eq!((t, error_code(&body).as_str()), (b'E', "08P01"));
}

#[tokio::test]
async fn query_wait_timeout_fails_the_waiter_only() {
    let addr = pooler_with(
        "default_pool_size = 1\nquery_wait_timeout = \"300ms\"",
        PRIMARY_ONLY,
    )
    .await;
    let holder = connect(addr).await;
    holder.batch_execute("BEGIN").await.unwrap();
    let waiter = connect(addr).await;
    let e = waiter.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        e.to_string().contains("query_wait_timeout")
            || e.as_db_error()
                .is_some_and(|d| d.message().contains("query_wait_timeout")),
        "{e}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        holder.query_typed("SELECT 1", &[]).await.unwrap()[0].get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn idle_transaction_timeout_closes_and_rolls_back() {
    let addr = pooler("default_pool_size = 1\nidle_transaction_timeout = \"300ms\"").await;
    let c = connect(addr).await;
    c.batch_execute("BEGIN; INSERT INTO items (note) VALUES ('idle-tx')")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let e = c.simple_query("COMMIT").await.unwrap_err();
    assert!(
        e.is_closed() || sqlstate(&e).as_deref() == Some("25P03"),
        "{e}"
    );
    let other = connect(addr).await;
    let n: i64 = other
        .query_typed("SELECT count(*) FROM items WHERE note = 'idle-tx'", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn client_idle_timeout_closes_idle_clients() {
    let addr = pooler("client_idle_timeout = \"300ms\"").await;
    let c = connect(addr).await;
    assert_eq!(
        c.query_typed("SELECT 1", &[]).await.unwrap()[0].get::<_, i32>(0),
        1
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(c.simple_query("SELECT 1").await.is_err());
}

#[tokio::test]
async fn client_login_timeout_drops_silent_clients() {
    let addr = pooler("client_login_timeout = \"300ms\"").await;
    let mut raw = Raw::tcp(addr).await;
    // Half a startup packet, then silence.
    raw.send(&[0, 0, 0, 40, 0, 3]).await;
    let started = Instant::now();
    let reply = raw.recv().await;
    assert!(reply.is_none() || reply.unwrap().0 == b'E');
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Creates a login role of the test's own, so that its server connections
/// can be counted on the primary apart from every other test's.
async fn own_role(name: &str) -> tokio_postgres::Client {
    let primary = connect_primary().await;
    primary
        .batch_execute(&format!(
            "DO $$BEGIN CREATE ROLE {name} LOGIN PASSWORD '{name}'; EXCEPTION WHEN duplicate_object THEN NULL; END$$"
        ))
        .await
        .unwrap();
    primary
}

async fn server_count(primary: &tokio_postgres::Client, role: &str) -> i64 {
    primary
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

/// A database entry that logs into the server as `role`.
fn database_as(name: &str, role: &str, extra: &str) -> String {
    format!(
        "[databases.{name}]\nprimary = \"127.0.0.1:{}\"\ndbname = \"app\"\nserver_user = \"{role}\"\nserver_password = \"{role}\"\n{extra}\n",
        primary_port()
    )
}

#[tokio::test]
async fn min_pool_size_keeps_servers_open() {
    let primary = own_role("warm_role").await;
    let addr = pooler_with("", &database_as("warm", "warm_role", "min_pool_size = 3")).await;
    let c = connect_as(addr, "app", APP_PASSWORD, "warm").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    let mut n = 0;
    for _ in 0..60 {
        n = server_count(&primary, "warm_role").await;
        if n >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // At least min_pool_size: a checkout racing the maintenance task can make
    // it open one more than needed.
    assert!(
        (3..=4).contains(&n),
        "the maintenance task opens servers up to min_pool_size, found {n}"
    );
    drop(c);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        server_count(&primary, "warm_role").await >= 3,
        "idle servers are kept"
    );
}

#[tokio::test]
async fn server_idle_timeout_closes_unused_servers() {
    let primary = own_role("idle_role").await;
    let addr = pooler_with(
        "server_idle_timeout = \"1s\"",
        &database_as("idle", "idle_role", ""),
    )
    .await;
    let a = connect_as(addr, "app", APP_PASSWORD, "idle").await.unwrap();
    let b = connect_as(addr, "app", APP_PASSWORD, "idle").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    assert_eq!(server_count(&primary, "idle_role").await, 2);
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
    let mut n = 2;
    for _ in 0..60 {
        n = server_count(&primary, "idle_role").await;
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(n, 0, "idle servers are closed after server_idle_timeout");
    // And the pool opens a new one on demand.
    assert_eq!(
        a.query_typed("SELECT 1", &[]).await.unwrap()[0].get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn server_lifetime_replaces_old_servers() {
    // Primary only: with replicas the two reads could differ by server alone.
    let addr = pooler_with(
        "default_pool_size = 1\nserver_lifetime = \"500ms\"",
        PRIMARY_ONLY,
    )
    .await;
    let c = connect(addr).await;
    let first: i32 = c.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later: i32 = c.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0);
    assert_ne!(first, later);
}

#[tokio::test]
async fn server_connect_timeout_is_reported() {
    // A server that accepts TCP connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let tail = format!("[databases.silent]\nprimary = \"127.0.0.1:{port}\"\n");
    let addr = pooler_with("server_connect_timeout = \"300ms\"", &tail).await;
    let started = Instant::now();
    let Err(e) = connect_as(addr, "app", APP_PASSWORD, "silent").await else {
        panic!("login to a silent server succeeded");
    };
    assert!(started.elapsed() < Duration::from_secs(5));
    let db = e.as_db_error().expect("an error from sluice");
    assert_eq!(db.code().code(), "57P03");
    assert!(
        db.message().contains("server_connect_timeout"),
        "{}",
        db.message()
    );
    keep.abort();
}
