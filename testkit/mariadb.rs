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
    LaunchError, Passwords, START_ATTEMPTS, Sandbox, is_root, on_free_port, once, quote, register,
    sandbox_root, write_private,
};

const INSTALL: &str = "apt-get install -y mariadb-server mariadb-client";
/// How long a server may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a server may take to shut down after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Limit for `mariadb-install-db` and for SQL run through the CLI.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Redo log size of the template; small so that copying the template is cheap.
const TEMPLATE_LOG_FILE_SIZE: &str = "8M";
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
    passwords: Passwords,
    mariadbd: PathBuf,
    opts: MariaDbOptions,
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
        once(&SHARED, || {
            MariaDb::start().context("cannot start the shared MariaDB")
        })
    }

    fn start_on_ports(opts: MariaDbOptions, next_port: impl FnMut() -> u16) -> Result<MariaDb> {
        Self::start_with_passwords(opts, next_port, Passwords::random()?)
    }

    /// Starts a server whose accounts have `passwords` (a replica needs its primary's).
    pub(crate) fn start_with_passwords(
        opts: MariaDbOptions,
        next_port: impl FnMut() -> u16,
        passwords: Passwords,
    ) -> Result<MariaDb> {
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

        let mut sandbox = Sandbox::create(sandbox_root()?, STOP_GRACE)?;
        let socket = sandbox.path("sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "socket path {} is too long for a unix socket; point TMPDIR at a shorter directory",
                socket.display()
            );
        }
        write_private(&sandbox.path("init.sql"), &init_sql(&passwords))?;

        let started = on_free_port(next_port, |port| {
            launch(&mut sandbox, &mariadbd, &template, port, &opts)
        })?;
        let Some((port, ())) = started else {
            bail!(
                "mariadbd found its port taken {START_ATTEMPTS} times in a row; error.log ends \
                 with:\n{}",
                sandbox.error_log_tail()
            )
        };
        Ok(MariaDb {
            sandbox,
            port,
            client,
            passwords,
            mariadbd,
            opts,
        })
    }

    /// Kills the server with SIGKILL (no shutdown at all) and reaps it.
    pub fn kill9(&mut self) {
        self.sandbox.kill_now();
    }

    /// Stops the server with SIGTERM (a clean shutdown; SIGKILL after 5 s).
    pub fn stop(&mut self) {
        self.sandbox.stop();
    }

    /// Whether the server process runs.
    pub fn is_running(&self) -> bool {
        self.sandbox.pid() != 0
    }

    /// Starts the server again on its data directory and port, after [`MariaDb::kill9`] or
    /// [`MariaDb::stop`] (InnoDB recovers what was committed). Returns once it greets.
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("the server on port {} is still running", self.port);
        }
        let cmd = server_command(&self.sandbox, &self.mariadbd, self.port, &self.opts, false);
        self.sandbox.spawn(cmd)?;
        match self
            .sandbox
            .wait_ready_again("mariadbd", self.port, START_DEADLINE)
        {
            Ok(_) => Ok(()),
            Err(LaunchError::PortTaken) => bail!(
                "port {} was taken by another process while the server was down",
                self.port
            ),
            Err(LaunchError::Failed(e)) => Err(e),
        }
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
        self.sandbox.pid()
    }

    /// Password of `root` (same for `localhost`, `127.0.0.1` and `::1`).
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

    /// The sandbox directory (data directory, socket, logs); removed on drop.
    pub fn dir(&self) -> &Path {
        self.sandbox.dir()
    }

    /// The data directory.
    pub fn datadir(&self) -> PathBuf {
        self.sandbox.path("data")
    }

    /// The server's unix socket.
    pub fn socket_path(&self) -> PathBuf {
        self.sandbox.path("sock")
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
            .env("MYSQL_PWD", &self.passwords.root);
        let output = output_with_timeout(cmd, None, COMMAND_TIMEOUT)?;
        check_success("mariadb", &output).with_context(|| format!("SQL failed: {sql}"))?;
        String::from_utf8(output.stdout).context("the mariadb CLI printed invalid UTF-8")
    }

    /// Connection options for `user` over TCP to 127.0.0.1 (never the unix socket).
    pub fn opts(&self, user: &str, password: &str, db: Option<&str>) -> mysql_async::OptsBuilder {
        crate::clients::client_opts(self.addr(), user, password, db)
    }

    /// A connection as root over TCP.
    pub async fn root_conn(&self) -> Result<mysql_async::Conn> {
        mysql_async::Conn::new(self.opts("root", &self.passwords.root, None))
            .await
            .with_context(|| format!("cannot connect as root to MariaDB on {}", self.addr()))
    }
}

fn init_sql(passwords: &Passwords) -> String {
    let identified = |password: &str| {
        format!(
            "IDENTIFIED VIA mysql_native_password USING PASSWORD({})",
            quote(password)
        )
    };
    // One statement per line: that is how mariadbd reads an init file.
    passwords.init_sql(identified, |root| {
        let mut sql = format!(
            "ALTER USER 'root'@'localhost' {0}, 'root'@'127.0.0.1' {0}, 'root'@'::1' {0};\n",
            root
        );
        // mariadb-install-db also creates a password-less root@<hostname>.
        if let Ok(host) = fs::read_to_string("/proc/sys/kernel/hostname") {
            let host = host.trim();
            if !host.is_empty() && !["localhost", "127.0.0.1", "::1"].contains(&host) {
                sql += &format!("DROP USER IF EXISTS 'root'@{};\n", quote(host));
            }
        }
        sql
    })
}

/// Starts mariadbd in `sandbox` on a fresh copy of `template` and waits until it accepts
/// connections.
fn launch(
    sandbox: &mut Sandbox,
    mariadbd: &Path,
    template: &Path,
    port: u16,
    opts: &MariaDbOptions,
) -> Result<(), LaunchError> {
    // Every mariadbd deletes all `#sql*` files in its tmpdir at start-up: with a shared
    // tmpdir (/tmp by default) starting one server breaks another's temporary tables.
    sandbox.reset(template, &["tmp"])?;
    let cmd = server_command(sandbox, mariadbd, port, opts, true);
    sandbox.spawn(cmd)?;
    // mariadbd logs a failing init-file statement as "ERROR: <code> ..." and carries on.
    sandbox.wait_ready("mariadbd", port, START_DEADLINE, |line| {
        line.starts_with("ERROR: ")
    })?;
    Ok(())
}

/// The `mariadbd` command line of a sandbox server; `init` runs the init file (which sets up
/// the accounts once, at the first start).
fn server_command(
    sandbox: &Sandbox,
    mariadbd: &Path,
    port: u16,
    opts: &MariaDbOptions,
    init: bool,
) -> Command {
    let path = |name: &str| sandbox.path(name).display().to_string();
    let mut cmd = Command::new(mariadbd);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", path("data")))
        .arg(format!("--port={port}"))
        .arg(format!("--socket={}", path("sock")))
        .arg(format!("--pid-file={}", path("pid")))
        .arg(format!("--log-error={}", path("error.log")));
    if init {
        cmd.arg(format!("--init-file={}", path("init.sql")));
    }
    cmd.arg(format!("--tmpdir={}", path("tmp")))
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
    cmd
}

/// A freshly installed data directory, made once per process and copied for every server:
/// copying takes about 50 ms, `mariadb-install-db` about 500 ms.
///
/// The template is the state `mariadb-install-db` leaves after a clean shutdown of its
/// bootstrap server; nothing in it is specific to one instance, and users are set up per
/// server by the init file.
fn template(install_db: &Path) -> Result<PathBuf> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    once(&TEMPLATE, || {
        let dir = sandbox_root()?.join(format!("{}-template", std::process::id()));
        install(install_db, &dir)?;
        Ok(dir.join("data"))
    })
    .cloned()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{POLL, pid_running};
    use crate::sandbox::remove_leftovers;
    use crate::sandbox::test_support::{current_user, server_code};
    use mysql_async::prelude::Queryable;
    use std::io::{self, BufRead};
    use std::net::{TcpListener, TcpStream};
    use std::process::Stdio;
    use std::thread;
    use std::time::Instant;

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
            let plugin: Option<String> = root
                .query_first("SELECT plugin FROM mysql.user WHERE user = 'app'")
                .await
                .unwrap();
            assert_eq!(plugin.as_deref(), Some("mysql_native_password"));
            root.disconnect().await.unwrap();
        }
        // The other server's password does not open this one.
        assert_eq!(
            server_code(current_user(a.opts("app", b.app_password(), None)).await),
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
            current_user(b.opts("app", b.app_password(), None))
                .await
                .unwrap(),
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
