//! TLS on both sides of Sluice: clients (mysql_async, PyMySQL, the `mariadb` CLI) over TLS 1.2
//! and 1.3, `tls.mode = required` refusing plain clients with ERR 3159, a certificate swapped on
//! disk picked up without a restart, caching_sha2 full authentication (TLS and RSA), client
//! certificates (mutual TLS), and `backend.tls` in each mode against a MariaDB with TLS. Certificates come from rcgen
//! ([`sluice_testkit::Pki`]).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{TestProxy, config_for};
use mysql_async::prelude::*;
use mysql_async::{ClientIdentity, Conn, Opts, OptsBuilder, SslOpts};
use serde_json::Value;
use sluice::Config;
use sluice::config::{AuthPluginName, BackendTlsMode, FullAuth, TlsMode};
use sluice_testkit::{MariaDb, MariaDbOptions, Pki, mariadb_cli_async, pymysql_async};

/// Limit for anything a test waits on.
const WAIT: Duration = Duration::from_secs(30);

/// Sluice in front of `db` with client TLS in `mode`, the certificate from `pki`.
fn tls_config(db: &MariaDb, pki: &Pki, mode: TlsMode) -> Config {
    let mut c = config_for(db, 4);
    c.tls.mode = mode;
    c.tls.cert_file = pki.path("server.pem").display().to_string();
    c.tls.key_file = pki.path("server-key.pem").display().to_string();
    c.tls.reload_interval = Duration::from_millis(50);
    c.validate().expect("valid TLS configuration");
    c
}

/// mysql_async options over TLS, trusting `ca` only and checking the name (127.0.0.1).
fn tls_opts(proxy: &TestProxy, user: &str, password: &str, ca: &Path) -> OptsBuilder {
    proxy
        .opts(user, password, None)
        .ssl_opts(SslOpts::default().with_root_certs(vec![ca.to_path_buf().into()]))
}

async fn connect(opts: OptsBuilder) -> Result<Conn, mysql_async::Error> {
    tokio::time::timeout(WAIT, Conn::new(Opts::from(opts)))
        .await
        .expect("login did not finish in time")
}

async fn answer(conn: &mut Conn) -> i64 {
    conn.query_first("SELECT 6 * 7").await.unwrap().unwrap()
}

fn server_error(result: Result<Conn, mysql_async::Error>) -> mysql_async::ServerError {
    match result {
        Err(mysql_async::Error::Server(e)) => e,
        Err(other) => panic!("expected a server error, got {other:?}"),
        Ok(_) => panic!("expected a server error, got a connection"),
    }
}

/// Runs tests/clients/pymysql_tls.py and parses its JSON line.
async fn pymysql_login(proxy: &TestProxy, password: &str, ca: &str, max: Option<&str>) -> Value {
    let port = proxy.addr.port().to_string();
    let mut args = vec!["127.0.0.1", port.as_str(), "app", password, ca];
    args.extend(max);
    let out = pymysql_async("tests/clients/pymysql_tls.py", &args, &[])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "PyMySQL failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("PyMySQL's JSON line")
}

/// The `mariadb` CLI over TLS, checking the certificate against `ca`.
async fn cli_tls(proxy: &TestProxy, password: &str, ca: &Path, sql: &str) -> std::process::Output {
    let ca_arg = format!("--ssl-ca={}", ca.display());
    mariadb_cli_async(
        proxy.addr,
        "app",
        password,
        None,
        &["--ssl", &ca_arg, "--ssl-verify-server-cert", "-e", sql],
        None,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_log_in_over_tls_1_2_and_1_3() {
    let db = MariaDb::shared();
    let pki = Pki::generate().unwrap();
    let proxy = TestProxy::start_with(db, tls_config(db, &pki, TlsMode::Preferred)).await;
    let ca = pki.path("ca.pem");
    let pw = proxy.app_password.clone();

    let mut conn = connect(tls_opts(&proxy, "app", &pw, &ca)).await.unwrap();
    assert_eq!(answer(&mut conn).await, 42);
    conn.disconnect().await.unwrap();
    assert_eq!(proxy.snapshot().client_tls_logins, 1);

    let ca_text = ca.display().to_string();
    let v13 = pymysql_login(&proxy, &pw, &ca_text, None).await;
    assert_eq!(v13["tls"], "TLSv1.3", "{v13}");
    assert_eq!(v13["answer"], 42);
    let v12 = pymysql_login(&proxy, &pw, &ca_text, Some("1.2")).await;
    assert_eq!(v12["tls"], "TLSv1.2", "{v12}");
    assert_eq!(v12["answer"], 42);
    // `preferred` still lets plain clients in.
    let plain = pymysql_login(&proxy, &pw, "plain", None).await;
    assert_eq!(plain["tls"], Value::Null, "{plain}");
    assert_eq!(plain["answer"], 42);

    let out = cli_tls(&proxy, &pw, &ca, "status; SELECT 6 * 7 AS answer").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Cipher in use is"), "{stdout}");
    assert!(stdout.contains("42"), "{stdout}");
    assert_eq!(proxy.snapshot().client_tls_logins, 4);
    proxy.stop().await;
}

/// `tls.client_ca_file`: clients with a certificate from that CA log in; without one they get
/// ERR 1045 saying a certificate is needed; one from another CA fails the TLS handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_with_a_client_ca() {
    let db = MariaDb::shared();
    let pki = Pki::generate().unwrap();
    let mut config = tls_config(db, &pki, TlsMode::Required);
    config.tls.client_ca_file = pki.path("ca.pem").display().to_string();
    config.validate().expect("valid mutual TLS configuration");
    let proxy = TestProxy::start_with(db, config).await;
    let ca = pki.path("ca.pem");
    let pw = proxy.app_password.clone();
    let with_identity = |cert: &str, key: &str| {
        proxy.opts("app", &pw, None).ssl_opts(
            SslOpts::default()
                .with_root_certs(vec![ca.clone().into()])
                .with_client_identity(Some(ClientIdentity::new(
                    pki.path(cert).into(),
                    pki.path(key).into(),
                ))),
        )
    };

    let mut conn = connect(with_identity("client-cert.pem", "client-key.pem"))
        .await
        .unwrap();
    assert_eq!(answer(&mut conn).await, 42);
    conn.disconnect().await.unwrap();

    let refused = server_error(connect(tls_opts(&proxy, "app", &pw, &ca)).await);
    assert_eq!(refused.code, 1045, "{refused:?}");
    assert!(
        refused
            .message
            .contains("requires a TLS client certificate"),
        "{refused:?}"
    );

    match connect(with_identity(
        "other-client-cert.pem",
        "other-client-key.pem",
    ))
    .await
    {
        Ok(_) => panic!("a certificate from another CA was accepted"),
        Err(mysql_async::Error::Server(e)) => panic!("expected a TLS failure, got {e:?}"),
        Err(_) => {}
    }

    // The mariadb CLI, with and without its certificate.
    let cert = format!("--ssl-cert={}", pki.path("client-cert.pem").display());
    let key = format!("--ssl-key={}", pki.path("client-key.pem").display());
    let ca_arg = format!("--ssl-ca={}", ca.display());
    let out = mariadb_cli_async(
        proxy.addr,
        "app",
        &pw,
        None,
        &[
            "--ssl",
            &ca_arg,
            &cert,
            &key,
            "-e",
            "SELECT 6 * 7 AS answer",
        ],
        None,
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("42"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli_tls(&proxy, &pw, &ca, "SELECT 1").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "logged in without a certificate");
    assert!(
        stderr.contains("1045") && stderr.contains("requires a TLS client certificate"),
        "{stderr}"
    );
    // Only the two clients with a certificate logged in.
    assert_eq!(proxy.snapshot().client_tls_logins, 2);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_refuses_plain_clients_with_3159() {
    let db = MariaDb::shared();
    let pki = Pki::generate().unwrap();
    let proxy = TestProxy::start_with(db, tls_config(db, &pki, TlsMode::Required)).await;
    let pw = proxy.app_password.clone();

    let e = server_error(connect(proxy.opts("app", &pw, None)).await);
    assert_eq!(e.code, 3159, "{e:?}");
    assert!(e.message.contains("insecure transport"), "{e:?}");

    let plain = pymysql_login(&proxy, &pw, "plain", None).await;
    assert_eq!(plain["error"], 3159, "{plain}");

    let out = mariadb_cli_async(proxy.addr, "app", &pw, None, &["-e", "SELECT 1"], None)
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3159"), "{stderr}");

    // TLS clients are served, and the refusals left the process untouched.
    let mut conn = connect(tls_opts(&proxy, "app", &pw, &pki.path("ca.pem")))
        .await
        .unwrap();
    assert_eq!(answer(&mut conn).await, 42);
    conn.disconnect().await.unwrap();
    let out = cli_tls(&proxy, &pw, &pki.path("ca.pem"), "SELECT 6 * 7").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    proxy.stop().await;
}

/// Writes `from` over `to` atomically, so a reload never sees half a file.
fn replace_file(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_certificate_is_used_without_a_restart() {
    let db = MariaDb::shared();
    let pki = Pki::generate().unwrap();
    // The configuration names copies, so the test can overwrite them.
    let (cert, key) = (pki.dir().join("live.pem"), pki.dir().join("live-key.pem"));
    std::fs::copy(pki.path("server.pem"), &cert).unwrap();
    std::fs::copy(pki.path("server-key.pem"), &key).unwrap();
    let mut config = tls_config(db, &pki, TlsMode::Required);
    config.tls.cert_file = cert.display().to_string();
    config.tls.key_file = key.display().to_string();
    let proxy = TestProxy::start_with(db, config).await;
    let pw = proxy.app_password.clone();
    let (ca, other_ca) = (pki.path("ca.pem"), pki.path("other-ca.pem"));

    let mut before = connect(tls_opts(&proxy, "app", &pw, &ca)).await.unwrap();
    let refused = connect(tls_opts(&proxy, "app", &pw, &other_ca)).await;
    assert!(
        format!("{refused:?}").contains("UnknownIssuer"),
        "{refused:?}"
    );

    // Key first, then certificate: in between, the pair does not match and is not used.
    replace_file(&pki.path("other-server-key.pem"), &key);
    replace_file(&pki.path("other-server.pem"), &cert);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut after = loop {
        match connect(tls_opts(&proxy, "app", &pw, &other_ca)).await {
            Ok(conn) => break conn,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert!(format!("{e:?}").contains("UnknownIssuer"), "{e:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the new certificate was not picked up within {WAIT:?}: {e:?}"),
        }
    };
    assert_eq!(answer(&mut after).await, 42);
    let old = connect(tls_opts(&proxy, "app", &pw, &ca)).await;
    assert!(format!("{old:?}").contains("UnknownIssuer"), "{old:?}");
    // The session opened under the old certificate carries on.
    assert_eq!(answer(&mut before).await, 42);
    before.disconnect().await.unwrap();
    after.disconnect().await.unwrap();
    proxy.stop().await;
}

/// Sluice whose users log in with caching_sha2 and send their password in full once.
fn sha2_config(db: &MariaDb, pki: &Pki) -> Config {
    let mut c = tls_config(db, pki, TlsMode::Preferred);
    for u in &mut c.users {
        u.auth_plugin = AuthPluginName::CachingSha2Password;
    }
    c.caching_sha2_full_auth = FullAuth::FirstLogin;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_sha2_full_authentication_then_fast() {
    let db = MariaDb::shared();
    let pki = Pki::generate().unwrap();
    let ca = pki.path("ca.pem");

    // mysql_async over TLS: the password goes in clear inside TLS, once.
    let proxy = TestProxy::start_with(db, sha2_config(db, &pki)).await;
    let pw = proxy.app_password.clone();
    let e = server_error(connect(tls_opts(&proxy, "app", "wrong", &ca)).await);
    assert_eq!(e.code, 1045, "{e:?}");
    assert_eq!(proxy.snapshot().client_full_auths, 1);
    for _ in 0..2 {
        let mut conn = connect(tls_opts(&proxy, "app", &pw, &ca)).await.unwrap();
        assert_eq!(answer(&mut conn).await, 42);
        conn.disconnect().await.unwrap();
    }
    let s = proxy.snapshot();
    assert_eq!(
        (s.client_full_auths, s.client_tls_logins),
        (2, 2),
        "one full authentication (plus the wrong password's), then the fast path"
    );
    // Without TLS the client fetches Sluice's RSA key and sends the password encrypted.
    let other_pw = proxy.other_password.clone();
    for _ in 0..2 {
        let mut conn = connect(proxy.opts("other", &other_pw, None)).await.unwrap();
        assert_eq!(answer(&mut conn).await, 42);
        conn.disconnect().await.unwrap();
    }
    assert_eq!(proxy.snapshot().client_full_auths, 3);
    let e = server_error(connect(proxy.opts("other", "wrong", None)).await);
    assert_eq!(e.code, 1045, "{e:?}");
    proxy.stop().await;

    // PyMySQL and the CLI, each against a fresh Sluice (an empty cache).
    let proxy = TestProxy::start_with(db, sha2_config(db, &pki)).await;
    let ca_text = ca.display().to_string();
    for _ in 0..2 {
        let v = pymysql_login(&proxy, &pw, &ca_text, None).await;
        assert_eq!(
            (&v["tls"], &v["answer"]),
            (&"TLSv1.3".into(), &42.into()),
            "{v}"
        );
    }
    assert_eq!(proxy.snapshot().client_full_auths, 1);
    proxy.stop().await;
    let proxy = TestProxy::start_with(db, sha2_config(db, &pki)).await;
    for _ in 0..2 {
        let out = cli_tls(&proxy, &pw, &ca, "SELECT 6 * 7").await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("42"));
    }
    assert_eq!(proxy.snapshot().client_full_auths, 1);
    proxy.stop().await;
}

/// A MariaDB serving TLS with the test certificate, and a user that may only log in over TLS.
fn tls_mariadb(pki: &Pki) -> MariaDb {
    let arg = |name: &str, file: &str| format!("--{name}={}", pki.path(file).display());
    let db = MariaDb::start_with(MariaDbOptions {
        extra_args: vec![
            arg("ssl-cert", "server.pem"),
            arg("ssl-key", "server-key.pem"),
        ],
        ..MariaDbOptions::default()
    })
    .unwrap();
    db.sql("ALTER USER 'app'@'%' REQUIRE SSL").unwrap();
    db
}

/// Sluice in front of `db` with `backend.tls` set as given.
fn backend_tls_config(
    db: &MariaDb,
    mode: BackendTlsMode,
    ca: Option<&Path>,
    server_name: &str,
) -> Config {
    let mut c = config_for(db, 2);
    c.backend.tls = mode;
    c.backend.tls_ca_file = ca.map(|p| p.display().to_string()).unwrap_or_default();
    c.backend.tls_server_name = server_name.to_string();
    c.backend.borrow_timeout = Duration::from_secs(2);
    c.backend.connect_timeout = Duration::from_secs(2);
    c.validate().expect("valid backend TLS configuration");
    c
}

/// The TLS version of the backend connection a query ran on ("" without TLS), or the error.
async fn backend_tls_version(db: &MariaDb, config: Config) -> Result<String, String> {
    let proxy = TestProxy::start_with(db, config).await;
    let result = async {
        // mysql_async asks a few variables while it logs in: that needs the backend already.
        let mut conn = connect(proxy.opts("app", &proxy.app_password, None))
            .await
            .map_err(|e| e.to_string())?;
        let row: Result<Option<(String, String)>, _> = conn
            .query_first("SHOW SESSION STATUS LIKE 'Ssl_version'")
            .await;
        let _ = conn.disconnect().await;
        row.map(|r| r.map(|(_, v)| v).unwrap_or_default())
            .map_err(|e| e.to_string())
    }
    .await;
    proxy.stop().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_modes_against_a_tls_mariadb() {
    let pki = Pki::generate().unwrap();
    let db = tls_mariadb(&pki);
    let ca = pki.path("ca.pem");
    let other = pki.path("other-ca.pem");
    use BackendTlsMode::*;

    // `app` requires SSL on the server: each success below was encrypted, as it reports.
    for (mode, ca, name) in [
        (VerifyIdentity, Some(ca.as_path()), ""),
        (VerifyCa, Some(ca.as_path()), "db.invalid"),
        (Preferred, None, ""),
    ] {
        let v = backend_tls_version(&db, backend_tls_config(&db, mode, ca, name)).await;
        assert!(
            v.as_deref().is_ok_and(|v| v.starts_with("TLSv1.")),
            "{mode:?}: {v:?}"
        );
    }
    let v = backend_tls_version(&db, backend_tls_config(&db, Disabled, None, "")).await;
    let err = v.unwrap_err();
    assert!(err.contains("Access denied"), "{err}");

    // Refusals name the reason: an unknown CA, a name the certificate does not carry.
    let v = backend_tls_version(&db, backend_tls_config(&db, VerifyCa, Some(&other), "")).await;
    let err = v.unwrap_err();
    assert!(
        err.contains("9501") && err.contains("UnknownIssuer"),
        "{err}"
    );
    let config = backend_tls_config(&db, VerifyIdentity, Some(&ca), "db.invalid");
    let err = backend_tls_version(&db, config).await.unwrap_err();
    assert!(err.contains("not valid for name \"db.invalid\""), "{err}");

    // A server without TLS is refused under verify-*, used in plain text under preferred.
    let plain = MariaDb::shared();
    let config = backend_tls_config(plain, VerifyCa, Some(&ca), "");
    let err = backend_tls_version(plain, config).await.unwrap_err();
    assert!(err.contains("does not offer TLS"), "{err}");
    let config = backend_tls_config(plain, Preferred, None, "");
    assert_eq!(backend_tls_version(plain, config).await.unwrap(), "");
}

/// Logs in over TLS with a bare client that keeps `config` (and its session cache) across
/// connections; returns how the TLS handshake went.
async fn raw_tls_login(
    proxy: &TestProxy,
    config: &std::sync::Arc<rustls::ClientConfig>,
) -> rustls::HandshakeKind {
    try_raw_tls_login(proxy, config)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// As [`raw_tls_login`], with what went wrong as an error instead of a panic.
async fn try_raw_tls_login(
    proxy: &TestProxy,
    config: &std::sync::Arc<rustls::ClientConfig>,
) -> Result<rustls::HandshakeKind, String> {
    use sluice::protocol::packets::{HandshakeResponse, ssl_request};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let raw = common::raw::Raw::connect(proxy.addr).await;
    let scramble = raw.scramble();
    let mut raw = raw;
    let caps = common::raw::default_caps();
    raw.write(1, &ssl_request(caps, 1 << 24, 45)).await;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, raw.stream)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let auth =
        sluice::auth::client_response(b"mysql_native_password", &scramble, &proxy.app_password)
            .unwrap();
    let hello = HandshakeResponse {
        capabilities: caps | sluice::protocol::CapabilityFlags::CLIENT_SSL,
        max_packet_size: 1 << 24,
        collation: 45,
        user: b"app",
        auth_response: &auth,
        database: None,
        auth_plugin: b"mysql_native_password",
        connect_attributes: &[],
    }
    .encode();
    let mut out = sluice::protocol::frame_header(hello.len(), 2).to_vec();
    out.extend_from_slice(&hello);
    let io = |e: std::io::Error| format!("login over TLS: {e}");
    tls.write_all(&out).await.map_err(io)?;
    // Reading the reply also takes in the session tickets the server sent.
    let mut header = [0u8; 4];
    tls.read_exact(&mut header).await.map_err(io)?;
    let mut reply = vec![0u8; sluice::protocol::frame_len(&header)];
    tls.read_exact(&mut reply).await.map_err(io)?;
    if reply.as_slice().first() != Some(&0x00) {
        return Err(format!("login over TLS refused: {reply:?}"));
    }
    let kind = tls
        .get_ref()
        .1
        .handshake_kind()
        .ok_or("handshake not done")?;
    let _ = tls.shutdown().await;
    Ok(kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_resume() {
    let db = MariaDb::shared();
    let pki = Pki::generate().unwrap();
    let proxy = TestProxy::start_with(db, tls_config(db, &pki, TlsMode::Required)).await;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(pki.path("ca.pem")).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        );
        let first = raw_tls_login(&proxy, &config).await;
        assert_eq!(first, rustls::HandshakeKind::Full, "{version:?}");
        let second = raw_tls_login(&proxy, &config).await;
        assert_eq!(second, rustls::HandshakeKind::Resumed, "{version:?}");
    }
    proxy.stop().await;
}

/// With client certificates, a session resumes while the client CA bundle stays; after the
/// bundle changes, a session made under the old one does not let its client back in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_do_not_outlive_a_client_ca_change() {
    let db = MariaDb::shared();
    let pki = Pki::generate().unwrap();
    let mut config = tls_config(db, &pki, TlsMode::Required);
    config.tls.client_ca_file = pki.path("ca.pem").display().to_string();
    let proxy = TestProxy::start_with(db, config.clone()).await;
    let pem = |name: &str| std::fs::read(pki.path(name)).unwrap();
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem("ca.pem")) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem("client-cert.pem"))
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem("client-key.pem")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    );
    assert_eq!(
        raw_tls_login(&proxy, &client).await,
        rustls::HandshakeKind::Full
    );
    assert_eq!(
        raw_tls_login(&proxy, &client).await,
        rustls::HandshakeKind::Resumed
    );

    // Another CA: the client's certificate no longer qualifies, resumed or not.
    let mut next = config.clone();
    next.tls.client_ca_file = pki.path("other-ca.pem").display().to_string();
    let report = proxy.reload.apply(next);
    assert!(report.failed().is_empty(), "{report:?}");
    let refused = try_raw_tls_login(&proxy, &client).await;
    assert!(
        refused.is_err(),
        "logged in after the CA change: {refused:?}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asks_for_tls_then_sends_garbage_is_closed() {
    use sluice::protocol::packets::ssl_request;
    let db = MariaDb::shared();
    let pki = Pki::generate().unwrap();
    let proxy = TestProxy::start_with(db, tls_config(db, &pki, TlsMode::Required)).await;
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0][..],
    ] {
        let mut raw = common::raw::Raw::connect(proxy.addr).await;
        raw.write(1, &ssl_request(common::raw::default_caps(), 1 << 24, 45))
            .await;
        raw.write_bytes(junk).await;
        assert!(
            raw.closed().await,
            "{junk:?}: the connection must be closed"
        );
    }
    // Nothing else noticed.
    let mut conn = connect(tls_opts(
        &proxy,
        "app",
        &proxy.app_password,
        &pki.path("ca.pem"),
    ))
    .await
    .unwrap();
    assert_eq!(answer(&mut conn).await, 42);
    conn.disconnect().await.unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_switches_certificate_files_and_mode() {
    let db = MariaDb::shared();
    let pki = Pki::generate().unwrap();
    let config = tls_config(db, &pki, TlsMode::Preferred);
    let proxy = TestProxy::start_with(db, config.clone()).await;
    let pw = proxy.app_password.clone();
    let mut plain = connect(proxy.opts("app", &pw, None)).await.unwrap();

    // Other files and `required`: applied live, for new connections only.
    let mut next = config.clone();
    next.tls.mode = TlsMode::Required;
    next.tls.cert_file = pki.path("other-server.pem").display().to_string();
    next.tls.key_file = pki.path("other-server-key.pem").display().to_string();
    let report = proxy.reload.apply(next.clone());
    assert!(report.needs_restart().is_empty(), "{report:?}");
    assert!(report.applied().contains(&"tls.mode"), "{report:?}");
    let mut conn = connect(tls_opts(&proxy, "app", &pw, &pki.path("other-ca.pem")))
        .await
        .unwrap();
    assert_eq!(answer(&mut conn).await, 42);
    let e = server_error(connect(proxy.opts("app", &pw, None)).await);
    assert_eq!(e.code, 3159, "{e:?}");
    // The plain session from before carries on.
    assert_eq!(answer(&mut plain).await, 42);

    // Files that do not load leave the running certificate in place, and say so.
    let mut broken = next.clone();
    broken.tls.key_file = pki.path("server-key.pem").display().to_string();
    let report = proxy.reload.apply(broken);
    assert!(!report.failed().is_empty(), "{report:?}");
    let mut again = connect(tls_opts(&proxy, "app", &pw, &pki.path("other-ca.pem")))
        .await
        .unwrap();
    assert_eq!(answer(&mut again).await, 42);
    for c in [plain, conn, again] {
        c.disconnect().await.unwrap();
    }
    proxy.stop().await;
}
