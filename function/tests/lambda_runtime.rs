//! End to end through the Lambda Runtime API: `cargo lambda watch` serves the real binary,
//! `cargo lambda invoke` sends it events, and the function reaches MariaDB through Sluice with
//! the secret from moto_server, or in IAM mode with a token its role credentials sign.

mod common;

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::{create_secret, db, iam_env, moto, schema, sluice};
use serde_json::{Value, json};
use sluice_function::{Customer, Response};
use sluice_testkit::moto::find_pypi_program;
use sluice_testkit::process::output_with_timeout;

const INSTALL: &str = "pip install cargo-lambda ziglang (scripts/test.sh installs them)";
/// How long the watcher may take to listen for invocations.
const LISTEN_DEADLINE: Duration = Duration::from_secs(60);
/// The first invocation builds the function with `cargo run`; later ones take milliseconds.
const FIRST_INVOKE_LIMIT: Duration = Duration::from_secs(15 * 60);
const INVOKE_LIMIT: Duration = Duration::from_secs(60);
/// How long the watcher and the function may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// `cargo lambda watch` in its own process group; the whole group is stopped on drop.
struct Watcher {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Watcher {
    fn start(cargo_lambda: &Path, env_file: &Path, log: PathBuf) -> Watcher {
        let mut last_error = String::new();
        // The port may be taken between choosing and binding it: try a few.
        for _ in 0..5 {
            let port = sluice_testkit::free_port();
            let out = File::create(&log).expect("create the watcher's log");
            let mut cmd = Command::new(cargo_lambda);
            cmd.args(["lambda", "watch", "--ignore-changes", "--quiet"])
                .args(["--invoke-address", "127.0.0.1", "--invoke-port"])
                .arg(port.to_string())
                .arg("--env-file")
                .arg(env_file)
                .args(["--bin", "sluice-function"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stdin(std::process::Stdio::null())
                .stdout(out.try_clone().expect("duplicate the log file"))
                .stderr(out)
                // Its own group, so that stopping it also stops the function it runs.
                .process_group(0);
            let child = sluice_testkit::spawn_tied(cmd).expect("start cargo lambda watch");
            let mut watcher = Watcher {
                child,
                port,
                log: log.clone(),
            };
            match watcher.wait_listening() {
                Ok(()) => return watcher,
                Err(e) => last_error = e,
            }
        }
        panic!("cargo lambda watch did not start: {last_error}");
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + LISTEN_DEADLINE;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited ({status}):\n{}", self.log_text()));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no listener on {addr} within {LISTEN_DEADLINE:?}:\n{}",
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM to the group, up to [`STOP_GRACE`], then SIGKILL to what is left of it.
    fn stop(&mut self) -> bool {
        let group = -(self.child.id() as libc::pid_t);
        // SAFETY: plain kill(2) on the process group this test created.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; the group is ours even if its leader has exited.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
        exited
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// A private directory named after `name` with the function's environment file (values
/// quoted: session tokens hold characters an unquoted dotenv value may not), and a watcher
/// serving the function with it.
fn watch_with_env(cargo_lambda: &Path, name: &str, env: &[(&str, String)]) -> (PathBuf, Watcher) {
    let dir = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let env_file = dir.join("function.env");
    let env_text: String = env.iter().map(|(k, v)| format!("{k}='{v}'\n")).collect();
    std::fs::write(&env_file, env_text).unwrap();
    let watcher = Watcher::start(cargo_lambda, &env_file, dir.join("watch.log"));
    (dir, watcher)
}

/// The first invocation (which builds the function), parsed; fails with the watcher's log.
async fn first_invocation(cargo_lambda: &Path, watcher: &Watcher, event: &Value) -> Response {
    let first = invoke(cargo_lambda, watcher.port, event, FIRST_INVOKE_LIMIT).await;
    assert!(
        first.status.success(),
        "{}\nwatcher:\n{}",
        text(&first),
        watcher.log_text()
    );
    serde_json::from_slice(&first.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&first)))
}

/// `cargo lambda invoke` of the watcher's function with `payload`, as JSON output.
async fn invoke(cargo_lambda: &Path, port: u16, payload: &Value, limit: Duration) -> Output {
    let mut cmd = Command::new(cargo_lambda);
    cmd.args([
        "lambda",
        "invoke",
        "--invoke-address",
        "127.0.0.1",
        "--invoke-port",
    ])
    .arg(port.to_string())
    .arg("--data-ascii")
    .arg(payload.to_string())
    .args(["--output-format", "json", "sluice-function"]);
    tokio::task::spawn_blocking(move || output_with_timeout(cmd, None, limit))
        .await
        .expect("invoke thread")
        .expect("cargo lambda invoke")
}

fn text(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_through_the_lambda_runtime_api() {
    let cargo_lambda =
        find_pypi_program("cargo-lambda", INSTALL).unwrap_or_else(|e| panic!("{e:#}"));
    let schema = schema("fn_e2e");
    let arn = create_secret(db().app_password(), &schema);

    let mut env = vec![
        ("SECRET_ARN", arn.clone()),
        ("PROXY_ENDPOINT", sluice().addr().to_string()),
        ("AWS_LAMBDA_LOG_LEVEL", "info".to_owned()),
    ];
    env.extend(moto().sdk_env());
    let (dir, mut watcher) = watch_with_env(&cargo_lambda, "fn-e2e", &env);

    let event = json!({"customers": [{"id": 10, "name": "Ada"}, {"id": 11, "name": "Grace"}]});
    let response = first_invocation(&cargo_lambda, &watcher, &event).await;
    let expected = Response {
        database: schema.clone(),
        upserted: 2,
        customers: vec![
            Customer {
                id: 10,
                name: Some("Ada".to_owned()),
            },
            Customer {
                id: 11,
                name: Some("Grace".to_owned()),
            },
        ],
    };
    assert_eq!(response, expected);

    // The same instance again: idempotent, and the secret is not read again.
    let second = invoke(&cargo_lambda, watcher.port, &event, INVOKE_LIMIT).await;
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(
        serde_json::from_slice::<Response>(&second.stdout).unwrap(),
        expected
    );
    assert_eq!(common::table(&schema), "10\tAda\n11\tGrace\n");

    // A bad event comes back as a Lambda error naming the field.
    let bad = invoke(
        &cargo_lambda,
        watcher.port,
        &json!({"customers": [{"id": "ten", "name": "Ada"}]}),
        INVOKE_LIMIT,
    )
    .await;
    assert!(!bad.status.success(), "{}", text(&bad));
    let bad_text = text(&bad);
    assert!(bad_text.contains("BadEvent"), "{bad_text}");
    assert!(bad_text.contains("customers[0].id"), "{bad_text}");

    let log = watcher.log_text();
    assert!(
        watcher.stop(),
        "cargo lambda watch did not stop on SIGTERM:\n{log}"
    );
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    let connected: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "SUCCESS: connection to the database proxy succeeded")
        .collect();
    assert!(!connected.is_empty(), "{log}");
    let results: Vec<&Value> = lines.iter().filter(|l| l.get("rows").is_some()).collect();
    assert_eq!(results.len(), 2, "{log}");
    assert!(
        results.iter().all(|l| l["span"]["request_id"].is_string()),
        "results carry the request id:\n{log}"
    );
    assert_eq!(
        lines.iter().filter(|l| l["message"] == "init done").count(),
        1,
        "one init for all invocations:\n{log}"
    );
    assert!(
        !log.contains(db().app_password()),
        "the password leaked into the log"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_mode_through_the_lambda_runtime_api() {
    let cargo_lambda =
        find_pypi_program("cargo-lambda", INSTALL).unwrap_or_else(|e| panic!("{e:#}"));
    let aws = sluice_testkit::IamMoto::shared();
    let role = aws
        .create_role(&sluice_testkit::Moto::unique_name("fn-iam-runtime"))
        .unwrap();
    let keys = aws.assume_role(&role, "runtime").unwrap();
    let schema = schema("fn_iam_e2e");

    // The execution role's credentials, as Lambda provides them; no SECRET_ARN.
    let mut env = iam_env(&schema);
    env.extend(keys.env());
    env.push(("AWS_LAMBDA_LOG_LEVEL", "info".to_owned()));
    let (dir, mut watcher) = watch_with_env(&cargo_lambda, "fn-iam", &env);
    let event = json!({"customers": [{"id": 7, "name": "Hedy"}]});
    let response = first_invocation(&cargo_lambda, &watcher, &event).await;
    assert_eq!(response.database, schema);
    assert_eq!(
        response.customers,
        vec![Customer {
            id: 7,
            name: Some("Hedy".to_owned()),
        }]
    );
    assert_eq!(common::table(&schema), "7\tHedy\n");
    let second = invoke(&cargo_lambda, watcher.port, &event, INVOKE_LIMIT).await;
    assert!(second.status.success(), "{}", text(&second));

    let log = watcher.log_text();
    assert!(watcher.stop(), "cargo lambda watch did not stop:\n{log}");
    assert!(
        log.contains("SUCCESS: connection to the database proxy succeeded"),
        "{log}"
    );
    // No secret was read, and the token never reached the log.
    assert!(!log.contains("GetSecretValue"), "{log}");
    assert!(
        !log.contains("sluice-iam-v1."),
        "the token leaked into the log"
    );
    assert!(
        aws.sts_calls_signed_by(&keys.access_key_id).unwrap() >= 1,
        "Sluice checked the role's token with STS"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
