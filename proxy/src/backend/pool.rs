//! The bounded pool of backend connections.
//!
//! One cap (`backend.max_connections`) bounds every connection together: idle, lent, being
//! opened or being reset. Connections are grouped by [`PoolKey`] (user and wire-relevant client
//! capabilities). Borrowers wait in one FIFO queue; a connection coming back goes to the first
//! waiter, and if that waiter needs another key, the connection is closed and its place handed
//! over so the waiter can open its own. Grants travel as guards, so a borrower that times out
//! or is cancelled can never leak a connection or a place under the cap.
//!
//! The limits can change while the pool runs (a reload): a lower cap holds at once for new
//! borrows, and connections above it close as they come back, so nothing in flight fails.
//! `PAUSE` holds every new borrow in the queue and closes connections as they come back, so
//! the database can be restarted; `RESUME` serves the queue again.

use std::collections::{HashMap, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::oneshot;
use tokio::time::timeout_at;

use super::conn::{BackendConn, BackendError, Connector};
use super::login::{self, LoginError};
use crate::config::BackendConfig;
use crate::credentials::Credentials;
use crate::protocol::CapabilityFlags;
use crate::stats::Stats;

/// Connections in one key are interchangeable for a client of that kind: same user, same
/// wire-relevant capabilities, same login collation (so the same starting character set).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub user: Arc<str>,
    pub caps: CapabilityFlags,
    pub collation: u8,
}

/// Pool limits and timings (from `[backend]`).
#[derive(Debug, Clone)]
struct Settings {
    max_connections: usize,
    min_idle: usize,
    idle_timeout: Duration,
    max_lifetime: Duration,
    liveness_check_after: Duration,
}

impl From<&BackendConfig> for Settings {
    fn from(c: &BackendConfig) -> Self {
        Settings {
            max_connections: c.max_connections,
            min_idle: c.min_idle,
            idle_timeout: c.idle_timeout,
            max_lifetime: c.max_lifetime,
            liveness_check_after: c.liveness_check_after,
        }
    }
}

/// Keys remembered for `min_idle` upkeep; more would mean something odd is going on.
const MAX_KEYS_KEPT_WARM: usize = 256;

/// A connection idle this long is checked (without a round trip) before it is lent out.
const STALE_CHECK_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct State {
    /// Connections counted against the cap: idle, lent, opening, resetting.
    open: usize,
    idle: HashMap<PoolKey, Vec<BackendConn>>,
    idle_count: usize,
    waiters: VecDeque<Waiter>,
    warm_keys: HashMap<PoolKey, ()>,
    closed: bool,
    /// PAUSE: no grants; connections coming back are closed.
    paused: bool,
}

#[derive(Debug)]
struct Waiter {
    key: PoolKey,
    tx: oneshot::Sender<Grant>,
    since: Instant,
}

/// What a waiter receives: a connection of its key, or a place under the cap to open one.
#[derive(Debug)]
enum Grant {
    Conn(Box<PooledConn>),
    Slot(OpenSlot),
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Swapped whole on reload, so readers never take the lock for it.
    settings: ArcSwap<Settings>,
    connector: Connector,
    credentials: Arc<Credentials>,
    stats: Arc<Stats>,
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
    #[error("the database refused the login: {0}")]
    Login(BackendError),
    #[error("no credentials for user '{0}'")]
    UnknownUser(Arc<str>),
    #[error("the pool is shutting down")]
    ShuttingDown,
}

impl Pool {
    /// A pool opening connections with `connector`, passwords from `credentials`.
    pub fn new(
        config: &BackendConfig,
        connector: Connector,
        credentials: Arc<Credentials>,
        stats: Arc<Stats>,
    ) -> Self {
        let state = State {
            open: 0,
            idle: HashMap::new(),
            idle_count: 0,
            waiters: VecDeque::new(),
            warm_keys: HashMap::new(),
            closed: false,
            paused: false,
        };
        Pool {
            inner: Arc::new(Inner {
                settings: ArcSwap::from_pointee(Settings::from(config)),
                state: Mutex::new(state),
                connector,
                credentials,
                stats,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connector (backend address and timeouts).
    pub fn connector(&self) -> &Connector {
        &self.inner.connector
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
        if matches!(result, Err(BorrowError::Timeout { .. })) {
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
        let mut grant = self.request(key, schema, deadline, started).await?;
        let mut last_error: Option<String> = None;
        let mut backoff = Duration::from_millis(20);
        loop {
            let slot = match grant {
                Grant::Conn(mut conn) => match self.check_idle(&mut conn).await {
                    Ok(()) => return Ok(*conn),
                    Err(()) => conn.discard_into_slot(),
                },
                Grant::Slot(slot) => slot,
            };
            // A refused login is retried inside, with the user's secret read again.
            let connector = &self.inner.connector;
            let retry_for = connector.connect_timeout();
            let attempt = login::open(connector, &self.inner.credentials, key, deadline, retry_for);
            match timeout_at(deadline, attempt).await {
                Ok(Ok(conn)) => return Ok(slot.fill(conn)),
                Ok(Err(LoginError::Refused(e))) => return Err(BorrowError::Login(e)),
                Ok(Err(LoginError::UnknownUser)) => {
                    return Err(BorrowError::UnknownUser(key.user.clone()));
                }
                Ok(Err(LoginError::Failed(e))) => {
                    tracing::warn!(address = %self.inner.connector.address, error = %e, "backend connection failed");
                    last_error = Some(e.to_string());
                }
                Err(_) => {}
            }
            // Keep the place and retry until the borrower's deadline: a backend that is
            // briefly down should cost waiting, not errors.
            let now = tokio::time::Instant::now();
            if now >= deadline {
                let st = self.lock();
                return Err(BorrowError::Timeout {
                    waited: started.elapsed(),
                    cap: self.inner.settings.load().max_connections,
                    waiting: st.waiters.iter().filter(|w| !w.tx.is_closed()).count(),
                    last_error,
                });
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            grant = Grant::Slot(slot);
        }
    }

    /// Takes an idle connection or a place under the cap, or queues and waits for one.
    async fn request(
        &self,
        key: &PoolKey,
        schema: Option<&str>,
        deadline: tokio::time::Instant,
        started: Instant,
    ) -> Result<Grant, BorrowError> {
        let (rx, victim) = {
            let mut st = self.lock();
            if st.closed {
                return Err(BorrowError::ShuttingDown);
            }
            if st.warm_keys.len() < MAX_KEYS_KEPT_WARM || st.warm_keys.contains_key(key) {
                st.warm_keys.insert(key.clone(), ());
            }
            let mut victim = None;
            let max = self.inner.settings.load().max_connections;
            if st.waiters.is_empty() && !st.paused {
                if let Some(conn) = st.take_idle(key, schema) {
                    return Ok(Grant::Conn(Box::new(PooledConn::new(self.clone(), conn))));
                }
                if st.open < max {
                    st.open += 1;
                    return Ok(Grant::Slot(OpenSlot::new(self.clone())));
                }
                // At the cap with idle connections of other keys: close one and take its place.
                if st.open == max
                    && let Some(v) = st.take_any_idle()
                {
                    victim = Some(v);
                }
            }
            if victim.is_some() {
                (None, victim)
            } else {
                let (tx, rx) = oneshot::channel();
                st.waiters.push_back(Waiter {
                    key: key.clone(),
                    tx,
                    since: Instant::now(),
                });
                (Some(rx), None)
            }
        };
        if let Some(v) = victim {
            self.close_conn(v);
            return Ok(Grant::Slot(OpenSlot::new(self.clone())));
        }
        let Some(rx) = rx else {
            return Err(BorrowError::ShuttingDown);
        };
        match timeout_at(deadline, rx).await {
            Ok(Ok(grant)) => Ok(grant),
            Ok(Err(_)) => Err(BorrowError::ShuttingDown),
            Err(_) => {
                let st = self.lock();
                Err(BorrowError::Timeout {
                    waited: started.elapsed(),
                    cap: self.inner.settings.load().max_connections,
                    waiting: st.waiters.iter().filter(|w| !w.tx.is_closed()).count(),
                    last_error: None,
                })
            }
        }
    }

    /// Makes sure an idle connection is still usable before lending it.
    async fn check_idle(&self, conn: &mut PooledConn) -> Result<(), ()> {
        let s = self.inner.settings.load();
        let (lifetime, liveness_after) = (s.max_lifetime, s.liveness_check_after);
        if conn.created.elapsed() > lifetime {
            return Err(());
        }
        let idle = conn.last_used.elapsed();
        if idle > STALE_CHECK_AFTER && conn.stream.is_stale() {
            return Err(());
        }
        if idle > liveness_after && conn.ping().await.is_err() {
            return Err(());
        }
        Ok(())
    }

    /// Takes back a connection from a session.
    fn checkin(&self, mut conn: BackendConn) {
        conn.last_used = Instant::now();
        // A closed pool is handled in give(), under the lock it takes anyway.
        if conn.broken || conn.created.elapsed() > self.inner.settings.load().max_lifetime {
            self.close_conn(conn);
            self.slot_freed();
            return;
        }
        if conn.needs_reset || conn.in_transaction() {
            // Reset off the session's path; the connection keeps its place under the cap.
            let pool = self.clone();
            let stats = self.inner.stats.clone();
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                self.close_conn(conn);
                self.slot_freed();
                return;
            };
            stats.resets_in_flight.fetch_add(1, Relaxed);
            rt.spawn(async move {
                stats.backend_resets.fetch_add(1, Relaxed);
                match conn.reset().await {
                    Ok(()) => pool.give(conn),
                    Err(e) => {
                        tracing::warn!(backend = %conn.id, error = %e, "reset failed; closing the connection");
                        pool.close_conn(conn);
                        pool.slot_freed();
                    }
                }
                stats.resets_in_flight.fetch_sub(1, Relaxed);
            });
            return;
        }
        self.give(conn);
    }

    /// Hands a clean connection to the first waiter, or keeps it idle.
    fn give(&self, mut conn: BackendConn) {
        let to_close = {
            let mut st = self.lock();
            // Closed, paused, or above a cap lowered by a reload: the connection goes, and so
            // does its place (slot_freed hands it on only when the pool is under its cap).
            if st.closed || st.paused || st.open > self.inner.settings.load().max_connections {
                drop(st);
                self.close_conn(conn);
                self.slot_freed();
                return;
            }
            loop {
                let Some(w) = st.waiters.pop_front() else {
                    st.idle_count += 1;
                    st.idle.entry(conn.key.clone()).or_default().push(conn);
                    return;
                };
                if w.tx.is_closed() {
                    continue;
                }
                if w.key == conn.key {
                    match w
                        .tx
                        .send(Grant::Conn(Box::new(PooledConn::new(self.clone(), conn))))
                    {
                        Ok(()) => return,
                        Err(Grant::Conn(back)) => conn = back.into_inner(),
                        // A oneshot returns what was sent.
                        Err(Grant::Slot(s)) => return s.disarm(),
                    }
                } else {
                    // Strict FIFO: the first waiter needs another key, so this connection makes
                    // way for one it can use.
                    match w.tx.send(Grant::Slot(OpenSlot::new(self.clone()))) {
                        Ok(()) => break conn,
                        Err(back) => back.discard(&mut st),
                    }
                }
            }
        };
        self.close_conn(to_close);
    }

    /// A place under the cap is free again: give it to the first waiter or release it.
    fn slot_freed(&self) {
        let mut st = self.lock();
        let over_cap = st.open > self.inner.settings.load().max_connections;
        while !st.paused && !over_cap {
            let Some(w) = st.waiters.pop_front() else {
                break;
            };
            if w.tx.is_closed() {
                continue;
            }
            match w.tx.send(Grant::Slot(OpenSlot::new(self.clone()))) {
                Ok(()) => return,
                Err(back) => back.discard(&mut st),
            }
        }
        st.open = st.open.saturating_sub(1);
    }

    /// Closes a connection (politely: COM_QUIT if the socket takes it without waiting). The
    /// caller decides what happens to its place under the cap.
    fn close_conn(&self, conn: BackendConn) {
        conn.stream.try_quit();
        self.inner.stats.backend_closed();
        drop(conn);
    }

    /// Closes idle connections past `idle_timeout` (above `min_idle`) or `max_lifetime`, and
    /// opens connections to bring used keys up to `min_idle`. Called periodically.
    pub fn maintain(&self) {
        let mut expired = Vec::new();
        let mut refill = Vec::new();
        {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            let s = self.inner.settings.load();
            let mut removed = 0;
            for conns in st.idle.values_mut() {
                // Oldest first: the stacks are used from the end.
                let mut keep = Vec::with_capacity(conns.len());
                let total = conns.len();
                for (i, c) in conns.drain(..).enumerate() {
                    let surplus = total - i > s.min_idle;
                    if c.created.elapsed() > s.max_lifetime
                        || (surplus && c.last_used.elapsed() > s.idle_timeout)
                    {
                        expired.push(c);
                        removed += 1;
                    } else {
                        keep.push(c);
                    }
                }
                *conns = keep;
            }
            st.idle_count -= removed;
            st.open -= removed;
            if s.min_idle > 0 && st.waiters.is_empty() && !st.paused {
                let keys: Vec<PoolKey> = st.warm_keys.keys().cloned().collect();
                for key in keys {
                    let have = st.idle.get(&key).map_or(0, Vec::len);
                    for _ in have..s.min_idle {
                        if st.open >= s.max_connections {
                            break;
                        }
                        st.open += 1;
                        refill.push(key.clone());
                    }
                }
            }
        }
        for c in expired {
            tracing::debug!(backend = %c.id, "closing idle backend connection");
            self.close_conn(c);
        }
        for key in refill {
            let pool = self.clone();
            let slot = OpenSlot::new(self.clone());
            tokio::spawn(async move {
                let Some(password) = pool.inner.credentials.backend_password(&key.user) else {
                    return;
                };
                match pool.inner.connector.open(&key, &password, None).await {
                    Ok(conn) => {
                        slot.disarm();
                        pool.give(conn);
                    }
                    Err(e) => tracing::warn!(error = %e, "opening a min_idle connection failed"),
                }
            });
        }
        // Waiters whose borrow timed out leave closed senders behind; drop them.
        self.lock().waiters.retain(|w| !w.tx.is_closed());
    }

    /// Runs [`Pool::maintain`] every second until the pool closes.
    pub fn spawn_maintenance(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let pool = Pool { inner };
                if pool.lock().closed {
                    return;
                }
                pool.maintain();
            }
        });
    }

    /// Stops lending: closes idle connections, fails waiters; lent connections close on return.
    pub fn close(&self) {
        let idle: Vec<BackendConn> = {
            let mut st = self.lock();
            st.closed = true;
            st.waiters.clear();
            st.take_all_idle()
        };
        for c in idle {
            self.close_conn(c);
        }
    }

    /// Connections counted against the cap, idle ones, and waiting borrowers.
    pub fn counts(&self) -> (usize, usize, usize) {
        let st = self.lock();
        (st.open, st.idle_count, st.waiters.len())
    }

    /// The cap on backend connections now.
    pub fn max_connections(&self) -> usize {
        self.inner.settings.load().max_connections
    }

    /// Applies new limits and timings (a reload). A lower cap holds at once for new borrows;
    /// idle connections above it close now, lent ones when they come back. A higher cap serves
    /// waiting borrowers at once.
    pub fn apply_settings(&self, config: &BackendConfig) {
        self.inner.settings.store(Arc::new(Settings::from(config)));
        self.inner.connector.set_limits(
            config.connect_timeout,
            config.max_prepared_statements_per_connection,
        );
        let to_close = {
            let mut st = self.lock();
            let max = config.max_connections;
            let mut to_close = Vec::new();
            while st.open > max {
                let Some(c) = st.take_any_idle() else { break };
                st.open -= 1;
                to_close.push(c);
            }
            to_close.extend(self.serve_waiters(&mut st));
            to_close
        };
        for c in to_close {
            self.close_conn(c);
        }
    }

    /// PAUSE: new borrows wait (up to their `borrow_timeout`) until [`Pool::resume`]; idle
    /// connections close now and lent ones when they come back, so the database can go away
    /// for maintenance. Returns how many connections are still lent. Transactions in flight
    /// keep their connections and finish.
    pub fn pause(&self) -> usize {
        let idle: Vec<BackendConn> = {
            let mut st = self.lock();
            st.paused = true;
            st.take_all_idle()
        };
        for c in idle {
            self.close_conn(c);
        }
        self.lock().open
    }

    /// RESUME: serves the borrowers that queued during PAUSE, in order. Returns whether the
    /// pool was paused.
    pub fn resume(&self) -> bool {
        let (was_paused, to_close) = {
            let mut st = self.lock();
            let was = std::mem::replace(&mut st.paused, false);
            (was, self.serve_waiters(&mut st))
        };
        for c in to_close {
            self.close_conn(c);
        }
        was_paused
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Gives queued borrowers what is available now: an idle connection of their key, a new
    /// place under the cap, or the place of an idle connection of another key (returned for
    /// closing, outside the lock). Stops at the first borrower that cannot be served, keeping
    /// the queue's order.
    fn serve_waiters(&self, st: &mut State) -> Vec<BackendConn> {
        let mut to_close = Vec::new();
        let max = self.inner.settings.load().max_connections;
        while !st.paused && !st.closed {
            let Some(w) = st.waiters.front() else { break };
            if w.tx.is_closed() {
                st.waiters.pop_front();
                continue;
            }
            let key = w.key.clone();
            let grant = if let Some(conn) = st.take_idle(&key, None) {
                Grant::Conn(Box::new(PooledConn::new(self.clone(), conn)))
            } else if st.open < max {
                st.open += 1;
                Grant::Slot(OpenSlot::new(self.clone()))
            } else if st.open == max
                && let Some(v) = st.take_any_idle()
            {
                // The victim's place passes to the waiter.
                to_close.push(v);
                Grant::Slot(OpenSlot::new(self.clone()))
            } else {
                break;
            };
            let Some(w) = st.waiters.pop_front() else {
                break;
            };
            if let Err(back) = w.tx.send(grant) {
                // The borrower gave up meanwhile: take back what it was given, without
                // running guards (they would take the lock held here).
                match back {
                    Grant::Conn(c) => {
                        let conn = c.into_inner();
                        st.idle_count += 1;
                        st.idle.entry(conn.key.clone()).or_default().push(conn);
                    }
                    Grant::Slot(slot) => {
                        slot.disarm();
                        st.open -= 1;
                    }
                }
            }
        }
        to_close
    }

    /// Idle connections, for `SHOW SERVERS`.
    pub fn idle_connections(&self) -> Vec<IdleConn> {
        let st = self.lock();
        let mut out: Vec<IdleConn> = st
            .idle
            .values()
            .flatten()
            .map(|c| IdleConn {
                thread_id: c.thread_id,
                user: c.key.user.clone(),
                schema: c.schema.clone(),
                age: c.created.elapsed(),
                idle: c.last_used.elapsed(),
            })
            .collect();
        out.sort_by_key(|c| c.thread_id);
        out
    }

    /// Per user: idle connections, waiting borrowers and the longest wait, for `SHOW POOLS`.
    pub fn user_counts(&self) -> HashMap<Arc<str>, UserCounts> {
        let st = self.lock();
        let mut out: HashMap<Arc<str>, UserCounts> = HashMap::new();
        for (key, conns) in &st.idle {
            out.entry(key.user.clone()).or_default().idle += conns.len();
        }
        for w in st.waiters.iter().filter(|w| !w.tx.is_closed()) {
            let c = out.entry(w.key.user.clone()).or_default();
            c.waiting += 1;
            c.longest_wait = c.longest_wait.max(w.since.elapsed());
        }
        out
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

impl Grant {
    /// Drops an undelivered slot grant without running its guard: the caller holds the pool
    /// lock and still owns the place it stood for.
    fn discard(self, st: &mut State) {
        match self {
            Grant::Slot(s) => s.disarm(),
            // Callers only discard slots; were it a connection, it stays counted, so keep it.
            Grant::Conn(c) => {
                let conn = c.into_inner();
                st.idle_count += 1;
                st.idle.entry(conn.key.clone()).or_default().push(conn);
            }
        }
    }
}

impl State {
    fn take_idle(&mut self, key: &PoolKey, schema: Option<&str>) -> Option<BackendConn> {
        let conns = self.idle.get_mut(key)?;
        // Most recently used first (keeps the working set warm and lets the rest time out),
        // preferring one already in the wanted schema.
        let pos = conns
            .iter()
            .rposition(|c| c.schema.as_deref() == schema)
            .or_else(|| conns.len().checked_sub(1))?;
        let conn = conns.remove(pos);
        self.idle_count -= 1;
        Some(conn)
    }

    fn take_any_idle(&mut self) -> Option<BackendConn> {
        let conns = self.idle.values_mut().find(|v| !v.is_empty())?;
        let conn = conns.remove(0);
        self.idle_count -= 1;
        Some(conn)
    }

    /// Takes every idle connection out, no longer counted against the cap (to be closed).
    fn take_all_idle(&mut self) -> Vec<BackendConn> {
        let idle: Vec<_> = self.idle.drain().flat_map(|(_, v)| v).collect();
        self.idle_count = 0;
        self.open -= idle.len();
        idle
    }
}

/// A place under the cap, to be filled with a new connection. Dropped unfilled, it passes to
/// the next waiter or is released.
#[derive(Debug)]
pub struct OpenSlot {
    pool: Option<Pool>,
}

impl OpenSlot {
    fn new(pool: Pool) -> Self {
        OpenSlot { pool: Some(pool) }
    }

    /// Gives up the guard without releasing the place (the caller accounts for it).
    fn disarm(mut self) {
        self.pool = None;
    }

    fn fill(mut self, conn: BackendConn) -> PooledConn {
        let pool = self.pool.take();
        match pool {
            Some(pool) => PooledConn::new(pool, conn),
            None => PooledConn {
                pool: None,
                conn: Some(conn),
            },
        }
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.slot_freed();
        }
    }
}

/// A lent connection; goes back to the pool (reset first if needed) when dropped.
#[derive(Debug)]
pub struct PooledConn {
    pool: Option<Pool>,
    conn: Option<BackendConn>,
}

impl PooledConn {
    fn new(pool: Pool, conn: BackendConn) -> Self {
        PooledConn {
            pool: Some(pool),
            conn: Some(conn),
        }
    }

    fn into_inner(mut self) -> BackendConn {
        self.pool = None;
        match self.conn.take() {
            Some(c) => c,
            None => unreachable_conn(),
        }
    }

    /// Closes the connection but keeps its place under the cap for a new one.
    fn discard_into_slot(mut self) -> OpenSlot {
        let pool = self.pool.take();
        if let (Some(pool), Some(conn)) = (&pool, self.conn.take()) {
            pool.close_conn(conn);
        }
        OpenSlot { pool }
    }
}

fn unreachable_conn() -> ! {
    // `conn` is only ever None after into_inner or drop, which consume the guard.
    panic!("PooledConn used after its connection was taken")
}

impl Deref for PooledConn {
    type Target = BackendConn;
    fn deref(&self) -> &BackendConn {
        match &self.conn {
            Some(c) => c,
            None => unreachable_conn(),
        }
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut BackendConn {
        match &mut self.conn {
            Some(c) => c,
            None => unreachable_conn(),
        }
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let (Some(pool), Some(conn)) = (self.pool.take(), self.conn.take()) {
            pool.checkin(conn);
        }
    }
}
