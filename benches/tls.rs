//! What client TLS costs: two Sluice processes in front of one MariaDB, one without TLS and one
//! with `tls.mode = "required"`, measured interleaved in one run with sysbench (libmariadb's
//! TLS on the client side, rustls with aws-lc-rs in Sluice):
//! - steady throughput: `oltp_point_select`, 64 clients, text protocol;
//! - client sessions set up per second: connect, log in, one query, close
//!   (`benches/sysbench/connect_query.lua`), 8 clients;
//! - resident memory per idle client, each through a fresh Sluice (mysql_async clients, rustls).
//!
//! Run with `cargo bench --bench tls`. Environment: `SLUICE_BENCH_SECONDS` (default 10) and
//! `SLUICE_BENCH_ROUNDS` (default 3). Figures go to stdout and to `target/bench/tls.md`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Result, bail};
use mysql_async::SslOpts;
use sluice_testkit::idle;
use sluice_testkit::process::cpu_seconds;
use sluice_testkit::report::{env_number, median, write_markdown};
use sluice_testkit::sysbench::{Run, Sample, bench_server};
use sluice_testkit::{Pki, SluiceOptions, SluiceProcess, client_opts};

const CLIENTS: usize = 64;
const SETUP_CLIENTS: usize = 8;
const TABLES: u32 = 4;
const TABLE_SIZE: u32 = 10_000;
const SLUICE_POOL: usize = 16;
/// Idle clients held open for the memory figure, with and without TLS.
const IDLE_CLIENTS: usize = 2_000;
/// Target: TLS keeps at least this share of plain throughput (printed, not asserted).
const TARGET_TLS_SHARE: f64 = 0.85;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    PointSelect,
    Sessions,
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("tls bench: skipped (run it with `cargo bench --bench tls`)");
        return Ok(());
    }
    let seconds: u32 = env_number("SLUICE_BENCH_SECONDS", 10, 1)?;
    let rounds: usize = env_number("SLUICE_BENCH_ROUNDS", 3, 1)?;
    let (db, sysbench) = bench_server(TABLES, TABLE_SIZE)?;
    let pki = Pki::generate()?;
    let base = SluiceOptions {
        max_connections: SLUICE_POOL,
        users: vec![("app".to_owned(), db.app_password().to_owned())],
        ..SluiceOptions::for_mariadb(&db)
    };
    let tls_options = SluiceOptions {
        extra_toml: format!(
            "[tls]\nmode = \"required\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            pki.path("server.pem").display(),
            pki.path("server-key.pem").display()
        ),
        ..base.clone()
    };
    let mut plain = SluiceProcess::start(base.clone())?;
    let mut tls = SluiceProcess::start(tls_options.clone())?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sysbench/connect_query.lua");

    // [load][tls as usize]
    let mut samples: [[Vec<Sample>; 2]; 2] = Default::default();
    // Sluice's own CPU time per event (microseconds), [load][tls as usize].
    let mut cpu_per_event: [[Vec<f64>; 2]; 2] = Default::default();
    for round in 0..rounds {
        for (li, load) in [Load::PointSelect, Load::Sessions].into_iter().enumerate() {
            let mut order = [false, true];
            order.rotate_left(round % 2);
            for with_tls in order {
                let run = Run {
                    workload: match load {
                        Load::PointSelect => "oltp_point_select".to_owned(),
                        Load::Sessions => script.display().to_string(),
                    },
                    threads: if load == Load::PointSelect {
                        CLIENTS
                    } else {
                        SETUP_CLIENTS
                    },
                    seconds,
                    prepared: false,
                    tls_dir: with_tls.then(|| pki.dir().to_path_buf()),
                };
                let (addr, pid) = if with_tls {
                    (tls.addr(), tls.pid())
                } else {
                    (plain.addr(), plain.pid())
                };
                let cpu_before = cpu_seconds(pid)?;
                let s = sysbench.run(addr, &run)?;
                let cpu = cpu_seconds(pid)? - cpu_before;
                let events = s.tps * f64::from(seconds);
                if events > 0.0 {
                    cpu_per_event[li][usize::from(with_tls)].push(cpu / events * 1e6);
                }
                if s.ignored_errors > 0 || s.reconnects > 0 {
                    bail!("sysbench counted errors or reconnects: spoiled run");
                }
                eprintln!(
                    "  round {} {} {}: {:.0} q/s, {:.0} events/s, p50 {:.0} us, p99 {:.0} us",
                    round + 1,
                    if load == Load::PointSelect {
                        "point select"
                    } else {
                        "sessions"
                    },
                    if with_tls { "TLS  " } else { "plain" },
                    s.qps,
                    s.tps,
                    s.p50_us,
                    s.p99_us
                );
                samples[li][usize::from(with_tls)].push(s);
            }
        }
    }
    for p in [&mut plain, &mut tls] {
        if !p.is_running() {
            bail!("a Sluice process exited during the run:\n{}", p.log_tail());
        }
    }
    drop((plain, tls));

    eprintln!("  memory: {IDLE_CLIENTS} idle clients through a fresh Sluice, plain then TLS");
    let password = db.app_password().to_owned();
    let plain_idle = idle::measure(&db, base, IDLE_CLIENTS, "app", |addr| {
        client_opts(addr, "app", &password, None).into()
    })?;
    let ca = pki.path("ca.pem");
    let tls_idle = idle::measure(&db, tls_options, IDLE_CLIENTS, "app", |addr| {
        client_opts(addr, "app", &password, None)
            .ssl_opts(SslOpts::default().with_root_certs(vec![ca.into()]))
            .into()
    })?;

    let pick = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    let mut md = format!(
        "## Client TLS (cargo bench --bench tls)\n\nsysbench against two Sluice processes (pool \
         {SLUICE_POOL}) in front of one MariaDB: one without TLS, one with `tls.mode = \
         \"required\"` (rustls, aws-lc-rs; sysbench's libmariadb on the client side). \
         {seconds}s per run, median of {rounds} round(s), order alternated.\n\n\
         | load | plain | TLS | TLS / plain |\n|---|---|---|---|\n"
    );
    let mut verdicts = String::new();
    for (li, (name, unit, f)) in [
        (
            "oltp_point_select, 64 clients",
            "q/s",
            (|s: &Sample| s.qps) as fn(&Sample) -> f64,
        ),
        (
            "sessions (connect, login, 1 query, close), 8 clients",
            "sessions/s",
            |s: &Sample| s.tps,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let (Some(p), Some(t)) = (pick(&samples[li][0], f), pick(&samples[li][1], f)) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {name} | {p:.0} {unit} | {t:.0} {unit} | {:.2} |",
            t / p
        );
        let cpu = |i: usize| median(cpu_per_event[li][i].clone()).unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "| Sluice CPU per {} | {:.0} us | {:.0} us | {:.2} |",
            if li == 0 { "query" } else { "session" },
            cpu(0),
            cpu(1),
            cpu(1) / cpu(0)
        );
        if li == 0 {
            let p50 = |i: usize| pick(&samples[0][i], |s| s.p50_us).unwrap_or(f64::NAN);
            let p99 = |i: usize| pick(&samples[0][i], |s| s.p99_us).unwrap_or(f64::NAN);
            let _ = writeln!(
                md,
                "| point select p50 / p99 | {:.0} / {:.0} us | {:.0} / {:.0} us | |",
                p50(0),
                p99(0),
                p50(1),
                p99(1)
            );
            // Each round runs plain and TLS back to back: its ratio compares like with like
            // when the machine's speed drifts between rounds.
            let per_round: Vec<String> = samples[0][0]
                .iter()
                .zip(&samples[0][1])
                .map(|(p, t)| format!("{:.2}", t.qps / p.qps))
                .collect();
            let _ = writeln!(
                verdicts,
                "Point select TLS / plain by round: {}.",
                per_round.join(", ")
            );
            let _ = writeln!(
                verdicts,
                "Target: TLS keeps >= {TARGET_TLS_SHARE:.2} of steady throughput: {:.2}, {}.",
                t / p,
                if t / p >= TARGET_TLS_SHARE {
                    "met"
                } else {
                    "missed"
                }
            );
        }
    }
    let (p, t) = (plain_idle.kib_per_client(), tls_idle.kib_per_client());
    let _ = writeln!(
        md,
        "| resident memory per idle client ({IDLE_CLIENTS} clients) | {p:.1} KiB | {t:.1} KiB | {:.2} |",
        t / p
    );
    md.push('\n');
    md.push_str(&verdicts);
    println!("\n{md}");
    let path = write_markdown("tls", &md)?;
    println!("written to {}", path.display());
    Ok(())
}
