//! What can go wrong, in the classes a caller acts on: a bad event, bad configuration, the
//! secret, and a database failure that is either the connection, authentication or the query.

use lambda_runtime::Diagnostic;

/// A failure of the function. Messages never contain the database password.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The environment does not describe a usable configuration.
    #[error("configuration: {0}")]
    Config(String),

    /// The event is not what the function accepts; `field` is a path such as `customers[2].id`.
    #[error("bad event: `{field}` {problem}")]
    BadEvent {
        /// Where in the event the problem is.
        field: String,
        /// What is wrong with it.
        problem: String,
    },

    /// The database secret could not be read from Secrets Manager or is not usable.
    #[error("secret {secret_id}: {message}")]
    Secret {
        /// The ARN or name the function was configured with.
        secret_id: String,
        /// What went wrong.
        message: String,
    },

    /// IAM mode: the function's AWS credentials could not sign a token.
    #[error("IAM token: {0}")]
    Iam(String),

    /// The proxy could not be reached, refused or dropped the connection, or did not answer in
    /// time.
    #[error("connection to the database proxy at {endpoint} failed: {message}")]
    Connection {
        /// `host:port` of the proxy.
        endpoint: String,
        /// What went wrong.
        message: String,
    },

    /// The proxy rejected the credentials, also after the secret was fetched again.
    #[error("authentication as `{user}` at {endpoint} failed: {message}")]
    Authentication {
        /// The database user from the secret.
        user: String,
        /// `host:port` of the proxy.
        endpoint: String,
        /// The server's message.
        message: String,
    },

    /// A statement failed on an established connection.
    #[error("query failed ({statement}): {message}")]
    Query {
        /// Which statement: `create table`, `upsert` or `select`.
        statement: &'static str,
        /// The server's message.
        message: String,
    },
}

impl Error {
    /// The `errorType` of the Lambda error response: one stable name per class.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::Config(_) => "ConfigurationError",
            Error::BadEvent { .. } => "BadEvent",
            Error::Secret { .. } => "SecretError",
            Error::Iam(_) => "IamError",
            Error::Connection { .. } => "ConnectionError",
            Error::Authentication { .. } => "AuthenticationError",
            Error::Query { .. } => "QueryError",
        }
    }

    /// A bad-event error for `field`.
    pub(crate) fn bad_event(field: impl Into<String>, problem: impl Into<String>) -> Error {
        Error::BadEvent {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl From<Error> for Diagnostic {
    fn from(e: Error) -> Diagnostic {
        Diagnostic {
            error_type: e.error_type().to_owned(),
            error_message: e.to_string(),
        }
    }
}
