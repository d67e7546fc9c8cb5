//! Outages and failovers are a pause, not an error. Against a real primary and replica that
//! replicate (GTID): kill -9 of the primary under a ledger load, a switchover, the primary
//! stopped and the replica promoted, a restart under prepared statements. The pauses are
//! measured and printed (`cargo test --test failover -- --nocapture`); the README quotes them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{TestProxy, config_for};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};
use sluice_testkit::{Ledger, MariaDb, ReplicaPair};

/// Sluice in front of both hosts of `pair` (the primary first), its monitor as root, with the
/// ledger's user.
async fn proxy_for(pair: &ReplicaPair, max_connections: usize, ledger: &Ledger) -> TestProxy {
    let mut config = config_for(&pair.primary, max_connections);
    config.backend.address = format!("{},{}", pair.primary.addr(), pair.replica.addr());
    config.users.push(sluice::config::UserConfig {
        username: ledger.user.clone(),
        password: sluice::config::Secret::new(ledger.password.clone()),
        auth_plugin: Default::default(),
    });
    TestProxy::start_with(&pair.primary, config).await
}

/// Sessions that log in, run one query and then sit idle through whatever comes.
async fn idle_sessions(proxy: &TestProxy, ledger: &Ledger, n: usize) -> Vec<Conn> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut c = Conn::new(Opts::from(proxy.opts(&ledger.user, &ledger.password, None)))
            .await
            .expect("idle session login");
        let one: Option<u8> = c.query_first("SELECT 1").await.expect("first query");
        assert_eq!(one, Some(1));
        out.push(c);
    }
    out
}

/// Every idle session still answers, on its own connection (no reconnect).
async fn assert_still_connected(sessions: &mut [Conn]) {
    for (i, c) in sessions.iter_mut().enumerate() {
        let id_before = c.id();
        let two: Option<u8> = c
            .query_first("SELECT 2")
            .await
            .unwrap_or_else(|e| panic!("idle session {i} lost its connection: {e}"));
        assert_eq!(two, Some(2));
        assert_eq!(c.id(), id_before);
    }
}

/// Waits (bounded) until `check` holds.
async fn until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Acknowledged commits so far, counted while the load runs.
fn counter() -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_primary_under_a_ledger_load_is_a_pause() {
    let mut pair = ReplicaPair::start().unwrap();
    let ledger = Ledger::create(&pair.primary, "ledger_kill", 50, 1_000).unwrap();
    let proxy = proxy_for(&pair, 8, &ledger).await;
    let mut idle = idle_sessions(&proxy, &ledger, 4).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (ledger, opts, stop) = (ledger.clone(), proxy.opts("", "", None), stop.clone());
        async move { ledger.run(opts, 8, stop, Duration::from_secs(60)).await }
    });
    // Some work before the kill.
    let committed = counter();
    let probe = {
        let (db, committed) = (pair.primary.addr(), committed.clone());
        let ledger = ledger.clone();
        tokio::spawn(async move { count_transfers(db, &ledger, committed).await })
    };
    until(
        Duration::from_secs(20),
        "200 transfers before the kill",
        || committed.load(Ordering::Relaxed) >= 200,
    )
    .await;
    probe.abort();

    let killed_at = Instant::now();
    pair.primary.kill9();
    // Down for a moment, as a crash-looping server would be; then it comes back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (primary, available_at) = tokio::task::spawn_blocking(move || {
        let mut primary = pair.primary;
        primary.restart().expect("restart the primary");
        let at = Instant::now();
        (primary, at)
    })
    .await
    .unwrap();
    pair.primary = primary;

    // Work goes on; then stop the load and look at what every client saw.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    let first = report
        .first_ack_after(available_at)
        .expect("a transfer committed after the primary came back");
    let pause = first.saturating_duration_since(available_at);
    let recovery = first.saturating_duration_since(killed_at);
    println!(
        "FIGURE kill -9 of the primary: writer available -> first committed transfer {:.0} ms; \
         kill -> first committed transfer {:.0} ms (down for 300 ms + restart {:.0} ms)",
        pause.as_secs_f64() * 1e3,
        recovery.as_secs_f64() * 1e3,
        available_at.duration_since(killed_at).as_secs_f64() * 1e3 - 300.0,
    );
    assert!(
        pause < Duration::from_secs(1),
        "work resumed {pause:?} after the writer was back"
    );
    // Only the statements running at the kill failed, each with an error that says so.
    for e in &report.errors {
        assert!(
            e.code.is_none() || e.code == Some(9503),
            "unexpected error: {e:?}"
        );
        assert!(e.at >= killed_at, "an error before the kill: {e:?}");
        if e.code == Some(9503) {
            assert!(
                e.message.contains("while the statement was running"),
                "{e:?}"
            );
        }
    }
    assert!(
        report.errors.len() <= 16,
        "{} errors for 8 clients: {:?}",
        report.errors.len(),
        report.errors
    );
    let stored = ledger.check(&pair.primary, &report.acked).unwrap();
    assert!(stored >= report.acked.len());
    assert_still_connected(&mut idle).await;
    println!(
        "kill -9: {} transfers acknowledged, {} errors, {} stored",
        report.acked.len(),
        report.errors.len(),
        stored
    );
    drop(idle);
    proxy.stop().await;
}

/// Counts committed transfers on the database directly, into `out`, until aborted.
async fn count_transfers(db: std::net::SocketAddr, ledger: &Ledger, out: Arc<AtomicU64>) {
    let opts = sluice_testkit::client_opts(db, &ledger.user, &ledger.password, None);
    let Ok(mut c) = Conn::new(Opts::from(opts)).await else {
        return;
    };
    loop {
        let n: Option<u64> = c
            .query_first(format!("SELECT COUNT(*) FROM {}.transfers", ledger.schema))
            .await
            .unwrap_or(None);
        out.store(n.unwrap_or(0), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Autocommit writers: each inserts rows (its own ids) in a loop until `stop`; returns the
/// ids acknowledged and the errors seen.
async fn autocommit_writers(
    opts: mysql_async::OptsBuilder,
    table: String,
    writers: u64,
    stop: Arc<AtomicBool>,
) -> (Vec<u64>, Vec<String>) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (opts, table, stop) = (opts.clone(), table.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut errors) = (Vec::new(), Vec::new());
            let mut c = Conn::new(Opts::from(opts)).await.expect("writer login");
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut n = 0;
            // Bounded: an error ends the writer (the test fails on any).
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                n += 1;
                let id = w * 1_000_000 + n;
                match c
                    .query_drop(format!("INSERT INTO {table} VALUES ({id}, @@server_id)"))
                    .await
                {
                    Ok(()) => acked.push(id),
                    Err(e) => {
                        errors.push(e.to_string());
                        break;
                    }
                }
            }
            (acked, errors)
        }));
    }
    let (mut acked, mut errors) = (Vec::new(), Vec::new());
    for t in tasks {
        let (a, e) = t.await.expect("writer task");
        acked.extend(a);
        errors.extend(e);
    }
    (acked, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switchover_reroutes_writes_outside_transactions() {
    let mut pair = ReplicaPair::start().unwrap();
    let ledger = Ledger::create(&pair.primary, "ledger_switch", 50, 1_000).unwrap();
    let table = format!("{}.writes", ledger.schema);
    pair.primary
        .sql(&format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY, server_id INT NOT NULL) ENGINE=InnoDB"
        ))
        .unwrap();
    pair.wait_caught_up(Duration::from_secs(10)).unwrap();
    let proxy = proxy_for(&pair, 8, &ledger).await;
    let mut idle = idle_sessions(&proxy, &ledger, 3).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (ledger, opts, stop) = (ledger.clone(), proxy.opts("", "", None), stop.clone());
        async move { ledger.run(opts, 4, stop, Duration::from_secs(60)).await }
    });
    let writes = tokio::spawn(autocommit_writers(
        proxy.opts(&ledger.user, &ledger.password, None),
        table.clone(),
        3,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;

    // Demote the primary (its writes are refused from now on), let the replica catch up,
    // promote it. Autocommit writes that reach the old primary meanwhile are refused unrun
    // (1290) and go again to the new writer.
    let demoted_at = Instant::now();
    pair.primary.sql("SET GLOBAL read_only = 1").unwrap();
    pair.wait_caught_up(Duration::from_secs(10)).unwrap();
    pair.replica
        .sql("STOP SLAVE; SET GLOBAL read_only = 0")
        .unwrap();
    let promoted_at = Instant::now();
    until(
        Duration::from_secs(10),
        "Sluice follows the promotion",
        || {
            proxy
                .pool
                .topology()
                .writer()
                .is_some_and(|w| w.host == sluice::backend::HostId(1))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The old primary goes away for good: nothing depends on it any more.
    pair.primary.stop();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    let (written, write_errors) = writes.await.unwrap();

    assert!(
        write_errors.is_empty(),
        "autocommit writes failed in a switchover: {write_errors:?}"
    );
    let on_new: u64 = pair
        .replica
        .sql(&format!("SELECT COUNT(*) FROM {table} WHERE server_id = 2"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(on_new > 0, "no write was made on the promoted replica");
    let stored: u64 = pair
        .replica
        .sql(&format!("SELECT COUNT(*) FROM {table}"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        stored,
        written.len() as u64,
        "every acknowledged write is there once"
    );
    // A transaction that was open on the old primary when it turned read-only gets the
    // server's refusal (nothing inside a transaction is sent again); none after Sluice saw it.
    for e in &report.errors {
        assert_eq!(e.code, Some(1290), "{e:?}");
        assert!(e.at > demoted_at && e.at < promoted_at, "{e:?}");
    }
    assert!(report.errors.len() <= 8, "{:?}", report.errors);
    let first = report
        .first_ack_after(promoted_at)
        .expect("transfers after the promotion");
    println!(
        "FIGURE switchover: read_only on the primary -> promotion {:.0} ms; promotion -> first \
         transfer committed on the new writer {:.0} ms; {} autocommit writes without an error, \
         {} transfers, {} refused in open transactions",
        promoted_at.duration_since(demoted_at).as_secs_f64() * 1e3,
        first.saturating_duration_since(promoted_at).as_secs_f64() * 1e3,
        written.len(),
        report.acked.len(),
        report.errors.len()
    );
    ledger.check(&pair.replica, &report.acked).unwrap();
    assert_still_connected(&mut idle).await;
    drop(idle);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_primary_stopped_then_the_replica_promoted_holds_clients_until_it_is() {
    let mut pair = ReplicaPair::start().unwrap();
    let ledger = Ledger::create(&pair.primary, "ledger_promote", 20, 1_000).unwrap();
    pair.wait_caught_up(Duration::from_secs(10)).unwrap();
    let proxy = proxy_for(&pair, 8, &ledger).await;
    let mut idle = idle_sessions(&proxy, &ledger, 3).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (ledger, opts, stop) = (ledger.clone(), proxy.opts("", "", None), stop.clone());
        async move { ledger.run(opts, 6, stop, Duration::from_secs(60)).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;

    let stopped_at = Instant::now();
    pair.primary.stop();
    // Nobody is the writer for a while; then the operator promotes the replica.
    tokio::time::sleep(Duration::from_millis(500)).await;
    pair.replica
        .sql("STOP SLAVE; SET GLOBAL read_only = 0")
        .unwrap();
    let promoted_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();

    let first = report
        .first_ack_after(promoted_at)
        .expect("transfers on the promoted replica");
    let pause = first.saturating_duration_since(promoted_at);
    println!(
        "FIGURE primary stopped, replica promoted 500 ms later: promotion -> first committed \
         transfer {:.0} ms; {} transfers, {} errors",
        pause.as_secs_f64() * 1e3,
        report.acked.len(),
        report.errors.len()
    );
    assert!(
        pause < Duration::from_secs(1),
        "resumed {pause:?} after the promotion"
    );
    // A transaction running when the primary went away gets an error that says so; nothing
    // else fails, and nothing fails after the promotion.
    for e in &report.errors {
        assert!(e.code.is_none() || e.code == Some(9503), "{e:?}");
        assert!(e.at >= stopped_at && e.at < promoted_at, "{e:?}");
    }
    assert!(report.errors.len() <= 6, "{:?}", report.errors);
    ledger.check(&pair.replica, &report.acked).unwrap();
    assert_still_connected(&mut idle).await;
    drop(idle);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_keep_working_across_a_backend_restart() {
    let mut db = MariaDb::start().unwrap();
    let proxy = TestProxy::start(&db, 4).await;
    let mut clients = Vec::new();
    for i in 0..3u32 {
        let mut c = proxy.app(None).await;
        let add = c.prep("SELECT ? + ?").await.unwrap();
        let who = c.prep("SELECT CURRENT_USER()").await.unwrap();
        let sum: Option<u32> = c.exec_first(&add, (i, 1u32)).await.unwrap();
        assert_eq!(sum, Some(i + 1));
        clients.push((c, add, who));
    }
    db.kill9();
    let db = tokio::task::spawn_blocking(move || {
        db.restart().expect("restart");
        db
    })
    .await
    .unwrap();
    for (i, (c, add, who)) in clients.iter_mut().enumerate() {
        let i = i as u32;
        let sum: Option<u32> = c.exec_first(&*add, (i, 10u32)).await.unwrap();
        assert_eq!(sum, Some(i + 10));
        let user: Option<String> = c.exec_first(&*who, ()).await.unwrap();
        assert_eq!(user.as_deref(), Some("app@%"));
    }
    drop(clients);
    proxy.stop().await;
    drop(db);
}
