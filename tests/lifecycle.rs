//! The sluice binary under its signals: SIGHUP reloads, SIGTERM drains (the
//! readiness endpoint turns 503 before the listener closes, open
//! transactions commit, idle clients get 57P01, exit 0), a second signal
//! exits at once, and SO_REUSEPORT lets a new process share the port.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

struct Sluice {
    child: Child,
    addr: SocketAddr,
    http: SocketAddr,
    path: PathBuf,
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(port: u16, http: u16, extra: &str) -> String {
    let text = config_text(port, extra, "");
    text.replace(
        "[users.app]",
        &format!("[http]\nlisten = \"127.0.0.1:{http}\"\n\n[users.app]"),
    )
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn spawn_sluice(dir: &Path, extra: &str) -> Sluice {
    let (port, http) = (sluice::cluster::free_port(), sluice::cluster::free_port());
    let path = dir.join("pooler.toml");
    std::fs::write(&path, config(port, http, extra)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(&path)
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sluice");
    let s = Sluice {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        http: SocketAddr::from(([127, 0, 0, 1], http)),
        path,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(s.http, "/health").await.0 != 200 {
        assert!(Instant::now() < deadline, "sluice did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{sig}");
}

/// Waits for the process to exit; its exit code.
async fn exit_code(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait for sluice") {
            return status.code();
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_drains_open_transactions_then_exits_zero() {
    let dir = temp_dir("drain");
    // One thread (a current-thread runtime): the other tests here run the
    // default, one thread per CPU.
    let mut s = spawn_sluice(
        &dir,
        "workers = 1\ndefault_pool_size = 25\nshutdown_delay = \"1s\"\nshutdown_timeout = \"30s\"",
    )
    .await;
    assert_eq!(http_get(s.http, "/ready").await.0, 200);
    let tag = format!("drain-{}", std::process::id());
    let mut open = Vec::new();
    for i in 0..20 {
        let c = connect(s.addr).await;
        c.batch_execute(&format!(
            "BEGIN; INSERT INTO items (note) VALUES ('{tag}-{i}')"
        ))
        .await
        .unwrap();
        open.push(c);
    }
    let idle = connect(s.addr).await;
    idle.batch_execute("SELECT 1").await.unwrap();

    signal(&s.child, "TERM");
    // Not ready at once, while the listener still takes new clients.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http_get(s.http, "/ready").await;
        if status == 503 {
            assert_eq!(body, "draining\n");
            break;
        }
        assert!(Instant::now() < deadline, "/ready never turned 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        tokio::net::TcpStream::connect(s.addr).await.is_ok(),
        "the listener stays open for shutdown_delay after /ready turns 503"
    );
    // Then the listener closes and the idle client is told why.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(s.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the listener never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !idle.is_closed() {
        assert!(
            Instant::now() < deadline,
            "the idle client was not disconnected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every open transaction still commits.
    for c in &open {
        c.batch_execute("SELECT 1")
            .await
            .expect("still served while draining");
        c.batch_execute("COMMIT")
            .await
            .expect("commit while draining");
    }
    assert_eq!(
        exit_code(&mut s.child, Duration::from_secs(20)).await,
        Some(0),
        "sluice exits 0 once drained"
    );
    let primary = connect_primary().await;
    let n: i64 = primary
        .query_one(
            "SELECT count(*) FROM items WHERE note LIKE $1",
            &[&format!("{tag}-%")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20, "all 20 transactions committed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let dir = temp_dir("second-signal");
    let mut s = spawn_sluice(&dir, "shutdown_timeout = \"60s\"").await;
    let c = connect(s.addr).await;
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    signal(&s.child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(s.http, "/ready").await.0 != 503 {
        assert!(Instant::now() < deadline, "drain did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        exit_code(&mut s.child, Duration::from_millis(300)).await,
        None
    );
    signal(&s.child, "INT");
    let code = exit_code(&mut s.child, Duration::from_secs(5)).await;
    assert_eq!(code, Some(1), "the second signal ends the drain");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sighup_reloads_and_a_broken_file_keeps_the_running_config() {
    let dir = temp_dir("sighup");
    let s = spawn_sluice(&dir, "admin_users = [\"app\"]\ndefault_pool_size = 3").await;
    let client = connect(s.addr).await;
    client.batch_execute("SELECT 1").await.unwrap();
    let console = connect_as(s.addr, "app", APP_PASSWORD, "pgbouncer")
        .await
        .unwrap();
    let pool_size = || async {
        let rows = console.simple_query("SHOW CONFIG").await.unwrap();
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r)
                    if r.get(0) == Some("default_pool_size") =>
                {
                    r.get(1).map(str::to_string)
                }
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(pool_size().await, "3");
    let text = std::fs::read_to_string(&s.path).unwrap();
    std::fs::write(
        &s.path,
        text.replace("default_pool_size = 3", "default_pool_size = 7"),
    )
    .unwrap();
    signal(&s.child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool_size().await != "7" {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = http_get(s.http, "/metrics").await.1;
    assert!(metrics.contains("sluice_config_reloads_total{result=\"ok\"} 1"));
    std::fs::write(&s.path, "[pooler]\ndefault_pool_size = \"many\"\n").unwrap();
    signal(&s.child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get(s.http, "/metrics")
        .await
        .1
        .contains("sluice_config_reloads_total{result=\"error\"} 1")
    {
        assert!(Instant::now() < deadline, "the broken file was not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pool_size().await, "7");
    client
        .batch_execute("SELECT 1")
        .await
        .expect("the client kept its session through both reloads");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn so_reuseport_lets_a_new_process_share_the_port() {
    let dir = temp_dir("reuseport");
    let old = spawn_sluice(&dir, "so_reuseport = true").await;
    let text = std::fs::read_to_string(&old.path).unwrap();
    let new_http = sluice::cluster::free_port();
    let new_path = dir.join("new.toml");
    std::fs::write(
        &new_path,
        text.replace(
            &format!("127.0.0.1:{}", old.http.port()),
            &format!("127.0.0.1:{new_http}"),
        ),
    )
    .unwrap();
    let client = connect(old.addr).await;
    let mut new = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(&new_path)
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let new_http = SocketAddr::from(([127, 0, 0, 1], new_http));
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(new_http, "/health").await.0 != 200 {
        assert!(
            new.try_wait().unwrap().is_none(),
            "the second process could not bind the shared port"
        );
        assert!(Instant::now() < deadline, "second sluice did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The old process keeps serving the client it has.
    client.batch_execute("SELECT 1").await.unwrap();
    let _ = new.kill();
    let _ = new.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Linux scheduling policy of every thread of a process (the 41st
/// field of /proc/<pid>/task/<tid>/stat: 0 normal, 3 batch).
fn thread_policies(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
        // Fields after the command name, which may hold spaces, start at 3.
        let (_, rest) = stat.rsplit_once(") ").unwrap();
        out.push(rest.split(' ').nth(41 - 3).unwrap().parse().unwrap());
    }
    out
}

#[tokio::test]
async fn runtime_threads_run_under_the_configured_sched_policy() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    let dir = temp_dir("sched-batch");
    let s = spawn_sluice(&dir, "workers = 2").await;
    let policies = thread_policies(s.child.id());
    assert!(
        policies.len() >= 3,
        "main thread and two workers: {policies:?}"
    );
    assert!(policies.iter().all(|&p| p == SCHED_BATCH), "{policies:?}");
    drop(s);
    let dir2 = temp_dir("sched-normal");
    let s = spawn_sluice(&dir2, "workers = 1\nsched_policy = \"normal\"").await;
    let policies = thread_policies(s.child.id());
    assert!(policies.iter().all(|&p| p == SCHED_OTHER), "{policies:?}");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}
