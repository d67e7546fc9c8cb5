//! MariaDB's ed25519 authentication both ways: clients (the `mariadb` CLI, whose libmariadb
//! loads `client_ed25519`, and mysql_async with its `client_ed25519` feature) log in to Sluice
//! with it, and Sluice logs in to a MariaDB account `IDENTIFIED VIA ed25519`, including through
//! COM_CHANGE_USER.

mod common;

use common::{TestProxy, config_for};
use mysql_async::prelude::*;
use mysql_async::{ChangeUserOpts, Conn, Opts};
use sluice::config::{AuthPluginName, Secret, UserConfig};
use sluice_testkit::{MariaDb, Moto, mariadb_cli_async};

/// A fresh MariaDB account `IDENTIFIED VIA ed25519` with `password` (the plugin installed on
/// first use); returns its name.
fn ed25519_account(db: &MariaDb, password: &str) -> String {
    db.sql("INSTALL PLUGIN IF NOT EXISTS ed25519 SONAME 'auth_ed25519'")
        .expect("install the ed25519 plugin");
    let name = Moto::unique_name("ed").replace('-', "_");
    db.sql(&format!(
        "CREATE USER '{name}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{password}'); \
         GRANT ALL ON *.* TO '{name}'@'%'"
    ))
    .expect("create an ed25519 account");
    let plugin = db
        .sql(&format!(
            "SELECT plugin FROM mysql.user WHERE user = '{name}'"
        ))
        .unwrap();
    assert_eq!(plugin.trim(), "ed25519");
    name
}

/// A proxy whose users are the sandbox's plus `extra`.
async fn proxy_with(db: &MariaDb, extra: &[(&str, &str, AuthPluginName)]) -> TestProxy {
    let mut config = config_for(db, 4);
    for (name, password, plugin) in extra {
        config.users.push(UserConfig {
            username: (*name).into(),
            password: Secret::new(*password),
            auth_plugin: *plugin,
        });
    }
    config.validate().expect("valid configuration");
    TestProxy::start_with(db, config).await
}

async fn current_user(proxy: &TestProxy, user: &str, password: &str) -> Result<String, u16> {
    match Conn::new(Opts::from(proxy.opts(user, password, None))).await {
        Ok(mut conn) => {
            let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
            conn.disconnect().await.unwrap();
            Ok(who.unwrap_or_default())
        }
        Err(mysql_async::Error::Server(e)) => Err(e.code),
        Err(other) => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn clients_log_in_to_sluice_with_ed25519() {
    let db = MariaDb::shared();
    // Clients answer ed25519; Sluice logs in to the database as `app` with its password.
    let mut config = config_for(db, 4);
    for u in &mut config.users {
        u.auth_plugin = AuthPluginName::Ed25519;
    }
    let proxy = TestProxy::start_with(db, config).await;

    // mysql_async (client_ed25519 feature).
    assert_eq!(
        current_user(&proxy, "app", &proxy.app_password).await,
        Ok("app@%".into())
    );
    assert_eq!(current_user(&proxy, "app", "wrong").await, Err(1045));

    // The mariadb CLI (libmariadb's client_ed25519 plugin).
    let out = mariadb_cli_async(
        proxy.addr,
        "app",
        &proxy.app_password,
        None,
        &[
            "--batch",
            "--skip-column-names",
            "-e",
            "SELECT CURRENT_USER(), 6 * 7",
        ],
        None,
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "app@%\t42\n");
    let out = mariadb_cli_async(proxy.addr, "app", "wrong", None, &["-e", "SELECT 1"], None)
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ERROR 1045"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // COM_CHANGE_USER to an ed25519 user gets a fresh nonce and checks the signature.
    let mut conn = Conn::new(Opts::from(proxy.opts("app", &proxy.app_password, None)))
        .await
        .unwrap();
    conn.change_user(
        ChangeUserOpts::default()
            .with_user(Some("other".into()))
            .with_pass(Some(proxy.other_password.clone())),
    )
    .await
    .unwrap();
    let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.as_deref(), Some("other@%"));
    let refused = conn
        .change_user(
            ChangeUserOpts::default()
                .with_user(Some("app".into()))
                .with_pass(Some("wrong".into())),
        )
        .await;
    assert!(
        matches!(&refused, Err(mysql_async::Error::Server(e)) if e.code == 1045),
        "{refused:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn sluice_logs_in_to_ed25519_accounts() {
    let db = MariaDb::shared();
    let password = "ed-pw-Ünïcode-42";
    let account = ed25519_account(db, password);
    // The account answered directly, as a control.
    let direct = Conn::new(Opts::from(db.opts(&account, password, None))).await;
    assert!(direct.is_ok(), "{direct:?}");
    direct.unwrap().disconnect().await.unwrap();

    // Clients use mysql_native_password with Sluice; Sluice answers the database's ed25519.
    let proxy = proxy_with(
        db,
        &[(&account, password, AuthPluginName::MysqlNativePassword)],
    )
    .await;
    assert_eq!(
        current_user(&proxy, &account, password).await,
        Ok(format!("{account}@%"))
    );
    // And with ed25519 on both sides.
    let both = format!("{account}_both");
    db.sql(&format!(
        "CREATE USER '{both}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{password}'); \
         GRANT ALL ON *.* TO '{both}'@'%'"
    ))
    .unwrap();
    proxy.stop().await;
    let proxy = proxy_with(db, &[(&both, password, AuthPluginName::Ed25519)]).await;
    let mut conn = Conn::new(Opts::from(proxy.opts(&both, password, None)))
        .await
        .unwrap();
    let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who, Some(format!("{both}@%")));
    // Leaving a schema makes Sluice log in to the database again (its own COM_CHANGE_USER,
    // answered with ed25519).
    conn.query_drop("CREATE DATABASE IF NOT EXISTS ed_schema")
        .await
        .unwrap();
    conn.query_drop("USE ed_schema").await.unwrap();
    conn.change_user(ChangeUserOpts::default().with_db_name(None))
        .await
        .unwrap();
    let schema: Option<Option<String>> = conn.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(schema, Some(None));
    conn.disconnect().await.unwrap();

    // A wrong password in Sluice's configuration: the database refuses Sluice (ERR 9502).
    let wrong = proxy_with(
        db,
        &[(&account, "not-it", AuthPluginName::MysqlNativePassword)],
    )
    .await;
    let e = async {
        let mut conn = Conn::new(Opts::from(wrong.opts(&account, "not-it", None))).await?;
        conn.query_drop("SELECT 1").await
    }
    .await
    .unwrap_err();
    assert!(
        matches!(&e, mysql_async::Error::Server(s) if s.code == 9502),
        "{e:?}"
    );
    wrong.stop().await;
    proxy.stop().await;
}
