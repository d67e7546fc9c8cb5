//! RDS IAM authentication tokens for the users of `[rds_iam] users`: made from Sluice's own
//! AWS credentials (the standard chain: environment, ECS task role, instance role), kept
//! current in memory and made anew every `refresh_interval`, well before their 15 minutes run
//! out. A failed refresh keeps the last tokens (they stay valid for the rest of their 15
//! minutes) and is counted and logged.
//!
//! A token is signed for one endpoint (`host:port`), so with several hosts in
//! `backend.address` each host gets its own tokens, unless `rds_iam.hostname` names the one
//! endpoint every token is signed for.

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

/// An endpoint tokens are signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// The `backend.address` entry it serves (empty: every entry, with `rds_iam.hostname`).
    address: String,
    hostname: String,
    port: u16,
}

/// The current token of each user, for each endpoint.
pub struct RdsIamTokens {
    endpoints: Vec<Endpoint>,
    region: String,
    users: Vec<String>,
    provider: SharedCredentialsProvider,
    refresh_interval: Duration,
    /// Indexed like `endpoints`.
    tokens: RwLock<Vec<HashMap<String, Secret>>>,
    /// Refreshes that made every token, and those that failed.
    pub refreshed: AtomicU64,
    pub failed: AtomicU64,
}

impl std::fmt::Debug for RdsIamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdsIamTokens")
            .field("endpoints", &self.endpoints)
            .field("users", &self.users)
            .finish_non_exhaustive()
    }
}

impl RdsIamTokens {
    /// Makes the first tokens for `config`'s users (for each of the database's `hosts`, the
    /// entries of `backend.address`, unless the config names the endpoint); fails if they
    /// cannot be made.
    pub async fn load(
        config: &RdsIamConfig,
        hosts: &[String],
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
        Self::with_provider(config, hosts, region, provider).await
    }

    /// As [`RdsIamTokens::load`], with a given region and credentials provider.
    pub async fn with_provider(
        config: &RdsIamConfig,
        hosts: &[String],
        region: String,
        provider: SharedCredentialsProvider,
    ) -> Result<RdsIamTokens, RdsIamError> {
        let parsed = hosts
            .iter()
            .map(|address| {
                let (host, port) = address
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                    .filter(|(h, _)| !h.is_empty())
                    .ok_or_else(|| RdsIamError::BadAddress(address.clone()))?;
                Ok(Endpoint {
                    address: address.clone(),
                    hostname: host.trim_start_matches('[').trim_end_matches(']').into(),
                    port,
                })
            })
            .collect::<Result<Vec<_>, RdsIamError>>()?;
        let endpoints = if config.hostname.is_empty() {
            parsed
        } else {
            // One endpoint name for every host (a cluster endpoint, say).
            parsed
                .first()
                .map(|first| Endpoint {
                    address: String::new(),
                    hostname: config.hostname.clone(),
                    port: first.port,
                })
                .into_iter()
                .collect()
        };
        let endpoints: Vec<Endpoint> = endpoints
            .into_iter()
            .map(|e| Endpoint {
                port: if config.port == 0 {
                    e.port
                } else {
                    config.port
                },
                ..e
            })
            .collect();
        if endpoints.is_empty() {
            return Err(RdsIamError::BadAddress(String::new()));
        }
        let tokens = RdsIamTokens {
            endpoints,
            region,
            users: config.users.clone(),
            provider,
            refresh_interval: config.refresh_interval,
            tokens: RwLock::new(Vec::new()),
            refreshed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        };
        tokens.refresh().await?;
        let signed_for: Vec<String> = tokens
            .endpoints
            .iter()
            .map(|e| format!("{}:{}", e.hostname, e.port))
            .collect();
        tracing::info!(users = %tokens.users.join(", "), endpoints = %signed_for.join(", "),
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

    /// The current token of `user` for the host at `address` (an entry of `backend.address`;
    /// with `rds_iam.hostname`, or for an address not listed, the first endpoint's).
    pub fn token(&self, user: &str, address: &str) -> Option<Secret> {
        let index = self
            .endpoints
            .iter()
            .position(|e| e.address == address)
            .unwrap_or(0);
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(index)?
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

    async fn make_all(&self) -> Result<Vec<HashMap<String, Secret>>, RdsIamError> {
        let credentials = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| RdsIamError::NoCredentials(e.to_string()))?;
        let now = SystemTime::now();
        self.endpoints
            .iter()
            .map(|endpoint| {
                self.users
                    .iter()
                    .map(|user| {
                        let target = Target {
                            hostname: &endpoint.hostname,
                            port: endpoint.port,
                            username: user,
                            region: &self.region,
                        };
                        let token = rds_token::auth_token(&credentials, &target, now)?;
                        Ok((user.clone(), Secret::new(token)))
                    })
                    .collect()
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

    fn provider() -> SharedCredentialsProvider {
        SharedCredentialsProvider::new(Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            Some("session".into()),
            None,
            "test",
        ))
    }

    #[tokio::test]
    async fn tokens_are_made_for_the_backend_endpoint_and_refreshed() {
        let config = RdsIamConfig {
            users: vec!["app".into(), "report".into()],
            ..RdsIamConfig::default()
        };
        let address = "db.example.internal:3306";
        let tokens = RdsIamTokens::with_provider(
            &config,
            &[address.to_string()],
            "eu-west-1".into(),
            provider(),
        )
        .await
        .unwrap();
        let app = tokens.token("app", address).unwrap();
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
        assert!(tokens.token("report", address).is_some());
        assert!(tokens.token("other", address).is_none());
        assert!(tokens.has_user("app") && !tokens.has_user("other"));
        assert!(!format!("{tokens:?}").contains("Action=connect"));
        tokens.refresh().await.unwrap();
        assert_eq!(tokens.refreshed.load(Relaxed), 2);
        for bad in ["no-port", ":3306", "db:port"] {
            let made = RdsIamTokens::with_provider(
                &config,
                &[bad.to_string()],
                "eu-west-1".into(),
                provider(),
            )
            .await;
            assert!(matches!(made, Err(RdsIamError::BadAddress(_))), "{bad}");
        }
    }

    #[tokio::test]
    async fn each_host_gets_tokens_signed_for_it_unless_one_endpoint_is_named() {
        let config = RdsIamConfig {
            users: vec!["app".into()],
            ..RdsIamConfig::default()
        };
        let hosts = [
            "writer.internal:3306".to_string(),
            "reader.internal:3307".to_string(),
        ];
        let tokens = RdsIamTokens::with_provider(&config, &hosts, "eu-west-1".into(), provider())
            .await
            .unwrap();
        let writer = tokens.token("app", &hosts[0]).unwrap();
        let other = tokens.token("app", &hosts[1]).unwrap();
        assert!(writer.expose().starts_with("writer.internal:3306/?"));
        assert!(other.expose().starts_with("reader.internal:3307/?"));
        let named = RdsIamConfig {
            hostname: "cluster.example.internal".into(),
            port: 3310,
            ..config
        };
        let tokens = RdsIamTokens::with_provider(&named, &hosts, "eu-west-1".into(), provider())
            .await
            .unwrap();
        for host in &hosts {
            let token = tokens.token("app", host).unwrap();
            assert!(
                token
                    .expose()
                    .starts_with("cluster.example.internal:3310/?")
            );
        }
    }
}
