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
/// of 8: no errors but the deadlocks InnoDB itself detects between the workload's transactions
/// (sysbench retries those; they happen directly too), no pins.
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
        tls_dir: None,
    };
    let deadlocks = global_status(db, "Innodb_deadlocks").await;
    let sample = tokio::task::spawn_blocking(move || sysbench.run(addr, &run))
        .await
        .unwrap()
        .unwrap();
    let deadlocks = global_status(db, "Innodb_deadlocks").await - deadlocks;
    let snap = proxy.snapshot();
    println!("{sample:?} pins {}", snap.pins_all());
    assert!(sample.tps > 0.0, "{sample:?}");
    // Any other error would have been fatal to sysbench (run() fails on a non-zero exit).
    assert!(
        sample.ignored_errors <= deadlocks,
        "{sample:?}: more ignored errors than the server's {deadlocks} deadlocks"
    );
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
        // A user variable set to NULL still exists (the server lists it in
        // user_variables_by_thread), so only a reset gives the connection back.
        (UserVariable, &["SET @a = 1", "SET @a = NULL"], &[]),
        (UserVariable, &["SELECT 1, 2 INTO @b, @c"], &[]),
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

fn stmt_id(prepare_ok: &[u8]) -> [u8; 4] {
    assert_eq!(prepare_ok[0], 0, "prepare OK: {prepare_ok:?}");
    prepare_ok[1..5].try_into().unwrap()
}

/// COM_STMT_EXECUTE of a one-parameter statement: `types` when binding, then the value.
fn execute(id: [u8; 4], types: Option<[u8; 2]>, value: &[u8]) -> Vec<u8> {
    let mut p = vec![0x17];
    p.extend_from_slice(&id);
    p.extend_from_slice(&[0, 1, 0, 0, 0]); // no cursor, one iteration
    p.push(0); // null bitmap
    match types {
        Some(t) => {
            p.push(1);
            p.extend_from_slice(&t);
        }
        None => p.push(0),
    }
    p.extend_from_slice(value);
    p
}

/// The string in the single-column binary row of a result.
fn binary_string(result: &[common::raw::Packet]) -> String {
    let row = &result[result.len() - 2].payload;
    assert_eq!(row[0], 0, "binary row: {result:?}");
    let len = usize::from(row[2]);
    String::from_utf8(row[3..3 + len].to_vec()).unwrap()
}

/// A statement prepared on one backend connection runs on another: Sluice prepares it there
/// and sends the parameter types the client bound once, since the client sends only values
/// afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_follow_the_session_to_other_connections() {
    let db = MariaDb::shared();
    let s = schema(db, "follow");
    let proxy = TestProxy::start(db, 2).await;
    let mut x = proxy.raw_app(Some(&s), common::raw::default_caps()).await;
    x.write(0, b"\x16SELECT CONCAT('v=', ?)").await;
    let prep = x.read().await.unwrap();
    let id = stmt_id(&prep.payload);
    for _ in 0..4 {
        x.read().await.unwrap(); // parameter, EOF, column, EOF
    }
    const LONGLONG: [u8; 2] = [0x08, 0x00];
    x.write(0, &execute(id, Some(LONGLONG), &5i64.to_le_bytes()))
        .await;
    assert_eq!(binary_string(&x.read_result().await), "v=5");
    assert_eq!(proxy.pool.counts().0, 1);
    // Another session takes that connection into a transaction; x must use a second one,
    // where the statement was never prepared, with types it does not send again.
    let mut y = proxy.app(Some(&s)).await;
    y.query_drop("BEGIN").await.unwrap();
    y.query_drop("SELECT 1").await.unwrap();
    x.write(0, &execute(id, None, &7i64.to_le_bytes())).await;
    assert_eq!(binary_string(&x.read_result().await), "v=7");
    assert_eq!(proxy.pool.counts().0, 2, "x ran on a second connection");
    // y prepares the same text with a string parameter on its connection; then x goes back
    // there (y commits) and again sends only a value.
    let v: Option<String> = y
        .exec_first("SELECT CONCAT('v=', ?)", ("text",))
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("v=text"));
    y.query_drop("COMMIT").await.unwrap();
    let mut z = proxy.app(Some(&s)).await;
    z.query_drop("BEGIN").await.unwrap();
    z.query_drop("SELECT 1").await.unwrap();
    for n in [9i64, 11] {
        x.write(0, &execute(id, None, &n.to_le_bytes())).await;
        assert_eq!(binary_string(&x.read_result().await), format!("v={n}"));
    }
    z.query_drop("COMMIT").await.unwrap();
    assert_eq!(proxy.snapshot().pins_all(), 0);
    drop((y, z));
    proxy.stop().await;
}

/// A server's global status counter.
async fn global_status(db: &MariaDb, name: &str) -> u64 {
    let mut root = db.root_conn().await.unwrap();
    let v: Option<(String, u64)> = root
        .query_first(format!("SHOW GLOBAL STATUS LIKE '{name}'"))
        .await
        .unwrap();
    v.unwrap().1
}

/// Each backend connection prepares a statement once, whichever sessions execute it, and keeps
/// at most `max_prepared_statements_per_connection`, closing the least recently used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_prepared_once_per_connection_within_a_bound() {
    let db = MariaDb::start().unwrap();
    let s = schema(&db, "once");
    let mut config = config_for(&db, 2);
    config.backend.max_prepared_statements_per_connection = 4;
    let proxy = TestProxy::start_with(&db, config).await;
    let prepares = global_status(&db, "Com_stmt_prepare").await;
    let executes = global_status(&db, "Com_stmt_execute").await;
    let mut tasks = Vec::new();
    for session in 0..8i64 {
        let mut c = proxy.app(Some(&s)).await;
        tasks.push(tokio::spawn(async move {
            for round in 0..10i64 {
                for n in 0..3 {
                    let got: Option<i64> = c
                        .exec_first(format!("SELECT ? + {n}"), (session * 100 + round,))
                        .await
                        .unwrap();
                    assert_eq!(got, Some(session * 100 + round + n));
                }
            }
            c.disconnect().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let prepared = global_status(&db, "Com_stmt_prepare").await - prepares;
    let executed = global_status(&db, "Com_stmt_execute").await - executes;
    assert_eq!(executed, 8 * 10 * 3);
    assert!(
        prepared <= 2 * 3,
        "{prepared} prepares for 3 statements on 2 connections"
    );
    // Ten statements through one session: the server holds at most 4 per connection, and an
    // evicted statement is prepared again when it runs again.
    let mut c = proxy.app(Some(&s)).await;
    for round in 0..2 {
        for n in 0..10i64 {
            let got: Option<i64> = c
                .exec_first(format!("SELECT ? * {n}"), (round + 1,))
                .await
                .unwrap();
            assert_eq!(got, Some((round + 1) * n));
        }
    }
    let held = global_status(&db, "Prepared_stmt_count").await;
    assert!(held <= 2 * 4, "the server holds {held} statements");
    assert_eq!(proxy.snapshot().pins_all(), 0);
    drop(c);
    proxy.stop().await;
}

/// LAST_INSERT_ID(), ROW_COUNT() and FOUND_ROWS() answer for the session even when another
/// session used the only backend connection in between, with the column a direct connection
/// would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_belong_to_the_session() {
    let db = MariaDb::shared();
    let s = schema(db, "counters");
    db.sql(&format!(
        "CREATE TABLE `{s}`.t (id INT AUTO_INCREMENT PRIMARY KEY, v INT); \
         INSERT INTO `{s}`.t (v) VALUES (0),(0),(0),(0),(0),(0),(0),(0),(0),(0)"
    ))
    .unwrap();
    let proxy = TestProxy::start(db, 1).await;
    let mut a = proxy.app(Some(&s)).await;
    let mut b = proxy.app(Some(&s)).await;

    a.query_drop("INSERT INTO t (v) VALUES (1)").await.unwrap();
    let a_id = a.last_insert_id().unwrap();
    b.query_drop("INSERT INTO t (v) VALUES (2), (3)")
        .await
        .unwrap();
    assert_ne!(b.last_insert_id(), Some(a_id));
    let got: Option<u64> = a.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
    assert_eq!(got, Some(a_id));
    b.query_drop("SELECT 1").await.unwrap();
    let got: Option<u64> = a
        .exec_first("SELECT LAST_INSERT_ID() + ?", (0,))
        .await
        .unwrap();
    assert_eq!(got, Some(a_id), "prepared");

    a.query_drop("UPDATE t SET v = v + 1 WHERE id <= 3")
        .await
        .unwrap();
    b.query_drop("UPDATE t SET v = v + 1 WHERE id <= 5")
        .await
        .unwrap();
    let got: Option<i64> = a.query_first("SELECT ROW_COUNT()").await.unwrap();
    assert_eq!(got, Some(3));

    a.query_drop("SELECT SQL_CALC_FOUND_ROWS id FROM t LIMIT 2")
        .await
        .unwrap();
    b.query_drop("SELECT id FROM t LIMIT 4").await.unwrap();
    let got: Option<u64> = a.query_first("SELECT FOUND_ROWS()").await.unwrap();
    assert_eq!(got, Some(13));
    a.query_drop("SELECT id FROM t LIMIT 3").await.unwrap();
    b.query_drop("SELECT 1").await.unwrap();
    let got: Option<u64> = a.query_first("SELECT FOUND_ROWS()").await.unwrap();
    assert_eq!(got, Some(3));

    // The columns look as they do on a dedicated connection.
    let mut direct = mysql_async::Conn::new(db.opts("app", db.app_password(), Some(&s)))
        .await
        .unwrap();
    for sql in [
        "SELECT ROW_COUNT()",
        "SELECT FOUND_ROWS()",
        "SELECT LAST_INSERT_ID()",
    ] {
        b.query_drop("SELECT 1").await.unwrap();
        let through = a.query_iter(sql).await.unwrap();
        let cols: Vec<_> = through
            .columns_ref()
            .iter()
            .map(|c| (c.name_str().into_owned(), c.column_type(), c.flags()))
            .collect();
        drop(through);
        let there = direct.query_iter(sql).await.unwrap();
        let want: Vec<_> = there
            .columns_ref()
            .iter()
            .map(|c| (c.name_str().into_owned(), c.column_type(), c.flags()))
            .collect();
        drop(there);
        assert_eq!(cols, want, "{sql}");
    }
    assert_eq!(proxy.snapshot().pins_all(), 0);
    drop((a, b, direct));
    proxy.stop().await;
}

/// A small deterministic generator, so a failing run can be repeated from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

/// Rows of a result, comparable between the two sides.
#[derive(Debug, PartialEq)]
struct RowsEq(Vec<Vec<mysql_async::Value>>);

fn server_code(e: &mysql_async::Error) -> u16 {
    match e {
        mysql_async::Error::Server(s) => s.code,
        other => panic!("not a server error: {other}"),
    }
}

/// What one step returned: rows, or affected rows and insert id, or a server error code.
type StepResult = (Option<RowsEq>, Option<(u64, Option<u64>)>, Option<u16>);

async fn collect<P: mysql_async::prelude::Protocol>(
    result: Result<mysql_async::QueryResult<'_, '_, P>, mysql_async::Error>,
) -> StepResult {
    match result {
        Ok(mut r) => {
            let rows: Result<Vec<mysql_async::Row>, _> = r.collect().await;
            let (affected, id) = (r.affected_rows(), r.last_insert_id());
            drop(r);
            match rows {
                Ok(rows) if !rows.is_empty() => (
                    Some(RowsEq(rows.into_iter().map(|r| r.unwrap()).collect())),
                    None,
                    None,
                ),
                Ok(_) => (None, Some((affected, id)), None),
                Err(e) => (None, None, Some(server_code(&e))),
            }
        }
        Err(e) => (None, None, Some(server_code(&e))),
    }
}

/// Runs one step on a connection: a text query or a prepared statement with parameters.
async fn step(
    c: &mut mysql_async::Conn,
    sql: &str,
    params: Option<mysql_async::Params>,
) -> StepResult {
    match params {
        Some(p) => collect(c.exec_iter(sql, p).await).await,
        None => collect(c.query_iter(sql).await).await,
    }
}

/// Many sessions at once, each setting random replayable variables, schemas and isolation
/// levels, preparing statements and inserting rows through a pool of 3. Each runs every step
/// on a dedicated connection to the server too, and what the two return must be the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_sessions_see_what_a_dedicated_connection_would() {
    const SESSIONS: u64 = 12;
    const STEPS: usize = 60;
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 3).await;
    // Schema k of a side: <base>_p_k through Sluice, <base>_d_k directly.
    let base = schema(db, "iso");
    let mut setup = String::new();
    for side in ["p", "d"] {
        for k in 0..2 {
            let name = format!("{base}_{side}_{k}");
            setup.push_str(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4;"));
            for i in 0..SESSIONS {
                setup.push_str(&format!(
                    "CREATE TABLE `{name}`.t{i} (id INT AUTO_INCREMENT PRIMARY KEY, \
                     v VARCHAR(64), ts DATETIME, k INT);"
                ));
            }
        }
    }
    db.sql(&setup).unwrap();
    // SLUICE_TEST_SEED repeats a run.
    let seed = std::env::var("SLUICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    println!("seed {seed}");
    let mut tasks = Vec::new();
    for i in 0..SESSIONS {
        let through = proxy.opts("app", &proxy.app_password, Some(&format!("{base}_p_0")));
        let direct = db.opts("app", db.app_password(), Some(&format!("{base}_d_0")));
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed.wrapping_mul(i + 1) | 1);
            let mut p = mysql_async::Conn::new(through).await.unwrap();
            let mut d = mysql_async::Conn::new(direct).await.unwrap();
            for n in 0..STEPS {
                let (sql, params): (String, Option<mysql_async::Params>) = match rng.next() % 12 {
                    0 => (
                        format!(
                            "SET SESSION sql_mode = '{}'",
                            rng.pick(&[
                                "",
                                "ANSI_QUOTES",
                                "STRICT_ALL_TABLES",
                                "PIPES_AS_CONCAT,NO_ZERO_DATE"
                            ])
                        ),
                        None,
                    ),
                    1 => (
                        format!(
                            "SET time_zone = '{}'",
                            rng.pick(&["+00:00", "+05:30", "-08:00"])
                        ),
                        None,
                    ),
                    2 => (
                        format!(
                            "SET SESSION TRANSACTION ISOLATION LEVEL {}",
                            rng.pick(&[
                                "READ COMMITTED",
                                "REPEATABLE READ",
                                "SERIALIZABLE",
                                "READ UNCOMMITTED"
                            ])
                        ),
                        None,
                    ),
                    3 => (
                        rng.pick(&[
                            "SET NAMES utf8mb4",
                            "SET NAMES latin1",
                            "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
                            "SET character_set_results = NULL",
                        ])
                        .to_string(),
                        None,
                    ),
                    4 => (format!("USE `{base}_{{side}}_{}`", rng.next() % 2), None),
                    5 => (
                        format!(
                            "SET SESSION div_precision_increment = {}, group_concat_max_len = {}",
                            rng.next() % 10,
                            4 + rng.next() % 100
                        ),
                        None,
                    ),
                    6 | 7 => (
                        format!("INSERT INTO t{i} (v, ts, k) VALUES (?, FROM_UNIXTIME(?), ?)"),
                        Some(mysql_async::Params::from((
                            format!("s{i}-{n}-é"),
                            86_400 * (rng.next() % 1000),
                            (rng.next() % 5) as i64,
                        ))),
                    ),
                    8 => (
                        format!("SELECT id, v, ts, k FROM t{i} WHERE k >= ? ORDER BY id"),
                        Some(mysql_async::Params::from(((rng.next() % 5) as i64,))),
                    ),
                    9 => (
                        format!(
                            "UPDATE t{i} SET v = CONCAT(v, 'x') WHERE k = {}",
                            rng.next() % 5
                        ),
                        None,
                    ),
                    10 => (
                        "SELECT ROW_COUNT(), LAST_INSERT_ID(), FOUND_ROWS()".to_owned(),
                        None,
                    ),
                    _ => (
                        "SELECT @@sql_mode, @@time_zone, @@tx_isolation, \
                         @@character_set_client, @@collation_connection, \
                         @@character_set_results, @@div_precision_increment, \
                         @@group_concat_max_len, SUBSTRING_INDEX(DATABASE(), '_', -1), \
                         1/7, FROM_UNIXTIME(86400), GROUP_CONCAT(v), COUNT(*) FROM t{i}"
                            .replace("{i}", &i.to_string()),
                        None,
                    ),
                };
                let through_sql = sql.replace("{side}", "p");
                let direct_sql = sql.replace("{side}", "d");
                let got = step(&mut p, &through_sql, params.clone()).await;
                let want = step(&mut d, &direct_sql, params).await;
                if std::env::var("SLUICE_TEST_TRACE").is_ok_and(|v| v == i.to_string()) {
                    println!("{n}: {through_sql}\n   {got:?}\n   {want:?}");
                }
                assert_eq!(
                    got, want,
                    "session {i}, step {n}: {through_sql} (seed {seed})"
                );
            }
            drop((p, d));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every statement here is replayable: nothing pinned.
    assert_eq!(
        proxy.snapshot().pins_all(),
        0,
        "{:?}",
        proxy.snapshot().pins_total
    );
    proxy.stop().await;
}

/// Variables a stored procedure sets are reported by session tracking and kept as the
/// session's. The session is pinned all the same: the procedure may also have set user
/// variables or created temporary tables, which tracking reports only as "state changed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procedures_that_change_state_pin_and_keep_their_variables() {
    let db = MariaDb::shared();
    let s = schema(db, "proc");
    // Through a client library: the CLI would split the body at its semicolons.
    let mut root = db.root_conn().await.unwrap();
    root.query_drop(format!(
        "CREATE PROCEDURE `{s}`.configure() \
         BEGIN SET time_zone = '+07:00'; SET @inside = 1; END"
    ))
    .await
    .unwrap();
    drop(root);
    let proxy = TestProxy::start(db, 2).await;
    let mut a = proxy.app(Some(&s)).await;
    let mut b = proxy.app(Some(&s)).await;
    a.query_drop("CALL configure()").await.unwrap();
    assert_eq!(
        proxy.snapshot().pinned_now(PinReason::UnknownStateChange),
        1
    );
    let probe = "SELECT @@time_zone, @inside";
    for _ in 0..3 {
        let theirs: (String, Option<i64>) = b.query_first(probe).await.unwrap().unwrap();
        assert_eq!(theirs.1, None, "another session must not see @inside");
        assert_ne!(theirs.0, "+07:00");
        let mine: (String, Option<i64>) = a.query_first(probe).await.unwrap().unwrap();
        assert_eq!(mine, ("+07:00".to_owned(), Some(1)));
    }
    // A reset clears the procedure's state and the pin.
    a.reset().await.unwrap();
    assert_eq!(proxy.snapshot().pins_all(), 1);
    assert_eq!(
        proxy.snapshot().pinned_now(PinReason::UnknownStateChange),
        0
    );
    let mine: (String, Option<i64>) = a.query_first(probe).await.unwrap().unwrap();
    assert_eq!(mine.1, None);
    drop((a, b));
    proxy.stop().await;
}

/// Two statements of one session with the same text, each with an open cursor: the second gets
/// its own server statement, so fetching from one does not disturb the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cursors_on_the_same_text_stay_apart() {
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 2).await;
    let mut raw = proxy
        .raw_app(Some("mysql"), common::raw::default_caps())
        .await;
    async fn prepare(raw: &mut common::raw::Raw) -> [u8; 4] {
        raw.write(0, b"\x16SELECT seq FROM seq_1_to_10").await;
        let id = stmt_id(&raw.read().await.unwrap().payload);
        raw.read().await.unwrap(); // column definition
        assert!(raw.read().await.unwrap().is_eof());
        id
    }
    let a = prepare(&mut raw).await;
    let b = prepare(&mut raw).await;
    assert_ne!(a, b);
    let open = |id: [u8; 4]| {
        let mut exec = vec![0x17];
        exec.extend_from_slice(&id);
        exec.extend_from_slice(&[1, 1, 0, 0, 0]); // CURSOR_TYPE_READ_ONLY
        exec
    };
    let fetch = |id: [u8; 4], n: u32| {
        let mut p = vec![0x1c];
        p.extend_from_slice(&id);
        p.extend_from_slice(&n.to_le_bytes());
        p
    };
    // Binary rows of one BIGINT column: 0x00, null bitmap, 8 bytes.
    async fn rows(raw: &mut common::raw::Raw) -> Vec<u64> {
        let mut out = Vec::new();
        loop {
            let p = raw.read().await.unwrap();
            assert_eq!(p.err_code(), None, "{}", p.err_message());
            if p.is_eof() {
                return out;
            }
            out.push(u64::from_le_bytes(p.payload[2..10].try_into().unwrap()));
        }
    }
    for id in [a, b] {
        raw.write(0, &open(id)).await;
        assert_eq!(raw.read().await.unwrap().payload, vec![1]);
        raw.read().await.unwrap();
        assert!(raw.read().await.unwrap().is_eof());
    }
    raw.write(0, &fetch(a, 3)).await;
    assert_eq!(rows(&mut raw).await, vec![1, 2, 3]);
    raw.write(0, &fetch(b, 2)).await;
    assert_eq!(rows(&mut raw).await, vec![1, 2]);
    raw.write(0, &fetch(a, 3)).await;
    assert_eq!(rows(&mut raw).await, vec![4, 5, 6]);
    assert_eq!(proxy.snapshot().pins_all(), 0);
    proxy.stop().await;
}
