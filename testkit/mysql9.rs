//! Private MySQL 9 servers, run from the Debian sid chroot that `scripts/mysql9-chroot.sh`
//! builds: the `caching_sha2_password`-only backend (MySQL 9 has no `mysql_native_password`).
//!
//! Layout inside the chroot `ROOT`:
//! - `ROOT/sluice/templates/KEY/`: an initialized data directory, made once per mysqld version
//!   and kept across test runs (`--initialize-insecure` takes about 3 s, copying 0.05 s);
//! - `ROOT/sluice/run/PID-N/`: one server (data, socket, logs); removed on drop, or by the next
//!   run if this process died.
//!
//! Measured on a shared 2-core machine: the first start on a machine takes about 4 s (3 s of it
//! the template), later starts 0.6-1.4 s, drop about 0.1 s. Each server uses about 340 MB
//! resident, mostly performance_schema. Building the chroot itself takes 45-65 s, once.

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

/// The script that builds the chroot, relative to the workspace root.
const BUILD_SCRIPT: &str = "scripts/mysql9-chroot.sh";
/// File the script writes last; a chroot without it is unfinished.
const READY_MARKER: &str = ".sluice-mysql9-ready";
/// Bump when the template's `--initialize` arguments change, so old templates are not used.
const TEMPLATE_FORMAT: &str = "t1";
/// Redo log capacity of the template and of every server (MySQL's minimum); small so that
/// copying the template is cheap.
const REDO_LOG_CAPACITY: &str = "8M";
/// How long a server may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// Attempts at finding a port that no other process grabs first.
const START_ATTEMPTS: usize = 5;
/// Limit for `--initialize` and for SQL run through the CLI.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines shown from error.log in error messages.
const LOG_TAIL_LINES: usize = 30;
/// The performance_schema instrument of caching_sha2_password's credential cache lock.
const SHA2_CACHE_LOCK: &str = "wait/synch/rwlock/sha2_auth/key_m_cache_lock";

/// How to start a [`Mysql9`].
#[derive(Debug, Clone)]
pub struct Mysql9Options {
    /// Value of `--max-connections` (default 100).
    pub max_connections: u32,
    /// Further `mysqld` arguments; they come last, so they override the defaults.
    pub extra_args: Vec<String>,
}

impl Default for Mysql9Options {
    fn default() -> Self {
        Self {
            max_connections: 100,
            extra_args: Vec::new(),
        }
    }
}

/// A private MySQL 9 server on 127.0.0.1 with real random passwords; stopped and deleted on drop.
///
/// Users, all with `caching_sha2_password`: `root` (`localhost` over the socket and
/// `127.0.0.1`), `app` and `other`, both `'%'` with all privileges on `*.*`. Needs root (for
/// `chroot`) and the chroot from `scripts/mysql9-chroot.sh`. Servers are killed with the test
/// process, however it ends. Several may run side by side.
#[derive(Debug)]
pub struct Mysql9 {
    sandbox: Sandbox,
    port: u16,
    version: String,
    root_password: String,
    app_password: String,
    other_password: String,
}

/// How the server authenticated a `caching_sha2_password` login, by its own instrumentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sha2Auth {
    /// The scramble matched a cached credential: no password was sent.
    Fast,
    /// A cache miss: the password was sent (over TLS, a socket or RSA) and then cached.
    Full,
}

impl Mysql9 {
    /// Starts a server with default options.
    pub fn start() -> Result<Mysql9> {
        Self::start_with(Mysql9Options::default())
    }

    /// Starts a server with `opts`.
    pub fn start_with(opts: Mysql9Options) -> Result<Mysql9> {
        Self::start_on_ports(opts, free_port)
    }

    /// The server shared by all tests of this process, started on first use.
    ///
    /// Panics if it cannot start; see [`Mysql9::try_shared`].
    pub fn shared() -> &'static Mysql9 {
        Self::try_shared().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The server shared by all tests of this process, started on first use.
    pub fn try_shared() -> Result<&'static Mysql9> {
        // Statics are never dropped: the atexit hook and PDEATHSIG stop this server.
        static SHARED: OnceLock<Result<Mysql9, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                Mysql9::start().map_err(|e| format!("cannot start the shared MySQL 9: {e:#}"))
            })
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    fn start_on_ports(opts: Mysql9Options, mut next_port: impl FnMut() -> u16) -> Result<Mysql9> {
        let chroot = Chroot::get()?;
        let template = chroot.template()?;
        let mut sandbox = Sandbox::create(chroot)?;
        let root_password = random_password()?;
        let app_password = random_password()?;
        let other_password = random_password()?;
        write_private(
            &sandbox.dir.join("init.sql"),
            &init_sql(&root_password, &app_password, &other_password),
        )?;
        // For the CLI: an option file keeps the password off the command line and out of the
        // deprecated MYSQL_PWD.
        write_private(
            &sandbox.dir.join("client.cnf"),
            &format!(
                "[client]\nuser=root\npassword={root_password}\nsocket={}\n",
                sandbox.inside("sock")
            ),
        )?;

        for _ in 0..START_ATTEMPTS {
            let port = next_port();
            match sandbox.launch(&template, port, &opts) {
                Ok(version) => {
                    return Ok(Mysql9 {
                        sandbox,
                        port,
                        version,
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
            "mysqld found its port taken {START_ATTEMPTS} times in a row; error.log ends with:\n{}",
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

    /// The version the server announces in its greeting, e.g. `9.7.4-2`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Process id of `mysqld` (for tests that kill it).
    pub fn pid(&self) -> u32 {
        self.sandbox.child.as_ref().map_or(0, Child::id)
    }

    /// Password of `root` (same for `localhost` and `127.0.0.1`).
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

    /// The sandbox directory on the host (data directory, socket, logs); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.sandbox.dir
    }

    /// The last lines of the server's error log.
    pub fn error_log_tail(&self) -> String {
        self.sandbox.error_log_tail()
    }

    /// Runs `sql` as root through the chroot's `mysql` CLI (unix socket, `-N -B`) and returns
    /// stdout.
    ///
    /// Blocking; fine in async tests because it talks to the server directly, not via a proxy.
    pub fn sql(&self, sql: &str) -> Result<String> {
        let mut cmd = self.sandbox.chroot.command();
        cmd.arg("/usr/bin/mysql")
            // Must come first; it also keeps the chroot's /etc/mysql out.
            .arg(format!(
                "--defaults-file={}",
                self.sandbox.inside("client.cnf")
            ))
            .args(["--batch", "--skip-column-names", "--execute"])
            .arg(sql);
        let output = output_with_timeout(cmd, None, COMMAND_TIMEOUT)?;
        check_success("mysql", &output).with_context(|| format!("SQL failed: {sql}"))?;
        String::from_utf8(output.stdout).context("the mysql CLI printed invalid UTF-8")
    }

    /// How the server authenticated the login of connection `connection_id` (its
    /// `CONNECTION_ID()`), from performance_schema's record of the credential cache lock:
    /// full authentication writes the cache, the fast path only reads it.
    ///
    /// The connection must still be open, and must not have run `ALTER USER`, `FLUSH
    /// PRIVILEGES` or COM_CHANGE_USER, which take the same lock.
    pub fn sha2_auth(&self, connection_id: u32) -> Result<Sha2Auth> {
        let ops = self.sql(&format!(
            "SELECT w.operation FROM performance_schema.events_waits_history_long w \
             JOIN performance_schema.threads t USING (thread_id) \
             WHERE t.processlist_id = {connection_id} AND w.event_name = '{SHA2_CACHE_LOCK}' \
             ORDER BY w.event_id"
        ))?;
        let ops: Vec<&str> = ops.lines().collect();
        match ops.as_slice() {
            [] => bail!(
                "performance_schema holds no caching_sha2_password cache events for connection \
                 {connection_id}: it is closed, or did not log in with caching_sha2_password"
            ),
            ["read_lock"] => Ok(Sha2Auth::Fast),
            ["read_lock", "write_lock"] => Ok(Sha2Auth::Full),
            other => bail!(
                "unexpected caching_sha2_password cache events for connection {connection_id}: \
                 {other:?}"
            ),
        }
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

    /// A connection as root over TCP (full authentication over RSA the first time).
    pub async fn root_conn(&self) -> Result<mysql_async::Conn> {
        mysql_async::Conn::new(self.opts("root", &self.root_password, None))
            .await
            .with_context(|| format!("cannot connect as root to MySQL 9 on {}", self.addr()))
    }
}

fn init_sql(root: &str, app: &str, other: &str) -> String {
    let identified = |password: &str| {
        format!(
            "IDENTIFIED WITH caching_sha2_password BY {}",
            quote(password)
        )
    };
    // One statement per line: that is how mysqld reads an init file.
    let mut sql = format!("ALTER USER 'root'@'localhost' {};\n", identified(root));
    sql += &format!("CREATE USER 'root'@'127.0.0.1' {};\n", identified(root));
    sql += "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;\n";
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

/// The chroot's root directory: `SLUICE_MYSQL9_ROOT`, else
/// `${SLUICE_CACHE:-$HOME/.cache/sluice}/mysql9-root` (the same lookup as the build script).
pub fn chroot_root() -> Result<PathBuf> {
    if let Some(root) = std::env::var_os("SLUICE_MYSQL9_ROOT").filter(|r| !r.is_empty()) {
        return Ok(PathBuf::from(root));
    }
    let cache = match std::env::var_os("SLUICE_CACHE").filter(|c| !c.is_empty()) {
        Some(cache) => PathBuf::from(cache),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .context("neither SLUICE_MYSQL9_ROOT, SLUICE_CACHE nor HOME is set")?;
            PathBuf::from(home).join(".cache/sluice")
        }
    };
    Ok(cache.join("mysql9-root"))
}

/// The chroot found on this machine, checked once per process.
#[derive(Debug)]
struct Chroot {
    root: PathBuf,
    /// The `chroot` program.
    chroot: PathBuf,
    /// `mysqld --version`'s version, e.g. `9.7.4-2`: part of the template's key.
    version: String,
}

impl Chroot {
    fn get() -> Result<&'static Chroot> {
        static CHROOT: OnceLock<Result<Chroot, String>> = OnceLock::new();
        CHROOT
            .get_or_init(|| Chroot::find().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    fn find() -> Result<Chroot> {
        Self::find_at(&chroot_root()?)
    }

    fn find_at(root: &Path) -> Result<Chroot> {
        if !root.join(READY_MARKER).is_file() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(BUILD_SCRIPT);
            bail!(
                "no MySQL 9 chroot at {} (SLUICE_MYSQL9_ROOT or SLUICE_CACHE choose another); \
                 build it once, as root, in about 1 minute and 560 MB (the script reads the same \
                 variables) with: {}",
                root.display(),
                script.display()
            );
        }
        if !is_root() {
            bail!("MySQL 9 runs in a chroot, which needs root; run the tests as root");
        }
        let root = root
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", root.display()))?;
        let chroot = find_program("chroot", "apt-get install -y coreutils")?;
        let mut cmd = Command::new(&chroot);
        cmd.arg(&root)
            .args(["/usr/sbin/mysqld", "--no-defaults", "--version"]);
        let output = output_with_timeout(cmd, None, COMMAND_TIMEOUT)?;
        check_success("mysqld --version", &output)
            .with_context(|| format!("mysqld does not run in {}", root.display()))?;
        // "/usr/sbin/mysqld  Ver 9.7.4-2 for Linux on x86_64 ((Debian))"
        let text = String::from_utf8_lossy(&output.stdout);
        let version = text
            .split_whitespace()
            .skip_while(|w| *w != "Ver")
            .nth(1)
            .filter(|v| {
                v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
            })
            .with_context(|| format!("cannot read the version in `mysqld --version`: {text}"))?
            .to_owned();
        Ok(Chroot {
            root,
            chroot,
            version,
        })
    }

    /// `chroot ROOT`, to which the program inside and its arguments are added.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.chroot);
        cmd.arg(&self.root);
        cmd
    }

    /// `ROOT/sluice/run`, created on first use; leftovers of dead processes are removed then.
    fn run_dir(&self) -> Result<&'static Path> {
        static RUN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        RUN.get_or_init(|| {
            let run = self.root.join("sluice/run");
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&run)
                .map_err(|e| format!("cannot create {}: {e}", run.display()))?;
            remove_leftovers(&run);
            Ok(run)
        })
        .as_deref()
        .map_err(|e| anyhow!("{e}"))
    }

    /// The path `mysqld` sees for `host`, a path under the chroot.
    fn inside(&self, host: &Path) -> String {
        let rel = host
            .strip_prefix(&self.root)
            .expect("sandbox paths lie inside the chroot");
        format!("/{}", rel.display())
    }

    /// An initialized data directory for this mysqld version, built once and kept across runs.
    ///
    /// Nothing in it is specific to one server (auto.cnf, holding the server UUID, is removed);
    /// users and passwords are set per server by its init file. The RSA key pair and TLS
    /// certificates made by `--initialize` are shared by all servers: test keys only.
    fn template(&self) -> Result<PathBuf> {
        static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        TEMPLATE
            .get_or_init(|| self.make_template().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow!("{e}"))
    }

    fn make_template(&self) -> Result<PathBuf> {
        let templates = self.root.join("sluice/templates");
        let done = templates.join(format!("{TEMPLATE_FORMAT}-{}", self.version));
        if done.join("data").is_dir() {
            return Ok(done.join("data"));
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&templates)
            .with_context(|| format!("cannot create {}", templates.display()))?;
        // Built under run/, so a build cut short is removed like any leftover.
        let build = self
            .run_dir()?
            .join(format!("{}-template", std::process::id()));
        if build.exists() {
            fs::remove_dir_all(&build)
                .with_context(|| format!("cannot remove {}", build.display()))?;
        }
        register(&build, None);
        let result = self.initialize(&build);
        let result = result.and_then(|()| match fs::rename(&build, &done) {
            Ok(()) => Ok(()),
            // Another process finished the same template first: use theirs.
            Err(_) if done.join("data").is_dir() => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot rename to {}", done.display())),
        });
        let _ = fs::remove_dir_all(&build);
        unregister(&build);
        result.map(|()| done.join("data"))
    }

    /// Runs `mysqld --initialize-insecure` into `build/data`.
    fn initialize(&self, build: &Path) -> Result<()> {
        DirBuilder::new()
            .mode(0o700)
            .create(build)
            .with_context(|| format!("cannot create {}", build.display()))?;
        let mut cmd = self.command();
        cmd.args(["/usr/sbin/mysqld", "--no-defaults", "--initialize-insecure"])
            .arg(format!("--datadir={}", self.inside(&build.join("data"))))
            .arg(format!(
                "--log-error={}",
                self.inside(&build.join("init.log"))
            ))
            .args(["--user=root", "--disable-log-bin"])
            .arg(format!("--innodb-redo-log-capacity={REDO_LOG_CAPACITY}"))
            // Durability is pointless for a template that is only ever copied: about 30% faster.
            .args([
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-doublewrite=OFF",
            ]);
        let output = output_with_timeout(cmd, None, COMMAND_TIMEOUT)?;
        let log = fs::read_to_string(build.join("init.log")).unwrap_or_default();
        check_success("mysqld --initialize-insecure", &output)
            .with_context(|| format!("init.log:\n{log}"))?;
        let auto_cnf = build.join("data/auto.cnf");
        if auto_cnf.exists() {
            fs::remove_file(&auto_cnf)
                .with_context(|| format!("cannot remove {}", auto_cnf.display()))?;
        }
        Ok(())
    }
}

enum LaunchError {
    /// Another process bound the port between `free_port` and mysqld's bind.
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

/// A directory under `ROOT/sluice/run`, and the server running in it.
#[derive(Debug)]
struct Sandbox {
    chroot: &'static Chroot,
    /// Host path.
    dir: PathBuf,
    child: Option<Child>,
}

impl Sandbox {
    fn create(chroot: &'static Chroot) -> Result<Sandbox> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = chroot.run_dir()?.join(format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        register(&dir, None);
        Ok(Sandbox {
            chroot,
            dir,
            child: None,
        })
    }

    /// The path mysqld (in the chroot) sees for `name` in this sandbox.
    fn inside(&self, name: &str) -> String {
        self.chroot.inside(&self.dir.join(name))
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

    /// Starts mysqld on a fresh copy of `template`, waits until it accepts connections and
    /// returns the version it announces.
    fn launch(
        &mut self,
        template: &Path,
        port: u16,
        opts: &Mysql9Options,
    ) -> Result<String, LaunchError> {
        // A failed attempt may have touched these: start again from the template.
        for name in ["data", "tmp", "files"] {
            let path = self.dir.join(name);
            if path.exists() {
                fs::remove_dir_all(&path)?;
            }
        }
        let log_path = self.error_log();
        if log_path.exists() {
            fs::remove_file(&log_path)?;
        }
        let data = self.dir.join("data");
        copy_dir(template, &data).with_context(|| {
            format!(
                "cannot copy the data directory template to {}",
                data.display()
            )
        })?;
        // A private tmpdir, and the only directory LOAD DATA / SELECT INTO OUTFILE may use
        // (mysqld refuses to start when the default /var/lib/mysql-files is missing).
        for name in ["tmp", "files"] {
            DirBuilder::new().mode(0o700).create(self.dir.join(name))?;
        }

        let mut cmd = self.chroot.command();
        cmd.args(["/usr/sbin/mysqld", "--no-defaults"])
            .arg(format!("--datadir={}", self.inside("data")))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", self.inside("sock")))
            .arg(format!("--pid-file={}", self.inside("pid")))
            .arg(format!("--log-error={}", self.inside("error.log")))
            .arg(format!("--init-file={}", self.inside("init.sql")))
            .arg(format!("--tmpdir={}", self.inside("tmp")))
            .arg(format!("--secure-file-priv={}", self.inside("files")))
            .args([
                "--mysqlx=OFF",
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
                "--disable-log-bin",
            ])
            .arg(format!("--max-connections={}", opts.max_connections))
            .arg(format!("--innodb-redo-log-capacity={REDO_LOG_CAPACITY}"))
            // Write the redo log on commit but skip fsync, as in the MariaDB sandbox.
            .arg("--innodb-flush-log-at-trx-commit=2")
            // About 340 MB resident instead of about 480 MB.
            .args([
                "--innodb-buffer-pool-size=8M",
                "--innodb-log-buffer-size=1M",
                "--key-buffer-size=1M",
            ])
            // Record every take of caching_sha2's credential cache lock, per connection, so
            // tests can tell full authentication from the fast path (see `sha2_auth`). Other
            // waits (file and table I/O above all) and idle events are off: they would push
            // those few events out of the 10000-event history within seconds of work. The more
            // specific pattern wins, whatever the order.
            .args([
                "--performance-schema-instrument=wait/%=OFF",
                "--performance-schema-instrument=idle=OFF",
            ])
            .arg(format!(
                "--performance-schema-instrument={SHA2_CACHE_LOCK}=ON"
            ))
            .args([
                "--performance-schema-consumer-events-waits-current=ON",
                "--performance-schema-consumer-events-waits-history-long=ON",
            ])
            .args(&opts.extra_args);

        // Early messages (before --log-error takes effect) land in the same file.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // chroot(1) execs mysqld, so the child (and its PDEATHSIG) is mysqld itself.
        let child = spawn_tied(cmd)?;
        register(&self.dir, Some(child.id()));
        self.child = Some(child);
        self.wait_ready(port)
    }

    fn wait_ready(&mut self, port: u16) -> Result<String, LaunchError> {
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
                    "mysqld exited during start-up ({status}); error.log ends with:\n{}",
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
                    "mysqld did not accept connections on {addr} within {START_DEADLINE:?}; \
                     error.log ends with:\n{}",
                    self.error_log_tail()
                )
                .into());
            }
            thread::sleep(POLL);
        }
    }

    fn check_ready(&mut self, packet: &[u8], log: &str) -> Result<String, LaunchError> {
        let version = match packet.split_first() {
            Some((10, rest)) => {
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                String::from_utf8_lossy(&rest[..end]).into_owned()
            }
            Some((0xff, rest)) if rest.len() >= 2 => {
                let code = u16::from_le_bytes([rest[0], rest[1]]);
                let message = String::from_utf8_lossy(&rest[2..]);
                return Err(anyhow!("mysqld refused a connection: error {code}: {message}").into());
            }
            _ => {
                return Err(
                    anyhow!("mysqld sent an unexpected first packet: {packet:02x?}").into(),
                );
            }
        };
        // mysqld logs a failing init-file statement as an [ERROR] line and carries on; a
        // normal start logs none.
        let failed: Vec<&str> = log.lines().filter(|l| l.contains("[ERROR]")).collect();
        if !failed.is_empty() {
            return Err(anyhow!("setting up users failed:\n{}", failed.join("\n")).into());
        }
        Ok(version)
    }

    /// SIGKILL: the data directory is deleted next, so a clean shutdown (about 1 s) buys
    /// nothing.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Forget the pid before reaping it, so the atexit hook can never signal a reused pid.
        register(&self.dir, None);
        let _ = child.kill();
        let _ = child.wait();
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

/// Removes `PID-*` entries under `run` whose process no longer runs; returns how many.
fn remove_leftovers(run: &Path) -> usize {
    let Ok(entries) = fs::read_dir(run) else {
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

    async fn current_user(
        db: &Mysql9,
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
        // Started concurrently: both race for the template.
        let (a, b) = thread::scope(|s| {
            let a = s.spawn(|| {
                Mysql9::start_with(Mysql9Options {
                    max_connections: 12,
                    ..Default::default()
                })
            });
            let b = s.spawn(Mysql9::start);
            (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
        });
        assert_ne!(a.port(), b.port());
        assert_ne!(a.dir(), b.dir());
        assert_ne!(a.app_password(), b.app_password());
        assert!(a.version().starts_with("9."), "{}", a.version());

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
            let plugins: Vec<(String, String)> = root
                .query("SELECT user, plugin FROM mysql.user WHERE user IN ('app', 'other', 'root')")
                .await
                .unwrap();
            assert!(!plugins.is_empty());
            assert!(
                plugins.iter().all(|(_, p)| p == "caching_sha2_password"),
                "{plugins:?}"
            );
            root.disconnect().await.unwrap();
        }
        // The other server's password does not open this one.
        assert_eq!(
            server_code(current_user(&a, "app", b.app_password()).await),
            1045
        );
        assert_eq!(a.sql("SELECT @@max_connections").unwrap(), "12\n");
        assert_eq!(b.sql("SELECT @@max_connections").unwrap(), "100\n");
        // Each server has its own UUID although both come from one template.
        assert_ne!(
            a.sql("SELECT @@server_uuid").unwrap(),
            b.sql("SELECT @@server_uuid").unwrap()
        );

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
    fn sql_runs_as_root_and_reports_errors() {
        let db = Mysql9::shared();
        assert_eq!(db.sql("SELECT CURRENT_USER()").unwrap(), "root@localhost\n");
        // No native-password plugin to fall back to on this server.
        assert_eq!(
            db.sql("SELECT COUNT(*) FROM information_schema.plugins WHERE plugin_name = 'mysql_native_password'")
                .unwrap(),
            "0\n"
        );
        // The instrumentation `sha2_auth` reads is on, and idle events do not crowd it out.
        let enabled = |name: &str| {
            db.sql(&format!(
                "SELECT enabled FROM performance_schema.setup_instruments WHERE name = '{name}'"
            ))
            .unwrap()
        };
        assert_eq!(enabled(SHA2_CACHE_LOCK), "YES\n");
        assert_eq!(enabled("idle"), "NO\n");
        assert_eq!(enabled("wait/io/file/innodb/innodb_data_file"), "NO\n");
        let consumers = db
            .sql(
                "SELECT COUNT(*) FROM performance_schema.setup_consumers WHERE enabled = 'YES' \
                 AND name IN ('events_waits_current', 'events_waits_history_long')",
            )
            .unwrap();
        assert_eq!(consumers, "2\n");
        let err = db.sql("SELECT 1 +").unwrap_err();
        assert!(format!("{err:#}").contains("1064"), "{err:#}");
        assert!(db.error_log_tail().contains("ready for connections"));
        assert_eq!(db.password("app"), Some(db.app_password()));
        assert_eq!(db.password("nobody"), None);
    }

    #[tokio::test]
    async fn sha2_auth_tells_full_from_fast() {
        let db = Mysql9::start().unwrap();
        let connect = || async {
            let mut conn = mysql_async::Conn::new(db.opts("app", db.app_password(), None))
                .await
                .unwrap();
            let id: Option<u32> = conn.query_first("SELECT CONNECTION_ID()").await.unwrap();
            (conn, id.unwrap())
        };
        let (first, first_id) = connect().await;
        let (second, second_id) = connect().await;
        assert_eq!(db.sha2_auth(first_id).unwrap(), Sha2Auth::Full);
        assert_eq!(db.sha2_auth(second_id).unwrap(), Sha2Auth::Fast);
        // FLUSH PRIVILEGES empties the cache.
        db.sql("FLUSH PRIVILEGES").unwrap();
        let (third, third_id) = connect().await;
        assert_eq!(db.sha2_auth(third_id).unwrap(), Sha2Auth::Full);
        for conn in [first, second, third] {
            conn.disconnect().await.unwrap();
        }
        assert!(db.sha2_auth(first_id).is_err());
    }

    #[test]
    fn taken_port_is_retried() {
        let squatter = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let taken = squatter.local_addr().unwrap().port();
        let mut ports = vec![free_port(), taken];
        // Under load the spare port may be gone too: fresh ones follow.
        let db = Mysql9::start_on_ports(Mysql9Options::default(), || {
            ports.pop().unwrap_or_else(free_port)
        })
        .unwrap();
        assert_ne!(db.port(), taken);
        assert!(db.sql("SELECT 1").is_ok());
    }

    #[test]
    fn missing_chroot_names_the_build_script() {
        let err = Chroot::find_at(Path::new("/nonexistent/sluice-mysql9")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("scripts/mysql9-chroot.sh"), "{msg}");
    }
}
