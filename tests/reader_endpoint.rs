//! The reader endpoint (`reader_listen`): read-only sessions go to a replica while its
//! replication lag is within `max_replica_lag`, to the writer while it is not, and back once
//! the replica catches up. Real lag: the replica's applier is held behind a read lock.

mod common;

use std::time::{Duration, Instant};

use common::{TestProxy, config_for};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};
use sluice_testkit::ReplicaPair;

/// Runs `SELECT @@server_id` on `c` until it answers `want`, up to `limit`; returns how long
/// that took.
async fn served_by(c: &mut Conn, want: u32, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let id: Option<u32> = c.query_first("SELECT @@server_id").await.unwrap();
        if id == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "still served by server {id:?}, not {want}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_use_the_replica_within_the_lag_bound_and_the_writer_otherwise() {
    let pair = ReplicaPair::start().unwrap();
    pair.primary
        .sql("CREATE DATABASE lag; CREATE TABLE lag.t (i INT PRIMARY KEY) ENGINE=InnoDB")
        .unwrap();
    pair.wait_caught_up(Duration::from_secs(10)).unwrap();
    let mut config = config_for(&pair.primary, 6);
    config.backend.address = format!("{},{}", pair.primary.addr(), pair.replica.addr());
    config.reader_listen = "127.0.0.1:0".into();
    config.backend.max_replica_lag = Duration::from_secs(1);
    config.backend.monitor_interval = Duration::from_millis(200);
    let proxy = TestProxy::start_with(&pair.primary, config).await;
    let reader_addr = proxy.reader_addr.expect("the reader endpoint is on");
    let reader_opts = || {
        Opts::from(sluice_testkit::client_opts(
            reader_addr,
            "app",
            &proxy.app_password,
            None,
        ))
    };
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(Conn::new(reader_opts()).await.unwrap());
    }
    let mut writer = proxy.app(None).await;
    for r in &mut readers {
        served_by(r, 2, Duration::from_secs(10)).await;
    }
    served_by(&mut writer, 1, Duration::from_secs(1)).await;

    // Hold the replica's applier behind a read lock and write on the primary: its lag grows
    // past the bound, and readers move to the writer.
    let mut lock = pair.replica.root_conn().await.unwrap();
    lock.query_drop("FLUSH TABLES WITH READ LOCK")
        .await
        .unwrap();
    pair.primary.sql("INSERT INTO lag.t VALUES (1)").unwrap();
    let moved = served_by(&mut readers[0], 1, Duration::from_secs(15)).await;
    for r in &mut readers[1..] {
        served_by(r, 1, Duration::from_secs(5)).await;
    }
    // Readers see the writer's data while the replica lags.
    let n: Option<u32> = readers[0]
        .query_first("SELECT COUNT(*) FROM lag.t")
        .await
        .unwrap();
    assert_eq!(n, Some(1));

    // Replication catches up: readers go back to the replica.
    lock.query_drop("UNLOCK TABLES").await.unwrap();
    pair.wait_caught_up(Duration::from_secs(10)).unwrap();
    let back = served_by(&mut readers[0], 2, Duration::from_secs(10)).await;
    served_by(&mut writer, 1, Duration::from_secs(1)).await;
    println!(
        "reader endpoint: moved to the writer {moved:?} after the lag began; back {back:?} after the replica caught up"
    );
    drop((readers, writer, lock));
    proxy.stop().await;
}
