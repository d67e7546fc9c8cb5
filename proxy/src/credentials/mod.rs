//! Where user passwords come from, and which of them are accepted right now.
//!
//! Two sources:
//! - the static `[[users]]` tables of the configuration ([`static_users`]), for local use;
//! - AWS Secrets Manager ([`secrets_manager`]): one RDS-format secret ([`rds_secret`]) per
//!   database user, as RDS Proxy reads them. Such users authenticate clients with
//!   `mysql_native_password`.
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

pub mod rds_secret;
pub mod secrets_manager;
mod static_users;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};
use tokio::time::Instant as TokioInstant;

use crate::auth;
use crate::config::{AuthPluginName, Config, Secret, SecretsManagerConfig, UserConfig};
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
}

impl Credential {
    /// Checks a client's scramble answer (`mysql_native_password` or `caching_sha2_password`
    /// fast authentication) against the current password, then against the previous one while
    /// its rotation window lasts.
    pub fn verify_scramble(
        &self,
        plugin: AuthPluginName,
        scramble: &[u8; 20],
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
            Origin::Static => None,
            Origin::Secret { id, .. } => Some(id),
        }
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

/// The passwords to try, in order, when logging in to the backend as one user.
#[derive(Debug, Clone)]
pub struct BackendLogin {
    pub passwords: Vec<Secret>,
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
    /// reads every secret (AWS settings from the standard environment). Fails on the first
    /// secret that cannot be read or used; the error names it and never holds its value.
    pub async fn load(config: &Config) -> Result<Self, SecretError> {
        let settings = &config.secrets_manager;
        if settings.secret_ids.is_empty() {
            return Ok(Self::from_config(&config.users));
        }
        let client = SecretsManagerClient::from_env().await;
        Self::load_with(config, client).await
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

    /// The user called `name`, if known.
    pub fn get(&self, name: &str) -> Option<Credential> {
        let users = self.read();
        match users.by_name.get(name) {
            Some(id) => users.secrets.get(id).map(|s| s.credential.clone()),
            None => users.statics.get(name).cloned(),
        }
    }

    /// Some known user, the first by name (secrets first), for checks that need to log in.
    pub fn any(&self) -> Option<Credential> {
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
    }

    /// True while no user is known (Secrets Manager not read yet, say): /readyz says not ready.
    pub fn is_empty(&self) -> bool {
        let users = self.read();
        users.statics.is_empty() && users.secrets.is_empty()
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

    /// The passwords to log in to the backend as `name` with, best first.
    pub fn backend_login(&self, name: &str) -> Option<BackendLogin> {
        let users = self.read();
        let Some(id) = users.by_name.get(name) else {
            return users.statics.get(name).map(|c| BackendLogin {
                passwords: vec![c.password.clone()],
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
            Origin::Static => 0,
        };
        Some(BackendLogin {
            passwords,
            reread: Some((id.clone(), generation)),
        })
    }

    /// The password to log in to the backend as `name` with: the one it accepted last, or the
    /// current one.
    pub fn backend_password(&self, name: &str) -> Option<Secret> {
        self.backend_login(name)
            .and_then(|login| login.passwords.into_iter().next())
    }

    /// Records that the database accepted `password` for `name`, so it is tried first.
    pub fn backend_accepted(&self, name: &str, password: &Secret) {
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
                    Origin::Static => 1,
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
                    Origin::Static => 1,
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
