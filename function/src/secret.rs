//! The database secret: read from Secrets Manager (RDS format) and kept without ever showing the
//! password in logs, errors or `Debug` output.

use std::fmt;
use std::time::Duration;

use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_secretsmanager::error::DisplayErrorContext;
use serde_json::Value;

use crate::error::Error;

/// Limit for one Secrets Manager call, retries included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for opening the HTTPS connection to Secrets Manager.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A password that prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps `password`.
    pub fn new(password: impl Into<String>) -> Password {
        Password(password.into())
    }

    /// The password itself, for the login only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The fields of an RDS-format secret the function uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbSecret {
    /// Database user.
    pub username: String,
    /// Its password.
    pub password: Password,
    /// Default database (`dbname`), if the secret has one.
    pub dbname: Option<String>,
    /// The database host the secret describes (informational: the function connects to the
    /// proxy, never to this host).
    pub host: Option<String>,
    /// The database port the secret describes (informational).
    pub port: Option<u16>,
}

impl DbSecret {
    /// Parses the JSON `SecretString`; errors name the field, never a value.
    pub fn parse(secret_id: &str, text: &str) -> Result<DbSecret, Error> {
        let bad = |message: String| Error::Secret {
            secret_id: secret_id.to_owned(),
            message,
        };
        // serde_json's messages may quote parts of the input: do not pass them on.
        let value: Value = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "the secret string is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let Value::Object(map) = value else {
            return Err(bad("the secret string is not a JSON object".to_owned()));
        };
        let string = |name: &str, required: bool| match map.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            None | Some(Value::Null) | Some(Value::String(_)) if !required => Ok(None),
            None | Some(Value::Null) => Err(bad(format!("the secret has no `{name}`"))),
            Some(_) => Err(bad(format!(
                "`{name}` in the secret is not a non-empty string"
            ))),
        };
        let port = match map.get("port") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
            Some(Value::String(s)) => s.trim().parse::<u16>().ok(),
            Some(_) => None,
        };
        Ok(DbSecret {
            username: string("username", true)?.unwrap_or_default(),
            password: Password(string("password", true)?.unwrap_or_default()),
            dbname: string("dbname", false)?,
            host: string("host", false)?,
            port,
        })
    }
}

/// A Secrets Manager client.
#[derive(Debug, Clone)]
pub struct SecretsClient {
    client: aws_sdk_secretsmanager::Client,
}

impl SecretsClient {
    /// A client configured the standard way: region, credentials and `AWS_ENDPOINT_URL` from
    /// the environment (on Lambda, the execution role).
    pub async fn from_env() -> SecretsClient {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts())
            .load()
            .await;
        SecretsClient {
            client: aws_sdk_secretsmanager::Client::new(&config),
        }
    }

    /// A client for a local endpoint such as moto_server, with static credentials.
    pub fn for_endpoint(
        endpoint_url: &str,
        region: &str,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> SecretsClient {
        let config = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint_url)
            .region(Region::new(region.to_owned()))
            .credentials_provider(Credentials::new(
                access_key_id,
                secret_access_key,
                None,
                None,
                "static",
            ))
            .timeout_config(timeouts())
            .build();
        SecretsClient {
            client: aws_sdk_secretsmanager::Client::from_conf(config),
        }
    }

    /// Reads and parses the current version of `secret_id`.
    pub async fn fetch(&self, secret_id: &str) -> Result<DbSecret, Error> {
        let output = self
            .client
            .get_secret_value()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| Error::Secret {
                secret_id: secret_id.to_owned(),
                message: format!("GetSecretValue failed: {}", DisplayErrorContext(&e)),
            })?;
        let text = output.secret_string().ok_or_else(|| Error::Secret {
            secret_id: secret_id.to_owned(),
            message: "the secret has no SecretString (binary secrets are not supported)".to_owned(),
        })?;
        DbSecret::parse(secret_id, text)
    }
}

fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<DbSecret, Error>) -> String {
        match r {
            Err(e @ Error::Secret { .. }) => e.to_string(),
            other => panic!("expected a secret error, got {other:?}"),
        }
    }

    #[test]
    fn rds_format() {
        let s = DbSecret::parse(
            "id",
            r#"{"username":"app","password":"s3cr\"et","engine":"mysql","host":"db.local",
                "port":3306,"dbname":"shop","dbInstanceIdentifier":"x"}"#,
        )
        .unwrap();
        assert_eq!(s.username, "app");
        assert_eq!(s.password.expose(), "s3cr\"et");
        assert_eq!(s.dbname.as_deref(), Some("shop"));
        assert_eq!(s.host.as_deref(), Some("db.local"));
        assert_eq!(s.port, Some(3306));
        let s = DbSecret::parse("id", r#"{"username":"u","password":"p","port":"3307"}"#).unwrap();
        assert_eq!((s.port, s.dbname), (Some(3307), None));
    }

    #[test]
    fn password_never_shows() {
        let s = DbSecret::parse("id", r#"{"username":"u","password":"hunter2"}"#).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        let m = message(DbSecret::parse(
            "id",
            r#"{"username":"u","password":"hunter2""#,
        ));
        assert!(
            !m.contains("hunter2") && m.contains("not valid JSON"),
            "{m}"
        );
        let m = message(DbSecret::parse(
            "id",
            r#"{"username":"u","password":1234567}"#,
        ));
        assert!(!m.contains("1234567") && m.contains("`password`"), "{m}");
    }

    #[test]
    fn missing_fields_are_named() {
        assert!(message(DbSecret::parse("id", r#"{"password":"p"}"#)).contains("`username`"));
        assert!(message(DbSecret::parse("id", r#"{"username":"u"}"#)).contains("`password`"));
        assert!(message(DbSecret::parse("arn:1", "[]")).contains("arn:1"));
    }
}
