//! The credential store without AWS: what a read of a secret changes, rotation windows, the
//! passwords tried on the backend, and the static source beside the secrets.

use super::*;

const NATIVE: AuthPluginName = AuthPluginName::MysqlNativePassword;

fn store(window: Duration, ids: &[&str]) -> Credentials {
    let settings = SecretsManagerConfig {
        secret_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
        refresh_interval: Duration::from_secs(300),
        rotation_window: window,
    };
    let reads = ids
        .iter()
        .map(|id| (Arc::from(*id), SecretReads::default()))
        .collect();
    Credentials {
        users: RwLock::default(),
        secrets: Some(SecretSource {
            client: SecretsManagerClient::unreachable(),
            settings,
            reads,
        }),
        ..Credentials::default()
    }
}

fn fetched(user: &str, password: &str, pending: Option<&str>) -> FetchedSecret {
    let text = serde_json::json!({"username": user, "password": password}).to_string();
    FetchedSecret {
        current: RdsSecret::parse(&text).unwrap(),
        pending: pending.map(Secret::new),
        version_id: None,
    }
}

fn apply(c: &Credentials, id: &str, user: &str, password: &str) {
    c.apply(
        &Arc::from(id),
        fetched(user, password, None),
        Instant::now(),
    )
    .unwrap();
}

fn answer(plugin: AuthPluginName, scramble: &[u8; 20], password: &str) -> Vec<u8> {
    auth::client_response(plugin.as_str().as_bytes(), scramble, password).unwrap()
}

fn user(name: &str, password: &str) -> UserConfig {
    UserConfig {
        username: name.to_owned(),
        password: Secret::new(password),
        auth_plugin: AuthPluginName::CachingSha2Password,
    }
}

fn passwords(login: &BackendLogin) -> Vec<&str> {
    login
        .secrets
        .iter()
        .map(|s| s.password().unwrap_or("(not a password)"))
        .collect()
}

#[test]
fn both_passwords_let_clients_in_during_the_rotation_window() {
    let c = store(Duration::from_secs(600), &["s1"]);
    apply(&c, "s1", "app", "old");
    assert!(!c.get("app").unwrap().in_rotation_window());
    apply(&c, "s1", "app", "new");
    let cred = c.get("app").unwrap();
    assert_eq!(cred.password.expose(), "new");
    assert_eq!(cred.secret_id(), Some("s1"));
    assert!(cred.in_rotation_window());
    let s = auth::new_scramble().unwrap();
    for plugin in [NATIVE, AuthPluginName::CachingSha2Password] {
        assert!(cred.verify_scramble(plugin, &s, &answer(plugin, &s, "new")));
        assert!(cred.verify_scramble(plugin, &s, &answer(plugin, &s, "old")));
        assert!(!cred.verify_scramble(plugin, &s, &answer(plugin, &s, "other")));
        assert!(!cred.verify_scramble(plugin, &s, b""));
    }
    assert!(cred.verify_cleartext(b"new\0"));
    assert!(cred.verify_cleartext(b"old"));
    assert!(!cred.verify_cleartext(b"ol"));
    assert!(!cred.verify_cleartext(b""));

    // An unchanged read keeps the window as it was.
    apply(&c, "s1", "app", "new");
    assert!(c.get("app").unwrap().in_rotation_window());
}

#[test]
fn the_previous_password_is_refused_once_the_window_is_over() {
    let window = Duration::from_secs(60);
    let c = store(window, &["s1"]);
    apply(&c, "s1", "app", "old");
    let long_ago = Instant::now() - window - Duration::from_secs(1);
    c.apply(&Arc::from("s1"), fetched("app", "new", None), long_ago)
        .unwrap();
    let cred = c.get("app").unwrap();
    assert!(!cred.in_rotation_window());
    let s = auth::new_scramble().unwrap();
    assert!(cred.verify_scramble(NATIVE, &s, &answer(NATIVE, &s, "new")));
    assert!(!cred.verify_scramble(NATIVE, &s, &answer(NATIVE, &s, "old")));
    assert!(!cred.verify_cleartext(b"old"));
    assert_eq!(passwords(&c.backend_login("app", "").unwrap()), ["new"]);

    // A zero window accepts the new password alone from the start.
    let c = store(Duration::ZERO, &["s1"]);
    apply(&c, "s1", "app", "old");
    apply(&c, "s1", "app", "new");
    assert!(!c.get("app").unwrap().verify_cleartext(b"old"));
}

#[test]
fn backend_logins_try_the_accepted_then_current_pending_and_previous_passwords() {
    let c = store(Duration::from_secs(600), &["s1"]);
    apply(&c, "s1", "app", "v1");
    let login = c.backend_login("app", "").unwrap();
    assert!(login.can_reread());
    assert_eq!(passwords(&login), ["v1"]);

    // The rotation set the pending password on the database; the secret still says v1.
    c.apply(
        &Arc::from("s1"),
        fetched("app", "v1", Some("v2")),
        Instant::now(),
    )
    .unwrap();
    assert_eq!(
        passwords(&c.backend_login("app", "").unwrap()),
        ["v1", "v2"]
    );
    c.backend_accepted("app", &BackendSecret::Password(Secret::new("v2")));
    assert_eq!(
        passwords(&c.backend_login("app", "").unwrap()),
        ["v2", "v1"]
    );
    assert_eq!(
        c.backend_password("app", "").unwrap().password(),
        Some("v2")
    );

    // v2 became current: v1 is previous, still worth a try while its window lasts.
    apply(&c, "s1", "app", "v2");
    assert_eq!(
        passwords(&c.backend_login("app", "").unwrap()),
        ["v2", "v1"]
    );
    // Had the database kept v1, it stays first until refused.
    c.backend_accepted("app", &BackendSecret::Password(Secret::new("v1")));
    assert_eq!(
        passwords(&c.backend_login("app", "").unwrap()),
        ["v1", "v2"]
    );
    // A password no longer known is never tried.
    apply(&c, "s1", "app", "v3");
    assert_eq!(
        passwords(&c.backend_login("app", "").unwrap()),
        ["v3", "v2"]
    );
}

#[test]
fn one_secret_per_user() {
    let c = store(Duration::from_secs(600), &["s1", "s2"]);
    apply(&c, "s1", "app", "p1");
    let err = c
        .apply(&Arc::from("s2"), fetched("app", "p2", None), Instant::now())
        .unwrap_err();
    let err = SecretError::new("s2", err).to_string();
    assert!(
        err.contains("`s2`") && err.contains("`s1`") && err.contains("`app`"),
        "{err}"
    );
    assert!(!err.contains("p1") && !err.contains("p2"), "{err}");
    assert_eq!(c.get("app").unwrap().password.expose(), "p1");

    // A secret that now names another user gives up the old one.
    apply(&c, "s1", "reporting", "p3");
    assert!(c.get("app").is_none());
    assert_eq!(c.get("reporting").unwrap().password.expose(), "p3");
    apply(&c, "s2", "app", "p2");
    assert_eq!(c.get("app").unwrap().secret_id(), Some("s2"));
}

#[test]
fn static_users_are_replaced_without_touching_secret_users() {
    let c = store(Duration::from_secs(600), &["s1"]);
    assert!(c.is_empty());
    apply(&c, "s1", "app", "from-secret");
    assert!(!c.is_empty());
    c.replace(&[user("app", "from-file"), user("local", "l1")]);
    // The secret wins for a user in both.
    assert_eq!(c.get("app").unwrap().password.expose(), "from-secret");
    assert_eq!(c.get("local").unwrap().password.expose(), "l1");
    assert_eq!(c.get("local").unwrap().secret_id(), None);
    // Secret users speak mysql_native_password, so that is what the greeting offers.
    assert_eq!(c.greeting_plugin(), NATIVE);

    c.replace(&[user("local", "l2")]);
    assert_eq!(c.get("local").unwrap().password.expose(), "l2");
    assert_eq!(c.get("app").unwrap().password.expose(), "from-secret");
    c.replace(&[]);
    assert!(c.get("local").is_none() && !c.is_empty());

    let statics = Credentials::from_config(&[user("local", "l1")]);
    assert_eq!(
        statics.greeting_plugin(),
        AuthPluginName::CachingSha2Password
    );
    let login = statics.backend_login("local", "").unwrap();
    assert!(!login.can_reread());
    assert_eq!(passwords(&login), ["l1"]);
    assert!(Credentials::from_config(&[]).is_empty());
}

#[test]
fn passwords_never_show_in_debug_output() {
    let c = store(Duration::from_secs(600), &["s1"]);
    apply(&c, "s1", "app", "hunter2");
    c.apply(
        &Arc::from("s1"),
        fetched("app", "swordfish", Some("tr0ub4dor")),
        Instant::now(),
    )
    .unwrap();
    c.replace(&[user("local", "letmein")]);
    let shown = format!(
        "{c:?} {:?} {:?} {:?}",
        c.get("app"),
        c.get("local"),
        c.backend_login("app", "")
    );
    for secret in ["hunter2", "swordfish", "tr0ub4dor", "letmein"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
}

#[tokio::test]
async fn a_failed_read_keeps_the_last_good_value() {
    let c = store(Duration::from_secs(600), &["s1"]);
    apply(&c, "s1", "app", "good");
    let login = c.backend_login("app", "").unwrap();
    let deadline = TokioInstant::now() + Duration::from_secs(10);
    assert_eq!(
        c.reread_after_refusal(&login, deadline).await,
        Reread::NotDone
    );
    assert_eq!(c.get("app").unwrap().password.expose(), "good");
    c.refresh().await;
    assert_eq!(c.get("app").unwrap().password.expose(), "good");

    // A read that happened after the snapshot counts: no new read is needed.
    apply(&c, "s1", "app", "good");
    let started = TokioInstant::now();
    assert_eq!(c.reread_after_refusal(&login, deadline).await, Reread::Done);
    assert!(started.elapsed() < MIN_REREAD_INTERVAL);
}

#[tokio::test]
async fn rereads_are_debounced() {
    let c = store(Duration::from_secs(600), &["s1"]);
    apply(&c, "s1", "app", "good");
    let login = c.backend_login("app", "").unwrap();
    let far = TokioInstant::now() + Duration::from_secs(10);
    c.reread_after_refusal(&login, far).await;
    // The next read may not start within MIN_REREAD_INTERVAL of the last: with a nearer
    // deadline the caller is told at once that no read happens.
    let near = TokioInstant::now() + MIN_REREAD_INTERVAL / 2;
    let started = TokioInstant::now();
    assert_eq!(c.reread_after_refusal(&login, near).await, Reread::NotDone);
    assert!(started.elapsed() < MIN_REREAD_INTERVAL / 2);
}

#[tokio::test]
async fn a_storm_of_refusals_causes_one_read() {
    let c = Arc::new(store(Duration::from_secs(600), &["s1"]));
    apply(&c, "s1", "app", "good");
    let login = c.backend_login("app", "").unwrap();
    let deadline = TokioInstant::now() + Duration::from_secs(10);
    let storm: Vec<_> = (0..20)
        .map(|_| {
            let (c, login) = (c.clone(), login.clone());
            tokio::spawn(async move { c.reread_after_refusal(&login, deadline).await })
        })
        .collect();
    for waiter in storm {
        // The read fails (nothing listens): everyone who waited shares that outcome.
        assert_eq!(waiter.await.unwrap(), Reread::NotDone);
    }
    assert_eq!(c.secret_reads(), 1);
    // A refusal after that read asks for a new one (after the debounce interval).
    let started = TokioInstant::now();
    c.reread_after_refusal(&login, deadline).await;
    assert_eq!(c.secret_reads(), 2);
    assert!(started.elapsed() >= MIN_REREAD_INTERVAL / 2);
}

#[tokio::test]
async fn client_logins_of_static_or_unknown_users_cause_no_read() {
    let c = Credentials::from_config(&[user("local", "l1")]);
    let started = TokioInstant::now();
    assert!(c.authenticate(None, |_| true).await.is_none());
    let known = c.get("local");
    assert!(c.authenticate(known.clone(), |_| false).await.is_none());
    let ok = c.authenticate(known, |u| u.verify_cleartext(b"l1")).await;
    assert_eq!(ok.unwrap().username.as_ref(), "local");
    assert!(started.elapsed() < Duration::from_millis(500));
}
