//! Multiplexing without pinning: session state replayed on whichever backend connection a
//! session borrows, virtual prepared statements, the session's own LAST_INSERT_ID(),
//! ROW_COUNT() and FOUND_ROWS(), and the pins that remain, each released by the statement that
//! clears its state.

mod common;

use std::time::Duration;

use common::{TestProxy, config_for, schema};
use mysql_async::prelude::*;
use sluice::PinReason;
use sluice_testkit::MariaDb;
use sluice_testkit::sysbench::{Run, Sysbench};

/// sysbench oltp_read_write with its server-side prepared statements, 64 threads over a pool
/// of 8: no errors, no pins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysbench_read_write_with_prepared_statements_never_pins() {
    let db = MariaDb::shared();
    let s = schema(db, "sb");
    let mut sysbench = Sysbench::new(db.app_password(), 8, 10_000).unwrap();
    sysbench.schema = s.clone();
    let proxy = TestProxy::start(db, 8).await;
    let addr = proxy.addr;
    let prep = sysbench.clone();
    tokio::task::spawn_blocking(move || prep.prepare(addr))
        .await
        .unwrap()
        .unwrap();
    let run = Run {
        workload: "oltp_read_write".to_owned(),
        threads: 64,
        seconds: 8,
        prepared: true,
    };
    let sample = tokio::task::spawn_blocking(move || sysbench.run(addr, &run))
        .await
        .unwrap()
        .unwrap();
    let snap = proxy.snapshot();
    println!("{sample:?} pins {}", snap.pins_all());
    assert!(sample.tps > 0.0, "{sample:?}");
    assert_eq!(sample.ignored_errors, 0, "{sample:?}");
    assert_eq!(sample.reconnects, 0, "{sample:?}");
    assert_eq!(snap.pins_all(), 0, "{:?}", snap.pins_total);
    let (open, _, _) = proxy.pool.counts();
    assert!(open <= 8, "{open} backend connections");
    proxy.stop().await;
}

/// Every pin reason that remains is counted, and the statement that clears its state (or a
/// session reset) releases the session: its connection goes back to the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_remaining_pin_is_released_by_its_clearing_statement() {
    use PinReason::*;
    let db = MariaDb::shared();
    let s = schema(db, "unpin");
    db.sql(&format!(
        "CREATE TABLE `{s}`.t (a INT); CREATE PROCEDURE `{s}`.sets_var() SET @from_proc = 1"
    ))
    .unwrap();
    let proxy = TestProxy::start(db, 4).await;
    // (reason, statements that create the state, statements that clear it; none: a reset)
    let cases: &[(PinReason, &[&str], &[&str])] = &[
        (UserVariable, &["SET @a = 1"], &["SET @a = NULL"]),
        (
            UserVariable,
            &["SELECT 1, 2 INTO @b, @c"],
            &["SET @b = NULL, @c = NULL"],
        ),
        (
            TemporaryTable,
            &["CREATE TEMPORARY TABLE tt (a INT)"],
            &["DROP TEMPORARY TABLE tt"],
        ),
        (
            NamedLock,
            &["DO GET_LOCK('unpin-a', 0)", "DO GET_LOCK('unpin-a', 0)"],
            &["DO RELEASE_LOCK('unpin-a')", "DO RELEASE_LOCK('unpin-a')"],
        ),
        (
            NamedLock,
            &["DO GET_LOCK('unpin-b', 0), GET_LOCK('unpin-c', 0)"],
            &["DO RELEASE_ALL_LOCKS()"],
        ),
        (TableLock, &["LOCK TABLES t READ"], &["UNLOCK TABLES"]),
        (
            SqlPrepare,
            &["PREPARE st FROM 'SELECT 1'"],
            &["DEALLOCATE PREPARE st"],
        ),
        (
            Xa,
            &["XA START 'unpin-xa'"],
            &["XA END 'unpin-xa'", "XA COMMIT 'unpin-xa' ONE PHASE"],
        ),
        (Handler, &["HANDLER t OPEN"], &["HANDLER t CLOSE"]),
        (
            SessionVariable,
            &["SET SESSION max_sp_recursion_depth = 3"],
            &[],
        ),
        (UnknownStateChange, &["CALL sets_var()"], &[]),
    ];
    for (reason, create, clear) in cases {
        let before_all = proxy.snapshot().pins_all();
        let before = proxy.snapshot().pins(*reason);
        let mut c = proxy.app(Some(&s)).await;
        for sql in *create {
            c.query_drop(*sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let snap = proxy.snapshot();
        assert_eq!(
            snap.pins(*reason),
            before + 1,
            "{create:?} pins for {reason}"
        );
        assert_eq!(snap.pinned_now(*reason), 1, "{create:?}");
        assert_eq!(
            snap.pins_all(),
            before_all + 1,
            "{create:?}: {:?}",
            snap.pins_total
        );
        if clear.is_empty() {
            c.reset().await.unwrap();
        }
        for sql in *clear {
            c.query_drop(*sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        assert_eq!(
            proxy.snapshot().pinned_now(*reason),
            0,
            "{clear:?} must release {reason}"
        );
        // The session lives on, multiplexed again: its connection is back in the pool.
        let (open, idle) = proxy
            .wait_pool(Duration::from_secs(5), |open, idle| open == idle)
            .await;
        assert_eq!(
            open, idle,
            "{reason}: the connection stayed with the session"
        );
        let one: Option<i32> = c.query_first("SELECT 1").await.unwrap();
        assert_eq!(one, Some(1));
        drop(c);
    }
    proxy.stop().await;
}

/// What mysql_async, PyMySQL and the `mariadb` CLI send at connect (and what applications add
/// there: SET NAMES, sql_mode, time_zone, isolation level, autocommit) is replayed, not pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_time_sets_of_real_clients_do_not_pin() {
    let db = MariaDb::shared();
    let s = schema(db, "sets");
    // One backend connection: every session's state must be put in place on it each time.
    let proxy = TestProxy::start(db, 1).await;
    let configured = proxy.opts("app", &proxy.app_password, Some(&s)).init(vec![
        "SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci",
        "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'",
        "SET time_zone = '+03:00'",
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        "SET SESSION wait_timeout = 600",
        "SET autocommit = 1",
    ]);
    let mut a = mysql_async::Conn::new(configured).await.unwrap();
    let mut plain = proxy.app(Some(&s)).await;
    let probe = "SELECT @@collation_connection, @@sql_mode, @@time_zone, @@tx_isolation, \
                 @@wait_timeout";
    let defaults: (String, String, String, String, u32) =
        plain.query_first(probe).await.unwrap().unwrap();
    for _ in 0..3 {
        let got: (String, String, String, String, u32) =
            a.query_first(probe).await.unwrap().unwrap();
        assert_eq!(
            got,
            (
                "utf8mb4_unicode_ci".to_owned(),
                "STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION".to_owned(),
                "+03:00".to_owned(),
                "READ-COMMITTED".to_owned(),
                600
            )
        );
        let other: (String, String, String, String, u32) =
            plain.query_first(probe).await.unwrap().unwrap();
        assert_eq!(
            other, defaults,
            "the plain session must not see the other's state"
        );
    }
    assert_eq!(
        proxy.snapshot().pins_all(),
        0,
        "{:?}",
        proxy.snapshot().pins_total
    );

    let port = proxy.addr.port().to_string();
    let out = sluice_testkit::pymysql_async(
        "tests/clients/pymysql_session.py",
        &["127.0.0.1", &port, "app", &proxy.app_password, &s],
        &[],
    )
    .await
    .unwrap();
    let stdout = sluice_testkit::stdout_if_success(&out).unwrap();
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({
            "sql_mode": "ANSI_QUOTES",
            "time_zone": "+05:00",
            "autocommit": 1,
            "character_set_client": "utf8mb4",
            "quoted": "ok"
        })
    );
    assert_eq!(
        proxy.snapshot().pins_all(),
        0,
        "PyMySQL: {:?}",
        proxy.snapshot().pins_total
    );

    let out = sluice_testkit::mariadb_cli_async(
        proxy.addr,
        "app",
        &proxy.app_password,
        Some(&s),
        &[
            "--init-command=SET sql_mode='ANSI', time_zone='-02:00'",
            "--batch",
            "--skip-column-names",
            "-e",
            "SELECT @@sql_mode, @@time_zone",
        ],
        None,
    )
    .await
    .unwrap();
    let stdout = sluice_testkit::stdout_if_success(&out).unwrap();
    assert!(stdout.trim_end().ends_with("\t-02:00"), "{stdout}");
    assert!(
        stdout.starts_with("REAL_AS_FLOAT,PIPES_AS_CONCAT,ANSI_QUOTES"),
        "{stdout}"
    );
    assert_eq!(
        proxy.snapshot().pins_all(),
        0,
        "mariadb CLI: {:?}",
        proxy.snapshot().pins_total
    );
    let after: (String, String, String, String, u32) =
        plain.query_first(probe).await.unwrap().unwrap();
    assert_eq!(after, defaults);
    drop((a, plain));
    proxy.stop().await;
}
