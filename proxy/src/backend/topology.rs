//! What Sluice knows of the hosts behind `backend.address`: which answer, which one accepts
//! writes (the writer), which are replicas and how far behind they are. The monitor writes it;
//! the pool reads it to decide where a new connection goes and whether a pooled one may still
//! be lent; borrowers wait on it while no writer is known.
//!
//! Every change of writer (including a host coming back after an outage) starts a new
//! *epoch*. A writer connection is lent only while its epoch is current, so connections to a
//! demoted writer drain as they come back and are never lent again.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::conn::Connector;
use crate::config::{BackendConfig, Secret};
use crate::protocol::CapabilityFlags;

/// A host's place in `backend.address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(pub usize);

/// Where a session's work goes: the writer, or (reader endpoint) a replica within the lag
/// bound, else the writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Route {
    #[default]
    Writer,
    Reader,
}

impl Route {
    /// The name logs and `SHOW SERVERS` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Writer => "writer",
            Route::Reader => "reader",
        }
    }
}

/// How far a host's replication is behind, as it says itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    /// Not a replica (no replication configured).
    NotReplica,
    /// Seconds_Behind_Master / Seconds_Behind_Source.
    Behind(Duration),
    /// A replica that cannot say (replication stopped, or no privilege to ask).
    Unknown,
}

/// What one check of a host found.
#[derive(Debug, Clone)]
pub enum Probe {
    /// It answered: whether it refuses writes (`@@read_only` or `@@innodb_read_only`), its
    /// lag, and the capabilities its greeting announced.
    Up {
        read_only: bool,
        lag: Lag,
        caps: CapabilityFlags,
    },
    /// It could not be reached or logged in to.
    Down { error: String },
}

/// One host as the monitor last saw it.
#[derive(Debug, Clone)]
pub struct HostStatus {
    pub address: String,
    /// None until the first check.
    pub last: Option<Probe>,
    pub checked_at: Option<Instant>,
}

impl HostStatus {
    fn up(&self) -> Option<(bool, Lag)> {
        match &self.last {
            Some(Probe::Up { read_only, lag, .. }) => Some((*read_only, *lag)),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct View {
    hosts: Vec<HostStatus>,
    writer: Option<HostId>,
    epoch: u64,
    /// Since when no writer is known; set at start, cleared while one is.
    no_writer_since: Option<Instant>,
    /// The last reason a host was not usable, for errors.
    last_error: Option<String>,
    /// When the monitor looks at the hosts next (while no writer is known).
    next_check: Instant,
    /// Round robin over eligible replicas.
    next_reader: usize,
    /// Hosts a session saw refuse a write (1290, 1836): checked by logging in until they
    /// are seen writable again.
    suspect: Vec<bool>,
}

/// The shared view of the hosts; cheap to clone.
#[derive(Debug, Clone)]
pub struct Topology {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    connectors: Vec<Arc<Connector>>,
    view: Mutex<View>,
    /// Bumped on every change that may let a waiter go on.
    changes: watch::Sender<u64>,
    /// Wakes every host's monitor for a check now.
    recheck: Notify,
    max_lag_ms: AtomicU64,
    /// How long the last successful backend login took, in microseconds.
    login_micros: AtomicU64,
    rechecks: AtomicU64,
    writer_changes: AtomicU64,
    /// `backend.monitor_interval` in milliseconds; a reload changes it.
    interval_ms: AtomicU64,
    /// `backend.monitor_user` (when set) and `monitor_password` (when set).
    monitor_login: Mutex<Option<(Arc<str>, Option<Secret>)>>,
}

/// What a new connection for a route should be opened to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub host: HostId,
    /// The writer epoch the connection belongs to (for reader connections to a replica, the
    /// epoch at the time; not checked).
    pub epoch: u64,
}

/// Why no target is available now.
#[derive(Debug, Clone)]
pub struct NoWriter {
    /// How long no writer has been known.
    pub for_how_long: Duration,
    pub last_error: Option<String>,
}

impl Topology {
    /// A topology of `connectors`, one per host of `backend.address`; nothing known yet.
    pub fn new(connectors: Vec<Arc<Connector>>, max_lag: Duration) -> Self {
        let hosts = connectors
            .iter()
            .map(|c| HostStatus {
                address: c.address.clone(),
                last: None,
                checked_at: None,
            })
            .collect();
        let now = Instant::now();
        let suspect = vec![false; connectors.len()];
        Topology {
            inner: Arc::new(Inner {
                connectors,
                view: Mutex::new(View {
                    hosts,
                    writer: None,
                    epoch: 0,
                    no_writer_since: Some(now),
                    last_error: None,
                    next_check: now,
                    next_reader: 0,
                    suspect,
                }),
                changes: watch::channel(0).0,
                recheck: Notify::new(),
                max_lag_ms: AtomicU64::new(millis(max_lag)),
                login_micros: AtomicU64::new(0),
                rechecks: AtomicU64::new(0),
                writer_changes: AtomicU64::new(0),
                interval_ms: AtomicU64::new(1000),
                monitor_login: Mutex::new(None),
            }),
        }
    }

    fn view(&self) -> MutexGuard<'_, View> {
        self.inner.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every host's connector, in `backend.address` order.
    pub fn connectors(&self) -> &[Arc<Connector>] {
        &self.inner.connectors
    }

    /// The connector of `host`.
    pub fn connector(&self, host: HostId) -> &Arc<Connector> {
        // HostIds only come from this topology, so the index is always in range; fall back to
        // the first host rather than panic if that ever changes.
        self.inner
            .connectors
            .get(host.0)
            .unwrap_or(&self.inner.connectors[0])
    }

    /// The connector of the writer, or of the first host while none is known.
    pub fn writer_connector(&self) -> &Arc<Connector> {
        let host = self.view().writer.unwrap_or(HostId(0));
        self.connector(host)
    }

    /// The current writer and its epoch.
    pub fn writer(&self) -> Option<Target> {
        let v = self.view();
        v.writer.map(|host| Target {
            host,
            epoch: v.epoch,
        })
    }

    /// Where a new connection for `route` goes now: the writer, or for readers the next
    /// replica within the lag bound (the writer when none qualifies).
    pub fn target(&self, route: Route) -> Result<Target, NoWriter> {
        let max_lag = Duration::from_millis(self.inner.max_lag_ms.load(Relaxed));
        let mut v = self.view();
        if route == Route::Reader {
            let eligible: Vec<HostId> = (0..v.hosts.len())
                .map(HostId)
                .filter(|h| Some(*h) != v.writer && reader_ok(&v.hosts[h.0], max_lag))
                .collect();
            if !eligible.is_empty() {
                let host = eligible[v.next_reader % eligible.len()];
                v.next_reader = v.next_reader.wrapping_add(1);
                return Ok(Target {
                    host,
                    epoch: v.epoch,
                });
            }
        }
        match v.writer {
            Some(host) => Ok(Target {
                host,
                epoch: v.epoch,
            }),
            None => Err(NoWriter {
                for_how_long: v.no_writer_since.map_or(Duration::ZERO, |t| t.elapsed()),
                last_error: v.last_error.clone(),
            }),
        }
    }

    /// Whether a pooled connection to `host`, opened in `epoch` for `route`, may still be
    /// lent: writer connections only in the current writer epoch; reader connections while
    /// their host is an eligible replica, or the writer while no replica is.
    pub fn still_valid(&self, route: Route, host: HostId, epoch: u64) -> bool {
        let max_lag = Duration::from_millis(self.inner.max_lag_ms.load(Relaxed));
        let v = self.view();
        let writer_ok = v.writer == Some(host) && v.epoch == epoch;
        match route {
            Route::Writer => writer_ok,
            Route::Reader if v.writer == Some(host) => {
                writer_ok
                    && !(0..v.hosts.len())
                        .any(|h| Some(HostId(h)) != v.writer && reader_ok(&v.hosts[h], max_lag))
            }
            Route::Reader => v.hosts.get(host.0).is_some_and(|h| reader_ok(h, max_lag)),
        }
    }

    /// Records what the monitor found on `host`; picks the writer again. Returns true when
    /// the writer changed (a new epoch began).
    pub fn report(&self, host: HostId, probe: Probe, next_check: Duration) -> bool {
        let (changed, writer) = {
            let mut v = self.view();
            let now = Instant::now();
            if let Probe::Down { error } = &probe {
                v.last_error = Some(format!("{}: {error}", v.hosts[host.0].address));
            } else if matches!(
                &probe,
                Probe::Up {
                    read_only: true,
                    ..
                }
            ) && v.writer.is_none()
            {
                v.last_error = Some(format!("{} is read-only", v.hosts[host.0].address));
            }
            if let Some(h) = v.hosts.get_mut(host.0) {
                h.last = Some(probe);
                h.checked_at = Some(now);
            }
            v.next_check = now + next_check;
            let before = v.writer;
            let writable = |h: &HostStatus| matches!(h.up(), Some((false, _)));
            // Keep a writer that is still writable (no flapping between two writable hosts);
            // otherwise take the first writable host in the configured order.
            let keep = before.filter(|w| v.hosts.get(w.0).is_some_and(writable));
            let writer = keep.or_else(|| {
                (0..v.hosts.len())
                    .map(HostId)
                    .find(|h| writable(&v.hosts[h.0]))
            });
            let changed = writer != before;
            if changed {
                v.writer = writer;
                if writer.is_some() {
                    v.epoch += 1;
                    v.no_writer_since = None;
                } else {
                    v.no_writer_since = Some(now);
                }
            }
            (changed, writer)
        };
        if changed {
            self.inner.writer_changes.fetch_add(1, Relaxed);
            match writer {
                Some(w) => {
                    tracing::warn!(writer = %self.connector(w).address, "the writer is now this host")
                }
                None => tracing::warn!("no writable database host is known; new work waits"),
            }
        }
        // Waiters look again after every report: a replica's lag may have changed too.
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
        changed
    }

    /// The hosts as last seen, for `SHOW SERVERS`-like listings and metrics.
    pub fn hosts(&self) -> Vec<HostStatus> {
        self.view().hosts.clone()
    }

    /// The current writer epoch (every writer change increments it).
    pub fn epoch(&self) -> u64 {
        self.view().epoch
    }

    /// The greeting capabilities of the writer (else of any host that answered), so a new
    /// writer's are used rather than those seen at start.
    pub fn server_caps(&self) -> Option<CapabilityFlags> {
        let v = self.view();
        let caps = |h: &HostStatus| match &h.last {
            Some(Probe::Up { caps, .. }) => Some(*caps),
            _ => None,
        };
        v.writer
            .and_then(|w| v.hosts.get(w.0).and_then(caps))
            .or_else(|| v.hosts.iter().find_map(caps))
    }

    /// Whether the monitor logs in to `host` to check it, about once an interval: always
    /// with several hosts (the writer must be told apart) or a configured `monitor_user`,
    /// and for a single host while a session saw it refuse a write. Otherwise a single host
    /// is checked by its greeting, only when a session meets trouble and during an outage.
    pub fn needs_login_check(&self, host: HostId) -> bool {
        if self.monitor_login().is_some() {
            return true;
        }
        let v = self.view();
        v.hosts.len() > 1 || v.suspect.get(host.0).copied().unwrap_or(false)
    }

    /// A session saw `host` refuse a write as read-only: have it checked by logging in now.
    pub fn suspect_read_only(&self, host: HostId) {
        if let Some(s) = self.view().suspect.get_mut(host.0) {
            *s = true;
        }
        self.recheck();
    }

    /// A check by logging in found `host` writable.
    pub fn clear_suspect(&self, host: HostId) {
        if let Some(s) = self.view().suspect.get_mut(host.0) {
            *s = false;
        }
    }

    /// Asks every host's monitor to check now (a read-only error or a lost connection was
    /// seen on a borrowed connection).
    pub fn recheck(&self) {
        self.inner.rechecks.fetch_add(1, Relaxed);
        self.inner.recheck.notify_waiters();
    }

    /// Completes at the next [`Topology::recheck`].
    pub async fn recheck_requested(&self) {
        self.inner.recheck.notified().await;
    }

    /// A receiver that changes whenever the monitor reports.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Whether a borrower waiting for a writer cannot be served before `deadline` even if the
    /// writer answered now: the monitor looks next at `next_check`, and a login then takes
    /// about as long as the last one did. Only asked while no writer is known.
    pub fn certainly_too_late(&self, deadline: tokio::time::Instant) -> bool {
        let login = Duration::from_micros(self.inner.login_micros.load(Relaxed));
        let next = self.view().next_check;
        let earliest = next.max(Instant::now()) + login;
        let deadline = deadline.into_std();
        earliest > deadline
    }

    /// Records how long a successful login took (for [`Topology::certainly_too_late`]).
    pub fn note_login(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.inner.login_micros.store(micros, Relaxed);
    }

    /// Applies `backend.max_replica_lag`, `monitor_interval`, `monitor_user` and
    /// `monitor_password` (at start and on reload).
    pub fn configure(&self, config: &BackendConfig) {
        self.inner
            .max_lag_ms
            .store(millis(config.max_replica_lag), Relaxed);
        self.inner
            .interval_ms
            .store(millis(config.monitor_interval), Relaxed);
        let login = (!config.monitor_user.is_empty()).then(|| {
            let password = &config.monitor_password;
            (
                Arc::from(config.monitor_user.as_str()),
                (!password.expose().is_empty()).then(|| password.clone()),
            )
        });
        *self
            .inner
            .monitor_login
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = login;
    }

    /// How often each host is checked while a writer is known.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.inner.interval_ms.load(Relaxed))
    }

    /// The user the monitor logs in as, and its own password, when configured.
    pub fn monitor_login(&self) -> Option<(Arc<str>, Option<Secret>)> {
        self.inner
            .monitor_login
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-checks asked for by sessions, and writer changes, since start.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.inner.rechecks.load(Relaxed),
            self.inner.writer_changes.load(Relaxed),
        )
    }

    /// Whether no writer is known now.
    pub fn writer_missing(&self) -> bool {
        self.view().writer.is_none()
    }
}

/// A replica the reader endpoint may use: up, read-only, and known to be within `max_lag`.
fn reader_ok(h: &HostStatus, max_lag: Duration) -> bool {
    matches!(h.up(), Some((true, Lag::Behind(lag))) if lag <= max_lag)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    fn topology(n: usize) -> Topology {
        let stats = Arc::new(Stats::default());
        let connectors = (0..n)
            .map(|i| {
                Arc::new(Connector::new(
                    format!("db{i}:3306"),
                    Duration::from_secs(1),
                    1 << 20,
                    8,
                    stats.clone(),
                ))
            })
            .collect();
        Topology::new(connectors, Duration::from_secs(2))
    }

    fn up(read_only: bool, lag: Lag) -> Probe {
        Probe::Up {
            read_only,
            lag,
            caps: CapabilityFlags::CLIENT_PROTOCOL_41,
        }
    }

    fn down() -> Probe {
        Probe::Down {
            error: "refused".into(),
        }
    }

    const TICK: Duration = Duration::from_secs(1);

    #[test]
    fn the_writable_host_is_the_writer_and_a_promotion_starts_a_new_epoch() {
        let t = topology(2);
        assert!(t.target(Route::Writer).is_err());
        t.report(HostId(1), up(true, Lag::Behind(Duration::ZERO)), TICK);
        assert!(
            t.target(Route::Writer).is_err(),
            "a replica is not a writer"
        );
        assert!(t.report(HostId(0), up(false, Lag::NotReplica), TICK));
        let first = t.target(Route::Writer).unwrap();
        assert_eq!(first.host, HostId(0));
        assert!(t.still_valid(Route::Writer, HostId(0), first.epoch));

        // The primary dies, the replica is promoted.
        assert!(t.report(HostId(0), down(), TICK));
        assert!(!t.still_valid(Route::Writer, HostId(0), first.epoch));
        let err = t.target(Route::Writer).unwrap_err();
        assert!(err.last_error.unwrap().contains("db0:3306: refused"));
        assert!(t.report(HostId(1), up(false, Lag::NotReplica), TICK));
        let second = t.target(Route::Writer).unwrap();
        assert_eq!(second.host, HostId(1));
        assert!(second.epoch > first.epoch);

        // The old primary comes back writable: the writer stays put (no flapping).
        assert!(!t.report(HostId(0), up(false, Lag::NotReplica), TICK));
        assert_eq!(t.target(Route::Writer).unwrap(), second);
    }

    #[test]
    fn a_host_that_comes_back_starts_a_new_epoch() {
        let t = topology(1);
        t.report(HostId(0), up(false, Lag::NotReplica), TICK);
        let before = t.writer().unwrap();
        t.report(HostId(0), down(), TICK);
        assert!(t.writer_missing());
        t.report(HostId(0), up(false, Lag::NotReplica), TICK);
        let after = t.writer().unwrap();
        assert_eq!(after.host, before.host);
        assert!(
            !t.still_valid(Route::Writer, before.host, before.epoch),
            "connections from before an outage are never lent again"
        );
    }

    #[test]
    fn readers_spread_over_replicas_within_the_lag_bound_else_the_writer() {
        let t = topology(3);
        t.report(HostId(0), up(false, Lag::NotReplica), TICK);
        t.report(
            HostId(1),
            up(true, Lag::Behind(Duration::from_secs(1))),
            TICK,
        );
        t.report(HostId(2), up(true, Lag::Behind(Duration::ZERO)), TICK);
        let picked: Vec<HostId> = (0..4)
            .map(|_| t.target(Route::Reader).unwrap().host)
            .collect();
        assert_eq!(picked, [HostId(1), HostId(2), HostId(1), HostId(2)]);
        assert!(t.still_valid(Route::Reader, HostId(1), 0));

        t.report(
            HostId(1),
            up(true, Lag::Behind(Duration::from_secs(5))),
            TICK,
        );
        t.report(HostId(2), up(true, Lag::Unknown), TICK);
        assert!(!t.still_valid(Route::Reader, HostId(1), 0));
        assert_eq!(t.target(Route::Reader).unwrap().host, HostId(0));
        let w = t.writer().unwrap();
        assert!(t.still_valid(Route::Reader, HostId(0), w.epoch));
        let config = BackendConfig {
            max_replica_lag: Duration::from_secs(10),
            ..BackendConfig::default()
        };
        t.configure(&config);
        assert_eq!(t.target(Route::Reader).unwrap().host, HostId(1));
        assert!(
            !t.still_valid(Route::Reader, HostId(0), w.epoch),
            "readers leave the writer once a replica qualifies again"
        );
    }

    #[test]
    fn a_waiter_is_certainly_late_only_when_its_deadline_is_before_the_next_check() {
        let t = topology(1);
        t.report(HostId(0), down(), Duration::from_millis(500));
        t.note_login(Duration::from_millis(5));
        let now = tokio::time::Instant::now();
        assert!(t.certainly_too_late(now + Duration::from_millis(100)));
        assert!(!t.certainly_too_late(now + Duration::from_secs(2)));
    }
}
