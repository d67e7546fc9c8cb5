//! `sluice-compat-env`: runs one command against a fresh sandbox database, reached directly or
//! through the real `sluice` binary, for the compatibility harness (`compat/run.sh`).
//!
//! ```text
//! sluice-compat-env --server mariadb|mysql9 --via direct|sluice [--setup-sql FILE]
//!                   [--sluice-log FILE] -- CMD ARGS...
//! ```
//!
//! It starts a private server with the project's sandbox code (testkit), runs the setup SQL on
//! it as root over its unix socket, starts Sluice in front of it when `--via sluice`, then runs
//! `CMD` with the endpoint in its environment:
//!
//! - `COMPAT_HOST`, `COMPAT_PORT`: where the suite connects (the server, or Sluice);
//! - `COMPAT_USER` (`root`), `COMPAT_PASSWORD`; `COMPAT_APP_USER`/`_PASSWORD` (`app`, all
//!   privileges) and `COMPAT_OTHER_USER`/`_PASSWORD` for suites that want a second account;
//! - `COMPAT_SERVER` (`mariadb`, `mysql9`), `COMPAT_VIA` (`direct`, `sluice`),
//!   `COMPAT_SERVER_VERSION` (the server's own version string).
//!
//! The server's unix socket is removed before the command starts, so that no suite can reach
//! the server around Sluice. The servers and Sluice stop, and their directories go, when the command exits; they are tied
//! to this process, so they also die with it however it ends. The exit status is the command's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use sluice_testkit::{
    MariaDb, MariaDbOptions, Mysql9, Mysql9Options, Pki, SluiceOptions, SluiceProcess,
};

/// Backend connections Sluice may open: room for the suites' pinned sessions (temporary
/// tables, user variables, locks) without waiting on each other.
const POOL_SIZE: usize = 50;

/// Server options every suite gets, taken from the drivers' own CI set-ups: big packets,
/// `LOAD DATA LOCAL`, a binary log (for binlog clients) and utf8mb4 as the default charset.
const MARIADB_ARGS: &[&str] = &[
    "--max-allowed-packet=36700160",
    "--local-infile=1",
    "--log-bin=mysql-bin",
    "--server-id=1",
    "--gtid-domain-id=1",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
    // mysql_async's CI: its change-user test makes a mysql_old_password account.
    "--secure-auth=OFF",
];
const MYSQL9_ARGS: &[&str] = &[
    "--max-allowed-packet=36700160",
    "--local-infile=1",
    "--log-bin=mysql-bin",
    "--server-id=1",
    "--gtid-mode=ON",
    "--enforce-gtid-consistency=ON",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    MariaDb,
    Mysql9,
}

struct Args {
    server: Server,
    via_sluice: bool,
    setup_sql: Option<PathBuf>,
    /// Where to copy Sluice's log when the command is done.
    sluice_log: Option<PathBuf>,
    command: Vec<String>,
}

fn usage() -> &'static str {
    "usage: sluice-compat-env --server mariadb|mysql9 --via direct|sluice [--setup-sql FILE] \
     [--sluice-log FILE] -- CMD ARGS..."
}

fn parse_args() -> Result<Args> {
    let mut server = None;
    let mut via = None;
    let mut setup_sql = None;
    let mut sluice_log = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--server" => {
                server = Some(match value("--server")?.as_str() {
                    "mariadb" => Server::MariaDb,
                    "mysql9" => Server::Mysql9,
                    other => bail!("unknown server {other:?}; {}", usage()),
                })
            }
            "--via" => {
                via = Some(match value("--via")?.as_str() {
                    "direct" => false,
                    "sluice" => true,
                    other => bail!("unknown --via {other:?}; {}", usage()),
                })
            }
            "--setup-sql" => setup_sql = Some(PathBuf::from(value("--setup-sql")?)),
            "--sluice-log" => sluice_log = Some(PathBuf::from(value("--sluice-log")?)),
            "--" => break,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; {}", usage()),
        }
    }
    let command: Vec<String> = args.collect();
    if command.is_empty() {
        bail!("no command given; {}", usage());
    }
    Ok(Args {
        server: server.with_context(usage)?,
        via_sluice: via.with_context(usage)?,
        setup_sql,
        sluice_log,
        command,
    })
}

/// A started backend of either kind, with what the harness needs from it.
enum Backend {
    MariaDb(MariaDb),
    Mysql9(Mysql9),
}

impl Backend {
    fn start(server: Server) -> Result<Backend> {
        let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect();
        Ok(match server {
            Server::MariaDb => Backend::MariaDb(MariaDb::start_with(MariaDbOptions {
                max_connections: 300,
                extra_args: args(MARIADB_ARGS),
                ..Default::default()
            })?),
            Server::Mysql9 => Backend::Mysql9(Mysql9::start_with(Mysql9Options {
                max_connections: 300,
                extra_args: args(MYSQL9_ARGS),
            })?),
        })
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Backend::MariaDb(db) => db.addr(),
            Backend::Mysql9(db) => db.addr(),
        }
    }

    fn password(&self, user: &str) -> &str {
        let password = match self {
            Backend::MariaDb(db) => db.password(user),
            Backend::Mysql9(db) => db.password(user),
        };
        password.expect("root, app and other exist on every sandbox server")
    }

    /// The server's unix socket (a host path).
    fn socket(&self) -> PathBuf {
        match self {
            Backend::MariaDb(db) => db.socket_path(),
            Backend::Mysql9(db) => db.dir().join("sock"),
        }
    }

    fn sql(&self, sql: &str) -> Result<String> {
        match self {
            Backend::MariaDb(db) => db.sql(sql),
            Backend::Mysql9(db) => db.sql(sql),
        }
    }

    /// The plugin the server's accounts use, which Sluice then asks clients for too.
    fn auth_plugin(&self) -> &'static str {
        match self {
            Backend::MariaDb(_) => "mysql_native_password",
            Backend::Mysql9(_) => "caching_sha2_password",
        }
    }

    /// MySQL 9 offers TLS (certificates made at initialize); the MariaDB sandbox does not.
    fn offers_tls(&self) -> bool {
        matches!(self, Backend::Mysql9(_))
    }
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Sluice in front of `backend`, knowing its three accounts; TLS towards clients as the server
/// itself offers it, so a suite sees the same choice either way.
fn start_sluice(backend: &Backend, pki: &Pki) -> Result<SluiceProcess> {
    let mut extra = String::from("max_client_connections = 2000\n");
    if backend.offers_tls() {
        extra += &format!(
            "[tls]\nmode = \"preferred\"\ncert_file = {}\nkey_file = {}\n",
            toml_string(&pki.path("server.pem").display().to_string()),
            toml_string(&pki.path("server-key.pem").display().to_string()),
        );
    }
    for user in ["root", "app", "other"] {
        extra += &format!(
            "[[users]]\nusername = {}\npassword = {}\nauth_plugin = {}\n",
            toml_string(user),
            toml_string(backend.password(user)),
            toml_string(backend.auth_plugin()),
        );
    }
    SluiceProcess::start(SluiceOptions {
        backend: backend.addr(),
        users: Vec::new(),
        max_connections: POOL_SIZE,
        extra_toml: extra,
        // Fail a starved borrow within a suite's patience rather than RDS Proxy's 120 s.
        backend_extra_toml: "borrow_timeout = \"20s\"\n".to_owned(),
        ..SluiceOptions::default()
    })
}

fn run(args: Args) -> Result<ExitCode> {
    let backend = Backend::start(args.server)?;
    if let Some(path) = &args.setup_sql {
        let sql = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if !sql.trim().is_empty() {
            backend
                .sql(&sql)
                .with_context(|| format!("the setup SQL in {} failed", path.display()))?;
        }
    }
    let version = backend
        .sql("SELECT VERSION()")
        .context("cannot read the server version")?;
    // From here on the server is reachable over TCP only: a suite that finds the socket (from
    // @@socket, say) would otherwise reach the server around Sluice and pass for it.
    let socket = backend.socket();
    std::fs::remove_file(&socket)
        .with_context(|| format!("cannot remove the server's socket {}", socket.display()))?;
    let pki = Pki::generate()?;
    let sluice = if args.via_sluice {
        Some(start_sluice(&backend, &pki)?)
    } else {
        None
    };
    let endpoint = sluice.as_ref().map_or(backend.addr(), SluiceProcess::addr);

    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env("COMPAT_HOST", endpoint.ip().to_string())
        .env("COMPAT_PORT", endpoint.port().to_string())
        .env("COMPAT_USER", "root")
        .env("COMPAT_PASSWORD", backend.password("root"))
        .env("COMPAT_APP_USER", "app")
        .env("COMPAT_APP_PASSWORD", backend.password("app"))
        .env("COMPAT_OTHER_USER", "other")
        .env("COMPAT_OTHER_PASSWORD", backend.password("other"))
        .env(
            "COMPAT_SERVER",
            match args.server {
                Server::MariaDb => "mariadb",
                Server::Mysql9 => "mysql9",
            },
        )
        .env(
            "COMPAT_VIA",
            if args.via_sluice { "sluice" } else { "direct" },
        )
        .env("COMPAT_SERVER_VERSION", version.trim())
        .env("COMPAT_CA", pki.path("ca.pem"));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", args.command[0]))?;
    if let Some(mut sluice) = sluice {
        // A panic or an error Sluice logged is worth seeing next to the suite's failures.
        let log = std::fs::read_to_string(sluice.log_path()).unwrap_or_default();
        if !sluice.is_running() {
            eprintln!(
                "sluice-compat-env: sluice exited during the run; its log ends with:\n{}",
                sluice.log_tail()
            );
        }
        let panics = log.lines().filter(|l| l.contains("panicked")).count();
        if panics > 0 {
            eprintln!("sluice-compat-env: sluice logged {panics} panic(s)");
        }
        sluice.stop();
        if let Some(path) = &args.sluice_log {
            std::fs::write(path, &log)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    drop(backend);
    Ok(match status.code() {
        Some(code) => ExitCode::from(code.clamp(0, 255) as u8),
        None => ExitCode::from(128),
    })
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice-compat-env: {e:#}");
            // 125, as env(1) and container runners use: the wrapper failed, not the command.
            ExitCode::from(125)
        }
    }
}
