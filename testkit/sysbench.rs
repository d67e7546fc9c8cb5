use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::process::{find_program, output_with_timeout};

const INSTALL: &str = "apt-get install -y sysbench";
/// Beyond `--time`: connecting hundreds of clients, sysbench's start-up and its report.
const SLACK: Duration = Duration::from_secs(120);

/// One sysbench run's figures.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub qps: f64,
    /// Transactions per second (one event of the workload each).
    pub tps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Errors sysbench ignored and carried on past (deadlocks and the like).
    pub ignored_errors: u64,
    pub reconnects: u64,
}

/// One run: which workload, how many threads, for how long.
#[derive(Debug, Clone)]
pub struct Run {
    /// A bundled workload (`oltp_point_select`) or the path of a Lua script.
    pub workload: String,
    pub threads: usize,
    pub seconds: u32,
    /// Server-side prepared statements (sysbench's default) or the text protocol.
    pub prepared: bool,
    /// TLS (`--mysql-ssl=on`), run in this directory, which holds the files sysbench reads
    /// (see [`crate::Pki`]); `None` for plain TCP.
    pub tls_dir: Option<PathBuf>,
}

/// sysbench as user `app` on the `sbtest` schema, with its tables of a fixed shape.
#[derive(Debug, Clone)]
pub struct Sysbench {
    path: PathBuf,
    password: String,
    /// The schema sysbench works in (`sbtest` unless changed).
    pub schema: String,
    pub tables: u32,
    pub table_size: u32,
}

impl Sysbench {
    /// Finds sysbench (or says how to install it).
    pub fn new(password: &str, tables: u32, table_size: u32) -> Result<Sysbench> {
        Ok(Sysbench {
            path: find_program("sysbench", INSTALL)?,
            password: password.to_owned(),
            schema: "sbtest".to_owned(),
            tables,
            table_size,
        })
    }

    /// The options every invocation shares, as user `app` on `addr`.
    fn command(&self, workload: &str, addr: SocketAddr) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg(workload)
            .arg("--db-driver=mysql")
            .arg(format!("--mysql-host={}", addr.ip()))
            .arg(format!("--mysql-port={}", addr.port()))
            .arg("--mysql-user=app")
            // A random password of a private, loopback-only sandbox.
            .arg(format!("--mysql-password={}", self.password))
            .arg(format!("--mysql-db={}", self.schema))
            .arg("--mysql-ssl=off")
            .arg(format!("--tables={}", self.tables))
            .arg(format!("--table-size={}", self.table_size));
        cmd
    }

    /// Creates and fills the tables in the schema (which must exist).
    pub fn prepare(&self, addr: SocketAddr) -> Result<()> {
        let mut cmd = self.command("oltp_read_write", addr);
        cmd.arg("prepare");
        let out = output_with_timeout(cmd, None, Duration::from_secs(300))?;
        if !out.status.success() {
            bail!(
                "sysbench prepare failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Runs a workload against `addr` and reads its figures.
    pub fn run(&self, addr: SocketAddr, run: &Run) -> Result<Sample> {
        let mut cmd = self.command(&run.workload, addr);
        cmd.arg(format!(
            "--db-ps-mode={}",
            if run.prepared { "auto" } else { "disable" }
        ))
        .arg(format!("--threads={}", run.threads))
        .arg(format!("--time={}", run.seconds))
        .arg("--histogram=on")
        .arg("--report-interval=0");
        if let Some(dir) = &run.tls_dir {
            cmd.arg("--mysql-ssl=on").current_dir(dir);
        }
        cmd.arg("run");
        let timeout = Duration::from_secs(run.seconds.into()) + SLACK;
        let out = output_with_timeout(cmd, None, timeout)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "sysbench exited with {}:\n{}{}",
                out.status,
                tail(&stdout, 15),
                tail(&String::from_utf8_lossy(&out.stderr), 15)
            );
        }
        parse_run(&stdout).with_context(|| format!("unexpected sysbench output:\n{stdout}"))
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}

/// "    queries:                             123456 (24680.12 per sec.)": the rate.
fn per_second(stdout: &str, label: &str) -> Result<f64> {
    stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| {
            rest.split_once('(')?
                .1
                .split_once(" per sec.")?
                .0
                .parse()
                .ok()
        })
        .with_context(|| format!("no `{label} N (X per sec.)` line"))
}

/// "    ignored errors:                      0      (0.00 per sec.)": the count.
fn count(stdout: &str, label: &str) -> Result<u64> {
    stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no `{label}` line"))
}

/// Rates and counters from the summary, p50 and p99 from the latency histogram.
fn parse_run(stdout: &str) -> Result<Sample> {
    let histogram = parse_histogram(stdout)?;
    Ok(Sample {
        qps: per_second(stdout, "queries:")?,
        tps: per_second(stdout, "transactions:")?,
        p50_us: percentile(&histogram, 0.50)? * 1000.0,
        p99_us: percentile(&histogram, 0.99)? * 1000.0,
        ignored_errors: count(stdout, "ignored errors:")?,
        reconnects: count(stdout, "reconnects:")?,
    })
}

/// The (bucket value in ms, count) lines that follow "Latency histogram", in rising order:
/// "       0.087 |**********                               1234".
fn parse_histogram(stdout: &str) -> Result<Vec<(f64, u64)>> {
    let start = stdout
        .find("Latency histogram")
        .context("no latency histogram (--histogram=on)")?;
    let buckets: Vec<(f64, u64)> = stdout[start..]
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (value, rest) = line.split_once('|')?;
            let value = value.trim().parse().ok()?;
            let count = rest.split_whitespace().last()?.parse().ok()?;
            Some((value, count))
        })
        .collect();
    if buckets.is_empty() {
        bail!("the latency histogram has no buckets");
    }
    Ok(buckets)
}

/// The smallest bucket value at or below which `q` of all events fall.
fn percentile(buckets: &[(f64, u64)], q: f64) -> Result<f64> {
    let total: u64 = buckets.iter().map(|(_, n)| n).sum();
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for &(value, count) in buckets {
        seen += count;
        if seen >= rank {
            return Ok(value);
        }
    }
    Err(anyhow!("empty latency histogram"))
}

/// A private MariaDB sized for benchmarks (max_connections 1000, full-size buffers) with
/// sysbench's `sbtest` schema and tables prepared.
pub fn bench_server(tables: u32, table_size: u32) -> Result<(crate::MariaDb, Sysbench)> {
    let db = crate::MariaDb::start_with(crate::MariaDbOptions {
        max_connections: 1000,
        small_memory: false,
        ..crate::MariaDbOptions::default()
    })?;
    db.sql("CREATE DATABASE sbtest")?;
    let sysbench = Sysbench::new(db.app_password(), tables, table_size)?;
    sysbench.prepare(db.addr())?;
    Ok((db, sysbench))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_summary() {
        let out = "\
SQL statistics:
    queries performed:
    transactions:                        100    (20.00 per sec.)
    queries:                             2000   (400.50 per sec.)
    ignored errors:                      3      (0.60 per sec.)
    reconnects:                          0      (0.00 per sec.)
Latency histogram (values are in milliseconds)
       value  ------------- distribution ------------- count
       0.100 |****                                     10
       0.200 |****************************************  80
       0.900 |*                                        10
";
        let s = parse_run(out).unwrap();
        assert_eq!(
            (s.qps, s.tps, s.ignored_errors, s.reconnects),
            (400.5, 20.0, 3, 0)
        );
        assert_eq!((s.p50_us, s.p99_us), (200.0, 900.0));
    }
}
