//! How fast clients log in with IAM against a password: one Sluice (client TLS required, IAM
//! logins checked with moto_server as STS, which verifies signatures) in front of one MariaDB,
//! mysql_async clients logging in over TLS, running `SELECT 1` and closing, 8 at a time:
//! - password: `mysql_native_password`;
//! - IAM, one token for every login (what the instances of one function send within a minute:
//!   Sluice answers from its cache after one STS call);
//! - IAM, a new token for every login (every login costs an STS call: a new role session per
//!   login, as cold starts with credentials of their own).
//!
//! Run with `cargo bench --bench logins`. Environment: `SLUICE_BENCH_LOGINS` (default 400 per
//! kind). Figures go to stdout and to `target/bench/logins.md`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};
use sluice_iam::client_token::{self, TokenRequest};
use sluice_testkit::report::{env_number, write_markdown};
use sluice_testkit::{AwsKeys, IamMoto, MariaDb, Pki, SluiceOptions, SluiceProcess};

const AT_ONCE: usize = 8;
const AUDIENCE: &str = "sluice-bench";

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("logins bench: skipped (run it with `cargo bench --bench logins`)");
        return Ok(());
    }
    let logins: usize = env_number("SLUICE_BENCH_LOGINS", 400, 10)?;
    let db = MariaDb::start()?;
    let aws = IamMoto::start()?;
    let pki = Pki::generate()?;
    let role = aws.create_role("bench-role")?;
    let sluice = SluiceProcess::start(SluiceOptions {
        max_connections: 16,
        extra_toml: format!(
            "[tls]\nmode = \"required\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
             [iam]\naudience = \"{AUDIENCE}\"\nsts_endpoint = \"{sts}\"\nsts_region = \"{region}\"\n\
             [[iam.identities]]\narn = \"{role}\"\ndatabase_user = \"app\"\n",
            cert = pki.path("server.pem").display(),
            key = pki.path("server-key.pem").display(),
            sts = aws.endpoint(),
            region = aws.region(),
        ),
        ..SluiceOptions::for_mariadb(&db)
    })?;
    // app logs in with IAM (its password, from for_mariadb, serves Sluice's backend logins);
    // other logs in with its password.
    let ca = pki.path("ca.pem");
    let opts = |user: &str, password: &str| -> OptsBuilder {
        sluice_testkit::client_opts(sluice.addr(), user, password, None)
            .ssl_opts(SslOpts::default().with_root_certs(vec![ca.clone().into()]))
            .enable_cleartext_plugin(true)
            .stmt_cache_size(0)
    };
    let host = aws.host();
    let sign = |keys: &AwsKeys| -> Result<String> {
        let request = TokenRequest {
            sts_host: &host,
            region: aws.region(),
            audience: AUDIENCE,
        };
        Ok(client_token::sign(
            &keys.credentials(),
            &request,
            SystemTime::now(),
        )?)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let password: Vec<OptsBuilder> = (0..logins)
        .map(|_| opts("other", db.other_password()))
        .collect();
    let shared_session = aws.assume_role(&role, "shared")?;
    let one_token = sign(&shared_session)?;
    let cached: Vec<OptsBuilder> = (0..logins).map(|_| opts("app", &one_token)).collect();
    println!("logins bench: making {logins} role sessions for the fresh-token run");
    let fresh: Vec<OptsBuilder> = (0..logins)
        .map(|i| {
            let keys = aws.assume_role(&role, &format!("cold-{i}"))?;
            Ok(opts("app", &sign(&keys)?))
        })
        .collect::<Result<_>>()?;

    let mut rows = Vec::new();
    for (name, batch) in [
        ("password (mysql_native_password)", password),
        ("IAM, one token (cached after one STS call)", cached),
        ("IAM, a new token each (one STS call each)", fresh),
    ] {
        let (rate, failures, elapsed) = runtime.block_on(run(batch))?;
        if let Some((count, first)) = failures {
            bail!(
                "{name}: {count} logins failed, the first with {first}; Sluice's log ends \
                 with:\n{}",
                sluice.log_tail()
            );
        }
        println!("logins bench: {name}: {rate:.0} logins/s ({logins} in {elapsed:.2?})");
        rows.push((name, rate));
    }
    let base = rows.first().map_or(1.0, |(_, r)| *r);
    let mut md = format!(
        "| login ({logins} each, {AT_ONCE} at a time, TLS, connect + SELECT 1 + close) | logins/s | vs password |\n|---|---:|---:|\n"
    );
    for (name, rate) in &rows {
        md.push_str(&format!("| {name} | {rate:.0} | {:.2} |\n", rate / base));
    }
    let path = write_markdown("logins", &md)?;
    println!("\n{md}\nwritten to {}", path.display());
    drop(sluice);
    Ok(())
}

/// Logs in with each of `batch`, [`AT_ONCE`] at a time; (logins per second, failures and the
/// first one's error, time).
async fn run(batch: Vec<OptsBuilder>) -> Result<(f64, Option<(usize, String)>, Duration)> {
    let n = batch.len();
    let limit = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for opts in batch {
        let permit = limit.clone().acquire_owned().await.context("semaphore")?;
        tasks.push(tokio::spawn(async move {
            let result = async {
                let mut conn = Conn::new(Opts::from(opts)).await?;
                conn.query_drop("SELECT 1").await?;
                conn.disconnect().await
            }
            .await;
            drop(permit);
            result
        }));
    }
    let mut failures: Option<(usize, String)> = None;
    for t in tasks {
        let error = match t.await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        let (count, _) = failures.get_or_insert((0, error));
        *count += 1;
    }
    let elapsed = started.elapsed();
    Ok((n as f64 / elapsed.as_secs_f64(), failures, elapsed))
}
