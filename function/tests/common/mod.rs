//! Shared by the function's tests: a real MariaDB behind a real Sluice, secrets in moto_server.

#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde_json::{Value, json};
use sluice_function::{Config, SecretsClient};
use sluice_testkit::{IamMoto, MariaDb, Moto, Pki, SluiceOptions, SluiceProcess};

/// Backend connections Sluice may open: the burst runs against this bound.
pub const SLUICE_MAX_CONNECTIONS: usize = 10;

/// The sandbox MariaDB shared by this test process.
pub fn db() -> &'static MariaDb {
    MariaDb::shared()
}

/// The moto_server shared by this test process.
pub fn moto() -> &'static Moto {
    Moto::shared()
}

/// A Sluice in front of [`db`], shared by this test process, with a backend pool of
/// [`SLUICE_MAX_CONNECTIONS`].
pub fn sluice() -> &'static SluiceProcess {
    static SLUICE: OnceLock<Result<SluiceProcess, String>> = OnceLock::new();
    SLUICE
        .get_or_init(|| {
            SluiceProcess::start(SluiceOptions {
                max_connections: SLUICE_MAX_CONNECTIONS,
                // Bursts queue for the backend pool; allow them a generous wait.
                backend_extra_toml: "borrow_timeout = \"30s\"".to_owned(),
                ..SluiceOptions::for_mariadb(db())
            })
            .map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("cannot start sluice: {e}"))
}

/// The audience of [`iam_sluice`].
pub const AUDIENCE: &str = "sluice-function-test";

/// A Sluice in front of [`db`] that takes IAM logins checked by [`IamMoto::shared`] (client TLS
/// required, certificate from [`pki`]): roles named `fn-iam-*` log in as `app`, whose password
/// Sluice keeps for its backend logins. Shared by this test process.
pub fn iam_sluice() -> &'static SluiceProcess {
    static SLUICE: OnceLock<Result<SluiceProcess, String>> = OnceLock::new();
    SLUICE
        .get_or_init(|| {
            let aws = IamMoto::shared();
            let pki = pki();
            let extra = format!(
                "[tls]\nmode = \"required\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
                 [iam]\naudience = \"{AUDIENCE}\"\nsts_endpoint = \"{sts}\"\n\
                 sts_region = \"{region}\"\n\
                 [[iam.identities]]\narn = \"arn:aws:iam::{account}:role/fn-iam-*\"\n\
                 database_user = \"app\"\n",
                cert = pki.path("server.pem").display(),
                key = pki.path("server-key.pem").display(),
                sts = aws.endpoint(),
                region = aws.region(),
                account = IamMoto::ACCOUNT,
            );
            SluiceProcess::start(SluiceOptions {
                max_connections: SLUICE_MAX_CONNECTIONS,
                backend_extra_toml: "borrow_timeout = \"30s\"".to_owned(),
                extra_toml: extra,
                ..SluiceOptions::for_mariadb(db())
            })
            .map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("cannot start sluice: {e}"))
}

/// Test certificates for [`iam_sluice`], kept for the whole process.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki::generate().expect("test certificates"))
}

/// The environment of a function instance in IAM mode, logging in through [`iam_sluice`] to
/// database `dbname` (the role's credentials come separately).
pub fn iam_env(dbname: &str) -> Vec<(&'static str, String)> {
    let aws = IamMoto::shared();
    vec![
        ("AUTH_MODE", "iam".to_owned()),
        ("PROXY_ENDPOINT", iam_sluice().addr().to_string()),
        ("DB_USER", "app".to_owned()),
        ("DB_NAME", dbname.to_owned()),
        ("SLUICE_AUDIENCE", AUDIENCE.to_owned()),
        ("DB_TLS", "required".to_owned()),
        ("DB_TLS_CA_FILE", pki().path("ca.pem").display().to_string()),
        ("AWS_ENDPOINT_URL", aws.endpoint()),
        ("AWS_REGION", aws.region().to_owned()),
    ]
}

/// A fresh, empty database on [`db`] for one test.
pub fn schema(prefix: &str) -> String {
    let name = Moto::unique_name(prefix).replace('-', "_");
    db().sql(&format!("CREATE DATABASE `{name}`"))
        .expect("create schema");
    name
}

/// An RDS-format secret for `app` with `password`, pointing at `proxy`, database `dbname`.
pub fn rds_secret(password: &str, proxy: SocketAddr, dbname: &str) -> Value {
    json!({
        "username": "app",
        "password": password,
        "engine": "mariadb",
        "host": proxy.ip().to_string(),
        "port": proxy.port(),
        "dbname": dbname,
    })
}

/// A Secrets Manager client for [`moto`], as a function instance would build at init.
pub fn secrets_client() -> SecretsClient {
    SecretsClient::for_endpoint(
        &moto().endpoint(),
        Moto::REGION,
        Moto::ACCESS_KEY_ID,
        Moto::SECRET_ACCESS_KEY,
    )
}

/// A new secret in [`moto`] for `app` with `password`, pointing at Sluice and `dbname`;
/// returns its ARN.
pub fn create_secret(password: &str, dbname: &str) -> String {
    moto()
        .create_secret(
            &Moto::unique_name("sluice-fn"),
            &rds_secret(password, sluice().addr(), dbname),
        )
        .expect("create secret")
}

/// The function's configuration for secret `arn` and the proxy at `proxy`.
pub fn config(arn: &str, proxy: SocketAddr) -> Config {
    Config::new(arn, proxy.ip().to_string(), proxy.port())
}

/// `SELECT CustID, Name FROM schema.Customer ORDER BY CustID`, read directly from MariaDB.
pub fn table(schema: &str) -> String {
    db().sql(&format!(
        "SELECT CustID, Name FROM `{schema}`.Customer ORDER BY CustID"
    ))
    .expect("read Customer")
}

/// Log lines collected from the function's JSON log format.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Everything logged so far, one JSON object per line.
    pub fn lines(&self) -> Vec<Value> {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    /// The raw text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}
