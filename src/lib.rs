//! sluice: a PostgreSQL connection pooler and read/write router.
//!
//! See `docs/architecture.md` for the modules and the data path.

pub mod app;
pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod pool;
pub mod protocol;
pub mod router;
pub mod server;

use std::sync::Arc;

/// Binds every `[pooler] listen` address and serves clients until the future
/// is dropped. Returns the bound addresses (useful with port 0).
pub async fn start(
    config: config::Config,
) -> std::io::Result<(Arc<app::App>, Vec<std::net::SocketAddr>)> {
    let app = app::App::new(config);
    let mut addrs = Vec::new();
    for listen in &app.config.pooler.listen {
        let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad listen address {listen}"),
            )
        })?;
        let listener = client::bind(addr, app.config.pooler.so_reuseport)?;
        addrs.push(listener.local_addr()?);
        tokio::spawn(client::accept_loop(app.clone(), listener));
    }
    tokio::spawn(app.pools.clone().maintenance_loop());
    Ok((app, addrs))
}
