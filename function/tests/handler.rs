//! The function in-process against a real MariaDB through a real Sluice, with the secret served
//! by moto_server.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Logs, config, create_secret, db, moto, rds_secret, schema, secrets_client, sluice};
use serde_json::{Value, json};
use sluice_function::{Customer, Error, Function, Response};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

fn customer(id: i32, name: &str) -> Customer {
    Customer {
        id,
        name: Some(name.to_owned()),
    }
}

#[tokio::test]
async fn first_run_creates_and_inserts_second_run_is_idempotent() {
    let logs = Logs::default();
    let _log = tracing::subscriber::set_default(sluice_function::json_logs(
        tracing::Level::INFO,
        logs.clone(),
    ));
    let schema = schema("fn_first");
    let arn = create_secret(db().app_password(), &schema);
    let function = Function::init(config(&arn, sluice().addr()), secrets_client())
        .await
        .unwrap();
    let event = json!({"customers": [{"id": 2, "name": "Bo ✓"}, {"id": 1, "name": "O'Brien"}]});

    let first = function.handle(event.clone()).await.unwrap();
    let expected = Response {
        database: schema.clone(),
        upserted: 2,
        customers: vec![customer(1, "O'Brien"), customer(2, "Bo ✓")],
    };
    assert_eq!(first, expected);
    assert_eq!(common::table(&schema), "1\tO'Brien\n2\tBo ✓\n");

    // The seed's plain INSERT failed here with a duplicate key.
    let second = function.handle(event).await.unwrap();
    assert_eq!(second, expected);
    assert_eq!(common::table(&schema), "1\tO'Brien\n2\tBo ✓\n");

    // A changed name is an update, not a new row.
    let third = function
        .handle(json!({"customers": [{"id": 2, "name": "Bo"}, {"id": 3, "name": "Cy"}]}))
        .await
        .unwrap();
    assert_eq!(third.customers, vec![customer(2, "Bo"), customer(3, "Cy")]);
    assert_eq!(common::table(&schema), "1\tO'Brien\n2\tBo\n3\tCy\n");
    assert_eq!(
        function.secret_fetches(),
        1,
        "the secret is read once, at init"
    );
    function.shutdown().await;

    // What the seed logs: the connection's success and the result; never the password.
    let lines = logs.lines();
    let success = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("SUCCESS"))
        })
        .unwrap_or_else(|| panic!("no connection success in:\n{}", logs.text()));
    assert_eq!(success["user"], "app");
    assert_eq!(success["database"], schema.as_str());
    assert_eq!(success["endpoint"], sluice().addr().to_string());
    assert_eq!(success["level"], "INFO");
    let results: Vec<&Value> = lines.iter().filter(|l| l.get("rows").is_some()).collect();
    assert_eq!(results.len(), 3, "{}", logs.text());
    let rows: Value = serde_json::from_str(results[0]["rows"].as_str().unwrap()).unwrap();
    assert_eq!(
        rows,
        json!([{"id": 1, "name": "O'Brien"}, {"id": 2, "name": "Bo ✓"}])
    );
    assert!(
        lines.iter().any(|l| l["message"] == "init done"),
        "{}",
        logs.text()
    );
    assert!(!logs.text().contains(db().app_password()));
}

#[tokio::test]
async fn bad_event_is_refused_before_touching_the_database() {
    let schema = schema("fn_bad");
    let arn = create_secret(db().app_password(), &schema);
    let function = Function::init(config(&arn, sluice().addr()), secrets_client())
        .await
        .unwrap();
    for (event, field) in [
        (json!({"orders": []}), "customers"),
        (
            json!({"customers": [{"id": 1, "name": "a"}, {"id": "x", "name": "b"}]}),
            "customers[1].id",
        ),
        (
            json!({"customers": [{"id": 1, "name": "n".repeat(256)}]}),
            "customers[0].name",
        ),
        (json!({"customers": [{"id": 1}]}), "customers[0].name"),
    ] {
        let err = function.handle(event.clone()).await.unwrap_err();
        assert!(
            matches!(&err, Error::BadEvent { field: f, .. } if f == field),
            "{event}: {err:?}"
        );
        assert_eq!(err.error_type(), "BadEvent");
        assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
    }
    // Not even the table was created: validation comes first.
    let tables = db().sql(&format!("SHOW TABLES FROM `{schema}`")).unwrap();
    assert_eq!(tables, "");
    function.shutdown().await;
}

#[tokio::test]
async fn wrong_password_reads_the_secret_again_then_fails_as_authentication() {
    let schema = schema("fn_wrong");
    let arn = create_secret("not-the-password", &schema);
    let function = Function::init(config(&arn, sluice().addr()), secrets_client())
        .await
        .expect("a refused first login does not fail init");
    // Init read the secret, was refused, and read it once more.
    assert_eq!(function.secret_fetches(), 2);

    let err = function
        .handle(json!({"customers": [{"id": 1, "name": "a"}]}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "AuthenticationError", "{err}");
    let message = err.to_string();
    assert!(message.contains("authentication as `app`"), "{message}");
    assert!(message.contains("1045"), "{message}");
    assert!(
        message.contains("also after reading the secret again"),
        "{message}"
    );
    assert!(!message.contains("not-the-password"), "{message}");
    assert_eq!(
        function.secret_fetches(),
        3,
        "one more read for the refused invocation"
    );
    function.shutdown().await;
}

#[tokio::test]
async fn rotated_secret_is_read_again_and_the_login_retried() {
    let schema = schema("fn_rotate");
    let arn = create_secret("old-password", &schema);
    let function = Function::init(config(&arn, sluice().addr()), secrets_client())
        .await
        .unwrap();
    assert_eq!(function.secret_fetches(), 2);

    // The rotation lands after init: the pool still logs in with the old password.
    moto()
        .put_secret_value(
            &arn,
            &rds_secret(db().app_password(), sluice().addr(), &schema),
        )
        .unwrap();
    let response = function
        .handle(json!({"customers": [{"id": 7, "name": "rotated"}]}))
        .await
        .unwrap();
    assert_eq!(response.customers, vec![customer(7, "rotated")]);
    assert_eq!(function.secret_fetches(), 3);

    // From now on the new credentials are in use: no further reads.
    function
        .handle(json!({"customers": [{"id": 8, "name": "again"}]}))
        .await
        .unwrap();
    assert_eq!(function.secret_fetches(), 3);
    assert_eq!(common::table(&schema), "7\trotated\n8\tagain\n");
    function.shutdown().await;
}

#[tokio::test]
async fn refused_connection_is_a_connection_error_at_once() {
    // A port nobody listens on: bind, note the port, close.
    let closed = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap()
    };
    let schema = schema("fn_refused");
    let arn = create_secret(db().app_password(), &schema);
    let started = Instant::now();
    let function = Function::init(config(&arn, closed), secrets_client())
        .await
        .expect("an unreachable proxy does not fail init");
    let err = function
        .handle(json!({"customers": [{"id": 1, "name": "a"}]}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "ConnectionError", "{err}");
    let message = err.to_string();
    assert!(message.contains(&closed.to_string()), "{message}");
    assert!(message.to_lowercase().contains("refused"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        function.secret_fetches(),
        1,
        "a refused TCP connection is not a refused login"
    );
    function.shutdown().await;
}

#[tokio::test]
async fn silent_proxy_is_a_connection_error_within_the_timeout() {
    // Accepts TCP connections and never says a word: what a black-holed route looks like
    // after the handshake.
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let schema = schema("fn_silent");
    let arn = create_secret(db().app_password(), &schema);
    let mut config = config(&arn, addr);
    config.connect_timeout = Duration::from_millis(500);
    let function = Function::init(config, secrets_client()).await.unwrap();

    let started = Instant::now();
    let err = function
        .handle(json!({"customers": [{"id": 1, "name": "a"}]}))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.error_type(), "ConnectionError", "{err}");
    assert!(
        err.to_string().contains("no connection within 500 ms"),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    held.abort();
}

#[tokio::test]
async fn missing_secret_fails_init_with_a_secret_error() {
    let arn = format!(
        "arn:aws:secretsmanager:{}:123456789012:secret:no-such-secret-{}",
        sluice_testkit::Moto::REGION,
        std::process::id()
    );
    let err = Function::init(config(&arn, sluice().addr()), secrets_client())
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "SecretError", "{err}");
    assert!(
        err.to_string().contains("ResourceNotFoundException"),
        "{err}"
    );
}

#[tokio::test]
async fn no_database_anywhere_is_a_configuration_error() {
    let arn = moto()
        .create_secret(
            &sluice_testkit::Moto::unique_name("fn-nodb"),
            &json!({"username": "app", "password": db().app_password()}),
        )
        .unwrap();
    let err = Function::init(config(&arn, sluice().addr()), secrets_client())
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "ConfigurationError", "{err}");
    assert!(err.to_string().contains("DB_NAME"), "{err}");

    // DB_NAME fills the gap.
    let schema = schema("fn_dbname");
    let mut config = config(&arn, sluice().addr());
    config.db_name = Some(schema.clone());
    let function = Function::init(config, secrets_client()).await.unwrap();
    let response = function
        .handle(json!({"customers": [{"id": 1, "name": "a"}]}))
        .await
        .unwrap();
    assert_eq!(response.database, schema);
    function.shutdown().await;
}

/// A TCP forwarder to Sluice that can cut every connection it carries, as when a frozen Lambda
/// instance thaws to find its pooled connection gone.
struct Forwarder {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    cut: watch::Sender<u64>,
}

impl Forwarder {
    async fn start(target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (cut, _) = watch::channel(0u64);
        let (count, cuts) = (accepted.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Forwarder {
            addr,
            accepted,
            cut,
        }
    }

    fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

#[tokio::test]
async fn dead_pooled_connection_is_replaced_transparently() {
    let logs = Logs::default();
    let _log = tracing::subscriber::set_default(sluice_function::json_logs(
        tracing::Level::INFO,
        logs.clone(),
    ));
    let forwarder = Forwarder::start(sluice().addr()).await;
    let schema = schema("fn_thaw");
    let arn = create_secret(db().app_password(), &schema);
    let function = Function::init(config(&arn, forwarder.addr), secrets_client())
        .await
        .unwrap();
    function
        .handle(json!({"customers": [{"id": 1, "name": "before"}]}))
        .await
        .unwrap();
    assert_eq!(
        forwarder.accepted.load(Ordering::SeqCst),
        1,
        "one pooled connection"
    );

    forwarder.cut_all();
    let response = function
        .handle(json!({"customers": [{"id": 2, "name": "after"}]}))
        .await
        .unwrap();
    assert_eq!(response.customers, vec![customer(2, "after")]);
    assert_eq!(
        forwarder.accepted.load(Ordering::SeqCst),
        2,
        "one new connection"
    );
    assert_eq!(common::table(&schema), "1\tbefore\n2\tafter\n");
    function.shutdown().await;
}
