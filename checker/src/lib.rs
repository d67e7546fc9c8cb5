//! The differential checker: seeded schedules of interleaved client sessions, each run with
//! every client on its own direct connection and again through Sluice with a smaller pool, every
//! step's complete answer compared byte for byte, and whether Sluice holds each session's
//! connection compared with a model of what rightly holds one. A divergence is shrunk to a
//! short reproducer printed as SQL per client.
//!
//! Its isolation mode runs many short sessions through Sluice alone and asks, at the start of
//! each, a fixed battery of probes whose answers must be a fresh direct session's
//! ([`Checker::check_isolation_seed`]); its oracle check runs a schedule twice directly
//! ([`Checker::check_oracle_seed`]).

pub mod grammar;
pub mod model;
pub mod runner;
pub mod wire;

use anyhow::{Context, Result};

pub use grammar::Server;
pub use runner::{Checker, Divergence, Flavor, Schedule, SluiceUnderTest, Target};

/// A running in-process Sluice for the checker, and what stops it.
pub struct RunningSluice {
    pub under_test: SluiceUnderTest,
    stop: sluice::ShutdownHandle,
    task: tokio::task::JoinHandle<()>,
}

impl RunningSluice {
    /// Stops Sluice and waits for it.
    pub async fn stop(self) {
        self.stop.shutdown();
        let _ = self.task.await;
    }
}

/// Starts Sluice in process in front of `backend`, for `user`, with a pool of `pool`.
pub async fn start_sluice(backend: &Target, pool: usize) -> Result<RunningSluice> {
    let text = format!(
        r#"
        listen = "127.0.0.1:0"
        http_listen = ""
        admin_listen = ""
        log_level = "warn"
        [backend]
        address = "{addr}"
        max_connections = {pool}
        borrow_timeout = "3s"
        [[users]]
        username = "{user}"
        password = "{password}"
        "#,
        addr = backend.addr,
        user = backend.user,
        password = backend.password,
    );
    let config =
        sluice::Config::from_toml(&text, "checker", |_| None).context("checker configuration")?;
    let proxy = sluice::Proxy::bind(config).await.context("bind Sluice")?;
    let under_test = SluiceUnderTest {
        target: Target {
            addr: proxy.local_addr(),
            user: backend.user.clone(),
            password: backend.password.clone(),
        },
        context: proxy.context(),
        pool,
    };
    let stop = proxy.shutdown_handle();
    let task = tokio::spawn(proxy.run());
    Ok(RunningSluice {
        under_test,
        stop,
        task,
    })
}
