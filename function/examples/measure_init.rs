//! Measures the function's init locally: a new Secrets Manager client, the secret read from
//! moto_server, the pool created and the first connection made through a real Sluice to a real
//! MariaDB. Prints figures; asserts nothing about speed.
//!
//! ```text
//! cargo run --release -p sluice-function --example measure_init [-- ROUNDS]
//! ```
//!
//! Each round is a cold init of a new function instance in this process; the first round also
//! pays for first-use costs in the process. Then, if the release binary `sluice-function` is
//! next to this example's directory (`cargo build --release -p sluice-function` builds it),
//! the real binary is started a few times to time it from `exec` to its "init done" log line:
//! process start, reading the environment and the AWS configuration, the secret, the first
//! connection (it then fails to reach the Lambda Runtime API, which is not there, and exits).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_function::{Config, Function, SecretsClient};
use sluice_testkit::{MariaDb, Moto, SluiceOptions, SluiceProcess};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 50,
    }
    .max(1);
    let db = MariaDb::start()?;
    let proxy = SluiceProcess::start(SluiceOptions {
        max_connections: 10,
        ..SluiceOptions::for_mariadb(&db)
    })?;
    let moto = Moto::start()?;
    db.sql("CREATE DATABASE measure")?;
    let arn = moto.create_secret(
        "measure-init",
        &json!({"username": "app", "password": db.app_password(), "dbname": "measure"}),
    )?;
    let config = Config::new(&arn, "127.0.0.1", proxy.addr().port());
    let client = || {
        SecretsClient::for_endpoint(
            &moto.endpoint(),
            Moto::REGION,
            Moto::ACCESS_KEY_ID,
            Moto::SECRET_ACCESS_KEY,
        )
    };

    let mut inits = Vec::with_capacity(rounds);
    let mut fetches = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let function = Function::init(config.clone(), client()).await?;
        inits.push(started.elapsed());
        // The same steps by themselves: how much of init is the secret.
        let started = Instant::now();
        client().fetch(&arn).await?;
        fetches.push(started.elapsed());
        function.check_connection().await?;
        function.shutdown().await;
    }
    let first = inits[0];
    println!(
        "init (secret read + pool + first connection through Sluice), {rounds} rounds: first \
         {}, {}",
        ms(first),
        summary(&mut inits)
    );
    println!("of which the secret read: {}", summary(&mut fetches));

    let Some(binary) = release_binary() else {
        println!("(build the binary with `cargo build --release -p sluice-function` to time it)");
        return Ok(());
    };
    let mut starts = Vec::new();
    for _ in 0..rounds.min(10) {
        let mut cmd = Command::new(&binary);
        cmd.env_clear()
            .env("SECRET_ARN", &arn)
            .env("PROXY_ENDPOINT", proxy.addr().to_string())
            // Nothing listens there: the binary exits after init.
            .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
            .envs(moto.sdk_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let started = Instant::now();
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut ready = None;
        for line in BufReader::new(stdout).lines() {
            if line?.contains("\"init done\"") {
                ready = Some(started.elapsed());
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        starts.push(
            ready.ok_or_else(|| anyhow::anyhow!("{} logged no \"init done\"", binary.display()))?,
        );
    }
    println!(
        "the release binary from exec to \"init done\", {} runs: {}",
        starts.len(),
        summary(&mut starts)
    );
    Ok(())
}

/// `target/release/sluice-function`, next to `target/release/examples/`.
fn release_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("sluice-function");
    path.is_file().then_some(path)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    format!(
        "min {}, median {}, p90 {}, max {}",
        ms(at(0.0)),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(1.0))
    )
}
