//! A burst: 500 function instances at once, each with its own init (secret read, own pool),
//! through one Sluice whose backend pool holds 10 connections, in front of a MariaDB that
//! accepts hardly more than that.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{SLUICE_MAX_CONNECTIONS, moto, rds_secret, secrets_client};
use serde_json::json;
use sluice_function::{Config, Customer, Function};
use sluice_testkit::{MariaDb, MariaDbOptions, Moto, SluiceOptions, SluiceProcess};
use tokio::sync::Barrier;

const INSTANCES: usize = 500;
/// The whole burst must finish within this; it takes a few seconds.
const BURST_LIMIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_instances_through_a_pool_of_ten() {
    sluice::server::raise_fd_limit().expect("raise the open-file limit");
    // Sluice's pool, plus one for root's own statements: a server that refuses the 12th
    // connection proves that Sluice never opened more than its pool allows.
    let db = MariaDb::start_with(MariaDbOptions {
        max_connections: SLUICE_MAX_CONNECTIONS as u32 + 1,
        ..MariaDbOptions::default()
    })
    .unwrap();
    let proxy = SluiceProcess::start(SluiceOptions {
        max_connections: SLUICE_MAX_CONNECTIONS,
        backend_extra_toml: "borrow_timeout = \"60s\"".to_owned(),
        ..SluiceOptions::for_mariadb(&db)
    })
    .unwrap();
    db.sql("CREATE DATABASE burst").unwrap();
    let arn = moto()
        .create_secret(
            &Moto::unique_name("fn-burst"),
            &rds_secret(db.app_password(), proxy.addr(), "burst"),
        )
        .unwrap();
    let config = Config::new(&arn, proxy.addr().ip().to_string(), proxy.addr().port());

    let started = Instant::now();
    // Every instance inits, then all invoke at once: 500 open client sessions on Sluice and
    // 500 invocations in flight together.
    let all_ready = Arc::new(Barrier::new(INSTANCES));
    let instances = (0..INSTANCES as i32).map(|id| {
        let config = config.clone();
        let all_ready = all_ready.clone();
        tokio::spawn(async move {
            // A cold start: its own Secrets Manager client, secret read and pool.
            let function = Function::init(config, secrets_client()).await;
            all_ready.wait().await;
            let function = function?;
            let response = function
                .handle(json!({"customers": [{"id": id, "name": format!("customer {id}")}]}))
                .await;
            function.shutdown().await;
            response.map(|r| (id, r))
        })
    });
    let results = tokio::time::timeout(BURST_LIMIT, join_all(instances.collect()))
        .await
        .unwrap_or_else(|_| panic!("the burst did not finish within {BURST_LIMIT:?}"));
    let took = started.elapsed();

    let mut failures = Vec::new();
    for result in results {
        match result.expect("instance task panicked") {
            Ok((id, response)) => assert_eq!(
                response.customers,
                vec![Customer {
                    id,
                    name: Some(format!("customer {id}"))
                }]
            ),
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {INSTANCES} invocations failed, for example: {:?}\nsluice log:\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        proxy.log_tail()
    );
    let count = db.sql("SELECT COUNT(*) FROM burst.Customer").unwrap();
    assert_eq!(count.trim(), INSTANCES.to_string());
    let max_used = db
        .sql("SHOW GLOBAL STATUS LIKE 'Max_used_connections'")
        .unwrap();
    let max_used: usize = max_used
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected status line {max_used:?}"));
    assert!(
        // The pool's cap, this test's own connection, and the failover monitor's: with one
        // host and no monitor_user it checks the host's greeting when a session meets trouble
        // (a connect that timed out under the burst), outside the pool (README, Failover).
        max_used <= SLUICE_MAX_CONNECTIONS + 2,
        "MariaDB saw {max_used} connections at once"
    );
    eprintln!(
        "{INSTANCES} instances (init + invocation) in {took:?}; MariaDB's peak connections: \
         {max_used}"
    );
}

/// Awaits every handle, in order.
async fn join_all<T>(
    handles: Vec<tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await);
    }
    out
}
