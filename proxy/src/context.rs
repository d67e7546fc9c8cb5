//! The state every task shares: the live (reloadable) configuration, credentials, the pool,
//! counters and metrics, the session registry, and the shutdown signal. The listener
//! (`server`) builds it; the frontend, the admin console and the credentials refresh read it.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::admin::health::Readiness;
use crate::auth::{ServerRsaKey, Sha2Cache};
use crate::backend::{BackendError, BorrowError, Pool, PoolKey, PooledConn};
use crate::config::Config;
use crate::credentials::Credentials;
use crate::errors::ClientError;
use crate::logsafe::Escaped;
use crate::metrics::{Metrics, Scrape, UserMetrics};
use crate::protocol::CapabilityFlags;
use crate::registry::Registry;
use crate::reload::{ConfigSource, ReloadError, ReloadHook, ReloadReport};
use crate::sql::Digest;
use crate::stats::Stats;
use crate::tls::ClientTls;

/// Schemas remembered as valid per user before the cache is cleared.
const MAX_KNOWN_SCHEMAS: usize = 4096;

/// State every client task shares.
pub struct Shared {
    /// The running configuration; swapped whole by a reload. Read it with [`Shared::config`].
    pub(crate) config: ArcSwap<Config>,
    pub credentials: Arc<Credentials>,
    pub pool: Pool,
    pub stats: Arc<Stats>,
    pub registry: Registry,
    /// Version string announced to clients.
    pub server_version: String,
    /// The backend's server family and version, which decide how statement text is read.
    pub dialect: crate::sql::Dialect,
    /// Bytes of large statements read whole for classification, across all sessions.
    pub classify_buffered: std::sync::atomic::AtomicUsize,
    /// Prepared statement texts, stored once however many sessions prepare them.
    pub statement_texts: crate::backend::statements::TextInterner,
    /// Prepared statements held by all sessions: count and text bytes (bounded).
    pub statement_budget: Arc<crate::frontend::StatementBudget>,
    /// Capabilities offered to clients.
    pub capabilities: CapabilityFlags,
    /// Collation announced in the greeting.
    pub collation: u8,
    /// Flips to true when Sluice starts shutting down (draining).
    pub shutdown: watch::Receiver<bool>,
    /// Client TLS, unless `tls.mode` is disabled.
    pub tls: Option<Arc<ClientTls>>,
    /// caching_sha2 users who passed a full authentication (`caching_sha2_full_auth`).
    pub sha2_cache: Sha2Cache,
    /// The key caching_sha2 clients without TLS encrypt their password with.
    pub rsa_key: Option<ServerRsaKey>,
    pub(crate) shutdown_tx: watch::Sender<bool>,
    /// Flips to true once the drain is over; the admin console and the HTTP listener end.
    pub stopped: watch::Receiver<bool>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The cached answer of `/readyz`.
    pub readiness: Readiness,
    /// Where RELOAD and SIGHUP read the configuration from.
    pub(crate) config_source: Mutex<Option<ConfigSource>>,
    /// Hooks that apply settings owned elsewhere (log level, TLS certificates) on reload.
    pub(crate) reload_hooks: Mutex<Vec<ReloadHook>>,
    /// One reload at a time (SIGHUP and RELOAD may coincide).
    pub(crate) reload_lock: Mutex<()>,
    /// (user, schema) pairs the backend accepted recently, so logins naming a schema need no
    /// round trip.
    pub(crate) known_schemas: Mutex<HashSet<(Arc<str>, String)>>,
    /// Refusals at the client limit are logged at most once a second, with a count.
    pub(crate) refusals: RefusalLog,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("server_version", &self.server_version)
            .field("sessions", &self.registry.len())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The running configuration (cheap: no lock, no copy).
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// True once Sluice started draining (SIGTERM, SHUTDOWN): `/readyz` says not ready.
    pub fn is_draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Starts the drain, as SIGTERM does.
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
    }

    /// Borrows a backend connection for `key` within `backend.borrow_timeout`, recording the
    /// wait in `user`'s borrow latency. Failures are turned into the client's error by
    /// [`Shared::borrow_error`].
    pub async fn borrow(
        &self,
        key: &PoolKey,
        schema: Option<&str>,
        user: &UserMetrics,
    ) -> Result<PooledConn, BorrowError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config().backend.borrow_timeout;
        let result = self.pool.borrow(key, schema, deadline).await;
        user.borrow_latency.record(started.elapsed().as_secs_f64());
        if matches!(
            result,
            Err(BorrowError::Timeout { .. } | BorrowError::Unavailable { .. })
        ) {
            user.borrow_timeouts.increment(1);
        }
        result
    }

    /// The capabilities offered to a client logging in now: those of start, less
    /// `CLIENT_DEPRECATE_EOF` when the current writer does not have it (server capabilities
    /// are taken from the writer the monitor found, never assumed from the start).
    pub fn offered_caps(&self) -> CapabilityFlags {
        let mut caps = self.capabilities;
        if let Some(server) = self.pool.topology().server_caps()
            && !server.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF)
        {
            caps.remove(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        }
        caps
    }

    /// Counts an error Sluice sends to a client (by kind) and returns its packet.
    pub fn error_packet(&self, err: &ClientError) -> Vec<u8> {
        self.metrics.error_sent(err.kind());
        err.to_packet()
    }

    /// Sets where RELOAD and SIGHUP read the configuration from.
    pub fn set_config_source(&self, source: ConfigSource) {
        *self.config_source.lock().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// Registers a hook that applies part of the configuration on every reload (the log
    /// level, client TLS certificates).
    pub fn add_reload_hook(&self, hook: ReloadHook) {
        self.reload_hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }

    /// Whether a reload applies `key` at once (for SHOW CONFIG).
    pub fn reloads_live(&self, key: &str) -> bool {
        crate::reload::is_live(key)
            || self
                .reload_hooks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|h| h.covers(key))
    }

    /// Reads the configuration again from its source and applies it (SIGHUP, RELOAD). An
    /// unreadable or invalid file changes nothing.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let source = self
            .config_source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(source) = source else {
            self.metrics.reloaded(false);
            return Err(ReloadError::NoSource);
        };
        match source() {
            Ok(new) => Ok(self.apply_config(new)),
            Err(e) => {
                self.metrics.reloaded(false);
                tracing::error!(error = %e, "configuration not reloaded; nothing changed");
                Err(e.into())
            }
        }
    }

    /// Applies a new configuration: live settings at once, the rest named as needing a
    /// restart. Clients stay connected; transactions in flight keep their connections.
    pub fn apply_config(&self, new: Config) -> ReloadReport {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.config();
        let (effective, report) = {
            let hooks = self.reload_hooks.lock().unwrap_or_else(|p| p.into_inner());
            crate::reload::plan(&old, new, &hooks)
        };
        self.pool.apply_settings(&effective.backend);
        self.credentials.replace(&effective.users);
        self.config.store(Arc::new(effective));
        self.metrics.reloaded(report.failed().is_empty());
        let restart = report.needs_restart();
        if !restart.is_empty() {
            tracing::warn!(settings = %restart.join(", "), "configuration reloaded; these settings keep their running values until a restart");
        }
        tracing::info!(applied = %report.applied().join(", "), failed = %report.failed().join(", "), "configuration reloaded");
        report
    }

    /// Renders the metrics, with the gauges read now.
    pub fn render_metrics(&self) -> String {
        let (_, idle, waiting) = self.pool.counts();
        let in_transaction = self
            .registry
            .sessions()
            .iter()
            .filter(|s| s.in_transaction())
            .count();
        self.metrics.refresh(
            &self.stats,
            Scrape {
                idle,
                waiting,
                max_connections: self.pool.max_connections(),
                in_transaction,
                paused: self.pool.is_paused(),
                draining: self.is_draining(),
                secret_refreshes: self.credentials.secret_read_outcomes(),
                users_in_rotation_window: self.credentials.users_in_rotation_window(),
                identity: self.credentials.identity_counts(),
            },
        );
        self.metrics.render()
    }

    /// Checks that `schema` exists and `key`'s user may use it, as the server would at login.
    pub async fn check_schema(&self, key: &PoolKey, schema: &str) -> Result<(), ClientError> {
        let entry = (key.user.clone(), schema.to_string());
        if self
            .known_schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&entry)
        {
            return Ok(());
        }
        let user = self.metrics.user(&key.user);
        let mut conn = self
            .borrow(key, Some(schema), &user)
            .await
            .map_err(|e| self.borrow_error(key, e, None, true))?;
        if conn.schema.as_deref() != Some(schema)
            && let Err(e) = conn.init_db(schema).await
        {
            return Err(match e {
                BackendError::Command { code, message, .. } => ClientError {
                    code,
                    sql_state: *b"42000",
                    message,
                },
                other => {
                    conn.broken = true;
                    ClientError::backend_lost(&other.to_string())
                }
            });
        }
        drop(conn);
        self.remember_schema(&key.user, schema);
        Ok(())
    }

    /// Records that `user` may use `schema`.
    pub fn remember_schema(&self, user: &Arc<str>, schema: &str) {
        let mut known = self.known_schemas.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_KNOWN_SCHEMAS {
            known.clear();
        }
        known.insert((user.clone(), schema.to_string()));
    }

    /// Forgets schemas (after one was dropped, say).
    pub fn forget_schemas(&self) {
        self.known_schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The client-facing error for a failed borrow, logged here (a borrow timeout only with
    /// `log_timeout`, so a session can log it once), with the digest of the statement that
    /// waited, if there was one.
    pub fn borrow_error(
        &self,
        key: &PoolKey,
        e: BorrowError,
        statement: Option<&Digest>,
        log_timeout: bool,
    ) -> ClientError {
        match e {
            BorrowError::Timeout {
                waited,
                cap,
                waiting,
                last_error,
            } => {
                if log_timeout {
                    tracing::warn!(
                        user = %key.user,
                        waited_ms = waited.as_millis() as u64,
                        cap,
                        waiting,
                        paused = self.pool.is_paused(),
                        last_error = last_error.as_deref().unwrap_or(""),
                        digest = %statement.map(ToString::to_string).unwrap_or_default(),
                        statement = %Escaped(statement.map_or("", |d| d.text.as_str())),
                        "borrow timeout"
                    );
                }
                ClientError::borrow_timeout(waited, &key.user, cap, waiting, last_error.as_deref())
            }
            BorrowError::Unavailable {
                waited,
                down_for,
                last_error,
            } => {
                if log_timeout {
                    tracing::warn!(
                        user = %key.user,
                        waited_ms = waited.as_millis() as u64,
                        down_ms = down_for.as_millis() as u64,
                        last_error = last_error.as_deref().unwrap_or(""),
                        "no writable database host; failing a borrow that cannot be served in time"
                    );
                }
                ClientError::database_unavailable(down_for, last_error.as_deref())
            }
            BorrowError::Incompatible(e) => ClientError::backend_incompatible(&e.to_string()),
            BorrowError::Login(e) => {
                tracing::error!(user = %key.user, error = %e, "the database refused Sluice's login");
                ClientError::backend_login(&key.user, &e.to_string())
            }
            BorrowError::UnknownUser(u) => {
                ClientError::backend_login(&u, "the user is no longer configured")
            }
            BorrowError::ShuttingDown => ClientError::shutting_down(),
        }
    }
}

/// Logs refusals at the client limit at most once a second, counting the ones in between.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    start: Instant,
    second: AtomicU64,
    suppressed: AtomicU64,
}

impl RefusalLog {
    pub(crate) fn new() -> Self {
        RefusalLog {
            start: Instant::now(),
            second: AtomicU64::new(u64::MAX),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(refusals not logged since the last log line)` when this one should be logged.
    pub(crate) fn should_log(&self) -> Option<u64> {
        let now = self.start.elapsed().as_secs();
        if self.second.swap(now, Relaxed) != now {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

/// Completes once shutdown was requested (the watch's read guard is not kept).
pub(crate) async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
