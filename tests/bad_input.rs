//! Bad input gets a clear error, the connection closed where needed, and nobody else notices.

mod common;

use std::time::{Duration, Instant};

use common::raw::{Raw, default_caps};
use common::{TestProxy, config_for};
use mysql_async::prelude::*;
use sluice_testkit::MariaDb;

/// A healthy client still gets served.
async fn still_serving(proxy: &TestProxy) {
    let mut c = proxy.app(None).await;
    let v: Option<i32> = c.query_first("SELECT 7").await.unwrap();
    assert_eq!(v, Some(7));
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_and_unknown_users_get_mysqls_1045() {
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 2).await;
    for (user, pass, using) in [
        ("app", "wrong", "YES"),
        ("nobody", "x", "YES"),
        ("app", "", "NO"),
    ] {
        let err = mysql_async::Conn::new(mysql_async::Opts::from(proxy.opts(user, pass, None)))
            .await
            .unwrap_err();
        let mysql_async::Error::Server(e) = err else {
            panic!("{user}: {err:?}")
        };
        assert_eq!((e.code, e.state.as_str()), (1045, "28000"));
        assert_eq!(
            e.message,
            format!("Access denied for user '{user}'@'127.0.0.1' (using password: {using})")
        );
    }
    let snap = proxy.snapshot();
    assert_eq!(snap.client_auth_failures, 3);
    assert_eq!(
        snap.backend_connections_opened, 0,
        "logins are checked without the backend"
    );
    still_serving(&proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_truncated_login_packets() {
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 2).await;
    // Too short to be a login packet.
    let mut raw = Raw::connect(proxy.addr).await;
    raw.write(1, &[1, 2, 3]).await;
    let reply = raw.read().await.unwrap();
    assert_eq!(reply.err_code(), Some(1043), "{}", reply.err_message());
    assert!(raw.closed().await);
    // Protocol 4.1 flags set but the body cut short.
    let mut raw = Raw::connect(proxy.addr).await;
    let mut p = default_caps().bits().to_le_bytes().to_vec();
    p.extend_from_slice(&[0, 0, 0, 1, 45]);
    raw.write(1, &p).await;
    assert_eq!(raw.read().await.unwrap().err_code(), Some(1043));
    assert!(raw.closed().await);
    // A login packet above the login limit: the error comes in sequence, right after it.
    let mut raw = Raw::connect(proxy.addr).await;
    raw.write(1, &vec![0x41; 100 * 1024]).await;
    let reply = raw.read().await.unwrap();
    assert_eq!(reply.err_code(), Some(1043), "{}", reply.err_message());
    assert_eq!(reply.seq, 2, "the reply follows the client's packet 1");
    assert!(
        reply.err_message().contains("too large"),
        "{}",
        reply.err_message()
    );
    // A pre-4.1 client.
    let mut raw = Raw::connect(proxy.addr).await;
    let mut p = vec![0u8; 32];
    p[0] = 1;
    raw.write(1, &p).await;
    assert_eq!(raw.read().await.unwrap().err_code(), Some(1251));
    // A login packet with the wrong sequence id.
    let mut raw = Raw::connect(proxy.addr).await;
    raw.write(5, &[0u8; 40]).await;
    assert_eq!(raw.read().await.unwrap().err_code(), Some(1156));
    // A header promising more than ever comes, then a vanished client.
    let mut raw = Raw::connect(proxy.addr).await;
    raw.write_bytes(&[100, 0, 0, 1, 1, 2, 3]).await;
    drop(raw);
    // A client asking for TLS while none is configured.
    let mut raw = Raw::connect(proxy.addr).await;
    let mut ssl = (default_caps() | sluice::protocol::CapabilityFlags::CLIENT_SSL)
        .bits()
        .to_le_bytes()
        .to_vec();
    ssl.extend_from_slice(&[0u8; 28]);
    raw.write(1, &ssl).await;
    let reply = raw.read().await.unwrap();
    assert_eq!(reply.err_code(), Some(1043));
    assert!(
        reply.err_message().contains("TLS"),
        "{}",
        reply.err_message()
    );
    still_serving(&proxy).await;
    assert!(proxy.snapshot().client_handshake_failures >= 5);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_time_out() {
    let db = MariaDb::shared();
    let mut config = config_for(db, 2);
    config.handshake_timeout = Duration::from_millis(400);
    let proxy = TestProxy::start_with(db, config).await;
    // Connects, reads the greeting, never answers.
    let mut silent = Raw::connect(proxy.addr).await;
    // Starts the login packet and stalls half-way.
    let mut stalled = Raw::connect(proxy.addr).await;
    stalled.write_bytes(&[60, 0, 0, 1, 0x85, 0xa6]).await;
    let t = Instant::now();
    for raw in [&mut silent, &mut stalled] {
        let reply = raw.read().await.unwrap();
        assert_eq!(reply.err_code(), Some(1159), "{}", reply.err_message());
        assert!(
            reply
                .err_message()
                .contains("login not completed within 400ms"),
            "{}",
            reply.err_message()
        );
        assert!(raw.closed().await);
    }
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    still_serving(&proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands() {
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 2).await;
    let caps = default_caps();
    // Unknown command byte: an error, and the session goes on (as with MySQL).
    let mut raw = proxy.raw_app(None, caps).await;
    let reply = raw.command(&[0x99, 1, 2]).await;
    assert_eq!(reply.err_code(), Some(1047));
    assert!(
        raw.command(&[0x0e]).await.is_ok(),
        "COM_PING after an unknown command"
    );
    // Replication and shutdown commands are refused by name.
    let reply = raw.command(&[0x12, 0, 0, 0, 0]).await;
    assert_eq!(reply.err_code(), Some(1047));
    assert_eq!(reply.err_message(), "Sluice does not relay COM_BINLOG_DUMP");
    let reply = raw.command(&[0x08, 0]).await;
    assert_eq!(reply.err_message(), "Sluice does not relay COM_SHUTDOWN");
    // A command out of sequence: error and close.
    raw.write(3, &[0x0e]).await;
    assert_eq!(raw.read().await.unwrap().err_code(), Some(1156));
    assert!(raw.closed().await);
    // An empty command packet: error and close.
    let mut raw = proxy.raw_app(None, caps).await;
    raw.write(0, &[]).await;
    assert_eq!(raw.read().await.unwrap().err_code(), Some(1835));
    assert!(raw.closed().await);
    // A query cut off mid-packet by a vanishing client.
    let mut raw = proxy.raw_app(None, caps).await;
    raw.write_bytes(&[200, 0, 0, 0, 0x03, b'S', b'E']).await;
    drop(raw);
    // Statements the session never prepared.
    let mut raw = proxy.raw_app(None, caps).await;
    let reply = raw.command(&[0x17, 9, 0, 0, 0, 0, 1, 0, 0, 0]).await;
    assert_eq!(reply.err_code(), Some(1243));
    raw.write(0, &[0x19, 9, 0, 0, 0]).await; // COM_STMT_CLOSE: no reply
    assert!(raw.command(&[0x0e]).await.is_ok());
    still_serving(&proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packets_are_refused() {
    let db = MariaDb::shared();
    let mut config = config_for(db, 2);
    config.max_allowed_packet = 1 << 20;
    let proxy = TestProxy::start_with(db, config).await;
    let mut c = proxy.app(None).await;
    let big = format!("SELECT '{}'", "x".repeat(2 << 20));
    let err = c.query_drop(big).await.unwrap_err();
    match err {
        mysql_async::Error::Server(e) => assert_eq!(e.code, 1153, "{}", e.message),
        // The client may see the close before it reads the error.
        mysql_async::Error::Io(_) => {}
        other => panic!("{other:?}"),
    }
    // Just under the limit passes.
    let mut c = proxy.app(None).await;
    let fits = format!("SELECT LENGTH('{}')", "x".repeat(1000 * 1000));
    let n: Option<i64> = c.query_first(fits).await.unwrap();
    assert_eq!(n, Some(1_000_000));
    still_serving(&proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_result_costs_nobody_else() {
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 1).await;
    let mut raw = proxy.raw_app(Some("mysql"), default_caps()).await;
    // About 40 MB of result that nobody reads.
    let mut p = vec![0x03];
    p.extend_from_slice(b"SELECT REPEAT('x', 1000) FROM seq_1_to_40000");
    raw.write(0, &p).await;
    let first = raw.read().await.unwrap();
    assert_eq!(first.payload, vec![1]);
    drop(raw);
    // The only backend connection was mid-result: it must be replaced, not reused.
    still_serving(&proxy).await;
    still_serving(&proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_connections_leave_the_process_untouched() {
    let db = MariaDb::shared();
    let mut config = config_for(db, 2);
    config.handshake_timeout = Duration::from_millis(500);
    let proxy = TestProxy::start_with(db, config).await;
    let mut seed = 0x9E3779B97F4A7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..300 {
        let mut raw = Raw::connect(proxy.addr).await;
        let len = (next() % 200) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 3 == 0 && bytes.len() > 4 {
            // A plausible header in front of garbage.
            let n = bytes.len() - 4;
            bytes[..4].copy_from_slice(&[n as u8, 0, 0, 1]);
        }
        raw.write_bytes(&bytes).await;
        drop(raw);
    }
    still_serving(&proxy).await;
    proxy.stop().await;
}
