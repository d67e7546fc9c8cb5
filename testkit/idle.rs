//! Sluice's resident memory with many idle, logged-in clients (for the benches).

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use mysql_async::prelude::Queryable;

use crate::{MariaDb, SluiceOptions, SluiceProcess};

/// Logins in flight at once while opening (or closing) the idle clients.
const CONCURRENCY: usize = 64;
/// Deadline for opening, or for closing, all idle clients.
const DEADLINE: Duration = Duration::from_secs(180);

/// Sluice's resident memory around opening the idle clients, and what it held meanwhile.
#[derive(Debug, Clone)]
pub struct IdleMemory {
    pub clients: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// Connections MariaDB saw from the clients' user while they were idle.
    pub backends_while_idle: u64,
    /// Sluice's open file descriptors while the clients are idle: proof they are all held.
    pub fds_while_idle: usize,
    pub login_seconds: f64,
}

impl IdleMemory {
    /// Resident memory per idle client, in KiB.
    pub fn kib_per_client(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.clients as f64
    }
}

/// Starts a fresh Sluice with `options`, opens `clients` logged-in connections to it with
/// `client` (given Sluice's address; they must log in as `user`), checks the oldest and the
/// newest still answer, and measures. Sluice is stopped at the end and must exit cleanly.
pub fn measure(
    db: &MariaDb,
    options: SluiceOptions,
    clients: usize,
    user: &str,
    client: impl FnOnce(std::net::SocketAddr) -> mysql_async::Opts,
) -> Result<IdleMemory> {
    let sluice = SluiceProcess::start(options).context("starting a fresh Sluice")?;
    let rss_before_kib = sluice.rss_kib()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")?;
    let opts = client(sluice.addr());
    let result = runtime.block_on(async {
        let started = Instant::now();
        let conns = tokio::time::timeout(DEADLINE, open(opts, clients))
            .await
            .map_err(|_| anyhow!("opening {clients} clients took over {DEADLINE:?}"))?
            .with_context(|| {
                format!(
                    "opening {clients} clients through Sluice; its log ends with:\n{}",
                    sluice.log_tail()
                )
            })?;
        let login_seconds = started.elapsed().as_secs_f64();
        let rss_after_kib = sluice.rss_kib()?;
        let fds_while_idle = fs::read_dir(format!("/proc/{}/fd", sluice.pid()))
            .context("cannot list Sluice's file descriptors")?
            .count();
        // The oldest and the newest session still answer: they are live sessions, not
        // sockets Sluice has given up on.
        let mut conns = conns;
        for i in [0, conns.len().saturating_sub(1)] {
            if let Some(c) = conns.get_mut(i) {
                c.query_drop("SELECT 1")
                    .await
                    .with_context(|| format!("idle client {i} no longer answers"))?;
            }
        }
        let mut root = db.root_conn().await?;
        let backends: Option<u64> = root
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?",
                (user,),
            )
            .await
            .context("counting Sluice's backend connections")?;
        root.disconnect().await?;
        tokio::time::timeout(DEADLINE, close_all(conns))
            .await
            .map_err(|_| anyhow!("closing {clients} clients took over {DEADLINE:?}"))?;
        Ok(IdleMemory {
            clients,
            rss_before_kib,
            rss_after_kib,
            backends_while_idle: backends.unwrap_or_default(),
            fds_while_idle,
            login_seconds,
        })
    });
    let status = sluice.stop();
    if result.is_ok() && !status.success() {
        bail!("the memory-run Sluice exited with {status} on SIGTERM");
    }
    result
}

/// Opens `clients` logged-in connections, [`CONCURRENCY`] logins at a time.
async fn open(opts: mysql_async::Opts, clients: usize) -> Result<Vec<mysql_async::Conn>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (next, opts) = (next.clone(), opts.clone());
        tasks.spawn(async move {
            let mut conns = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < clients {
                let n = conns.len();
                conns.push(
                    mysql_async::Conn::new(opts.clone())
                        .await
                        .with_context(|| format!("login failed after {n} in this task"))?,
                );
            }
            anyhow::Ok(conns)
        });
    }
    let mut all = Vec::with_capacity(clients);
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.context("a login task panicked")??);
    }
    Ok(all)
}

/// Disconnects `conns`, [`CONCURRENCY`] at a time; errors on the way out do not matter.
async fn close_all(mut conns: Vec<mysql_async::Conn>) {
    let mut tasks = tokio::task::JoinSet::new();
    let chunk = conns.len().div_ceil(CONCURRENCY).max(1);
    while !conns.is_empty() {
        let batch = conns.split_off(conns.len().saturating_sub(chunk));
        tasks.spawn(async move {
            for conn in batch {
                let _ = conn.disconnect().await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
