//! Slow and stalled clients cannot hold the database: a command is read before a backend
//! connection is borrowed for it (or, when too large to buffer, streamed under the same
//! deadline), a header announcing more than `max_allowed_packet` is refused at once, and a
//! session idle inside a transaction is rolled back after `idle_in_transaction_timeout`.

mod common;

use std::time::{Duration, Instant};

use common::raw::{Raw, default_caps};
use common::{TestProxy, config_for, schema, server_connections};
use mysql_async::prelude::*;
use sluice_testkit::MariaDb;

/// Starts `n` logged-in raw clients that each announce a COM_QUERY of `len` bytes, send the
/// first `sent` bytes of it, and stop.
async fn stallers(proxy: &TestProxy, n: usize, len: usize, sent: usize) -> Vec<Raw> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut raw = proxy.raw_app(None, default_caps()).await;
        let mut bytes = sluice::protocol::frame_header(len, 0).to_vec();
        bytes.push(0x03);
        bytes.extend(std::iter::repeat_n(b' ', sent - 1));
        raw.write_bytes(&bytes).await;
        out.push(raw);
    }
    out
}

/// `clients` sessions each running `queries` short queries; every one must succeed.
async fn others_keep_working(proxy: &TestProxy, clients: usize, queries: usize) -> Duration {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let opts = proxy.opts("other", &proxy.other_password, None);
        tasks.push(tokio::spawn(async move {
            let mut c = mysql_async::Conn::new(mysql_async::Opts::from(opts))
                .await
                .expect("login");
            for i in 0..queries {
                let v: Option<usize> = c
                    .query_first(format!("SELECT {i}"))
                    .await
                    .expect("a query while others stall");
                assert_eq!(v, Some(i));
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    started.elapsed()
}

/// The staller's next packet is ERR `code`, then the connection closes.
async fn refused_with(raw: &mut Raw, code: u16) {
    let p = raw.read().await.expect("an error before the close");
    assert_eq!(p.err_code(), Some(code), "{}", p.err_message());
    assert!(raw.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_in_clients_stalled_mid_query_hold_no_backend_connection() {
    let db = MariaDb::shared();
    let mut config = config_for(db, 8);
    config.client_read_timeout = Duration::from_secs(2);
    config.backend.borrow_timeout = Duration::from_secs(5);
    let proxy = TestProxy::start_with(db, config).await;
    // As many stallers as the pool has connections, each half-way through 200 kB.
    let mut stalled = stallers(&proxy, 8, 200_000, 100_000).await;
    let took = others_keep_working(&proxy, 16, 20).await;
    let (open, _, _) = proxy.pool.counts();
    assert!(open <= 8, "open {open}");
    for raw in &mut stalled {
        refused_with(raw, 1159).await;
    }
    println!("16 clients x 20 queries beside 8 stalled uploads: {took:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_too_large_to_buffer_is_streamed_under_the_deadline() {
    let db = MariaDb::shared();
    let mut config = config_for(db, 2);
    config.client_read_timeout = Duration::from_secs(2);
    config.max_buffered_command = 64 * 1024;
    config.backend.borrow_timeout = Duration::from_secs(10);
    let proxy = TestProxy::start_with(db, config).await;
    // Both connections borrowed by uploads of 600 kB that stop at 300 kB.
    let started = Instant::now();
    let mut stalled = stallers(&proxy, 2, 600_000, 300_000).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Others wait for them, and go on once the deadline ends the stalled uploads.
    others_keep_working(&proxy, 4, 5).await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(8), "waited {waited:?}");
    for raw in &mut stalled {
        refused_with(raw, 1159).await;
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_announcing_more_than_max_allowed_packet_is_refused_at_once() {
    let db = MariaDb::shared();
    let mut config = config_for(db, 2);
    config.max_allowed_packet = 1 << 20;
    let proxy = TestProxy::start_with(db, config).await;
    let mut raw = proxy.raw_app(None, default_caps()).await;
    let started = Instant::now();
    let mut bytes = sluice::protocol::frame_header(2 << 20, 0).to_vec();
    bytes.extend_from_slice(b"\x03SELECT ");
    raw.write_bytes(&bytes).await;
    refused_with(&mut raw, 1153).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(proxy.pool.counts().0, 0, "nothing was borrowed for it");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_idle_inside_a_transaction_is_rolled_back_and_closed() {
    let db = MariaDb::shared();
    let s = schema(db, "iit");
    db.sql(&format!(
        "CREATE TABLE {s}.t (i INT PRIMARY KEY) ENGINE=InnoDB"
    ))
    .unwrap();
    let mut config = config_for(db, 2);
    config.idle_in_transaction_timeout = Duration::from_secs(1);
    let proxy = TestProxy::start_with(db, config).await;
    let mut idle_outside = proxy.app(None).await;
    idle_outside.query_drop("SELECT 1").await.unwrap();
    let mut raw = proxy.raw_app(None, default_caps()).await;
    assert!(raw.query("BEGIN").await[0].is_ok());
    assert!(raw.query(&format!("INSERT INTO {s}.t VALUES (1)")).await[0].is_ok());
    let started = Instant::now();
    refused_with(&mut raw, 4031).await;
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "{after:?}"
    );
    let rows = db.sql(&format!("SELECT COUNT(*) FROM {s}.t")).unwrap();
    assert_eq!(rows.trim(), "0", "the transaction was rolled back");
    // A session idle outside a transaction is not touched by it.
    let v: Option<u8> = idle_outside.query_first("SELECT 7").await.unwrap();
    assert_eq!(v, Some(7));
    assert!(
        common::eventually(Duration::from_secs(5), async || {
            server_connections(db, "app").await <= 2
        })
        .await
    );
    proxy.stop().await;
}
