//! mysql_async through Sluice: every result must be what the server itself returns, values and
//! column metadata alike, in the text and binary protocols.

mod common;

use std::io::Write;

use common::{TestProxy, schema};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, Row, Value, WhiteListFsHandler};
use sluice_testkit::{MariaDb, MariaDbOptions};

/// What a row looks like to a client: column metadata and values.
type Shape = Vec<(Vec<(String, String, u16, u16, u8, u32)>, Vec<Value>)>;

fn shape(rows: &[Row]) -> Shape {
    rows.iter()
        .map(|r| {
            let cols = r
                .columns_ref()
                .iter()
                .map(|c| {
                    (
                        c.name_str().into_owned(),
                        format!("{:?}", c.column_type()),
                        c.flags().bits(),
                        c.character_set(),
                        c.decimals(),
                        c.column_length(),
                    )
                })
                .collect();
            (cols, r.clone().unwrap())
        })
        .collect()
}

async fn direct(db: &MariaDb, schema: &str) -> Conn {
    Conn::new(Opts::from(db.opts("app", db.app_password(), Some(schema))))
        .await
        .unwrap()
}

const SETUP: &[&str] = &[
    "CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(50) NOT NULL, \
     price DECIMAL(14,4), ratio DOUBLE, data BLOB, note TEXT NULL, at DATETIME(6), day DATE, \
     flags BIT(5), big BIGINT UNSIGNED, tiny TINYINT, js JSON, e ENUM('a','b'))",
    "INSERT INTO t (name, price, ratio, data, note, at, day, flags, big, tiny, js, e) VALUES \
     ('widget', 12.3400, 0.5, x'0001ff', NULL, '2024-02-29 12:34:56.789012', '2024-02-29', b'10101', 18446744073709551615, -128, '{\"k\": [1, 2]}', 'a'), \
     ('gädget ✓', -99999999.9999, -1e300, '', 'n', NULL, NULL, b'0', 0, 127, NULL, NULL), \
     ('nulls', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
];

const QUERIES: &[&str] = &[
    "SELECT * FROM t ORDER BY id",
    "SELECT id, price * 2 AS doubled, CONCAT(name, '!') AS shout FROM t WHERE price IS NOT NULL ORDER BY id",
    "SELECT COUNT(*), SUM(price), AVG(ratio), MAX(at) FROM t",
    "SELECT NULL, 1, 1.5, 'x', x'00', CAST(1 AS UNSIGNED), NOW() IS NOT NULL",
    "SELECT * FROM t WHERE 1 = 0",
    "SELECT REPEAT('ab', 40000) AS long_text",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_match_the_server_in_both_protocols() {
    let db = MariaDb::shared();
    let s = schema(db, "relay");
    let proxy = TestProxy::start(db, 4).await;
    let mut via = proxy.app(Some(&s)).await;
    let mut raw = direct(db, &s).await;
    for q in SETUP {
        via.query_drop(*q).await.unwrap();
    }
    for q in QUERIES {
        let a: Vec<Row> = via.query(*q).await.unwrap();
        let b: Vec<Row> = raw.query(*q).await.unwrap();
        assert_eq!(shape(&a), shape(&b), "text protocol: {q}");
        let a: Vec<Row> = via.exec(*q, ()).await.unwrap();
        let b: Vec<Row> = raw.exec(*q, ()).await.unwrap();
        assert_eq!(shape(&a), shape(&b), "binary protocol: {q}");
    }
    // Typed reads: NULLs, BLOBs as bytes, DECIMAL exactly.
    type Typed = (String, Option<String>, Option<Vec<u8>>, Option<String>);
    let rows: Vec<Typed> = via
        .exec(
            "SELECT name, CAST(price AS CHAR), data, note FROM t WHERE id IN (?, ?, ?) ORDER BY id",
            (1, 2, 3),
        )
        .await
        .unwrap();
    assert_eq!(
        rows[0],
        (
            "widget".into(),
            Some("12.3400".into()),
            Some(vec![0, 1, 255]),
            None
        )
    );
    assert_eq!(rows[1].1.as_deref(), Some("-99999999.9999"));
    assert_eq!(rows[1].2.as_deref(), Some(&[][..]));
    assert_eq!(rows[2], ("nulls".into(), None, None, None));
    // Parameters travel as sent.
    via.exec_drop(
        "INSERT INTO t (name, price, data, note) VALUES (?, ?, ?, ?)",
        ("param", "0.0001", vec![0u8, 0, 7], None::<String>),
    )
    .await
    .unwrap();
    assert!(via.last_insert_id().unwrap() >= 4);
    let back: Option<(String, Vec<u8>)> = via
        .exec_first(
            "SELECT CAST(price AS CHAR), data FROM t WHERE name = ?",
            ("param",),
        )
        .await
        .unwrap();
    assert_eq!(back, Some(("0.0001".into(), vec![0, 0, 7])));
    drop(via);
    proxy.stop().await;
}

async fn result_sets(conn: &mut Conn, q: &str) -> Vec<Vec<Vec<Value>>> {
    let mut result = conn.query_iter(q).await.unwrap();
    let mut sets = Vec::new();
    while !result.is_empty() {
        let rows: Vec<Row> = result.collect().await.unwrap();
        sets.push(rows.into_iter().map(|r| r.unwrap()).collect());
    }
    sets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_result_sets_and_procedures() {
    let db = MariaDb::shared();
    let s = schema(db, "multi");
    let proxy = TestProxy::start(db, 4).await;
    let mut via = proxy.app(Some(&s)).await;
    via.query_drop(
        "CREATE PROCEDURE two_sets(IN n INT) BEGIN SELECT n AS first; SELECT n + 1 AS second, 'x' AS third; END",
    )
    .await
    .unwrap();
    let q = "SELECT 1 AS a; DO 0; SELECT 'b' AS b, 2 AS c; CALL two_sets(7)";
    let sets = result_sets(&mut via, q).await;
    let mut raw = direct(db, &s).await;
    assert_eq!(sets, result_sets(&mut raw, q).await);
    assert_eq!(sets.len(), 5, "{sets:?}");
    assert_eq!(
        sets[4],
        vec![(vec![Value::Bytes(b"8".to_vec()), Value::Bytes(b"x".to_vec())])]
    );
    // CALL through the binary protocol too.
    let rows: Vec<(i64,)> = via.exec("CALL two_sets(?)", (41,)).await.unwrap();
    assert_eq!(rows, vec![(41,)]);
    let one: Option<i32> = via.query_first("SELECT 5").await.unwrap();
    assert_eq!(one, Some(5), "the connection is usable after multi-results");
    drop(via);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_pass_through_with_their_codes() {
    let db = MariaDb::shared();
    let s = schema(db, "errors");
    let proxy = TestProxy::start(db, 2).await;
    let mut via = proxy.app(Some(&s)).await;
    let mut raw = direct(db, &s).await;
    via.query_drop("CREATE TABLE u (id INT PRIMARY KEY)")
        .await
        .unwrap();
    via.query_drop("INSERT INTO u VALUES (1)").await.unwrap();
    for q in [
        "SELECT * FROM missing",
        "INSERT INTO u VALUES (1)",
        "SELEC 1",
        "SELECT 1; SELECT * FROM missing",
    ] {
        let e_via = via.query_drop(q).await.unwrap_err();
        let e_raw = raw.query_drop(q).await.unwrap_err();
        match (&e_via, &e_raw) {
            (mysql_async::Error::Server(a), mysql_async::Error::Server(b)) => {
                assert_eq!(
                    (a.code, &a.state, &a.message),
                    (b.code, &b.state, &b.message),
                    "{q}"
                );
            }
            other => panic!("{q}: expected server errors, got {other:?}"),
        }
    }
    // The session goes on after errors.
    let n: Option<i64> = via.query_first("SELECT COUNT(*) FROM u").await.unwrap();
    assert_eq!(n, Some(1));
    drop(via);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_stay_visible_to_the_next_statement() {
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 2).await;
    let mut a = proxy.app(None).await;
    let mut b = proxy.app(None).await;
    let v: Option<Option<i32>> = a.query_first("SELECT 1/0").await.unwrap();
    assert_eq!(v, Some(None));
    assert_eq!(a.get_warnings(), 1);
    // Another session runs in between; a connection handed to it would lose a's warnings
    // (the server clears them for any statement that uses a table).
    b.query_drop("SELECT COUNT(*) FROM mysql.db").await.unwrap();
    let w: Vec<(String, u32, String)> = a.query("SHOW WARNINGS").await.unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].1, 1365, "division by zero warning: {w:?}");
    drop((a, b));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_data_local_infile() {
    let db = MariaDb::shared();
    let s = schema(db, "infile");
    let proxy = TestProxy::start(db, 2).await;
    let dir = std::env::temp_dir().join(format!("sluice-infile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rows.csv");
    // About 6 MB: many packets of file data.
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..200_000 {
        writeln!(f, "{i},name-{i}").unwrap();
    }
    drop(f);
    let opts = proxy
        .opts("app", &proxy.app_password, Some(&s))
        .local_infile_handler(Some(WhiteListFsHandler::new(&[path.clone()][..])));
    let mut via = Conn::new(Opts::from(opts)).await.unwrap();
    let raw_opts = db
        .opts("app", db.app_password(), Some(&s))
        .local_infile_handler(Some(WhiteListFsHandler::new(&[path.clone()][..])));
    let mut raw = Conn::new(Opts::from(raw_opts)).await.unwrap();
    via.query_drop("CREATE TABLE f (id INT PRIMARY KEY, name VARCHAR(40))")
        .await
        .unwrap();
    raw.query_drop("CREATE TABLE g (id INT PRIMARY KEY, name VARCHAR(40))")
        .await
        .unwrap();
    let load = |t: &str| {
        format!(
            "LOAD DATA LOCAL INFILE '{}' INTO TABLE {t} FIELDS TERMINATED BY ','",
            path.display()
        )
    };
    via.query_drop(load("f")).await.unwrap();
    raw.query_drop(load("g")).await.unwrap();
    assert_eq!(via.affected_rows(), raw.affected_rows());
    assert_eq!(via.info(), raw.info());
    assert!(via.info().contains("Records: 200000"), "{}", via.info());
    let (n, last): (i64, String) = via
        .query_first("SELECT COUNT(*), MAX(name) FROM f")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((n, last.as_str()), (200_000, "name-99999"));
    // A file the client refuses: mysql_async then drops its connection, directly as through
    // Sluice, and Sluice serves the next session normally.
    let refused = "LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE f";
    let e_via = via.query_drop(refused).await.unwrap_err();
    let e_raw = raw
        .query_drop(refused.replace(" f", " g"))
        .await
        .unwrap_err();
    assert_eq!(format!("{e_via:?}"), format!("{e_raw:?}"));
    let after_via = via.query_drop("SELECT 1").await.is_ok();
    let after_raw = raw.query_drop("SELECT 1").await.is_ok();
    assert_eq!(after_via, after_raw);
    let mut again = proxy.app(Some(&s)).await;
    let n: Option<i64> = again.query_first("SELECT COUNT(*) FROM f").await.unwrap();
    assert_eq!(n, Some(200_000));
    drop(again);
    std::fs::remove_dir_all(&dir).unwrap();
    drop(via);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_and_packets_above_16_mib() {
    // A server of its own: the default max_allowed_packet (16 MiB) is too small.
    let db = MariaDb::start_with(MariaDbOptions {
        extra_args: vec!["--max-allowed-packet=128M".into()],
        ..Default::default()
    })
    .unwrap();
    let s = schema(&db, "big");
    let proxy = TestProxy::start(&db, 2).await;
    let mut via = proxy.app(Some(&s)).await;
    via.query_drop("CREATE TABLE b (id INT PRIMARY KEY, v LONGBLOB)")
        .await
        .unwrap();
    let size = 20 * 1024 * 1024 + 17;
    let blob: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    // Binary protocol: a 20 MiB parameter (an execute packet over 16 MiB).
    via.exec_drop("INSERT INTO b VALUES (1, ?)", (blob.clone(),))
        .await
        .unwrap();
    // Text protocol: a 40 MiB query (hex literal).
    let hex: String = blob.iter().map(|b| format!("{b:02x}")).collect();
    via.query_drop(format!("INSERT INTO b VALUES (2, x'{hex}')"))
        .await
        .unwrap();
    for id in [1, 2] {
        let text: Option<Vec<u8>> = via
            .query_first(format!("SELECT v FROM b WHERE id = {id}"))
            .await
            .unwrap();
        assert!(text.as_deref() == Some(&blob[..]), "text row {id} differs");
        let bin: Option<Vec<u8>> = via
            .exec_first("SELECT v FROM b WHERE id = ?", (id,))
            .await
            .unwrap();
        assert!(bin.as_deref() == Some(&blob[..]), "binary row {id} differs");
    }
    // Two 20 MiB values in one row, then a small query: framing survives.
    let both: Option<(Vec<u8>, Vec<u8>)> = via
        .query_first("SELECT a.v, b.v FROM b a JOIN b b ON a.id = 1 AND b.id = 2")
        .await
        .unwrap();
    let (x, y) = both.unwrap();
    assert!(x == blob && y == blob);
    let n: Option<i32> = via.query_first("SELECT 42").await.unwrap();
    assert_eq!(n, Some(42));
    drop(via);
    proxy.stop().await;
}
