//! Reading database users' secrets from AWS Secrets Manager.
//!
//! The client is configured the standard AWS way (`AWS_REGION`, `AWS_ENDPOINT_URL`, the
//! credential chain: environment, profile, ECS task role, instance role). Each read fetches the
//! secret's `AWSCURRENT` version and, when one exists, its `AWSPENDING` version: during an RDS
//! rotation the database already has the pending password before the secret's current version
//! changes, and Sluice may need it to log in.

use std::time::Duration;

use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::get_secret_value::{
    GetSecretValueError, GetSecretValueOutput,
};

use super::rds_secret::{FormatError, RdsSecret};
use crate::config::Secret;

/// Limit for one Secrets Manager call, the SDK's retries included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for opening the HTTPS connection to Secrets Manager.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The staging label of the version in use (what GetSecretValue returns without a label;
/// named explicitly, as some emulators lag behind a label moved by UpdateSecretVersionStage).
const AWSCURRENT: &str = "AWSCURRENT";
/// The staging label of the version a rotation is installing.
const AWSPENDING: &str = "AWSPENDING";

/// A secret that could not be read or used. The message names the secret and the reason,
/// never the secret's value.
#[derive(Debug, thiserror::Error)]
#[error("cannot use secret `{secret_id}` from AWS Secrets Manager: {reason}")]
pub struct SecretError {
    pub secret_id: String,
    pub reason: SecretErrorReason,
}

/// Why a secret could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum SecretErrorReason {
    #[error("it does not exist ({0})")]
    NotFound(String),
    #[error(
        "access denied ({0}); Sluice needs secretsmanager:GetSecretValue on the secret, and \
         kms:Decrypt on its KMS key if the secret is encrypted with a customer-managed key"
    )]
    AccessDenied(String),
    #[error(
        "Secrets Manager cannot decrypt it ({0}); Sluice needs kms:Decrypt on the secret's KMS key"
    )]
    Decryption(String),
    #[error("Secrets Manager answered {code}: {message}")]
    Api { code: String, message: String },
    #[error("cannot reach Secrets Manager: {0}")]
    Unreachable(String),
    #[error("it holds binary data; Sluice reads the RDS JSON format from its SecretString")]
    Binary,
    #[error("{0}")]
    Format(#[from] FormatError),
    #[error(
        "user `{username}` is also in secret `{other}`; keep one secret per database user, as \
         RDS Proxy does"
    )]
    DuplicateUser { username: String, other: String },
    #[error("no reply within {0:?}")]
    Timeout(Duration),
}

impl SecretError {
    pub(super) fn new(secret_id: &str, reason: SecretErrorReason) -> Self {
        SecretError {
            secret_id: secret_id.to_owned(),
            reason,
        }
    }
}

/// One read of a secret: its current value and, during a rotation, the pending password.
#[derive(Debug, Clone)]
pub struct FetchedSecret {
    pub current: RdsSecret,
    /// The `AWSPENDING` password, when a rotation is under way and it differs from the current
    /// one (and belongs to the same user).
    pub pending: Option<Secret>,
    /// The version id of the current value, for logs.
    pub version_id: Option<String>,
}

/// A Secrets Manager client.
#[derive(Debug, Clone)]
pub struct SecretsManagerClient {
    client: aws_sdk_secretsmanager::Client,
}

impl SecretsManagerClient {
    /// A client configured from the standard AWS environment.
    pub async fn from_env() -> Self {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(timeouts())
            .load()
            .await;
        SecretsManagerClient {
            client: aws_sdk_secretsmanager::Client::new(&config),
        }
    }

    /// A client for a fixed endpoint (a local test server such as moto_server) with static
    /// credentials.
    pub fn for_endpoint(
        endpoint_url: &str,
        region: &str,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Self {
        use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
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
        SecretsManagerClient {
            client: aws_sdk_secretsmanager::Client::from_conf(config),
        }
    }

    /// A client whose every call fails at once (nothing listens on its endpoint), for tests of
    /// what a failed read leaves behind.
    #[cfg(test)]
    pub(crate) fn unreachable() -> Self {
        use aws_sdk_secretsmanager::config::retry::RetryConfig;
        let reachable = Self::for_endpoint("http://127.0.0.1:1", "us-east-1", "k", "s");
        let config = reachable
            .client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build();
        SecretsManagerClient {
            client: aws_sdk_secretsmanager::Client::from_conf(config),
        }
    }

    /// Reads the current version of `secret_id` (and the pending one, if any).
    pub async fn fetch(&self, secret_id: &str) -> Result<FetchedSecret, SecretError> {
        let err = |reason| SecretError::new(secret_id, reason);
        let output = self.get(secret_id, AWSCURRENT).await.map_err(err)?;
        let text = output
            .secret_string()
            .ok_or_else(|| err(SecretErrorReason::Binary))?;
        let current = RdsSecret::parse(text).map_err(|e| err(e.into()))?;
        let version_id = output.version_id().map(str::to_owned);
        let pending = self
            .pending(secret_id, &current, version_id.as_deref())
            .await;
        Ok(FetchedSecret {
            current,
            pending,
            version_id,
        })
    }

    /// The `AWSPENDING` password of `secret_id`, if there is a usable one. Absent most of the
    /// time; any problem with it is logged and treated as absence, since the current value
    /// was read.
    async fn pending(
        &self,
        secret_id: &str,
        current: &RdsSecret,
        current_version: Option<&str>,
    ) -> Option<Secret> {
        let output = match self.get(secret_id, AWSPENDING).await {
            Ok(output) => output,
            Err(SecretErrorReason::NotFound(_)) => return None,
            Err(e) => {
                tracing::debug!(secret_id, reason = %e, "cannot read the AWSPENDING version");
                return None;
            }
        };
        if output.version_id().is_some() && output.version_id() == current_version {
            return None;
        }
        match output.secret_string().map(RdsSecret::parse) {
            Some(Ok(p)) if p.username == current.username && p.password != current.password => {
                Some(p.password)
            }
            Some(Ok(_)) => None,
            Some(Err(e)) => {
                tracing::warn!(secret_id, reason = %e, "ignoring the secret's AWSPENDING version");
                None
            }
            None => None,
        }
    }

    async fn get(
        &self,
        secret_id: &str,
        stage: &str,
    ) -> Result<GetSecretValueOutput, SecretErrorReason> {
        let request = self
            .client
            .get_secret_value()
            .secret_id(secret_id)
            .version_stage(stage)
            .send();
        // The SDK has its own operation timeout; this one also covers credential loading.
        let limit = OPERATION_TIMEOUT + CONNECT_TIMEOUT;
        match tokio::time::timeout(limit, request).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(SecretErrorReason::Timeout(limit)),
        }
    }
}

fn timeouts() -> aws_sdk_secretsmanager::config::timeout::TimeoutConfig {
    aws_sdk_secretsmanager::config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// Sorts an SDK error into the reasons an operator acts on.
fn classify(e: SdkError<GetSecretValueError>) -> SecretErrorReason {
    let Some(service) = e.as_service_error() else {
        // Dispatch failures, timeouts, missing region or credentials, unreadable replies.
        return SecretErrorReason::Unreachable(DisplayErrorContext(&e).to_string());
    };
    let code = service.code().unwrap_or("unknown error").to_owned();
    let message = service.message().unwrap_or("").to_owned();
    let detail = if message.is_empty() {
        code.clone()
    } else {
        format!("{code}: {message}")
    };
    match code.as_str() {
        "ResourceNotFoundException" => SecretErrorReason::NotFound(detail),
        "AccessDeniedException"
        | "AccessDenied"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException" => SecretErrorReason::AccessDenied(detail),
        "DecryptionFailure" => SecretErrorReason::Decryption(detail),
        _ => SecretErrorReason::Api { code, message },
    }
}
