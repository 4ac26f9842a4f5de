//! Real drivers through sluice in transaction mode with fewer servers than
//! clients: psycopg 3, asyncpg, node-postgres and pgjdbc each run a script of
//! prepared queries, pipelines, transactions and schema changes that fails on
//! any wrong answer or driver error (`tests/drivers/`). `.ci/run` installs
//! their system packages (`tests/drivers/install.sh`); `run.sh` sets up each
//! driver's own packages on first use.

mod support;

use support::*;

async fn check(driver: &str, tail: &str) {
    // 20 clients per check against a pool of 8 servers per server, routing
    // on (reads go to the replicas) unless `tail` turns it off. The schema-change checks alter a table
    // on one connection and read it at once on others; sluice sends every
    // client's reads to the primary until the replicas have replayed a
    // schema change.
    let addr = pooler_with("default_pool_size = 8", tail).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drivers/run.sh");
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .arg(driver)
        .env("PGHOST", addr.ip().to_string())
        .env("PGPORT", addr.port().to_string())
        .env("PGUSER", "app")
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGDATABASE", "app")
        .env("CHECK_REQUIRE_SWITCHING", "1")
        .output()
        .await
        .expect("run tests/drivers/run.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{driver} checks failed:\n{text}");
}

// One test at a time: the checks set up shared package directories and each
// opens 20 clients.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn psycopg() {
    let _one = SERIAL.lock().await;
    check("psycopg", "").await;
}

#[tokio::test]
async fn asyncpg() {
    let _one = SERIAL.lock().await;
    check("asyncpg", "").await;
}

#[tokio::test]
async fn node_postgres() {
    let _one = SERIAL.lock().await;
    check("node", "").await;
}

#[tokio::test]
async fn pgjdbc() {
    let _one = SERIAL.lock().await;
    check("jdbc", "").await;
}
