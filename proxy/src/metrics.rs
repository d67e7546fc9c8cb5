//! Prometheus metrics of one proxy, named after RDS Proxy's CloudWatch metrics (snake case,
//! `sluice_` prefix, unit suffixes) so dashboards translate.
//!
//! Each proxy owns its recorder: several proxies run in one test process, and a global recorder
//! would mix their figures. Handles are registered once through the recorder and kept (per user,
//! created on first use), so recording costs an atomic operation. Figures [`Stats`] already
//! keeps, and gauges that are cheaper to read than to maintain (pool sizes, sessions in a
//! transaction), are copied in when a scrape comes ([`Metrics::refresh`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::credentials::IdentityCounts;
use crate::session::{PinReason, ResetReason};
use crate::stats::Stats;

/// Metric names. The RDS Proxy CloudWatch metric each one mirrors is named where there is one.
pub mod names {
    /// Gauge: open client connections, logged in or not (ClientConnections).
    pub const CLIENT_CONNECTIONS: &str = "sluice_client_connections";
    /// Counter: client connections accepted (ClientConnectionsReceived).
    pub const CLIENT_CONNECTIONS_RECEIVED: &str = "sluice_client_connections_received_total";
    /// Counter by `user`, `tls`: logins completed (ClientConnectionsSetupSucceeded).
    pub const CLIENT_SETUP_SUCCEEDED: &str = "sluice_client_connections_setup_succeeded_total";
    /// Counter by `user`: wrong passwords and unknown users (ClientConnectionsSetupFailedAuth).
    pub const CLIENT_SETUP_FAILED_AUTH: &str = "sluice_client_connections_setup_failed_auth_total";
    /// Counter by `reason`: connections that ended before a completed login.
    pub const CLIENT_SETUP_FAILED: &str = "sluice_client_connections_setup_failed_total";
    /// Gauge by `user`, `tls`: logged-in client sessions (ClientConnectionsTLS / NoTLS).
    pub const CLIENT_AUTHENTICATED: &str = "sluice_client_connections_authenticated";
    /// Gauge: open backend connections (DatabaseConnections).
    pub const DATABASE_CONNECTIONS: &str = "sluice_database_connections";
    /// Gauge: backend connections lent to sessions, opening or resetting.
    pub const DATABASE_IN_USE: &str = "sluice_database_connections_in_use";
    /// Gauge: idle backend connections in the pool.
    pub const DATABASE_IDLE: &str = "sluice_database_connections_idle";
    /// Gauge: sessions inside a transaction (DatabaseConnectionsCurrentlyInTransaction).
    pub const DATABASE_IN_TRANSACTION: &str =
        "sluice_database_connections_currently_in_transaction";
    /// Gauge by `reason`: sessions pinned to their backend connection now
    /// (DatabaseConnectionsCurrentlySessionPinned).
    pub const DATABASE_PINNED: &str = "sluice_database_connections_currently_session_pinned";
    /// Counter by `reason`: sessions that became pinned.
    pub const SESSION_PINS: &str = "sluice_session_pins_total";
    /// Counter: backend connections opened (DatabaseConnectionsSetupSucceeded).
    pub const DATABASE_SETUP_SUCCEEDED: &str = "sluice_database_connections_setup_succeeded_total";
    /// Counter: backend connection attempts that failed (DatabaseConnectionsSetupFailed).
    pub const DATABASE_SETUP_FAILED: &str = "sluice_database_connections_setup_failed_total";
    /// Counter: backend connections reset before reuse.
    pub const DATABASE_RESETS: &str = "sluice_database_connection_resets_total";
    /// Counter by `reason`: connections a session gave back for a reset, by each reason
    /// that asked for one (a pin reason, `unclassified_statement`, `stored_code`, ...).
    pub const DATABASE_RESET_REASONS: &str = "sluice_database_connection_reset_reasons_total";
    /// Counter: borrows from the pool (DatabaseConnectionRequests).
    pub const DATABASE_REQUESTS: &str = "sluice_database_connection_requests_total";
    /// Histogram by `user`: time to borrow a backend connection
    /// (DatabaseConnectionsBorrowLatency).
    pub const BORROW_LATENCY: &str = "sluice_database_connections_borrow_latency_seconds";
    /// Counter by `user`: borrows that gave up after `borrow_timeout` (ERR 9501).
    pub const BORROW_TIMEOUTS: &str = "sluice_database_connection_borrow_timeouts_total";
    /// Gauge: sessions waiting for a backend connection.
    pub const BORROW_WAITERS: &str = "sluice_database_connection_borrow_waiters";
    /// Gauge: `backend.max_connections` (MaxDatabaseConnectionsAllowed).
    pub const MAX_DATABASE_CONNECTIONS: &str = "sluice_max_database_connections_allowed";
    /// Counter by `user`: client commands (QueryRequests).
    pub const QUERY_REQUESTS: &str = "sluice_query_requests_total";
    /// Histogram by `user`: from a client command to the end of Sluice's answer
    /// (QueryResponseLatency).
    pub const QUERY_RESPONSE_LATENCY: &str = "sluice_query_response_latency_seconds";
    /// Histogram by `user`: from forwarding a command to the end of the database's response
    /// (QueryDatabaseResponseLatency).
    pub const QUERY_DATABASE_RESPONSE_LATENCY: &str =
        "sluice_query_database_response_latency_seconds";
    /// Counter by `user`, `direction` (`to_client`, `to_database`): bytes relayed.
    pub const BYTES_RELAYED: &str = "sluice_bytes_relayed_total";
    /// Counter by `kind`: errors Sluice itself sent to clients.
    pub const ERRORS: &str = "sluice_errors_total";
    /// Counter: refused admin console logins.
    pub const ADMIN_LOGIN_FAILURES: &str = "sluice_admin_login_failures_total";
    /// Counter by `result` (`success`, `failure`): configuration reloads.
    pub const CONFIG_RELOADS: &str = "sluice_config_reloads_total";
    /// Counter: Secrets Manager reads after the start (refreshes and re-reads), by result.
    pub const SECRET_REFRESHES: &str = "sluice_secret_refreshes_total";
    /// Gauge: users whose previous password still lets clients in (a rotation is recent).
    pub const USERS_IN_ROTATION_WINDOW: &str = "sluice_users_in_rotation_window";
    /// Counter by `result` (`verified`, `cached`, `refused`, `sts_unavailable`): IAM logins.
    pub const IAM_LOGINS: &str = "sluice_iam_logins_total";
    /// Counter by `result` (`answered`, `failed`): calls to STS to check IAM tokens.
    pub const STS_REQUESTS: &str = "sluice_iam_sts_requests_total";
    /// Counter by `result` (`found`, `absent`, `failed`): database account lookups.
    pub const ACCOUNT_LOOKUPS: &str = "sluice_database_account_lookups_total";
    /// Counter by `result` (`success`, `failure`): RDS IAM token refreshes.
    pub const RDS_TOKEN_REFRESHES: &str = "sluice_rds_iam_token_refreshes_total";
    /// Gauge: 1 while PAUSE holds new transactions.
    pub const PAUSED: &str = "sluice_paused";
    /// Gauge: 1 while Sluice drains before stopping.
    pub const DRAINING: &str = "sluice_draining";
    /// Gauge by `version`: always 1.
    pub const BUILD_INFO: &str = "sluice_build_info";
}

use names::*;

/// The `user` label of authentication failures for names Sluice does not know: a label per
/// guessed name would let anyone grow the metrics without bound.
pub const UNKNOWN_USER: &str = "(unknown)";

/// Histogram buckets of every `_seconds` metric: 100 µs to 2 min (the default borrow timeout).
const LATENCY_BUCKETS: [f64; 20] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

static METADATA: Metadata<'static> = Metadata::new("sluice", Level::INFO, Some(module_path!()));

/// Handles for one user's labelled metrics, kept by its sessions.
#[derive(Debug)]
pub struct UserMetrics {
    pub queries: Counter,
    pub query_latency: Histogram,
    pub database_latency: Histogram,
    pub borrow_latency: Histogram,
    pub borrow_timeouts: Counter,
    pub auth_failures: Counter,
    /// Index 0 without TLS, 1 with.
    setup_succeeded: [Counter; 2],
    /// Index 0 without TLS, 1 with.
    authenticated: [Gauge; 2],
    pub bytes_to_client: Counter,
    pub bytes_to_database: Counter,
}

/// Counts one logged-in session in `sluice_client_connections_authenticated` while it lives.
#[derive(Debug)]
pub struct SessionGauge {
    user: Arc<UserMetrics>,
    tls: bool,
}

impl SessionGauge {
    /// The user's metrics.
    pub fn user(&self) -> &Arc<UserMetrics> {
        &self.user
    }

    /// Whether the session's client connection uses TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.user.authenticated[usize::from(self.tls)].decrement(1.0);
    }
}

/// Figures read from the pool and the registry at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scrape {
    pub idle: usize,
    pub waiting: usize,
    pub max_connections: usize,
    pub in_transaction: usize,
    pub paused: bool,
    pub draining: bool,
    /// Secrets Manager reads after the start: (succeeded, failed).
    pub secret_refreshes: (u64, u64),
    pub users_in_rotation_window: usize,
    /// IAM logins, STS calls, account lookups, RDS token refreshes.
    pub identity: IdentityCounts,
}

/// One proxy's metrics: its own recorder and the handles into it.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    users: RwLock<HashMap<Arc<str>, Arc<UserMetrics>>>,
    /// Counters with one label whose values appear over time (error kinds, failure reasons).
    by_label: Mutex<HashMap<(&'static str, String), Counter>>,
    client_connections: Gauge,
    client_received: Counter,
    database_connections: Gauge,
    database_in_use: Gauge,
    database_idle: Gauge,
    database_in_transaction: Gauge,
    pinned: Vec<Gauge>,
    pins: Vec<Counter>,
    database_setup_succeeded: Counter,
    database_setup_failed: Counter,
    database_resets: Counter,
    reset_reasons: Vec<Counter>,
    database_requests: Counter,
    borrow_waiters: Gauge,
    max_connections: Gauge,
    unknown_auth_failures: Counter,
    admin_login_failures: Counter,
    paused: Gauge,
    draining: Gauge,
    /// Succeeded, failed.
    secret_refreshes: [Counter; 2],
    users_in_rotation_window: Gauge,
    /// By the labels of [`IDENTITY_COUNTERS`], in order.
    identity: Vec<Counter>,
}

/// The identity counters: name, label, and its values in [`IdentityCounts`] order.
const IDENTITY_COUNTERS: [(&str, &str, &[&str]); 4] = [
    (
        IAM_LOGINS,
        "result",
        &["verified", "cached", "refused", "sts_unavailable"],
    ),
    (STS_REQUESTS, "result", &["answered", "failed"]),
    (ACCOUNT_LOOKUPS, "result", &["found", "absent", "failed"]),
    (RDS_TOKEN_REFRESHES, "result", &["success", "failure"]),
];

impl IdentityCounts {
    /// The figures in [`IDENTITY_COUNTERS`] order.
    fn values(&self) -> [u64; 11] {
        let [a, b, c, d] = self.iam_logins;
        let (calls, failed) = self.sts_calls;
        let [f, g, h] = self.account_lookups;
        let (ok, bad) = self.rds_token_refreshes;
        [
            a,
            b,
            c,
            d,
            calls.saturating_sub(failed),
            failed,
            f,
            g,
            h,
            ok,
            bad,
        ]
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh recorder with every metric described and the unlabelled ones registered, so a
    /// scrape shows them from the start.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS);
        // Only an empty bucket list is refused; without buckets histograms render as summaries.
        let recorder = builder
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        describe(&recorder);
        let handle = recorder.handle();
        let counter =
            |name: &'static str| recorder.register_counter(&Key::from_static_name(name), &METADATA);
        let gauge =
            |name: &'static str| recorder.register_gauge(&Key::from_static_name(name), &METADATA);
        let by_reason_gauge = |name: &'static str| {
            PinReason::ALL
                .iter()
                .map(|r| {
                    recorder.register_gauge(
                        &Key::from_parts(name, vec![Label::new("reason", r.as_str())]),
                        &METADATA,
                    )
                })
                .collect()
        };
        let pins = PinReason::ALL
            .iter()
            .map(|r| {
                recorder.register_counter(
                    &Key::from_parts(SESSION_PINS, vec![Label::new("reason", r.as_str())]),
                    &METADATA,
                )
            })
            .collect();
        let reset_reasons = ResetReason::ALL
            .iter()
            .map(|r| {
                recorder.register_counter(
                    &Key::from_parts(
                        DATABASE_RESET_REASONS,
                        vec![Label::new("reason", r.as_str())],
                    ),
                    &METADATA,
                )
            })
            .collect();
        let metrics = Metrics {
            client_connections: gauge(CLIENT_CONNECTIONS),
            client_received: counter(CLIENT_CONNECTIONS_RECEIVED),
            database_connections: gauge(DATABASE_CONNECTIONS),
            database_in_use: gauge(DATABASE_IN_USE),
            database_idle: gauge(DATABASE_IDLE),
            database_in_transaction: gauge(DATABASE_IN_TRANSACTION),
            pinned: by_reason_gauge(DATABASE_PINNED),
            pins,
            database_setup_succeeded: counter(DATABASE_SETUP_SUCCEEDED),
            database_setup_failed: counter(DATABASE_SETUP_FAILED),
            database_resets: counter(DATABASE_RESETS),
            reset_reasons,
            database_requests: counter(DATABASE_REQUESTS),
            borrow_waiters: gauge(BORROW_WAITERS),
            max_connections: gauge(MAX_DATABASE_CONNECTIONS),
            unknown_auth_failures: recorder.register_counter(
                &Key::from_parts(
                    CLIENT_SETUP_FAILED_AUTH,
                    vec![Label::new("user", UNKNOWN_USER)],
                ),
                &METADATA,
            ),
            admin_login_failures: counter(ADMIN_LOGIN_FAILURES),
            paused: gauge(PAUSED),
            draining: gauge(DRAINING),
            secret_refreshes: ["success", "failure"].map(|result| {
                recorder.register_counter(
                    &Key::from_parts(SECRET_REFRESHES, vec![Label::new("result", result)]),
                    &METADATA,
                )
            }),
            users_in_rotation_window: gauge(USERS_IN_ROTATION_WINDOW),
            identity: IDENTITY_COUNTERS
                .iter()
                .flat_map(|(name, label, values)| {
                    values.iter().map(|v| {
                        recorder.register_counter(
                            &Key::from_parts(*name, vec![Label::new(*label, *v)]),
                            &METADATA,
                        )
                    })
                })
                .collect(),
            users: RwLock::new(HashMap::new()),
            by_label: Mutex::new(HashMap::new()),
            handle,
            recorder,
        };
        metrics
            .recorder
            .register_gauge(
                &Key::from_parts(
                    BUILD_INFO,
                    vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
                ),
                &METADATA,
            )
            .set(1.0);
        metrics
    }

    /// The handles for `user` (a user Sluice knows), created on first use.
    pub fn user(&self, user: &Arc<str>) -> Arc<UserMetrics> {
        if let Some(m) = self
            .users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
        {
            return m.clone();
        }
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        users
            .entry(user.clone())
            .or_insert_with(|| Arc::new(self.register_user(user)))
            .clone()
    }

    fn register_user(&self, user: &str) -> UserMetrics {
        let r = &self.recorder;
        let key = |name: &'static str, extra: Option<(&'static str, &'static str)>| {
            let mut labels = vec![Label::new("user", user.to_string())];
            if let Some((k, v)) = extra {
                labels.push(Label::new(k, v));
            }
            Key::from_parts(name, labels)
        };
        let tls = |v: &'static str| Some(("tls", v));
        UserMetrics {
            queries: r.register_counter(&key(QUERY_REQUESTS, None), &METADATA),
            query_latency: r.register_histogram(&key(QUERY_RESPONSE_LATENCY, None), &METADATA),
            database_latency: r
                .register_histogram(&key(QUERY_DATABASE_RESPONSE_LATENCY, None), &METADATA),
            borrow_latency: r.register_histogram(&key(BORROW_LATENCY, None), &METADATA),
            borrow_timeouts: r.register_counter(&key(BORROW_TIMEOUTS, None), &METADATA),
            auth_failures: r.register_counter(&key(CLIENT_SETUP_FAILED_AUTH, None), &METADATA),
            setup_succeeded: [
                r.register_counter(&key(CLIENT_SETUP_SUCCEEDED, tls("false")), &METADATA),
                r.register_counter(&key(CLIENT_SETUP_SUCCEEDED, tls("true")), &METADATA),
            ],
            authenticated: [
                r.register_gauge(&key(CLIENT_AUTHENTICATED, tls("false")), &METADATA),
                r.register_gauge(&key(CLIENT_AUTHENTICATED, tls("true")), &METADATA),
            ],
            bytes_to_client: r.register_counter(
                &key(BYTES_RELAYED, Some(("direction", "to_client"))),
                &METADATA,
            ),
            bytes_to_database: r.register_counter(
                &key(BYTES_RELAYED, Some(("direction", "to_database"))),
                &METADATA,
            ),
        }
    }

    /// Counts a completed login of `user` and keeps it in the authenticated gauge while the
    /// returned guard lives. `tls` says whether the client connection uses TLS.
    pub fn logged_in(&self, user: &Arc<str>, tls: bool) -> SessionGauge {
        let m = self.user(user);
        m.setup_succeeded[usize::from(tls)].increment(1);
        m.authenticated[usize::from(tls)].increment(1.0);
        SessionGauge { user: m, tls }
    }

    /// Counts a refused login. Only names Sluice knows get their own label.
    pub fn auth_failed(&self, user: &str, known: bool) {
        if known {
            self.user(&Arc::from(user)).auth_failures.increment(1);
        } else {
            self.unknown_auth_failures.increment(1);
        }
    }

    /// Counts a connection that ended before its login completed, by reason (a short phrase,
    /// made into a label value).
    pub fn setup_failed(&self, reason: &str) {
        self.count_labelled(CLIENT_SETUP_FAILED, "reason", reason);
    }

    /// Counts an error Sluice itself sent to a client, by kind ([`crate::errors::ClientError::kind`]).
    pub fn error_sent(&self, kind: &'static str) {
        self.count_labelled(ERRORS, "kind", kind);
    }

    /// Counts a refused admin console login.
    pub fn admin_login_failed(&self) {
        self.admin_login_failures.increment(1);
    }

    /// Counts a configuration reload.
    pub fn reloaded(&self, ok: bool) {
        self.count_labelled(
            CONFIG_RELOADS,
            "result",
            if ok { "success" } else { "failure" },
        );
    }

    fn count_labelled(&self, name: &'static str, label: &'static str, value: &str) {
        let value = label_value(value);
        let mut map = self.by_label.lock().unwrap_or_else(|p| p.into_inner());
        let counter = map.entry((name, value.clone())).or_insert_with(|| {
            self.recorder.register_counter(
                &Key::from_parts(name, vec![Label::new(label, value)]),
                &METADATA,
            )
        });
        counter.increment(1);
    }

    /// Copies the figures kept elsewhere into the gauges and counters, before a render.
    pub fn refresh(&self, stats: &Stats, scrape: Scrape) {
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
        let backend = g(&stats.backend_connections);
        self.client_connections
            .set(g(&stats.client_connections) as f64);
        self.client_received
            .absolute(g(&stats.client_connections_total));
        self.database_connections.set(backend as f64);
        self.database_idle.set(scrape.idle as f64);
        self.database_in_use
            .set(backend.saturating_sub(scrape.idle as u64) as f64);
        self.database_in_transaction
            .set(scrape.in_transaction as f64);
        for r in PinReason::ALL {
            if let Some(gauge) = self.pinned.get(r.index()) {
                gauge.set(g(&stats.pinned_sessions[r.index()]) as f64);
            }
            if let Some(counter) = self.pins.get(r.index()) {
                counter.absolute(g(&stats.pins_total[r.index()]));
            }
        }
        self.database_setup_succeeded
            .absolute(g(&stats.backend_connections_opened));
        self.database_setup_failed
            .absolute(g(&stats.backend_connect_failures));
        self.database_resets.absolute(g(&stats.backend_resets));
        for r in ResetReason::ALL {
            if let Some(counter) = self.reset_reasons.get(r.index()) {
                counter.absolute(g(&stats.resets_by_reason[r.index()]));
            }
        }
        self.database_requests.absolute(g(&stats.borrows));
        self.borrow_waiters.set(scrape.waiting as f64);
        self.max_connections.set(scrape.max_connections as f64);
        self.paused.set(if scrape.paused { 1.0 } else { 0.0 });
        self.draining.set(if scrape.draining { 1.0 } else { 0.0 });
        let (succeeded, failed) = scrape.secret_refreshes;
        self.secret_refreshes[0].absolute(succeeded);
        self.secret_refreshes[1].absolute(failed);
        self.users_in_rotation_window
            .set(scrape.users_in_rotation_window as f64);
        for (counter, value) in self.identity.iter().zip(scrape.identity.values()) {
            counter.absolute(value);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Moves recorded histogram samples into their buckets. Renders do it too; this runs
    /// periodically so samples do not pile up in memory when nobody scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// A label value from a phrase: lower case, words joined by `_`.
fn label_value(phrase: &str) -> String {
    let mut out = String::with_capacity(phrase.len());
    for word in phrase.split(|c: char| !c.is_ascii_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('_');
        }
        out.push_str(&word.to_ascii_lowercase());
    }
    out
}

fn describe(r: &PrometheusRecorder) {
    let counters: &[(&'static str, &'static str)] = &[
        (CLIENT_CONNECTIONS_RECEIVED, "Client connections accepted."),
        (
            CLIENT_SETUP_SUCCEEDED,
            "Client logins completed, by user and TLS.",
        ),
        (
            CLIENT_SETUP_FAILED_AUTH,
            "Client logins refused for a wrong password or an unknown user, by user.",
        ),
        (
            CLIENT_SETUP_FAILED,
            "Client connections that ended before a completed login, by reason.",
        ),
        (
            SESSION_PINS,
            "Sessions that became pinned to their backend connection, by reason.",
        ),
        (
            DATABASE_SETUP_SUCCEEDED,
            "Backend connections opened and logged in.",
        ),
        (
            DATABASE_SETUP_FAILED,
            "Backend connection attempts that failed.",
        ),
        (DATABASE_RESETS, "Backend connections reset before reuse."),
        (
            DATABASE_RESET_REASONS,
            "Backend connections given back for a reset, by each reason that asked for it.",
        ),
        (
            DATABASE_REQUESTS,
            "Borrows of a backend connection from the pool.",
        ),
        (
            BORROW_TIMEOUTS,
            "Borrows that gave up after backend.borrow_timeout (ERR 9501), by user.",
        ),
        (QUERY_REQUESTS, "Client commands, by user."),
        (BYTES_RELAYED, "Bytes relayed, by user and direction."),
        (ERRORS, "Errors Sluice itself sent to clients, by kind."),
        (ADMIN_LOGIN_FAILURES, "Refused admin console logins."),
        (
            CONFIG_RELOADS,
            "Configuration reloads (SIGHUP or RELOAD), by result.",
        ),
        (
            SECRET_REFRESHES,
            "Secrets Manager reads after the start (refresh_interval, or a refused password), by result; a failure keeps the last good value.",
        ),
        (
            IAM_LOGINS,
            "IAM token logins: verified by STS, answered from the cache, refused, or refused because STS did not answer.",
        ),
        (
            STS_REQUESTS,
            "Calls to STS to check IAM tokens: answered, or failed without an answer (timeout, unreachable, server error).",
        ),
        (
            ACCOUNT_LOOKUPS,
            "Database account lookups (database_accounts): found, absent, failed.",
        ),
        (
            RDS_TOKEN_REFRESHES,
            "RDS IAM token refreshes, by result; a failure keeps the current tokens.",
        ),
    ];
    for (name, help) in counters {
        r.describe_counter(
            KeyName::from_const_str(name),
            None,
            SharedString::const_str(help),
        );
    }
    let gauges: &[(&'static str, &'static str)] = &[
        (
            CLIENT_CONNECTIONS,
            "Open client connections, logged in or not.",
        ),
        (
            CLIENT_AUTHENTICATED,
            "Logged-in client sessions, by user and TLS.",
        ),
        (DATABASE_CONNECTIONS, "Open backend connections."),
        (
            DATABASE_IN_USE,
            "Backend connections lent to sessions, being opened or reset.",
        ),
        (DATABASE_IDLE, "Idle backend connections in the pool."),
        (
            DATABASE_IN_TRANSACTION,
            "Client sessions inside a transaction.",
        ),
        (
            DATABASE_PINNED,
            "Sessions pinned to their backend connection now, by reason.",
        ),
        (BORROW_WAITERS, "Sessions waiting for a backend connection."),
        (
            MAX_DATABASE_CONNECTIONS,
            "The cap on backend connections (backend.max_connections).",
        ),
        (
            USERS_IN_ROTATION_WINDOW,
            "Users whose previous password still lets clients in (rotation_window after a new one).",
        ),
        (PAUSED, "1 while PAUSE holds new transactions."),
        (DRAINING, "1 while Sluice drains before stopping."),
        (BUILD_INFO, "Always 1; the label names the version."),
    ];
    for (name, help) in gauges {
        r.describe_gauge(
            KeyName::from_const_str(name),
            None,
            SharedString::const_str(help),
        );
    }
    let histograms: &[(&'static str, &'static str)] = &[
        (
            BORROW_LATENCY,
            "Time to borrow a backend connection, by user.",
        ),
        (
            QUERY_RESPONSE_LATENCY,
            "From a client command to the end of Sluice's answer, by user.",
        ),
        (
            QUERY_DATABASE_RESPONSE_LATENCY,
            "From forwarding a command to the end of the database's response, by user.",
        ),
    ];
    for (name, help) in histograms {
        r.describe_histogram(
            KeyName::from_const_str(name),
            Some(Unit::Seconds),
            SharedString::const_str(help),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric with at least one series.
    fn exercised() -> String {
        let m = Metrics::new();
        let user: Arc<str> = Arc::from("app");
        let session = m.logged_in(&user, false);
        let u = session.user();
        u.queries.increment(1);
        u.query_latency.record(0.002);
        u.database_latency.record(0.001);
        u.borrow_latency.record(0.0005);
        u.borrow_timeouts.increment(1);
        u.bytes_to_client.increment(10);
        u.bytes_to_database.increment(10);
        m.auth_failed("app", true);
        m.auth_failed("mallory", false);
        m.setup_failed("client disconnected during login");
        m.error_sent("borrow_timeout");
        m.admin_login_failed();
        m.reloaded(true);
        let stats = Stats::default();
        stats.pinned(PinReason::TemporaryTable);
        m.refresh(
            &stats,
            Scrape {
                max_connections: 20,
                ..Scrape::default()
            },
        );
        m.render()
    }

    /// Names with a `# TYPE` line in a render.
    fn rendered_names(render: &str) -> Vec<String> {
        render
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_metric_renders_with_its_labels() {
        let text = exercised();
        let names = rendered_names(&text);
        for name in [
            CLIENT_CONNECTIONS,
            CLIENT_CONNECTIONS_RECEIVED,
            CLIENT_SETUP_SUCCEEDED,
            CLIENT_SETUP_FAILED_AUTH,
            CLIENT_SETUP_FAILED,
            CLIENT_AUTHENTICATED,
            DATABASE_CONNECTIONS,
            DATABASE_IN_USE,
            DATABASE_IDLE,
            DATABASE_IN_TRANSACTION,
            DATABASE_PINNED,
            SESSION_PINS,
            DATABASE_SETUP_SUCCEEDED,
            DATABASE_SETUP_FAILED,
            DATABASE_RESETS,
            DATABASE_REQUESTS,
            BORROW_LATENCY,
            BORROW_TIMEOUTS,
            BORROW_WAITERS,
            MAX_DATABASE_CONNECTIONS,
            QUERY_REQUESTS,
            QUERY_RESPONSE_LATENCY,
            QUERY_DATABASE_RESPONSE_LATENCY,
            BYTES_RELAYED,
            ERRORS,
            ADMIN_LOGIN_FAILURES,
            CONFIG_RELOADS,
            SECRET_REFRESHES,
            USERS_IN_ROTATION_WINDOW,
            PAUSED,
            DRAINING,
            BUILD_INFO,
        ] {
            assert!(
                names.iter().any(|n| n == name),
                "{name} missing from:\n{text}"
            );
        }
        assert!(
            text.contains(r#"sluice_database_connections_currently_session_pinned{reason="temporary_table"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_client_connections_authenticated{user="app",tls="false"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"sluice_client_connections_setup_failed_auth_total{user="(unknown)"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"sluice_client_connections_setup_failed_total{reason="client_disconnected_during_login"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"sluice_query_response_latency_seconds_bucket{user="app",le="0.0025"} 1"#
            ),
            "{text}"
        );
        assert!(
            !text.contains("mallory"),
            "unknown user names are not labels"
        );
    }

    #[test]
    fn session_gauge_follows_the_guard() {
        let m = Metrics::new();
        let user: Arc<str> = Arc::from("app");
        let a = m.logged_in(&user, true);
        let b = m.logged_in(&user, true);
        drop(a);
        let text = m.render();
        assert!(
            text.contains(r#"sluice_client_connections_authenticated{user="app",tls="true"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"sluice_client_connections_setup_succeeded_total{user="app",tls="true"} 2"#
            ),
            "{text}"
        );
        drop(b);
    }

    #[test]
    fn the_grafana_dashboard_queries_only_metrics_that_exist() {
        let dashboard = include_str!("../../deploy/grafana/sluice.json");
        let names = rendered_names(&exercised());
        let mut queried = Vec::new();
        let mut rest = dashboard;
        while let Some(at) = rest.find("sluice_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            queried.push(&tail[..end]);
            rest = &tail[end..];
        }
        assert!(queried.len() > 10, "the dashboard queries Sluice's metrics");
        for q in queried {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| q.strip_suffix(s).filter(|b| names.iter().any(|n| n == b)))
                .unwrap_or(q);
            assert!(
                names.iter().any(|n| n == base),
                "the dashboard queries {q}, which Sluice does not export"
            );
        }
    }

    #[test]
    fn label_values_are_snake_case() {
        assert_eq!(
            label_value("client disconnected during login"),
            "client_disconnected_during_login"
        );
        assert_eq!(label_value("TLS requested!"), "tls_requested");
    }
}
