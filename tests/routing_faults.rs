//! Routing when replicas fall behind or go away: read-your-writes with a
//! paused replica, lag limits, and a replica stopped under load. These tests
//! pause and stop the replicas of their own cluster, so they run one at a time.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::sync::Mutex;

/// One test at a time: each changes the replicas everyone would see.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// A superuser connection straight to replica `i` (0-based).
async fn replica_admin(i: usize) -> tokio_postgres::Client {
    connect_superuser(cluster().replicas[i].port).await
}

/// A pooler whose monitor has seen both replicas serve reads.
async fn routed_pooler(tail: &str) -> SocketAddr {
    let addr = pooler_with("default_pool_size = 4", tail).await;
    wait_for_both_replicas(addr).await;
    addr
}

/// Resumes replay on replica `i` when dropped, even if the test fails.
struct Paused(usize);

impl Paused {
    async fn pause(i: usize) -> Paused {
        replica_admin(i)
            .await
            .batch_execute("SELECT pg_wal_replay_pause()")
            .await
            .expect("pause replay");
        Paused(i)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let port = cluster().replicas[self.0].port;
        let _ = cluster().psql(port, "postgres", "SELECT pg_wal_replay_resume()");
    }
}

#[tokio::test]
async fn read_your_writes_with_a_paused_replica_never_misses() {
    let _serial = SERIAL.lock().await;
    let addr = routed_pooler("").await;
    let _paused = Paused::pause(0).await;
    let c = connect(addr).await;
    let insert = c
        .prepare("INSERT INTO items(note) VALUES ($1) RETURNING id")
        .await
        .unwrap();
    let select = c
        .prepare("SELECT note FROM items WHERE id = $1")
        .await
        .unwrap();
    let mut misses = 0;
    for i in 0..1000 {
        let note = format!("ryw-{i}");
        let id: i64 = c.query_one(&insert, &[&note]).await.unwrap().get(0);
        let rows = c.query(&select, &[&id]).await.unwrap();
        if rows.len() != 1 || rows[0].get::<_, String>(0) != note {
            misses += 1;
        }
    }
    assert_eq!(misses, 0, "reads after writes missed their own rows");
    // After the writes have replayed, reads leave the primary again, and
    // never for the paused replica, which has not replayed them.
    let paused_port = replica_ports()[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut on_replica = 0;
    while on_replica < 20 {
        assert!(
            Instant::now() < deadline,
            "reads never returned to the live replica"
        );
        let p = port_of(&c, "SELECT inet_server_port()").await;
        assert_ne!(
            p, paused_port,
            "a read went to the replica that lacks the client's writes"
        );
        if p != primary_port() {
            on_replica += 1;
        }
    }
}

#[tokio::test]
async fn eventual_consistency_excludes_a_replica_past_max_replica_lag() {
    let _serial = SERIAL.lock().await;
    let addr = routed_pooler(
        "[routing]\nconsistency = \"eventual\"\nmax_replica_lag = \"1s\"\nlag_check_interval = \"100ms\"",
    )
    .await;
    let _paused = Paused::pause(0).await;
    let paused_port = replica_ports()[0];
    let writer = connect_primary().await;
    let c = connect(addr).await;
    // Keep the primary's WAL moving; the paused replica falls behind.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut clean = 0;
    while clean < 40 {
        assert!(
            Instant::now() < deadline,
            "the lagging replica kept getting reads"
        );
        writer
            .batch_execute("INSERT INTO items(note) VALUES ('lag')")
            .await
            .unwrap();
        let p = port_of(&c, "SELECT inet_server_port()").await;
        if p == paused_port {
            clean = 0;
        } else {
            clean += 1;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // It stays out while it lags.
    for _ in 0..40 {
        writer
            .batch_execute("INSERT INTO items(note) VALUES ('lag')")
            .await
            .unwrap();
        assert_ne!(port_of(&c, "SELECT inet_server_port()").await, paused_port);
    }
}

#[tokio::test]
async fn stopping_a_replica_under_read_load_shows_no_errors() {
    let _serial = SERIAL.lock().await;
    let addr = routed_pooler("[routing]\nban_time = \"1s\"\nlag_check_interval = \"100ms\"").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (stop, errors, reads) = (stop.clone(), errors.clone(), reads.clone());
        clients.push(tokio::spawn(async move {
            let c = connect(addr).await;
            let mut first_error = None;
            while !stop.load(Ordering::Relaxed) {
                match c.query_one("SELECT count(*) FROM items", &[]).await {
                    Ok(_) => {
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(format!("{e:?}"));
                        if c.is_closed() {
                            break;
                        }
                    }
                }
            }
            first_error
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped_port = replica_ports()[1];
    tokio::task::spawn_blocking(|| cluster().pg_ctl_stop(2))
        .await
        .unwrap()
        .expect("stop replica");
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::spawn_blocking(|| cluster().pg_ctl_start(2))
        .await
        .unwrap()
        .expect("restart replica");
    // Back in rotation within a few seconds.
    let c = connect(addr).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let read = || async {
        tokio::time::timeout(
            Duration::from_secs(10),
            port_of(&c, "SELECT inet_server_port()"),
        )
        .await
        .expect("a read through sluice hung")
    };
    while read().await != stopped_port {
        assert!(
            Instant::now() < deadline,
            "the restarted replica never served reads again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut first = None;
    for h in clients {
        if let Some(e) = h.await.unwrap() {
            first.get_or_insert(e);
        }
    }
    assert!(reads.load(Ordering::Relaxed) > 100, "the load ran");
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "client-visible errors, first: {first:?}"
    );
}
