//! `sluice demo`: a throwaway primary and two streaming replicas from the local
//! PostgreSQL binaries, sluice in front on 127.0.0.1:6432, cleaned up on Ctrl-C.

use std::process::ExitCode;

use crate::cluster::Cluster;
use crate::config::Config;

const SETUP: &str = "CREATE ROLE app LOGIN PASSWORD 'app'; CREATE DATABASE app OWNER app;";

pub async fn run() -> ExitCode {
    let dir = std::env::temp_dir().join(format!("sluice-demo-{}", std::process::id()));
    println!(
        "Starting a PostgreSQL primary and two streaming replicas in {} ...",
        dir.display()
    );
    let started = tokio::task::spawn_blocking(move || Cluster::start(&dir, 2, SETUP)).await;
    let mut cluster = match started {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            eprintln!("sluice demo: cannot start PostgreSQL: {e}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("sluice demo: {e}");
            return ExitCode::from(1);
        }
    };
    let replicas: Vec<String> = cluster
        .replicas
        .iter()
        .map(|r| format!("\"127.0.0.1:{}\"", r.port))
        .collect();
    let toml = format!(
        "[pooler]\nlisten = \"127.0.0.1:6432\"\npool_mode = \"transaction\"\ndefault_pool_size = 10\nadmin_users = [\"app\"]\n\n\
         [users.app]\npassword = \"app\"\n\n\
         [databases.app]\nprimary = \"127.0.0.1:{}\"\nreplicas = [{}]\n",
        cluster.primary.port,
        replicas.join(", ")
    );
    let cfg = match Config::parse(&toml, "demo") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice demo: {e}");
            return ExitCode::from(1);
        }
    };
    let mut app = None;
    let code = match crate::start(cfg).await {
        Ok((started, _)) => {
            app = Some(started);
            println!();
            println!("sluice is listening on 127.0.0.1:6432 (transaction pooling, reads routed to the replicas).");
            println!("  primary   127.0.0.1:{}", cluster.primary.port);
            for r in &cluster.replicas {
                println!("  replica   127.0.0.1:{}", r.port);
            }
            println!();
            println!("  DATABASE_URL=postgres://app:app@127.0.0.1:6432/app");
            println!("  psql postgres://app:app@127.0.0.1:6432/app");
            println!("  pgbench -i postgres://app:app@127.0.0.1:6432/app && pgbench -c 20 -T 10 postgres://app:app@127.0.0.1:6432/app");
            println!();
            println!("  Admin console:  psql postgres://app:app@127.0.0.1:6432/pgbouncer -c 'SHOW POOLS'");
            println!(
                "  Metrics:        curl http://127.0.0.1:9930/metrics   (also /health, /ready)"
            );
            println!();
            println!("  See where statements run: SELECT inet_server_port(), pg_is_in_recovery();");
            println!("  (reads alternate between the replicas; writes, and your reads right after them, use the primary)");
            println!();
            println!("Press Ctrl-C to stop and remove everything.");
            let _ = tokio::signal::ctrl_c().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice demo: cannot listen on 127.0.0.1:6432: {e}");
            ExitCode::from(1)
        }
    };
    // The monitors stop first, so the servers going away on purpose are not
    // logged as failures.
    if let Some(app) = &app {
        for (_, routing) in app.pools.all_routing() {
            routing.stop();
        }
    }
    println!(
        "Stopping PostgreSQL and removing {} ...",
        cluster.dir.display()
    );
    let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
    code
}
