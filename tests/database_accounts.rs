//! The database's own accounts (`[database_accounts]`): users created in MariaDB during the
//! test log in through Sluice without Sluice being told about them, follow password changes,
//! are refused once dropped, work through COM_CHANGE_USER, and a lookup that cannot run refuses
//! the login instead of letting it through. Accounts whose plugin Sluice cannot use are refused
//! with a message saying what to do.

mod common;

use std::time::Duration;

use common::{TestProxy, config_for};
use mysql_async::prelude::*;
use mysql_async::{ChangeUserOpts, Conn, Opts};
use sluice::config::{Secret, UserConfig};
use sluice_testkit::{MariaDb, Moto};

/// A lookup account that may read `mysql.user`, and its password.
fn lookup_account(db: &MariaDb) -> (String, String) {
    let name = Moto::unique_name("lookup").replace('-', "_");
    let password = format!("{name}-pw");
    db.sql(&format!(
        "CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'; \
         GRANT SELECT ON mysql.user TO '{name}'@'%'"
    ))
    .expect("create the lookup account");
    (name, password)
}

/// A proxy that looks unknown users up as `lookup`, caching for `ttl`.
async fn proxy(db: &MariaDb, lookup: &(String, String), ttl: Duration) -> TestProxy {
    let mut config = config_for(db, 8);
    config.users.push(UserConfig {
        username: lookup.0.clone(),
        password: Secret::new(lookup.1.clone()),
        auth_plugin: Default::default(),
    });
    config.database_accounts.enabled = true;
    config.database_accounts.lookup_user = lookup.0.clone();
    config.database_accounts.cache_ttl = ttl;
    config.validate().expect("valid configuration");
    TestProxy::start_with(db, config).await
}

/// `CURRENT_USER()` after logging in as `user`, or the server's error.
async fn who(proxy: &TestProxy, user: &str, password: &str) -> Result<String, (u16, String)> {
    let attempt = async {
        let mut conn = Conn::new(Opts::from(proxy.opts(user, password, None))).await?;
        let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await?;
        conn.disconnect().await?;
        Ok::<_, mysql_async::Error>(who.unwrap_or_default())
    };
    match attempt.await {
        Ok(w) => Ok(w),
        Err(mysql_async::Error::Server(e)) => Err((e.code, e.message)),
        Err(other) => panic!("{other:?}"),
    }
}

/// The value of `sluice_database_account_lookups_total{result="..."}`.
async fn lookups(proxy: &TestProxy, result: &str) -> f64 {
    let (_, text) = proxy.http("/metrics").await;
    let prefix = format!("sluice_database_account_lookups_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn fresh_user(db: &MariaDb, password: &str) -> String {
    let name = Moto::unique_name("dyn").replace('-', "_");
    db.sql(&format!(
        "CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'; GRANT ALL ON *.* TO '{name}'@'%'"
    ))
    .expect("create an account");
    name
}

#[tokio::test]
async fn accounts_created_changed_and_dropped_in_the_database() {
    let db = MariaDb::shared();
    let lookup = lookup_account(db);
    // Every login reads its account: what the database says now is what counts.
    let proxy = proxy(db, &lookup, Duration::ZERO).await;
    let user = fresh_user(db, "first-pw");
    let me = format!("{user}@%");

    assert_eq!(who(&proxy, &user, "first-pw").await, Ok(me.clone()));
    let wrong = who(&proxy, &user, "nope").await.unwrap_err();
    assert_eq!(wrong.0, 1045, "{}", wrong.1);

    // Its password changes in the database.
    db.sql(&format!(
        "ALTER USER '{user}'@'%' IDENTIFIED BY 'second-pw'"
    ))
    .unwrap();
    assert_eq!(who(&proxy, &user, "second-pw").await, Ok(me.clone()));
    assert_eq!(who(&proxy, &user, "first-pw").await.unwrap_err().0, 1045);

    // COM_CHANGE_USER from a user Sluice knows to the database's account, and back.
    let mut conn = proxy.app(None).await;
    conn.change_user(
        ChangeUserOpts::default()
            .with_user(Some(user.clone()))
            .with_pass(Some("second-pw".into())),
    )
    .await
    .unwrap();
    let now: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(now.as_deref(), Some(me.as_str()));
    let refused = conn
        .change_user(
            ChangeUserOpts::default()
                .with_user(Some(user.clone()))
                .with_pass(Some("first-pw".into())),
        )
        .await;
    assert!(
        matches!(&refused, Err(mysql_async::Error::Server(e)) if e.code == 1045),
        "{refused:?}"
    );

    // Dropped: refused.
    db.sql(&format!("DROP USER '{user}'@'%'")).unwrap();
    let gone = who(&proxy, &user, "second-pw").await.unwrap_err();
    assert_eq!(gone.0, 1045, "{}", gone.1);
    assert!(gone.1.starts_with("Access denied for user"), "{}", gone.1);

    // Never a bypass: when the lookup cannot run, logins are refused as "cannot check now".
    let other = fresh_user(db, "third-pw");
    assert!(who(&proxy, &other, "third-pw").await.is_ok());
    db.sql(&format!(
        "REVOKE SELECT ON mysql.user FROM '{}'@'%'",
        lookup.0
    ))
    .unwrap();
    let blind = who(&proxy, &other, "third-pw").await.unwrap_err();
    assert_eq!(blind.0, 9506, "{}", blind.1);
    assert!(blind.1.contains("lookup failed"), "{}", blind.1);
    assert!(lookups(&proxy, "failed").await >= 1.0);
    // Users Sluice knows are not affected.
    assert_eq!(
        who(&proxy, "app", &proxy.app_password).await,
        Ok("app@%".into())
    );
    proxy.stop().await;
}

#[tokio::test]
async fn lookups_are_cached_and_read_again_when_a_login_fails() {
    let db = MariaDb::shared();
    let lookup = lookup_account(db);
    let proxy = proxy(db, &lookup, Duration::from_secs(600)).await;
    let user = fresh_user(db, "one");
    let me = format!("{user}@%");
    for _ in 0..5 {
        assert_eq!(who(&proxy, &user, "one").await, Ok(me.clone()));
    }
    assert_eq!(
        lookups(&proxy, "found").await,
        1.0,
        "one lookup for five logins"
    );

    // A new password: the cached copy says otherwise, so the account is read again at once.
    db.sql(&format!("ALTER USER '{user}'@'%' IDENTIFIED BY 'two'"))
        .unwrap();
    assert_eq!(who(&proxy, &user, "two").await, Ok(me.clone()));
    assert_eq!(lookups(&proxy, "found").await, 2.0);
    // The old one is refused after another read.
    assert_eq!(who(&proxy, &user, "one").await.unwrap_err().0, 1045);
    assert_eq!(lookups(&proxy, "found").await, 3.0);
    // Backend logins use what the last client proved: a fresh connection works with "two".
    let mut a = Conn::new(Opts::from(proxy.opts(&user, "two", None)))
        .await
        .unwrap();
    let mut b = Conn::new(Opts::from(proxy.opts(&user, "two", None)))
        .await
        .unwrap();
    a.query_drop("BEGIN").await.unwrap();
    b.query_drop("BEGIN").await.unwrap();
    let ids: (u64, u64) = (
        a.query_first("SELECT CONNECTION_ID()")
            .await
            .unwrap()
            .unwrap(),
        b.query_first("SELECT CONNECTION_ID()")
            .await
            .unwrap()
            .unwrap(),
    );
    assert_ne!(ids.0, ids.1, "two transactions, two backend connections");
    a.query_drop("COMMIT").await.unwrap();
    b.query_drop("COMMIT").await.unwrap();
    a.disconnect().await.unwrap();
    b.disconnect().await.unwrap();
    // Names nobody has are remembered as absent too.
    assert_eq!(who(&proxy, "nobody_here", "x").await.unwrap_err().0, 1045);
    assert_eq!(lookups(&proxy, "absent").await, 1.0);
    proxy.stop().await;
}

#[tokio::test]
async fn accounts_sluice_cannot_log_in_as_are_refused_with_the_reason() {
    let db = MariaDb::shared();
    let lookup = lookup_account(db);
    let proxy = proxy(db, &lookup, Duration::ZERO).await;
    db.sql("INSTALL PLUGIN IF NOT EXISTS ed25519 SONAME 'auth_ed25519'")
        .unwrap();
    let name = Moto::unique_name("edacct").replace('-', "_");
    db.sql(&format!(
        "CREATE USER '{name}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('pw')"
    ))
    .unwrap();
    let (code, message) = who(&proxy, &name, "pw").await.unwrap_err();
    assert_eq!(code, 1045);
    assert!(
        message.contains("uses the ed25519 plugin")
            && message.contains("IDENTIFIED WITH mysql_native_password"),
        "{message}"
    );
    proxy.stop().await;
}
