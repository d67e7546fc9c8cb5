//! The `sluice` binary: reads the configuration, starts logging and the runtime, runs the proxy
//! until SIGTERM or SIGINT (then drains), and reloads the configuration on SIGHUP.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use sluice::ReloadHook;
use sluice::config::{Config, LogFormat};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Changes the log filter of the running process.
type LogLevelHandle = reload::Handle<EnvFilter, Registry>;

/// A MySQL/MariaDB proxy that multiplexes many client sessions onto a small, bounded pool of
/// backend connections.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Every key of the file can be overridden by an environment \
variable: SLUICE_LISTEN, SLUICE_BACKEND_ADDRESS, SLUICE_BACKEND_MAX_CONNECTIONS, ... \
(see proxy/sluice.example.toml)."
)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, short, env = "SLUICE_CONFIG")]
    config: PathBuf,

    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(&args.config, |k| std::env::var(k).ok())
        .with_context(|| format!("invalid configuration {}", args.config.display()))?;
    if args.check {
        println!("{}: configuration is valid", args.config.display());
        return Ok(());
    }
    let log_level = init_logging(&config);
    if let Err(e) = sluice::server::raise_fd_limit() {
        tracing::warn!(error = %e, "cannot raise the open-file limit; fewer clients fit");
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("sluice");
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    let runtime = runtime.build().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let proxy = sluice::Proxy::bind(config).await?;
        let path = args.config.clone();
        proxy.set_config_source(Arc::new(move || {
            Config::load(&path, |k| std::env::var(k).ok())
        }));
        let reloads = proxy.reload_handle();
        reloads.add_hook(log_level_hook(log_level));
        let shutdown = proxy.shutdown_handle();
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            tracing::info!("stop signal received; draining");
            shutdown.shutdown();
        });
        tokio::spawn(reload_on_sighup(reloads));
        proxy.run().await;
        anyhow::Ok(())
    })
}

/// Starts logging; the returned handle changes the filter on reload, unless RUST_LOG set it.
fn init_logging(config: &Config) -> Option<LogLevelHandle> {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_decides = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&config.log_level));
    let (filter, handle) = reload::Layer::new(filter);
    let output = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match config.log_format {
        LogFormat::Json => registry.with(output.json()).init(),
        LogFormat::Pretty => registry.with(output).init(),
    }
    (!env_decides).then_some(handle)
}

/// The reload hook for `log_level`.
fn log_level_hook(handle: Option<LogLevelHandle>) -> ReloadHook {
    ReloadHook {
        name: "log_level",
        keys: &["log_level"],
        run: Box::new(move |config: &Config| {
            let Some(handle) = &handle else {
                return Err("RUST_LOG is set and decides the log level".into());
            };
            let filter = EnvFilter::try_new(&config.log_level)
                .map_err(|e| format!("invalid log_level {:?}: {e}", config.log_level))?;
            handle.reload(filter).map_err(|e| e.to_string())
        }),
    }
}

/// Reloads the configuration file on every SIGHUP.
async fn reload_on_sighup(reloads: sluice::ReloadHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with the admin console's RELOAD");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        let r = reloads.clone();
        // Reading the file (and hooks reading certificates) is blocking work.
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || r.reload()).await {
            tracing::error!(error = %e, "SIGHUP: configuration not reloaded");
        }
    }
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, Ctrl-C is all we can wait for.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
