//! `DB_TLS=required` with `DB_TLS_CA_FILE`: the server's certificate must chain to the bundle.
//!
//! Sluice does not speak TLS to clients yet, so the TLS path is exercised against a MariaDB
//! with TLS directly (PROXY_ENDPOINT pointing at it); against today's Sluice, `required` must
//! refuse to go on in plain text.

mod common;

use std::path::{Path, PathBuf};

use common::{config, create_secret, db, moto, schema, secrets_client, sluice};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use sluice_function::{Customer, DbTls, Function};
use sluice_testkit::{MariaDb, MariaDbOptions, Moto};

/// A CA and a server certificate for 127.0.0.1 signed by it, plus an unrelated CA.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn generate() -> Pki {
        let dir = std::env::temp_dir().join(Moto::unique_name("sluice-fn-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (params, key, cert)
        };
        let (ca_params, ca_key, ca_cert) = ca("sluice test CA");
        let (_, _, other_cert) = ca("some other CA");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        for (name, pem) in [
            ("ca.pem", ca_cert.pem()),
            ("other-ca.pem", other_cert.pem()),
            ("server.pem", cert.pem()),
            ("server-key.pem", key.serialize_pem()),
        ] {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn arg(name: &str, path: &Path) -> String {
    format!("--{name}={}", path.display())
}

#[tokio::test]
async fn required_tls_verifies_the_server_against_the_ca_bundle() {
    let pki = Pki::generate();
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

    let function = Function::init(
        with_tls(DbTls::Required {
            ca_file: Some(pki.path("ca.pem")),
        }),
        secrets_client(),
    )
    .await
    .unwrap();
    let response = function.handle(event.clone()).await.unwrap();
    assert_eq!(
        response.customers,
        vec![Customer {
            id: 1,
            name: Some("encrypted".to_owned())
        }]
    );
    function.shutdown().await;

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
async fn required_tls_never_falls_back_to_plain_text() {
    // Today's Sluice offers no TLS: `required` must fail, not carry on unencrypted.
    let pki = Pki::generate();
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
