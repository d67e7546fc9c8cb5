//! The `sluice` binary: reads the configuration, starts logging and the runtime, runs the proxy
//! until SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sluice::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

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
    init_logging(&config);
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
        let shutdown = proxy.shutdown_handle();
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            tracing::info!("stop signal received");
            shutdown.shutdown();
        });
        proxy.run().await;
        anyhow::Ok(())
    })
}

fn init_logging(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
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
