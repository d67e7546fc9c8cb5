//! The real `sluice` binary as a child process, configured from a generated TOML file.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::mariadb::MariaDb;
use crate::ports::free_port;
use crate::process::{POLL, pid_running};
use crate::sandbox::{
    LaunchError, START_ATTEMPTS, create_private_dir, exited_at_start, first_packet,
    greeting_version, log_tail, on_free_port, once, sandbox_root, spawn_logged, stop_child,
    write_private,
};

/// How long the proxy may take from spawn to sending a greeting.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How long the proxy may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Sluice's own shutdown deadline for open transactions, unless `extra_toml` sets one: below
/// [`STOP_GRACE`], so a graceful stop with a transaction still open exits by itself.
const SHUTDOWN_TIMEOUT: &str = "5s";
/// A cold optimised build of the proxy takes about 2 minutes on 2 cores.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Lines shown from the proxy's log in error messages.
const LOG_TAIL_LINES: usize = 40;

/// How to configure a [`SluiceProcess`].
#[derive(Debug, Clone)]
pub struct SluiceOptions {
    /// The MySQL/MariaDB server behind the proxy (`[backend] address`).
    pub backend: SocketAddr,
    /// More hosts after `backend` in `[backend] address` (replicas, or hosts that are down).
    pub more_backends: Vec<SocketAddr>,
    /// Users clients may log in as: (username, password), both also valid on the backend.
    pub users: Vec<(String, String)>,
    /// `[backend] max_connections`: the cap on backend connections (default 20).
    pub max_connections: usize,
    /// Top-level TOML lines added to the file, e.g. `worker_threads = 1`.
    pub extra_toml: String,
    /// Lines added to the `[backend]` table, e.g. `borrow_timeout = "1s"`.
    pub backend_extra_toml: String,
    /// `[admin] password`; empty (the default) leaves the console refusing every login.
    pub admin_password: String,
    /// `[backend] monitor_user` and `monitor_password`: who the monitor logs in as (`None`:
    /// the first user).
    pub monitor: Option<(String, String)>,
    /// `[secrets_manager] secret_ids`: users from AWS Secrets Manager (empty: none). Give the
    /// process the AWS environment through `env`, e.g. [`crate::Moto::sdk_env`].
    pub secret_ids: Vec<String>,
    /// Lines added to the `[secrets_manager]` table, e.g. `refresh_interval = "1s"`.
    pub secrets_manager_extra_toml: String,
    /// Environment variables set for the process (beyond the inherited ones, which never
    /// include `SLUICE_*` or `RUST_LOG`).
    pub env: Vec<(String, String)>,
}

impl Default for SluiceOptions {
    fn default() -> Self {
        Self {
            backend: SocketAddr::from((Ipv4Addr::LOCALHOST, 3306)),
            more_backends: Vec::new(),
            users: Vec::new(),
            max_connections: 20,
            extra_toml: String::new(),
            backend_extra_toml: String::new(),
            admin_password: String::new(),
            monitor: None,
            secret_ids: Vec::new(),
            secrets_manager_extra_toml: String::new(),
            env: Vec::new(),
        }
    }
}

/// The addresses a [`SluiceProcess`] listens on.
#[derive(Debug, Clone, Copy)]
struct Listen {
    clients: SocketAddr,
    /// `http_listen`, unless `extra_toml` sets it.
    http: Option<SocketAddr>,
    /// `admin_listen`, unless `extra_toml` sets it.
    admin: Option<SocketAddr>,
}

impl Listen {
    /// Clients on `port`; the HTTP listener and the admin console on fresh free ports, unless
    /// `opts` sets them itself.
    fn pick(port: u16, opts: &SluiceOptions) -> Self {
        let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        Listen {
            clients: loopback(port),
            http: (!sets_key(&opts.extra_toml, "http_listen")).then(|| loopback(free_port())),
            admin: (!sets_key(&opts.extra_toml, "admin_listen")).then(|| loopback(free_port())),
        }
    }
}

impl SluiceOptions {
    /// Options for a proxy in front of `db`, with its `app` and `other` users; the monitor
    /// logs in as root, so the users' connection counts on the server are the pool's alone.
    pub fn for_mariadb(db: &MariaDb) -> Self {
        Self {
            backend: db.addr(),
            users: vec![
                ("app".to_owned(), db.app_password().to_owned()),
                ("other".to_owned(), db.other_password().to_owned()),
            ],
            monitor: Some(("root".to_owned(), db.root_password().to_owned())),
            ..Self::default()
        }
    }

    /// The configuration file for a proxy listening on `listen`.
    fn to_toml(&self, listen: Listen) -> String {
        let mut toml = String::new();
        // Top-level keys must come before the first table header.
        let _ = writeln!(
            toml,
            "listen = {}",
            toml_string(&listen.clients.to_string())
        );
        // Default ports would collide between proxies running at once.
        for (key, addr) in [("http_listen", listen.http), ("admin_listen", listen.admin)] {
            if let Some(addr) = addr {
                let _ = writeln!(toml, "{key} = {}", toml_string(&addr.to_string()));
            }
        }
        if !sets_key(&self.extra_toml, "log_level") {
            toml.push_str("log_level = \"warn\"\n");
        }
        if !sets_key(&self.extra_toml, "shutdown_timeout") {
            let _ = writeln!(toml, "shutdown_timeout = {}", toml_string(SHUTDOWN_TIMEOUT));
        }
        push_lines(&mut toml, &self.extra_toml);
        if !self.admin_password.is_empty() {
            let _ = writeln!(
                toml,
                "\n[admin]\npassword = {}",
                toml_string(&self.admin_password)
            );
        }
        toml.push_str("\n[backend]\n");
        let hosts: Vec<String> = std::iter::once(&self.backend)
            .chain(&self.more_backends)
            .map(SocketAddr::to_string)
            .collect();
        let _ = writeln!(toml, "address = {}", toml_string(&hosts.join(",")));
        let _ = writeln!(toml, "max_connections = {}", self.max_connections);
        if let Some((user, password)) = &self.monitor {
            let _ = writeln!(toml, "monitor_user = {}", toml_string(user));
            let _ = writeln!(toml, "monitor_password = {}", toml_string(password));
        }
        push_lines(&mut toml, &self.backend_extra_toml);
        if !self.secret_ids.is_empty() || !self.secrets_manager_extra_toml.trim().is_empty() {
            toml.push_str("\n[secrets_manager]\n");
            let ids: Vec<String> = self.secret_ids.iter().map(|id| toml_string(id)).collect();
            let _ = writeln!(toml, "secret_ids = [{}]", ids.join(", "));
            push_lines(&mut toml, &self.secrets_manager_extra_toml);
        }
        for (username, password) in &self.users {
            let _ = writeln!(
                toml,
                "\n[[users]]\nusername = {}\npassword = {}",
                toml_string(username),
                toml_string(password)
            );
        }
        toml
    }
}

/// A running `sluice` binary on 127.0.0.1; stopped (SIGTERM, then SIGKILL) and its directory
/// removed on drop. It is killed with this process, however that ends.
#[derive(Debug)]
pub struct SluiceProcess {
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    http: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    dir: PathBuf,
}

impl SluiceProcess {
    /// Builds the binary (once per process), writes the configuration and starts the proxy;
    /// returns once it sends a greeting to a new connection.
    pub fn start(opts: SluiceOptions) -> Result<SluiceProcess> {
        let binary = sluice_binary()?;
        // Named `PID-sluice-N`, so a later run removes it if this process dies before cleaning
        // up.
        let dir = create_private_dir(sandbox_root()?, "sluice-")?;
        // From here on, dropping `process` removes the directory and stops any child.
        let mut process = SluiceProcess {
            child: None,
            pid: 0,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            http: None,
            admin: None,
            dir,
        };
        let started = on_free_port(free_port, |port| {
            process.launch(&binary, &opts, Listen::pick(port, &opts))
        })?;
        if started.is_some() {
            return Ok(process);
        }
        bail!(
            "sluice found its port taken {START_ATTEMPTS} times in a row; its log ends with:\n{}",
            process.log_tail()
        )
    }

    /// Where clients connect: `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Process id of the proxy.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served (unless `extra_toml` chose).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// Where the admin console listens (unless `extra_toml` chose).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Writes the configuration file again from `opts`, keeping the ports the proxy listens
    /// on, so a SIGHUP makes it read the new settings.
    pub fn rewrite_config(&self, opts: &SluiceOptions) -> Result<()> {
        let config = self.config_path();
        let listen = Listen {
            clients: self.addr,
            http: self.http,
            admin: self.admin,
        };
        let _ = fs::remove_file(&config);
        write_private(&config, &opts.to_toml(listen))
    }

    /// Sends `signal` (SIGHUP, SIGTERM, ...) to the proxy.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        if self.child.is_none() {
            bail!("sluice is not running");
        }
        // SAFETY: kill(2) on our own child, which is not reaped while `child` is set.
        if unsafe { libc::kill(self.pid as libc::pid_t, signal) } != 0 {
            return Err(io::Error::last_os_error()).context("kill(2) on sluice");
        }
        Ok(())
    }

    /// Resident memory of the proxy in KiB (VmRSS), or an error once it has exited.
    pub fn rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse().ok())
            .with_context(|| format!("no VmRSS line in {path} (has sluice exited?)"))
    }

    /// Whether the proxy process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The generated configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("sluice.toml")
    }

    /// The file that receives the proxy's stderr (its log).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("sluice.log")
    }

    /// The last lines of the proxy's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path(), LOG_TAIL_LINES)
    }

    /// SIGTERM, up to 10 s for a graceful exit, then SIGKILL; returns how the proxy exited.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
            .expect("waiting for our own child process cannot fail")
            .expect("stop consumes the process, so it runs at most once")
    }

    fn terminate(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.take() {
            Some(mut child) => stop_child(&mut child, STOP_GRACE).map(Some),
            None => Ok(None),
        }
    }

    /// Starts the binary listening on `addr` and waits until it greets a client.
    fn launch(
        &mut self,
        binary: &Path,
        opts: &SluiceOptions,
        listen: Listen,
    ) -> Result<(), LaunchError> {
        let config = self.config_path();
        // Passwords are in the file: readable by this user only.
        let _ = fs::remove_file(&config);
        write_private(&config, &opts.to_toml(listen))?;
        let log_path = self.log_path();
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;

        let mut cmd = Command::new(binary);
        cmd.arg("--config").arg(&config);
        // SLUICE_* variables override the file and RUST_LOG the log level: the file alone
        // must decide, whatever the caller's environment holds.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SLUICE_") || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        // With RUST_BACKTRACE set, a start-up error would print a backtrace that pushes the
        // message itself out of `log_tail`; panics keep theirs.
        cmd.env("RUST_LIB_BACKTRACE", "0");
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let child = spawn_logged(cmd, log)?;
        self.pid = child.id();
        self.addr = listen.clients;
        self.http = listen.http;
        self.admin = listen.admin;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), LaunchError> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let child = self.child.as_mut().expect("launch sets the child");
            if let Some(status) = child.try_wait().context("cannot poll sluice")? {
                self.child = None;
                let port_taken = ["Address already in use", "AddrInUse"];
                return Err(exited_at_start(
                    "sluice",
                    status,
                    &self.log_path(),
                    &port_taken,
                    LOG_TAIL_LINES,
                ));
            }
            if let Ok(packet) = first_packet(self.addr) {
                // Whoever answered, it must still be our proxy: one that lost the port to
                // another process exits instead of listening.
                if !pid_running(self.pid) {
                    continue;
                }
                let who = format!("sluice on {}", self.addr);
                return match greeting_version(&who, &packet) {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        let _ = self.terminate();
                        Err(anyhow!("{e}; its log ends with:\n{}", self.log_tail()).into())
                    }
                };
            }
            if Instant::now() >= deadline {
                let _ = self.terminate();
                return Err(anyhow!(
                    "sluice did not greet a client on {} within {START_DEADLINE:?}; its log ends \
                     with:\n{}",
                    self.addr,
                    self.log_tail()
                )
                .into());
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        let _ = self.terminate();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The path of the `sluice` binary, built once per process with the profile this code was
/// built with (`--release` without debug assertions, as under `cargo bench`).
pub fn sluice_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    once(&BINARY, build_sluice).cloned()
}

fn build_sluice() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "-p", "sluice", "--bin", "sluice"])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Progress and compiler errors go straight to the terminal: a cold build takes minutes.
        .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", cargo.to_string_lossy()))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    // Drained on its own thread so a full pipe cannot stall cargo.
    let reader = thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().context("cannot poll cargo")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("building sluice took longer than {BUILD_TIMEOUT:?}");
        }
        thread::sleep(POLL);
    };
    let stdout = reader
        .join()
        .map_err(|_| anyhow!("the cargo output reader panicked"))?
        .context("cannot read cargo's output")?;
    if !status.success() {
        bail!("`cargo build -p sluice --bin sluice` failed ({status}); see the errors above");
    }
    stdout
        .lines()
        .filter(|line| line.contains(r#""reason":"compiler-artifact""#))
        .filter_map(executable)
        .find(|path| path.file_name().is_some_and(|name| name == "sluice"))
        .context("cargo reported no `sluice` executable")
}

/// The `"executable"` path of a cargo JSON message, if it has one.
fn executable(message: &str) -> Option<PathBuf> {
    const KEY: &str = r#""executable":""#;
    let start = message.find(KEY)? + KEY.len();
    json_string(&message[start..]).map(PathBuf::from)
}

/// Decodes a JSON string body (the text after its opening quote) up to its closing quote.
fn json_string(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = s.chars();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let unit = u16::from_str_radix(&hex, 16).ok()?;
                    // Surrogate pairs never occur in the paths cargo prints here.
                    out.push(char::from_u32(unit.into())?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether TOML `lines` assign `key` at their top level.
fn sets_key(lines: &str, key: &str) -> bool {
    lines.lines().any(|line| {
        line.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    })
}

fn push_lines(toml: &mut String, lines: &str) {
    if !lines.trim().is_empty() {
        toml.push_str(lines.trim_end());
        toml.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_async::prelude::Queryable;

    fn opts(proxy: &SluiceProcess, password: &str) -> mysql_async::OptsBuilder {
        crate::clients::client_opts(proxy.addr(), "app", password, None)
    }

    #[tokio::test]
    async fn logs_in_through_the_proxy_and_stops_cleanly() {
        let db = MariaDb::shared();
        let proxy = SluiceProcess::start(SluiceOptions {
            max_connections: 2,
            ..SluiceOptions::for_mariadb(db)
        })
        .unwrap();
        assert_ne!(proxy.addr().port(), db.port());
        assert!(proxy.rss_kib().unwrap() > 0);

        let mut conn = mysql_async::Conn::new(opts(&proxy, db.app_password()))
            .await
            .unwrap();
        let row: Option<(String, String)> = conn
            .query_first("SELECT CURRENT_USER(), @@version")
            .await
            .unwrap();
        let (user, version) = row.unwrap();
        assert_eq!(user, "app@%");
        assert!(version.contains("MariaDB"), "{version}");
        conn.disconnect().await.unwrap();

        let wrong = mysql_async::Conn::new(opts(&proxy, "wrong")).await;
        assert!(
            matches!(&wrong, Err(mysql_async::Error::Server(e)) if e.code == 1045),
            "{wrong:?}"
        );

        let (pid, dir) = (proxy.pid(), proxy.dir.clone());
        let status = proxy.stop();
        assert!(status.success(), "{status}");
        assert!(!pid_running(pid));
        assert!(
            !dir.exists(),
            "the configuration holds passwords: it goes with the process"
        );
    }

    #[test]
    fn bad_configuration_fails_with_the_log() {
        let err = SluiceProcess::start(SluiceOptions {
            backend_extra_toml: "no_such_key = 1".to_owned(),
            ..SluiceOptions::for_mariadb(MariaDb::shared())
        })
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("exited during start-up"), "{err}");
        assert!(err.contains("no_such_key"), "{err}");
    }

    #[test]
    fn extra_toml_overrides_defaults() {
        let opts = SluiceOptions {
            extra_toml: "log_level = \"debug\"\nworker_threads = 1".to_owned(),
            users: vec![("a\"b".to_owned(), "p\\w".to_owned())],
            ..SluiceOptions::default()
        };
        let toml = opts.to_toml(Listen::pick(1, &opts));
        assert_eq!(toml.matches("log_level").count(), 1, "{toml}");
        assert_eq!(toml.matches("http_listen").count(), 1, "{toml}");
        assert!(toml.contains("worker_threads = 1\n\n[backend]"), "{toml}");
        assert!(toml.contains(r#"username = "a\"b""#), "{toml}");
        assert!(toml.contains(r#"password = "p\\w""#), "{toml}");
    }

    #[test]
    fn secrets_manager_table_is_written_when_asked_for() {
        let defaults = SluiceOptions::default();
        let plain = defaults.to_toml(Listen::pick(1, &defaults));
        assert!(!plain.contains("[secrets_manager]"), "{plain}");
        let opts = SluiceOptions {
            secret_ids: vec!["app-db".to_owned(), "arn:aws:x\"y".to_owned()],
            secrets_manager_extra_toml: "refresh_interval = \"1s\"".to_owned(),
            ..SluiceOptions::default()
        };
        let toml = opts.to_toml(Listen::pick(1, &opts));
        assert!(
            toml.contains(
                "[secrets_manager]\nsecret_ids = [\"app-db\", \"arn:aws:x\\\"y\"]\n\
                 refresh_interval = \"1s\"\n"
            ),
            "{toml}"
        );
        let parsed = sluice::Config::from_toml(&toml, "test", |_| None).unwrap();
        assert_eq!(parsed.secrets_manager.secret_ids, opts.secret_ids);
    }

    #[test]
    fn executable_is_read_from_cargo_json() {
        let line =
            r#"{"reason":"compiler-artifact","executable":"/t/a\\b\"c/sluice","fresh":true}"#;
        assert_eq!(executable(line), Some(PathBuf::from(r#"/t/a\b"c/sluice"#)));
        assert_eq!(executable(r#"{"executable":null}"#), None);
    }
}
