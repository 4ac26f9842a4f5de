//! tracing setup: readable text or JSON lines, with a level filter that a
//! reload can change.

use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use crate::config::LogFormat;

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// `SLUICE_LOG`, when set, wins over the configured level (and over reloads).
fn env_filter() -> Option<EnvFilter> {
    std::env::var("SLUICE_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
}

/// Installs the global subscriber. Called once, by the binary.
pub fn init(format: LogFormat, level: &str) {
    let filter = env_filter()
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Text => registry.with(fmt::layer().with_target(false)).try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_target(false))
            .try_init(),
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Applies a new `log_level` (a reload); a no-op under `SLUICE_LOG` or when
/// the binary did not install the subscriber (tests).
pub fn set_level(level: &str) {
    if env_filter().is_some() {
        return;
    }
    let (Some(handle), Ok(filter)) = (FILTER.get(), EnvFilter::try_new(level)) else {
        return;
    };
    if let Err(e) = handle.reload(filter) {
        tracing::warn!("cannot change the log level: {e}");
    }
}
