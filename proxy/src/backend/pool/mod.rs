//! The bounded pool of backend connections.
//!
//! One cap (`backend.max_connections`) bounds every connection together: idle, lent, being
//! opened or being reset; `max_connections_per_user` bounds each user's share. Connections are
//! grouped by [`PoolKey`] (user, wire-relevant client capabilities, route). Borrowers wait in
//! one FIFO queue; a borrower whose user is at its own cap lets those behind it pass. A
//! connection coming back goes to the first waiter that can use it, or makes way (is closed)
//! for one that needs another key. Grants travel as guards (`guard`), so a borrower that times
//! out or is cancelled can never leak a connection or a place under the caps.
//!
//! Where a new connection goes is the topology's call (`topology`): the writer, or a replica
//! for the reader endpoint. While no writer is known, borrowers holding a place wait for the
//! monitor's word instead of dialling the database themselves, and go the moment a writer
//! answers; one that would certainly time out first fails at once. A connection to a demoted
//! writer, a replica that fell behind, or from before an outage is never lent again: it is
//! closed when it comes back, and idle ones are closed when the topology changes.
//!
//! The limits can change while the pool runs (a reload): a lower cap holds at once for new
//! borrows, and connections above it close as they come back, so nothing in flight fails.
//! `PAUSE` holds every new borrow in the queue and closes connections as they come back, so
//! the database can be restarted; `RESUME` serves the queue again.

mod guard;
mod state;
mod upkeep;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::oneshot;
use tokio::time::timeout_at;

pub use guard::{OpenSlot, PooledConn};
use state::{Caps, Decision, State, Waiter};

use super::budget::{Admission, Budget};
use super::conn::{BackendConn, BackendError, Connector};
use super::login::{self, LoginError};
use super::topology::{Route, Target, Topology};
use crate::config::{BackendConfig, UserCapScope};
use crate::credentials::Credentials;
use crate::protocol::CapabilityFlags;
use crate::stats::Stats;

/// Connections in one key are interchangeable for a client of that kind: same user, same
/// wire-relevant capabilities, same login collation (so the same starting character set),
/// same route (writer or reader endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub user: Arc<str>,
    pub caps: CapabilityFlags,
    pub collation: u8,
    pub route: Route,
}

/// Pool limits and timings (from `[backend]`).
#[derive(Debug, Clone)]
struct Settings {
    max_connections: usize,
    per_user: usize,
    scope: UserCapScope,
    min_idle: usize,
    idle_timeout: Duration,
    max_lifetime: Duration,
    liveness_check_after: Duration,
}

impl From<&BackendConfig> for Settings {
    fn from(c: &BackendConfig) -> Self {
        Settings {
            max_connections: c.max_connections,
            per_user: c.max_connections_per_user,
            scope: c.per_user_scope,
            min_idle: c.min_idle,
            idle_timeout: c.idle_timeout,
            max_lifetime: c.max_lifetime,
            liveness_check_after: c.liveness_check_after,
        }
    }
}

impl Settings {
    fn caps(&self) -> Caps {
        Caps {
            max: self.max_connections,
            per_user: self.per_user,
        }
    }
}

/// Keys remembered for `min_idle` upkeep; more would mean something odd is going on.
const MAX_KEYS_KEPT_WARM: usize = 256;

/// The longest pause between two attempts at opening a connection to a host that failed.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What a waiter receives: a connection of its key, or a place under the caps to open one.
#[derive(Debug)]
enum Grant {
    Conn(Box<PooledConn>),
    Slot(OpenSlot),
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State<Grant>>,
    /// Swapped whole on reload, so readers never take the lock for it.
    settings: ArcSwap<Settings>,
    topology: Topology,
    credentials: Arc<Credentials>,
    stats: Arc<Stats>,
    budget: Budget,
}

/// The pool; cheap to clone.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

/// Why no connection could be lent.
#[derive(Debug, thiserror::Error)]
pub enum BorrowError {
    #[error("timed out after {waited:?} waiting for a backend connection")]
    Timeout {
        waited: Duration,
        cap: usize,
        waiting: usize,
        last_error: Option<String>,
    },
    /// No writer is known and none could answer in time: failed before the deadline.
    #[error("no writable database host for {down_for:?}")]
    Unavailable {
        waited: Duration,
        down_for: Duration,
        last_error: Option<String>,
    },
    #[error("the database refused the login: {0}")]
    Login(BackendError),
    /// The database cannot serve this session (it lacks a capability the session uses).
    #[error("{0}")]
    Incompatible(BackendError),
    #[error("no credentials for user '{0}'")]
    UnknownUser(Arc<str>),
    #[error("the pool is shutting down")]
    ShuttingDown,
}

/// How one attempt at opening a connection ended, short of success.
enum OpenError {
    /// Worth trying again (the host may be down): why.
    Retry(String),
    /// The database-wide budget is taken for now: try again shortly, the host is fine.
    Busy(String),
    /// Not worth trying again.
    Fatal(BorrowError),
}

impl Pool {
    /// A pool opening connections to the hosts of `topology`, passwords from `credentials`.
    pub fn new(
        config: &BackendConfig,
        topology: Topology,
        credentials: Arc<Credentials>,
        stats: Arc<Stats>,
    ) -> Self {
        Pool {
            inner: Arc::new(Inner {
                settings: ArcSwap::from_pointee(Settings::from(config)),
                state: Mutex::new(State::default()),
                budget: Budget::new(topology.clone(), credentials.clone()),
                topology,
                credentials,
                stats,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<Grant>> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connector of the current writer (timeouts are the same for every host).
    pub fn connector(&self) -> &Connector {
        self.inner.topology.writer_connector()
    }

    /// What the pool knows of the database hosts.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The cross-instance budget (`per_user_scope = "database"`).
    pub(crate) fn budget(&self) -> &Budget {
        &self.inner.budget
    }

    /// `max_connections_per_user`, when it is a budget for every Sluice on the database.
    pub(crate) fn shared_budget(&self) -> Option<usize> {
        let s = self.inner.settings.load();
        (s.scope == UserCapScope::Database && s.per_user > 0).then_some(s.per_user)
    }

    /// Where passwords come from.
    pub(crate) fn credentials(&self) -> &Credentials {
        &self.inner.credentials
    }

    /// Lends a connection of `key`, preferring one already in `schema`. Waits in FIFO order
    /// until `deadline`.
    pub async fn borrow(
        &self,
        key: &PoolKey,
        schema: Option<&str>,
        deadline: tokio::time::Instant,
    ) -> Result<PooledConn, BorrowError> {
        let started = Instant::now();
        let result = self.borrow_inner(key, schema, deadline, started).await;
        let stats = &self.inner.stats;
        stats.borrows.fetch_add(1, Relaxed);
        stats
            .borrow_wait_micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        if matches!(
            result,
            Err(BorrowError::Timeout { .. } | BorrowError::Unavailable { .. })
        ) {
            stats.borrow_timeouts.fetch_add(1, Relaxed);
        }
        result
    }

    async fn borrow_inner(
        &self,
        key: &PoolKey,
        schema: Option<&str>,
        deadline: tokio::time::Instant,
        started: Instant,
    ) -> Result<PooledConn, BorrowError> {
        let topology = &self.inner.topology;
        let mut grant = self.request(key, schema, deadline, started).await?;
        let mut last_error: Option<String> = None;
        let mut pause = Duration::from_millis(10);
        loop {
            let slot = match grant {
                Grant::Conn(mut conn) => match self.check_idle(&mut conn).await {
                    Ok(()) => return Ok(*conn),
                    Err(()) => conn.discard_into_slot(),
                },
                Grant::Slot(slot) => slot,
            };
            // Subscribed before looking, so a report in between is not missed.
            let mut changes = topology.subscribe();
            changes.borrow_and_update();
            let now = tokio::time::Instant::now();
            let wait_until = match topology.target(key.route) {
                Ok(target) => match self.open_to(target, key, deadline, slot.user()).await {
                    Ok(conn) => return Ok(slot.fill(conn)),
                    Err(OpenError::Fatal(e)) => return Err(e),
                    Err(OpenError::Retry(why)) => {
                        last_error = Some(why);
                        // The host may be gone: have the monitor look now, and try again
                        // once it reported or after a short pause.
                        topology.recheck();
                        let until = now + pause;
                        pause = (pause * 2).min(MAX_RETRY_PAUSE);
                        until.min(deadline)
                    }
                    Err(OpenError::Busy(why)) => {
                        last_error = Some(why);
                        let until = now + pause;
                        pause = (pause * 2).min(MAX_RETRY_PAUSE);
                        until.min(deadline)
                    }
                },
                Err(no_writer) => {
                    if no_writer.last_error.is_some() {
                        last_error = no_writer.last_error.clone();
                    }
                    if topology.certainly_too_late(deadline) {
                        return Err(BorrowError::Unavailable {
                            waited: started.elapsed(),
                            down_for: no_writer.for_how_long,
                            last_error,
                        });
                    }
                    deadline
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(self.timeout(started, last_error));
            }
            // Woken by the monitor's next report (a writer answered) or the pause's end.
            let _ = timeout_at(wait_until, changes.changed()).await;
            grant = Grant::Slot(slot);
        }
    }

    fn timeout(&self, started: Instant, last_error: Option<String>) -> BorrowError {
        let waiting = self.lock().live_waiters();
        BorrowError::Timeout {
            waited: started.elapsed(),
            cap: self.inner.settings.load().max_connections,
            waiting,
            last_error,
        }
    }

    /// Opens a connection for `key` to `target` (under the database-wide budget when there
    /// is one).
    async fn open_to(
        &self,
        target: Target,
        key: &PoolKey,
        deadline: tokio::time::Instant,
        user: &str,
    ) -> Result<BackendConn, OpenError> {
        let settings = self.inner.settings.load();
        let topology = &self.inner.topology;
        let connector = topology.connector(target.host);
        let budgeted = settings.scope == UserCapScope::Database && settings.per_user > 0;
        let started = Instant::now();
        let open = async {
            let attempt = login::open(
                connector,
                &self.inner.credentials,
                key,
                deadline,
                connector.connect_timeout(),
            );
            if !budgeted {
                return Some(attempt.await);
            }
            match self
                .inner
                .budget
                .admit(target, user, settings.per_user, attempt)
                .await
            {
                Admission::Opened(result) => Some(result),
                Admission::Full => None,
                Admission::Failed(why) => Some(Err(LoginError::Failed(why))),
            }
        };
        let result = match timeout_at(deadline, open).await {
            Ok(Some(result)) => result,
            Ok(None) => {
                return Err(OpenError::Busy(format!(
                    "the database already holds user {user}'s backend.max_connections_per_user \
                     ({}) across Sluice instances",
                    settings.per_user
                )));
            }
            Err(_) => {
                return Err(OpenError::Retry(format!(
                    "timed out connecting to {}",
                    connector.address
                )));
            }
        };
        match result {
            Ok(mut conn) => {
                conn.host = target.host;
                conn.epoch = target.epoch;
                topology.note_login(started.elapsed());
                Ok(conn)
            }
            Err(LoginError::Refused(e)) => Err(OpenError::Fatal(BorrowError::Login(e))),
            Err(LoginError::UnknownUser) => {
                Err(OpenError::Fatal(BorrowError::UnknownUser(key.user.clone())))
            }
            Err(LoginError::Failed(e @ BackendError::Unsupported(_))) => {
                Err(OpenError::Fatal(BorrowError::Incompatible(e)))
            }
            Err(LoginError::Failed(e)) => {
                tracing::warn!(address = %connector.address, error = %e, "backend connection failed");
                Err(OpenError::Retry(e.to_string()))
            }
        }
    }

    /// Takes an idle connection or a place under the caps, or queues and waits for one.
    async fn request(
        &self,
        key: &PoolKey,
        schema: Option<&str>,
        deadline: tokio::time::Instant,
        started: Instant,
    ) -> Result<Grant, BorrowError> {
        let caps = self.inner.settings.load().caps();
        let (rx, victim) = {
            let mut st = self.lock();
            if st.closed {
                return Err(BorrowError::ShuttingDown);
            }
            if st.warm_keys.len() < MAX_KEYS_KEPT_WARM || st.warm_keys.contains_key(key) {
                st.warm_keys.insert(key.clone(), ());
            }
            // The fast path: nobody waits, so this borrower is first in line.
            let mut victim = None;
            if st.waiters.is_empty() && !st.paused {
                match st.decide(key, schema, caps) {
                    Decision::Conn(conn) => {
                        return Ok(Grant::Conn(Box::new(PooledConn::new(self.clone(), conn))));
                    }
                    Decision::Slot => {
                        return Ok(Grant::Slot(OpenSlot::new(self.clone(), key.user.clone())));
                    }
                    Decision::SlotFrom(v) => victim = Some(v),
                    Decision::UserAtCap | Decision::Full => {}
                }
            }
            match victim {
                Some(v) => (None, Some(v)),
                None => {
                    let (tx, rx) = oneshot::channel();
                    st.waiters.push_back(Waiter {
                        key: key.clone(),
                        tx,
                        since: Instant::now(),
                    });
                    // Waiters held back by their user's cap do not hold this one up.
                    let to_close = self.serve_waiters(&mut st);
                    drop(st);
                    self.close_all(to_close);
                    (Some(rx), None)
                }
            }
        };
        if let Some(v) = victim {
            self.close_conn(v);
            return Ok(Grant::Slot(OpenSlot::new(self.clone(), key.user.clone())));
        }
        let Some(mut rx) = rx else {
            return Err(BorrowError::ShuttingDown);
        };
        let topology = &self.inner.topology;
        let mut changes = topology.subscribe();
        loop {
            tokio::select! {
                grant = &mut rx => return grant.map_err(|_| BorrowError::ShuttingDown),
                _ = tokio::time::sleep_until(deadline) => return Err(self.timeout(started, None)),
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The topology is gone (the proxy is stopping): wait for the grant.
                        return match timeout_at(deadline, rx).await {
                            Ok(grant) => grant.map_err(|_| BorrowError::ShuttingDown),
                            Err(_) => Err(self.timeout(started, None)),
                        };
                    }
                    if let Err(no_writer) = topology.target(key.route)
                        && topology.certainly_too_late(deadline)
                    {
                        return Err(BorrowError::Unavailable {
                            waited: started.elapsed(),
                            down_for: no_writer.for_how_long,
                            last_error: no_writer.last_error,
                        });
                    }
                }
            }
        }
    }

    /// Makes sure an idle connection is still usable before lending it: within its
    /// lifetime, not closed or written to by the server (checked every time, without a round
    /// trip), still on a host its route may use, and answering a ping after a long idle.
    async fn check_idle(&self, conn: &mut PooledConn) -> Result<(), ()> {
        let s = self.inner.settings.load();
        if conn.expired(s.max_lifetime)
            || conn.stream.is_stale()
            || !self
                .inner
                .topology
                .still_valid(conn.key.route, conn.host, conn.epoch)
        {
            return Err(());
        }
        if conn.last_used.elapsed() > s.liveness_check_after && conn.ping().await.is_err() {
            return Err(());
        }
        Ok(())
    }

    /// Takes back a connection from a session.
    fn checkin(&self, mut conn: BackendConn) {
        conn.last_used = Instant::now();
        let max_lifetime = self.inner.settings.load().max_lifetime;
        // A connection to a demoted writer or a lagging replica drains here.
        if conn.broken
            || conn.expired(max_lifetime)
            || !self
                .inner
                .topology
                .still_valid(conn.key.route, conn.host, conn.epoch)
        {
            let user = conn.key.user.clone();
            self.close_conn(conn);
            self.slot_freed(&user);
            return;
        }
        if conn.needs_reset || conn.in_transaction() {
            // Reset off the session's path; the connection keeps its place under the caps.
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                let user = conn.key.user.clone();
                self.close_conn(conn);
                self.slot_freed(&user);
                return;
            };
            let pool = self.clone();
            self.inner.stats.resets_in_flight.fetch_add(1, Relaxed);
            rt.spawn(async move {
                pool.inner.stats.backend_resets.fetch_add(1, Relaxed);
                match conn.reset().await {
                    Ok(()) => pool.give(conn),
                    Err(e) => {
                        tracing::warn!(backend = %conn.id, error = %e, "reset failed; closing the connection");
                        let user = conn.key.user.clone();
                        pool.close_conn(conn);
                        pool.slot_freed(&user);
                    }
                }
                pool.inner.stats.resets_in_flight.fetch_sub(1, Relaxed);
            });
            return;
        }
        self.give(conn);
    }

    /// Hands a clean connection to the first waiter that can use it, or keeps it idle.
    fn give(&self, conn: BackendConn) {
        let s = self.inner.settings.load();
        let to_close = {
            let mut st = self.lock();
            let user = conn.key.user.clone();
            // Closed, paused, or above a cap lowered by a reload: the connection goes, and so
            // does its place (which the queue may then use).
            if st.closed
                || st.paused
                || st.open > s.max_connections
                || st.user_count(&user) > st.user_cap(s.caps())
            {
                st.release_place(&user);
                let mut to_close = self.serve_waiters(&mut st);
                to_close.push(conn);
                to_close
            } else {
                st.put_idle(conn);
                self.serve_waiters(&mut st)
            }
        };
        self.close_all(to_close);
    }

    /// A place of `user` under the caps is free again: the queue may use it.
    fn slot_freed(&self, user: &str) {
        let to_close = {
            let mut st = self.lock();
            st.release_place(user);
            self.serve_waiters(&mut st)
        };
        self.close_all(to_close);
    }

    /// Closes a connection (politely: COM_QUIT if the socket takes it without waiting). The
    /// caller decides what happens to its place under the caps.
    fn close_conn(&self, conn: BackendConn) {
        conn.stream.try_quit();
        self.inner.stats.backend_closed();
        drop(conn);
    }

    fn close_all(&self, conns: Vec<BackendConn>) {
        for c in conns {
            self.close_conn(c);
        }
    }

    /// Gives queued borrowers what is available now, in order: an idle connection of their
    /// key, a new place under the caps, or the place of an idle connection of another key
    /// (returned for closing, outside the lock). A borrower whose user is at its own cap is
    /// passed over; the first one the pool's cap holds back stops the round, keeping order.
    fn serve_waiters(&self, st: &mut State<Grant>) -> Vec<BackendConn> {
        let mut to_close = Vec::new();
        let caps = self.inner.settings.load().caps();
        let mut i = 0;
        while !st.paused && !st.closed && i < st.waiters.len() {
            if st.waiters[i].tx.is_closed() {
                st.waiters.remove(i);
                continue;
            }
            let key = st.waiters[i].key.clone();
            let grant = match st.decide(&key, None, caps) {
                Decision::Conn(conn) => Grant::Conn(Box::new(PooledConn::new(self.clone(), conn))),
                Decision::Slot => Grant::Slot(OpenSlot::new(self.clone(), key.user.clone())),
                Decision::SlotFrom(victim) => {
                    to_close.push(victim);
                    Grant::Slot(OpenSlot::new(self.clone(), key.user.clone()))
                }
                Decision::UserAtCap => {
                    i += 1;
                    continue;
                }
                Decision::Full => break,
            };
            let Some(w) = st.waiters.remove(i) else { break };
            if let Err(back) = w.tx.send(grant) {
                // The borrower gave up meanwhile: take back what it was given, without
                // running guards (they would take the lock held here).
                match back {
                    Grant::Conn(c) => st.put_idle(c.into_inner()),
                    Grant::Slot(slot) => {
                        let user = slot.user().clone();
                        slot.disarm();
                        st.release_place(&user);
                    }
                }
            }
        }
        to_close
    }

    /// Sets the part of each user's budget that belongs to other Sluice instances, and serves
    /// waiters a larger share lets through (connections above a smaller one close as they
    /// come back).
    pub(crate) fn set_peers_share(&self, share: usize) {
        let to_close = {
            let mut st = self.lock();
            if st.peers_share == share {
                return;
            }
            tracing::info!(
                others = share,
                "share of max_connections_per_user left to other Sluice instances changed"
            );
            st.peers_share = share;
            self.serve_waiters(&mut st)
        };
        self.close_all(to_close);
    }
}

/// An idle backend connection as `SHOW SERVERS` lists it.
#[derive(Debug, Clone)]
pub struct IdleConn {
    pub thread_id: u32,
    pub user: Arc<str>,
    pub schema: Option<String>,
    pub age: Duration,
    pub idle: Duration,
}

/// One user's share of the pool, as `SHOW POOLS` lists it.
#[derive(Debug, Clone, Default)]
pub struct UserCounts {
    pub idle: usize,
    pub waiting: usize,
    pub longest_wait: Duration,
}
