//! Measures sluice's resident memory with many clients holding prepared
//! statements (issue: "Memory"). Starts a throwaway primary, runs the release
//! `sluice` binary in front of it, connects the clients with raw protocol
//! messages, and prints VmRSS from /proc at each step.
//!
//! cargo build --release && cargo run --release --example prepared_memory [clients] [statements]

use bytes::{Buf, BytesMut};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use sluice::cluster::{free_port, Cluster};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn read_until_ready(stream: &mut TcpStream, buf: &mut BytesMut) {
    loop {
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize + 1;
            if buf.len() < len {
                break;
            }
            let tag = buf[0];
            assert_ne!(
                tag,
                b'E',
                "error from sluice: {:?}",
                String::from_utf8_lossy(&buf[..len])
            );
            buf.advance(len);
            if tag == b'Z' {
                return;
            }
        }
        assert!(stream.read_buf(buf).await.expect("read") > 0, "closed");
    }
}

async fn client(port: u16, statements: Vec<String>) -> (TcpStream, BytesMut) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", "trust_user"), ("database", "app")],
        &mut out,
    )
    .unwrap();
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    read_until_ready(&mut stream, &mut buf).await;
    out.clear();
    for (i, sql) in statements.iter().enumerate() {
        postgres_protocol::message::frontend::parse(&format!("s{i}"), sql, [], &mut out).unwrap();
    }
    postgres_protocol::message::frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    read_until_ready(&mut stream, &mut buf).await;
    (stream, buf)
}

async fn scenario(port: u16, pid: u32, clients: usize, per_client: usize, shared: bool) {
    let started = Instant::now();
    let before = rss_kib(pid);
    println!(
        "sluice before the clients: RSS {:.1} MiB",
        before as f64 / 1024.0
    );
    let mut handles = Vec::new();
    for c in 0..clients {
        let statements: Vec<String> = (0..per_client)
            .map(|i| {
                if shared {
                    format!("SELECT {i} AS shared_statement_number, 'some padding text to look like a real query'")
                } else {
                    format!("SELECT {i} AS statement_of_client_{c}, 'some padding text to look like a real query'")
                }
            })
            .collect();
        handles.push(tokio::spawn(client(port, statements)));
        // Warm the shared statements with one client before the rest come.
        if c == 0 {
            let first = handles.pop().unwrap().await.unwrap();
            handles.push(tokio::spawn(async move { first }));
        }
    }
    let mut held = Vec::new();
    for h in handles {
        held.push(h.await.unwrap());
    }
    let after = rss_kib(pid);
    println!(
        "{clients} clients x {per_client} {} statements: RSS {} MiB -> {} MiB ({:+.1} MiB, {:.0} bytes per client statement) in {:.1}s",
        if shared { "shared" } else { "distinct" },
        before / 1024,
        after / 1024,
        (after as f64 - before as f64) / 1024.0,
        (after.saturating_sub(before) * 1024) as f64 / (clients * per_client) as f64,
        started.elapsed().as_secs_f64()
    );
    drop(held);
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let clients = args.first().copied().unwrap_or(1000);
    let dir = std::env::temp_dir().join(format!("sluice-mem-{}", std::process::id()));
    let mut cluster = Cluster::start(
        &dir,
        0,
        "CREATE ROLE trust_user LOGIN; CREATE DATABASE app;",
    )
    .expect("cluster");
    for (per_client, shared) in [(1000, true), (100, false)] {
        let port = free_port();
        let config = dir.join("pooler.toml");
        std::fs::write(
            &config,
            format!(
                "[pooler]\nlisten = \"127.0.0.1:{port}\"\ndefault_pool_size = 20\nmax_client_conn = 5000\n\
                 log_connections = false\nlog_disconnections = false\n\n[users.trust_user]\nauth = \"trust\"\n\n\
                 [databases.app]\nprimary = \"127.0.0.1:{}\"\n",
                cluster.primary.port
            ),
        )
        .unwrap();
        let bin = std::env::var("SLUICE_BIN").unwrap_or_else(|_| "target/release/sluice".into());
        let mut child = std::process::Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env("SLUICE_LOG", "warn")
            .spawn()
            .expect("start sluice");
        let pid = child.id();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        scenario(port, pid, clients, per_client, shared).await;
        let _ = child.kill();
        let _ = child.wait();
    }
    cluster.stop();
}
