//! The demo (README command one): Sluice in front of a MariaDB it starts itself, then a burst of
//! Lambda-like client sessions multiplexed onto a small pool, with live progress and a summary.
//! Afterwards Sluice keeps running so you can connect with the `mariadb` client.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, OptsBuilder};
use sluice_testkit::{MariaDb, MariaDbOptions, SluiceOptions, SluiceProcess};
use tokio::sync::Semaphore;

/// How long one session may take before it counts as failed.
const SESSION_LIMIT: Duration = Duration::from_secs(30);

/// Demo settings, from the command line.
struct Settings {
    sessions: usize,
    concurrency: usize,
    pool: usize,
    db_max_connections: u32,
    compare_direct: bool,
    keep_running: bool,
}

fn parse_args() -> Result<Settings> {
    let mut s = Settings {
        sessions: 2000,
        concurrency: 500,
        pool: 10,
        db_max_connections: 100,
        compare_direct: true,
        keep_running: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<usize> {
            args.next()
                .with_context(|| format!("{name} needs a number"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--sessions" => s.sessions = num("--sessions")?.clamp(1, 100_000),
            "--concurrency" => s.concurrency = num("--concurrency")?.clamp(1, 5_000),
            "--pool" => s.pool = num("--pool")?.clamp(1, 500),
            "--no-direct" => s.compare_direct = false,
            "--exit" => s.keep_running = false,
            "-h" | "--help" => {
                println!(
                    "usage: sluice-demo [--sessions N] [--concurrency N] [--pool N] [--no-direct] [--exit]\n\
                     Starts a private MariaDB and Sluice in front of it, runs a burst of short client\n\
                     sessions through Sluice (and, for contrast, straight at the database), prints\n\
                     a summary, then keeps Sluice running until Ctrl-C (unless --exit)."
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}; try --help"),
        }
    }
    Ok(s)
}

/// What a burst of sessions did.
#[derive(Default)]
struct Outcome {
    ok: usize,
    /// Most connections the database saw from the app user at once.
    peak_server: usize,
    errors: Vec<String>,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

/// Runs `sessions` Lambda-like sessions against `addr`, `concurrency` at a time: connect, one
/// short transaction, disconnect.
async fn burst(
    addr: SocketAddr,
    user: &str,
    password: &str,
    s: &Settings,
    label: &str,
    db: &MariaDb,
) -> Outcome {
    let opts = sluice_testkit::client_opts(addr, user, password, Some("demo"));
    // Progress is sampled over one connection of the database's own, opened before the burst
    // can fill the server.
    let mut monitor = db.root_conn().await.ok();
    let gate = Arc::new(Semaphore::new(s.concurrency));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(s.sessions);
    for i in 0..s.sessions {
        let (gate, done, failed, opts) = (gate.clone(), done.clone(), failed.clone(), opts.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            let t = Instant::now();
            // A client that never gets an answer counts as failed, so the burst always ends.
            let r = match tokio::time::timeout(SESSION_LIMIT, session(opts, i)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {SESSION_LIMIT:?}")),
            };
            match &r {
                Ok(()) => done.fetch_add(1, Relaxed),
                Err(_) => failed.fetch_add(1, Relaxed),
            };
            r.map(|()| t.elapsed())
        }));
    }
    let tty = std::io::stdout().is_terminal();
    let mut peak_server = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_line = Instant::now();
    while done.load(Relaxed) + failed.load(Relaxed) < s.sessions as u64 {
        tick.tick().await;
        let server = match monitor.as_mut() {
            Some(m) => user_connections(m, user).await.unwrap_or(0),
            None => 0,
        };
        peak_server = peak_server.max(server);
        let line = format!(
            "  {label}: {:>6} done, {:>5} errors, {:>6.1}s, database sees {:>3} connections from {user}",
            done.load(Relaxed),
            failed.load(Relaxed),
            started.elapsed().as_secs_f64(),
            server
        );
        if tty {
            print!("\r{line}");
            let _ = std::io::stdout().flush();
        } else if last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            println!("{line}");
        }
    }
    if tty {
        println!();
    }
    let mut out = Outcome {
        elapsed: started.elapsed(),
        ..Default::default()
    };
    for t in tasks {
        match t.await {
            Ok(Ok(lat)) => {
                out.ok += 1;
                out.latencies.push(lat);
            }
            Ok(Err(e)) => out.errors.push(e),
            Err(e) => out.errors.push(e.to_string()),
        }
    }
    out.latencies.sort();
    out.peak_server = peak_server;
    println!("  {label}: peak connections the database saw from {user}: {peak_server}");
    out
}

async fn session(opts: OptsBuilder, i: usize) -> Result<(), mysql_async::Error> {
    let mut c = Conn::new(Opts::from(opts)).await?;
    c.query_drop("BEGIN").await?;
    c.query_drop(format!(
        "INSERT INTO events (session, note) VALUES ({i}, 'hello from session {i}')"
    ))
    .await?;
    let _: Option<i64> = c.query_first("SELECT COUNT(*) FROM events").await?;
    c.query_drop("COMMIT").await?;
    c.disconnect().await
}

async fn user_connections(root: &mut Conn, user: &str) -> Result<usize> {
    let n: Option<usize> = root
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?",
            (user,),
        )
        .await?;
    Ok(n.unwrap_or(0))
}

async fn server_status(db: &MariaDb, name: &str) -> Result<u64> {
    let mut root = db.root_conn().await?;
    let row: Option<(String, u64)> = root
        .exec_first("SHOW GLOBAL STATUS WHERE Variable_name = ?", (name,))
        .await?;
    root.disconnect().await?;
    Ok(row.map_or(0, |r| r.1))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(label: &str, o: &Outcome, new_server_connections: u64) {
    let rate = o.ok as f64 / o.elapsed.as_secs_f64().max(1e-9);
    println!("  {label}:");
    println!(
        "    sessions served      {:>8}  ({rate:.0} sessions/s)",
        o.ok
    );
    println!("    errors               {:>8}", o.errors.len());
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for e in &o.errors {
        match kinds.iter_mut().find(|(k, _)| k == e) {
            Some((_, n)) => *n += 1,
            None => kinds.push((e.clone(), 1)),
        }
    }
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    for (kind, n) in kinds.iter().take(3) {
        println!("      {n:>6} x {kind}");
    }
    println!(
        "    database connections {:>8}  (most open at once from the burst's user)",
        o.peak_server
    );
    println!(
        "    connections accepted {new_server_connections:>8}  (by the database during the burst; 2 are the demo's own monitoring)"
    );
    println!(
        "    session latency      p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&o.latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&o.latencies, 0.95).as_secs_f64() * 1e3,
        percentile(&o.latencies, 0.99).as_secs_f64() * 1e3,
        o.latencies
            .last()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3,
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let s = parse_args()?;
    // Thousands of sessions need thousands of file descriptors.
    sluice::server::raise_fd_limit().context("raising the open-file limit")?;
    println!(
        "Sluice demo: {} sessions, {} at a time, through a pool of {}",
        s.sessions, s.concurrency, s.pool
    );
    println!(
        "\n1. Starting a private MariaDB (max_connections = {}) ...",
        s.db_max_connections
    );
    let db = MariaDb::start_with(MariaDbOptions {
        max_connections: s.db_max_connections,
        ..Default::default()
    })?;
    db.sql("CREATE DATABASE demo; CREATE TABLE demo.events (id BIGINT AUTO_INCREMENT PRIMARY KEY, session INT, note VARCHAR(100), at TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6))")?;
    println!("   listening on {}", db.addr());

    println!(
        "\n2. Starting Sluice in front of it (backend.max_connections = {}) ...",
        s.pool
    );
    let mut opts = SluiceOptions::for_mariadb(&db);
    opts.max_connections = s.pool;
    let sluice = SluiceProcess::start(opts)?;
    println!("   listening on {} (pid {})", sluice.addr(), sluice.pid());

    println!(
        "\n3. A burst of Lambda-like sessions through Sluice (connect, short transaction, disconnect):"
    );
    let before = server_status(&db, "Connections").await?;
    let through = burst(
        sluice.addr(),
        "app",
        db.app_password(),
        &s,
        "through Sluice",
        &db,
    )
    .await;
    let opened_through = server_status(&db, "Connections").await? - before;

    let direct = if s.compare_direct {
        println!("\n4. The same burst straight at the database, for contrast:");
        let before = server_status(&db, "Connections").await?;
        // As the second user, so Sluice's idle pool (user app) is not counted with it.
        let d = burst(db.addr(), "other", db.other_password(), &s, "direct", &db).await;
        Some((d, server_status(&db, "Connections").await? - before))
    } else {
        None
    };

    println!("\nSummary");
    // The progress sampler's own root connections are counted by the server too.
    report("through Sluice", &through, opened_through);
    if let Some((d, opened)) = &direct {
        report("direct to MariaDB", d, *opened);
    }
    let rows = db.sql("SELECT COUNT(*) FROM demo.events")?;
    println!("  rows written: {}", rows.trim());

    if !s.keep_running {
        let status = sluice.stop();
        println!("\nSluice stopped ({status}).");
        anyhow::ensure!(
            through.errors.is_empty(),
            "{} sessions failed through Sluice",
            through.errors.len()
        );
        return Ok(());
    }
    println!("\nSluice keeps running. Connect with the mariadb client:");
    println!(
        "  mariadb --protocol=TCP -h {} -P {} -u app -p'{}' demo",
        sluice.addr().ip(),
        sluice.addr().port(),
        db.app_password()
    );
    println!("  for example:  SELECT session, note FROM events ORDER BY id DESC LIMIT 5;");
    println!("Press Ctrl-C to stop Sluice and the database.");
    tokio::signal::ctrl_c().await?;
    let status = sluice.stop();
    println!("\nSluice stopped ({status}); the database is removed.");
    Ok(())
}
