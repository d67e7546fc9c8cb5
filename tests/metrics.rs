//! `/metrics`, `/healthz` and `/readyz` of a proxy under real load: counters and gauges move
//! as the sessions do.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestProxy, config_for, eventually, http_get, http_request, sample, schema};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};
use sluice_testkit::MariaDb;
use tokio::sync::Barrier;

/// Scrapes `/metrics`.
async fn scrape(proxy: &TestProxy) -> String {
    let (status, body) = proxy.http("/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or_else(|| panic!("{name}{labels:?} missing from:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_pins_timeouts_and_load() {
    let db = MariaDb::shared();
    let s = schema(db, "metrics");
    db.sql(&format!("CREATE TABLE `{s}`.t (a INT)")).unwrap();
    let mut config = config_for(db, 1);
    config.backend.borrow_timeout = Duration::from_millis(300);
    let proxy = TestProxy::start_with(db, config).await;

    let before = scrape(&proxy).await;
    assert_eq!(value(&before, "sluice_client_connections", &[]), 0.0);
    assert_eq!(
        value(&before, "sluice_max_database_connections_allowed", &[]),
        1.0
    );
    assert_eq!(value(&before, "sluice_build_info", &[]), 1.0);

    // A user variable pins the session to the only backend connection.
    let mut pinned = proxy.app(Some(&s)).await;
    // (Logged in first: mysql_async runs a query at login, which needs a connection too.)
    let mut waiting = proxy.app(Some(&s)).await;
    pinned.query_drop("SET @x = 1").await.unwrap();
    let text = scrape(&proxy).await;
    let pin = [("reason", "user_variable")];
    assert_eq!(
        value(
            &text,
            "sluice_database_connections_currently_session_pinned",
            &pin
        ),
        1.0
    );
    assert_eq!(value(&text, "sluice_session_pins_total", &pin), 1.0);
    assert_eq!(value(&text, "sluice_database_connections", &[]), 1.0);
    assert_eq!(value(&text, "sluice_database_connections_in_use", &[]), 1.0);
    assert_eq!(
        value(
            &text,
            "sluice_client_connections_authenticated",
            &[("user", "app"), ("tls", "false")]
        ),
        2.0
    );

    // So another session's borrow times out.
    let err = waiting.query_drop("SELECT 1").await.unwrap_err();
    assert!(
        matches!(&err, mysql_async::Error::Server(e) if e.code == 9501),
        "{err}"
    );
    let text = scrape(&proxy).await;
    let app = [("user", "app")];
    assert_eq!(
        value(
            &text,
            "sluice_database_connection_borrow_timeouts_total",
            &app
        ),
        1.0
    );
    assert_eq!(
        value(&text, "sluice_errors_total", &[("kind", "borrow_timeout")]),
        1.0
    );
    assert!(
        value(
            &text,
            "sluice_database_connections_borrow_latency_seconds_count",
            &app
        ) >= 1.0
    );

    // Ending the pinned session unpins it.
    pinned.disconnect().await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            sample(
                &scrape(&proxy).await,
                "sluice_database_connections_currently_session_pinned",
                &pin,
            ) == Some(0.0)
        })
        .await,
        "the pinned gauge did not drop"
    );

    // A transaction left open shows in the in-transaction gauge.
    let mut tx = waiting;
    tx.query_drop("BEGIN").await.unwrap();
    tx.query_drop("INSERT INTO t VALUES (1)").await.unwrap();
    let text = scrape(&proxy).await;
    assert_eq!(
        value(
            &text,
            "sluice_database_connections_currently_in_transaction",
            &[]
        ),
        1.0
    );
    tx.query_drop("COMMIT").await.unwrap();
    drop(tx);

    // Load: 4 sessions, 50 statements each; scraped halfway (the sessions hold there until the
    // scrape is taken, so a fast machine cannot finish the load first) and after.
    let queries_before = value(&scrape(&proxy).await, "sluice_query_requests_total", &app);
    let halfway = Arc::new(Barrier::new(5));
    let scraped = Arc::new(Barrier::new(5));
    let mut load = Vec::new();
    for _ in 0..4 {
        let opts = Opts::from(proxy.opts("app", &proxy.app_password, Some(&s)));
        let (halfway, scraped) = (halfway.clone(), scraped.clone());
        load.push(tokio::spawn(async move {
            let mut c = Conn::new(opts).await?;
            for i in 0..50 {
                if i == 25 {
                    halfway.wait().await;
                    scraped.wait().await;
                }
                c.query_drop(format!("SELECT {i} FROM t")).await?;
            }
            c.disconnect().await?;
            Ok::<_, mysql_async::Error>(())
        }));
    }
    tokio::time::timeout(Duration::from_secs(30), halfway.wait())
        .await
        .expect("the load reaches its halfway point");
    let during = scrape(&proxy).await;
    scraped.wait().await;
    assert!(
        value(&during, "sluice_client_connections", &[]) >= 4.0,
        "{during}"
    );
    assert!(value(&during, "sluice_query_requests_total", &app) >= queries_before + 100.0);
    for task in load {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the load finishes")
            .unwrap()
            .unwrap();
    }
    let after = scrape(&proxy).await;
    assert!(value(&after, "sluice_query_requests_total", &app) >= queries_before + 200.0);
    for h in [
        "sluice_query_response_latency_seconds_count",
        "sluice_query_database_response_latency_seconds_count",
    ] {
        assert!(value(&after, h, &app) >= 200.0, "{h}:\n{after}");
    }
    // Every latency sample lands in some bucket: the +Inf bucket equals the count.
    assert_eq!(
        value(
            &after,
            "sluice_query_response_latency_seconds_bucket",
            &[("user", "app"), ("le", "+Inf")]
        ),
        value(&after, "sluice_query_response_latency_seconds_count", &app)
    );
    assert!(
        value(
            &after,
            "sluice_bytes_relayed_total",
            &[("user", "app"), ("direction", "to_client")]
        ) > 0.0
    );
    assert!(
        value(
            &after,
            "sluice_bytes_relayed_total",
            &[("user", "app"), ("direction", "to_database")]
        ) > 0.0
    );
    assert!(value(&after, "sluice_client_connections_received_total", &[]) >= 6.0);
    assert!(
        value(
            &after,
            "sluice_client_connections_setup_succeeded_total",
            &app
        ) >= 6.0
    );
    assert!(value(&after, "sluice_database_connection_requests_total", &[]) >= 200.0);
    assert!(
        value(
            &after,
            "sluice_database_connections_setup_succeeded_total",
            &[]
        ) >= 1.0
    );

    // Refused logins: the known user gets its label, a guessed name does not.
    let wrong = Conn::new(Opts::from(proxy.opts("app", "wrong", None))).await;
    assert!(wrong.is_err());
    let nobody = Conn::new(Opts::from(proxy.opts("nobody_at_all", "x", None))).await;
    assert!(nobody.is_err());
    let text = scrape(&proxy).await;
    assert_eq!(
        value(
            &text,
            "sluice_client_connections_setup_failed_auth_total",
            &app
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "sluice_client_connections_setup_failed_auth_total",
            &[("user", "(unknown)")]
        ),
        1.0
    );
    assert!(!text.contains("nobody_at_all"));
    assert!(value(&text, "sluice_errors_total", &[("kind", "access_denied")]) >= 2.0);
    assert!(
        !text.contains(&proxy.app_password),
        "no secret in the metrics"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer_for_ecs_and_nlb() {
    let db = MariaDb::shared();
    let s = schema(db, "health");
    db.sql(&format!("CREATE TABLE `{s}`.t (a INT)")).unwrap();
    let proxy = TestProxy::start(db, 2).await;
    assert_eq!(proxy.http("/healthz").await, (200, "ok\n".to_string()));
    let (status, body) = proxy.http("/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    // The answer is cached: a second check right away opens no database connection.
    let opened = proxy.snapshot().backend_connections_opened;
    assert_eq!(proxy.http("/readyz").await.0, 200);
    assert_eq!(proxy.snapshot().backend_connections_opened, opened);
    // Its connection is closed again and not counted as open.
    assert_eq!(proxy.snapshot().backend_connections, 0);

    assert_eq!(proxy.http("/").await.0, 404);
    assert_eq!(proxy.http("/metrics/x").await.0, 404);
    let addr = proxy.http_addr.unwrap();
    assert_eq!(http_request(addr, "POST", "/metrics").await.0, 405);

    // Draining: /readyz turns 503 while an open transaction keeps the proxy up.
    let mut tx = proxy.app(Some(&s)).await;
    tx.query_drop("BEGIN").await.unwrap();
    tx.query_drop("INSERT INTO t VALUES (1)").await.unwrap();
    let stop = tokio::spawn(proxy.stop());
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (status, body) = http_get(addr, "/readyz").await;
            status == 503 && body.contains("draining")
        })
        .await,
        "/readyz did not turn 503 while draining"
    );
    assert_eq!(
        http_get(addr, "/healthz").await.0,
        200,
        "the process still serves"
    );
    tx.query_drop("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), stop)
        .await
        .expect("the proxy stops once the transaction ended")
        .unwrap();
    assert_eq!(
        db.sql(&format!("SELECT COUNT(*) FROM `{s}`.t"))
            .unwrap()
            .trim(),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_not_ready_when_the_database_is_unreachable() {
    let db = MariaDb::shared();
    let mut config = config_for(db, 2);
    config.backend.address = format!("127.0.0.1:{}", sluice_testkit::free_port());
    config.backend.connect_timeout = Duration::from_millis(500);
    let proxy = TestProxy::start_with(db, config).await;
    assert_eq!(proxy.http("/healthz").await.0, 200);
    let (status, body) = proxy.http("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready:"), "{body}");
    proxy.stop().await;
}
