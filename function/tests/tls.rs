//! `DB_TLS=required` with `DB_TLS_CA_FILE`: the server's certificate must chain to the bundle,
//! against a MariaDB with TLS directly and through a Sluice with client TLS; against a Sluice
//! that offers no TLS, `required` must refuse to go on in plain text.

mod common;

use std::path::Path;

use common::{config, create_secret, db, moto, schema, secrets_client, sluice};
use serde_json::json;
use sluice_function::{Customer, DbTls, Function};
use sluice_testkit::{MariaDb, MariaDbOptions, Moto, Pki, SluiceOptions, SluiceProcess};

/// A function with `config` handles `event`, which upserts one customer, and answers with it.
async fn assert_upserts(
    config: sluice_function::Config,
    event: &serde_json::Value,
    id: i32,
    name: &str,
) {
    let function = Function::init(config, secrets_client()).await.unwrap();
    let response = function.handle(event.clone()).await.unwrap();
    assert_eq!(
        response.customers,
        vec![Customer {
            id,
            name: Some(name.to_owned())
        }]
    );
    function.shutdown().await;
}

fn arg(name: &str, path: &Path) -> String {
    format!("--{name}={}", path.display())
}

#[tokio::test]
async fn required_tls_verifies_the_server_against_the_ca_bundle() {
    let pki = Pki::generate().unwrap();
    let tls_db = MariaDb::start_with(MariaDbOptions {
        extra_args: vec![
            arg("ssl-cert", &pki.path("server.pem")),
            arg("ssl-key", &pki.path("server-key.pem")),
        ],
        ..MariaDbOptions::default()
    })
    .unwrap();
    // An account that can only log in over TLS: a success proves the session was encrypted.
    tls_db
        .sql(
            "CREATE DATABASE tls; \
             CREATE USER 'tls_app'@'%' IDENTIFIED BY 'tls-only-password' REQUIRE SSL; \
             GRANT ALL PRIVILEGES ON tls.* TO 'tls_app'@'%'",
        )
        .unwrap();
    let arn = moto()
        .create_secret(
            &Moto::unique_name("fn-tls"),
            &json!({"username": "tls_app", "password": "tls-only-password", "dbname": "tls"}),
        )
        .unwrap();
    let event = json!({"customers": [{"id": 1, "name": "encrypted"}]});
    let with_tls = |tls: DbTls| {
        let mut c = config(&arn, tls_db.addr());
        c.tls = tls;
        c
    };

    let tls = with_tls(DbTls::Required {
        ca_file: Some(pki.path("ca.pem")),
    });
    assert_upserts(tls, &event, 1, "encrypted").await;

    // The same account in plain text is refused: the success above really used TLS.
    let plain = Function::init(with_tls(DbTls::Off), secrets_client())
        .await
        .unwrap();
    let err = plain.handle(event.clone()).await.unwrap_err();
    assert_eq!(err.error_type(), "AuthenticationError", "{err}");
    plain.shutdown().await;

    // A bundle that does not hold the server's CA: the certificate is not trusted.
    let untrusted = Function::init(
        with_tls(DbTls::Required {
            ca_file: Some(pki.path("other-ca.pem")),
        }),
        secrets_client(),
    )
    .await
    .unwrap();
    let err = untrusted.handle(event).await.unwrap_err();
    assert_eq!(err.error_type(), "ConnectionError", "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    untrusted.shutdown().await;
}

#[tokio::test]
async fn required_tls_through_sluice() {
    // Sluice with client TLS required, in front of the plain shared MariaDB.
    let pki = Pki::generate().unwrap();
    let proxy = SluiceProcess::start(SluiceOptions {
        extra_toml: format!(
            "[tls]\nmode = \"required\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            pki.path("server.pem").display(),
            pki.path("server-key.pem").display()
        ),
        ..SluiceOptions::for_mariadb(db())
    })
    .unwrap();
    let schema = schema("fn_tls_through");
    let arn = create_secret(db().app_password(), &schema);
    let event = json!({"customers": [{"id": 7, "name": "through sluice"}]});
    let with_ca = |ca: &str| {
        let mut c = config(&arn, proxy.addr());
        c.tls = DbTls::Required {
            ca_file: Some(pki.path(ca)),
        };
        c
    };

    assert_upserts(with_ca("ca.pem"), &event, 7, "through sluice").await;

    // Sluice's certificate is checked like a database's.
    let untrusted = Function::init(with_ca("other-ca.pem"), secrets_client())
        .await
        .unwrap();
    let err = untrusted.handle(event.clone()).await.unwrap_err();
    assert_eq!(err.error_type(), "ConnectionError", "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    untrusted.shutdown().await;

    // Without TLS the function is refused (ERR 3159), not served in plain text.
    let plain = Function::init(config(&arn, proxy.addr()), secrets_client())
        .await
        .unwrap();
    let err = plain.handle(event).await.unwrap_err();
    assert!(err.to_string().contains("3159"), "{err}");
    plain.shutdown().await;
}

#[tokio::test]
async fn required_tls_never_falls_back_to_plain_text() {
    // The shared Sluice offers no TLS: `required` must fail, not carry on unencrypted.
    let pki = Pki::generate().unwrap();
    let schema = schema("fn_tls_sluice");
    let arn = create_secret(db().app_password(), &schema);
    let mut config = config(&arn, sluice().addr());
    config.tls = DbTls::Required {
        ca_file: Some(pki.path("ca.pem")),
    };
    let function = Function::init(config, secrets_client()).await.unwrap();
    let err = function
        .handle(json!({"customers": [{"id": 1, "name": "a"}]}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "ConnectionError", "{err}");
    assert!(err.to_string().contains("does not offer TLS"), "{err}");
    function.shutdown().await;
}
