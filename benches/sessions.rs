//! Session-state benchmark: sysbench `oltp_read_write` with server-side prepared statements and
//! the SETs applications send at connect (`benches/sysbench/oltp_read_write_sets.lua`), 64
//! clients, straight to MariaDB, through Sluice with a pool of 64, and through Sluice with a
//! pool of 8; interleaved in one run. Reports throughput, the backend connections the server
//! saw, and how often statements were prepared on the server.
//!
//! Run with `cargo bench --bench sessions`. Environment: `SLUICE_BENCH_SECONDS` (default 10)
//! and `SLUICE_BENCH_ROUNDS` (default 3). Figures go to stdout and to
//! `target/bench/sessions.md`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mysql_async::prelude::Queryable;
use sluice_testkit::report::{env_number, median, write_markdown};
use sluice_testkit::sysbench::{Run, Sample, Sysbench, bench_server};
use sluice_testkit::{MariaDb, SluiceOptions, SluiceProcess};

const CLIENTS: usize = 64;
const TABLES: u32 = 8;
const TABLE_SIZE: u32 = 10_000;
const SMALL_POOL: usize = 8;
/// How often the server's connection count is sampled during a run.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Target: pool 8 reaches this share of pool 64's throughput (printed, not asserted).
const TARGET_SMALL_POOL_RATIO: f64 = 0.8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    Pool64,
    Pool8,
}

impl Target {
    const ALL: [Target; 3] = [Target::Direct, Target::Pool64, Target::Pool8];

    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Pool64 => "sluice, pool 64",
            Target::Pool8 => "sluice, pool 8",
        }
    }
}

/// One run's figures.
#[derive(Clone, Copy)]
struct Measured {
    sample: Sample,
    /// Most connections of user `app` the server saw at once.
    peak_connections: u64,
    /// COM_STMT_PREPARE and COM_STMT_EXECUTE the server counted.
    prepares: u64,
    executes: u64,
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("sessions bench: skipped (run it with `cargo bench --bench sessions`)");
        return Ok(());
    }
    let seconds: u32 = env_number("SLUICE_BENCH_SECONDS", 10, 1)?;
    let rounds: usize = env_number("SLUICE_BENCH_ROUNDS", 3, 1)?;
    let started = Instant::now();
    let (db, sysbench) = bench_server(TABLES, TABLE_SIZE)?;
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sysbench/oltp_read_write_sets.lua");
    let run = Run {
        workload: script.display().to_string(),
        threads: CLIENTS,
        seconds,
        prepared: true,
        tls_dir: None,
    };
    let proxy = |pool: usize| {
        SluiceProcess::start(SluiceOptions {
            max_connections: pool,
            users: vec![("app".to_owned(), db.app_password().to_owned())],
            ..SluiceOptions::for_mariadb(&db)
        })
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let header = format!(
        "sysbench oltp_read_write with server-side prepared statements and connect-time SETs \
         (SET NAMES, sql_mode, time_zone, isolation level, autocommit), {CLIENTS} clients, \
         {TABLES} tables x {TABLE_SIZE} rows, {seconds}s per run, median of {rounds} round(s), \
         order rotated per round; MariaDB {}",
        db.sql("SELECT VERSION()")?.trim()
    );
    println!("{header}\n");
    let mut results: [Vec<Measured>; 3] = Default::default();
    let mut failures = Vec::new();
    for round in 0..rounds {
        let mut order = Target::ALL;
        order.rotate_left(round % Target::ALL.len());
        for target in order {
            // A fresh proxy per run: its pool starts empty, and no other proxy's idle
            // connections count as this one's.
            let sluice = match target {
                Target::Direct => None,
                Target::Pool64 => Some(proxy(CLIENTS)?),
                Target::Pool8 => Some(proxy(SMALL_POOL)?),
            };
            let addr = sluice.as_ref().map_or(db.addr(), SluiceProcess::addr);
            eprint!("  round {}, {:<16}", round + 1, target.name());
            match runtime.block_on(measure(&db, &sysbench, addr, &run)) {
                Ok(m) => {
                    eprintln!(
                        "{:>8.0} q/s {:>6.0} tx/s  {:>3} connections  {} prepares / {} executes",
                        m.sample.qps, m.sample.tps, m.peak_connections, m.prepares, m.executes
                    );
                    results[target as usize].push(m);
                }
                Err(e) => {
                    eprintln!("FAILED");
                    failures.push(format!("{} in round {}: {e:#}", target.name(), round + 1));
                }
            }
            if let Some(s) = sluice {
                let status = s.stop();
                if !status.success() {
                    failures.push(format!("{} exited with {status} on SIGTERM", target.name()));
                }
            }
        }
    }
    let markdown = report(&header, &results, &failures);
    print!("\n{markdown}");
    let path = write_markdown("sessions", &markdown)?;
    println!(
        "\nMarkdown written to {}; total {:.0} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        bail!("{} run(s) failed", failures.len());
    }
    Ok(())
}

/// One sysbench run with the server's counters read around it and its connections sampled.
async fn measure(
    db: &MariaDb,
    sysbench: &Sysbench,
    addr: SocketAddr,
    run: &Run,
) -> Result<Measured> {
    let mut root = db.root_conn().await?;
    let before = statement_counters(&mut root).await?;
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        let mut conn = db.root_conn().await?;
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let n: Option<u64> = conn
                    .query_first(
                        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'app'",
                    )
                    .await
                    .ok()
                    .flatten();
                peak.fetch_max(n.unwrap_or(0), Ordering::Relaxed);
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };
    let (bench, run) = (sysbench.clone(), run.clone());
    let sample = tokio::task::spawn_blocking(move || bench.run(addr, &run)).await?;
    done.store(true, Ordering::Relaxed);
    sampler.await?;
    let sample = sample?;
    // Deadlocks between the workload's own transactions are sysbench's "ignored errors" (it
    // retries them); they are reported, not failures. A reconnect means a broken session.
    if sample.reconnects > 0 {
        bail!("sysbench counted {} reconnects", sample.reconnects);
    }
    let after = statement_counters(&mut root).await?;
    Ok(Measured {
        sample,
        peak_connections: peak.load(Ordering::Relaxed),
        prepares: after.0 - before.0,
        executes: after.1 - before.1,
    })
}

async fn statement_counters(root: &mut mysql_async::Conn) -> Result<(u64, u64)> {
    let rows: Vec<(String, u64)> = root
        .query("SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_stmt_prepare', 'Com_stmt_execute')")
        .await?;
    let get = |name: &str| {
        rows.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .with_context(|| format!("no {name} status"))
    };
    Ok((get("Com_stmt_prepare")?, get("Com_stmt_execute")?))
}

fn report(header: &str, results: &[Vec<Measured>; 3], failures: &[String]) -> String {
    let qps = |t: Target| median(results[t as usize].iter().map(|m| m.sample.qps).collect());
    let mut out = format!("{header}\n\n");
    out.push_str("| target | q/s | tx/s | p99 ms | ratio to direct | server connections (peak) | prepares per 1000 executes | deadlocks retried |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for t in Target::ALL {
        let runs = &results[t as usize];
        let cell =
            |v: Option<f64>, prec: usize| v.map_or("-".to_owned(), |v| format!("{v:.prec$}"));
        let tps = median(runs.iter().map(|m| m.sample.tps).collect());
        let p99 = median(runs.iter().map(|m| m.sample.p99_us / 1000.0).collect());
        let conns = median(runs.iter().map(|m| m.peak_connections as f64).collect());
        let prep = median(
            runs.iter()
                .filter(|m| m.executes > 0)
                .map(|m| 1000.0 * m.prepares as f64 / m.executes as f64)
                .collect(),
        );
        let deadlocks: u64 = runs.iter().map(|m| m.sample.ignored_errors).sum();
        let ratio = match (qps(t), qps(Target::Direct)) {
            (Some(a), Some(d)) if d > 0.0 => Some(a / d),
            _ => None,
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {deadlocks} |",
            t.name(),
            cell(qps(t), 0),
            cell(tps, 0),
            cell(p99, 1),
            cell(ratio, 2),
            cell(conns, 0),
            cell(prep, 2)
        );
    }
    let small = match (qps(Target::Pool8), qps(Target::Pool64)) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let _ = writeln!(
        out,
        "\nPool 8 / pool 64 throughput: {} (target >= {TARGET_SMALL_POOL_RATIO}: {})",
        small.map_or("-".to_owned(), |r| format!("{r:.2}")),
        match small {
            Some(r) if r >= TARGET_SMALL_POOL_RATIO => "met",
            Some(_) => "missed",
            None => "not measured",
        }
    );
    for f in failures {
        let _ = writeln!(out, "\nFAILED: {f}");
    }
    out
}
