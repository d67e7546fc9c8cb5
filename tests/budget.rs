//! Several Sluice instances, one database budget: two `sluice` processes in front of one
//! database share `max_connections_per_user` with `per_user_scope = "database"`. The database
//! never sees more of the user's connections than the budget, both instances serve their
//! clients, and when one instance is killed the other takes over its share.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};
use sluice_testkit::{MariaDb, SluiceOptions, SluiceProcess, client_opts};

const BUDGET: usize = 4;

fn instance(db: &MariaDb) -> SluiceProcess {
    SluiceProcess::start(SluiceOptions {
        max_connections: 10,
        backend_extra_toml: format!(
            "max_connections_per_user = {BUDGET}\nper_user_scope = \"database\"\n\
             borrow_timeout = \"30s\"\nmonitor_interval = \"200ms\""
        ),
        ..SluiceOptions::for_mariadb(db)
    })
    .expect("start sluice")
}

/// `clients` sessions on `proxy`, each running short transactions until `stop`; returns how
/// many committed.
async fn load(
    proxy: std::net::SocketAddr,
    password: String,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (stop, password) = (stop.clone(), password.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(Opts::from(client_opts(proxy, "app", &password, None)))
                .await
                .expect("login");
            let mut done = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                c.query_drop("BEGIN").await.expect("BEGIN");
                c.query_drop("SELECT SLEEP(0.02)")
                    .await
                    .expect("a statement");
                c.query_drop("COMMIT").await.expect("COMMIT");
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("client");
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_never_exceed_one_budget_and_both_serve() {
    let db = MariaDb::start().unwrap();
    let (a, b) = (instance(&db), instance(&db));
    let password = db.app_password().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn(sample_max(
        db.addr(),
        db.root_password().to_string(),
        stop.clone(),
        max.clone(),
    ));
    let on_a = tokio::spawn(load(a.addr(), password.clone(), 10, stop.clone()));
    let on_b = tokio::spawn(load(b.addr(), password.clone(), 10, stop.clone()));
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let (done_a, done_b) = (on_a.await.unwrap(), on_b.await.unwrap());
    sampler.await.unwrap();
    let seen = max.load(Ordering::Relaxed);
    println!("budget {BUDGET}: the database saw at most {seen}; transactions: {done_a} + {done_b}");
    assert!(seen <= BUDGET, "the database saw {seen} connections of app");
    assert!(seen >= 2, "the budget was hardly used: {seen}");
    assert!(done_a > 20 && done_b > 20, "{done_a} and {done_b}");

    // One instance dies: the other takes the whole budget (still never more).
    drop(a);
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn(sample_max(
        db.addr(),
        db.root_password().to_string(),
        stop.clone(),
        max.clone(),
    ));
    let on_b = tokio::spawn(load(b.addr(), password, 10, stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let done = on_b.await.unwrap();
    sampler.await.unwrap();
    let seen = max.load(Ordering::Relaxed);
    println!("after one instance stopped: at most {seen}, {done} transactions");
    assert_eq!(seen, BUDGET, "the remaining instance uses the whole budget");
    drop(b);
}

/// The most connections of `app` the database at `addr` showed while `stop` was unset,
/// sampled every few milliseconds from its own process list (as root, so the sample does not
/// count itself).
async fn sample_max(
    addr: std::net::SocketAddr,
    root: String,
    stop: Arc<AtomicBool>,
    max: Arc<AtomicUsize>,
) {
    let opts = client_opts(addr, "root", &root, None);
    let mut c = Conn::new(Opts::from(opts)).await.expect("root");
    while !stop.load(Ordering::Relaxed) {
        let n: Option<usize> = c
            .query_first("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'app'")
            .await
            .expect("processlist");
        max.fetch_max(n.unwrap_or(0), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}
