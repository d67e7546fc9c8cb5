//! Live client sessions by connection id, so `KILL <id>` can find its target and the backend
//! thread that target is using, and the admin console can list them (`SHOW CLIENTS`).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::backend::Route;
use crate::session::PinSet;

/// The first client id Sluice hands out. Its ids come from a range far above the thread ids a
/// database hands out (from 1), so a client that learns a backend thread id (`CONNECTION_ID()`
/// returns the id of the backend connection a statement runs on) can never name another
/// client's session with it, and `KILL <thread id>` never reaches a session by accident.
pub const FIRST_CLIENT_ID: u32 = 1 << 30;

/// A client connection id as Sluice hands it out (in its handshake; the target of `KILL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u32);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a session is doing, as `SHOW CLIENTS` and the metrics report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Connected, login not completed.
    LoggingIn = 0,
    /// Logged in, waiting for a command, no transaction open.
    Idle = 1,
    /// Running a command.
    Running = 2,
    /// Waiting for a command inside an open transaction.
    InTransaction = 3,
}

impl Activity {
    /// The name `SHOW CLIENTS` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::LoggingIn => "login",
            Activity::Idle => "idle",
            Activity::Running => "active",
            Activity::InTransaction => "idle in transaction",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Activity::Idle,
            2 => Activity::Running,
            3 => Activity::InTransaction,
            _ => Activity::LoggingIn,
        }
    }
}

/// What other tasks may see and do to one client session.
#[derive(Debug)]
pub struct SessionHandle {
    pub id: ClientId,
    /// The client's address.
    pub peer: SocketAddr,
    /// When the client connected.
    pub connected_at: Instant,
    /// Which endpoint it connected to: the writer's (`listen`) or the reader's.
    pub route: Route,
    user: Mutex<Arc<str>>,
    /// The backend thread the session is using, if any. A `KILL QUERY` holds this lock while it
    /// runs, and the session takes it before giving its connection back, so the kill can never
    /// reach a connection that has meanwhile passed to another session.
    pub backend_thread: tokio::sync::Mutex<Option<u32>>,
    killed: AtomicBool,
    /// Its login took longer than `handshake_timeout` (see [`Registry::expire_logins`]).
    login_expired: AtomicBool,
    kill_signal: Notify,
    // Plain atomics the session writes on its own path and the admin console reads.
    activity: AtomicU8,
    /// The last command left a transaction open (still true while the next one runs).
    in_transaction: AtomicBool,
    tls: AtomicBool,
    pins: AtomicU16,
    /// Server thread id of the lent backend connection; 0 when none.
    lent_thread: AtomicU64,
    /// Milliseconds from `connected_at` to the start or end of the last command.
    last_active_ms: AtomicU64,
}

impl SessionHandle {
    /// A handle for a client that just connected from `peer`.
    pub fn new(id: ClientId, peer: SocketAddr) -> Self {
        Self::on_route(id, peer, Route::Writer)
    }

    /// A handle for a client that connected to `route`'s endpoint.
    pub fn on_route(id: ClientId, peer: SocketAddr, route: Route) -> Self {
        SessionHandle {
            id,
            peer,
            route,
            connected_at: Instant::now(),
            user: Mutex::new(Arc::from("")),
            backend_thread: tokio::sync::Mutex::new(None),
            killed: AtomicBool::new(false),
            login_expired: AtomicBool::new(false),
            kill_signal: Notify::new(),
            activity: AtomicU8::new(Activity::LoggingIn as u8),
            in_transaction: AtomicBool::new(false),
            tls: AtomicBool::new(false),
            pins: AtomicU16::new(0),
            lent_thread: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(0),
        }
    }

    /// Records what the session is doing, at `now`. Idle and InTransaction also record
    /// whether a transaction is open.
    pub fn set_activity(&self, activity: Activity, now: Instant) {
        self.activity.store(activity as u8, Ordering::Relaxed);
        match activity {
            Activity::Idle => self.in_transaction.store(false, Ordering::Relaxed),
            Activity::InTransaction => self.in_transaction.store(true, Ordering::Relaxed),
            Activity::LoggingIn | Activity::Running => {}
        }
        let ms = now.saturating_duration_since(self.connected_at).as_millis();
        self.last_active_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// What the session is doing.
    pub fn activity(&self) -> Activity {
        Activity::from_u8(self.activity.load(Ordering::Relaxed))
    }

    /// Whether the session has a transaction open.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction.load(Ordering::Relaxed)
    }

    /// How long since the session's last command started or ended.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed));
        self.connected_at.elapsed().saturating_sub(last)
    }

    /// Records whether the client connection uses TLS.
    pub fn set_tls(&self, tls: bool) {
        self.tls.store(tls, Ordering::Relaxed);
    }

    /// Whether the client connection uses TLS.
    pub fn tls(&self) -> bool {
        self.tls.load(Ordering::Relaxed)
    }

    /// Records the reasons the session is pinned now.
    pub fn set_pins(&self, pins: PinSet) {
        self.pins.store(pins.bits(), Ordering::Relaxed);
    }

    /// The reasons the session is pinned now.
    pub fn pins(&self) -> PinSet {
        PinSet::from_bits(self.pins.load(Ordering::Relaxed))
    }

    /// Records the server thread of the backend connection the session holds, if any.
    pub fn set_lent_thread(&self, thread: Option<u32>) {
        self.lent_thread
            .store(thread.map_or(0, u64::from), Ordering::Relaxed);
    }

    /// The server thread of the backend connection the session holds, if any.
    pub fn lent_thread(&self) -> Option<u32> {
        u32::try_from(self.lent_thread.load(Ordering::Relaxed))
            .ok()
            .filter(|t| *t != 0)
    }

    /// The user the session is logged in as (empty before login).
    pub fn user(&self) -> Arc<str> {
        self.user
            .lock()
            .map(|u| u.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Records the user after login or COM_CHANGE_USER.
    pub fn set_user(&self, user: Arc<str>) {
        match self.user.lock() {
            Ok(mut u) => *u = user,
            Err(p) => *p.into_inner() = user,
        }
    }

    /// Asks the session to end (KILL CONNECTION).
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.kill_signal.notify_one();
    }

    /// True once [`SessionHandle::kill`] was called.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Completes when the session is killed.
    pub async fn killed(&self) {
        while !self.is_killed() {
            self.kill_signal.notified().await;
        }
    }

    /// Ends the login of a session that took too long to log in (a session already logged
    /// in is not affected).
    pub fn expire_login(&self) {
        self.login_expired.store(true, Ordering::SeqCst);
        self.kill_signal.notify_one();
    }

    /// True once [`SessionHandle::expire_login`] was called.
    pub fn login_expired(&self) -> bool {
        self.login_expired.load(Ordering::SeqCst)
    }

    /// Completes when the login must end: the session was killed (or evicted by a flood) or
    /// its login expired.
    pub async fn login_cut_short(&self) {
        while !self.is_killed() && !self.login_expired() {
            self.kill_signal.notified().await;
        }
    }
}

/// Whether a queued session is still logging in.
fn still_logging_in(w: &Weak<SessionHandle>) -> bool {
    w.upgrade().is_some_and(|h| {
        h.activity() == Activity::LoggingIn && !h.is_killed() && !h.login_expired()
    })
}

/// All live sessions of one proxy.
#[derive(Debug, Default)]
pub struct Registry {
    next: AtomicU32,
    sessions: Mutex<HashMap<ClientId, Arc<SessionHandle>>>,
    emptied: Notify,
    /// Sessions in connection order, oldest first, kept while they may still be logging in:
    /// the first to go when a flood has to make room.
    logging_in: Mutex<VecDeque<Weak<SessionHandle>>>,
}

impl Registry {
    /// Registers a new session from `peer` under a fresh, non-zero id that no live session has.
    pub fn register(&self, peer: SocketAddr) -> Arc<SessionHandle> {
        self.register_on(peer, Route::Writer)
    }

    /// Registers a new client session that connected to `route`'s endpoint.
    pub fn register_on(&self, peer: SocketAddr, route: Route) -> Arc<SessionHandle> {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let id = loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let id = ClientId(FIRST_CLIENT_ID + n % (u32::MAX - FIRST_CLIENT_ID));
            if id.0 != 0 && !map.contains_key(&id) {
                break id;
            }
        };
        let handle = Arc::new(SessionHandle::on_route(id, peer, route));
        map.insert(id, handle.clone());
        drop(map);
        let mut queue = self.logging_in.lock().unwrap_or_else(|p| p.into_inner());
        queue.push_back(Arc::downgrade(&handle));
        // Entries that are done logging in never count again: drop them from the front.
        while queue.front().is_some_and(|w| !still_logging_in(w)) {
            queue.pop_front();
        }
        handle
    }

    /// Ends the logins of sessions connected longer than `limit` ago and still not logged
    /// in (the handshake timeout): one timer for all of them, so a connection that never
    /// speaks costs no timer of its own. Returns how many.
    pub fn expire_logins(&self, limit: Duration) -> usize {
        let mut queue = self.logging_in.lock().unwrap_or_else(|p| p.into_inner());
        let mut expired = 0;
        while let Some(w) = queue.front() {
            let Some(h) = w.upgrade().filter(|_| still_logging_in(w)) else {
                queue.pop_front();
                continue;
            };
            if h.connected_at.elapsed() < limit {
                break;
            }
            queue.pop_front();
            h.expire_login();
            expired += 1;
        }
        expired
    }

    /// Ends the oldest session still logging in, to make room for a new client at the
    /// client limit; false if there is none.
    pub fn evict_oldest_login(&self) -> bool {
        let mut queue = self.logging_in.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(w) = queue.pop_front() {
            if let Some(h) = w.upgrade()
                && still_logging_in(&w)
            {
                h.kill();
                return true;
            }
        }
        false
    }

    /// Removes a session that ended.
    pub fn unregister(&self, id: ClientId) {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&id);
        if map.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// Waits until no session is live, up to `limit`; true if that happened.
    pub async fn wait_empty(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.emptied.notified();
            tokio::pin!(notified);
            // Register interest before checking, so an unregister in between is not missed.
            notified.as_mut().enable();
            if self.is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_empty();
            }
        }
    }

    /// The session with this id, if it is live.
    pub fn get(&self, id: ClientId) -> Option<Arc<SessionHandle>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Every live session, by id.
    pub fn sessions(&self) -> Vec<Arc<SessionHandle>> {
        let mut all: Vec<_> = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// True if no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks every session to end.
    pub fn kill_all(&self) {
        for s in self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            s.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_nonzero() {
        let r = Registry::default();
        let peer = SocketAddr::from(([127, 0, 0, 1], 5000));
        let a = r.register(peer);
        let b = r.register(peer);
        assert_ne!(a.id, b.id);
        assert!(a.id.0 != 0 && b.id.0 != 0);
        assert!(r.get(a.id).is_some());
        r.unregister(a.id);
        assert!(r.get(a.id).is_none());
        assert_eq!(r.len(), 1);
        assert_eq!(r.sessions().len(), 1);
    }

    #[test]
    fn handles_report_what_the_session_does() {
        let h = SessionHandle::new(ClientId(7), SocketAddr::from(([127, 0, 0, 1], 1)));
        assert_eq!(h.activity(), Activity::LoggingIn);
        h.set_activity(Activity::InTransaction, Instant::now());
        assert_eq!(h.activity().as_str(), "idle in transaction");
        h.set_activity(Activity::Running, Instant::now());
        assert!(h.in_transaction(), "a command inside a transaction");
        h.set_activity(Activity::Idle, Instant::now());
        assert!(!h.in_transaction());
        assert_eq!(h.lent_thread(), None);
        h.set_lent_thread(Some(42));
        assert_eq!(h.lent_thread(), Some(42));
        h.set_lent_thread(None);
        assert_eq!(h.lent_thread(), None);
        let mut pins = PinSet::default();
        pins.insert(crate::PinReason::TemporaryTable);
        h.set_pins(pins);
        assert_eq!(h.pins(), pins);
        assert!(h.idle_for() < Duration::from_secs(5));
    }
}
