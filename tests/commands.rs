//! The commands Sluice relays or answers itself, one by one.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw::default_caps;
use common::{TestProxy, schema};
use mysql_async::prelude::*;
use mysql_async::{ChangeUserOpts, Conn, Opts};
use sluice::PinReason;
use sluice::protocol::CapabilityFlags;
use sluice_testkit::MariaDb;

fn stmt_id(prepare_ok: &[u8]) -> [u8; 4] {
    assert_eq!(prepare_ok[0], 0, "prepare OK: {prepare_ok:?}");
    prepare_ok[1..5].try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_query_stops_the_targets_statement() {
    let db = MariaDb::shared();
    let proxy = Arc::new(TestProxy::start(db, 4).await);
    let mut victim = proxy.app(None).await;
    let mut killer = proxy.app(None).await;
    let id = victim.id();
    let sleeper = tokio::spawn(async move {
        let t = Instant::now();
        let r = victim.query_drop("SELECT SLEEP(30)").await;
        (r, t.elapsed(), victim)
    });
    // Wait until the victim's statement runs on the server.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = db.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(30)'").unwrap();
        if n.trim() == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "the statement never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    killer.query_drop(format!("KILL QUERY {id}")).await.unwrap();
    let (result, took, mut victim) = sleeper.await.unwrap();
    // MariaDB ends a killed SLEEP() early with result 1, or with ERR 1317.
    match result {
        Ok(()) => {}
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1317, "{}", e.message),
        Err(e) => panic!("{e}"),
    }
    assert!(
        took < Duration::from_secs(10),
        "KILL QUERY did not interrupt the statement ({took:?})"
    );
    // The victim's session survives a KILL QUERY.
    let v: Option<i32> = victim.query_first("SELECT 1").await.unwrap();
    assert_eq!(v, Some(1));
    // Unknown ids, other users' sessions and unsupported forms are refused.
    let err = killer.query_drop("KILL QUERY 999999").await.unwrap_err();
    assert!(
        matches!(err, mysql_async::Error::Server(ref e) if e.code == 1094),
        "{err}"
    );
    let other = Conn::new(Opts::from(proxy.opts("other", &proxy.other_password, None)))
        .await
        .unwrap();
    let err = killer
        .query_drop(format!("KILL {}", other.id()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, mysql_async::Error::Server(ref e) if e.code == 1095),
        "{err}"
    );
    let err = killer.query_drop("KILL QUERY ID 5").await.unwrap_err();
    assert!(
        matches!(err, mysql_async::Error::Server(ref e) if e.code == 9504),
        "{err}"
    );
    // KILL CONNECTION ends the target session.
    killer
        .query_drop(format!("KILL CONNECTION {id}"))
        .await
        .unwrap();
    assert!(
        victim.query_drop("SELECT 1").await.is_err(),
        "killed session still answers"
    );
    drop((killer, other));
    Arc::into_inner(proxy).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn com_process_kill_ends_a_session() {
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 2).await;
    let mut target = proxy.raw_app(None, default_caps()).await;
    let mut killer = proxy.raw_app(None, default_caps()).await;
    let mut p = vec![0x0c];
    p.extend_from_slice(&target.connection_id().to_le_bytes());
    assert!(killer.command(&p).await.is_ok());
    assert!(target.closed().await, "the killed session must be closed");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_user_is_authenticated_by_sluice() {
    let db = MariaDb::shared();
    let s = schema(db, "chuser");
    let proxy = TestProxy::start(db, 2).await;
    let mut c = proxy.app(None).await;
    c.query_drop("SET @mine = 1").await.unwrap();
    assert_eq!(proxy.snapshot().pinned_now(PinReason::UserVariable), 1);
    c.change_user(
        ChangeUserOpts::default()
            .with_user(Some("other".into()))
            .with_pass(Some(proxy.other_password.clone()))
            .with_db_name(Some(s.clone())),
    )
    .await
    .unwrap();
    let (user, schema, var): (String, String, Option<i32>) = c
        .query_first("SELECT CURRENT_USER(), DATABASE(), @mine")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (user.as_str(), schema.as_str(), var),
        ("other@%", s.as_str(), None)
    );
    assert_eq!(proxy.snapshot().pinned_now(PinReason::UserVariable), 0);
    // A wrong password is refused and the connection closed.
    let err = c
        .change_user(
            ChangeUserOpts::default()
                .with_user(Some("app".into()))
                .with_pass(Some("nope".into())),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, mysql_async::Error::Server(ref e) if e.code == 1045),
        "{err}"
    );
    assert!(c.query_drop("SELECT 1").await.is_err());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connection_clears_the_session_and_its_pins() {
    let db = MariaDb::shared();
    let s = schema(db, "reset");
    let proxy = TestProxy::start(db, 2).await;
    let mut c = proxy.app(Some(&s)).await;
    c.query_drop("SET @x = 5").await.unwrap();
    c.query_drop("SET NAMES latin1").await.unwrap();
    c.query_drop("CREATE TEMPORARY TABLE t1 (a INT)")
        .await
        .unwrap();
    assert_eq!(proxy.snapshot().pinned_now(PinReason::UserVariable), 1);
    assert!(
        c.reset().await.unwrap(),
        "COM_RESET_CONNECTION is supported"
    );
    let (x, cs): (Option<i32>, String) = c
        .query_first("SELECT @x, @@character_set_client")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((x, cs.as_str()), (None, "utf8mb4"));
    assert!(c.query_drop("SELECT * FROM t1").await.is_err());
    let snap = proxy.snapshot();
    assert_eq!(
        snap.pinned_now(PinReason::UserVariable) + snap.pinned_now(PinReason::TemporaryTable),
        0
    );
    // Reset of an unpinned session is answered without a backend round trip.
    let before = snap.borrows;
    assert!(c.reset().await.unwrap());
    assert_eq!(proxy.snapshot().borrows, before);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_db_field_list_statistics_and_ping() {
    let db = MariaDb::shared();
    let s = schema(db, "cmds");
    db.sql(&format!("CREATE TABLE `{s}`.fl (id INT, name VARCHAR(9))"))
        .unwrap();
    let proxy = TestProxy::start(db, 2).await;
    let mut raw = proxy.raw_app(None, default_caps()).await;
    // COM_PING with no backend connection held is answered by Sluice.
    let borrows = proxy.snapshot().borrows;
    assert!(raw.command(&[0x0e]).await.is_ok());
    assert_eq!(proxy.snapshot().borrows, borrows);
    // COM_INIT_DB
    let mut p = vec![0x02];
    p.extend_from_slice(s.as_bytes());
    assert!(raw.command(&p).await.is_ok());
    let rows = raw.query("SELECT DATABASE()").await;
    assert!(
        rows.iter().any(|r| r.payload.ends_with(s.as_bytes())),
        "{rows:?}"
    );
    assert_eq!(
        raw.command(b"\x02no_such_schema").await.err_code(),
        Some(1049)
    );
    // COM_FIELD_LIST: column definitions then EOF.
    raw.write(0, b"\x04fl\0").await;
    let mut defs = 0;
    loop {
        let p = raw.read().await.unwrap();
        if p.is_eof() {
            break;
        }
        assert_eq!(p.err_code(), None, "{}", p.err_message());
        defs += 1;
    }
    assert_eq!(defs, 2);
    // COM_STATISTICS: one text packet.
    let stats = raw.command(&[0x09]).await;
    assert!(
        String::from_utf8_lossy(&stats.payload).starts_with("Uptime:"),
        "{stats:?}"
    );
    assert!(raw.command(&[0x0e]).await.is_ok());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_option_follows_the_session_across_connections() {
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 1).await;
    let caps = default_caps();
    let mut a = proxy.raw_app(None, caps).await;
    let mut b = proxy.raw_app(None, caps).await;
    // Without CLIENT_MULTI_STATEMENTS, multi-statement queries fail...
    assert_eq!(
        a.query("SELECT 1; SELECT 2").await[0].err_code(),
        Some(1064)
    );
    // ...until COM_SET_OPTION turns them on (the server answers with EOF).
    assert!(a.command(&[0x1b, 0, 0]).await.payload[0] == 0xFE);
    let r = a.query("SELECT 1; SELECT 2").await;
    assert_eq!(r[0].err_code(), None, "{}", r[0].err_message());
    // b shares the only backend connection but keeps its own setting.
    assert_eq!(
        b.query("SELECT 1; SELECT 2").await[0].err_code(),
        Some(1064)
    );
    assert!(b.query("SELECT 3").await[0].err_code().is_none());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_cursors_and_long_data() {
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 2).await;
    let mut raw = proxy.raw_app(Some("mysql"), default_caps()).await;
    // A read-only cursor over 10 rows, fetched 4 at a time.
    raw.write(0, b"\x16SELECT seq FROM seq_1_to_10").await;
    let prep = raw.read().await.unwrap();
    let id = stmt_id(&prep.payload);
    let (columns, params) = (prep.payload[5], prep.payload[7]);
    assert_eq!((columns, params), (1, 0));
    raw.read().await.unwrap(); // column definition
    assert!(raw.read().await.unwrap().is_eof());
    let mut exec = vec![0x17];
    exec.extend_from_slice(&id);
    exec.extend_from_slice(&[1, 1, 0, 0, 0]); // CURSOR_TYPE_READ_ONLY, one iteration
    raw.write(0, &exec).await;
    assert_eq!(raw.read().await.unwrap().payload, vec![1]);
    raw.read().await.unwrap();
    let eof = raw.read().await.unwrap();
    assert!(eof.is_eof());
    assert!(eof.payload[3] & 0x40 != 0, "SERVER_STATUS_CURSOR_EXISTS");
    let mut rows = 0;
    loop {
        let mut fetch = vec![0x1c];
        fetch.extend_from_slice(&id);
        fetch.extend_from_slice(&4u32.to_le_bytes());
        raw.write(0, &fetch).await;
        loop {
            let p = raw.read().await.unwrap();
            assert_eq!(p.err_code(), None, "{}", p.err_message());
            if p.is_eof() {
                if p.payload[3] & 0x80 != 0 {
                    assert_eq!(rows, 10);
                    break;
                }
                break;
            }
            rows += 1;
        }
        if rows == 10 {
            break;
        }
    }
    assert_eq!(rows, 10);
    // COM_STMT_RESET closes the cursor.
    let mut reset = vec![0x1a];
    reset.extend_from_slice(&id);
    assert!(raw.command(&reset).await.is_ok());
    // A parameter sent in pieces with COM_STMT_SEND_LONG_DATA.
    raw.write(0, b"\x16SELECT CAST(LENGTH(?) AS SIGNED), MD5(?)")
        .await;
    let prep = raw.read().await.unwrap();
    let id2 = stmt_id(&prep.payload);
    for _ in 0..(2 + 1 + 1) {
        raw.read().await.unwrap(); // 2 params + EOF, 2 columns + EOF
    }
    raw.read().await.unwrap();
    raw.read().await.unwrap();
    for param in [0u16, 1] {
        for chunk in 0..3 {
            let mut ld = vec![0x18];
            ld.extend_from_slice(&id2);
            ld.extend_from_slice(&param.to_le_bytes());
            ld.extend_from_slice(&vec![b'a' + chunk; 100_000]);
            raw.write(0, &ld).await; // no reply by design
        }
    }
    let mut exec = vec![0x17];
    exec.extend_from_slice(&id2);
    exec.extend_from_slice(&[0, 1, 0, 0, 0, 0, 1, 0xfc, 0, 0xfc, 0]);
    raw.write(0, &exec).await;
    let result = raw.read_result().await;
    let row = &result[result.len() - 2].payload;
    // Binary row: 0x00, null bitmap (1 byte), LENGTH as BIGINT (8 bytes), MD5 as lenenc string.
    assert_eq!(i64::from_le_bytes(row[2..10].try_into().unwrap()), 300_000);
    // COM_STMT_CLOSE has no reply; the statement is gone afterwards.
    let mut close = vec![0x19];
    close.extend_from_slice(&id2);
    raw.write(0, &close).await;
    let mut again = vec![0x17];
    again.extend_from_slice(&id2);
    again.extend_from_slice(&[0, 1, 0, 0, 0]);
    assert_eq!(raw.command(&again).await.err_code(), Some(1243));
    // Virtual statements multiplex: nothing pinned the session.
    assert_eq!(proxy.snapshot().pins_all(), 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_other_capabilities_get_their_own_connections() {
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 4).await;
    // Classic EOF packets on one client, OK-terminated result sets on the other.
    let mut classic = proxy.raw_app(None, default_caps()).await;
    let mut modern = proxy.app(None).await;
    for _ in 0..3 {
        let r = classic.query("SELECT 1, 'x'").await;
        assert!(r.last().unwrap().is_eof(), "{r:?}");
        let v: Option<(i32, String)> = modern.query_first("SELECT 1, 'x'").await.unwrap();
        assert_eq!(v, Some((1, "x".into())));
    }
    // CLIENT_FOUND_ROWS changes affected-row counts: never mixed with other clients.
    let s = schema(db, "found");
    db.sql(&format!(
        "CREATE TABLE `{s}`.f (a INT); INSERT INTO `{s}`.f VALUES (1)"
    ))
    .unwrap();
    let found = default_caps() | CapabilityFlags::CLIENT_FOUND_ROWS;
    let mut f = proxy.raw_app(Some(&s), found).await;
    let mut n = proxy.raw_app(Some(&s), default_caps()).await;
    let affected = |p: &common::raw::Packet| p.payload[1];
    assert_eq!(
        affected(&f.query("UPDATE f SET a = 1").await[0]),
        1,
        "matched rows with CLIENT_FOUND_ROWS"
    );
    assert_eq!(
        affected(&n.query("UPDATE f SET a = 1").await[0]),
        0,
        "changed rows without it"
    );
    proxy.stop().await;
}
