//! Shared by the end-to-end tests: Sluice running in-process in front of a sandbox MariaDB.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, OptsBuilder};
use sluice::backend::Pool;
use sluice::{Config, ReloadHandle, ShutdownHandle, Snapshot, Stats};
use sluice_testkit::MariaDb;

/// The admin console password of test proxies.
pub const ADMIN_PASSWORD: &str = "admin-test-pw";

/// A running in-process Sluice.
pub struct TestProxy {
    pub addr: SocketAddr,
    /// The reader endpoint, when `reader_listen` is set.
    pub reader_addr: Option<SocketAddr>,
    /// `/metrics`, `/healthz`, `/readyz`, when `http_listen` is set.
    pub http_addr: Option<SocketAddr>,
    /// The admin console, when `admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub stats: Arc<Stats>,
    pub pool: Pool,
    pub reload: ReloadHandle,
    pub app_password: String,
    pub other_password: String,
    /// Sluice's shared state: live sessions, pool, counters.
    pub context: Arc<sluice::context::Shared>,
    stop: ShutdownHandle,
    task: tokio::task::JoinHandle<()>,
}

/// Configuration text for Sluice in front of `db`, with both sandbox users. The HTTP listener
/// and the admin console take free ports (parallel tests must not share one). The monitor
/// logs in as root, so the users' connection counts on the server are the pool's alone.
pub fn config_for(db: &MariaDb, max_connections: usize) -> Config {
    let text = format!(
        r#"
        listen = "127.0.0.1:0"
        http_listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        log_level = "warn"
        [admin]
        password = "{ADMIN_PASSWORD}"
        [backend]
        address = "{addr}"
        max_connections = {max_connections}
        borrow_timeout = "20s"
        monitor_user = "root"
        monitor_password = "{root}"
        [[users]]
        username = "app"
        password = "{app}"
        [[users]]
        username = "other"
        password = "{other}"
        "#,
        addr = db.addr(),
        app = db.app_password(),
        other = db.other_password(),
        root = db.root_password(),
    );
    Config::from_toml(&text, "test", |_| None).expect("test configuration")
}

impl TestProxy {
    /// Starts Sluice in front of `db` with a pool of `max_connections`.
    pub async fn start(db: &MariaDb, max_connections: usize) -> TestProxy {
        Self::start_with(db, config_for(db, max_connections)).await
    }

    /// Starts Sluice with a prepared configuration.
    pub async fn start_with(db: &MariaDb, config: Config) -> TestProxy {
        init_logging();
        let proxy = sluice::Proxy::bind(config).await.expect("bind");
        TestProxy {
            addr: proxy.local_addr(),
            reader_addr: proxy.reader_addr(),
            http_addr: proxy.http_addr(),
            admin_addr: proxy.admin_addr(),
            stats: proxy.stats(),
            pool: proxy.pool(),
            reload: proxy.reload_handle(),
            app_password: db.app_password().to_string(),
            other_password: db.other_password().to_string(),
            context: proxy.context(),
            stop: proxy.shutdown_handle(),
            task: tokio::spawn(proxy.run()),
        }
    }

    /// A mysql_async connection to the admin console.
    pub async fn admin(&self) -> Conn {
        let addr = self.admin_addr.expect("the admin console is on");
        Conn::new(Opts::from(sluice_testkit::client_opts(
            addr,
            "admin",
            ADMIN_PASSWORD,
            None,
        )))
        .await
        .expect("admin console login")
    }

    /// GETs `path` from the HTTP listener: (status, body).
    pub async fn http(&self, path: &str) -> (u16, String) {
        http_get(self.http_addr.expect("the HTTP listener is on"), path).await
    }

    /// Client options for logging in to Sluice.
    pub fn opts(&self, user: &str, password: &str, db: Option<&str>) -> OptsBuilder {
        sluice_testkit::client_opts(self.addr, user, password, db)
    }

    /// A raw protocol connection as `app` through Sluice, with client capabilities `caps`.
    pub async fn raw_app(
        &self,
        db: Option<&str>,
        caps: sluice::protocol::CapabilityFlags,
    ) -> raw::Raw {
        raw::Raw::login(self.addr, "app", &self.app_password, db, caps).await
    }

    /// A connection as `app` through Sluice.
    pub async fn app(&self, db: Option<&str>) -> Conn {
        Conn::new(Opts::from(self.opts("app", &self.app_password, db)))
            .await
            .expect("login through Sluice")
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        self.stats.snapshot()
    }

    /// Waits until the pool's connection count (open, idle) satisfies `pred`, up to `limit`.
    pub async fn wait_pool(
        &self,
        limit: Duration,
        pred: impl Fn(usize, usize) -> bool,
    ) -> (usize, usize) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (open, idle, _) = self.pool.counts();
            if pred(open, idle) || tokio::time::Instant::now() > deadline {
                return (open, idle);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether session `id` (its handshake id) holds a backend connection, once it has
    /// finished its command; `None` if there is no such session.
    pub async fn session_holds(&self, id: u32) -> Option<bool> {
        use sluice::registry::{Activity, ClientId};
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let h = self.context.registry.get(ClientId(id))?;
            if h.activity() != Activity::Running || tokio::time::Instant::now() > deadline {
                return Some(h.lent_thread().is_some());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Stops Sluice and waits for it.
    pub async fn stop(self) {
        self.stop.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

/// A fresh schema on `db` for one test, so tests sharing a server do not collide.
pub fn schema(db: &MariaDb, prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    db.sql(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        .expect("create schema");
    name
}

/// Connections the server sees from `user`, counted from the server's side.
pub async fn server_connections(db: &MariaDb, user: &str) -> usize {
    let mut root = db.root_conn().await.expect("root connection");
    let n: Option<usize> = root
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?",
            (user,),
        )
        .await
        .expect("processlist");
    n.unwrap_or(0)
}

/// Logs for tests, when SLUICE_TEST_LOG names a filter (for example `debug`).
pub fn init_logging() {
    if let Ok(filter) = std::env::var("SLUICE_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}
/// Sends one HTTP/1.1 request (`method path`) and reads the response: (status, body).
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("HTTP connect");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("HTTP write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .expect("HTTP response within 20 s")
        .expect("HTTP read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("an HTTP status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// GETs `path`: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

/// The sum of the samples of metric `name` (exact name, `_bucket` etc. included) whose labels
/// include all of `labels`, in a Prometheus text exposition; None if no sample matches.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        if !labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>() {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// Polls `check` every 20 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A database user of its own for one test (name, password), with all privileges, so counts
/// taken from the server's side are not disturbed by other tests.
pub fn dedicated_user(db: &MariaDb, prefix: &str) -> (String, String) {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    );
    let password = format!("pw-{name}");
    db.sql(&format!(
        "CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'; \
         GRANT ALL PRIVILEGES ON *.* TO '{name}'@'%';"
    ))
    .expect("create a test user");
    (name, password)
}

pub mod raw;
