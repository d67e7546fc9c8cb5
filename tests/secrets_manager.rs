//! Database users from AWS Secrets Manager: the real `sluice` binary reads RDS-format secrets
//! from a local `moto_server` (through `AWS_ENDPOINT_URL`) and logs in to a real MariaDB.
//!
//! Start with secrets, a secret that cannot be read, rotations under load (no client refused,
//! no query failed), the rotation window's end, a wrong password in the secret, and the
//! periodic refresh.

mod common;

use common::eventually;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::{Conn, Error as MyError};
use serde_json::{Value, json};
use sluice_testkit::{MariaDb, Moto, SluiceOptions, SluiceProcess, client_opts};

/// Bound on one client login or query, so a hang fails the test instead of stalling it.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

/// A password no one else uses (test passwords need not be secret, only distinct).
fn new_password() -> String {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new().hash_one(Instant::now());
    format!("pw{random:016x}")
}

/// A database user of the shared MariaDB with no privileges beyond logging in.
async fn create_user(db: &MariaDb, password: &str) -> String {
    let name = Moto::unique_name("sm").replace('-', "_");
    let mut root = db.root_conn().await.unwrap();
    root.query_drop(format!(
        "CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'"
    ))
    .await
    .unwrap();
    root.disconnect().await.unwrap();
    name
}

/// Changes `user`'s password on the database, as a rotation's setSecret step does.
async fn set_db_password(db: &MariaDb, user: &str, password: &str) {
    let mut root = db.root_conn().await.unwrap();
    root.query_drop(format!(
        "ALTER USER '{user}'@'%' IDENTIFIED BY '{password}'"
    ))
    .await
    .unwrap();
    root.disconnect().await.unwrap();
}

/// An RDS-format secret, as the RDS console writes it.
fn rds_secret(db: &MariaDb, user: &str, password: &str) -> Value {
    json!({
        "username": user,
        "password": password,
        "engine": "mariadb",
        "host": "127.0.0.1",
        "port": db.port(),
        "dbname": "mysql",
    })
}

/// Options for a proxy in front of `db` whose users come from `secret_ids` alone.
fn options(db: &MariaDb, secret_ids: &[&str], secrets_manager_toml: &str) -> SluiceOptions {
    SluiceOptions {
        users: Vec::new(),
        secret_ids: secret_ids.iter().map(|s| (*s).to_owned()).collect(),
        secrets_manager_extra_toml: secrets_manager_toml.to_owned(),
        env: Moto::shared()
            .sdk_env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        // Debug for Sluice's own modules: passwords must not show even there.
        extra_toml: "log_level = \"sluice=debug,info\"\nlog_format = \"json\"".to_owned(),
        ..SluiceOptions::for_mariadb(db)
    }
}

async fn login(addr: SocketAddr, user: &str, password: &str) -> Result<Conn, MyError> {
    match tokio::time::timeout(
        CLIENT_LIMIT,
        Conn::new(client_opts(addr, user, password, None)),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => panic!("login as {user} took longer than {CLIENT_LIMIT:?}"),
    }
}

fn server_code(result: &Result<impl std::fmt::Debug, MyError>) -> Option<u16> {
    match result {
        Err(MyError::Server(e)) => Some(e.code),
        _ => None,
    }
}

/// The proxy's whole log.
fn log_of(proxy: &SluiceProcess) -> String {
    std::fs::read_to_string(proxy.log_path()).unwrap_or_default()
}

fn assert_no_password(text: &str, passwords: &[&str]) {
    for pw in passwords {
        assert!(!text.contains(pw), "a password appears in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_log_in_with_the_secrets_password() {
    let db = MariaDb::shared();
    let moto = Moto::shared();
    let password = new_password();
    let user = create_user(db, &password).await;
    let arn = moto
        .create_secret(
            &Moto::unique_name("app-db"),
            &rds_secret(db, &user, &password),
        )
        .unwrap();
    let mut opts = options(db, &[&arn], "");
    // The static source stays beside the secrets.
    opts.users = vec![("app".to_owned(), db.app_password().to_owned())];
    let proxy = SluiceProcess::start(opts).unwrap();

    let mut c = login(proxy.addr(), &user, &password).await.unwrap();
    let me: Option<String> = c.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(me.unwrap(), format!("{user}@%"));
    c.disconnect().await.unwrap();

    let wrong = login(proxy.addr(), &user, "not-the-password").await;
    assert_eq!(server_code(&wrong), Some(1045), "{wrong:?}");
    let unknown = login(proxy.addr(), "no_such_user", &password).await;
    assert_eq!(server_code(&unknown), Some(1045), "{unknown:?}");

    let mut app = login(proxy.addr(), "app", db.app_password()).await.unwrap();
    let me: Option<String> = app.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(me.unwrap(), "app@%");
    app.disconnect().await.unwrap();

    let log = log_of(&proxy);
    assert!(log.contains("read the secret"), "{log}");
    assert_no_password(&log, &[&password, db.app_password()]);
}

#[test]
fn a_secret_that_cannot_be_read_stops_the_start() {
    let db = MariaDb::shared();
    let moto = Moto::shared();
    let password = new_password();
    let good = Moto::unique_name("good");
    moto.create_secret(&good, &rds_secret(db, "app", &password))
        .unwrap();
    let missing = Moto::unique_name("no-such-secret");
    let err = SluiceProcess::start(options(db, &[&good, &missing], ""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("exited during start-up"), "{err}");
    assert!(err.contains(&format!("secret `{missing}`")), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert_no_password(&err, &[&password]);
}

#[test]
fn malformed_secrets_stop_the_start_naming_secret_and_field() {
    let db = MariaDb::shared();
    let moto = Moto::shared();
    let password = new_password();

    let truncated = Moto::unique_name("truncated");
    let text = format!(r#"{{"username":"app","password":"{password}""#);
    moto.create_secret(&truncated, &text).unwrap();
    let err = SluiceProcess::start(options(db, &[&truncated], ""))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("secret `{truncated}`")), "{err}");
    assert!(err.contains("not valid JSON"), "{err}");
    assert_no_password(&err, &[&password]);

    let no_password = Moto::unique_name("no-password");
    moto.create_secret(&no_password, &json!({"username": "app", "engine": "mysql"}))
        .unwrap();
    let err = SluiceProcess::start(options(db, &[&no_password], ""))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("secret `{no_password}`")), "{err}");
    assert!(err.contains("no `password` field"), "{err}");

    // One secret per database user.
    let (first, second) = (Moto::unique_name("first"), Moto::unique_name("second"));
    let other = new_password();
    moto.create_secret(&first, &rds_secret(db, "app", &password))
        .unwrap();
    moto.create_secret(&second, &rds_secret(db, "app", &other))
        .unwrap();
    let err = SluiceProcess::start(options(db, &[&first, &second], ""))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("`{first}`")) && err.contains(&format!("`{second}`")),
        "{err}"
    );
    assert!(err.contains("one secret per database user"), "{err}");
    assert_no_password(&err, &[&password, &other]);
}

/// What the clients of the rotation test saw.
#[derive(Default)]
struct Tally {
    logins: AtomicU64,
    login_failures: AtomicU64,
    queries: AtomicU64,
    query_failures: AtomicU64,
    /// Logins with the password before the latest rotation (during its window).
    previous_password_logins: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// Backend connection ids that answered queries, with when they did.
    backends: Mutex<Vec<(u64, Instant)>>,
}

impl Tally {
    fn error(&self, what: &str, e: &dyn std::fmt::Display) {
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(format!("{what}: {e}"));
        }
    }
}

/// When the load stops: once asked to, or at its hard time limit.
struct Load {
    stop: AtomicBool,
    limit: Instant,
}

impl Load {
    fn over(&self) -> bool {
        self.stop.load(Relaxed) || Instant::now() >= self.limit
    }
}

/// The passwords clients use: `fresh` is what a client reading the secret now gets; laggards
/// still hold the one before.
struct Passwords {
    fresh: String,
    laggard: String,
}

/// A short-lived client: connect, a few queries, disconnect, over and over.
async fn churn(
    addr: SocketAddr,
    user: String,
    laggard: bool,
    passwords: Arc<Mutex<Passwords>>,
    tally: Arc<Tally>,
    rounds: Arc<AtomicU64>,
    load: Arc<Load>,
) {
    for _ in 0..20_000 {
        if load.over() {
            return;
        }
        let password = {
            let p = passwords.lock().unwrap();
            if laggard {
                p.laggard.clone()
            } else {
                p.fresh.clone()
            }
        };
        let previous = {
            let p = passwords.lock().unwrap();
            password != p.fresh
        };
        match login(addr, &user, &password).await {
            Ok(mut c) => {
                tally.logins.fetch_add(1, Relaxed);
                if previous {
                    tally.previous_password_logins.fetch_add(1, Relaxed);
                }
                for _ in 0..3 {
                    query(&mut c, &tally).await;
                }
                let _ = c.disconnect().await;
            }
            Err(e) => {
                tally.login_failures.fetch_add(1, Relaxed);
                tally.error("login", &e);
            }
        }
        rounds.fetch_add(1, Relaxed);
        // Pacing: 2 cores serve clients, proxy and database.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A long-lived session that keeps querying across the rotations.
async fn steady(
    addr: SocketAddr,
    user: String,
    password: String,
    tally: Arc<Tally>,
    load: Arc<Load>,
) {
    let mut c = login(addr, &user, &password).await.unwrap();
    tally.logins.fetch_add(1, Relaxed);
    for _ in 0..100_000 {
        if load.over() {
            break;
        }
        query(&mut c, &tally).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = c.disconnect().await;
}

async fn query(c: &mut Conn, tally: &Tally) {
    match tokio::time::timeout(
        CLIENT_LIMIT,
        c.query_first::<u64, _>("SELECT CONNECTION_ID()"),
    )
    .await
    {
        Ok(Ok(Some(id))) => {
            tally.queries.fetch_add(1, Relaxed);
            tally.backends.lock().unwrap().push((id, Instant::now()));
        }
        Ok(Ok(None)) => {
            tally.query_failures.fetch_add(1, Relaxed);
            tally.error("query", &"no row");
        }
        Ok(Err(e)) => {
            tally.query_failures.fetch_add(1, Relaxed);
            tally.error("query", &e);
        }
        Err(_) => {
            tally.query_failures.fetch_add(1, Relaxed);
            tally.error("query", &"timed out");
        }
    }
}

/// The connection id the server gives the next connection: backend connections with a larger
/// id were opened after this call.
async fn next_connection_id(db: &MariaDb) -> u64 {
    let mut root = db.root_conn().await.unwrap();
    let id: Option<u64> = root.query_first("SELECT CONNECTION_ID()").await.unwrap();
    root.disconnect().await.unwrap();
    id.unwrap()
}

/// Waits until every churning client finished a round that started after this call.
async fn wait_for_a_round(rounds: &[Arc<AtomicU64>]) {
    let start: Vec<u64> = rounds.iter().map(|r| r.load(Relaxed)).collect();
    let all_moved = eventually(Duration::from_secs(20), async || {
        rounds
            .iter()
            .zip(&start)
            .all(|(r, s)| r.load(Relaxed) >= s + 2)
    })
    .await;
    assert!(all_moved, "the clients stopped making progress");
}

/// Two rotations during 30 s of load: first the database then the secret's current value (as
/// an operator might), then the RDS rotation function's steps (createSecret puts AWSPENDING,
/// setSecret changes the database, finishSecret moves AWSCURRENT). Clients that read the
/// secret anew use the new password at once; laggards keep the previous one. No login and no
/// query may fail, and backend connections opened afterwards use the new password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_under_load_fail_no_login_and_no_query() {
    let db = MariaDb::shared();
    let moto = Moto::shared();
    let (p0, p1, p2) = (new_password(), new_password(), new_password());
    let user = create_user(db, &p0).await;
    let name = Moto::unique_name("rotating");
    let arn = moto
        .create_secret(&name, &rds_secret(db, &user, &p0))
        .unwrap();
    let mut opts = options(db, &[&arn], "refresh_interval = \"1h\"");
    // Connections are replaced every few seconds, so logins to the backend keep happening.
    opts.backend_extra_toml = "max_lifetime = \"2s\"".to_owned();
    opts.max_connections = 6;
    let proxy = SluiceProcess::start(opts).unwrap();
    let addr = proxy.addr();

    let started = Instant::now();
    // 30 s of load, and at least 8 s after the second rotation however slow the machine;
    // never more than 90 s.
    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        limit: started + Duration::from_secs(90),
    });
    let tally = Arc::new(Tally::default());
    let passwords = Arc::new(Mutex::new(Passwords {
        fresh: p0.clone(),
        laggard: p0.clone(),
    }));
    let mut tasks = Vec::new();
    let mut rounds = Vec::new();
    for i in 0..6 {
        let r = Arc::new(AtomicU64::new(0));
        rounds.push(r.clone());
        tasks.push(tokio::spawn(churn(
            addr,
            user.clone(),
            i % 2 == 1,
            passwords.clone(),
            tally.clone(),
            r,
            load.clone(),
        )));
    }
    for _ in 0..2 {
        tasks.push(tokio::spawn(steady(
            addr,
            user.clone(),
            p0.clone(),
            tally.clone(),
            load.clone(),
        )));
    }

    // Rotation 1 at about 8 s: the database first, then the secret.
    tokio::time::sleep_until((started + Duration::from_secs(8)).into()).await;
    set_db_password(db, &user, &p1).await;
    let v1 = moto
        .put_secret_value(&arn, &rds_secret(db, &user, &p1))
        .unwrap();
    passwords.lock().unwrap().fresh = p1.clone();
    let logins_before = tally.previous_password_logins.load(Relaxed);

    // Rotation 2 at about 17 s, the RDS rotation function's way. Laggards move to p1 first
    // (p0 is no longer the previous password once p2 is current).
    tokio::time::sleep_until((started + Duration::from_secs(17)).into()).await;
    assert!(
        tally.previous_password_logins.load(Relaxed) > logins_before,
        "no laggard logged in with the previous password during rotation 1's window"
    );
    passwords.lock().unwrap().laggard = p1.clone();
    wait_for_a_round(&rounds).await;
    let pending = moto
        .call(
            "secretsmanager.PutSecretValue",
            &json!({
                "SecretId": arn,
                "SecretString": rds_secret(db, &user, &p2).to_string(),
                "VersionStages": ["AWSPENDING"],
            }),
        )
        .unwrap();
    let v2 = pending["VersionId"].as_str().unwrap().to_owned();
    set_db_password(db, &user, &p2).await;
    let after_p2 = next_connection_id(db).await;
    // Until finishSecret, only the pending version has the password the database takes: new
    // backend connections log in with it.
    let pending_used = eventually(Duration::from_secs(10), async || {
        log_of(&proxy).contains("accepts a password other than the secret's current one")
    })
    .await;
    assert!(
        pending_used,
        "no backend login with the AWSPENDING password"
    );
    moto.call(
        "secretsmanager.UpdateSecretVersionStage",
        &json!({
            "SecretId": arn,
            "VersionStage": "AWSCURRENT",
            "MoveToVersionId": v2,
            "RemoveFromVersionId": v1,
        }),
    )
    .unwrap();
    passwords.lock().unwrap().fresh = p2.clone();
    let rotated = Instant::now();
    let end = (started + Duration::from_secs(30)).max(rotated + Duration::from_secs(8));
    tokio::time::sleep_until(end.into()).await;
    load.stop.store(true, Relaxed);
    assert!(
        Instant::now() < load.limit,
        "the load hit its time limit before the rotations were done"
    );

    for t in tasks {
        t.await.unwrap();
    }
    let errors = tally.errors.lock().unwrap().clone();
    let (logins, login_failures) = (
        tally.logins.load(Relaxed),
        tally.login_failures.load(Relaxed),
    );
    let (queries, query_failures) = (
        tally.queries.load(Relaxed),
        tally.query_failures.load(Relaxed),
    );
    eprintln!(
        "{logins} logins ({} with the previous password), {queries} queries",
        tally.previous_password_logins.load(Relaxed)
    );
    assert_eq!(login_failures, 0, "failed logins: {errors:#?}");
    assert_eq!(query_failures, 0, "failed queries: {errors:#?}");
    assert!(
        logins >= 100 && queries >= 500,
        "too little load: {logins} logins, {queries} queries"
    );

    // Backend connections opened after the database changed to p2 served queries after the
    // rotation; the database accepts nothing but p2, so that is what Sluice used.
    let fresh_backends: HashSet<u64> = tally
        .backends
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, at)| *id > after_p2 && *at > rotated)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        !fresh_backends.is_empty(),
        "no backend connection was opened after the rotation"
    );
    for old in [&p0, &p1] {
        let direct = Conn::new(db.opts(&user, old, None)).await;
        assert_eq!(
            server_code(&direct),
            Some(1045),
            "the database still takes an old password"
        );
    }
    // The laggards' p1 is still within its window; p0 is refused.
    let p1_client = login(addr, &user, &p1).await;
    assert!(p1_client.is_ok(), "{p1_client:?}");
    let p0_client = login(addr, &user, &p0).await;
    assert_eq!(server_code(&p0_client), Some(1045), "{p0_client:?}");
    assert_no_password(&log_of(&proxy), &[&p0, &p1, &p2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_password_is_refused_after_the_rotation_window() {
    let db = MariaDb::shared();
    let moto = Moto::shared();
    let (old, new) = (new_password(), new_password());
    let user = create_user(db, &old).await;
    let arn = moto
        .create_secret(&Moto::unique_name("window"), &rds_secret(db, &user, &old))
        .unwrap();
    let proxy = SluiceProcess::start(options(
        db,
        &[&arn],
        "refresh_interval = \"1h\"\nrotation_window = \"6s\"",
    ))
    .unwrap();
    let addr = proxy.addr();
    login(addr, &user, &old)
        .await
        .unwrap()
        .disconnect()
        .await
        .unwrap();

    set_db_password(db, &user, &new).await;
    moto.put_secret_value(&arn, &rds_secret(db, &user, &new))
        .unwrap();
    // The window opens when Sluice reads the new password, which is after this.
    let rotated = Instant::now();
    // A client with the new password makes Sluice read the secret again.
    let mut c = login(addr, &user, &new).await.unwrap();
    c.query_drop("SELECT 1").await.unwrap();
    // Within the window, the previous password still lets clients in.
    let within = login(addr, &user, &old).await;
    assert!(
        rotated.elapsed() < Duration::from_secs(6),
        "too slow to check the window ({:?})",
        rotated.elapsed()
    );
    let mut c_old = within.unwrap();
    c_old.query_drop("SELECT 1").await.unwrap();

    let refused = eventually(Duration::from_secs(20), async || {
        match login(addr, &user, &old).await {
            Ok(c) => {
                let _ = c.disconnect().await;
                false
            }
            Err(MyError::Server(e)) => e.code == 1045,
            Err(e) => panic!("{e}"),
        }
    })
    .await;
    assert!(refused, "the previous password is still accepted");
    assert!(
        rotated.elapsed() >= Duration::from_secs(6),
        "refused before the window ended"
    );
    // The sessions logged in during the window go on; the new password still works.
    c_old.query_drop("SELECT 1").await.unwrap();
    login(addr, &user, &new)
        .await
        .unwrap()
        .disconnect()
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    c_old.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_in_the_secret_gives_a_clear_error_until_the_secret_is_fixed() {
    let db = MariaDb::shared();
    let moto = Moto::shared();
    let (real, wrong) = (new_password(), new_password());
    let user = create_user(db, &real).await;
    let arn = moto
        .create_secret(&Moto::unique_name("wrong"), &rds_secret(db, &user, &wrong))
        .unwrap();
    // Only a refused login can make Sluice read the secret again within this test.
    let mut opts = options(db, &[&arn], "refresh_interval = \"1h\"");
    opts.backend_extra_toml = "connect_timeout = \"2s\"".to_owned();
    let proxy = SluiceProcess::start(opts).unwrap();
    let addr = proxy.addr();

    // Sluice checks clients against the secret, so this login succeeds (with settings given,
    // mysql_async sends no query while connecting); the database then refuses Sluice's own
    // login.
    let lazy = client_opts(addr, &user, &wrong, None)
        .max_allowed_packet(Some(16 << 20))
        .wait_timeout(Some(28800));
    let mut c = Conn::new(lazy).await.unwrap();
    let asked = Instant::now();
    let result = tokio::time::timeout(CLIENT_LIMIT, c.query_drop("SELECT 1"))
        .await
        .expect("the query hung");
    let waited = asked.elapsed();
    match &result {
        Err(MyError::Server(e)) => {
            assert_eq!(e.code, 9502, "{e:?}");
            assert!(
                e.message.contains("refused Sluice's login"),
                "{}",
                e.message
            );
            assert!(e.message.contains(&user), "{}", e.message);
        }
        other => panic!("expected the database's refusal, got {other:?}"),
    }
    assert!(
        waited < Duration::from_secs(15),
        "the error took {waited:?}"
    );
    let log = log_of(&proxy);
    assert!(
        log.contains("reading the secret again"),
        "no re-read: {log}"
    );

    // Fixing the secret lets the session go on and new clients in, without a restart.
    moto.put_secret_value(&arn, &rds_secret(db, &user, &real))
        .unwrap();
    let me: Option<String> = c.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(me.unwrap(), format!("{user}@%"));
    let mut fresh = login(addr, &user, &real).await.unwrap();
    fresh.query_drop("SELECT 1").await.unwrap();
    fresh.disconnect().await.unwrap();
    c.disconnect().await.unwrap();
    assert_no_password(&log_of(&proxy), &[&real, &wrong]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_interval_picks_up_a_new_password_without_a_refusal() {
    let db = MariaDb::shared();
    let moto = Moto::shared();
    let (old, new) = (new_password(), new_password());
    let user = create_user(db, &old).await;
    let arn = moto
        .create_secret(&Moto::unique_name("refresh"), &rds_secret(db, &user, &old))
        .unwrap();
    let proxy = SluiceProcess::start(options(db, &[&arn], "refresh_interval = \"1s\"")).unwrap();
    let addr = proxy.addr();
    // Users from secrets alone, no client yet: /readyz logs in as the secret's user.
    let http = proxy.http_addr().expect("the HTTP listener is on");
    let (status, body) = common::http_get(http, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let mut c = login(addr, &user, &old).await.unwrap();
    c.query_drop("SELECT 1").await.unwrap();

    set_db_password(db, &user, &new).await;
    moto.put_secret_value(&arn, &rds_secret(db, &user, &new))
        .unwrap();
    let picked_up = eventually(Duration::from_secs(15), async || {
        log_of(&proxy).contains("the secret has a new password")
    })
    .await;
    assert!(
        picked_up,
        "the refresh did not notice the new password:\n{}",
        log_of(&proxy)
    );

    // The old session keeps its backend connection (opened with the old password) in a
    // transaction, so the new client needs a new one: it logs in with the new password at the
    // first try.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("SELECT 1").await.unwrap();
    let mut fresh = login(addr, &user, &new).await.unwrap();
    let ids: Vec<u64> = vec![
        fresh
            .query_first("SELECT CONNECTION_ID()")
            .await
            .unwrap()
            .unwrap(),
        c.query_first("SELECT CONNECTION_ID()")
            .await
            .unwrap()
            .unwrap(),
    ];
    assert_ne!(
        ids[0], ids[1],
        "the two sessions shared a backend connection"
    );
    c.query_drop("COMMIT").await.unwrap();
    let log = log_of(&proxy);
    assert!(
        !log.contains("reading the secret again") && !log.contains("refused"),
        "something was refused: {log}"
    );
    // The metrics show the refreshes, none failed, and the user's rotation window open.
    let metrics = common::http_get(http, "/metrics").await.1;
    let refreshes = |text: &str, result: &str| {
        common::sample(text, "sluice_secret_refreshes_total", &[("result", result)])
            .unwrap_or_else(|| panic!("no {result} refresh count in:\n{text}"))
    };
    assert!(refreshes(&metrics, "success") >= 1.0, "{metrics}");
    assert_eq!(refreshes(&metrics, "failure"), 0.0, "{metrics}");
    assert_eq!(
        common::sample(&metrics, "sluice_users_in_rotation_window", &[]),
        Some(1.0),
        "{metrics}"
    );

    // A secret that can no longer be read: the refresh fails, is counted, and the last good
    // password keeps working.
    moto.delete_secret(&arn).unwrap();
    let failures_counted = eventually(Duration::from_secs(15), async || {
        refreshes(&common::http_get(http, "/metrics").await.1, "failure") >= 1.0
    })
    .await;
    assert!(
        failures_counted,
        "no failed refresh counted:\n{}",
        log_of(&proxy)
    );
    assert!(log_of(&proxy).contains("keeping the last good value"));
    let mut after = login(addr, &user, &new).await.unwrap();
    after.query_drop("SELECT 1").await.unwrap();
    after.disconnect().await.unwrap();
    fresh.disconnect().await.unwrap();
    c.disconnect().await.unwrap();
}
