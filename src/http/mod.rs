//! The HTTP endpoint on `[http] listen`: `/metrics` (Prometheus text),
//! `/health` (the process answers) and `/ready` (accepting clients with the
//! primary reachable; 503 while draining or paused). hyper serves it; the
//! exporter's own listener cannot carry extra routes or a readiness answer.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

use crate::app::App;

/// Binds the endpoint and serves it in the background.
pub async fn start(app: Arc<App>, listen: &str) -> std::io::Result<SocketAddr> {
    let addr: SocketAddr = listen.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("bad [http] listen address {listen}"),
        )
    })?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    *app.http_addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(local);
    tracing::info!("HTTP (/metrics, /health, /ready) on {local}");
    tokio::spawn(accept_loop(app, listener));
    Ok(local)
}

async fn accept_loop(app: Arc<App>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(respond(&app, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("HTTP connection ended: {e}");
            }
        });
    }
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn respond(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n", PLAIN);
    }
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            render_metrics(app),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/health" => text(StatusCode::OK, "ok\n", PLAIN),
        "/ready" => match app.not_ready_because() {
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"), PLAIN),
            None => text(StatusCode::OK, "ready\n", PLAIN),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "try /metrics, /health or /ready\n",
            PLAIN,
        ),
    }
}

/// Copies the live figures into the registry, then renders it.
pub fn render_metrics(app: &App) -> String {
    let stats = app.pools.stats.all();
    for s in &stats {
        s.publish();
    }
    // Routing counters are per database: sum its users'.
    let mut routes: std::collections::BTreeMap<&str, [[u64; 8]; 2]> = Default::default();
    for s in &stats {
        let r = s.routes();
        let sum = routes.entry(&s.database).or_default();
        for (row, add) in sum.iter_mut().zip(r) {
            for (n, a) in row.iter_mut().zip(add) {
                *n += a;
            }
        }
    }
    let groups = app.pools.groups();
    for (db, totals) in &routes {
        if let Some(g) = groups.iter().find(|g| g.database == *db) {
            g.routes.publish(totals);
        }
    }
    for g in groups {
        g.stats.pool_size_g.set(g.primary.status().max_size as f64);
        for p in g.all() {
            p.publish();
        }
    }
    for (_, routing) in app.pools.all_routing() {
        routing.publish(&app.metrics);
    }
    let cfg = app.config();
    for db in cfg.databases.keys() {
        app.metrics.set_paused(db, app.is_paused(db));
    }
    app.metrics.clients_connected.set(app.connections() as f64);
    let mut text = app.metrics.render();
    text.push_str(&crate::metrics::stats::render_histograms(&stats));
    text
}
