//! sluice: a PostgreSQL connection pooler and read/write router.
//!
//! See `docs/architecture.md` for the modules and the data path.

pub mod admin;
pub mod app;
pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod router;
pub mod server;

use std::sync::Arc;

/// Binds every `[pooler] listen` address and the `[http]` endpoint, and
/// serves until the runtime stops. Returns the bound client addresses
/// (useful with port 0); `App::http_addr` gives the HTTP one.
pub async fn start(
    config: config::Config,
) -> std::io::Result<(Arc<app::App>, Vec<std::net::SocketAddr>)> {
    let app = app::App::new(config);
    let cfg = app.config();
    let mut addrs = Vec::new();
    for listen in &cfg.pooler.listen {
        let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad listen address {listen}"),
            )
        })?;
        let listener = client::bind(addr, cfg.pooler.so_reuseport)?;
        addrs.push(listener.local_addr()?);
        app.add_listener(tokio::spawn(client::accept_loop(app.clone(), listener)));
    }
    if cfg.http.enabled {
        http::start(app.clone(), &cfg.http.listen).await?;
    }
    tokio::spawn(app.pools.clone().maintenance_loop());
    tokio::spawn(app.pools.clone().wait_expiry_loop());
    tokio::spawn(metrics_loop(app.clone()));
    Ok((app, addrs))
}

/// Closes SHOW STATS periods.
async fn metrics_loop(app: Arc<app::App>) {
    loop {
        let period = app.config().pooler.stats_period.0;
        tokio::time::sleep(period).await;
        for s in app.pools.stats.all() {
            s.roll_period();
        }
    }
}
