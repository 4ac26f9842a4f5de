//! Startup and authentication as clients see them: protocol negotiation,
//! trust/md5/SCRAM, wrong passwords, unknown users and databases, limits,
//! and the command line.

mod support;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use std::process::Command;
use support::*;

#[tokio::test]
async fn scram_login_right_and_wrong_password() {
    let addr = pooler("").await;
    let c = connect_as(addr, "app", APP_PASSWORD, "app").await.unwrap();
    assert_eq!(current_user(&c).await, "app");
    let Err(e) = connect_as(addr, "app", "wrong", "app").await else {
        panic!("wrong password accepted")
    };
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
}

#[tokio::test]
async fn md5_login_and_md5_server_auth() {
    let addr = pooler("").await;
    let c = connect_as(addr, "md5_user", MD5_PASSWORD, "app")
        .await
        .unwrap();
    assert_eq!(current_user(&c).await, "md5_user");
    let e = connect_as(addr, "md5_user", "nope", "app")
        .await
        .err()
        .unwrap();
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
}

#[tokio::test]
async fn stored_scram_and_md5_secrets_work() {
    let scram = postgres_protocol::password::scram_sha_256(APP_PASSWORD.as_bytes());
    let md5 = postgres_protocol::password::md5(MD5_PASSWORD.as_bytes(), "hashed");
    // A SCRAM verifier authenticates clients; the server login then needs the
    // plaintext, which a database's server_user/server_password provides.
    let tail = format!(
        "[users.verifier_user]\npassword = \"{scram}\"\n\n[users.hashed]\npassword = \"{md5}\"\nauth = \"md5\"\n\n\
         [databases.via_app]\nprimary = \"127.0.0.1:{p}\"\ndbname = \"app\"\nserver_user = \"app\"\nserver_password = \"{APP_PASSWORD}\"\n",
        p = primary_port()
    );
    let addr = pooler_with("", &tail).await;
    let c = connect_as(addr, "verifier_user", APP_PASSWORD, "via_app")
        .await
        .unwrap();
    assert_eq!(current_user(&c).await, "app");
    assert!(connect_as(addr, "verifier_user", "bad", "via_app")
        .await
        .is_err());
    let c = connect_as(addr, "hashed", MD5_PASSWORD, "via_app")
        .await
        .unwrap();
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn trust_user_needs_no_password() {
    let addr = pooler("").await;
    let c = connect_as(addr, "trust_user", "", "app").await.unwrap();
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn unknown_user_and_unknown_database() {
    let addr = pooler("").await;
    let e = connect_as(addr, "nobody", "x", "app").await.err().unwrap();
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
    let e = connect_as(addr, "app", APP_PASSWORD, "no_such_db")
        .await
        .err()
        .unwrap();
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"));
    assert!(e.as_db_error().unwrap().message().contains("no_such_db"));
}

#[tokio::test]
async fn ssl_and_gss_requests_are_declined_then_login_proceeds() {
    let addr = pooler("").await;
    for code in [80877103u32, 80877104] {
        let mut raw = Raw::tcp(addr).await;
        let mut pkt = 8u32.to_be_bytes().to_vec();
        pkt.extend_from_slice(&code.to_be_bytes());
        raw.send(&pkt).await;
        assert_eq!(raw.recv_byte().await, b'N');
        let mut out = BytesMut::new();
        frontend::startup_message([("user", "trust_user"), ("database", "app")], &mut out).unwrap();
        raw.send(&out).await;
        let msgs = raw.until_ready().await;
        assert!(msgs.iter().any(|(t, _)| *t == b'K'));
        assert!(msgs
            .iter()
            .any(|(t, b)| *t == b'S' && String::from_utf8_lossy(b).starts_with("server_version")));
    }
}

#[tokio::test]
async fn newer_protocol_minor_and_options_are_negotiated() {
    let addr = pooler("").await;
    let mut raw = Raw::tcp(addr).await;
    let mut body = (3u32 << 16 | 2).to_be_bytes().to_vec();
    for s in [
        "user",
        "trust_user",
        "database",
        "app",
        "_pq_.fancy",
        "1",
        "",
    ] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    pkt.extend_from_slice(&body);
    raw.send(&pkt).await;
    let msgs = raw.until_ready().await;
    let (_, v) = msgs
        .iter()
        .find(|(t, _)| *t == b'v')
        .expect("NegotiateProtocolVersion");
    assert_eq!(&v[..4], &0u32.to_be_bytes());
    assert!(String::from_utf8_lossy(v).contains("_pq_.fancy"));
}

#[tokio::test]
async fn unsupported_protocol_and_missing_user_are_refused() {
    let addr = pooler("").await;
    let mut raw = Raw::tcp(addr).await;
    let mut pkt = 9u32.to_be_bytes().to_vec();
    pkt.extend_from_slice(&(2u32 << 16).to_be_bytes());
    pkt.push(0);
    raw.send(&pkt).await;
    let (t, body) = raw.recv().await.unwrap();
    assert_eq!((t, error_code(&body).as_str()), (b'E', "08P01"));

    let mut raw = Raw::tcp(addr).await;
    let mut out = BytesMut::new();
    frontend::startup_message([("database", "app")], &mut out).unwrap();
    raw.send(&out).await;
    let (t, body) = raw.recv().await.unwrap();
    assert_eq!((t, error_code(&body).as_str()), (b'E', "28000"));
}

#[tokio::test]
async fn max_client_conn_is_enforced_with_53300() {
    let addr = pooler("max_client_conn = 2").await;
    let a = connect(addr).await;
    let b = connect(addr).await;
    let e = connect_as(addr, "app", APP_PASSWORD, "app")
        .await
        .err()
        .unwrap();
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"));
    drop(a);
    // The freed place is taken again once the first client is gone.
    let mut ok = false;
    for _ in 0..50 {
        if connect_as(addr, "app", APP_PASSWORD, "app").await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok);
    assert_eq!(
        b.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn bad_startup_option_is_reported() {
    let addr = pooler("").await;
    let conn = format!(
        "{} options='-c TimeZone=Not/AZone'",
        conn_string(addr, "app", APP_PASSWORD, "app")
    );
    // The server refuses the setting when the client first needs a server.
    let result = async {
        let (c, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        c.query_one("SELECT 1", &[]).await
    }
    .await;
    let Err(e) = result else {
        panic!("invalid TimeZone accepted")
    };
    assert_eq!(sqlstate(&e).as_deref(), Some("22023"));
}

#[tokio::test]
async fn psql_works_through_sluice() {
    let addr = pooler("").await;
    let out = pg_tool("psql", addr)
        .args(["-X", "-At", "-d", "app"])
        .args(["-c", "SELECT 40 + 2", "-c", "SHOW application_name"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\npsql\n");
}

fn sluice_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

#[test]
fn version_and_check_command() {
    let out = sluice_bin().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sluice {}", env!("CARGO_PKG_VERSION"))
    );

    let dir = std::env::temp_dir().join(format!("sluice-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[users.app]\npassword = \"${SLUICE_CHECK_PW}\"\n\n[databases.app]\nprimary = \"127.0.0.1:5432\"\n",
    )
    .unwrap();
    let out = sluice_bin()
        .args(["check", "--config"])
        .arg(&good)
        .env("SLUICE_CHECK_PW", "topsecret")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("pool_mode = \"transaction\""));
    assert!(!stdout.contains("topsecret"), "secret printed: {stdout}");

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[pooler]\nlisten = \"127.0.0.1:6432\"\ndefault_pool_sise = 3\n",
    )
    .unwrap();
    let out = sluice_bin()
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:3"), "{stderr}");
    assert!(stderr.contains("default_pool_sise"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
