//! PyMySQL and the `mariadb` command-line client through Sluice: the same workload run
//! directly against the server and through Sluice must print exactly the same thing.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use common::{TestProxy, schema};
use sluice_testkit::{MariaDb, mariadb_cli_async, pymysql_async, stdout_if_success};

fn csv(name: &str, rows: usize) -> PathBuf {
    let path = std::env::temp_dir().join(format!("sluice-{name}-{}.csv", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 1000..1000 + rows {
        writeln!(f, "{i},row-{i}").unwrap();
    }
    path
}

async fn pymysql_run(
    addr: SocketAddr,
    db: &MariaDb,
    schema: &str,
    infile: &str,
) -> serde_json::Value {
    let port = addr.port().to_string();
    let out = pymysql_async(
        "tests/clients/pymysql_workload.py",
        &["127.0.0.1", &port, "app", db.app_password(), schema, infile],
        &[],
    )
    .await
    .unwrap();
    let text = stdout_if_success(&out).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymysql_sees_what_the_server_says() {
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 3).await;
    let infile = csv("pymysql", 5000);
    let infile = infile.to_str().unwrap();
    let (s1, s2) = (schema(db, "py_direct"), schema(db, "py_sluice"));
    let direct = pymysql_run(db.addr(), db, &s1, infile).await;
    let through = pymysql_run(proxy.addr, db, &s2, infile).await;
    // Error messages name the schema, which differs between the runs.
    let direct: serde_json::Value =
        serde_json::from_str(&direct.to_string().replace(&s1, "S")).unwrap();
    let through: serde_json::Value =
        serde_json::from_str(&through.to_string().replace(&s2, "S")).unwrap();
    assert_eq!(through, direct);
    // Spot checks, so the comparison cannot pass on two equally empty runs.
    assert_eq!(through["insert"], 3);
    assert_eq!(
        through["rows"][0],
        serde_json::json!([1, "a", "1.250", "0001ff", null])
    );
    assert_eq!(through["types"], serde_json::json!(["Decimal", "bytes"]));
    assert_eq!(through["after_rollback"], 0);
    assert_eq!(through["multi"].as_array().unwrap().len(), 3);
    assert_eq!(through["errors"][0][0], 1146);
    assert_eq!(through["errors"][1][0], 1062);
    assert_eq!(through["load"], 5000);
    assert_eq!(through["loaded"], serde_json::json!([5000, 1000, 5999]));
    assert_eq!(through["second_connection"], 3);
    // PyMySQL sets autocommit at connect; Sluice replays it instead of pinning.
    assert_eq!(proxy.snapshot().pins_all(), 0);
    proxy.stop().await;
}

async fn cli_run(
    addr: SocketAddr,
    db: &MariaDb,
    schema: &str,
    script: &str,
) -> (String, String, Option<i32>) {
    let out = mariadb_cli_async(
        addr,
        "app",
        db.app_password(),
        Some(schema),
        &["--local-infile=1", "--force", "--table"],
        Some(script.as_bytes()),
    )
    .await
    .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_prints_what_the_server_says() {
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 3).await;
    let infile = csv("cli", 300);
    let script =
        include_str!("clients/cli_workload.sql").replace("@INFILE@", infile.to_str().unwrap());
    let (s1, s2) = (schema(db, "cli_direct"), schema(db, "cli_sluice"));
    let (out_d, err_d, code_d) = cli_run(db.addr(), db, &s1, &script).await;
    let (out_s, err_s, code_s) = cli_run(proxy.addr, db, &s2, &script).await;
    assert_eq!(out_s, out_d);
    assert_eq!(code_s, code_d);
    // The error line names the schema-qualified table; only the schema differs.
    assert_eq!(err_s.replace(&s2, "S"), err_d.replace(&s1, "S"));
    assert!(out_s.contains("| twö "), "{out_s}");
    assert!(out_s.contains("procedure"), "{out_s}");
    assert!(out_s.contains("after the error"), "{out_s}");
    assert!(
        out_s.contains("|      302 |    1299 |"),
        "LOAD DATA rows: {out_s}"
    );
    assert!(err_s.contains("ERROR 1146 (42S02)"), "{err_s}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_login_errors() {
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 2).await;
    let out = mariadb_cli_async(proxy.addr, "app", "wrong", None, &["-e", "SELECT 1"], None)
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "ERROR 1045 (28000): Access denied for user 'app'@'127.0.0.1' (using password: YES)"
        ),
        "{err}"
    );
    let out = mariadb_cli_async(proxy.addr, "nobody", "x", None, &["-e", "SELECT 1"], None)
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ERROR 1045 (28000): Access denied for user 'nobody'@'127.0.0.1'"),
        "{err}"
    );
    let out = mariadb_cli_async(
        proxy.addr,
        "app",
        &proxy.app_password,
        Some("no_such_db"),
        &["-e", "SELECT 1"],
        None,
    )
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ERROR 1049 (42000): Unknown database 'no_such_db'"),
        "{err}"
    );
    assert_eq!(proxy.snapshot().client_auth_failures, 2);
    proxy.stop().await;
}
