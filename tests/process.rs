//! The `sluice` binary as users run it: configuration checks, environment overrides, graceful
//! stop on SIGTERM and SIGINT, and the demo.

mod common;

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::schema;
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};
use sluice_testkit::sluice::sluice_binary;
use sluice_testkit::{MariaDb, SluiceOptions, SluiceProcess, client_opts};

fn client(addr: std::net::SocketAddr, db: &MariaDb, schema: Option<&str>) -> Opts {
    Opts::from(client_opts(addr, "app", db.app_password(), schema))
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the test's own child process.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_open_transactions_finish_and_closes_idle_sessions() {
    let db = MariaDb::shared();
    let s = schema(db, "drain");
    db.sql(&format!("CREATE TABLE `{s}`.t (a INT)")).unwrap();
    let mut opts = SluiceOptions::for_mariadb(db);
    opts.extra_toml = "shutdown_timeout = \"20s\"".into();
    let mut sluice = SluiceProcess::start(opts).unwrap();
    let addr = sluice.addr();
    let mut idle = Conn::new(client(addr, db, Some(&s))).await.unwrap();
    let mut busy = Conn::new(client(addr, db, Some(&s))).await.unwrap();
    busy.query_drop("BEGIN").await.unwrap();
    busy.query_drop("INSERT INTO t VALUES (1)").await.unwrap();

    signal(sluice.pid(), libc::SIGTERM);
    // New clients are refused at once.
    assert!(
        eventually(Duration::from_secs(5), || TcpStream::connect(addr).is_err()),
        "still accepting"
    );
    // The idle session is closed; the open transaction goes on and commits.
    assert!(
        idle.query_drop("SELECT 1").await.is_err(),
        "idle session survived SIGTERM"
    );
    busy.query_drop("INSERT INTO t VALUES (2)").await.unwrap();
    busy.query_drop("COMMIT").await.unwrap();
    // With its transaction done, the last session ends and the process exits cleanly.
    assert!(
        eventually(Duration::from_secs(10), || !sluice.is_running()),
        "sluice did not exit"
    );
    let status = sluice.stop();
    assert!(status.success(), "{status}");
    assert_eq!(
        db.sql(&format!("SELECT COUNT(*) FROM `{s}`.t"))
            .unwrap()
            .trim(),
        "2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_an_idle_proxy_cleanly() {
    let db = MariaDb::shared();
    let mut sluice = SluiceProcess::start(SluiceOptions::for_mariadb(db)).unwrap();
    let mut c = Conn::new(client(sluice.addr(), db, None)).await.unwrap();
    c.query_drop("SELECT 1").await.unwrap();
    let t = Instant::now();
    signal(sluice.pid(), libc::SIGINT);
    assert!(
        eventually(Duration::from_secs(10), || !sluice.is_running()),
        "sluice did not exit"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(sluice.stop().success());
}

fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(sluice_binary().unwrap());
    cmd.args(args)
        .env_remove("SLUICE_CONFIG")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn configuration_errors_name_the_key_and_environment_overrides_apply() {
    let dir = std::env::temp_dir().join(format!("sluice-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:6033\"\n[backend]\naddress = \"db:3306\"\n[[users]]\nusername = \"a\"\npassword = \"p\"\n",
    )
    .unwrap();
    let (ok, out, err) = run_binary(&["--check", "--config", good.to_str().unwrap()], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("configuration is valid"), "{out}");
    // SLUICE_CONFIG names the file; an override with a bad value is named in the error.
    let (ok, _, err) = run_binary(
        &["--check"],
        &[
            ("SLUICE_CONFIG", good.to_str().unwrap()),
            ("SLUICE_BACKEND_MAX_CONNECTIONS", "lots"),
        ],
    );
    assert!(!ok);
    assert!(err.contains("SLUICE_BACKEND_MAX_CONNECTIONS"), "{err}");
    let (ok, _, err) = run_binary(
        &["--check"],
        &[
            ("SLUICE_CONFIG", good.to_str().unwrap()),
            ("SLUICE_BACKEND_MIN_IDLE", "99"),
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("backend.min_idle"),
        "the override took effect: {err}"
    );
    // Invalid files: the key and the file are named; the password never is.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[backend]\naddress = \"db:3306\"\nmax_connections = 0\n[[users]]\nusername = \"a\"\npassword = \"hunter2\"\n",
    )
    .unwrap();
    let (ok, _, err) = run_binary(&["--check", "--config", bad.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(
        err.contains("backend.max_connections") && err.contains("bad.toml"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    let (ok, _, err) = run_binary(
        &[
            "--check",
            "--config",
            dir.join("missing.toml").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok && err.contains("missing.toml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_demo_runs_a_burst_without_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-demo"))
        .args([
            "--exit",
            "--sessions",
            "300",
            "--concurrency",
            "150",
            "--pool",
            "5",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sessions served           300"), "{stdout}");
    assert!(
        stdout.contains("peak connections the database saw from app: 5"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Sluice stopped (exit status: 0)"),
        "{stdout}"
    );
}
