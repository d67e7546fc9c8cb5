//! Many sessions over few backend connections: the cap holds, waits end in a clear error, and no
//! session ever sees another's state.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestProxy, config_for, schema, server_connections};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};
use sluice::PinReason;
use sluice_testkit::{MariaDb, MariaDbOptions};
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_through_ten_connections() {
    let db = MariaDb::start_with(MariaDbOptions {
        max_connections: 30,
        ..Default::default()
    })
    .unwrap();
    // The server itself refuses an eleventh connection from app: any overshoot fails a session.
    db.sql("GRANT USAGE ON *.* TO 'app'@'%' WITH MAX_USER_CONNECTIONS 10")
        .unwrap();
    let s = schema(&db, "thousand");
    db.sql(&format!(
        "CREATE TABLE `{s}`.hits (session INT PRIMARY KEY, at DATETIME(6))"
    ))
    .unwrap();
    let proxy = Arc::new(TestProxy::start(&db, 10).await);
    let sessions = 1000;
    let barrier = Arc::new(Barrier::new(sessions));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..sessions {
        let (proxy, barrier, s) = (proxy.clone(), barrier.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            let mut c =
                Conn::new(Opts::from(proxy.opts("app", &proxy.app_password, Some(&s)))).await?;
            // Every client is logged in before any starts its transaction: a real burst.
            barrier.wait().await;
            // Text protocol: server-side prepared statements pin sessions (until session state
            // replay lands), and this test is about per-transaction multiplexing.
            c.query_drop("BEGIN").await?;
            c.query_drop(format!("INSERT INTO hits VALUES ({i}, NOW(6))"))
                .await?;
            let n: Option<i64> = c
                .query_first(format!("SELECT COUNT(*) FROM hits WHERE session = {i}"))
                .await?;
            c.query_drop("COMMIT").await?;
            c.disconnect().await?;
            Ok::<_, mysql_async::Error>(n)
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(Some(1)) => {}
            other => failures.push(format!("{other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} sessions failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    let elapsed = started.elapsed();
    let rows = db.sql(&format!("SELECT COUNT(*) FROM `{s}`.hits")).unwrap();
    assert_eq!(rows.trim(), "1000");
    let snap = proxy.snapshot();
    assert!(
        snap.backend_connections_peak <= 10,
        "peak {}",
        snap.backend_connections_peak
    );
    assert_eq!(snap.client_connections_total, 1000);
    assert_eq!(snap.pins_all(), 0, "{:?}", snap.pins_total);
    let max_used = db
        .sql("SHOW GLOBAL STATUS LIKE 'Max_used_connections'")
        .unwrap();
    let max_used: usize = max_used.split_whitespace().last().unwrap().parse().unwrap();
    // Ten from Sluice, plus the sandbox's own root connections for setup and checks.
    assert!(
        max_used <= 12,
        "the server saw {max_used} connections at once"
    );
    eprintln!(
        "1000 sessions in {elapsed:?}, peak backend connections {}",
        snap.backend_connections_peak
    );
    Arc::into_inner(proxy).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrow_timeout_is_a_clear_error() {
    let db = MariaDb::shared();
    let mut config = config_for(db, 1);
    config.backend.borrow_timeout = Duration::from_millis(700);
    let proxy = TestProxy::start_with(db, config).await;
    let mut holder = proxy.app(None).await;
    // mysql_async queries the server while logging in: log in before the pool is held.
    let mut waiter = proxy.app(None).await;
    holder.query_drop("BEGIN").await.unwrap();
    holder.query_drop("SELECT 1").await.unwrap();
    let t = Instant::now();
    let err = waiter.query_drop("SELECT 2").await.unwrap_err();
    let waited = t.elapsed();
    let mysql_async::Error::Server(e) = err else {
        panic!("expected a server error, got {err:?}")
    };
    assert_eq!((e.code, e.state.as_str()), (9501, "HY000"));
    assert!(
        e.message
            .starts_with("Timed out waiting to acquire database connection"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("waited ") && e.message.contains("backend.max_connections is 1"),
        "{}",
        e.message
    );
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(proxy.snapshot().borrow_timeouts, 1);
    // The waiting session survives its timeout and gets the connection once it is free.
    holder.query_drop("COMMIT").await.unwrap();
    let n: Option<i32> = waiter.query_first("SELECT 3").await.unwrap();
    assert_eq!(n, Some(3));
    drop((holder, waiter));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_in_arrival_order() {
    let db = MariaDb::shared();
    let s = schema(db, "fifo");
    // The single backend connection runs the waiters' inserts in the order it is lent out.
    db.sql(&format!(
        "CREATE TABLE `{s}`.served (seq INT AUTO_INCREMENT PRIMARY KEY, waiter INT)"
    ))
    .unwrap();
    let proxy = Arc::new(TestProxy::start(db, 1).await);
    let mut holder = proxy.app(Some(&s)).await;
    let mut waiters = Vec::new();
    for _ in 0..5 {
        waiters.push(proxy.app(Some(&s)).await);
    }
    holder.query_drop("BEGIN").await.unwrap();
    holder.query_drop("SELECT 1").await.unwrap();
    let mut tasks = Vec::new();
    for (i, mut c) in waiters.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            c.query_drop(format!("INSERT INTO served (waiter) VALUES ({i})"))
                .await
                .unwrap();
        }));
        // Each waiter is queued before the next one starts.
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.pool.counts().2 < i + 1 {
            assert!(Instant::now() < deadline, "waiter {i} never queued");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    holder.query_drop("COMMIT").await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let order = db
        .sql(&format!(
            "SELECT GROUP_CONCAT(waiter ORDER BY seq) FROM `{s}`.served"
        ))
        .unwrap();
    assert_eq!(order.trim(), "0,1,2,3,4");
    drop(holder);
    Arc::into_inner(proxy).unwrap().stop().await;
}

/// Reads the state a new session must find pristine.
async fn observe(c: &mut Conn) -> (Option<String>, String, String, i64, i64, u32) {
    let (var, mode, charset, autocommit, thread): (Option<String>, String, String, i64, u32) = c
        .query_first(
            "SELECT @secret, @@sql_mode, @@character_set_client, @@autocommit, CONNECTION_ID()",
        )
        .await
        .unwrap()
        .unwrap();
    let uncommitted: i64 = c
        .query_first("SELECT COUNT(*) FROM iso")
        .await
        .unwrap()
        .unwrap();
    (var, mode, charset, autocommit, uncommitted, thread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_carries_nothing_over() {
    let db = MariaDb::shared();
    let s = schema(db, "iso");
    db.sql(&format!("CREATE TABLE `{s}`.iso (a INT)")).unwrap();
    // One backend connection: every session below runs on the same server thread.
    let proxy = TestProxy::start(db, 1).await;
    let mut first = proxy.app(Some(&s)).await;
    let pristine = observe(&mut first).await;
    assert_eq!(pristine.0, None);
    drop(first);

    for leave_how in ["disconnect", "vanish"] {
        let mut dirty = proxy.app(Some(&s)).await;
        dirty.query_drop("SET @secret = 'leaked'").await.unwrap();
        dirty
            .query_drop("SET SESSION sql_mode = 'ANSI'")
            .await
            .unwrap();
        dirty.query_drop("SET NAMES latin1").await.unwrap();
        dirty.query_drop("SET autocommit = 0").await.unwrap();
        dirty
            .query_drop("CREATE TEMPORARY TABLE tmp_secret (a INT)")
            .await
            .unwrap();
        dirty
            .query_drop("INSERT INTO iso VALUES (1)")
            .await
            .unwrap();
        let seen = observe(&mut dirty).await;
        assert_eq!(seen.0.as_deref(), Some("leaked"));
        assert_eq!(seen.4, 1, "the session sees its own uncommitted row");
        match leave_how {
            "disconnect" => dirty.disconnect().await.unwrap(),
            _ => drop(dirty),
        }
        let mut next = proxy.app(Some(&s)).await;
        let after = observe(&mut next).await;
        assert_eq!(
            after.5, pristine.5,
            "the same backend thread must be reused, or this proves nothing"
        );
        assert_eq!(
            after, pristine,
            "left by a session that ended with {leave_how}"
        );
        let err = next
            .query_drop("SELECT * FROM tmp_secret")
            .await
            .unwrap_err();
        assert!(format!("{err}").contains("doesn't exist"), "{err}");
        drop(next);
    }
    assert!(proxy.snapshot().backend_resets >= 2);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_sessions_each_keep_their_own_state() {
    let db = MariaDb::shared();
    let (s1, s2) = (schema(db, "left"), schema(db, "right"));
    let proxy = TestProxy::start(db, 1).await;
    let mut a = proxy.app(Some(&s1)).await;
    let mut b = proxy.app(None).await;
    a.query_drop("SET NAMES latin1 COLLATE latin1_bin")
        .await
        .unwrap();
    b.query_drop(format!("USE `{s2}`")).await.unwrap();
    a.query_drop("SET autocommit = 0").await.unwrap();
    for _ in 0..3 {
        let (db_a, cs_a, coll_a, ac_a): (String, String, String, i64) = a
            .query_first(
                "SELECT DATABASE(), @@character_set_client, @@collation_connection, @@autocommit",
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (db_a.as_str(), cs_a.as_str(), coll_a.as_str(), ac_a),
            (s1.as_str(), "latin1", "latin1_bin", 0)
        );
        a.query_drop("COMMIT").await.unwrap();
        let (db_b, cs_b, ac_b): (String, String, i64) = b
            .query_first("SELECT DATABASE(), @@character_set_client, @@autocommit")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (db_b.as_str(), cs_b.as_str(), ac_b),
            (s2.as_str(), "utf8mb4", 1)
        );
    }
    // None of this needed a pin: schema, character set and autocommit are replayed.
    assert_eq!(proxy.snapshot().pins_all(), 0);
    let mut fresh = proxy.app(None).await;
    let d: Option<Option<String>> = fresh.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(
        d,
        Some(None),
        "a session without a schema must not inherit one"
    );
    drop((a, b, fresh));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pin_reason_is_counted_and_released_with_the_session() {
    let db = MariaDb::shared();
    let s = schema(db, "pins");
    db.sql(&format!(
        "CREATE TABLE `{s}`.t (a INT); CREATE PROCEDURE `{s}`.sets_var() SET @from_proc = 1"
    ))
    .unwrap();
    let proxy = TestProxy::start(db, 4).await;
    let cases: &[(&str, PinReason)] = &[
        ("SET @v = 1", PinReason::UserVariable),
        ("SELECT 1 INTO @w", PinReason::UserVariable),
        (
            "SET SESSION max_sp_recursion_depth = 5",
            PinReason::SessionVariable,
        ),
        (
            "CREATE TEMPORARY TABLE tt (a INT)",
            PinReason::TemporaryTable,
        ),
        ("DO GET_LOCK('pin-test', 0)", PinReason::NamedLock),
        ("LOCK TABLES t READ", PinReason::TableLock),
        ("PREPARE st FROM 'SELECT 1'", PinReason::SqlPrepare),
        ("XA START 'pin-test-xa'", PinReason::Xa),
        ("HANDLER t OPEN", PinReason::Handler),
        ("CALL sets_var()", PinReason::UnknownStateChange),
    ];
    for (sql, reason) in cases {
        let before = proxy.snapshot().pins(*reason);
        let mut c = proxy.app(Some(&s)).await;
        c.query_drop(*sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let snap = proxy.snapshot();
        assert_eq!(
            snap.pins(*reason),
            before + 1,
            "{sql} should pin for {reason}"
        );
        assert_eq!(snap.pinned_now(*reason), 1, "{sql}");
        drop(c);
        // The gauge falls back when the session ends.
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.snapshot().pinned_now(*reason) != 0 {
            assert!(Instant::now() < deadline, "{sql}: pin gauge stuck");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // A pinned session keeps working across transactions on its connection.
    let mut c = proxy.app(Some(&s)).await;
    c.query_drop("SET @keep = 1").await.unwrap();
    let v: Option<i32> = c.exec_first("SELECT ? + @keep", (5,)).await.unwrap();
    assert_eq!(v, Some(6));
    let v: Option<i32> = c.exec_first("SELECT ? + @keep + 1", (5,)).await.unwrap();
    assert_eq!(v, Some(7));
    drop(c);
    // Pinned sessions hold connections: after they end, the pool has them all back, reset.
    let (open, idle) = proxy
        .wait_pool(Duration::from_secs(5), |open, idle| open == idle)
        .await;
    assert_eq!(open, idle);
    assert!(server_connections(db, "app").await <= 4);
    proxy.stop().await;
}
