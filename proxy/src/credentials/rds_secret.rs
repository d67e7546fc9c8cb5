//! The RDS secret format: the JSON text AWS Secrets Manager holds for a database user, as the
//! RDS console, CloudFormation's `AWS::SecretsManager::SecretTargetAttachment` and the RDS
//! rotation functions write it.
//!
//! ```json
//! {"username": "app", "password": "...", "engine": "mysql",
//!  "host": "db.example.internal", "port": 3306, "dbname": "shop"}
//! ```
//!
//! Only `username` and `password` are required. The others describe the database the secret
//! belongs to; Sluice records them (they show in logs) but connects to `backend.address`.
//! Errors name the field, never a value: serde_json's own messages can quote the input.

use serde_json::Value;

use crate::config::Secret;

/// Longest user name Sluice accepts (MariaDB allows 80 characters, MySQL 32).
const MAX_USERNAME: usize = 80;

/// A database user's secret, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdsSecret {
    pub username: String,
    pub password: Secret,
    /// The database host the secret describes (informational).
    pub host: Option<String>,
    /// Its port (informational); a number or a numeric string.
    pub port: Option<u16>,
    /// The database the secret names (informational).
    pub dbname: Option<String>,
    /// `mysql`, `mariadb`, `aurora-mysql`, ... (informational).
    pub engine: Option<String>,
}

/// Why a secret's text is not a usable RDS secret. No variant carries any part of the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the secret string is not valid JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error("the secret string is a JSON {found}, not an object in the RDS format")]
    NotAnObject { found: &'static str },
    #[error("the secret has no `{0}` field")]
    Missing(&'static str),
    #[error("`{field}` in the secret is a JSON {found}, not a string")]
    NotAString {
        field: &'static str,
        found: &'static str,
    },
    #[error("`{0}` in the secret is empty")]
    Empty(&'static str),
    #[error("`username` in the secret is longer than {MAX_USERNAME} characters or contains NUL")]
    BadUsername,
}

impl RdsSecret {
    /// Parses a `SecretString`.
    pub fn parse(text: &str) -> Result<RdsSecret, FormatError> {
        let value: Value = serde_json::from_str(text).map_err(|e| FormatError::NotJson {
            line: e.line(),
            column: e.column(),
        })?;
        let Value::Object(map) = value else {
            return Err(FormatError::NotAnObject {
                found: type_name(&value),
            });
        };
        let required = |field: &'static str| match map.get(field) {
            None | Some(Value::Null) => Err(FormatError::Missing(field)),
            Some(Value::String(s)) if s.is_empty() => Err(FormatError::Empty(field)),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(FormatError::NotAString {
                field,
                found: type_name(other),
            }),
        };
        // Optional fields of the wrong type are ignored: they do not change what Sluice does.
        let optional = |field: &str| match map.get(field) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let username = required("username")?;
        if username.chars().count() > MAX_USERNAME || username.contains('\0') {
            return Err(FormatError::BadUsername);
        }
        let password = Secret::new(required("password")?);
        let port = match map.get("port") {
            Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
            Some(Value::String(s)) => s.trim().parse::<u16>().ok(),
            _ => None,
        };
        Ok(RdsSecret {
            username,
            password,
            host: optional("host"),
            port,
            dbname: optional("dbname"),
            engine: optional("engine"),
        })
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rds_format() {
        let s = RdsSecret::parse(
            r#"{"username":"app","password":"s3cr\"et","engine":"mysql","host":"db.local",
                "port":3306,"dbname":"shop","dbInstanceIdentifier":"db-1"}"#,
        )
        .unwrap();
        assert_eq!(s.username, "app");
        assert_eq!(s.password.expose(), "s3cr\"et");
        assert_eq!(s.host.as_deref(), Some("db.local"));
        assert_eq!(s.port, Some(3306));
        assert_eq!(s.dbname.as_deref(), Some("shop"));
        assert_eq!(s.engine.as_deref(), Some("mysql"));

        let s = RdsSecret::parse(r#"{"username":"u","password":"p","port":"3307"}"#).unwrap();
        assert_eq!((s.port, s.dbname, s.engine), (Some(3307), None, None));
        let s = RdsSecret::parse(r#"{"username":"u","password":"p","port":[1],"host":7}"#).unwrap();
        assert_eq!((s.port, s.host), (None, None));
    }

    #[test]
    fn errors_name_the_field_never_the_value() {
        let cases = [
            (r#"{"password":"hunter2"}"#, "no `username`"),
            (r#"{"username":"u"}"#, "no `password`"),
            (r#"{"username":"u","password":null}"#, "no `password`"),
            (
                r#"{"username":"u","password":""}"#,
                "`password` in the secret is empty",
            ),
            (
                r#"{"username":"u","password":1234567}"#,
                "`password` in the secret is a JSON number",
            ),
            (
                r#"{"username":["hunter2"],"password":"x"}"#,
                "`username` in the secret is a JSON array",
            ),
            (
                r#"{"username":"u","password":"hunter2""#,
                "not valid JSON (line 1",
            ),
            (r#"hunter2"#, "not valid JSON"),
            (r#""hunter2""#, "a JSON string, not an object"),
        ];
        for (text, expect) in cases {
            let err = RdsSecret::parse(text).unwrap_err().to_string();
            assert!(err.contains(expect), "{text}: {err}");
            assert!(
                !err.contains("hunter2") && !err.contains("1234567"),
                "{err}"
            );
        }
        let long = format!(r#"{{"username":"{}","password":"p"}}"#, "u".repeat(81));
        assert_eq!(RdsSecret::parse(&long), Err(FormatError::BadUsername));
    }

    #[test]
    fn debug_hides_the_password() {
        let s = RdsSecret::parse(r#"{"username":"u","password":"hunter2"}"#).unwrap();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("***"),
            "{shown}"
        );
    }
}
