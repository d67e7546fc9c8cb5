//! The differential checker in the test suite: seeded schedules of two to four interleaved
//! clients, each run on direct connections and through Sluice with a pool of one or two, every
//! answer compared byte for byte, and every hold compared with the model. Zero divergences.
//!
//! `SLUICE_CHECKER_SCHEDULES` (default 2,000) and `SLUICE_CHECKER_SECONDS` (default 150) bound
//! the run; `SLUICE_CHECKER_SEED` picks the first seed, `SLUICE_CHECKER_POOL` one pool size
//! (else 1 and 2, a worker each), `SLUICE_CHECKER_SHRINK=0` keeps a divergence whole. A
//! divergence is shrunk and printed as SQL per client.

use std::time::{Duration, Instant};

use sluice_testkit::MariaDb;
use sluice_testkit::differential::{self, Checker, Flavor, Server, Target};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run_checker(
    server: Server,
    direct: Target,
    schedules: u64,
    seconds: u64,
    first_seed: u64,
) {
    // One worker per pool size; SLUICE_CHECKER_POOL picks one.
    let pools: Vec<usize> = match std::env::var("SLUICE_CHECKER_POOL")
        .ok()
        .and_then(|p| p.parse().ok())
    {
        Some(p) => vec![p],
        None => vec![1, 2],
    };
    let shrink = env_number("SLUICE_CHECKER_SHRINK", 1) != 0;
    let mut workers = Vec::new();
    for (w, pool) in pools.clone().into_iter().enumerate() {
        let pools = pools.clone();
        let direct = direct.clone();
        workers.push(tokio::spawn(async move {
            let sluice = differential::start_sluice(&direct, pool)
                .await
                .expect("start Sluice");
            let schema = format!("dchk_{}_{w}", std::process::id());
            let checker = Checker::new(
                direct,
                sluice.under_test.clone(),
                &schema,
                Flavor { server, long: true },
            )
            .await
            .expect("checker setup");
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut ran = 0u64;
            let mut found = None;
            let mut seed = first_seed + w as u64;
            while ran < schedules / pools.len() as u64 && Instant::now() < deadline {
                match checker.check_seed(seed).await {
                    Ok(None) => {}
                    Ok(Some(div)) => {
                        let div = if shrink {
                            checker.shrink(div, Duration::from_secs(60)).await
                        } else {
                            div
                        };
                        found = Some(div.report());
                        break;
                    }
                    Err(e) => {
                        found = Some(format!("seed {seed}: checker error: {e:#}"));
                        break;
                    }
                }
                ran += 1;
                seed += pools.len() as u64;
            }
            sluice.stop().await;
            (ran, found)
        }));
    }
    let mut total = 0;
    let mut failures = Vec::new();
    for w in workers {
        let (ran, found) = w.await.expect("worker");
        total += ran;
        failures.extend(found);
    }
    println!("{server:?}: {total} schedules checked");
    assert!(failures.is_empty(), "divergences:\n{}", failures.join("\n"));
    assert!(
        total >= schedules.min(100),
        "only {total} schedules ran in the time allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_direct_and_through_sluice_give_the_same_answers() {
    let db = MariaDb::shared();
    let direct = Target {
        addr: db.addr(),
        user: "app".into(),
        password: db.app_password().into(),
    };
    run_checker(
        Server::MariaDb,
        direct,
        env_number("SLUICE_CHECKER_SCHEDULES", 2000),
        env_number("SLUICE_CHECKER_SECONDS", 150),
        env_number("SLUICE_CHECKER_SEED", 1),
    )
    .await;
}
