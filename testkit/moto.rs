//! A local AWS (Secrets Manager, KMS, ...) for tests: `moto_server` on loopback, spoken to with
//! a small blocking HTTP client so that tests need no AWS SDK to prepare secrets.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::ports::free_port;
use crate::process::{POLL, find_program};
use crate::sandbox::{
    LaunchError, START_ATTEMPTS, create_private_dir, exited_at_start, log_tail, on_free_port, once,
    register, sandbox_root, spawn_logged, stop_child, unregister,
};

const INSTALL: &str = "pip install 'moto[server]' (scripts/test.sh installs it)";
/// How long moto_server may take to answer its first request (it imports a lot of Python).
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long moto_server may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Limit for one request to moto_server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines shown from moto's log in error messages.
const LOG_TAIL_LINES: usize = 30;

/// A private `moto_server` on 127.0.0.1; stopped and its directory removed on drop, and killed
/// with this process however that ends.
///
/// State is kept per region and lives as long as the server: tests that share one
/// ([`Moto::shared`]) use distinct secret names ([`Moto::unique_name`]). Point the AWS SDK at
/// [`Moto::endpoint`] with region [`Moto::REGION`] and any static credentials
/// ([`Moto::ACCESS_KEY_ID`], [`Moto::SECRET_ACCESS_KEY`]), or set `AWS_ENDPOINT_URL` for a
/// child process. The helper methods block; each call takes a few milliseconds.
#[derive(Debug)]
pub struct Moto {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Moto {
    /// The region the helpers use; secrets live per region in moto.
    pub const REGION: &'static str = "us-east-1";
    /// Credentials moto accepts (it checks none).
    pub const ACCESS_KEY_ID: &'static str = "testing";
    /// Credentials moto accepts (it checks none).
    pub const SECRET_ACCESS_KEY: &'static str = "testing";

    /// Starts a server on a free loopback port and waits until it answers.
    pub fn start() -> Result<Moto> {
        let program = find_pypi_program("moto_server", INSTALL)?;
        let dir = create_private_dir(sandbox_root()?, "moto-")?;
        register(&dir, None);
        let mut moto = Moto {
            child: None,
            port: 0,
            dir,
        };
        let started = on_free_port(free_port, |port| moto.launch(&program, port))?;
        if started.is_none() {
            bail!(
                "moto_server found its port taken {START_ATTEMPTS} times in a row; its log ends \
                 with:\n{}",
                moto.log_tail()
            );
        }
        Ok(moto)
    }

    /// The server shared by all tests of this process, started on first use.
    ///
    /// Panics if it cannot start; see [`Moto::try_shared`].
    pub fn shared() -> &'static Moto {
        Self::try_shared().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The server shared by all tests of this process, started on first use.
    pub fn try_shared() -> Result<&'static Moto> {
        // Statics are never dropped: the atexit hook and PDEATHSIG stop this server.
        static SHARED: OnceLock<Result<Moto, String>> = OnceLock::new();
        once(&SHARED, || {
            Moto::start().context("cannot start the shared moto_server")
        })
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL` or an SDK's `endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Process id of moto_server, or 0 once it has stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The file that receives moto's output.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("moto.log")
    }

    /// The last lines of moto's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path(), LOG_TAIL_LINES)
    }

    /// Environment for a child process that uses the AWS SDK against this server.
    pub fn sdk_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", Self::REGION.to_owned()),
            ("AWS_DEFAULT_REGION", Self::REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID", Self::ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", Self::SECRET_ACCESS_KEY.to_owned()),
        ]
    }

    /// `prefix-PID-N`: a name no other test of this or another process uses.
    pub fn unique_name(prefix: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Creates secret `name` holding `value` (a JSON value is stored as its JSON text, as RDS
    /// secrets are); returns its ARN.
    pub fn create_secret(&self, name: &str, value: &(impl SecretText + ?Sized)) -> Result<String> {
        let reply = self.call(
            "secretsmanager.CreateSecret",
            &json!({ "Name": name, "SecretString": value.secret_text() }),
        )?;
        string_field(&reply, "ARN")
    }

    /// Stores a new current version of secret `id` (name or ARN), as a rotation does; returns
    /// the new version id.
    pub fn put_secret_value(&self, id: &str, value: &(impl SecretText + ?Sized)) -> Result<String> {
        let reply = self.call(
            "secretsmanager.PutSecretValue",
            &json!({ "SecretId": id, "SecretString": value.secret_text() }),
        )?;
        string_field(&reply, "VersionId")
    }

    /// The current `SecretString` of secret `id`.
    pub fn get_secret_value(&self, id: &str) -> Result<String> {
        let reply = self.call("secretsmanager.GetSecretValue", &json!({ "SecretId": id }))?;
        string_field(&reply, "SecretString")
    }

    /// Deletes secret `id` at once, without a recovery window.
    pub fn delete_secret(&self, id: &str) -> Result<()> {
        self.call(
            "secretsmanager.DeleteSecret",
            &json!({ "SecretId": id, "ForceDeleteWithoutRecovery": true }),
        )?;
        Ok(())
    }

    /// One call of an AWS JSON-protocol API (Secrets Manager, KMS, ...): `target` is the
    /// `X-Amz-Target` header, such as `secretsmanager.CreateSecret` or
    /// `TrentService.CreateKey`. An error reply fails with its `__type` and message.
    pub fn call(&self, target: &str, body: &Value) -> Result<Value> {
        let service = target
            .split('.')
            .next()
            .map(|s| match s {
                "TrentService" => "kms",
                other => other,
            })
            .unwrap_or("secretsmanager");
        let (status, reply) = post(self.port, target, service, &body.to_string())
            .with_context(|| format!("{target} to moto_server on {}", self.endpoint()))?;
        let json: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let kind = json
                .get("__type")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            let message = json
                .get("message")
                .or_else(|| json.get("Message"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&reply).into_owned());
            bail!("{target} failed with HTTP {status}: {kind}: {message}");
        }
        Ok(json)
    }

    fn recording_path(&self) -> PathBuf {
        self.dir.join("recording.jsonl")
    }

    /// Starts recording every request the server gets (its headers, method, URL and body),
    /// for [`Moto::recorded_requests`].
    pub fn start_recording(&self) -> Result<()> {
        let (status, _) = http_request(self.port, "POST", "/moto-api/recorder/start-recording")?;
        if status != 200 {
            bail!("moto refused to start recording: HTTP {status}");
        }
        Ok(())
    }

    /// The requests recorded since [`Moto::start_recording`], one JSON object each.
    pub fn recorded_requests(&self) -> Result<Vec<Value>> {
        let text = match std::fs::read_to_string(self.recording_path()) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).context("cannot read moto's recording"),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).context("a line of moto's recording"))
            .collect()
    }

    /// Stops the server (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            register(&self.dir, None);
            let _ = stop_child(&mut child, STOP_GRACE);
        }
    }

    fn launch(&mut self, program: &Path, port: u16) -> Result<(), LaunchError> {
        let log_path = self.log_path();
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // Where requests go once recording is started (off until then).
            .env("MOTO_RECORDER_FILEPATH", self.recording_path())
            // Flush output at once, so a start-up error is in the log when we read it.
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let child = spawn_logged(cmd, log)?;
        register(&self.dir, Some(child.id()));
        self.child = Some(child);
        self.port = port;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), LaunchError> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let child = self.child.as_mut().expect("launch sets the child");
            if let Some(status) = child.try_wait().context("cannot poll moto_server")? {
                self.child = None;
                register(&self.dir, None);
                let port_taken = ["Address already in use", "address already in use"];
                return Err(exited_at_start(
                    "moto_server",
                    status,
                    &self.log_path(),
                    &port_taken,
                    LOG_TAIL_LINES,
                ));
            }
            // A real API answer proves it is moto, not some stranger on the port.
            if let Ok((200, _)) = post(
                self.port,
                "secretsmanager.ListSecrets",
                "secretsmanager",
                "{}",
            ) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(anyhow!(
                    "moto_server did not answer on port {} within {START_DEADLINE:?}; its log \
                     ends with:\n{}",
                    self.port,
                    self.log_tail()
                )
                .into());
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        unregister(&self.dir);
    }
}

/// Text a secret can hold: a string as it is, a JSON value as its JSON text.
pub trait SecretText {
    /// The `SecretString` to store.
    fn secret_text(&self) -> String;
}

impl SecretText for str {
    fn secret_text(&self) -> String {
        self.to_owned()
    }
}

impl SecretText for String {
    fn secret_text(&self) -> String {
        self.clone()
    }
}

impl SecretText for Value {
    fn secret_text(&self) -> String {
        self.to_string()
    }
}

/// A command installed from PyPI (`moto_server`, `cargo-lambda`): on `PATH`, in `/usr/sbin`
/// or `/usr/bin`, or in the virtualenv that scripts/setup.sh uses when pip refuses a system
/// Python (`${SLUICE_CACHE:-$HOME/.cache/sluice}/venv/bin`). The error names `install`.
pub fn find_pypi_program(name: &str, install: &str) -> Result<PathBuf> {
    find_program(name, install).or_else(|e| {
        let cache = std::env::var_os("SLUICE_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/sluice"))
            });
        cache
            .map(|cache| cache.join("venv/bin").join(name))
            .filter(|path| path.is_file())
            .ok_or(e)
    })
}

fn string_field(reply: &Value, name: &str) -> Result<String> {
    reply
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("moto's reply has no `{name}`: {reply}"))
}

/// POST / with an AWS JSON 1.1 body; returns the status and the body.
fn post(port: u16, target: &str, service: &str, body: &str) -> io::Result<(u16, Vec<u8>)> {
    // moto takes the region from the credential scope; the signature is not checked.
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={key}/20240101/{region}/{service}/aws4_request, \
         SignedHeaders=content-type;host;x-amz-target, Signature=0",
        key = Moto::ACCESS_KEY_ID,
        region = Moto::REGION,
    );
    http_post(
        port,
        &[
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", target),
            ("Authorization", &authorization),
            ("X-Amz-Date", "20240101T000000Z"),
        ],
        body.as_bytes(),
    )
}

/// `method path` to moto on `port` without a body (its own `/moto-api/` endpoints).
pub(crate) fn http_request(port: u16, method: &str, path: &str) -> io::Result<(u16, Vec<u8>)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let request =
        format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    parse_reply(&reply)
}

/// POST / to moto on `port` with `headers` (beside Host, Content-Length and Connection) and
/// `body`; returns the status and the body. HTTP/1.0, so the reply is never chunked and ends
/// when the server closes the connection.
pub(crate) fn http_post(
    port: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut request = format!("POST / HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    parse_reply(&reply)
}

/// Splits an HTTP reply into its status and body (de-chunking the body if needed).
fn parse_reply(reply: &[u8]) -> io::Result<(u16, Vec<u8>)> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    let end = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of HTTP headers"))?;
    let head = String::from_utf8_lossy(&reply[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no HTTP status"))?;
    let body = &reply[end + 4..];
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("truncated chunk size"))?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("bad chunk size"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if rest.len() < size + 2 {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_rotate() {
        let moto = Moto::shared();
        let name = Moto::unique_name("testkit");
        let arn = moto
            .create_secret(&name, &json!({"username": "u", "password": "p1"}))
            .unwrap();
        assert!(
            arn.starts_with("arn:aws:secretsmanager:us-east-1:"),
            "{arn}"
        );
        assert!(arn.contains(&name), "{arn}");
        let value: Value = serde_json::from_str(&moto.get_secret_value(&arn).unwrap()).unwrap();
        assert_eq!(value["password"], "p1");

        moto.put_secret_value(&name, r#"{"username":"u","password":"p2"}"#)
            .unwrap();
        let value: Value = serde_json::from_str(&moto.get_secret_value(&name).unwrap()).unwrap();
        assert_eq!(value["password"], "p2");

        let err = moto.create_secret(&name, "again").unwrap_err().to_string();
        assert!(err.contains("ResourceExistsException"), "{err}");
        moto.delete_secret(&arn).unwrap();
        let err = moto.get_secret_value(&arn).unwrap_err().to_string();
        assert!(err.contains("ResourceNotFoundException"), "{err}");
    }

    #[test]
    fn own_server_stops_on_drop() {
        let moto = Moto::start().unwrap();
        let (pid, dir, port) = (moto.pid(), moto.dir.clone(), moto.port());
        assert_ne!(port, Moto::shared().port());
        assert!(crate::process::pid_running(pid));
        drop(moto);
        assert!(!crate::process::pid_running(pid));
        assert!(!dir.exists());
    }

    #[test]
    fn missing_pypi_program_names_install_command() {
        let err = find_pypi_program("no-such-pypi-tool", "pip install nothing").unwrap_err();
        assert!(err.to_string().contains("pip install nothing"), "{err}");
    }

    #[test]
    fn chunked_replies_are_decoded() {
        let reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_reply(reply).unwrap(), (200, b"abcde".to_vec()));
        let reply = b"HTTP/1.0 400 BAD REQUEST\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_reply(reply).unwrap(), (400, b"{}".to_vec()));
        assert!(parse_reply(b"HTTP/1.0 200").is_err());
    }
}
