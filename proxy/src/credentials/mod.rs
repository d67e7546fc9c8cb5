//! Who may log in, how they prove it, and what Sluice logs in to the database with.
//!
//! Password sources:
//! - the static `[[users]]` tables of the configuration ([`static_users`]), for local use;
//! - AWS Secrets Manager ([`secrets_manager`]): one RDS-format secret ([`rds_secret`]) per
//!   database user, as RDS Proxy reads them. Such users authenticate clients with
//!   `mysql_native_password`.
//!
//! Identity without a secret per user:
//! - [`iam`]: clients that log in with their AWS identity (a signed STS request as password);
//! - [`rds_iam`]: Sluice logs in to RDS with IAM authentication tokens instead of passwords;
//! - [`accounts`]: users unknown to Sluice are looked up in the database's own accounts.
//!
//! What a backend login uses is a [`BackendSecret`] ([`backend_secret`]).
//!
//! A user named both in `[[users]]` and in a secret takes the secret's password (a warning says
//! so at start and on reload).
//!
//! Secrets are read at start ([`Credentials::load`]; a secret that cannot be read stops the
//! start), every `refresh_interval` ([`Credentials::spawn_refresh`]; a failed read keeps the
//! last good value), and at once when the database refuses every password Sluice knows for a
//! user or a client's password matches none of them. Those immediate reads are debounced: per
//! secret, at most one read starts per [`MIN_REREAD_INTERVAL`], and everyone who asked while
//! it ran shares its result.
//!
//! Rotation: when a read finds a new password, the previous one keeps letting clients in for
//! `rotation_window`. Backend logins try, in order, the password the database accepted last,
//! the current one, the secret's `AWSPENDING` one (an RDS rotation sets it on the database
//! before it becomes current) and the previous one while its window lasts.

pub mod accounts;
pub mod backend_secret;
pub mod iam;
pub mod rds_iam;
pub mod rds_secret;
pub mod secrets_manager;
mod static_users;
mod wildcard;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};
use tokio::time::Instant as TokioInstant;

use crate::auth;
use crate::config::{AuthPluginName, Config, Secret, SecretsManagerConfig, UserConfig};
pub use accounts::{Account, AccountRow, DatabaseAccounts};
pub use backend_secret::{BackendSecret, Transport};
pub use iam::{IamRefusal, IamVerifier};
pub use rds_iam::{RdsIamError, RdsIamTokens};
pub use rds_secret::{FormatError, RdsSecret};
pub use secrets_manager::{FetchedSecret, SecretError, SecretErrorReason, SecretsManagerClient};

/// Per secret, the shortest time between the starts of two reads that a refused login or a
/// failed client login asks for.
pub const MIN_REREAD_INTERVAL: Duration = Duration::from_secs(1);

/// How long a client whose password matched nothing may wait for its user's secret to be
/// read again (the read itself, plus the debounce).
const CLIENT_REREAD_WAIT: Duration = Duration::from_secs(3);

/// One database user as Sluice knows it at one moment (a snapshot: a later read of its secret
/// does not change a `Credential` already handed out).
#[derive(Debug, Clone)]
pub struct Credential {
    pub username: Arc<str>,
    /// The current password.
    pub password: Secret,
    pub auth_plugin: AuthPluginName,
    /// The password before the last rotation, while its window lasts.
    previous: Option<Previous>,
    origin: Origin,
}

/// A password replaced by a rotation, accepted from clients until `until`.
#[derive(Debug, Clone)]
struct Previous {
    password: Secret,
    until: Instant,
}

/// Which source a credential came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Static,
    /// Secret `id`, as of its `generation`-th successful read.
    Secret {
        id: Arc<str>,
        generation: u64,
    },
    /// Named only by `[[iam.identities]]`: no password anywhere.
    Iam,
    /// A database account, as looked up.
    Database(Account),
}

impl Credential {
    /// Checks a client's answer to `scramble` (`mysql_native_password`, `caching_sha2_password`
    /// fast authentication, ed25519) against the current password, then against the previous
    /// one while its rotation window lasts.
    pub fn verify_scramble(
        &self,
        plugin: AuthPluginName,
        scramble: &[u8],
        auth_data: &[u8],
    ) -> bool {
        self.accepted_passwords(Instant::now())
            .any(|pw| auth::verify(plugin, scramble, pw.expose(), auth_data))
    }

    /// Checks a password the client sent in clear (caching_sha2_password full authentication,
    /// over TLS) against the current password, then the previous one while its window lasts.
    /// One trailing NUL, as the protocol sends it, is ignored.
    pub fn verify_cleartext(&self, password: &[u8]) -> bool {
        let password = password.strip_suffix(&[0]).unwrap_or(password);
        self.accepted_passwords(Instant::now())
            .any(|pw| constant_time_eq(pw.expose().as_bytes(), password))
    }

    /// The secret this user comes from; `None` for a `[[users]]` entry.
    pub fn secret_id(&self) -> Option<&str> {
        match &self.origin {
            Origin::Secret { id, .. } => Some(id),
            _ => None,
        }
    }

    /// A database account looked up by [`accounts`]: clients answer mysql_native_password
    /// scrambles, checked against its stored hash.
    pub fn database_account(name: &str, account: Account) -> Credential {
        Credential {
            username: Arc::from(name),
            password: Secret::default(),
            auth_plugin: AuthPluginName::MysqlNativePassword,
            previous: None,
            origin: Origin::Database(account),
        }
    }

    /// The looked-up account, for a credential made by [`Credential::database_account`].
    pub fn account(&self) -> Option<&Account> {
        match &self.origin {
            Origin::Database(a) => Some(a),
            _ => None,
        }
    }

    /// Whether clients of this user log in with an IAM token.
    pub fn uses_iam(&self) -> bool {
        self.auth_plugin == AuthPluginName::ClearPassword
    }

    /// Whether a previous password is still accepted from clients.
    pub fn in_rotation_window(&self) -> bool {
        self.live_previous(Instant::now()).is_some()
    }

    fn live_previous(&self, now: Instant) -> Option<&Secret> {
        self.previous
            .as_ref()
            .filter(|p| now < p.until)
            .map(|p| &p.password)
    }

    fn accepted_passwords(&self, now: Instant) -> impl Iterator<Item = &Secret> {
        std::iter::once(&self.password).chain(self.live_previous(now))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What to try, in order, when logging in to the backend as one user.
#[derive(Debug, Clone)]
pub struct BackendLogin {
    pub secrets: Vec<BackendSecret>,
    /// The secret to read again if the database refuses all of them, and its generation.
    reread: Option<(Arc<str>, u64)>,
}

impl BackendLogin {
    /// Whether reading the user's secret again could give other passwords.
    pub fn can_reread(&self) -> bool {
        self.reread.is_some()
    }
}

/// What came of asking for a secret to be read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reread {
    /// The secret was read after the caller's snapshot (by this call or another).
    Done,
    /// The read failed (the failure is logged) or could not start before the deadline.
    NotDone,
}

/// The current set of users, replaceable at run time.
#[derive(Debug, Default)]
pub struct Credentials {
    users: RwLock<Users>,
    /// Absent without `[secrets_manager] secret_ids`.
    secrets: Option<SecretSource>,
    /// Absent without `[iam] audience`.
    pub iam: Option<IamVerifier>,
    /// Absent without `[rds_iam] users`.
    pub rds: Option<Arc<RdsIamTokens>>,
    /// Absent unless `[database_accounts] enabled`.
    pub accounts: Option<DatabaseAccounts>,
}

/// Why the credentials could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Iam(#[from] iam::IamSetupError),
    #[error(transparent)]
    RdsIam(#[from] RdsIamError),
    #[error(
        "database_accounts.lookup_user `{0}` is not a user Sluice can log in as: add it to \
         [[users]] or to a secret"
    )]
    LookupUser(String),
}

/// Counts of the identity features, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityCounts {
    /// IAM logins: verified by STS, from the cache, refused, refused for want of STS.
    pub iam_logins: [u64; 4],
    /// STS calls: made, failed without an answer.
    pub sts_calls: (u64, u64),
    /// Database account lookups: found, absent, failed.
    pub account_lookups: [u64; 3],
    /// RDS IAM token refreshes: succeeded, failed.
    pub rds_token_refreshes: (u64, u64),
}

#[derive(Debug, Default)]
struct Users {
    statics: HashMap<String, Credential>,
    /// By secret id.
    secrets: HashMap<Arc<str>, SecretUser>,
    /// User name to secret id.
    by_name: HashMap<String, Arc<str>>,
}

/// What Sluice holds of one secret.
#[derive(Debug)]
struct SecretUser {
    credential: Credential,
    /// The `AWSPENDING` password, during a rotation.
    pending: Option<Secret>,
    /// The password the database accepted last.
    backend_ok: Option<Secret>,
}

#[derive(Debug)]
struct SecretSource {
    client: SecretsManagerClient,
    settings: SecretsManagerConfig,
    /// Per secret id: its reads, one at a time.
    reads: HashMap<Arc<str>, SecretReads>,
}

/// The reads of one secret: serialised, counted, and their last outcome kept for those who
/// waited while it ran.
#[derive(Debug, Default)]
struct SecretReads {
    /// Reads completed (successful or not).
    completed: AtomicU64,
    /// Reads that failed (and kept the last good value).
    failed: AtomicU64,
    state: Mutex<ReadState>,
}

#[derive(Debug)]
struct ReadState {
    last_start: Option<TokioInstant>,
    last_outcome: Reread,
}

impl Default for ReadState {
    fn default() -> Self {
        ReadState {
            last_start: None,
            last_outcome: Reread::NotDone,
        }
    }
}

impl Credentials {
    /// Builds the set from configured users (the static source only).
    pub fn from_config(users: &[UserConfig]) -> Self {
        let c = Credentials::default();
        c.replace(users);
        c
    }

    /// Builds the set from `[[users]]` and, when `[secrets_manager] secret_ids` lists any,
    /// reads every secret (AWS settings from the standard environment); then sets up IAM
    /// logins, RDS IAM tokens and database account lookups as configured. Fails on the first
    /// secret that cannot be read or used (the error names it and never holds its value), or
    /// when the identity features cannot work.
    pub async fn load(config: &Config) -> Result<Self, LoadError> {
        let settings = &config.secrets_manager;
        let mut credentials = if settings.secret_ids.is_empty() {
            Self::from_config(&config.users)
        } else {
            let client = SecretsManagerClient::from_env().await;
            Self::load_with(config, client).await?
        };
        if !config.iam.audience.is_empty() {
            credentials.iam = Some(IamVerifier::from_config(&config.iam).await?);
        }
        if !config.rds_iam.users.is_empty() {
            let tokens = RdsIamTokens::load(&config.rds_iam, &config.backend.hosts()).await?;
            credentials.rds = Some(Arc::new(tokens));
        }
        if config.database_accounts.enabled {
            let lookup = &config.database_accounts.lookup_user;
            if credentials.backend_login(lookup, "").is_none() {
                return Err(LoadError::LookupUser(lookup.clone()));
            }
            credentials.accounts = Some(DatabaseAccounts::new(&config.database_accounts));
        }
        Ok(credentials)
    }

    /// As [`Credentials::load`], with a given client (tests point one at a local endpoint).
    pub async fn load_with(
        config: &Config,
        client: SecretsManagerClient,
    ) -> Result<Self, SecretError> {
        let settings = &config.secrets_manager;
        let mut ids: Vec<Arc<str>> = Vec::new();
        for id in &settings.secret_ids {
            let id: Arc<str> = Arc::from(id.trim());
            if ids.contains(&id) {
                tracing::warn!(secret_id = %id, "secret listed twice in secrets_manager.secret_ids");
            } else {
                ids.push(id);
            }
        }
        let reads = ids
            .iter()
            .map(|id| (id.clone(), SecretReads::default()))
            .collect();
        let credentials = Credentials {
            users: RwLock::default(),
            secrets: Some(SecretSource {
                client: client.clone(),
                settings: settings.clone(),
                reads,
            }),
            ..Credentials::default()
        };
        // One after the other: a deployment has a few secrets, and the first failure stops
        // the start anyway.
        for id in &ids {
            let fetched = client.fetch(id).await?;
            credentials
                .apply(id, fetched, Instant::now())
                .map_err(|reason| SecretError::new(id, reason))?;
            tracing::info!(secret_id = %id, "read the secret");
        }
        credentials.replace(&config.users);
        Ok(credentials)
    }

    fn read(&self) -> RwLockReadGuard<'_, Users> {
        self.users.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Users> {
        self.users.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces every static (`[[users]]`) user; users from Secrets Manager stay.
    pub fn replace(&self, users: &[UserConfig]) {
        let statics = static_users::from_config(users);
        let mut all = self.write();
        for name in statics.keys() {
            if let Some(id) = all.by_name.get(name) {
                tracing::warn!(user = %name, secret_id = %id,
                    "user is both in [[users]] and in a secret; the secret's password is used");
            }
        }
        all.statics = statics;
    }

    /// The user called `name`, if Sluice knows it (database accounts are looked up by the
    /// login itself). A user `[[iam.identities]]` name logs in with IAM, whatever password
    /// Sluice also holds for it (that one serves backend logins).
    pub fn get(&self, name: &str) -> Option<Credential> {
        let known = {
            let users = self.read();
            match users.by_name.get(name) {
                Some(id) => users.secrets.get(id).map(|s| s.credential.clone()),
                None => users.statics.get(name).cloned(),
            }
        };
        if !self.iam.as_ref().is_some_and(|v| v.maps_user(name)) {
            return known;
        }
        Some(match known {
            Some(c) => Credential {
                auth_plugin: AuthPluginName::ClearPassword,
                ..c
            },
            None => Credential {
                username: Arc::from(name),
                password: Secret::default(),
                auth_plugin: AuthPluginName::ClearPassword,
                previous: None,
                origin: Origin::Iam,
            },
        })
    }

    /// Some known user Sluice can log in to the backend as, the first by name (secrets first,
    /// then `[[users]]`, then RDS IAM users), for checks that need to log in.
    pub fn any(&self) -> Option<Credential> {
        let first = {
            let users = self.read();
            let from_secret = users
                .secrets
                .values()
                .map(|s| &s.credential)
                .min_by(|a, b| a.username.cmp(&b.username));
            from_secret
                .or_else(|| {
                    users
                        .statics
                        .values()
                        .min_by(|a, b| a.username.cmp(&b.username))
                })
                .cloned()
        };
        first.or_else(|| {
            let name = self.rds.as_ref()?.users().iter().min()?;
            Some(Credential {
                username: Arc::from(name.as_str()),
                password: Secret::default(),
                auth_plugin: AuthPluginName::ClearPassword,
                previous: None,
                origin: Origin::Iam,
            })
        })
    }

    /// True while no user is known (Secrets Manager not read yet, say): /readyz says not ready.
    pub fn is_empty(&self) -> bool {
        let users = self.read();
        users.statics.is_empty()
            && users.secrets.is_empty()
            && self.iam.is_none()
            && self.rds.is_none()
            && self.accounts.is_none()
    }

    /// The plugin to announce in the handshake: native unless every user uses caching_sha2,
    /// so most logins need no auth switch. Users from secrets use mysql_native_password.
    pub fn greeting_plugin(&self) -> AuthPluginName {
        let users = self.read();
        if users.secrets.is_empty()
            && !users.statics.is_empty()
            && users
                .statics
                .values()
                .all(|u| u.auth_plugin == AuthPluginName::CachingSha2Password)
        {
            AuthPluginName::CachingSha2Password
        } else {
            AuthPluginName::MysqlNativePassword
        }
    }

    /// Authenticates a client: `verify` (a [`Credential::verify_scramble`] or
    /// [`Credential::verify_cleartext`] check) against `known`, the user's credential when the
    /// login began. If it fails for a user from Secrets Manager, the secret is read again
    /// (debounced; a client may hold a password rotated a moment ago) and `verify` runs once
    /// more on the result. Unknown users cause no read.
    pub async fn authenticate(
        &self,
        known: Option<Credential>,
        verify: impl Fn(&Credential) -> bool,
    ) -> Option<Credential> {
        let cred = known?;
        if verify(&cred) {
            return Some(cred);
        }
        let Origin::Secret { id, generation } = &cred.origin else {
            return None;
        };
        let deadline = TokioInstant::now() + CLIENT_REREAD_WAIT;
        if self
            .reread(
                id,
                *generation,
                deadline,
                "a client's password matched none Sluice knows",
            )
            .await
            == Reread::NotDone
        {
            return None;
        }
        self.get(&cred.username).filter(|fresh| verify(fresh))
    }

    /// What to log in to the backend at `address` (an entry of `backend.address`) as `name`
    /// with, best first: an RDS IAM token for `[rds_iam] users` (signed for that host); the
    /// passwords Sluice knows; for a database account, the proof of its last client login.
    pub fn backend_login(&self, name: &str, address: &str) -> Option<BackendLogin> {
        if let Some(token) = self.rds.as_ref().and_then(|r| r.token(name, address)) {
            return Some(BackendLogin {
                secrets: vec![BackendSecret::RdsToken(token)],
                reread: None,
            });
        }
        let users = self.read();
        let Some(id) = users.by_name.get(name) else {
            if let Some(c) = users.statics.get(name) {
                return Some(BackendLogin {
                    secrets: vec![BackendSecret::Password(c.password.clone())],
                    reread: None,
                });
            }
            let secret = self.accounts.as_ref()?.backend_secret(name)?;
            return Some(BackendLogin {
                secrets: vec![secret],
                reread: None,
            });
        };
        let user = users.secrets.get(id)?;
        let cred = &user.credential;
        let candidates: Vec<&Secret> = std::iter::once(&cred.password)
            .chain(user.pending.as_ref())
            .chain(cred.live_previous(Instant::now()))
            .collect();
        let mut passwords: Vec<Secret> = Vec::with_capacity(candidates.len());
        let first = user
            .backend_ok
            .as_ref()
            .filter(|ok| candidates.contains(ok));
        for pw in first.into_iter().chain(candidates.iter().copied()) {
            if !passwords.contains(pw) {
                passwords.push(pw.clone());
            }
        }
        let generation = match &cred.origin {
            Origin::Secret { generation, .. } => *generation,
            _ => 0,
        };
        Some(BackendLogin {
            secrets: passwords.into_iter().map(BackendSecret::Password).collect(),
            reread: Some((id.clone(), generation)),
        })
    }

    /// What to log in to the backend as `name` with: the password it accepted last, or the
    /// current one; a token; a database account's proof.
    pub fn backend_password(&self, name: &str, address: &str) -> Option<BackendSecret> {
        self.backend_login(name, address)
            .and_then(|login| login.secrets.into_iter().next())
    }

    /// Records that the database accepted `secret` for `name`, so it is tried first.
    pub fn backend_accepted(&self, name: &str, secret: &BackendSecret) {
        let BackendSecret::Password(password) = secret else {
            return;
        };
        {
            // The usual case, under the shared lock: nothing to record.
            let users = self.read();
            let known = users.by_name.get(name).and_then(|id| users.secrets.get(id));
            if known.is_none_or(|u| u.backend_ok.as_ref() == Some(password)) {
                return;
            }
        }
        let mut users = self.write();
        let Some(id) = users.by_name.get(name).cloned() else {
            return;
        };
        if let Some(user) = users.secrets.get_mut(&id)
            && user.backend_ok.as_ref() != Some(password)
        {
            if user.credential.password != *password {
                tracing::info!(user = %name, secret_id = %id,
                    "the database accepts a password other than the secret's current one \
                     (a rotation is under way)");
            }
            user.backend_ok = Some(password.clone());
        }
    }

    /// After the database refused every password of `login`: reads the user's secret again,
    /// unless that happened since `login` was taken; waits at most until `deadline`.
    pub async fn reread_after_refusal(
        &self,
        login: &BackendLogin,
        deadline: TokioInstant,
    ) -> Reread {
        let Some((id, generation)) = &login.reread else {
            return Reread::NotDone;
        };
        self.reread(
            id,
            *generation,
            deadline,
            "the database refused every password Sluice knows",
        )
        .await
    }

    /// Reads secret `id` again unless a read succeeded after `seen` (its generation then). A
    /// read that completed while this caller waited for its turn counts as this caller's:
    /// a storm of refusals causes one read.
    async fn reread(
        &self,
        id: &Arc<str>,
        seen: u64,
        deadline: TokioInstant,
        why: &'static str,
    ) -> Reread {
        let Some(reads) = self.secrets.as_ref().and_then(|s| s.reads.get(id)) else {
            return Reread::NotDone;
        };
        let completed = reads.completed.load(Ordering::Acquire);
        let Ok(mut state) = tokio::time::timeout_at(deadline, reads.state.lock()).await else {
            return Reread::NotDone;
        };
        if self.generation(id) > seen {
            return Reread::Done;
        }
        if reads.completed.load(Ordering::Acquire) > completed {
            return state.last_outcome;
        }
        if let Some(last) = state.last_start {
            let next = last + MIN_REREAD_INTERVAL;
            if next > deadline {
                return Reread::NotDone;
            }
            tokio::time::sleep_until(next).await;
        }
        tracing::info!(secret_id = %id, reason = why, "reading the secret again");
        let Ok(outcome) = tokio::time::timeout_at(deadline, self.read_now(id, &mut state)).await
        else {
            return Reread::NotDone;
        };
        outcome
    }

    /// Reads secret `id` and installs what it holds; the caller holds its read state. A
    /// failure is logged and keeps the last good value.
    async fn read_now(&self, id: &Arc<str>, state: &mut ReadState) -> Reread {
        let Some(source) = &self.secrets else {
            return Reread::NotDone;
        };
        state.last_start = Some(TokioInstant::now());
        let result = source.client.fetch(id).await.and_then(|f| {
            self.apply(id, f, Instant::now())
                .map_err(|reason| SecretError::new(id, reason))
        });
        let outcome = match result {
            Ok(()) => Reread::Done,
            Err(e) => {
                tracing::warn!(secret_id = %id, error = %e, "cannot read the secret; keeping the last good value");
                Reread::NotDone
            }
        };
        state.last_outcome = outcome;
        if let Some(reads) = source.reads.get(id) {
            if outcome == Reread::NotDone {
                reads.failed.fetch_add(1, Ordering::Relaxed);
            }
            reads.completed.fetch_add(1, Ordering::Release);
        }
        outcome
    }

    /// Reads of Secrets Manager completed so far (successful or not), all secrets together.
    pub fn secret_reads(&self) -> u64 {
        self.secrets.as_ref().map_or(0, |s| {
            s.reads
                .values()
                .map(|r| r.completed.load(Ordering::Relaxed))
                .sum()
        })
    }

    /// Reads of Secrets Manager after the start (refreshes and re-reads), all secrets
    /// together: (succeeded, failed).
    pub fn secret_read_outcomes(&self) -> (u64, u64) {
        self.secrets.as_ref().map_or((0, 0), |s| {
            s.reads.values().fold((0, 0), |(ok, failed), r| {
                let f = r.failed.load(Ordering::Relaxed);
                let all = r.completed.load(Ordering::Relaxed);
                (ok + all.saturating_sub(f), failed + f)
            })
        })
    }

    /// Counts of IAM logins, STS calls, account lookups and token refreshes so far.
    pub fn identity_counts(&self) -> IdentityCounts {
        let mut c = IdentityCounts::default();
        if let Some(v) = &self.iam {
            let n = v.counts();
            c.iam_logins = [&n.verified, &n.cached, &n.refused, &n.unavailable]
                .map(|a| a.load(Ordering::Relaxed));
            c.sts_calls = (
                n.sts_calls.load(Ordering::Relaxed),
                n.sts_failures.load(Ordering::Relaxed),
            );
        }
        if let Some(a) = &self.accounts {
            let n = &a.counts;
            c.account_lookups = [&n.found, &n.absent, &n.failed].map(|a| a.load(Ordering::Relaxed));
        }
        if let Some(r) = &self.rds {
            c.rds_token_refreshes = (
                r.refreshed.load(Ordering::Relaxed),
                r.failed.load(Ordering::Relaxed),
            );
        }
        c
    }

    /// Users whose previous password clients may still log in with (a rotation is recent).
    pub fn users_in_rotation_window(&self) -> usize {
        let now = Instant::now();
        self.read()
            .secrets
            .values()
            .filter(|u| u.credential.live_previous(now).is_some())
            .count()
    }

    /// How many times secret `id` was read successfully.
    fn generation(&self, id: &str) -> u64 {
        let users = self.read();
        match users.secrets.get(id).map(|s| &s.credential.origin) {
            Some(Origin::Secret { generation, .. }) => *generation,
            _ => 0,
        }
    }

    /// Reads every secret again; a failure keeps that secret's last good value.
    pub async fn refresh(&self) {
        let Some(source) = &self.secrets else { return };
        for (id, reads) in &source.reads {
            let mut state = reads.state.lock().await;
            if self.read_now(id, &mut state).await == Reread::Done {
                tracing::debug!(secret_id = %id, "refreshed the secret");
            }
        }
    }

    /// Refreshes every secret each `refresh_interval` until `shutdown` turns true or these
    /// credentials are dropped. Does nothing without secrets.
    pub fn spawn_refresh(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if let Some(rds) = &self.rds {
            rds.spawn_refresh(shutdown.clone());
        }
        let Some(source) = &self.secrets else { return };
        let every = source.settings.refresh_interval;
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(TokioInstant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = crate::context::stop_requested(&mut shutdown) => return,
                }
                let Some(credentials) = weak.upgrade() else {
                    return;
                };
                tokio::select! {
                    _ = credentials.refresh() => {}
                    _ = crate::context::stop_requested(&mut shutdown) => return,
                }
            }
        });
    }

    /// Installs what a read of secret `id` found. A new password becomes current and the old
    /// one previous (for `rotation_window`). Fails, changing nothing, if another secret
    /// already holds the same user.
    fn apply(
        &self,
        id: &Arc<str>,
        fetched: FetchedSecret,
        now: Instant,
    ) -> Result<(), SecretErrorReason> {
        let window = self
            .secrets
            .as_ref()
            .map_or(Duration::ZERO, |s| s.settings.rotation_window);
        let FetchedSecret {
            current,
            pending,
            version_id,
        } = fetched;
        let mut users = self.write();
        if let Some(other) = users.by_name.get(&current.username)
            && other != id
        {
            return Err(SecretErrorReason::DuplicateUser {
                username: current.username,
                other: other.to_string(),
            });
        }
        if users.statics.contains_key(&current.username)
            && !users.by_name.contains_key(&current.username)
        {
            tracing::warn!(user = %current.username, secret_id = %id,
                "user is both in [[users]] and in a secret; the secret's password is used");
        }
        tracing::debug!(secret_id = %id, user = %current.username, version = version_id.as_deref().unwrap_or(""),
            host = current.host.as_deref().unwrap_or(""), port = current.port.unwrap_or(0),
            dbname = current.dbname.as_deref().unwrap_or(""), engine = current.engine.as_deref().unwrap_or(""),
            pending = pending.is_some(), "secret read");
        let old = users.secrets.remove(id);
        let (generation, previous, backend_ok) = match old {
            Some(old) if *old.credential.username == *current.username => {
                let generation = match old.credential.origin {
                    Origin::Secret { generation, .. } => generation + 1,
                    _ => 1,
                };
                let previous = if old.credential.password == current.password {
                    old.credential.previous
                } else {
                    tracing::info!(secret_id = %id, user = %current.username,
                        version = version_id.as_deref().unwrap_or(""),
                        rotation_window = %humantime::format_duration(window),
                        "the secret has a new password; the previous one is accepted for the rotation window");
                    (!window.is_zero()).then(|| Previous {
                        password: old.credential.password,
                        until: now + window,
                    })
                };
                (generation, previous, old.backend_ok)
            }
            Some(old) => {
                tracing::warn!(secret_id = %id, old_user = %old.credential.username, user = %current.username,
                    "the secret now names another user");
                users.by_name.remove(&*old.credential.username);
                let generation = match old.credential.origin {
                    Origin::Secret { generation, .. } => generation + 1,
                    _ => 1,
                };
                (generation, None, None)
            }
            None => (1, None, None),
        };
        let username: Arc<str> = Arc::from(current.username.as_str());
        let credential = Credential {
            username,
            password: current.password,
            auth_plugin: AuthPluginName::MysqlNativePassword,
            previous,
            origin: Origin::Secret {
                id: id.clone(),
                generation,
            },
        };
        users.by_name.insert(current.username, id.clone());
        users.secrets.insert(
            id.clone(),
            SecretUser {
                credential,
                pending,
                backend_ok,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests;
