//! Load benchmark: sysbench `oltp_point_select` straight to MariaDB, through Sluice and through
//! HAProxy (a plain TCP forwarder), interleaved in one run so all three see the same machine;
//! then Sluice's resident memory per idle client connection.
//!
//! Run with `cargo bench --bench proxy`. Environment:
//! - `SLUICE_BENCH_SECONDS`: sysbench `--time` per run (default 5);
//! - `SLUICE_BENCH_ROUNDS`: runs per target and concurrency; the median is reported (default 2);
//! - `SLUICE_BENCH_WORKER_THREADS`: Sluice's `worker_threads` (default 0, one per CPU);
//! - `SLUICE_BENCH_HAPROXY_THREADS`: HAProxy's `nbthread` (default one per CPU, its own default).
//!
//! Figures go to stdout and, as Markdown, to `target/bench/proxy.md`.

use std::fmt::Write as _;
use std::fs::{self, DirBuilder, File};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sluice_testkit::idle::{self, IdleMemory};
use sluice_testkit::process::find_program;
use sluice_testkit::report::{env_number, median, write_markdown};
use sluice_testkit::sysbench::{Run, Sample, bench_server};
use sluice_testkit::{SluiceOptions, SluiceProcess, free_port, spawn_tied};

const INSTALL: &str = "apt-get install -y sysbench haproxy";
/// Client concurrencies measured, in this order.
const CLIENTS: [usize; 4] = [1, 8, 64, 512];
const TABLES: u32 = 4;
const TABLE_SIZE: u32 = 10_000;
/// Sluice's backend pool for the throughput runs and the memory run.
const SLUICE_POOL: usize = 16;
/// Idle clients held open through Sluice for the memory figure.
const IDLE_CLIENTS: usize = 5_000;
/// How long HAProxy may take to forward a first greeting, or to exit after SIGTERM.
const HAPROXY_DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

// Targets: printed next to the figures, never asserted (a benchmark reports, a test asserts).
const TARGET_RATIO_64: f64 = 0.6;
const TARGET_RATIO_512: f64 = 1.0;
const TARGET_ADDED_P50_US: f64 = 50.0;
const TARGET_KIB_PER_IDLE: f64 = 16.0;

fn main() -> Result<()> {
    // `cargo test --benches` runs this binary without `--bench`: a multi-minute load run has
    // no place there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("proxy bench: skipped (run it with `cargo bench --bench proxy`)");
        return Ok(());
    }
    let settings = Settings::from_env()?;
    let haproxy_bin = find_program("haproxy", INSTALL)?;
    let nofile = raise_nofile_limit()?;
    let started = Instant::now();

    let (db, sysbench) = bench_server(TABLES, TABLE_SIZE)?;
    let db_version = db.sql("SELECT VERSION()")?.trim().to_owned();
    let sluice_opts = SluiceOptions {
        max_connections: SLUICE_POOL,
        extra_toml: format!("worker_threads = {}", settings.worker_threads),
        users: vec![("app".to_owned(), db.app_password().to_owned())],
        ..SluiceOptions::for_mariadb(&db)
    };
    let mut sluice = SluiceProcess::start(sluice_opts.clone())?;
    let haproxy = HaProxy::start(&haproxy_bin, db.addr(), settings.haproxy_threads)?;

    let header = format!(
        "sysbench oltp_point_select, --db-ps-mode=disable (text protocol), {TABLES} tables x \
         {TABLE_SIZE} rows, {}s per run, median of {} round(s), target order rotated per round\n\
         MariaDB {db_version} (max_connections 1000); Sluice pool {SLUICE_POOL}, worker_threads \
         {} ({}); HAProxy mode tcp, nbthread {} ({}); {} CPU(s) shared by all; RLIMIT_NOFILE \
         {nofile}",
        settings.seconds,
        settings.rounds,
        settings.worker_threads,
        if settings.worker_threads == 0 {
            "one per CPU, the default"
        } else {
            "from SLUICE_BENCH_WORKER_THREADS"
        },
        settings.haproxy_threads,
        if settings.haproxy_threads == cpus() {
            "one per CPU, its default"
        } else {
            "from SLUICE_BENCH_HAPROXY_THREADS"
        },
        cpus(),
    );
    println!("{header}\n");

    let mut points = Vec::new();
    let mut failures = Vec::new();
    for (i, &clients) in CLIENTS.iter().enumerate() {
        let mut samples: [Vec<Sample>; 3] = Default::default();
        for round in 0..settings.rounds {
            let mut order = Target::ALL;
            // Offset by the concurrency as well, so every target goes first somewhere.
            order.rotate_left((round + i) % Target::ALL.len());
            for target in order {
                if target == Target::Sluice && !sluice.is_running() {
                    failures.push(format!(
                        "sluice was found exited before a {clients}-client run and was \
                         restarted; its log ended with:\n{}",
                        sluice.log_tail()
                    ));
                    sluice = SluiceProcess::start(sluice_opts.clone())?;
                }
                let addr = match target {
                    Target::Direct => db.addr(),
                    Target::Sluice => sluice.addr(),
                    Target::HaProxy => haproxy.addr,
                };
                eprint!(
                    "  {clients:>3} clients, round {}, {:<7} ",
                    round + 1,
                    target.name()
                );
                let run = Run {
                    workload: "oltp_point_select".to_owned(),
                    threads: clients,
                    seconds: settings.seconds,
                    prepared: false,
                    tls_dir: None,
                };
                match sysbench.run(addr, &run).and_then(clean) {
                    Ok(sample) => {
                        eprintln!(
                            "{:>9.0} q/s  p50 {:>6.0} µs  p99 {:>7.0} µs",
                            sample.qps, sample.p50_us, sample.p99_us
                        );
                        samples[target as usize].push(sample);
                    }
                    Err(e) => {
                        eprintln!("FAILED");
                        let mut failure = format!(
                            "{} at {clients} clients, round {}: {e:#}",
                            target.name(),
                            round + 1
                        );
                        if target == Target::Sluice {
                            let _ = write!(
                                failure,
                                "\nsluice {}; its log ends with:\n{}",
                                if sluice.is_running() {
                                    "is still running"
                                } else {
                                    "has exited"
                                },
                                sluice.log_tail()
                            );
                        }
                        failures.push(failure);
                    }
                }
            }
        }
        points.push(Point {
            clients,
            results: samples.map(|s| median_sample(&s)),
        });
    }
    drop(haproxy);
    let sluice_exit = sluice.stop();
    if !sluice_exit.success() {
        failures.push(format!(
            "the throughput Sluice exited with {sluice_exit} on SIGTERM"
        ));
    }

    eprintln!("  memory: {IDLE_CLIENTS} idle clients through a fresh Sluice");
    let memory = idle::measure(&db, sluice_opts.clone(), IDLE_CLIENTS, "app", |addr| {
        sluice_testkit::client_opts(addr, "app", db.app_password(), None).into()
    });
    let report = Report {
        header,
        points,
        memory,
        failures,
    };
    print!("\n{}", report.text());
    let markdown = report.markdown();
    let path = write_markdown("proxy", &markdown)?;
    println!(
        "\nMarkdown written to {}; total {:.0} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Knobs read from the environment.
struct Settings {
    seconds: u32,
    rounds: usize,
    /// Sluice's `worker_threads`; 0 is one per CPU.
    worker_threads: usize,
    /// HAProxy's `nbthread`.
    haproxy_threads: usize,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        Ok(Settings {
            seconds: env_number("SLUICE_BENCH_SECONDS", 5, 1)?,
            rounds: env_number("SLUICE_BENCH_ROUNDS", 2, 1)?,
            // Measured side by side on 2 cores: one thread per CPU matched `worker_threads = 1`
            // at 1 and 8 clients and beat it at 64 and 512.
            worker_threads: env_number("SLUICE_BENCH_WORKER_THREADS", 0, 0)?,
            // Measured side by side on 2 cores: nbthread 2 beat 1 at 64 and 512 clients and
            // tied at 1 and 8, so HAProxy gets its best figure with its own default.
            haproxy_threads: env_number("SLUICE_BENCH_HAPROXY_THREADS", cpus(), 1)?,
        })
    }
}

fn cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Raises this process's soft RLIMIT_NOFILE to the hard limit (children inherit it); returns it.
fn raise_nofile_limit() -> Result<u64> {
    let limit = sluice::server::raise_fd_limit().context("raising RLIMIT_NOFILE")?;
    let needed = (IDLE_CLIENTS + 1000) as u64;
    if limit < needed {
        bail!(
            "RLIMIT_NOFILE hard limit is {limit}, below the {needed} file descriptors {IDLE_CLIENTS} \
             idle clients need; raise it (ulimit -Hn)"
        );
    }
    Ok(limit)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct = 0,
    Sluice = 1,
    HaProxy = 2,
}

impl Target {
    const ALL: [Target; 3] = [Target::Direct, Target::Sluice, Target::HaProxy];

    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Sluice => "sluice",
            Target::HaProxy => "haproxy",
        }
    }
}

/// Medians over the rounds, per target, at one concurrency.
struct Point {
    clients: usize,
    /// Indexed by `Target as usize`; `None` when every run of that target failed.
    results: [Option<Sample>; 3],
}

/// Each figure's median separately (the median run by q/s need not hold the median p99).
fn median_sample(samples: &[Sample]) -> Option<Sample> {
    let pick = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    Some(Sample {
        qps: pick(|s| s.qps)?,
        tps: pick(|s| s.tps)?,
        p50_us: pick(|s| s.p50_us)?,
        p99_us: pick(|s| s.p99_us)?,
        ignored_errors: 0,
        reconnects: 0,
    })
}

/// sysbench carries on past the errors it ignores (deadlocks and the like) and past
/// reconnects; neither should happen on point selects, so either spoils the run.
fn clean(s: Sample) -> Result<Sample> {
    if s.ignored_errors > 0 || s.reconnects > 0 {
        bail!(
            "sysbench counted {} ignored errors and {} reconnects",
            s.ignored_errors,
            s.reconnects
        );
    }
    Ok(s)
}

/// HAProxy as a plain TCP forwarder in front of `backend`; stopped and cleaned up on drop.
struct HaProxy {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
}

impl HaProxy {
    fn start(binary: &Path, backend: SocketAddr, threads: usize) -> Result<HaProxy> {
        let dir = std::env::temp_dir().join(format!("sluice-bench-haproxy-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut proxy = HaProxy {
            child: None,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            dir,
        };
        // free_port can race with another process: try a few ports.
        for _ in 0..5 {
            proxy.addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            if proxy.launch(binary, backend, threads)? {
                return Ok(proxy);
            }
        }
        bail!("haproxy found its port taken 5 times in a row")
    }

    /// Starts HAProxy on `self.addr`; false if the port was taken.
    fn launch(&mut self, binary: &Path, backend: SocketAddr, threads: usize) -> Result<bool> {
        let config = self.dir.join("haproxy.cfg");
        fs::write(&config, haproxy_config(self.addr, backend, threads))
            .with_context(|| format!("cannot write {}", config.display()))?;
        let log_path = self.dir.join("haproxy.log");
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut cmd = Command::new(binary);
        // -db: stay in the foreground, so the child is HAProxy itself.
        cmd.arg("-db").arg("-f").arg(&config);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot duplicate the log file")?)
            .stderr(log);
        let mut child = spawn_tied(cmd)?;
        let deadline = Instant::now() + HAPROXY_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().context("cannot poll haproxy")? {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                if log.contains("cannot bind socket") {
                    return Ok(false);
                }
                bail!("haproxy exited during start-up ({status}):\n{log}");
            }
            // The greeting comes from MariaDB, through HAProxy.
            if greets(self.addr) {
                self.child = Some(child);
                return Ok(true);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "haproxy did not forward a greeting on {} within {HAPROXY_DEADLINE:?}:\n{}",
                    self.addr,
                    fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + HAPROXY_DEADLINE;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(POLL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn haproxy_config(listen: SocketAddr, backend: SocketAddr, threads: usize) -> String {
    // maxconn well above the 512 clients; its file descriptor needs (about twice that) fit
    // in the raised limit.
    format!(
        "global\n\
         \x20   maxconn 4096\n\
         \x20   nbthread {threads}\n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 10m\n\
         \x20   timeout server 10m\n\
         listen mysql\n\
         \x20   bind {listen}\n\
         \x20   server db {backend} maxconn 4096\n"
    )
}

/// Whether a server on `addr` sends a MySQL greeting (first payload byte 10).
fn greets(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut first = [0u8; 5];
    stream.read_exact(&mut first).is_ok() && first[4] == 10
}

/// Everything measured, rendered as text and as Markdown.
struct Report {
    header: String,
    points: Vec<Point>,
    memory: Result<IdleMemory>,
    failures: Vec<String>,
}

/// One row per target.
struct Row {
    target: Target,
    sample: Option<Sample>,
    ratio: Option<f64>,
}

impl Row {
    /// target, q/s, p50 µs, p99 µs, ratio to direct: as both the text and Markdown tables show them.
    fn cells(&self) -> [String; 5] {
        let s = self.sample;
        [
            self.target.name().to_owned(),
            fmt_opt(s, |s| format!("{:.0}", s.qps)),
            fmt_opt(s, |s| format!("{:.0}", s.p50_us)),
            fmt_opt(s, |s| format!("{:.0}", s.p99_us)),
            fmt_opt(self.ratio, |r| format!("{r:.2}")),
        ]
    }
}

impl Report {
    fn rows(point: &Point) -> Vec<Row> {
        let direct = point.results[Target::Direct as usize];
        Target::ALL
            .iter()
            .map(|&target| {
                let sample = point.results[target as usize];
                let ratio = match (sample, direct) {
                    (Some(s), Some(d)) if d.qps > 0.0 => Some(s.qps / d.qps),
                    _ => None,
                };
                Row {
                    target,
                    sample,
                    ratio,
                }
            })
            .collect()
    }

    fn point(&self, clients: usize) -> Option<&Point> {
        self.points.iter().find(|p| p.clients == clients)
    }

    fn ratio(&self, clients: usize, target: Target) -> Option<f64> {
        Self::rows(self.point(clients)?)
            .into_iter()
            .find(|r| r.target == target)?
            .ratio
    }

    /// Added p50 latency of `target` over direct at one client, in µs.
    fn added_p50(&self, target: Target) -> Option<f64> {
        let point = self.point(1)?;
        Some(
            point.results[target as usize]?.p50_us - point.results[Target::Direct as usize]?.p50_us,
        )
    }

    /// Added p50 latency at 1 client of Sluice and HAProxy over direct, formatted.
    fn added_p50_cells(&self) -> [String; 2] {
        [Target::Sluice, Target::HaProxy]
            .map(|t| fmt_opt(self.added_p50(t), |a| format!("{a:.0} µs")))
    }

    /// (description, figure, met) for each target.
    fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        let ratio_64 = self.ratio(64, Target::Sluice);
        let ratio_512 = self.ratio(512, Target::Sluice);
        let added = self.added_p50(Target::Sluice);
        let per_idle = self.memory.as_ref().ok().map(IdleMemory::kib_per_client);
        vec![
            (
                format!("Sluice/direct q/s at 64 clients >= {TARGET_RATIO_64}"),
                fmt_opt(ratio_64, |r| format!("{r:.2}")),
                ratio_64.map(|r| r >= TARGET_RATIO_64),
            ),
            (
                format!("Sluice/direct q/s at 512 clients >= {TARGET_RATIO_512}"),
                fmt_opt(ratio_512, |r| format!("{r:.2}")),
                ratio_512.map(|r| r >= TARGET_RATIO_512),
            ),
            (
                format!("added p50 latency at 1 client <= {TARGET_ADDED_P50_US} µs"),
                fmt_opt(added, |a| format!("{a:.0} µs")),
                added.map(|a| a <= TARGET_ADDED_P50_US),
            ),
            (
                format!("resident memory per idle client <= {TARGET_KIB_PER_IDLE} KiB"),
                fmt_opt(per_idle, |k| format!("{k:.1} KiB")),
                per_idle.map(|k| k <= TARGET_KIB_PER_IDLE),
            ),
        ]
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for point in &self.points {
            let _ = writeln!(out, "{}", clients_label(point.clients));
            let _ = writeln!(
                out,
                "  {:<8} {:>10} {:>9} {:>9} {:>10}",
                "target", "q/s", "p50 µs", "p99 µs", "vs direct"
            );
            for row in Self::rows(point) {
                let [target, qps, p50, p99, ratio] = row.cells();
                let _ = writeln!(out, "  {target:<8} {qps:>10} {p50:>9} {p99:>9} {ratio:>10}");
            }
            if point.clients == 1 {
                let [sluice, haproxy] = self.added_p50_cells();
                let _ = writeln!(
                    out,
                    "  added p50 over direct: sluice {sluice}, haproxy {haproxy}"
                );
            }
            out.push('\n');
        }
        match &self.memory {
            Ok(m) => {
                let _ = writeln!(
                    out,
                    "Idle clients: {IDLE_CLIENTS} logged in through Sluice (pool {SLUICE_POOL}) \
                     in {:.1} s ({} open file descriptors in Sluice): RSS {} KiB -> {} KiB, \
                     {:.1} KiB per idle client; MariaDB saw {} backend connection(s) from Sluice \
                     meanwhile\n",
                    m.login_seconds,
                    m.fds_while_idle,
                    m.rss_before_kib,
                    m.rss_after_kib,
                    m.kib_per_client(),
                    m.backends_while_idle
                );
            }
            Err(e) => {
                let _ = writeln!(out, "Idle clients: FAILED: {e:#}\n");
            }
        }
        let _ = writeln!(out, "Targets (reported, not asserted):");
        for (what, figure, met) in self.targets() {
            let _ = writeln!(out, "  {what:<50} {figure:>10}  {}", verdict(met));
        }
        if !self.failures.is_empty() {
            let _ = writeln!(out, "\nFailures:");
            for failure in &self.failures {
                let _ = writeln!(out, "- {failure}");
            }
        }
        out
    }

    fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}\n", self.header.replace('\n', "  \n"));
        for point in &self.points {
            let _ = writeln!(out, "**{}**\n", clients_label(point.clients));
            let _ = writeln!(
                out,
                "| target | q/s | p50 (µs) | p99 (µs) | q/s vs direct |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|");
            for row in Self::rows(point) {
                let _ = writeln!(out, "| {} |", row.cells().join(" | "));
            }
            if point.clients == 1 {
                let [sluice, haproxy] = self.added_p50_cells();
                let _ = writeln!(
                    out,
                    "\nAdded p50 latency over direct: Sluice {sluice}, HAProxy {haproxy}."
                );
            }
            out.push('\n');
        }
        match &self.memory {
            Ok(m) => {
                let _ = writeln!(
                    out,
                    "**Idle clients**: {IDLE_CLIENTS} logged in through Sluice (pool \
                     {SLUICE_POOL}): RSS {} KiB -> {} KiB, **{:.1} KiB per idle client**; \
                     {} backend connection(s) meanwhile.\n",
                    m.rss_before_kib,
                    m.rss_after_kib,
                    m.kib_per_client(),
                    m.backends_while_idle
                );
            }
            Err(e) => {
                let _ = writeln!(out, "**Idle clients**: failed: {e:#}\n");
            }
        }
        let _ = writeln!(out, "| target | measured | result |");
        let _ = writeln!(out, "|---|---:|---|");
        for (what, figure, met) in self.targets() {
            let _ = writeln!(out, "| {what} | {figure} | {} |", verdict(met));
        }
        if !self.failures.is_empty() {
            let _ = writeln!(
                out,
                "\n{} run(s) failed; see the bench output.",
                self.failures.len()
            );
        }
        out
    }
}

fn clients_label(clients: usize) -> String {
    if clients == 1 {
        "1 client".to_owned()
    } else {
        format!("{clients} clients")
    }
}

fn fmt_opt<T: Copy>(value: Option<T>, f: impl Fn(T) -> String) -> String {
    value.map_or_else(|| "failed".to_owned(), f)
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "missed",
        None => "not measured",
    }
}
