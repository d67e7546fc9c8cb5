//! The admin console, driven by mysql_async and by the `mariadb` CLI: every command, a wrong
//! password and an unknown command.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ADMIN_PASSWORD, TestProxy, config_for, eventually, schema};
use mysql_async::consts::ColumnType;
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, Row};
use sluice_testkit::{MariaDb, client_opts, mariadb_cli_async, stdout_if_success};

/// Runs an admin command and returns its rows.
async fn rows(admin: &mut Conn, command: &str) -> Vec<Row> {
    admin
        .query(command)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"))
}

/// The row whose `key` column equals `value`.
fn row_where<'a>(rows: &'a [Row], key: &str, value: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.get::<String, _>(key).as_deref() == Some(value))
        .unwrap_or_else(|| panic!("no row with {key} = {value}"))
}

fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_report_sessions_and_connections_with_typed_columns() {
    let db = MariaDb::shared();
    let s = schema(db, "admin_show");
    db.sql(&format!("CREATE TABLE `{s}`.t (a INT)")).unwrap();
    let proxy = TestProxy::start(db, 4).await;
    let mut admin = proxy.admin().await;

    let mut in_tx = proxy.app(Some(&s)).await;
    in_tx.query_drop("BEGIN").await.unwrap();
    in_tx.query_drop("INSERT INTO t VALUES (1)").await.unwrap();
    let mut pinned = proxy.app(Some(&s)).await;
    pinned.query_drop("SET @x = 1").await.unwrap();
    let in_tx_id = in_tx.id();
    let pinned_id = pinned.id();

    // SHOW VERSION
    let version = rows(&mut admin, "SHOW VERSION").await;
    let v: String = version[0].get("version").unwrap();
    assert!(v.starts_with("Sluice "), "{v}");

    // SHOW POOLS: one row per user, counts as unsigned BIGINT.
    let pools = rows(&mut admin, "show pools;").await;
    let app = row_where(&pools, "user", "app");
    assert_eq!(app.get::<u64, _>("cl_active"), Some(2));
    assert_eq!(app.get::<u64, _>("cl_in_transaction"), Some(1));
    assert_eq!(app.get::<u64, _>("cl_pinned"), Some(1));
    assert_eq!(app.get::<u64, _>("sv_active"), Some(2));
    assert_eq!(app.get::<u64, _>("max_connections"), Some(4));
    assert_eq!(app.get::<String, _>("paused").as_deref(), Some("no"));
    let columns = app.columns();
    let ty = |name: &str| {
        columns
            .iter()
            .find(|c| c.name_str() == name)
            .map(|c| c.column_type())
            .unwrap()
    };
    assert_eq!(ty("cl_active"), ColumnType::MYSQL_TYPE_LONGLONG);
    assert_eq!(ty("maxwait"), ColumnType::MYSQL_TYPE_DOUBLE);
    assert_eq!(ty("user"), ColumnType::MYSQL_TYPE_VAR_STRING);
    assert!(
        pools
            .iter()
            .any(|r| r.get::<String, _>("user").as_deref() == Some("other"))
    );

    // SHOW CLIENTS: both sessions, their state and pins.
    let clients = rows(&mut admin, "SHOW CLIENTS").await;
    assert_eq!(clients.len(), 2);
    let by_id = |id: u32| {
        clients
            .iter()
            .find(|r| r.get::<u64, _>("id") == Some(u64::from(id)))
            .unwrap()
    };
    assert_eq!(
        by_id(in_tx_id).get::<String, _>("state").as_deref(),
        Some("idle in transaction")
    );
    assert_eq!(
        by_id(pinned_id).get::<String, _>("pinned").as_deref(),
        Some("user_variable")
    );
    assert_eq!(
        by_id(pinned_id).get::<String, _>("user").as_deref(),
        Some("app")
    );
    assert_eq!(
        by_id(pinned_id).get::<String, _>("tls").as_deref(),
        Some("no")
    );
    let in_tx_thread: u64 = by_id(in_tx_id).get("backend_thread").unwrap();

    // SHOW SERVERS: both lent connections, with their clients.
    let servers = rows(&mut admin, "SHOW SERVERS").await;
    let lent: Vec<&Row> = servers
        .iter()
        .filter(|r| r.get::<String, _>("state").as_deref() == Some("active"))
        .collect();
    assert_eq!(lent.len(), 2, "{servers:?}");
    assert!(lent.iter().any(|r| {
        r.get::<u64, _>("thread_id") == Some(in_tx_thread)
            && r.get::<u64, _>("client_id") == Some(u64::from(in_tx_id))
    }));
    in_tx.query_drop("COMMIT").await.unwrap();
    let mut went_idle = false;
    for _ in 0..250 {
        let servers = rows(&mut admin, "SHOW SERVERS").await;
        if servers
            .iter()
            .any(|r| r.get::<String, _>("state").as_deref() == Some("idle"))
        {
            went_idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        went_idle,
        "the committed session's connection went back idle"
    );

    // SHOW STATS
    let stats = rows(&mut admin, "SHOW STATS").await;
    assert!(
        row_where(&stats, "stat", "commands")
            .get::<u64, _>("value")
            .unwrap()
            >= 5
    );
    assert_eq!(
        row_where(&stats, "stat", "pinned_now.user_variable").get::<u64, _>("value"),
        Some(1)
    );

    // SHOW CONFIG: values, secrets hidden, which settings reload live.
    let config = rows(&mut admin, "SHOW CONFIG").await;
    let cap = row_where(&config, "key", "backend.max_connections");
    assert_eq!(cap.get::<String, _>("value").as_deref(), Some("4"));
    assert_eq!(cap.get::<String, _>("reload").as_deref(), Some("live"));
    let listen = row_where(&config, "key", "listen");
    assert_eq!(
        listen.get::<String, _>("reload").as_deref(),
        Some("restart")
    );
    assert_eq!(
        row_where(&config, "key", "admin.password")
            .get::<String, _>("value")
            .as_deref(),
        Some("***")
    );
    assert_eq!(
        row_where(&config, "key", "users")
            .get::<String, _>("value")
            .as_deref(),
        Some("app, other")
    );
    for r in &config {
        let v: String = r.get("value").unwrap();
        assert!(
            !v.contains(&proxy.app_password) && !v.contains(ADMIN_PASSWORD),
            "{v}"
        );
    }
    drop((in_tx, pinned));
    admin.disconnect().await.unwrap();
    proxy.stop().await;
}

/// KILL of a session that is running a statement interrupts the statement on the database (as
/// MySQL's KILL CONNECTION does) instead of waiting for it, and the pool keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_interrupts_the_running_statement() {
    let db = MariaDb::shared();
    let s = schema(db, "admin_kill_running");
    let proxy = TestProxy::start(db, 2).await;
    let mut admin = proxy.admin().await;
    let mut victim = proxy.app(Some(&s)).await;
    let id = victim.id();
    // A marker in the statement finds it in the database's process list.
    let marker = format!("kill_marker_{id}");
    let statement = format!("SELECT SLEEP(120) AS {marker}");
    let running = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let result = victim.query_drop(statement).await;
        (result, started.elapsed(), victim)
    });
    let on_database = format!(
        "SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE '%{marker}%' \
         AND info NOT LIKE '%processlist%'"
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            db.sql(&on_database)
                .map(|n| n.trim() == "1")
                .unwrap_or(false)
        })
        .await,
        "the statement never reached the database"
    );
    admin.query_drop(format!("KILL {id}")).await.unwrap();
    assert!(admin.info().contains("interrupted"), "{}", admin.info());
    let (result, took, mut victim) = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the killed statement ended")
        .unwrap();
    assert!(
        took < Duration::from_secs(60),
        "the statement ran on: {took:?}"
    );
    // MariaDB answers an interrupted SLEEP with its value 1 (MySQL does too), or ERR 1317.
    match &result {
        Ok(()) => {}
        Err(e) => assert_eq!(server_code(e), Some(1317), "{e:?}"),
    }
    assert_eq!(
        db.sql(&on_database).unwrap().trim(),
        "0",
        "the statement still runs on the database"
    );
    // The session is gone; the pool serves others.
    let err = victim.query_drop("SELECT 1").await.unwrap_err();
    assert!(
        server_code(&err) == Some(1927) || server_code(&err).is_none(),
        "{err:?}"
    );
    let mut other = proxy.app(Some(&s)).await;
    assert_eq!(
        other.query_first::<i64, _>("SELECT 7").await.unwrap(),
        Some(7)
    );
    other.disconnect().await.unwrap();
    admin.disconnect().await.unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_pause_resume_reload_and_errors_through_mysql_async() {
    let db = MariaDb::shared();
    let s = schema(db, "admin_ops");
    let proxy = TestProxy::start(db, 3).await;
    let mut admin = proxy.admin().await;

    // KILL <client id>: the session ends with ERR 1927.
    let mut victim = proxy.app(Some(&s)).await;
    let id = victim.id();
    admin.query_drop(format!("KILL {id}")).await.unwrap();
    let err = victim.query_drop("SELECT 1").await.unwrap_err();
    assert!(server_code(&err) == Some(1927), "{err:?}");
    let err = admin.query_drop("KILL 999999").await.unwrap_err();
    assert_eq!(server_code(&err), Some(1094), "{err}");

    // PAUSE and RESUME answer with OK and what they did.
    admin.query_drop("PAUSE").await.unwrap();
    assert!(admin.info().contains("paused"), "{}", admin.info());
    let pools = rows(&mut admin, "SHOW POOLS").await;
    assert_eq!(
        row_where(&pools, "user", "app")
            .get::<String, _>("paused")
            .as_deref(),
        Some("yes")
    );
    admin.query_drop("PAUSE").await.unwrap();
    assert!(admin.info().contains("already paused"), "{}", admin.info());
    admin.query_drop("RESUME").await.unwrap();
    assert_eq!(admin.info(), "resumed");
    admin.query_drop("RESUME").await.unwrap();
    assert_eq!(admin.info(), "was not paused");

    // RELOAD without a configuration file is refused; with one it reports each change.
    let err = admin.query_drop("RELOAD").await.unwrap_err();
    assert_eq!(server_code(&err), Some(9505), "{err}");
    let mut next = config_for(db, 7);
    next.listen = "127.0.0.1:1".into();
    next.admin.password = sluice::config::Secret::new(ADMIN_PASSWORD);
    let next = Arc::new(next);
    proxy
        .reload
        .set_source(Arc::new(move || Ok((*next).clone())));
    let changes = rows(&mut admin, "RELOAD").await;
    let outcome = |key: &str| {
        row_where(&changes, "setting", key)
            .get::<String, _>("outcome")
            .unwrap()
    };
    assert_eq!(outcome("backend.max_connections"), "applied");
    assert_eq!(outcome("listen"), "needs restart");
    let pools = rows(&mut admin, "SHOW POOLS").await;
    assert_eq!(
        row_where(&pools, "user", "app").get::<u64, _>("max_connections"),
        Some(7)
    );
    // An unreadable configuration changes nothing.
    proxy.reload.set_source(Arc::new(|| {
        sluice::Config::from_toml("listen = 5", "broken.toml", |_| None)
    }));
    let err = admin.query_drop("RELOAD").await.unwrap_err();
    assert_eq!(server_code(&err), Some(9505), "{err}");
    assert!(err.to_string().contains("broken.toml"), "{err}");

    // Unknown commands get a clear error and the session goes on.
    let err = admin.query_drop("DROP DATABASE mysql").await.unwrap_err();
    assert_eq!(server_code(&err), Some(1064), "{err}");
    assert!(err.to_string().contains("SHOW POOLS"), "{err}");
    let help = rows(&mut admin, "SHOW HELP").await;
    assert!(help.len() >= 10);
    admin.ping().await.unwrap();

    // Wrong passwords and wrong names are refused with ERR 1045.
    let addr = proxy.admin_addr.unwrap();
    for (user, password) in [
        ("admin", "wrong"),
        ("root", ADMIN_PASSWORD),
        ("app", &*proxy.app_password),
    ] {
        let err = Conn::new(Opts::from(client_opts(addr, user, password, None)))
            .await
            .unwrap_err();
        assert_eq!(server_code(&err), Some(1045), "{user}: {err}");
    }
    admin.disconnect().await.unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_like_sigterm() {
    let db = MariaDb::shared();
    let s = schema(db, "admin_shutdown");
    db.sql(&format!("CREATE TABLE `{s}`.t (a INT)")).unwrap();
    let proxy = TestProxy::start(db, 2).await;
    let mut admin = proxy.admin().await;
    let mut busy = proxy.app(Some(&s)).await;
    busy.query_drop("BEGIN").await.unwrap();
    busy.query_drop("INSERT INTO t VALUES (1)").await.unwrap();
    let mut idle = proxy.app(Some(&s)).await;
    admin.query_drop("SHUTDOWN").await.unwrap();
    assert!(admin.info().contains("shutting down"), "{}", admin.info());
    // The idle session is told why it is closed; the transaction finishes.
    let err = idle.query_drop("SELECT 1").await.unwrap_err();
    assert!(server_code(&err) == Some(1053), "{err:?}");
    busy.query_drop("INSERT INTO t VALUES (2)").await.unwrap();
    busy.query_drop("COMMIT").await.unwrap();
    let addr = proxy.addr;
    assert!(
        eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await,
        "still accepting clients"
    );
    proxy.stop().await;
    assert_eq!(
        db.sql(&format!("SELECT COUNT(*) FROM `{s}`.t"))
            .unwrap()
            .trim(),
        "2"
    );
}

/// Runs the `mariadb` CLI against the console: (success, stdout, stderr).
async fn cli(proxy: &TestProxy, password: &str, command: &str) -> (bool, String, String) {
    let out = mariadb_cli_async(
        proxy.admin_addr.unwrap(),
        "admin",
        password,
        None,
        &["--batch", "-e", command],
        None,
    )
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mariadb_cli_drives_every_command() {
    let db = MariaDb::shared();
    let s = schema(db, "admin_cli");
    let proxy = TestProxy::start(db, 3).await;
    let mut client = proxy.app(Some(&s)).await;
    client.query_drop("SET @pin = 1").await.unwrap();
    let id = client.id();

    let show = |command: &'static str| {
        let proxy = &proxy;
        async move {
            let out = mariadb_cli_async(
                proxy.admin_addr.unwrap(),
                "admin",
                ADMIN_PASSWORD,
                None,
                &["--batch", "-e", command],
                None,
            )
            .await
            .unwrap();
            stdout_if_success(&out).unwrap()
        }
    };
    let pools = show("SHOW POOLS").await;
    assert!(
        pools.starts_with("user\tcl_active\tcl_waiting\t"),
        "{pools}"
    );
    assert!(
        pools.lines().any(|l| l.starts_with("app\t1\t0\t0\t1\t1\t")),
        "{pools}"
    );
    let clients = show("SHOW CLIENTS").await;
    assert!(
        clients
            .lines()
            .any(|l| l.starts_with(&format!("{id}\tapp\t"))),
        "{clients}"
    );
    assert!(clients.contains("user_variable"), "{clients}");
    let servers = show("SHOW SERVERS").await;
    assert!(
        servers.starts_with("thread_id\tstate\tuser\tclient_id"),
        "{servers}"
    );
    assert!(
        servers.contains(&format!("\tactive\tapp\t{id}\t")),
        "{servers}"
    );
    let stats = show("SHOW STATS").await;
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("pins_total.user_variable\t1")),
        "{stats}"
    );
    let config = show("SHOW CONFIG").await;
    assert!(config.contains("admin.password\t***\tlive"), "{config}");
    assert!(!config.contains(&proxy.app_password));
    let version = show("SHOW VERSION").await;
    assert!(version.contains("Sluice "), "{version}");

    let (ok, out, err) = cli(&proxy, ADMIN_PASSWORD, "PAUSE").await;
    assert!(ok, "{out}{err}");
    assert!(show("SHOW POOLS").await.contains("\tyes\n"));
    let (ok, out, err) = cli(&proxy, ADMIN_PASSWORD, "RESUME").await;
    assert!(ok, "{out}{err}");
    assert!(show("SHOW POOLS").await.contains("\tno\n"));

    let mut next = config_for(db, 5);
    next.admin.password = sluice::config::Secret::new(ADMIN_PASSWORD);
    let next = Arc::new(next);
    proxy
        .reload
        .set_source(Arc::new(move || Ok((*next).clone())));
    let reload = show("RELOAD").await;
    assert!(
        reload.contains("backend.max_connections\tapplied"),
        "{reload}"
    );

    let (ok, _, err) = cli(&proxy, ADMIN_PASSWORD, &format!("KILL {id}")).await;
    assert!(ok, "{err}");
    assert!(client.query_drop("SELECT 1").await.is_err(), "killed");

    let (ok, _, err) = cli(&proxy, "wrong", "SHOW POOLS").await;
    assert!(!ok && err.contains("1045"), "{err}");
    let (ok, _, err) = cli(&proxy, ADMIN_PASSWORD, "SHOW TABLES").await;
    assert!(
        !ok && err.contains("1064") && err.contains("SHOW POOLS"),
        "{err}"
    );

    let (ok, out, err) = cli(&proxy, ADMIN_PASSWORD, "SHUTDOWN").await;
    assert!(ok, "{out}{err}");
    let addr = proxy.addr;
    assert!(
        eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await,
        "SHUTDOWN did not stop accepting"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_admin_password_refuses_every_login() {
    let db = MariaDb::shared();
    let mut config = config_for(db, 2);
    config.admin.password = sluice::config::Secret::new("");
    let proxy = TestProxy::start_with(db, config).await;
    let addr = proxy.admin_addr.unwrap();
    for password in ["", "anything"] {
        let err = Conn::new(Opts::from(client_opts(addr, "admin", password, None)))
            .await
            .unwrap_err();
        assert_eq!(server_code(&err), Some(1045), "{err}");
    }
    let text = proxy.http("/metrics").await.1;
    assert_eq!(
        common::sample(&text, "sluice_admin_login_failures_total", &[]),
        Some(2.0)
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_input_gets_errors_not_panics() {
    use common::raw::{Raw, default_caps};
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 2).await;
    let addr = proxy.admin_addr.unwrap();

    // A login packet cut short.
    let mut r = Raw::connect(addr).await;
    r.write(1, &[0x0d, 0xa2]).await;
    let reply = r.read().await.expect("an error");
    assert_eq!(reply.err_code(), Some(1043), "{reply:?}");
    assert!(r.closed().await);

    // A login packet announcing 16 MiB.
    let mut r = Raw::connect(addr).await;
    r.write_bytes(&[0xff, 0xff, 0xff, 1]).await;
    r.write_bytes(&[0u8; 70_000]).await;
    let reply = r.read().await.expect("an error");
    assert_eq!(reply.err_code(), Some(1043), "{reply:?}");
    assert!(r.closed().await);

    // A TLS request: the console offers none.
    let mut r = Raw::connect(addr).await;
    let mut ssl = (default_caps() | sluice::protocol::CapabilityFlags::CLIENT_SSL)
        .bits()
        .to_le_bytes()
        .to_vec();
    ssl.extend_from_slice(&[0, 0, 0, 1, 45]);
    ssl.extend_from_slice(&[0; 23]);
    r.write(1, &ssl).await;
    let reply = r.read().await.expect("an error");
    assert!(reply.err_message().contains("TLS"), "{reply:?}");

    // Logged in: bad commands get errors; the session survives where the protocol allows.
    let mut r = Raw::login(addr, "admin", ADMIN_PASSWORD, None, default_caps()).await;
    let reply = r.command(&[0x03, 0xff, 0xfe, 0x80]).await;
    assert_eq!(reply.err_code(), Some(1064), "invalid UTF-8: {reply:?}");
    let reply = r.command(&[0x99]).await;
    assert_eq!(reply.err_code(), Some(1047), "{reply:?}");
    assert!(
        r.command(&[0x0e]).await.is_ok(),
        "COM_PING after the errors"
    );
    let mut huge = vec![0x03];
    huge.extend(std::iter::repeat_n(b'x', 200_000));
    r.write(0, &huge[..]).await;
    let reply = r.read().await.expect("an error");
    assert_eq!(reply.err_code(), Some(1153), "{reply:?}");
    assert!(r.closed().await);

    let mut r = Raw::login(addr, "admin", ADMIN_PASSWORD, None, default_caps()).await;
    r.write(0, &[]).await;
    assert_eq!(r.read().await.expect("an error").err_code(), Some(1835));
    assert!(r.closed().await);

    let mut r = Raw::login(addr, "admin", ADMIN_PASSWORD, None, default_caps()).await;
    r.write(5, b"\x03SHOW POOLS").await;
    assert_eq!(r.read().await.expect("an error").err_code(), Some(1156));
    assert!(r.closed().await);

    // The console and the proxy still serve.
    let mut admin = proxy.admin().await;
    assert!(!rows(&mut admin, "SHOW POOLS").await.is_empty());
    proxy.app(None).await.ping().await.unwrap();
    proxy.stop().await;
}
