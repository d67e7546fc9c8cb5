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

use std::fs::{self, DirBuilder};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::ports::free_port;
use crate::process::{check_success, find_program, output_with_timeout};
use crate::sandbox::{
    LaunchError, Passwords, START_ATTEMPTS, Sandbox, is_root, on_free_port, once, prepare_root,
    quote, register, unregister, write_private,
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
/// Limit for `--initialize` and for SQL run through the CLI.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
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
    chroot: &'static Chroot,
    sandbox: Sandbox,
    port: u16,
    version: String,
    passwords: Passwords,
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
        once(&SHARED, || {
            Mysql9::start().context("cannot start the shared MySQL 9")
        })
    }

    fn start_on_ports(opts: Mysql9Options, next_port: impl FnMut() -> u16) -> Result<Mysql9> {
        let chroot = Chroot::get()?;
        let template = chroot.template()?;
        // SIGKILL: the data directory is deleted next, so a clean shutdown (about 1 s) buys
        // nothing.
        let mut sandbox = Sandbox::create(chroot.run_dir()?, Duration::ZERO)?;
        let passwords = Passwords::random()?;
        write_private(&sandbox.path("init.sql"), &init_sql(&passwords))?;
        // For the CLI: an option file keeps the password off the command line and out of the
        // deprecated MYSQL_PWD.
        write_private(
            &sandbox.path("client.cnf"),
            &format!(
                "[client]\nuser=root\npassword={}\nsocket={}\n",
                passwords.root,
                chroot.inside(&sandbox.path("sock"))
            ),
        )?;

        let started = on_free_port(next_port, |port| {
            launch(chroot, &mut sandbox, &template, port, &opts)
        })?;
        let Some((port, version)) = started else {
            bail!(
                "mysqld found its port taken {START_ATTEMPTS} times in a row; error.log ends \
                 with:\n{}",
                sandbox.error_log_tail()
            )
        };
        Ok(Mysql9 {
            chroot,
            sandbox,
            port,
            version,
            passwords,
        })
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
        self.sandbox.pid()
    }

    /// Password of `root` (same for `localhost` and `127.0.0.1`).
    pub fn root_password(&self) -> &str {
        &self.passwords.root
    }

    /// Password of `app`.
    pub fn app_password(&self) -> &str {
        &self.passwords.app
    }

    /// Password of `other`.
    pub fn other_password(&self) -> &str {
        &self.passwords.other
    }

    /// Password of `root`, `app` or `other`; `None` for any other name.
    pub fn password(&self, user: &str) -> Option<&str> {
        self.passwords.of(user)
    }

    /// The sandbox directory on the host (data directory, socket, logs); removed on drop.
    pub fn dir(&self) -> &Path {
        self.sandbox.dir()
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
        let mut cmd = self.chroot.command();
        cmd.arg("/usr/bin/mysql")
            // Must come first; it also keeps the chroot's /etc/mysql out.
            .arg(format!(
                "--defaults-file={}",
                self.chroot.inside(&self.sandbox.path("client.cnf"))
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
        crate::clients::client_opts(self.addr(), user, password, db)
    }

    /// A connection as root over TCP (full authentication over RSA the first time).
    pub async fn root_conn(&self) -> Result<mysql_async::Conn> {
        mysql_async::Conn::new(self.opts("root", &self.passwords.root, None))
            .await
            .with_context(|| format!("cannot connect as root to MySQL 9 on {}", self.addr()))
    }
}

fn init_sql(passwords: &Passwords) -> String {
    let identified = |password: &str| {
        format!(
            "IDENTIFIED WITH caching_sha2_password BY {}",
            quote(password)
        )
    };
    // One statement per line: that is how mysqld reads an init file.
    passwords.init_sql(identified, |root| {
        let mut sql = format!("ALTER USER 'root'@'localhost' {root};\n");
        sql += &format!("CREATE USER 'root'@'127.0.0.1' {root};\n");
        sql += "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;\n";
        sql
    })
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
        once(&CHROOT, Chroot::find)
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
        once(&RUN, || {
            let run = self.root.join("sluice/run");
            prepare_root(&run)?;
            Ok(run)
        })
        .map(PathBuf::as_path)
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
        once(&TEMPLATE, || self.make_template()).cloned()
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

/// Starts mysqld in `sandbox` on a fresh copy of `template`, waits until it accepts
/// connections and returns the version it announces.
fn launch(
    chroot: &Chroot,
    sandbox: &mut Sandbox,
    template: &Path,
    port: u16,
    opts: &Mysql9Options,
) -> Result<String, LaunchError> {
    // A private tmpdir, and the only directory LOAD DATA / SELECT INTO OUTFILE may use
    // (mysqld refuses to start when the default /var/lib/mysql-files is missing).
    sandbox.reset(template, &["tmp", "files"])?;
    // The path mysqld (in the chroot) sees for `name` in the sandbox.
    let inside = |name: &str| chroot.inside(&sandbox.path(name));
    let mut cmd = chroot.command();
    cmd.args(["/usr/sbin/mysqld", "--no-defaults"])
        .arg(format!("--datadir={}", inside("data")))
        .arg(format!("--port={port}"))
        .arg(format!("--socket={}", inside("sock")))
        .arg(format!("--pid-file={}", inside("pid")))
        .arg(format!("--log-error={}", inside("error.log")))
        .arg(format!("--init-file={}", inside("init.sql")))
        .arg(format!("--tmpdir={}", inside("tmp")))
        .arg(format!("--secure-file-priv={}", inside("files")))
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
    // chroot(1) execs mysqld, so the child (and its PDEATHSIG) is mysqld itself.
    sandbox.spawn(cmd)?;
    // mysqld logs a failing init-file statement as an [ERROR] line and carries on; a normal
    // start logs none.
    let version = sandbox.wait_ready("mysqld", port, START_DEADLINE, |line| {
        line.contains("[ERROR]")
    })?;
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::pid_running;
    use crate::sandbox::test_support::{current_user, server_code};
    use mysql_async::prelude::Queryable;
    use std::net::TcpStream;
    use std::thread;

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
                current_user(db.opts("app", db.app_password(), None))
                    .await
                    .unwrap(),
                "app@%"
            );
            assert_eq!(
                current_user(db.opts("other", db.other_password(), None))
                    .await
                    .unwrap(),
                "other@%"
            );
            assert_eq!(
                server_code(current_user(db.opts("app", "wrong", None)).await),
                1045
            );
            assert_eq!(
                server_code(current_user(db.opts("root", "", None)).await),
                1045
            );
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
            server_code(current_user(a.opts("app", b.app_password(), None)).await),
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
            current_user(b.opts("app", b.app_password(), None))
                .await
                .unwrap(),
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
