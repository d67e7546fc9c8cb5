//! RDS IAM authentication tokens for the users of `[rds_iam] users`: made from Sluice's own
//! AWS credentials (the standard chain: environment, ECS task role, instance role), kept
//! current in memory and made anew every `refresh_interval`, well before their 15 minutes run
//! out. A failed refresh keeps the last tokens (they stay valid for the rest of their 15
//! minutes) and is counted and logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use sluice_iam::rds_token::{self, Target};
use tokio::sync::watch;

use crate::config::{RdsIamConfig, Secret};

/// The tokens could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RdsIamError {
    #[error(
        "rds_iam.region is empty and the AWS environment names no region (set AWS_REGION or \
         rds_iam.region)"
    )]
    NoRegion,
    #[error("rds_iam: cannot tell the database's host and port from {0:?}")]
    BadAddress(String),
    #[error(
        "cannot make RDS IAM tokens: Sluice has no AWS credentials ({0}); give its task or \
         instance a role allowed rds-db:connect"
    )]
    NoCredentials(String),
    #[error("cannot make RDS IAM tokens: {0}")]
    Sign(#[from] sluice_iam::SignError),
}

/// The current token of each user.
pub struct RdsIamTokens {
    hostname: String,
    port: u16,
    region: String,
    users: Vec<String>,
    provider: SharedCredentialsProvider,
    refresh_interval: Duration,
    tokens: RwLock<HashMap<String, Secret>>,
    /// Refreshes that made every token, and those that failed.
    pub refreshed: AtomicU64,
    pub failed: AtomicU64,
}

impl std::fmt::Debug for RdsIamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdsIamTokens")
            .field("hostname", &self.hostname)
            .field("port", &self.port)
            .field("users", &self.users)
            .finish_non_exhaustive()
    }
}

impl RdsIamTokens {
    /// Makes the first tokens for `config`'s users (for the database at `backend_address`
    /// unless the config names the endpoint); fails if they cannot be made.
    pub async fn load(
        config: &RdsIamConfig,
        backend_address: &str,
    ) -> Result<RdsIamTokens, RdsIamError> {
        let env = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let region = if config.region.is_empty() {
            env.region()
                .map(|r| r.to_string())
                .ok_or(RdsIamError::NoRegion)?
        } else {
            config.region.clone()
        };
        let provider = env
            .credentials_provider()
            .ok_or_else(|| RdsIamError::NoCredentials("no credentials provider".into()))?;
        Self::with_provider(config, backend_address, region, provider).await
    }

    /// As [`RdsIamTokens::load`], with a given region and credentials provider.
    pub async fn with_provider(
        config: &RdsIamConfig,
        backend_address: &str,
        region: String,
        provider: SharedCredentialsProvider,
    ) -> Result<RdsIamTokens, RdsIamError> {
        let (host, port) = backend_address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| RdsIamError::BadAddress(backend_address.to_owned()))?;
        let tokens = RdsIamTokens {
            hostname: if config.hostname.is_empty() {
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned()
            } else {
                config.hostname.clone()
            },
            port: if config.port == 0 { port } else { config.port },
            region,
            users: config.users.clone(),
            provider,
            refresh_interval: config.refresh_interval,
            tokens: RwLock::new(HashMap::new()),
            refreshed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        };
        tokens.refresh().await?;
        tracing::info!(users = %tokens.users.join(", "), hostname = %tokens.hostname, port = tokens.port,
            region = %tokens.region, "logging in to the database with RDS IAM tokens");
        Ok(tokens)
    }

    /// Whether `user` logs in with a token.
    pub fn has_user(&self, user: &str) -> bool {
        self.users.iter().any(|u| u == user)
    }

    /// The users that log in with tokens.
    pub fn users(&self) -> &[String] {
        &self.users
    }

    /// The current token of `user`.
    pub fn token(&self, user: &str) -> Option<Secret> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .cloned()
    }

    /// Makes every user's token anew (now); on failure the previous tokens stay.
    pub async fn refresh(&self) -> Result<(), RdsIamError> {
        let result = self.make_all().await;
        match &result {
            Ok(fresh) => {
                *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
                self.refreshed.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "cannot refresh RDS IAM tokens; keeping the current ones");
            }
        }
        result.map(|_| ())
    }

    async fn make_all(&self) -> Result<HashMap<String, Secret>, RdsIamError> {
        let credentials = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| RdsIamError::NoCredentials(e.to_string()))?;
        let now = SystemTime::now();
        self.users
            .iter()
            .map(|user| {
                let target = Target {
                    hostname: &self.hostname,
                    port: self.port,
                    username: user,
                    region: &self.region,
                };
                let token = rds_token::auth_token(&credentials, &target, now)?;
                Ok((user.clone(), Secret::new(token)))
            })
            .collect()
    }

    /// Refreshes every `refresh_interval` until `shutdown` turns true or the tokens are dropped.
    pub fn spawn_refresh(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = self.refresh_interval;
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let start = tokio::time::Instant::now() + every;
            let mut tick = tokio::time::interval_at(start, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = crate::context::stop_requested(&mut shutdown) => return,
                }
                let Some(tokens) = weak.upgrade() else { return };
                let _ = tokens.refresh().await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;

    #[tokio::test]
    async fn tokens_are_made_for_the_backend_endpoint_and_refreshed() {
        let config = RdsIamConfig {
            users: vec!["app".into(), "report".into()],
            ..RdsIamConfig::default()
        };
        let provider = SharedCredentialsProvider::new(Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            Some("session".into()),
            None,
            "test",
        ));
        let tokens = RdsIamTokens::with_provider(
            &config,
            "db.example.internal:3306",
            "eu-west-1".into(),
            provider,
        )
        .await
        .unwrap();
        let app = tokens.token("app").unwrap();
        assert!(
            app.expose()
                .starts_with("db.example.internal:3306/?Action=connect&DBUser=app&"),
            "{}",
            app.expose()
        );
        assert!(
            app.expose()
                .contains("%2Feu-west-1%2Frds-db%2Faws4_request")
        );
        assert!(tokens.token("report").is_some());
        assert!(tokens.token("other").is_none());
        assert!(tokens.has_user("app") && !tokens.has_user("other"));
        assert!(!format!("{tokens:?}").contains("Action=connect"));
        tokens.refresh().await.unwrap();
        assert_eq!(tokens.refreshed.load(Relaxed), 2);
        let bad = RdsIamTokens::with_provider(
            &config,
            "no-port",
            "eu-west-1".into(),
            SharedCredentialsProvider::new(Credentials::new("a", "b", None, None, "t")),
        )
        .await;
        assert!(matches!(bad, Err(RdsIamError::BadAddress(_))));
    }
}
