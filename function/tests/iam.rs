//! The function in IAM mode against a real Sluice (client TLS, IAM logins checked with
//! moto_server as STS) and a real MariaDB: no secret is read, the role's credentials sign the
//! token, and a role Sluice does not map gets an AuthenticationError that says why.

mod common;

use std::collections::HashMap;

use aws_credential_types::provider::SharedCredentialsProvider;
use common::{db, iam_env, iam_sluice, schema};
use serde_json::json;
use sluice_function::{Config, Customer, Error, Function, IamSigner};
use sluice_testkit::{AwsKeys, IamMoto, Moto};

/// The function's configuration from `env`, as `Config::from_env` reads it on Lambda.
fn config(env: &[(&'static str, String)]) -> Config {
    let vars: HashMap<&str, String> = env.iter().cloned().collect();
    Config::from_lookup(|k| vars.get(k).cloned()).expect("IAM mode configuration")
}

/// A signer holding `keys`, as the execution role's credentials.
fn signer(config: &Config, keys: &AwsKeys) -> IamSigner {
    let settings = config.iam.clone().expect("IAM mode");
    IamSigner::new(
        &settings,
        SharedCredentialsProvider::new(keys.credentials()),
        IamMoto::shared().region().to_owned(),
    )
}

fn role_session(prefix: &str) -> AwsKeys {
    let aws = IamMoto::shared();
    let role = aws
        .create_role(&Moto::unique_name(prefix))
        .expect("create role");
    aws.assume_role(&role, "lambda-instance")
        .expect("assume role")
}

#[tokio::test]
async fn iam_mode_logs_in_with_the_role_and_no_secret() {
    let schema = schema("fn_iam");
    // The CA as text, as the CDK stack gives it (a Lambda package holds no extra files).
    let env: Vec<(&'static str, String)> = iam_env(&schema)
        .into_iter()
        .map(|(k, v)| match k {
            "DB_TLS_CA_FILE" => (
                "DB_TLS_CA_PEM",
                std::fs::read_to_string(&v).expect("read the CA"),
            ),
            _ => (k, v),
        })
        .collect();
    let config = config(&env);
    assert!(config.tls_ca_pem.is_some());
    let keys = role_session("fn-iam-orders");
    let function = Function::init_iam(config.clone(), signer(&config, &keys))
        .await
        .expect("init");
    let response = function
        .handle(json!({"customers": [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Grace"}]}))
        .await
        .expect("invocation");
    assert_eq!(response.database, schema);
    assert_eq!(
        response.customers,
        vec![
            Customer {
                id: 1,
                name: Some("Ada".into()),
            },
            Customer {
                id: 2,
                name: Some("Grace".into()),
            },
        ]
    );
    assert_eq!(common::table(&schema), "1\tAda\n2\tGrace\n");
    assert_eq!(function.secret_fetches(), 1, "one token, no secret read");
    // The role's token went to STS once (through Sluice).
    assert_eq!(
        IamMoto::shared()
            .sts_calls_signed_by(&keys.access_key_id)
            .unwrap(),
        1
    );
    function.shutdown().await;
    let _ = iam_sluice();
    let _ = db();
}

#[tokio::test]
async fn a_role_sluice_does_not_map_is_refused_with_the_reason() {
    let schema = schema("fn_iam_refused");
    let config = config(&iam_env(&schema));
    let keys = role_session("not-mapped");
    let function = Function::init_iam(config.clone(), signer(&config, &keys))
        .await
        .expect("init succeeds; the first connection failing is not fatal");
    let err = function
        .handle(json!({"customers": []}))
        .await
        .expect_err("refused");
    match &err {
        Error::Authentication { user, message, .. } => {
            assert_eq!(user, "app");
            assert!(
                message.contains("ERROR 1045")
                    && message.contains("may not log in as")
                    && message.contains("also with a freshly signed token"),
                "{message}"
            );
        }
        other => panic!("expected an AuthenticationError, got {other:?}"),
    }
    assert_eq!(err.error_type(), "AuthenticationError");
    // It signed a fresh token once more before giving up (the login might have been stale).
    assert_eq!(function.secret_fetches(), 3);
    function.shutdown().await;
}
