//! Clients logging in with AWS IAM: tokens (signed `sts:GetCallerIdentity` requests, made with
//! the real SigV4 signer) checked by Sluice against moto_server, which checks signatures as STS
//! does. A valid token (role session and IAM user), expired, for another audience, tampered,
//! an unmapped role, STS unreachable or silent, no TLS, and a burst of 1,000 cold starts that
//! costs one STS call per role, counted by Sluice and by moto's own request recording.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{TestProxy, config_for};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};
use sluice::Config;
use sluice::config::{IamIdentity, Secret, TlsMode};
use sluice_iam::ClientToken;
use sluice_iam::client_token::{self, TokenRequest};
use sluice_testkit::{AwsKeys, IamMoto, MariaDb, Moto, Pki, pymysql_async};

/// The audience test proxies accept.
const AUDIENCE: &str = "sluice-iam-test";
/// Limit for one login.
const WAIT: Duration = Duration::from_secs(30);

/// Sluice in front of `db` with client TLS and IAM logins checked by `aws`; `identities` map
/// ARN patterns to database users.
fn iam_config(db: &MariaDb, pki: &Pki, aws: &IamMoto, identities: &[(&str, &str)]) -> Config {
    let mut c = config_for(db, 8);
    c.tls.mode = TlsMode::Preferred;
    // Inline PEM, as a container gets it from a secret through its environment.
    let pem = |name: &str| Secret::new(std::fs::read_to_string(pki.path(name)).expect("PEM"));
    c.tls.cert_pem = pem("server.pem");
    c.tls.key_pem = pem("server-key.pem");
    c.iam.audience = AUDIENCE.into();
    c.iam.sts_endpoint = aws.endpoint();
    c.iam.sts_region = aws.region().into();
    c.iam.identities = identities
        .iter()
        .map(|(arn, user)| IamIdentity {
            arn: (*arn).into(),
            database_user: (*user).into(),
        })
        .collect();
    c.validate().expect("valid IAM configuration");
    c
}

/// A token signed with `keys` for `audience` at `time`.
fn token(aws: &IamMoto, keys: &AwsKeys, audience: &str, time: SystemTime) -> String {
    let host = aws.host();
    let request = TokenRequest {
        sts_host: &host,
        region: aws.region(),
        audience,
    };
    client_token::sign(&keys.credentials(), &request, time).expect("sign a token")
}

/// mysql_async over TLS (trusting `ca`), allowed to send the password in clear.
fn iam_opts(proxy: &TestProxy, user: &str, token: &str, ca: &Path) -> OptsBuilder {
    proxy
        .opts(user, token, None)
        .ssl_opts(SslOpts::default().with_root_certs(vec![ca.to_path_buf().into()]))
        .enable_cleartext_plugin(true)
}

/// Logs in and returns `CURRENT_USER()`, or the server's error.
async fn login(opts: OptsBuilder) -> Result<String, mysql_async::ServerError> {
    let attempt = async {
        let mut conn = Conn::new(Opts::from(opts)).await?;
        let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await?;
        conn.disconnect().await?;
        Ok::<_, mysql_async::Error>(who.unwrap_or_default())
    };
    match tokio::time::timeout(WAIT, attempt)
        .await
        .expect("login did not finish in time")
    {
        Ok(who) => Ok(who),
        Err(mysql_async::Error::Server(e)) => Err(e),
        Err(other) => panic!("expected a login or a server error, got {other:?}"),
    }
}

/// The value of metric `name` with `label` (`key="value"`), 0 if absent.
async fn metric(proxy: &TestProxy, name: &str, label: &str) -> f64 {
    let (_, text) = proxy.http("/metrics").await;
    let prefix = format!("{name}{{{label}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// What every test starts from: the shared servers and its own certificates.
struct Setup {
    db: &'static MariaDb,
    aws: &'static IamMoto,
    pki: Pki,
    /// The CA clients trust.
    ca: std::path::PathBuf,
}

fn setup() -> Setup {
    let pki = Pki::generate().unwrap();
    Setup {
        db: MariaDb::shared(),
        aws: IamMoto::shared(),
        ca: pki.path("ca.pem"),
        pki,
    }
}

/// A new role and a session of it.
fn role_session(aws: &IamMoto, prefix: &str) -> (String, AwsKeys) {
    let role = aws
        .create_role(&Moto::unique_name(prefix))
        .expect("create role");
    let keys = aws.assume_role(&role, "lambda").expect("assume role");
    (role, keys)
}

#[tokio::test]
async fn valid_tokens_log_in_as_the_mapped_user() {
    let Setup { db, aws, pki, ca } = setup();
    let (role, session) = role_session(aws, "orders");
    let (user_arn, user_keys) = aws.create_user(&Moto::unique_name("reporter")).unwrap();
    let proxy = TestProxy::start_with(
        db,
        iam_config(db, &pki, aws, &[(&role, "app"), (&user_arn, "other")]),
    )
    .await;

    let t = token(aws, &session, AUDIENCE, SystemTime::now());
    assert_eq!(
        login(iam_opts(&proxy, "app", &t, &ca)).await.unwrap(),
        "app@%"
    );
    // The same token again: answered from the cache.
    assert_eq!(
        login(iam_opts(&proxy, "app", &t, &ca)).await.unwrap(),
        "app@%"
    );
    // COM_CHANGE_USER to an IAM user: the token again, switched to mysql_clear_password.
    let mut conn = Conn::new(Opts::from(iam_opts(&proxy, "app", &t, &ca)))
        .await
        .unwrap();
    let u = token(aws, &user_keys, AUDIENCE, SystemTime::now());
    conn.change_user(
        mysql_async::ChangeUserOpts::default()
            .with_user(Some("other".into()))
            .with_pass(Some(u.clone())),
    )
    .await
    .unwrap();
    let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.as_deref(), Some("other@%"));
    conn.disconnect().await.unwrap();
    // An IAM user (not a role) mapped by its own ARN.
    assert_eq!(
        login(iam_opts(&proxy, "other", &u, &ca)).await.unwrap(),
        "other@%"
    );
    // PyMySQL, what the seed's Lambda used, sends the token with mysql_clear_password too.
    let port = proxy.addr.port().to_string();
    let ca_text = ca.display().to_string();
    let out = pymysql_async(
        "tests/clients/pymysql_tls.py",
        &["127.0.0.1", &port, "app", &t, &ca_text],
        &[],
    )
    .await
    .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && line.contains("\"answer\": 42"),
        "PyMySQL: {line} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two tokens, two STS calls: the repeats came from the cache.
    assert_eq!(
        metric(
            &proxy,
            "sluice_iam_sts_requests_total",
            "result=\"answered\""
        )
        .await,
        2.0
    );
    // The repeats of each token: two logins, the session before COM_CHANGE_USER, PyMySQL.
    assert_eq!(
        metric(&proxy, "sluice_iam_logins_total", "result=\"cached\"").await,
        4.0
    );
    assert_eq!(aws.sts_calls_signed_by(&session.access_key_id).unwrap(), 1);
    // The IAM user's password login is gone: it logs in with IAM only.
    let password = login(
        proxy
            .opts("app", &proxy.app_password, None)
            .ssl_opts(SslOpts::default().with_root_certs(vec![ca.clone().into()]))
            .enable_cleartext_plugin(true),
    )
    .await
    .unwrap_err();
    assert_eq!(password.code, 1045);
    assert!(
        password.message.contains("not a Sluice IAM token"),
        "{}",
        password.message
    );
    proxy.stop().await;
}

#[tokio::test]
async fn refusals_say_why() {
    let Setup { db, aws, pki, ca } = setup();
    let (role, session) = role_session(aws, "billing");
    let (_, unmapped) = role_session(aws, "stranger");
    let nobody = "arn:aws:iam::123456789012:role/nobody";
    let proxy = TestProxy::start_with(
        db,
        iam_config(db, &pki, aws, &[(&role, "app"), (nobody, "other")]),
    )
    .await;
    let now = SystemTime::now();

    let refused = |t: String| {
        let opts = iam_opts(&proxy, "app", &t, &ca);
        async move { login(opts).await.expect_err("the login must be refused") }
    };
    let expect = |e: &mysql_async::ServerError, code: u16, words: &str| {
        assert_eq!(e.code, code, "{}", e.message);
        assert!(
            e.message.contains(words),
            "{words:?} not in {:?}",
            e.message
        );
        assert!(
            !e.message.contains("Signature=") && !e.message.contains("FwoG"),
            "no token in messages: {}",
            e.message
        );
    };

    // Checked by Sluice itself, before STS.
    let old = token(aws, &session, AUDIENCE, now - Duration::from_secs(20 * 60));
    expect(&refused(old).await, 1045, "the token expired");
    let elsewhere = token(aws, &session, "another-sluice", now);
    expect(
        &refused(elsewhere.clone()).await,
        1045,
        "is for audience `another-sluice`",
    );
    expect(
        &refused("hunter2".into()).await,
        1045,
        "not a Sluice IAM token",
    );
    let calls_before = aws.sts_calls_signed_by(&session.access_key_id).unwrap();
    assert_eq!(calls_before, 0, "no refusal so far reached STS");

    // Relabelled for this Sluice, but signed for another: STS refuses the signature.
    let mut relabelled = ClientToken::decode(elsewhere.as_bytes()).unwrap();
    relabelled.audience = AUDIENCE.into();
    expect(
        &refused(relabelled.encode()).await,
        1045,
        "STS refused the token's signature",
    );
    // A signature changed in one digit.
    let mut tampered = ClientToken::decode(token(aws, &session, AUDIENCE, now).as_bytes()).unwrap();
    let last = tampered.authorization.pop().unwrap();
    tampered
        .authorization
        .push(if last == '0' { '1' } else { '0' });
    expect(
        &refused(tampered.encode()).await,
        1045,
        "STS refused the token's signature",
    );
    assert_eq!(aws.sts_calls_signed_by(&session.access_key_id).unwrap(), 2);

    // A good token of a role no identity maps.
    let stranger = token(aws, &unmapped, AUDIENCE, now);
    expect(
        &refused(stranger).await,
        1045,
        "may not log in as database user `app`",
    );
    // A mapped role asking for a user it is not mapped to.
    let good = token(aws, &session, AUDIENCE, now);
    let e = login(iam_opts(&proxy, "other", &good, &ca))
        .await
        .expect_err("refused");
    expect(&e, 1045, "may not log in as database user `other`");

    assert_eq!(
        metric(&proxy, "sluice_iam_logins_total", "result=\"refused\"").await,
        7.0
    );
    assert_eq!(
        metric(&proxy, "sluice_iam_sts_requests_total", "result=\"failed\"").await,
        0.0
    );
    // The good token works.
    assert_eq!(
        login(iam_opts(&proxy, "app", &good, &ca)).await.unwrap(),
        "app@%"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn no_tls_no_token() {
    let Setup { db, aws, pki, .. } = setup();
    let (role, session) = role_session(aws, "plain");
    let proxy = TestProxy::start_with(db, iam_config(db, &pki, aws, &[(&role, "app")])).await;
    let t = token(aws, &session, AUDIENCE, SystemTime::now());
    // Without TLS Sluice refuses before asking for the token, so it is never sent in clear.
    let e = login(proxy.opts("app", &t, None).enable_cleartext_plugin(true))
        .await
        .expect_err("refused");
    assert_eq!(e.code, 1045);
    assert!(e.message.contains("needs TLS"), "{}", e.message);
    assert_eq!(aws.sts_calls_signed_by(&session.access_key_id).unwrap(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn sts_unreachable_or_silent_refuses_as_cannot_verify_and_is_counted() {
    let Setup { db, aws, pki, ca } = setup();
    let (role, session) = role_session(aws, "offline");

    // A port nobody listens on, and a listener that accepts and never answers.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });

    for (addr, words) in [
        (closed_addr, "cannot reach STS"),
        (silent_addr, "did not answer in time"),
    ] {
        let mut config = iam_config(db, &pki, aws, &[(&role, "app")]);
        config.iam.sts_endpoint = format!("http://{addr}");
        config.iam.sts_timeout = Duration::from_millis(500);
        let proxy = TestProxy::start_with(db, config).await;
        let host = addr.to_string();
        let request = TokenRequest {
            sts_host: &host,
            region: aws.region(),
            audience: AUDIENCE,
        };
        let t = client_token::sign(&session.credentials(), &request, SystemTime::now()).unwrap();
        let started = std::time::Instant::now();
        let e = login(iam_opts(&proxy, "app", &t, &ca))
            .await
            .expect_err("refused");
        assert_eq!(e.code, 9506, "{}", e.message);
        assert!(e.message.contains(words), "{words:?}: {}", e.message);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the STS call is bounded by sts_timeout"
        );
        // Not cached: the next login asks again (and fails again).
        let e = login(iam_opts(&proxy, "app", &t, &ca))
            .await
            .expect_err("refused");
        assert_eq!(e.code, 9506);
        assert_eq!(
            metric(&proxy, "sluice_iam_sts_requests_total", "result=\"failed\"").await,
            2.0
        );
        assert_eq!(
            metric(
                &proxy,
                "sluice_iam_logins_total",
                "result=\"sts_unavailable\""
            )
            .await,
            2.0
        );
        proxy.stop().await;
    }
    hold.abort();
}

#[tokio::test]
async fn a_burst_of_1000_cold_starts_costs_one_sts_call_per_role() {
    const LOGINS: usize = 1000;
    const AT_ONCE: usize = 100;
    let Setup { db, aws, pki, ca } = setup();
    let (orders, orders_session) = role_session(aws, "burst-orders");
    let (billing, billing_session) = role_session(aws, "burst-billing");
    let proxy = TestProxy::start_with(
        db,
        iam_config(db, &pki, aws, &[(&orders, "app"), (&billing, "other")]),
    )
    .await;
    // Every cold start signs its own token with its role's credentials, all within one minute.
    let started = SystemTime::now();
    let logins = futures_bounded(LOGINS, AT_ONCE, |i| {
        let (keys, user) = if i % 2 == 0 {
            (&orders_session, "app")
        } else {
            (&billing_session, "other")
        };
        let t = token(aws, keys, AUDIENCE, started);
        let opts = iam_opts(&proxy, user, &t, &ca).stmt_cache_size(0);
        async move { login(opts).await }
    })
    .await;
    let failed: Vec<_> = logins.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed, first {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(
        metric(
            &proxy,
            "sluice_iam_sts_requests_total",
            "result=\"answered\""
        )
        .await,
        2.0,
        "one STS call per role"
    );
    assert_eq!(
        metric(&proxy, "sluice_iam_logins_total", "result=\"cached\"").await,
        (LOGINS - 2) as f64
    );
    // moto saw it the same way.
    assert_eq!(
        aws.sts_calls_signed_by(&orders_session.access_key_id)
            .unwrap(),
        1
    );
    assert_eq!(
        aws.sts_calls_signed_by(&billing_session.access_key_id)
            .unwrap(),
        1
    );
    proxy.stop().await;
}

/// Runs `make(i)` for `i` in `0..n`, at most `at_once` at a time; results in order.
async fn futures_bounded<F, Fut, T>(n: usize, at_once: usize, make: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(at_once));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        let fut = make(i);
        tasks.push(tokio::spawn(async move {
            let out = fut.await;
            drop(permit);
            out
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("login task"));
    }
    out
}
