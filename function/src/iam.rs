//! IAM mode (`AUTH_MODE=iam`): no secret is read. The function's own role credentials (the
//! Lambda execution role, from the standard AWS environment) sign a Sluice IAM token (a signed
//! `sts:GetCallerIdentity` request bound to the Sluice's audience), sent as the password over
//! TLS with `mysql_clear_password`. Tokens are signed for the current minute, so the instances
//! of one function hold identical tokens and Sluice checks them with one STS call.

use std::time::SystemTime;

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use sluice_iam::client_token::{self, TokenRequest};

use crate::config::IamMode;
use crate::error::Error;
use crate::secret::{DbSecret, Password};

/// Makes tokens with the function's credentials.
#[derive(Debug, Clone)]
pub struct IamSigner {
    provider: SharedCredentialsProvider,
    settings: IamMode,
    /// The STS host tokens are signed for.
    sts_host: String,
    region: String,
}

impl IamSigner {
    /// A signer with the standard AWS environment's credentials and region (on Lambda, the
    /// execution role's).
    pub async fn from_env(settings: &IamMode) -> Result<IamSigner, Error> {
        let env = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let provider = env.credentials_provider().ok_or_else(|| {
            Error::Iam("no AWS credentials in the environment (an execution role)".to_owned())
        })?;
        let region = match &settings.region {
            Some(r) => r.clone(),
            None => env
                .region()
                .map(|r| r.to_string())
                .ok_or_else(|| Error::Config("AUTH_MODE=iam needs AWS_REGION".to_owned()))?,
        };
        Ok(Self::new(settings, provider, region))
    }

    /// A signer with given credentials (tests) for `region`.
    pub fn new(settings: &IamMode, provider: SharedCredentialsProvider, region: String) -> Self {
        let sts_host = settings
            .sts_host
            .clone()
            .unwrap_or_else(|| client_token::regional_sts_host(&region));
        IamSigner {
            provider,
            settings: settings.clone(),
            sts_host,
            region,
        }
    }

    /// The login to use now: the database user and a token signed for the current minute.
    pub async fn login(&self) -> Result<DbSecret, Error> {
        let credentials = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| Error::Iam(format!("cannot get AWS credentials: {e}")))?;
        let request = TokenRequest {
            sts_host: &self.sts_host,
            region: &self.region,
            audience: &self.settings.audience,
        };
        let token = client_token::sign(&credentials, &request, SystemTime::now())
            .map_err(|e| Error::Iam(e.to_string()))?;
        Ok(DbSecret {
            username: self.settings.db_user.clone(),
            password: Password::new(token),
            dbname: None,
            host: None,
            port: None,
        })
    }
}
