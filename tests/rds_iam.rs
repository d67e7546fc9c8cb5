//! Sluice logging in to the database with RDS IAM authentication tokens made from its own AWS
//! credentials, against a MariaDB that asks for the password in clear over TLS, as RDS asks its
//! IAM users (MariaDB's `cleartext_plugin_server` test plugin, which compares what arrives with
//! the account's authentication string). The account accepts exactly the tokens
//! `sluice_iam::rds_token` makes for the seconds Sluice was starting (the same tokens as the
//! AWS SDK's generator, checked in `iam/`), so a login proves Sluice sent a correct token.
//! Sluice refuses to send tokens without verified TLS: such a configuration does not start.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};
use sluice_iam::Credentials;
use sluice_iam::rds_token::{self, Target};
use sluice_testkit::cleartext::mariadb_with_cleartext_plugin;
use sluice_testkit::sluice::sluice_binary;
use sluice_testkit::{Pki, SluiceOptions, SluiceProcess, client_opts};

const ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const REGION: &str = "us-east-1";

/// The AWS environment of the Sluice process: static credentials, nothing from this machine.
fn aws_env() -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ("AWS_REGION", REGION),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

fn whole_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// `CURRENT_USER()` through Sluice as `user`, or the error code of the first failure.
async fn current_user(proxy: &SluiceProcess, user: &str, password: &str) -> Result<String, u16> {
    let attempt = async {
        let mut conn =
            Conn::new(Opts::from(client_opts(proxy.addr(), user, password, None))).await?;
        let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await?;
        conn.disconnect().await?;
        Ok::<_, mysql_async::Error>(who.unwrap_or_default())
    };
    match tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .expect("login in time")
    {
        Ok(who) => Ok(who),
        Err(mysql_async::Error::Server(e)) => Err(e.code),
        Err(other) => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sluice_logs_in_with_an_rds_iam_token_over_verified_tls() {
    let pki = Pki::generate().unwrap();
    let db = mariadb_with_cleartext_plugin(&pki).unwrap_or_else(|e| panic!("{e:#}"));
    // Built before the clock starts: Sluice makes its tokens while it starts.
    sluice_binary().unwrap();
    let ca = pki.path("ca.pem").display().to_string();
    let opts = SluiceOptions {
        backend: db.addr(),
        // What clients log in to Sluice with; the backend logins use tokens.
        users: vec![
            ("iam_app".into(), "client-pw".into()),
            ("iam_wrong".into(), "client-pw".into()),
        ],
        backend_extra_toml: format!("tls = \"verify-ca\"\ntls_ca_file = \"{ca}\""),
        extra_toml: format!(
            "[rds_iam]\nusers = [\"iam_app\", \"iam_wrong\"]\nregion = \"{REGION}\""
        ),
        env: aws_env(),
        ..SluiceOptions::default()
    };
    // A second Sluice lists another host after the database (one that is down): each host
    // gets tokens signed for its own host:port, and its monitor logs in with them too.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let two_hosts = SluiceOptions {
        more_backends: vec![down],
        ..opts.clone()
    };
    let started = whole_seconds(SystemTime::now());
    let (proxy, proxy_two_hosts) = tokio::task::spawn_blocking(move || {
        (SluiceProcess::start(opts), SluiceProcess::start(two_hosts))
    })
    .await
    .unwrap();
    let proxy = proxy.unwrap_or_else(|e| panic!("{e:#}"));
    let proxy_two_hosts = proxy_two_hosts.unwrap_or_else(|e| panic!("{e:#}"));
    let ready = whole_seconds(SystemTime::now());
    assert!(
        ready - started < 20,
        "the Sluices took {}s to start",
        ready - started
    );

    // The account accepts the token of any second Sluice may have signed at.
    let credentials = Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "test");
    let target = Target {
        hostname: "127.0.0.1",
        port: db.port(),
        username: "iam_app",
        region: REGION,
    };
    let alternatives: Vec<String> = (started..=ready)
        .map(|s| {
            let token =
                rds_token::auth_token(&credentials, &target, UNIX_EPOCH + Duration::from_secs(s))
                    .unwrap();
            assert!(
                token.starts_with(&format!(
                    "127.0.0.1:{}/?Action=connect&DBUser=iam_app&",
                    db.port()
                )),
                "{token}"
            );
            format!("cleartext_plugin_server USING '{token}'")
        })
        .collect();
    db.sql(&format!(
        "CREATE USER 'iam_app'@'%' IDENTIFIED VIA {} REQUIRE SSL; \
         GRANT ALL ON *.* TO 'iam_app'@'%'; \
         CREATE USER 'iam_wrong'@'%' IDENTIFIED VIA cleartext_plugin_server USING 'not-a-token' \
         REQUIRE SSL",
        alternatives.join(" OR ")
    ))
    .unwrap();

    for proxy in [&proxy, &proxy_two_hosts] {
        assert_eq!(
            current_user(proxy, "iam_app", "client-pw").await,
            Ok("iam_app@%".to_owned())
        );
    }
    // An account whose string is not the token: the database refuses Sluice (ERR 9502).
    assert_eq!(
        current_user(&proxy, "iam_wrong", "client-pw").await,
        Err(9502)
    );
    // The token never reaches Sluice's log.
    for proxy in [&proxy, &proxy_two_hosts] {
        let log = proxy.log_tail();
        assert!(!log.contains("X-Amz-Signature"), "{log}");
    }
}

#[test]
fn tokens_are_never_configured_without_verified_tls() {
    let binary = sluice_binary().unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-rds-iam-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for tls in ["disabled", "preferred"] {
        let config = dir.join(format!("{tls}.toml"));
        std::fs::write(
            &config,
            format!(
                "[backend]\naddress = \"db.example.internal:3306\"\ntls = \"{tls}\"\n\
                 [rds_iam]\nusers = [\"app\"]\n"
            ),
        )
        .unwrap();
        let out = Command::new(&binary)
            .arg("--config")
            .arg(&config)
            .arg("--check")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{tls}: {stderr}");
        assert!(
            stderr.contains("rds_iam.users") && stderr.contains("verify-ca or verify-identity"),
            "{tls}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
