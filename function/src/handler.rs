//! The function itself: init (secret, pool, first connection) and one invocation (validate the
//! event, create the table if needed, upsert, read the rows back).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mysql_async::{Conn, Pool};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::RwLock;
use tracing::{info, warn};

use crate::config::Config;
use crate::db::{self, ConnectFailure, Customer, Stage};
use crate::error::Error;
use crate::iam::IamSigner;
use crate::secret::{DbSecret, SecretsClient};

/// Most customers one event may carry (one statement each way, bounded in size).
pub const MAX_CUSTOMERS: usize = 1000;
/// Longest name, in characters: the column is `VARCHAR(255)`.
pub const MAX_NAME_CHARS: usize = 255;
/// How long a broken connection may take to close before it is abandoned.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What an invocation returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The database that holds the `Customer` table.
    pub database: String,
    /// How many customers the event upserted.
    pub upserted: usize,
    /// The event's customers as stored now, in id order.
    pub customers: Vec<Customer>,
}

/// Validates the event `{"customers": [{"id": 1, "name": "..."}]}`; errors name the field.
///
/// Other top-level fields are ignored. Ids must be distinct 32-bit integers and names non-empty
/// strings of at most [`MAX_NAME_CHARS`] characters; an empty list is allowed.
pub fn parse_event(event: &Value) -> Result<Vec<Customer>, Error> {
    let Value::Object(event) = event else {
        return Err(Error::bad_event(
            "(event)",
            format!("must be a JSON object, got {}", describe(event)),
        ));
    };
    let list = match event.get("customers") {
        None | Some(Value::Null) => return Err(Error::bad_event("customers", "is missing")),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(Error::bad_event(
                "customers",
                format!(
                    "must be an array of {{\"id\": integer, \"name\": string}}, got {}",
                    describe(other)
                ),
            ));
        }
    };
    if list.len() > MAX_CUSTOMERS {
        return Err(Error::bad_event(
            "customers",
            format!("has {} entries; at most {MAX_CUSTOMERS}", list.len()),
        ));
    }
    let mut customers = Vec::with_capacity(list.len());
    let mut seen = std::collections::HashMap::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let field = |name: &str| format!("customers[{i}].{name}");
        let Value::Object(entry) = entry else {
            return Err(Error::bad_event(
                format!("customers[{i}]"),
                format!("must be an object, got {}", describe(entry)),
            ));
        };
        let id = match entry.get("id") {
            None | Some(Value::Null) => return Err(Error::bad_event(field("id"), "is missing")),
            Some(v) => v
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| {
                    Error::bad_event(
                        field("id"),
                        format!(
                            "must be an integer from {} to {}, got {}",
                            i32::MIN,
                            i32::MAX,
                            describe(v)
                        ),
                    )
                })?,
        };
        if let Some(first) = seen.insert(id, i) {
            return Err(Error::bad_event(
                field("id"),
                format!("repeats id {id} of customers[{first}]"),
            ));
        }
        let name = match entry.get("name") {
            None | Some(Value::Null) => {
                return Err(Error::bad_event(field("name"), "is missing"));
            }
            Some(Value::String(s)) if s.is_empty() => {
                return Err(Error::bad_event(field("name"), "must not be empty"));
            }
            Some(Value::String(s)) => {
                let chars = s.chars().count();
                if chars > MAX_NAME_CHARS {
                    return Err(Error::bad_event(
                        field("name"),
                        format!("is {chars} characters long; at most {MAX_NAME_CHARS}"),
                    ));
                }
                s.clone()
            }
            Some(other) => {
                return Err(Error::bad_event(
                    field("name"),
                    format!("must be a string, got {}", describe(other)),
                ));
            }
        };
        customers.push(Customer {
            id,
            name: Some(name),
        });
    }
    Ok(customers)
}

/// A short description of a JSON value for error messages.
fn describe(v: &Value) -> String {
    let kind = match v {
        Value::Null => return "null".to_owned(),
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "the number",
        Value::String(_) => "the string",
        Value::Array(_) => return "an array".to_owned(),
        Value::Object(_) => return "an object".to_owned(),
    };
    let mut text = v.to_string();
    if text.chars().count() > 40 {
        text = text.chars().take(40).collect::<String>() + "...";
    }
    format!("{kind} {text}")
}

/// The credentials in use and the pool that logs in with them.
#[derive(Debug)]
struct DbState {
    secret: DbSecret,
    database: String,
    pool: Pool,
}

impl DbState {
    fn new(config: &Config, secret: DbSecret, ca: Option<&[u8]>) -> Result<DbState, Error> {
        let database = db::database(config, &secret)?;
        let pool = db::pool(db::opts(config, &secret, &database, ca));
        Ok(DbState {
            secret,
            database,
            pool,
        })
    }
}

/// Where the database login comes from.
#[derive(Debug)]
enum Source {
    /// The secret named by `SECRET_ARN`.
    Secret(SecretsClient),
    /// An IAM token signed with the function's own credentials (`AUTH_MODE=iam`).
    Iam(IamSigner),
}

impl Source {
    /// How a refused login was retried, for its error message.
    fn retried(&self) -> &'static str {
        match self {
            Source::Secret(_) => "also after reading the secret again",
            Source::Iam(_) => "also with a freshly signed token",
        }
    }

    async fn fetch(&self, config: &Config) -> Result<DbSecret, Error> {
        match self {
            Source::Secret(client) => client.fetch(&config.secret_arn).await,
            Source::Iam(signer) => signer.login().await,
        }
    }
}

/// One function instance: configuration, the secret and a small pool, kept across invocations.
#[derive(Debug)]
pub struct Function {
    config: Config,
    source: Source,
    ca: Option<Vec<u8>>,
    state: RwLock<Arc<DbState>>,
    secret_fetches: AtomicU64,
}

impl Function {
    /// Init: reads the secret once, opens the pool and makes the first connection.
    ///
    /// Fails on bad configuration or an unreadable secret. A first connection that fails is
    /// logged and not fatal: each invocation tries again and reports the failure's class.
    pub async fn init(config: Config, secrets: SecretsClient) -> Result<Function, Error> {
        Self::init_from(config, Source::Secret(secrets)).await
    }

    /// Init in IAM mode: no secret; `signer` makes the token the function logs in with.
    pub async fn init_iam(config: Config, signer: IamSigner) -> Result<Function, Error> {
        Self::init_from(config, Source::Iam(signer)).await
    }

    async fn init_from(config: Config, source: Source) -> Result<Function, Error> {
        crate::install_crypto_provider();
        let started = Instant::now();
        let ca = db::load_ca(&config)?;
        let secret = source.fetch(&config).await?;
        let secret_ms = started.elapsed().as_millis() as u64;
        let state = DbState::new(&config, secret, ca.as_deref())?;
        let function = Function {
            config,
            source,
            ca,
            state: RwLock::new(Arc::new(state)),
            secret_fetches: AtomicU64::new(1),
        };
        let first = function.check_connection().await;
        let init_ms = started.elapsed().as_millis() as u64;
        match first {
            Ok(()) => info!(secret_ms, init_ms, "init done"),
            Err(e) => warn!(
                secret_ms,
                init_ms,
                error_type = e.error_type(),
                error = %e,
                "init done, but the first connection failed; invocations will try again"
            ),
        }
        Ok(function)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How many times this instance has read the secret, or signed a token in IAM mode (1
    /// after init, +1 per refused login).
    pub fn secret_fetches(&self) -> u64 {
        self.secret_fetches.load(Ordering::Relaxed)
    }

    /// Opens (or reuses) a connection and gives it back to the pool.
    pub async fn check_connection(&self) -> Result<(), Error> {
        let (_, conn) = self.connect().await?;
        drop(conn);
        Ok(())
    }

    /// One invocation: validates `event`, then creates the table if needed, upserts the
    /// customers and returns them as stored.
    pub async fn handle(&self, event: Value) -> Result<Response, Error> {
        let customers = parse_event(&event)?;
        let mut retried = false;
        loop {
            let (state, mut conn) = self.connect().await?;
            match db::upsert(&mut conn, &customers).await {
                Ok(rows) => {
                    info!(
                        database = %state.database,
                        upserted = customers.len(),
                        rows = %serde_json::to_string(&rows).unwrap_or_default(),
                        "the following customers are in the database"
                    );
                    return Ok(Response {
                        database: state.database.clone(),
                        upserted: customers.len(),
                        customers: rows,
                    });
                }
                // A pooled connection may have died while the instance was frozen; the work
                // is idempotent, so try once more on a fresh connection.
                Err((statement, e)) if !retried && db::is_broken_connection(&e) => {
                    warn!(statement, error = %e, "the connection broke; retrying on a new one");
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.disconnect()).await;
                    retried = true;
                }
                Err((statement, e)) => {
                    let err = db::classify(
                        &self.config,
                        &state.secret.username,
                        Stage::Statement(statement),
                        &e,
                    );
                    warn!(error_type = err.error_type(), error = %err, "invocation failed");
                    return Err(err);
                }
            }
        }
    }

    /// Closes the pool's connections (tests and measurements; Lambda just freezes or ends).
    pub async fn shutdown(self) {
        let state = self.state.into_inner();
        let _ = state.pool.clone().disconnect().await;
    }

    /// A connection with the current credentials; on a refused login, the secret is read
    /// again once and the login retried with what it holds now.
    async fn connect(&self) -> Result<(Arc<DbState>, Conn), Error> {
        let state = self.state.read().await.clone();
        let started = Instant::now();
        let denied = match db::get_conn(&self.config, &state.pool).await {
            Ok(conn) => {
                self.log_connected(&state, started);
                return Ok((state, conn));
            }
            Err(ConnectFailure::Driver(e)) if db::is_access_denied(&e) => e,
            Err(failure) => return Err(failure.classify(&self.config, &state.secret.username)),
        };
        warn!(
            user = %state.secret.username,
            error = %denied,
            "the proxy refused the login; getting the credentials again"
        );
        let state = self.refresh().await?;
        let started = Instant::now();
        match db::get_conn(&self.config, &state.pool).await {
            Ok(conn) => {
                self.log_connected(&state, started);
                Ok((state, conn))
            }
            Err(failure) => Err(
                match failure.classify(&self.config, &state.secret.username) {
                    Error::Authentication {
                        user,
                        endpoint,
                        message,
                    } => Error::Authentication {
                        user,
                        endpoint,
                        message: format!("{message} ({})", self.source.retried()),
                    },
                    other => other,
                },
            ),
        }
    }

    fn log_connected(&self, state: &DbState, started: Instant) {
        info!(
            endpoint = %self.config.endpoint(),
            database = %state.database,
            user = %state.secret.username,
            tls = !matches!(self.config.tls, crate::config::DbTls::Off),
            connect_ms = started.elapsed().as_millis() as u64,
            "SUCCESS: connection to the database proxy succeeded"
        );
    }

    /// Reads the secret again (or signs a new token); new credentials replace the pool, the
    /// old one closes.
    async fn refresh(&self) -> Result<Arc<DbState>, Error> {
        let secret = self.source.fetch(&self.config).await?;
        self.secret_fetches.fetch_add(1, Ordering::Relaxed);
        let mut current = self.state.write().await;
        if secret == current.secret {
            info!("the credentials are unchanged");
            return Ok(current.clone());
        }
        let fresh = Arc::new(DbState::new(&self.config, secret, self.ca.as_deref())?);
        info!(user = %fresh.secret.username, "the credentials changed; logging in with the new ones");
        let old = std::mem::replace(&mut *current, fresh.clone());
        // The old pool closes once connections still out (if any) come back.
        let pool = old.pool.clone();
        tokio::spawn(async move {
            let _ = pool.disconnect().await;
        });
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bad(event: Value) -> (String, String) {
        match parse_event(&event) {
            Err(Error::BadEvent { field, problem }) => (field, problem),
            other => panic!("expected a bad event for {event}, got {other:?}"),
        }
    }

    #[test]
    fn good_event() {
        let customers = parse_event(&json!({
            "customers": [{"id": 1, "name": "Ann"}, {"id": -5, "name": "Bo ✓", "extra": true}],
            "source": "test"
        }))
        .unwrap();
        assert_eq!(
            customers,
            vec![
                Customer {
                    id: 1,
                    name: Some("Ann".to_owned())
                },
                Customer {
                    id: -5,
                    name: Some("Bo ✓".to_owned())
                },
            ]
        );
        assert_eq!(parse_event(&json!({"customers": []})).unwrap(), vec![]);
        let longest = "ü".repeat(MAX_NAME_CHARS);
        assert!(parse_event(&json!({"customers": [{"id": 1, "name": longest}]})).is_ok());
    }

    #[test]
    fn bad_events_name_the_field() {
        let cases = [
            (json!([1]), "(event)", "must be a JSON object"),
            (json!({}), "customers", "is missing"),
            (json!({"customers": null}), "customers", "is missing"),
            (
                json!({"customers": {"id": 1}}),
                "customers",
                "must be an array",
            ),
            (
                json!({"customers": [7]}),
                "customers[0]",
                "must be an object, got the number 7",
            ),
            (
                json!({"customers": [{"name": "a"}]}),
                "customers[0].id",
                "is missing",
            ),
            (
                json!({"customers": [{"id": 1, "name": "a"}, {"id": "2", "name": "b"}]}),
                "customers[1].id",
                "must be an integer from -2147483648 to 2147483647, got the string \"2\"",
            ),
            (
                json!({"customers": [{"id": 1.5, "name": "a"}]}),
                "customers[0].id",
                "1.5",
            ),
            (
                json!({"customers": [{"id": 2147483648_i64, "name": "a"}]}),
                "customers[0].id",
                "2147483648",
            ),
            (
                json!({"customers": [{"id": 1}]}),
                "customers[0].name",
                "is missing",
            ),
            (
                json!({"customers": [{"id": 1, "name": 3}]}),
                "customers[0].name",
                "must be a string",
            ),
            (
                json!({"customers": [{"id": 1, "name": ""}]}),
                "customers[0].name",
                "must not be empty",
            ),
            (
                json!({"customers": [{"id": 1, "name": "x".repeat(256)}]}),
                "customers[0].name",
                "is 256 characters long; at most 255",
            ),
            (
                json!({"customers": [{"id": 4, "name": "a"}, {"id": 4, "name": "b"}]}),
                "customers[1].id",
                "repeats id 4 of customers[0]",
            ),
        ];
        for (event, field, problem) in cases {
            let (f, p) = bad(event.clone());
            assert_eq!(f, field, "{event}");
            assert!(p.contains(problem), "{event}: {p}");
        }
        let many: Vec<Value> = (0..=MAX_CUSTOMERS as i32)
            .map(|i| json!({"id": i, "name": "n"}))
            .collect();
        let (f, p) = bad(json!({ "customers": many }));
        assert_eq!(f, "customers");
        assert!(p.contains("at most 1000"), "{p}");
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let (_, p) = bad(json!({"customers": [{"id": "y".repeat(500), "name": "a"}]}));
        assert!(p.len() < 150, "{p}");
    }
}
