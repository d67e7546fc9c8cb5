use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::ports::free_port;
use crate::process::{
    POLL, check_success, find_program, output_with_timeout, pid_running, spawn_tied,
};

const INSTALL: &str = "apt-get install -y mariadb-server mariadb-client";
/// How long a server may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a server may take to shut down after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Attempts at finding a port that no other process grabs first.
const START_ATTEMPTS: usize = 5;
/// Limit for `mariadb-install-db` and for SQL run through the CLI.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Redo log size of the template; small so that copying the template is cheap.
const TEMPLATE_LOG_FILE_SIZE: &str = "8M";
/// Lines shown from error.log in error messages.
const LOG_TAIL_LINES: usize = 30;
/// mariadbd silently raises a smaller `--max-connections` to this.
const MIN_MAX_CONNECTIONS: u32 = 10;
/// Longest unix socket path (`sun_path` holds 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How to start a [`MariaDb`].
#[derive(Debug, Clone)]
pub struct MariaDbOptions {
    /// Value of `--max-connections` (default 200; at least 10, mariadbd's minimum).
    pub max_connections: u32,
    /// Shrink caches and the redo log: about 55 MB resident instead of about 120 MB (default on).
    pub small_memory: bool,
    /// Further `mariadbd` arguments; they come last, so they override the defaults.
    pub extra_args: Vec<String>,
}

impl Default for MariaDbOptions {
    fn default() -> Self {
        Self {
            max_connections: 200,
            small_memory: true,
            extra_args: Vec::new(),
        }
    }
}

/// A private MariaDB server on 127.0.0.1 with real random passwords; stopped and deleted on drop.
///
/// Users: `root` (also over the unix socket), `app` and `other`, both `'%'` with all privileges
/// on `*.*` and `mysql_native_password`. Start-up takes about 0.2 s, plus about 0.5 s once per
/// process for `mariadb-install-db`. Servers are killed with the test process, however it ends.
#[derive(Debug)]
pub struct MariaDb {
    sandbox: Sandbox,
    port: u16,
    client: PathBuf,
    root_password: String,
    app_password: String,
    other_password: String,
}

impl MariaDb {
    /// Starts a server with default options.
    pub fn start() -> Result<MariaDb> {
        Self::start_with(MariaDbOptions::default())
    }

    /// Starts a server with `opts`.
    pub fn start_with(opts: MariaDbOptions) -> Result<MariaDb> {
        Self::start_on_ports(opts, free_port)
    }

    /// The server shared by all tests of this process, started on first use.
    ///
    /// Panics if it cannot start; see [`MariaDb::try_shared`].
    pub fn shared() -> &'static MariaDb {
        Self::try_shared().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The server shared by all tests of this process, started on first use.
    pub fn try_shared() -> Result<&'static MariaDb> {
        // Statics are never dropped: the atexit hook and PDEATHSIG stop this server.
        static SHARED: OnceLock<Result<MariaDb, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                MariaDb::start().map_err(|e| format!("cannot start the shared MariaDB: {e:#}"))
            })
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    fn start_on_ports(opts: MariaDbOptions, mut next_port: impl FnMut() -> u16) -> Result<MariaDb> {
        if opts.max_connections < MIN_MAX_CONNECTIONS {
            bail!(
                "max_connections {} is below mariadbd's minimum of {MIN_MAX_CONNECTIONS}, which it \
                 would silently use instead; to test a smaller limit use max_user_connections",
                opts.max_connections
            );
        }
        let mariadbd = find_program("mariadbd", INSTALL)?;
        let install_db = find_program("mariadb-install-db", INSTALL)?;
        let client = find_program("mariadb", INSTALL)?;
        let template = template(&install_db)?;

        let mut sandbox = Sandbox::create()?;
        let socket = sandbox.dir.join("sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "socket path {} is too long for a unix socket; point TMPDIR at a shorter directory",
                socket.display()
            );
        }
        let root_password = random_password()?;
        let app_password = random_password()?;
        let other_password = random_password()?;
        let init_file = sandbox.dir.join("init.sql");
        write_private(
            &init_file,
            &init_sql(&root_password, &app_password, &other_password),
        )?;

        for _ in 0..START_ATTEMPTS {
            let port = next_port();
            match sandbox.launch(&mariadbd, &template, port, &opts) {
                Ok(()) => {
                    return Ok(MariaDb {
                        sandbox,
                        port,
                        client,
                        root_password,
                        app_password,
                        other_password,
                    });
                }
                Err(LaunchError::PortTaken) => continue,
                Err(LaunchError::Failed(e)) => return Err(e),
            }
        }
        bail!(
            "mariadbd found its port taken {START_ATTEMPTS} times in a row; error.log ends with:\n{}",
            sandbox.error_log_tail()
        )
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Process id of `mariadbd` (for tests that kill it).
    pub fn pid(&self) -> u32 {
        self.sandbox.child.as_ref().map_or(0, Child::id)
    }

    /// Password of `root` (same for `localhost`, `127.0.0.1` and `::1`).
    pub fn root_password(&self) -> &str {
        &self.root_password
    }

    /// Password of `app`.
    pub fn app_password(&self) -> &str {
        &self.app_password
    }

    /// Password of `other`.
    pub fn other_password(&self) -> &str {
        &self.other_password
    }

    /// Password of `root`, `app` or `other`; `None` for any other name.
    pub fn password(&self, user: &str) -> Option<&str> {
        match user {
            "root" => Some(&self.root_password),
            "app" => Some(&self.app_password),
            "other" => Some(&self.other_password),
            _ => None,
        }
    }

    /// The sandbox directory (data directory, socket, logs); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.sandbox.dir
    }

    /// The data directory.
    pub fn datadir(&self) -> PathBuf {
        self.sandbox.dir.join("data")
    }

    /// The server's unix socket.
    pub fn socket_path(&self) -> PathBuf {
        self.sandbox.dir.join("sock")
    }

    /// The last lines of the server's error log.
    pub fn error_log_tail(&self) -> String {
        self.sandbox.error_log_tail()
    }

    /// Runs `sql` as root through the `mariadb` CLI (unix socket, `-N -B`) and returns stdout.
    ///
    /// Blocking; fine in async tests because it talks to the server directly, not via a proxy.
    pub fn sql(&self, sql: &str) -> Result<String> {
        let mut cmd = Command::new(&self.client);
        cmd.arg("--no-defaults")
            .args(["--batch", "--skip-column-names", "--user=root"])
            .arg(format!("--socket={}", self.socket_path().display()))
            .arg("--execute")
            .arg(sql)
            .env("MYSQL_PWD", &self.root_password);
        let output = output_with_timeout(cmd, None, COMMAND_TIMEOUT)?;
        check_success("mariadb", &output).with_context(|| format!("SQL failed: {sql}"))?;
        String::from_utf8(output.stdout).context("the mariadb CLI printed invalid UTF-8")
    }

    /// Connection options for `user` over TCP to 127.0.0.1 (never the unix socket).
    pub fn opts(&self, user: &str, password: &str, db: Option<&str>) -> mysql_async::OptsBuilder {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname(Ipv4Addr::LOCALHOST.to_string())
            .tcp_port(self.port)
            .user(Some(user))
            .pass(Some(password))
            .db_name(db)
            // Otherwise mysql_async asks for @@socket and switches to it.
            .prefer_socket(false)
    }

    /// A connection as root over TCP.
    pub async fn root_conn(&self) -> Result<mysql_async::Conn> {
        mysql_async::Conn::new(self.opts("root", &self.root_password, None))
            .await
            .with_context(|| format!("cannot connect as root to MariaDB on {}", self.addr()))
    }
}

fn init_sql(root: &str, app: &str, other: &str) -> String {
    let identified = |password: &str| {
        format!(
            "IDENTIFIED VIA mysql_native_password USING PASSWORD({})",
            quote(password)
        )
    };
    // One statement per line: that is how mariadbd reads an init file.
    let mut sql = format!(
        "ALTER USER 'root'@'localhost' {0}, 'root'@'127.0.0.1' {0}, 'root'@'::1' {0};\n",
        identified(root)
    );
    // mariadb-install-db also creates a password-less root@<hostname>.
    if let Ok(host) = fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && !["localhost", "127.0.0.1", "::1"].contains(&host) {
            sql += &format!("DROP USER IF EXISTS 'root'@{};\n", quote(host));
        }
    }
    for (user, password) in [("app", app), ("other", other)] {
        sql += &format!("CREATE USER '{user}'@'%' {};\n", identified(password));
        sql += &format!("GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%';\n");
    }
    sql
}

/// A single-quoted SQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn random_password() -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 24];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes
        .iter()
        .map(|&b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect())
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

enum LaunchError {
    /// Another process bound the port between `free_port` and mariadbd's bind.
    PortTaken,
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for LaunchError {
    fn from(e: anyhow::Error) -> Self {
        LaunchError::Failed(e)
    }
}

impl From<io::Error> for LaunchError {
    fn from(e: io::Error) -> Self {
        LaunchError::Failed(e.into())
    }
}

/// A directory under the sandbox root, and the server running in it.
#[derive(Debug)]
struct Sandbox {
    dir: PathBuf,
    child: Option<Child>,
}

impl Sandbox {
    fn create() -> Result<Sandbox> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let root = sandbox_root()?;
        let dir = root.join(format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        register(&dir, None);
        Ok(Sandbox { dir, child: None })
    }

    fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    fn error_log_tail(&self) -> String {
        let log = fs::read(self.error_log()).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Starts mariadbd on a fresh copy of `template` and waits until it accepts connections.
    fn launch(
        &mut self,
        mariadbd: &Path,
        template: &Path,
        port: u16,
        opts: &MariaDbOptions,
    ) -> Result<(), LaunchError> {
        let data = self.dir.join("data");
        // A failed attempt may have touched the data directory: start again from the template.
        if data.exists() {
            fs::remove_dir_all(&data)?;
        }
        let log_path = self.error_log();
        if log_path.exists() {
            fs::remove_file(&log_path)?;
        }
        copy_dir(template, &data).with_context(|| {
            format!(
                "cannot copy the data directory template to {}",
                data.display()
            )
        })?;
        // Every mariadbd deletes all `#sql*` files in its tmpdir at start-up: with a shared
        // tmpdir (/tmp by default) starting one server breaks another's temporary tables.
        let tmp = self.dir.join("tmp");
        if !tmp.exists() {
            DirBuilder::new().mode(0o700).create(&tmp)?;
        }

        let mut cmd = Command::new(mariadbd);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .arg(format!("--pid-file={}", self.dir.join("pid").display()))
            .arg(format!("--log-error={}", log_path.display()))
            .arg(format!(
                "--init-file={}",
                self.dir.join("init.sql").display()
            ))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
            .arg(format!("--max-connections={}", opts.max_connections))
            // Write the redo log on commit but skip fsync: 2-5x faster commits, and commits
            // still survive `kill -9` of the server (only an OS crash loses them).
            .arg("--innodb-flush-log-at-trx-commit=2");
        if is_root() {
            cmd.arg("--user=root");
        }
        if opts.small_memory {
            cmd.args([
                "--innodb-buffer-pool-size=8M",
                // 10.11.19 otherwise reserves 8 TiB of address space; older 10.11 lack the option.
                "--loose-innodb-buffer-pool-size-max=8M",
                "--innodb-log-buffer-size=2M",
                "--aria-pagecache-buffer-size=1M",
                // MyISAM's key cache is 128M by default and costs about 24 MB resident.
                "--key-buffer-size=1M",
                // With the default of 2000 mariadbd wants 32184 file descriptors and warns.
                "--table-open-cache=400",
            ])
            // The template's size, so nothing is resized; otherwise it grows to 96M at start.
            .arg(format!("--innodb-log-file-size={TEMPLATE_LOG_FILE_SIZE}"));
        }
        cmd.args(&opts.extra_args);

        // Early messages (before --log-error takes effect) land in the same file.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_tied(cmd)?;
        register(&self.dir, Some(child.id()));
        self.child = Some(child);
        self.wait_ready(port)
    }

    fn wait_ready(&mut self, port: u16) -> Result<(), LaunchError> {
        let deadline = Instant::now() + START_DEADLINE;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            let child = self.child.as_mut().expect("launch sets the child");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                register(&self.dir, None);
                let log = fs::read_to_string(self.error_log()).unwrap_or_default();
                if log.contains("Bind on TCP/IP port") || log.contains("Address already in use") {
                    return Err(LaunchError::PortTaken);
                }
                return Err(anyhow!(
                    "mariadbd exited during start-up ({status}); error.log ends with:\n{}",
                    self.error_log_tail()
                )
                .into());
            }
            // The log line proves that *this* server bound the port, not a stranger on it.
            let log = fs::read_to_string(self.error_log()).unwrap_or_default();
            let ready = log.contains("ready for connections");
            if let Some(packet) = ready.then(|| first_packet(addr).ok()).flatten() {
                return self.check_ready(&packet, &log);
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(anyhow!(
                    "mariadbd did not accept connections on {addr} within {START_DEADLINE:?}; \
                     error.log ends with:\n{}",
                    self.error_log_tail()
                )
                .into());
            }
            thread::sleep(POLL);
        }
    }

    fn check_ready(&mut self, packet: &[u8], log: &str) -> Result<(), LaunchError> {
        match packet.first() {
            Some(10) => {}
            Some(0xff) if packet.len() >= 3 => {
                let code = u16::from_le_bytes([packet[1], packet[2]]);
                let message = String::from_utf8_lossy(&packet[3..]);
                return Err(
                    anyhow!("mariadbd refused a connection: error {code}: {message}").into(),
                );
            }
            _ => {
                return Err(
                    anyhow!("mariadbd sent an unexpected first packet: {packet:02x?}").into(),
                );
            }
        }
        // mariadbd logs a failing init-file statement as "ERROR: <code> ..." and carries on.
        let failed: Vec<&str> = log.lines().filter(|l| l.starts_with("ERROR: ")).collect();
        if !failed.is_empty() {
            return Err(anyhow!("setting up users failed:\n{}", failed.join("\n")).into());
        }
        Ok(())
    }

    /// SIGTERM, up to [`STOP_GRACE`] for a clean shutdown, then SIGKILL.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Forget the pid before reaping it, so the atexit hook can never signal a reused pid.
        register(&self.dir, None);
        if let Ok(None) = child.try_wait() {
            // SAFETY: plain kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(None) => thread::sleep(POLL),
                    _ => return,
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
        unregister(&self.dir);
    }
}

/// Reads the first packet a server sends on `addr`, without the 4-byte header.
fn first_packet(addr: SocketAddr) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `TMP/sluice-sandbox-UID`, created on first use; leftovers of dead processes are removed then.
fn sandbox_root() -> Result<&'static Path> {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ROOT.get_or_init(|| {
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let root = std::env::temp_dir().join(format!("sluice-sandbox-{uid}"));
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        remove_leftovers(&root);
        Ok(root)
    })
    .as_deref()
    .map_err(|e| anyhow!("{e}"))
}

/// Removes `PID-*` entries under `root` whose process no longer runs; returns how many.
fn remove_leftovers(root: &Path) -> usize {
    let Ok(entries) = fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // Another process may remove the same leftover at the same time: ignore errors.
        if pid != std::process::id()
            && !pid_running(pid)
            && fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// A freshly installed data directory, made once per process and copied for every server:
/// copying takes about 50 ms, `mariadb-install-db` about 500 ms.
///
/// The template is the state `mariadb-install-db` leaves after a clean shutdown of its
/// bootstrap server; nothing in it is specific to one instance, and users are set up per
/// server by the init file.
fn template(install_db: &Path) -> Result<PathBuf> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let dir = sandbox_root()
                .map_err(|e| format!("{e:#}"))?
                .join(format!("{}-template", std::process::id()));
            install(install_db, &dir).map_err(|e| format!("{e:#}"))?;
            Ok(dir.join("data"))
        })
        .clone()
        .map_err(|e| anyhow!("{e}"))
}

/// Installs into `dir/data`, with `dir/tmp` as the bootstrap server's private tmpdir.
fn install(install_db: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    register(dir, None);
    let tmp = dir.join("tmp");
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut cmd = Command::new(install_db);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        // The rest is passed on to the bootstrap server.
        .arg(format!("--tmpdir={}", tmp.display()))
        .arg(format!("--innodb-log-file-size={TEMPLATE_LOG_FILE_SIZE}"));
    if is_root() {
        cmd.arg("--user=root");
    }
    let output = output_with_timeout(cmd, None, COMMAND_TIMEOUT)?;
    check_success("mariadb-install-db", &output)
}

fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    DirBuilder::new().mode(0o700).create(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Directories to remove, and servers to kill, when the process exits.
static LIVE: Mutex<Vec<(PathBuf, Option<u32>)>> = Mutex::new(Vec::new());

fn register(dir: &Path, pid: Option<u32>) {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        // SAFETY: registers a plain extern "C" function; failure only means a leftover
        // directory, which the next run removes.
        unsafe { libc::atexit(cleanup_at_exit) };
    });
    let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    match live.iter_mut().find(|(d, _)| d == dir) {
        Some(entry) => entry.1 = pid,
        None => live.push((dir.to_owned(), pid)),
    }
}

fn unregister(dir: &Path) {
    LIVE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|(d, _)| d != dir);
}

/// Stops the servers still running (the shared one, leaked ones) and removes all sandbox
/// directories of this process, since statics are never dropped.
extern "C" fn cleanup_at_exit() {
    let mut live = match LIVE.try_lock() {
        Ok(live) => live,
        Err(TryLockError::Poisoned(live)) => live.into_inner(),
        // Another thread is mid-update; PDEATHSIG and the next run's cleanup cover it.
        Err(TryLockError::WouldBlock) => return,
    };
    for (dir, pid) in live.drain(..) {
        if let Some(pid) = pid {
            // SAFETY: `pid` is an unreaped child of ours, so it cannot have been reused.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_async::prelude::Queryable;
    use std::io::BufRead;
    use std::net::TcpListener;

    async fn current_user(
        db: &MariaDb,
        user: &str,
        password: &str,
    ) -> Result<String, mysql_async::Error> {
        let mut conn = mysql_async::Conn::new(db.opts(user, password, None)).await?;
        let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await?;
        conn.disconnect().await?;
        Ok(who.unwrap_or_default())
    }

    fn server_code(result: Result<String, mysql_async::Error>) -> u16 {
        match result {
            Err(mysql_async::Error::Server(e)) => e.code,
            other => panic!("expected a server error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn two_servers_side_by_side() {
        // Started concurrently: both race for the per-process template.
        let (a, b) = thread::scope(|s| {
            let a = s.spawn(|| {
                MariaDb::start_with(MariaDbOptions {
                    max_connections: 12,
                    ..Default::default()
                })
            });
            let b = s.spawn(MariaDb::start);
            (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
        });
        assert_ne!(a.port(), b.port());
        assert_ne!(a.dir(), b.dir());
        assert_ne!(a.app_password(), b.app_password());

        for db in [&a, &b] {
            assert_eq!(
                current_user(db, "app", db.app_password()).await.unwrap(),
                "app@%"
            );
            assert_eq!(
                current_user(db, "other", db.other_password())
                    .await
                    .unwrap(),
                "other@%"
            );
            assert_eq!(server_code(current_user(db, "app", "wrong").await), 1045);
            assert_eq!(server_code(current_user(db, "root", "").await), 1045);
            let mut root = db.root_conn().await.unwrap();
            let plugin: Option<String> = root
                .query_first("SELECT plugin FROM mysql.user WHERE user = 'app'")
                .await
                .unwrap();
            assert_eq!(plugin.as_deref(), Some("mysql_native_password"));
            root.disconnect().await.unwrap();
        }
        // The other server's password does not open this one.
        assert_eq!(
            server_code(current_user(&a, "app", b.app_password()).await),
            1045
        );
        assert_eq!(a.sql("SELECT @@max_connections").unwrap(), "12\n");
        assert_eq!(b.sql("SELECT @@max_connections").unwrap(), "200\n");

        let (port, dir, pid) = (a.port(), a.dir().to_owned(), a.pid());
        drop(a);
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
        assert!(!dir.exists());
        assert!(!pid_running(pid));
        assert_eq!(
            current_user(&b, "app", b.app_password()).await.unwrap(),
            "app@%"
        );
    }

    #[test]
    fn too_few_connections_is_refused() {
        let opts = MariaDbOptions {
            max_connections: 9,
            ..Default::default()
        };
        let err = MariaDb::start_with(opts).unwrap_err();
        assert!(err.to_string().contains("minimum"), "{err}");
    }

    #[test]
    fn sql_runs_as_root_and_reports_errors() {
        let db = MariaDb::shared();
        assert_eq!(db.sql("SELECT CURRENT_USER()").unwrap(), "root@localhost\n");
        // Only real accounts with passwords: install's root@<hostname> is gone.
        let accounts = db
            .sql("SELECT user, host, authentication_string <> '' FROM mysql.user ORDER BY user, host")
            .unwrap();
        assert_eq!(
            accounts,
            "app\t%\t1\nmariadb.sys\tlocalhost\t0\nother\t%\t1\n\
             root\t127.0.0.1\t1\nroot\t::1\t1\nroot\tlocalhost\t1\n"
        );
        let err = db.sql("SELECT 1 +").unwrap_err();
        assert!(format!("{err:#}").contains("1064"), "{err:#}");
        assert!(db.error_log_tail().contains("ready for connections"));
        assert!(db.datadir().join("mysql").is_dir());
        assert_eq!(db.password("app"), Some(db.app_password()));
        assert_eq!(db.password("nobody"), None);
    }

    #[tokio::test]
    async fn shared_is_one_server() {
        let (a, b) = (MariaDb::shared(), MariaDb::shared());
        assert!(std::ptr::eq(a, b));
        let mut conn = a.root_conn().await.unwrap();
        let one: Option<u8> = conn.query_first("SELECT 1").await.unwrap();
        assert_eq!(one, Some(1));
        conn.disconnect().await.unwrap();
    }

    #[tokio::test]
    async fn temporary_tables_survive_another_server_starting() {
        let db = MariaDb::shared();
        let mut conn = db.root_conn().await.unwrap();
        let tmpdir: Option<String> = conn.query_first("SELECT @@tmpdir").await.unwrap();
        let tmpdir = PathBuf::from(tmpdir.unwrap());
        assert_eq!(tmpdir, db.dir().join("tmp"));
        let sql_files = || {
            let mut names: Vec<_> = fs::read_dir(&tmpdir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().starts_with("#sql"))
                .collect();
            names.sort();
            names
        };
        // Aria temporary tables are `#sql*` files in tmpdir, which a starting mariadbd deletes.
        conn.query_drop("CREATE TEMPORARY TABLE mysql.sluice_tmp (i INT) ENGINE=Aria")
            .await
            .unwrap();
        let before = sql_files();
        assert!(!before.is_empty());
        drop(MariaDb::start().unwrap());
        assert_eq!(sql_files(), before);
        conn.query_drop("DROP TEMPORARY TABLE mysql.sluice_tmp")
            .await
            .unwrap();
        assert_eq!(conn.get_warnings(), 0);
        conn.disconnect().await.unwrap();
    }

    #[test]
    fn taken_port_is_retried() {
        let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let taken = squatter.local_addr().unwrap().port();
        let mut ports = vec![free_port(), taken];
        let db =
            MariaDb::start_on_ports(MariaDbOptions::default(), || ports.pop().unwrap()).unwrap();
        assert_ne!(db.port(), taken);
        assert!(db.sql("SELECT 1").is_ok());
    }

    /// Re-runs itself in a child process (marked by an environment variable) that starts a
    /// server and hangs, then kills that child and checks that the server dies too.
    #[test]
    fn server_dies_with_its_process() {
        if std::env::var_os("SLUICE_TESTKIT_HELPER").is_some() {
            let db = MariaDb::start().unwrap();
            println!("SANDBOX {} {}", db.pid(), db.dir().display());
            loop {
                thread::park();
            }
        }
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "mariadb::tests::server_dies_with_its_process",
                "--nocapture",
            ])
            .env("SLUICE_TESTKIT_HELPER", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = io::BufReader::new(helper.stdout.take().unwrap());
        // The helper prints the line once its server is up, or exits (EOF) on failure.
        let line = stdout
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("SANDBOX "))
            .expect("helper did not report its server");
        let mut fields = line.split_whitespace().skip(1);
        let pid: u32 = fields.next().unwrap().parse().unwrap();
        let dir = PathBuf::from(fields.next().unwrap());
        assert!(pid_running(pid));

        helper.kill().unwrap();
        helper.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid_running(pid) {
            assert!(
                Instant::now() < deadline,
                "mariadbd {pid} outlived its test process"
            );
            thread::sleep(POLL);
        }
        assert!(dir.exists());
        assert!(remove_leftovers(dir.parent().unwrap()) >= 1);
        assert!(!dir.exists());
    }
}
