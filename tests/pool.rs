//! The pool's life cycle: warm connections, idle and lifetime limits, dead connections, one cap
//! for all users, an unreachable backend.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestProxy, config_for, server_connections};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};
use sluice_testkit::{MariaDb, free_port};

async fn thread_id(c: &mut Conn) -> u32 {
    c.query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap()
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_is_kept_warm_once_a_pool_is_used() {
    let db = MariaDb::start().unwrap();
    let mut config = config_for(&db, 5);
    config.backend.min_idle = 3;
    let proxy = TestProxy::start_with(&db, config).await;
    let mut c = proxy.app(None).await;
    c.query_drop("SELECT 1").await.unwrap();
    // min_idle counts idle connections: a top-up that ran while the session's own connection
    // was lent leaves one more once it is back, which idle_timeout later trims.
    // Wait for the top-up to settle (nothing lent, nothing being opened).
    let (open, idle) = proxy
        .wait_pool(Duration::from_secs(5), |open, idle| {
            idle >= 3 && open == idle
        })
        .await;
    assert!(
        idle >= 3 && open <= 4 && open == idle,
        "open {open}, idle {idle}"
    );
    assert!(
        eventually(Duration::from_secs(5), async || server_connections(
            &db, "app"
        )
        .await
            == open)
        .await
    );
    drop(c);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_idle_timeout() {
    let db = MariaDb::start().unwrap();
    let mut config = config_for(&db, 4);
    config.backend.idle_timeout = Duration::from_millis(800);
    let proxy = Arc::new(TestProxy::start_with(&db, config).await);
    // Three transactions at once open three connections.
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut c = proxy.app(None).await;
        c.query_drop("BEGIN").await.unwrap();
        c.query_drop("SELECT 1").await.unwrap();
        conns.push(c);
    }
    assert_eq!(server_connections(&db, "app").await, 3);
    for c in &mut conns {
        c.query_drop("COMMIT").await.unwrap();
    }
    let closed_at = Instant::now();
    let (open, _) = proxy
        .wait_pool(Duration::from_secs(5), |open, _| open == 0)
        .await;
    assert_eq!(open, 0, "idle connections outlived idle_timeout");
    assert!(closed_at.elapsed() >= Duration::from_millis(700));
    assert!(
        eventually(Duration::from_secs(5), async || server_connections(
            &db, "app"
        )
        .await
            == 0)
        .await
    );
    // Sessions are unaffected: the next query opens a fresh connection.
    let v: Option<i32> = conns[0].query_first("SELECT 2").await.unwrap();
    assert_eq!(v, Some(2));
    drop(conns);
    Arc::into_inner(proxy).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_replaced_after_max_lifetime() {
    let db = MariaDb::shared();
    let mut config = config_for(db, 1);
    config.backend.max_lifetime = Duration::from_millis(600);
    let proxy = TestProxy::start_with(db, config).await;
    let mut c = proxy.app(None).await;
    let first = thread_id(&mut c).await;
    let started = Instant::now();
    let replaced = eventually(Duration::from_secs(5), async || {
        thread_id(&mut c).await != first
    })
    .await;
    assert!(replaced, "still on server thread {first}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    drop(c);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_while_idle_is_replaced_unseen() {
    let db = MariaDb::shared();
    let mut config = config_for(db, 1);
    config.backend.liveness_check_after = Duration::from_millis(200);
    let proxy = TestProxy::start_with(db, config).await;
    let mut c = proxy.app(None).await;
    let first = thread_id(&mut c).await;
    // The server ends the idle connection (as wait_timeout or a failover would).
    db.sql(&format!("KILL {first}")).unwrap();
    let killed_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), async || {
            let n = db
                .sql(&format!(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {first}"
                ))
                .unwrap();
            n.trim() == "0" && killed_at.elapsed() > Duration::from_millis(250)
        })
        .await
    );
    // Past liveness_check_after, the dead connection is found before it is used.
    let second = thread_id(&mut c).await;
    assert_ne!(first, second);
    assert_eq!(proxy.snapshot().backend_connections_opened, 2);
    drop(c);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cap_for_all_users() {
    let db = MariaDb::shared();
    let proxy = TestProxy::start(db, 2).await;
    let mut a1 = proxy.app(None).await;
    let mut a2 = proxy.app(None).await;
    let mut o = Conn::new(Opts::from(proxy.opts("other", &proxy.other_password, None)))
        .await
        .unwrap();
    // app's two connections fill the cap...
    a1.query_drop("BEGIN").await.unwrap();
    a1.query_drop("SELECT 1").await.unwrap();
    a2.query_drop("BEGIN").await.unwrap();
    a2.query_drop("SELECT 1").await.unwrap();
    a1.query_drop("COMMIT").await.unwrap();
    a2.query_drop("COMMIT").await.unwrap();
    let (open, idle) = proxy
        .wait_pool(Duration::from_secs(2), |o, i| o == 2 && i == 2)
        .await;
    assert_eq!((open, idle), (2, 2));
    // ...and other, with nothing of its own, takes the place of one of app's idle ones.
    let user: Option<String> = o.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(user.as_deref(), Some("other@%"));
    let snap = proxy.snapshot();
    assert_eq!(snap.backend_connections_peak, 2);
    assert_eq!(proxy.pool.counts().0, 2);
    drop((a1, a2, o));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_makes_commands_wait_then_fail_clearly() {
    let db = MariaDb::shared();
    let mut config = config_for(db, 2);
    // Nothing listens here.
    config.backend.address = format!("127.0.0.1:{}", free_port());
    config.backend.borrow_timeout = Duration::from_millis(800);
    let proxy = TestProxy::start_with(db, config).await;
    // Logins need no backend: clients connect even while the database is away.
    let mut raw = proxy.raw_app(None, common::raw::default_caps()).await;
    let t = Instant::now();
    let reply = raw.query("SELECT 1").await;
    let waited = t.elapsed();
    assert_eq!(reply[0].err_code(), Some(9501));
    let msg = reply[0].err_message();
    // The monitor knows the host is down; the message says so and why.
    assert!(
        msg.contains("no writable database host has answered") && msg.contains("onnection refused"),
        "{msg}"
    );
    assert!(
        waited >= Duration::from_millis(700),
        "retried until the borrow timeout: {waited:?}"
    );
    // The session is still there for when the database comes back.
    assert!(raw.command(&[0x0e]).await.is_ok());
    assert!(proxy.snapshot().backend_connect_failures >= 2);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_take_the_whole_pool() {
    let db = MariaDb::start().unwrap();
    let mut config = config_for(&db, 4);
    config.backend.max_connections_per_user = 2;
    config.backend.borrow_timeout = Duration::from_secs(10);
    let proxy = TestProxy::start_with(&db, config).await;
    // Four transactions of app at once: two run, two wait for them.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut c = proxy.app(None).await;
        c.query_drop("BEGIN").await.unwrap();
        c.query_drop("SELECT 1").await.unwrap();
        holders.push(c);
    }
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let opts = proxy.opts("app", &proxy.app_password, None);
            tokio::spawn(async move {
                let mut c = Conn::new(Opts::from(opts)).await.unwrap();
                let v: Option<u8> = c.query_first("SELECT 5").await.unwrap();
                v
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server_connections(&db, "app").await, 2);
    // Another user is served at once, though app's sessions wait.
    let mut o = Conn::new(Opts::from(proxy.opts("other", &proxy.other_password, None)))
        .await
        .unwrap();
    let started = Instant::now();
    let v: Option<u8> = o.query_first("SELECT 6").await.unwrap();
    assert_eq!(v, Some(6));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(waiters.iter().all(|w| !w.is_finished()));
    for c in &mut holders {
        c.query_drop("COMMIT").await.unwrap();
    }
    for w in waiters {
        assert_eq!(w.await.unwrap(), Some(5));
    }
    assert!(server_connections(&db, "app").await <= 2);
    drop((holders, o));
    proxy.stop().await;
}
