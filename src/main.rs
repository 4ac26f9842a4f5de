//! The `sluice` binary: command line, runtime and signals; nothing else.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "PostgreSQL connection pooler and read/write router"
)]
struct Cli {
    /// Path to pooler.toml.
    #[arg(short, long, global = true, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate the config and print the effective settings (secrets masked).
    Check,
    /// Start a throwaway primary, two replicas and sluice in front of them.
    Demo,
    /// Print where a statement would be routed, and why.
    Classify {
        /// The SQL text (one or more statements).
        sql: String,
        /// Load function volatility from this database's primary, as the
        /// pooler does (needs --config).
        #[arg(long)]
        database: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.is_some() {
        // `serve` sets logging up from its configuration.
        sluice::logging::init(sluice::config::LogFormat::Text, "info");
    }
    match cli.command {
        Some(Cmd::Check) => check(cli.config),
        Some(Cmd::Demo) => runtime(0).block_on(sluice::demo::run()),
        Some(Cmd::Classify { sql, database }) => {
            let cfg = match &cli.config {
                Some(path) => match sluice::config::Config::load(path) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        eprintln!("sluice: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => None,
            };
            match runtime(1).block_on(sluice::router::cli::classify(cfg, database, &sql)) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice classify: {e}");
                    ExitCode::from(1)
                }
            }
        }
        None => {
            let Some(path) = cli.config else {
                eprintln!("sluice: --config pooler.toml is required (see --help)");
                return ExitCode::from(2);
            };
            match sluice::config::Config::load(&path) {
                Ok(cfg) => {
                    sluice::logging::init(cfg.pooler.log_format, &cfg.pooler.log_level);
                    // Before the runtime: its threads inherit the policy.
                    set_sched_policy(cfg.pooler.sched_policy);
                    runtime(cfg.pooler.workers).block_on(serve(cfg, path))
                }
                Err(e) => {
                    eprintln!("sluice: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if workers > 0 {
            b.worker_threads(workers);
        }
        b
    };
    builder
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

/// Puts the calling thread, and so every thread it starts, under the
/// configured Linux scheduling policy. SCHED_BATCH keeps a woken pooler from
/// preempting the task that woke it: on a busy machine it then finds several
/// sockets ready per wake-up instead of one, and spends fewer context switches
/// and `epoll_wait` calls per transaction. Any process may choose it; no
/// privilege is needed. Called directly: neither std nor tokio exposes it.
#[cfg(target_os = "linux")]
fn set_sched_policy(policy: sluice::config::SchedPolicy) {
    let raw = match policy {
        sluice::config::SchedPolicy::Batch => libc::SCHED_BATCH,
        sluice::config::SchedPolicy::Normal => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` outlives the call.
    if unsafe { libc::sched_setscheduler(0, raw, &param) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot set sched_policy {policy:?}; keeping the inherited policy"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn set_sched_policy(_: sluice::config::SchedPolicy) {}

fn check(path: Option<PathBuf>) -> ExitCode {
    let Some(path) = path else {
        eprintln!("sluice check: --config pooler.toml is required");
        return ExitCode::from(2);
    };
    match sluice::config::Config::load(&path) {
        Ok(cfg) => {
            println!("# {} is valid; effective configuration:", path.display());
            print!("{}", cfg.render());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(cfg: sluice::config::Config, path: PathBuf) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let (app, addrs) = match sluice::start(cfg).await {
        Ok(started) => started,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    app.set_config_path(path);
    for a in &addrs {
        tracing::info!("listening on {a}");
    }
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return ExitCode::from(1);
    };
    let drain = loop {
        tokio::select! {
            _ = term.recv() => break true,
            _ = int.recv() => break true,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = app.reload().await;
            }
            drain = app.shutdown_requested() => {
                tracing::info!("SHUTDOWN from the admin console");
                break drain;
            }
        }
    };
    if !drain {
        return ExitCode::SUCCESS;
    }
    tracing::info!("shutting down: draining (a second signal exits at once)");
    tokio::select! {
        _ = app.drain() => {}
        _ = term.recv() => {
            tracing::warn!("second signal: exiting now");
            return ExitCode::from(1);
        }
        _ = int.recv() => {
            tracing::warn!("second signal: exiting now");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
