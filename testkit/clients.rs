use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::process::{find_program, output_with_timeout};

/// How long a client may run before it is killed and the call fails.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `python3 SCRIPT ARGS...` with `env` added to the environment; needs PyMySQL.
///
/// A relative `script` is resolved against the workspace root (e.g. `tests/clients/x.py`).
/// Blocking: in a `#[tokio::test]` whose runtime also runs the proxy, use [`pymysql_async`].
/// The process is killed after [`CLIENT_TIMEOUT`]. A failing script is not an error here;
/// check `status`, or use [`stdout_if_success`].
pub fn pymysql(script: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let script = workspace_path(script);
    if !script.is_file() {
        bail!("PyMySQL script {} not found", script.display());
    }
    let python = python_with_pymysql()?;
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .args(args)
        // Keep __pycache__ out of the source tree; flush output so a timeout shows it.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .envs(env.iter().copied());
    output_with_timeout(cmd, None, CLIENT_TIMEOUT)
        .with_context(|| format!("running {}", script.display()))
}

/// [`pymysql`] on a blocking thread, so the runtime keeps serving the proxy meanwhile.
pub async fn pymysql_async(script: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let script = script.to_owned();
    let args = owned(args);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        pymysql(&script, &borrowed(&args), &env)
    })
    .await
    .context("the PyMySQL thread panicked")?
}

/// mysql_async options for `user` at `addr` over TCP, optionally in schema `db`.
///
/// `prefer_socket(false)`, because on loopback mysql_async otherwise asks the server for its
/// unix socket and reconnects there, bypassing any proxy in between.
pub fn client_opts(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: Option<&str>,
) -> mysql_async::OptsBuilder {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some(user))
        .pass(Some(password))
        .db_name(db)
        .prefer_socket(false)
}

/// Runs the `mariadb` CLI over TCP to `addr` as `user`, with `args` and optional `stdin`.
///
/// The password goes through `MYSQL_PWD`, never the command line; TLS is off. Blocking: see
/// [`mariadb_cli_async`]. A failing command is not an error here; check `status`.
pub fn mariadb_cli(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: Option<&str>,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<Output> {
    let client = find_program("mariadb", "apt-get install -y mariadb-client")?;
    let mut cmd = Command::new(client);
    cmd.arg("--no-defaults")
        .arg("--protocol=TCP")
        .arg(format!("--host={}", addr.ip()))
        .arg(format!("--port={}", addr.port()))
        .arg(format!("--user={user}"))
        .arg("--skip-ssl")
        .env("MYSQL_PWD", password);
    if let Some(db) = db {
        cmd.arg(format!("--database={db}"));
    }
    cmd.args(args);
    output_with_timeout(cmd, stdin, CLIENT_TIMEOUT).context("running the mariadb CLI")
}

/// [`mariadb_cli`] on a blocking thread, so the runtime keeps serving the proxy meanwhile.
pub async fn mariadb_cli_async(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: Option<&str>,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<Output> {
    let (user, password) = (user.to_owned(), password.to_owned());
    let db = db.map(str::to_owned);
    let args = owned(args);
    let stdin = stdin.map(<[u8]>::to_vec);
    tokio::task::spawn_blocking(move || {
        mariadb_cli(
            addr,
            &user,
            &password,
            db.as_deref(),
            &borrowed(&args),
            stdin.as_deref(),
        )
    })
    .await
    .context("the mariadb CLI thread panicked")?
}

/// The stdout of a client that exited successfully; otherwise an error with its stderr.
pub fn stdout_if_success(output: &Output) -> Result<String> {
    if !output.status.success() {
        bail!(
            "client failed ({}):\nstderr:\n{}\nstdout:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    String::from_utf8(output.stdout.clone()).context("client printed invalid UTF-8")
}

fn workspace_path(path: &str) -> PathBuf {
    // `join` keeps an absolute `path` as it is.
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `python3`, once checked to import PyMySQL.
fn python_with_pymysql() -> Result<PathBuf> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let python = find_program("python3", "apt-get install -y python3")
                .map_err(|e| format!("{e:#}"))?;
            let mut cmd = Command::new(&python);
            cmd.args(["-c", "import pymysql"]);
            let output =
                output_with_timeout(cmd, None, CLIENT_TIMEOUT).map_err(|e| format!("{e:#}"))?;
            if !output.status.success() {
                return Err(format!(
                    "{} cannot import PyMySQL ({}); install it with: pip install PyMySQL",
                    python.display(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            Ok(python)
        })
        .clone()
        .map_err(|e| anyhow!("{e}"))
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

fn borrowed(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MariaDb;

    #[test]
    fn mariadb_cli_reads_stdin_and_checks_passwords() {
        let db = MariaDb::shared();
        let out = mariadb_cli(
            db.addr(),
            "app",
            db.app_password(),
            Some("mysql"),
            &["-N", "-B"],
            Some(b"SELECT CURRENT_USER(), DATABASE();\n"),
        )
        .unwrap();
        assert_eq!(stdout_if_success(&out).unwrap(), "app@%\tmysql\n");

        let out = mariadb_cli(db.addr(), "app", "wrong", None, &["-e", "SELECT 1"], None).unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("1045"));
        assert!(stdout_if_success(&out).is_err());
    }

    #[tokio::test]
    async fn pymysql_runs_a_script() {
        let db = MariaDb::shared();
        // Scripts normally live in tests/clients/; an absolute path is used as is.
        let script = std::env::temp_dir().join(format!("sluice-testkit-{}.py", std::process::id()));
        std::fs::write(
            &script,
            "import os, sys, pymysql\n\
             c = pymysql.connect(host='127.0.0.1', port=int(sys.argv[1]), user='other',\n\
                                 password=os.environ['PW'])\n\
             cur = c.cursor(); cur.execute('SELECT CURRENT_USER()'); print(cur.fetchone()[0])\n",
        )
        .unwrap();
        let port = db.port().to_string();
        let out = pymysql_async(
            script.to_str().unwrap(),
            &[&port],
            &[("PW", db.other_password())],
        )
        .await;
        std::fs::remove_file(&script).unwrap();
        assert_eq!(stdout_if_success(&out.unwrap()).unwrap(), "other@%\n");
    }

    #[test]
    fn missing_script_is_an_error() {
        let err = pymysql("tests/clients/no-such-script.py", &[], &[]).unwrap_err();
        assert!(err.to_string().contains("no-such-script.py"), "{err}");
    }
}
