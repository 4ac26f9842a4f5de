//! tracing setup: readable text or JSON lines on stderr, with a level filter
//! that a reload can change.

use std::io::IsTerminal;
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
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(colour(
                        std::io::stderr().is_terminal(),
                        std::env::var_os("NO_COLOR"),
                    )),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_target(false),
            )
            .try_init(),
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Colour codes only on a terminal, and not when `NO_COLOR` is set to
/// anything non-empty (no-color.org): in a file, a pipe or a pod's log they are
/// noise.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
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

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
