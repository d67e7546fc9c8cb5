//! Operating Sluice without an outage: SIGHUP reloads under load, SIGTERM drains under load,
//! PAUSE holds transactions until RESUME, and the client limits.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::raw::default_caps;
use common::{
    TestProxy, config_for, dedicated_user, eventually, sample, schema, server_connections,
};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, Row};
use sluice_testkit::{MariaDb, SluiceOptions, SluiceProcess, client_opts};

const ADMIN: &str = "ops-admin-pw";

fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

async fn admin_of(sluice: &SluiceProcess) -> Conn {
    let addr = sluice.admin_addr().expect("admin console");
    Conn::new(Opts::from(client_opts(addr, "admin", ADMIN, None)))
        .await
        .expect("admin login")
}

/// A SHOW command's value in the row whose `key` column is `value`.
async fn show_value(
    admin: &mut Conn,
    command: &str,
    key: &str,
    value: &str,
    column: &str,
) -> Option<String> {
    let rows: Vec<Row> = admin.query(command).await.ok()?;
    rows.iter()
        .find(|r| r.get::<String, _>(key).as_deref() == Some(value))
        .and_then(|r| r.get::<Option<String>, _>(column).flatten())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_lowers_the_pool_cap_under_load_without_failing_a_query() {
    let db = MariaDb::shared();
    let (user, password) = dedicated_user(db, "hup");
    let s = schema(db, "hup");
    db.sql(&format!(
        "CREATE TABLE `{s}`.t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)"
    ))
    .unwrap();
    let mut opts = SluiceOptions {
        backend: db.addr(),
        users: vec![(user.clone(), password.clone())],
        max_connections: 6,
        admin_password: ADMIN.into(),
        backend_extra_toml: "borrow_timeout = \"60s\"".into(),
        ..SluiceOptions::default()
    };
    let sluice = SluiceProcess::start(opts.clone()).unwrap();
    let addr = sluice.addr();

    // 12 clients running short transactions until told to stop (at most 2000 each, 120 s).
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for n in 0..12 {
        let o = Opts::from(client_opts(addr, &user, &password, Some(&s)));
        let (stop, committed) = (stop.clone(), committed.clone());
        clients.push(tokio::spawn(async move {
            let mut c = Conn::new(o).await?;
            let deadline = Instant::now() + Duration::from_secs(120);
            for i in 0..2000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                c.query_drop("BEGIN").await?;
                c.query_drop(format!("INSERT INTO t (v) VALUES ({})", n * 10_000 + i))
                    .await?;
                c.query_drop("DO SLEEP(0.005)").await?;
                c.query_drop("COMMIT").await?;
                committed.fetch_add(1, Ordering::Relaxed);
            }
            c.disconnect().await?;
            Ok::<_, mysql_async::Error>(())
        }));
    }
    // Under the old cap the load uses more than 2 connections.
    assert!(
        eventually(Duration::from_secs(30), || async {
            server_connections(db, &user).await > 2
        })
        .await,
        "the load never used more than 2 connections under a cap of 6"
    );

    opts.max_connections = 2;
    opts.extra_toml = "log_level = \"debug\"".into();
    sluice.rewrite_config(&opts).unwrap();
    sluice.signal(libc::SIGHUP).unwrap();
    let mut admin = admin_of(&sluice).await;
    assert!(
        eventually(Duration::from_secs(10), || {
            let addr = sluice.admin_addr().unwrap();
            async move {
                let mut a = Conn::new(Opts::from(client_opts(addr, "admin", ADMIN, None)))
                    .await
                    .unwrap();
                let v = show_value(
                    &mut a,
                    "SHOW CONFIG",
                    "key",
                    "backend.max_connections",
                    "value",
                )
                .await;
                v.as_deref() == Some("2")
            }
        })
        .await,
        "SIGHUP did not apply the new cap"
    );
    // The log level is applied by the binary's hook, not deferred to a restart.
    assert_eq!(
        show_value(&mut admin, "SHOW CONFIG", "key", "log_level", "value")
            .await
            .as_deref(),
        Some("debug")
    );
    // Connections above the new cap close as they come back ...
    assert!(
        eventually(Duration::from_secs(20), || async {
            server_connections(db, &user).await <= 2
        })
        .await,
        "the server still sees more than 2 connections"
    );
    // ... and the cap holds while the load goes on.
    let progress = committed.load(Ordering::Relaxed);
    let mut samples = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while samples < 40 && Instant::now() < deadline {
        let n = server_connections(db, &user).await;
        assert!(n <= 2, "{n} server connections under a cap of 2");
        samples += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            committed.load(Ordering::Relaxed) >= progress + 50
        })
        .await,
        "the load stalled under the new cap"
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("clients finish")
            .unwrap()
            .expect("no query failed across the reload");
    }
    admin.disconnect().await.unwrap();
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_or_rolls_back_every_transaction() {
    let db = MariaDb::shared();
    let s = schema(db, "ledger");
    db.sql(&format!(
        "CREATE TABLE `{s}`.ledger (txn BIGINT NOT NULL, part TINYINT NOT NULL)"
    ))
    .unwrap();
    let mut opts = SluiceOptions::for_mariadb(db);
    opts.max_connections = 4;
    opts.extra_toml = "shutdown_timeout = \"3s\"".into();
    let mut sluice = SluiceProcess::start(opts).unwrap();
    let addr = sluice.addr();
    let client = |db: &MariaDb| Opts::from(client_opts(addr, "app", db.app_password(), Some(&s)));

    // A transaction that never ends: the drain must roll it back.
    let mut stuck = Conn::new(client(db)).await.unwrap();
    stuck.query_drop("BEGIN").await.unwrap();
    stuck
        .query_drop("INSERT INTO ledger VALUES (-1, 1)")
        .await
        .unwrap();

    // 8 clients, each transaction two rows; errors are told apart by where they happen.
    let committed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for n in 0..8i64 {
        let (o, committed) = (client(db), committed.clone());
        clients.push(tokio::spawn(async move {
            let mut c = Conn::new(o).await.expect("login");
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut mine = 0u64;
            for i in 0..1000i64 {
                if Instant::now() > deadline {
                    break;
                }
                let txn = n * 100_000 + i;
                // Between transactions the drain may close the session.
                if let Err(e) = c.query_drop("BEGIN").await {
                    return (mine, None, Some(e));
                }
                let steps = [
                    format!("INSERT INTO ledger VALUES ({txn}, 1)"),
                    "DO SLEEP(0.02)".to_string(),
                    format!("INSERT INTO ledger VALUES ({txn}, 2)"),
                    "COMMIT".to_string(),
                ];
                for step in steps {
                    if let Err(e) = c.query_drop(&step).await {
                        return (mine, Some((txn, step, e.to_string())), None);
                    }
                }
                mine += 1;
                committed.fetch_add(1, Ordering::Relaxed);
            }
            (mine, None, None)
        }));
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            committed.load(Ordering::Relaxed) >= 20
        })
        .await,
        "the load did not get going"
    );
    let signalled = Instant::now();
    sluice.signal(libc::SIGTERM).unwrap();
    let mut exited = false;
    while signalled.elapsed() < Duration::from_secs(15) {
        if !sluice.is_running() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = signalled.elapsed();
    assert!(exited, "sluice did not exit within 15 s of SIGTERM");
    // shutdown_timeout (3 s) for the stuck transaction, 2 s for killed sessions, and slack.
    assert!(took < Duration::from_secs(8), "the drain took {took:?}");
    let status = sluice.stop();
    assert!(status.success(), "{status}");

    let mut total = 0;
    for c in clients {
        let (mine, mid_transaction, at_begin) = tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("clients end")
            .unwrap();
        assert!(
            mid_transaction.is_none(),
            "a transaction was cut: {mid_transaction:?}"
        );
        if let Some(e) = at_begin {
            // Closed between transactions: told so with ERR 1053 (or the socket was gone).
            assert!(
                server_code(&e) == Some(1053) || matches!(e, mysql_async::Error::Io(_)),
                "{e:?}"
            );
        }
        total += mine;
    }
    assert!(
        stuck.query_drop("COMMIT").await.is_err(),
        "the stuck session was closed"
    );

    let half_done = db
        .sql(&format!(
            "SELECT COUNT(*) FROM (SELECT txn FROM `{s}`.ledger GROUP BY txn HAVING COUNT(*) <> 2) x"
        ))
        .unwrap();
    assert_eq!(
        half_done.trim(),
        "0",
        "half-done transactions in the ledger"
    );
    let stuck_rows = db
        .sql(&format!("SELECT COUNT(*) FROM `{s}`.ledger WHERE txn = -1"))
        .unwrap();
    assert_eq!(
        stuck_rows.trim(),
        "0",
        "the unfinished transaction was rolled back"
    );
    let done = db
        .sql(&format!("SELECT COUNT(DISTINCT txn) FROM `{s}`.ledger"))
        .unwrap();
    assert_eq!(
        done.trim(),
        total.to_string(),
        "every acknowledged commit is there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_transactions_until_resume() {
    let db = MariaDb::shared();
    let s = schema(db, "pause");
    db.sql(&format!("CREATE TABLE `{s}`.t (a INT)")).unwrap();
    let proxy = TestProxy::start(db, 2).await;
    let mut admin = proxy.admin().await;
    let mut in_flight = proxy.app(Some(&s)).await;
    in_flight.query_drop("BEGIN").await.unwrap();
    in_flight
        .query_drop("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let mut later = proxy.app(Some(&s)).await;

    admin.query_drop("PAUSE").await.unwrap();
    // The transaction in flight goes on and commits.
    in_flight
        .query_drop("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    in_flight.query_drop("COMMIT").await.unwrap();
    // A new one waits.
    let task = tokio::spawn(async move {
        later.query_drop("BEGIN").await?;
        later.query_drop("INSERT INTO t VALUES (3)").await?;
        later.query_drop("COMMIT").await?;
        Ok::<_, mysql_async::Error>(later)
    });
    let mut waiting = false;
    for _ in 0..500 {
        let pools: Vec<Row> = admin.query("SHOW POOLS").await.unwrap();
        let app = pools
            .iter()
            .find(|r| r.get::<String, _>("user").as_deref() == Some("app"))
            .unwrap();
        if app.get::<u64, _>("cl_waiting") == Some(1) {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(waiting, "the new transaction did not queue");
    assert!(!task.is_finished(), "a transaction ran during PAUSE");
    let text = proxy.http("/metrics").await.1;
    assert_eq!(sample(&text, "sluice_paused", &[]), Some(1.0));
    assert_eq!(
        sample(&text, "sluice_database_connection_borrow_waiters", &[]),
        Some(1.0)
    );
    // Connections coming back during PAUSE were closed: the database can go away.
    assert_eq!(
        proxy.pool.counts().1,
        0,
        "no idle connection kept during PAUSE"
    );

    admin.query_drop("RESUME").await.unwrap();
    let later = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the held transaction ran after RESUME")
        .unwrap()
        .expect("without an error");
    drop(later);
    assert_eq!(
        db.sql(&format!("SELECT COUNT(*) FROM `{s}`.t"))
            .unwrap()
            .trim(),
        "3"
    );
    assert_eq!(proxy.snapshot().borrow_timeouts, 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_beyond_max_client_connections_gets_err_1040() {
    let db = MariaDb::shared();
    let mut config = config_for(db, 2);
    config.max_client_connections = 3;
    let proxy = TestProxy::start_with(db, config).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(proxy.app(None).await);
    }
    let opts = || Opts::from(proxy.opts("app", &proxy.app_password, None));
    let err = Conn::new(opts()).await.unwrap_err();
    assert_eq!(server_code(&err), Some(1040), "{err:?}");
    assert!(err.to_string().contains("Too many connections"), "{err}");
    // The mariadb CLI reads the same refusal.
    let out = sluice_testkit::mariadb_cli_async(
        proxy.addr,
        "app",
        &proxy.app_password,
        None,
        &["-e", "SELECT 1"],
        None,
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1040"));
    let text = proxy.http("/metrics").await.1;
    assert_eq!(
        sample(
            &text,
            "sluice_client_connections_setup_failed_total",
            &[("reason", "too_many_connections")]
        ),
        Some(2.0)
    );
    // One leaves; the next one gets in.
    held.pop().unwrap().disconnect().await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            Conn::new(opts()).await.is_ok()
        })
        .await,
        "a place freed up but logins are still refused"
    );
    drop(held);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_timeout_closes_idle_clients_but_not_open_transactions() {
    let db = MariaDb::shared();
    let s = schema(db, "idle");
    db.sql(&format!("CREATE TABLE `{s}`.t (a INT)")).unwrap();
    let mut config = config_for(db, 2);
    config.idle_client_timeout = Duration::from_secs(1);
    let proxy = TestProxy::start_with(db, config).await;
    // The transaction goes idle first, so it has been idle longest when the other is closed.
    let mut tx = proxy.app(Some(&s)).await;
    tx.query_drop("BEGIN").await.unwrap();
    tx.query_drop("INSERT INTO t VALUES (1)").await.unwrap();
    let started = Instant::now();
    let mut idle = proxy.raw_app(Some(&s), default_caps()).await;
    let farewell = idle.read().await.expect("an error before the close");
    let waited = started.elapsed();
    assert_eq!(farewell.err_code(), Some(4031), "{farewell:?}");
    assert!(farewell.err_message().contains("inactivity"));
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    assert!(idle.closed().await);
    // The idle transaction was left alone.
    tx.query_drop("INSERT INTO t VALUES (2)").await.unwrap();
    tx.query_drop("COMMIT").await.unwrap();
    assert_eq!(
        db.sql(&format!("SELECT COUNT(*) FROM `{s}`.t"))
            .unwrap()
            .trim(),
        "2"
    );
    let text = proxy.http("/metrics").await.1;
    assert_eq!(
        sample(&text, "sluice_errors_total", &[("kind", "idle_timeout")]),
        Some(1.0)
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_users_and_limits_without_dropping_clients() {
    let db = MariaDb::shared();
    let (user, password) = dedicated_user(db, "newuser");
    let proxy = TestProxy::start(db, 3).await;
    let mut existing = proxy.app(None).await;
    let login = |u: &str, p: &str| Opts::from(proxy.opts(u, p, None));
    let err = Conn::new(login(&user, &password)).await.unwrap_err();
    assert_eq!(server_code(&err), Some(1045), "not a user yet: {err:?}");

    let mut next = config_for(db, 5);
    next.users.push(toml_user(&user, &password));
    next.handshake_timeout = Duration::from_secs(3);
    next.backend.connect_timeout = Duration::from_secs(7);
    next.backend.max_prepared_statements_per_connection = 17;
    next.listen = "127.0.0.1:1".into();
    let report = proxy.reload.apply(next.clone());
    assert_eq!(report.needs_restart(), ["listen"]);
    for key in [
        "backend.connect_timeout",
        "backend.max_connections",
        "backend.max_prepared_statements_per_connection",
        "handshake_timeout",
        "users",
    ] {
        assert!(report.applied().contains(&key), "{key}: {report:?}");
    }
    let connector = proxy.pool.connector();
    assert_eq!(connector.connect_timeout(), Duration::from_secs(7));
    assert_eq!(connector.statement_cache(), 17);
    let mut fresh = Conn::new(login(&user, &password)).await.unwrap();
    let who: Option<String> = fresh.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.unwrap(), format!("{user}@%"));
    assert_eq!(proxy.pool.max_connections(), 5);
    // The client from before the reload never noticed.
    let one: Option<u32> = existing.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));

    // Removing the user refuses new logins; its open session goes on.
    next.users.pop();
    let report = proxy.reload.apply(next);
    assert!(report.applied().contains(&"users"), "{report:?}");
    let err = Conn::new(login(&user, &password)).await.unwrap_err();
    assert_eq!(server_code(&err), Some(1045), "{err:?}");
    let one: Option<u32> = fresh.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    drop((existing, fresh));
    proxy.stop().await;
}

fn toml_user(name: &str, password: &str) -> sluice::config::UserConfig {
    let text = format!(
        "[backend]\naddress = \"db:1\"\n[[users]]\nusername = \"{name}\"\npassword = \"{password}\"\n"
    );
    sluice::Config::from_toml(&text, "test", |_| None)
        .unwrap()
        .users
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_and_borrow_timeouts_are_logged_once_with_a_digest_and_no_values() {
    let db = MariaDb::shared();
    let mut opts = SluiceOptions::for_mariadb(db);
    opts.max_connections = 1;
    opts.extra_toml = "log_level = \"info\"\nlog_format = \"json\"".into();
    opts.backend_extra_toml = "borrow_timeout = \"300ms\"".into();
    let mut sluice = SluiceProcess::start(opts).unwrap();
    let addr = sluice.addr();
    let o = || Opts::from(client_opts(addr, "app", db.app_password(), None));
    let mut pinned = Conn::new(o()).await.unwrap();
    let mut waiting = Conn::new(o()).await.unwrap();
    // Pinned, unpinned and pinned again for the same reason: one info line.
    pinned
        .query_drop("SET @secret_var = 'hunter2-value'")
        .await
        .unwrap();
    pinned.query_drop("SET @secret_var = NULL").await.unwrap();
    pinned
        .query_drop("SET @secret_var = 'hunter2-value'")
        .await
        .unwrap();
    // Two borrow timeouts of one session: one warning.
    for _ in 0..2 {
        let err = waiting
            .query_drop("SELECT 'another-secret-value', 42")
            .await
            .unwrap_err();
        assert_eq!(server_code(&err), Some(9501), "{err:?}");
    }
    drop((pinned, waiting));
    // Stopped, but not dropped: the log goes with the process's directory.
    sluice.signal(libc::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while sluice.is_running() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::fs::read_to_string(sluice.log_path()).unwrap();
    assert!(sluice.stop().success());
    let pins: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("session pinned to its backend connection\""))
        .collect();
    assert_eq!(pins.len(), 1, "{log}");
    assert!(
        pins[0].contains("\"reason\":\"user_variable\""),
        "{}",
        pins[0]
    );
    assert!(
        pins[0].contains("\"statement\":\"set @secret_var = ?\""),
        "{}",
        pins[0]
    );
    assert!(pins[0].contains("\"digest\":\""), "{}", pins[0]);
    let timeouts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("borrow timeout"))
        .collect();
    assert_eq!(timeouts.len(), 1, "{log}");
    assert!(
        timeouts[0].contains("\"statement\":\"select ?\""),
        "{}",
        timeouts[0]
    );
    for secret in ["hunter2-value", "another-secret-value", db.app_password()] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}
