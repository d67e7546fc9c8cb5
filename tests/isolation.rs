//! Regression tests, one per way a session's state once reached another session (or failed
//! another session) through a shared connection, each with a real client (mysql_async) and,
//! mostly, a pool of one connection so that the next session gets the same backend connection.

mod common;

use std::time::Duration;

use common::{TestProxy, config_for, schema};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};
use sluice::ResetReason;
use sluice_testkit::MariaDb;

/// A session through `proxy` in `s`, allowing multi-statement queries.
async fn session(proxy: &TestProxy, s: &str) -> Conn {
    let opts = proxy
        .opts("app", &proxy.app_password, Some(s))
        .client_found_rows(false);
    Conn::new(Opts::from(opts))
        .await
        .expect("login through Sluice")
}

/// A session directly to the database.
async fn direct(db: &MariaDb, s: &str) -> Conn {
    Conn::new(Opts::from(db.opts("app", db.app_password(), Some(s))))
        .await
        .expect("direct login")
}

async fn one<T: FromRow + Send + 'static>(c: &mut Conn, sql: &str) -> T {
    c.query_first(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// A raw protocol session as `app` in schema `s`, through Sluice or directly.
async fn raw_session(
    db: &MariaDb,
    p: &TestProxy,
    through: bool,
    s: &str,
    caps: sluice::protocol::CapabilityFlags,
) -> common::raw::Raw {
    if through {
        p.raw_app(Some(s), caps).await
    } else {
        common::raw::Raw::login(db.addr(), "app", db.app_password(), Some(s), caps).await
    }
}

/// Sluice with a pool of `n` and a short borrow timeout, in front of the shared MariaDB.
async fn proxy(db: &MariaDb, n: usize) -> TestProxy {
    let mut config = config_for(db, n);
    config.backend.borrow_timeout = Duration::from_secs(5);
    TestProxy::start_with(db, config).await
}

fn long_comment() -> String {
    format!("/* {} */", "x".repeat(70_000))
}

/// Locks taken in forms a naive reading of the text misses hold the session; clearing text
/// the server skips clears nothing; the next session (on the same backend connection) finds
/// the locks free and the table writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_locks_hold_the_session_and_never_reach_the_next() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_locks");
    db.sql(&format!("CREATE TABLE `{s}`.t (a INT)")).unwrap();
    let p = proxy(db, 1).await;
    let lock = |name: &str| format!("{s}_{name}");
    let cases: Vec<(String, String)> = vec![
        // Past the first 64 KiB of the statement.
        (
            format!(
                "SELECT '{}' IS NOT NULL, GET_LOCK('{}', 0)",
                "y".repeat(70_000),
                lock("long")
            ),
            lock("long"),
        ),
        (
            format!("/*!50100 SELECT GET_LOCK('{}', 0) */", lock("exec")),
            lock("exec"),
        ),
        (
            format!("/*M!100100 DO GET_LOCK('{}', 0) */", lock("maria")),
            lock("maria"),
        ),
        // A name with a quote in it, and a backslash escape.
        (
            format!(r"SELECT GET_LOCK('{}\'q', 0)", lock("quote")),
            format!("{}'q", lock("quote")),
        ),
        (
            format!("{} LOCK TABLES t WRITE", long_comment()),
            String::new(),
        ),
    ];
    for (take, name) in &cases {
        let mut a = session(&p, &s).await;
        a.query_drop(take.as_str())
            .await
            .unwrap_or_else(|e| panic!("{take:.80}: {e}"));
        assert_eq!(
            p.session_holds(a.id()).await,
            Some(true),
            "{take:.80} must hold the session"
        );
        // Text that reads like a release but that the server skips releases nothing.
        if !name.is_empty() {
            let fake = format!("SELECT 1 /*!999999 , RELEASE_LOCK('{name}') */");
            a.query_drop(fake.as_str()).await.unwrap();
            assert_eq!(p.session_holds(a.id()).await, Some(true), "{fake}");
        }
        drop(a);
        let mut b = session(&p, &s).await;
        if !name.is_empty() {
            let free: i64 = b
                .exec_first("SELECT IS_FREE_LOCK(?)", (name.as_str(),))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(free, 1, "{take:.80}: the lock reached the next session");
        }
        b.query_drop("INSERT INTO t VALUES (1)")
            .await
            .unwrap_or_else(|e| panic!("{take:.80}: the next session cannot write: {e}"));
        drop(b);
    }
    assert!(
        p.snapshot()
            .resets(ResetReason::Pinned(sluice::PinReason::NamedLock))
            >= 4
    );
    p.stop().await;
}

/// `SET TRANSACTION READ ONLY` applies to the next transaction of its own session only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_transaction_mode_never_reaches_the_next_session() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_next_tx");
    db.sql(&format!("CREATE TABLE `{s}`.t (a INT)")).unwrap();
    let p = proxy(db, 1).await;
    for pending in ["SET TRANSACTION READ ONLY", "SET @@tx_read_only = 1"] {
        let mut a = session(&p, &s).await;
        a.query_drop(pending).await.unwrap();
        assert_eq!(p.session_holds(a.id()).await, Some(true), "{pending}");
        drop(a);
        let mut b = session(&p, &s).await;
        b.query_drop("START TRANSACTION").await.unwrap();
        b.query_drop("INSERT INTO t VALUES (1)")
            .await
            .unwrap_or_else(|e| panic!("after {pending}: {e}"));
        b.query_drop("COMMIT").await.unwrap();
        drop(b);
    }
    p.stop().await;
}

/// A temporary table a prepared statement creates inside a multi-statement query holds the
/// session, and never shadows the real table for the next session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_table_made_by_execute_never_reaches_the_next_session() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_temp");
    db.sql(&format!(
        "CREATE TABLE `{s}`.shadow (a INT); INSERT INTO `{s}`.shadow VALUES (1)"
    ))
    .unwrap();
    let p = proxy(db, 1).await;
    let mut a = session(&p, &s).await;
    a.query_drop(
        "PREPARE p FROM 'CREATE TEMPORARY TABLE shadow (a INT)'; EXECUTE p; DEALLOCATE PREPARE p",
    )
    .await
    .unwrap();
    assert_eq!(p.session_holds(a.id()).await, Some(true));
    let n: i64 = one(&mut a, "SELECT COUNT(*) FROM shadow").await;
    assert_eq!(n, 0, "the session sees its own temporary table");
    drop(a);
    let mut b = session(&p, &s).await;
    b.query_drop("INSERT INTO shadow VALUES (2)").await.unwrap();
    let n: i64 = one(&mut b, "SELECT COUNT(*) FROM shadow").await;
    assert_eq!(n, 2, "the next session writes the real table");
    p.stop().await;
}

/// A statement's warnings hold no connection: another session gets it at once, and each
/// session still sees its own diagnostics, never the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_belong_to_the_session_and_hold_nothing() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_diag");
    db.sql(&format!("CREATE TABLE `{s}`.t (a INT)")).unwrap();
    let p = proxy(db, 1).await;
    let mut a = session(&p, &s).await;
    let mut b = session(&p, &s).await;
    a.query_drop("SELECT 1/0").await.unwrap();
    assert_eq!(
        p.session_holds(a.id()).await,
        Some(false),
        "a warning holds nothing"
    );
    assert!(b.query_drop("SELECT nosuch FROM t").await.is_err());
    let a_warnings: Vec<(String, u32, String)> = a.query("SHOW WARNINGS").await.unwrap();
    assert_eq!(a_warnings.len(), 1);
    assert_eq!(a_warnings[0].1, 1365, "{a_warnings:?}");
    let a_errors: Vec<(String, u32, String)> = a.query("SHOW ERRORS").await.unwrap();
    assert!(a_errors.is_empty(), "another session's error: {a_errors:?}");
    let counts: (u64, u64) = one(&mut a, "SELECT @@warning_count, @@error_count").await;
    assert_eq!(counts, (1, 0));
    let b_errors: Vec<(String, u32, String)> = b.query("SHOW ERRORS").await.unwrap();
    assert_eq!(b_errors.len(), 1);
    assert_eq!(b_errors[0].1, 1054);
    let n: u64 = one(&mut b, "SHOW COUNT(*) ERRORS").await;
    assert_eq!(n, 1);
    p.stop().await;
}

/// `COMMIT RELEASE` (and `completion_type = RELEASE`) end the session as the server does;
/// the next session gets a working connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_ends_the_session_and_the_next_one_works() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_release");
    db.sql(&format!("CREATE TABLE `{s}`.t (a INT)")).unwrap();
    let p = proxy(db, 1).await;
    for ending in [
        vec!["BEGIN", "INSERT INTO t VALUES (1)", "COMMIT RELEASE"],
        vec!["BEGIN", "ROLLBACK AND NO CHAIN RELEASE"],
        vec!["SET SESSION completion_type = 'RELEASE'", "BEGIN", "COMMIT"],
    ] {
        let mut a = session(&p, &s).await;
        for sql in &ending {
            a.query_drop(*sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        assert!(
            a.query_drop("SELECT 1").await.is_err(),
            "{ending:?}: the session must be over"
        );
        let mut b = session(&p, &s).await;
        let one_: i64 = one(&mut b, "SELECT 1").await;
        assert_eq!(one_, 1, "after {ending:?}");
        let mode: String = one(&mut b, "SELECT @@completion_type").await;
        assert_eq!(mode, "NO_CHAIN");
    }
    p.stop().await;
}

/// A pooled connection the server closed while it was idle is never lent: the next session
/// works without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_is_not_lent() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_dead");
    let p = proxy(db, 1).await;
    let mut a = session(&p, &s).await;
    let thread: u64 = one(&mut a, "SELECT CONNECTION_ID()").await;
    drop(a);
    let mut root = db.root_conn().await.unwrap();
    root.query_drop(format!("KILL {thread}")).await.unwrap();
    let mut b = session(&p, &s).await;
    for _ in 0..3 {
        let n: i64 = one(&mut b, "SELECT 1").await;
        assert_eq!(n, 1);
    }
    p.stop().await;
}

/// `SET @@var` without a scope changes the session (MariaDB does not report it): it follows
/// the session and never reaches another; a variable Sluice cannot replay holds the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopeless_sets_follow_their_session_only() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_scopeless");
    let p = proxy(db, 2).await;
    let mut a = session(&p, &s).await;
    let mut b = session(&p, &s).await;
    let defaults: (String, String, Option<String>) = one(
        &mut b,
        "SELECT @@time_zone, @@sql_mode, @@character_set_results",
    )
    .await;
    a.query_drop("SET @@time_zone = '+03:00'").await.unwrap();
    a.query_drop("SET @@sql_mode = 'ANSI_QUOTES'")
        .await
        .unwrap();
    a.query_drop("/*!40101 SET @@character_set_results = binary */")
        .await
        .unwrap();
    assert_eq!(
        p.session_holds(a.id()).await,
        Some(false),
        "replayable: no pin"
    );
    for _ in 0..3 {
        let theirs: (String, String, Option<String>) = one(
            &mut b,
            "SELECT @@time_zone, @@sql_mode, @@character_set_results",
        )
        .await;
        assert_eq!(theirs, defaults);
        let mine: (String, String, Option<String>) = one(
            &mut a,
            "SELECT @@time_zone, @@sql_mode, @@character_set_results",
        )
        .await;
        assert_eq!(
            mine,
            ("+03:00".into(), "ANSI_QUOTES".into(), Some("binary".into()))
        );
    }
    a.query_drop("SET @@histogram_size = 10").await.unwrap();
    assert_eq!(
        p.session_holds(a.id()).await,
        Some(true),
        "unreplayable: pinned"
    );
    let theirs: u64 = one(&mut b, "SELECT @@histogram_size").await;
    assert_ne!(theirs, 10);
    p.stop().await;
}

/// `LAST_INSERT_ID(expr)` sets the session's value, whatever other sessions insert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_insert_id_with_an_argument_is_the_sessions() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_lii");
    db.sql(&format!(
        "CREATE TABLE `{s}`.t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)"
    ))
    .unwrap();
    let p = proxy(db, 1).await;
    let mut a = session(&p, &s).await;
    let mut b = session(&p, &s).await;
    a.query_drop("SELECT LAST_INSERT_ID(6)").await.unwrap();
    b.query_drop("INSERT INTO t (v) VALUES (1), (2)")
        .await
        .unwrap();
    let mine: u64 = one(&mut a, "SELECT LAST_INSERT_ID()").await;
    assert_eq!(mine, 6);
    a.query_drop("UPDATE t SET v = LAST_INSERT_ID(v + 40) WHERE id = 1")
        .await
        .unwrap();
    b.query_drop("INSERT INTO t (v) VALUES (3)").await.unwrap();
    let mine: u64 = one(&mut a, "SELECT LAST_INSERT_ID() + 0").await;
    assert_eq!(mine, 41);
    p.stop().await;
}

/// The counters of a multi-statement query, and a query whose text a rewrite once broke,
/// answer as on a direct connection: values and column definitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_answer_as_the_server_does() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_counters");
    db.sql(&format!(
        "CREATE TABLE `{s}`.t (id INT AUTO_INCREMENT PRIMARY KEY, v INT); \
         INSERT INTO `{s}`.t (v) VALUES (1), (2), (3)"
    ))
    .unwrap();
    let p = proxy(db, 1).await;
    let mut other = session(&p, &s).await;
    let queries = [
        "UPDATE t SET v = v WHERE id < 0; SELECT id FROM t; SELECT ROW_COUNT(), FOUND_ROWS()",
        "SELECT LAST_INSERT_ID() AS a, ROW_COUNT() /*M!999999 , @u := NULL */ AS b",
        "SELECT ROW_COUNT() + 0 AS rc, FOUND_ROWS() AS fr",
    ];
    for q in queries {
        let mut d = direct(db, &s).await;
        let mut t = session(&p, &s).await;
        d.query_drop("SELECT id FROM t").await.unwrap();
        t.query_drop("SELECT id FROM t").await.unwrap();
        // Another session uses the connection in between.
        other.query_drop("UPDATE t SET v = v + 1").await.unwrap();
        let mut dr = d.query_iter(q).await.unwrap();
        let mut tr = t.query_iter(q).await.unwrap();
        loop {
            let dcols: Vec<(String, u32, String)> = dr
                .columns_ref()
                .iter()
                .map(|c| {
                    (
                        c.name_str().into_owned(),
                        c.column_length(),
                        format!("{:?}", c.column_type()),
                    )
                })
                .collect();
            let tcols: Vec<(String, u32, String)> = tr
                .columns_ref()
                .iter()
                .map(|c| {
                    (
                        c.name_str().into_owned(),
                        c.column_length(),
                        format!("{:?}", c.column_type()),
                    )
                })
                .collect();
            assert_eq!(tcols, dcols, "{q}: columns");
            let drows: Vec<mysql_async::Row> = dr.collect().await.unwrap();
            let trows: Vec<mysql_async::Row> = tr.collect().await.unwrap();
            let values = |rows: &[mysql_async::Row]| -> Vec<Vec<mysql_async::Value>> {
                rows.iter().map(|r| r.clone().unwrap()).collect()
            };
            assert_eq!(values(&trows), values(&drows), "{q}: values");
            if dr.is_empty() && tr.is_empty() {
                break;
            }
            assert_eq!(dr.is_empty(), tr.is_empty(), "{q}: result count");
        }
    }
    p.stop().await;
}

/// Text the server skips, and `SET STATEMENT ... FOR`, hold nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_text_and_set_statement_hold_nothing() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_skipped");
    let p = proxy(db, 1).await;
    let mut a = session(&p, &s).await;
    for sql in [
        "SELECT 1 /*!999999 , GET_LOCK('iso_skip', 0) */",
        "SELECT 2 /*M!999999 , @u := 5 */",
        "SELECT 3 /*!80000 , @u := 6 */",
        "SET STATEMENT max_statement_time = 1 FOR SELECT 4",
        "SELECT 'GET_LOCK(''x'', 0)', '@v := 1'",
    ] {
        a.query_drop(sql).await.unwrap();
        assert_eq!(p.session_holds(a.id()).await, Some(false), "{sql}");
    }
    let u: Option<i64> = one(&mut a, "SELECT @u").await;
    assert_eq!(u, None);
    assert_eq!(p.snapshot().pins_all(), 0);
    p.stop().await;
}

/// A client's own COM_RESET_CONNECTION ends what its session held, table locks included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_reset_clears_its_table_lock() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_reset");
    db.sql(&format!("CREATE TABLE `{s}`.t (a INT)")).unwrap();
    let p = proxy(db, 1).await;
    let mut a = session(&p, &s).await;
    a.query_drop("LOCK TABLES t WRITE").await.unwrap();
    a.reset().await.unwrap();
    assert_eq!(p.session_holds(a.id()).await, Some(false));
    let mut b = session(&p, &s).await;
    b.query_drop("INSERT INTO t VALUES (1)").await.unwrap();
    a.query_drop("INSERT INTO t VALUES (2)").await.unwrap();
    p.stop().await;
}

/// Client ids come from a range the database does not use: a thread id a client learned
/// (`CONNECTION_ID()`) never names another client's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_never_collide_with_thread_ids() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_ids");
    let p = proxy(db, 2).await;
    let mut a = session(&p, &s).await;
    let b = session(&p, &s).await;
    assert!(a.id() >= sluice::registry::FIRST_CLIENT_ID);
    let thread: u64 = one(&mut a, "SELECT CONNECTION_ID()").await;
    let err = a
        .query_drop(format!("KILL QUERY {thread}"))
        .await
        .expect_err("a backend thread id is no client id");
    assert!(err.to_string().contains("1094"), "{err}");
    drop(b);
    p.stop().await;
}

/// What the server keeps across a client's COM_RESET_CONNECTION (`FOUND_ROWS()`, whatever
/// set it: `SQL_CALC_FOUND_ROWS`, `SELECT ... INTO`), and a condition Sluice answered itself
/// (an unknown statement id) that stored code then clears, read as a direct session reads them
/// (differential seeds 2191, 2404, 2954).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_stored_code_leave_counters_and_conditions_as_the_server_does() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_reset_counters");
    db.sql(&format!(
        "CREATE TABLE `{s}`.t (id INT PRIMARY KEY); INSERT INTO `{s}`.t VALUES (1), (2), (3)"
    ))
    .unwrap();
    let p = proxy(db, 1).await;
    for before in [
        "SELECT SQL_CALC_FOUND_ROWS id FROM t LIMIT 1",
        "SELECT 1 INTO @v",
        "SELECT id FROM t LIMIT 2 INTO OUTFILE '/dev/null'",
    ] {
        let mut answers = Vec::new();
        for through in [false, true] {
            let mut c = if through {
                session(&p, &s).await
            } else {
                direct(db, &s).await
            };
            // OUTFILE needs the FILE privilege, which app lacks: an error either way.
            let _ = c.query_drop(before).await;
            c.reset().await.unwrap();
            let counters: (i64, i64) = one(&mut c, "SELECT ROW_COUNT(), FOUND_ROWS()").await;
            answers.push(counters);
        }
        assert_eq!(
            answers[1], answers[0],
            "{before}; reset: through Sluice, direct"
        );
    }

    let caps =
        common::raw::default_caps() | sluice::protocol::CapabilityFlags::CLIENT_MULTI_STATEMENTS;
    let mut answers = Vec::new();
    for through in [false, true] {
        let mut c = raw_session(db, &p, through, &s, caps).await;
        // COM_STMT_FETCH of a statement id nobody prepared.
        let fetch = c.command(&[0x1c, 0xf0, 0xff, 0xff, 0xff, 1, 0, 0, 0]).await;
        assert_eq!(fetch.err_code(), Some(1243));
        c.write(
            0,
            b"\x03PREPARE pb FROM 'CREATE TEMPORARY TABLE tmp_x (a INT)'; EXECUTE pb; \
              DEALLOCATE PREPARE pb",
        )
        .await;
        for _ in 0..3 {
            let r = c.read_result().await;
            assert!(r[0].is_ok(), "{r:?}");
        }
        let rows = c.query("SHOW WARNINGS").await;
        // Column count, three definitions, EOF, rows, EOF.
        answers.push(rows.len() - 6);
    }
    assert_eq!(
        answers[1], answers[0],
        "conditions after stored code: through Sluice, direct"
    );
    assert_eq!(answers[0], 0);
    p.stop().await;
}

/// Answers Sluice gives without the server still show what the server would: a cached prepare
/// response carries the transaction a chained ROLLBACK opened, and a condition Sluice answered
/// itself gives way to the warnings of the session's next statement (differential seeds
/// 2459, 3400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_answers_carry_the_sessions_current_state() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_local_answers");
    db.sql(&format!("CREATE TABLE `{s}`.t (id INT PRIMARY KEY, v INT)"))
        .unwrap();
    let p = proxy(db, 1).await;
    let mut answers = Vec::new();
    for through in [false, true] {
        let mut c = raw_session(db, &p, through, &s, common::raw::default_caps()).await;
        assert_eq!(
            c.command(&[0x1c, 0xf0, 0xff, 0xff, 0xff, 1, 0, 0, 0])
                .await
                .err_code(),
            Some(1243)
        );
        let warned = c.query("SELECT CAST('x' AS SIGNED), 1/0").await;
        assert!(warned.len() > 1, "{warned:?}");
        let counts = c
            .query("SELECT @@error_count, @@session.warning_count")
            .await;
        let mut seen = vec![counts[counts.len() - 2].payload.clone()];
        assert!(c.query("SET completion_type = 'CHAIN'").await[0].is_ok());
        let mut prepare = vec![0x16];
        prepare.extend_from_slice(b"SELECT id, v FROM t WHERE id > ? ORDER BY id");
        for step in ["prepare", "ROLLBACK", "prepare"] {
            if step == "prepare" {
                c.write(0, &prepare).await;
                // OK, one parameter and EOF, two columns and EOF.
                for _ in 0..6 {
                    let packet = c.read().await.expect("prepare response");
                    if packet.is_eof() {
                        seen.push(packet.payload);
                    }
                }
            } else {
                assert!(c.query(step).await[0].is_ok());
            }
        }
        answers.push(seen);
    }
    assert_eq!(answers[1], answers[0], "through Sluice, direct");
    p.stop().await;
}

/// Values only the connection knows are read from it, and put back before a statement that
/// may keep them: `LAST_INSERT_ID()` before a `LAST_INSERT_ID(expr)` that fails, `FOUND_ROWS()`
/// after an execute that opened a cursor, and conditions too long for `SIGNAL` around stored
/// code that does or does not replace them (differential seeds 5565, 4862, 5956).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_only_the_connection_knows_are_read_from_it() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_connection_values");
    db.sql(&format!(
        "CREATE TABLE `{s}`.t (id INT AUTO_INCREMENT PRIMARY KEY, v INT); \
         INSERT INTO `{s}`.t (v) VALUES (1), (2), (3)"
    ))
    .unwrap();
    direct(db, &s)
        .await
        .query_drop("CREATE PROCEDURE p_noop() BEGIN DO 1; END")
        .await
        .unwrap();
    let p = proxy(db, 1).await;
    let caps =
        common::raw::default_caps() | sluice::protocol::CapabilityFlags::CLIENT_MULTI_STATEMENTS;
    let mut answers = Vec::new();
    for through in [false, true] {
        let mut c = raw_session(db, &p, through, &s, caps).await;
        let mut other = raw_session(db, &p, through, &s, caps).await;
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let last_row = |r: Vec<common::raw::Packet>| r[r.len() - 2].payload.clone();

        // LAST_INSERT_ID(expr) in a statement that fails leaves the session's value.
        let inserted = c.query("INSERT INTO t (v) VALUES (9)").await;
        let id = inserted[0].payload[2];
        other.query("DO LAST_INSERT_ID(77)").await;
        assert!(c.query("LOCK TABLES t READ").await[0].is_ok());
        let refused = c
            .query("UPDATE t SET v = LAST_INSERT_ID(v + 1) WHERE id = 1")
            .await;
        assert_eq!(refused[0].err_code(), Some(1099));
        let ids = last_row(c.query("SELECT LAST_INSERT_ID()").await);
        assert_eq!(
            ids,
            [1, b'0' + id],
            "LAST_INSERT_ID() after the refused update"
        );
        assert!(c.query("UNLOCK TABLES").await[0].is_ok());

        // FOUND_ROWS() after an execute that opened a cursor over two rows.
        let mut prepare = vec![0x16];
        prepare.extend_from_slice(b"SELECT id FROM t WHERE id > ? ORDER BY id LIMIT 2");
        let ok = c.command(&prepare).await;
        let stmt = ok.payload[1..5].to_vec();
        for _ in 0..4 {
            c.read().await.expect("prepare response");
        }
        let mut execute = vec![0x17];
        execute.extend_from_slice(&stmt);
        execute.extend_from_slice(&[1, 1, 0, 0, 0, 0, 1, 3, 0]);
        execute.extend_from_slice(&1i32.to_le_bytes());
        c.write(0, &execute).await;
        // Column count, definition, EOF with the cursor flag.
        for _ in 0..3 {
            c.read().await.expect("execute response");
        }
        // Closing the statement ends the cursor's hold on the connection.
        let mut close = vec![0x19];
        close.extend_from_slice(&stmt);
        c.write(0, &close).await;
        other.query("SELECT 1 FROM t").await;
        seen.push(last_row(c.query("SELECT FOUND_ROWS()").await));

        // An error whose message SIGNAL cannot carry, then stored code that replaces the
        // diagnostics area and stored code that leaves it.
        let long = c.query("SELECT 'a\\', GET_LOCK('iso_x', 0) -- '").await;
        assert_eq!(long[0].err_code(), Some(1064));
        other.query("DO 1").await;
        assert!(c.query("CALL p_noop()").await[0].is_ok());
        seen.push(last_row(c.query("SHOW COUNT(*) ERRORS").await));
        other.query("DO 1").await;
        c.write(
            0,
            b"\x03PREPARE pb FROM 'CREATE TEMPORARY TABLE tmp_y (a INT)'; EXECUTE pb; \
              DEALLOCATE PREPARE pb",
        )
        .await;
        for _ in 0..3 {
            assert!(c.read_result().await[0].is_ok());
        }
        seen.push(last_row(c.query("SHOW COUNT(*) ERRORS").await));
        answers.push(seen);
    }
    assert_eq!(answers[1], answers[0], "through Sluice, direct");
    assert_eq!(answers[0], [vec![1, b'2'], vec![1, b'1'], vec![1, b'0']]);
    p.stop().await;
}

/// A `GET_LOCK` whose wait times out clears MariaDB's diagnostics area; one that gets the lock
/// leaves it (differential seed 34604).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_wait_that_times_out_clears_the_diagnostics_area() {
    let db = MariaDb::shared();
    let s = schema(db, "iso_lock_wait");
    db.sql(&format!("CREATE TABLE `{s}`.t (id INT PRIMARY KEY)"))
        .unwrap();
    let p = proxy(db, 2).await;
    let mut holder = direct(db, &s).await;
    holder
        .query_drop("SELECT GET_LOCK('iso_busy', 0)")
        .await
        .unwrap();
    let mut answers = Vec::new();
    for through in [false, true] {
        let mut c = raw_session(db, &p, through, &s, common::raw::default_caps()).await;
        let mut seen = Vec::new();
        let last_row = |r: Vec<common::raw::Packet>| r[r.len() - 2].payload.clone();
        for lock in ["iso_busy", "iso_free"] {
            assert_eq!(
                c.query("SELECT nosuch FROM t").await[0].err_code(),
                Some(1054)
            );
            c.query(&format!("SELECT GET_LOCK('{lock}', 0)")).await;
            seen.push(last_row(c.query("SHOW COUNT(*) WARNINGS").await));
        }
        c.query("SELECT RELEASE_LOCK('iso_free')").await;
        answers.push(seen);
    }
    assert_eq!(answers[1], answers[0], "through Sluice, direct");
    assert_eq!(answers[0], [vec![1, b'0'], vec![1, b'1']]);
    drop(holder);
    p.stop().await;
}
