//! Live client sessions by connection id, so `KILL <id>` can find its target and the backend
//! thread that target is using.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A client connection id as Sluice hands it out (in its handshake; the target of `KILL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u32);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What other tasks may see and do to one client session.
#[derive(Debug)]
pub struct SessionHandle {
    pub id: ClientId,
    user: Mutex<Arc<str>>,
    /// The backend thread the session is using, if any. A `KILL QUERY` holds this lock while it
    /// runs, and the session takes it before giving its connection back, so the kill can never
    /// reach a connection that has meanwhile passed to another session.
    pub backend_thread: tokio::sync::Mutex<Option<u32>>,
    killed: AtomicBool,
    kill_signal: Notify,
}

impl SessionHandle {
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
}

/// All live sessions of one proxy.
#[derive(Debug, Default)]
pub struct Registry {
    next: AtomicU32,
    sessions: Mutex<HashMap<ClientId, Arc<SessionHandle>>>,
    emptied: Notify,
}

impl Registry {
    /// Registers a new session under a fresh, non-zero id that no live session has.
    pub fn register(&self) -> Arc<SessionHandle> {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let id = loop {
            let id = ClientId(self.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1));
            if id.0 != 0 && !map.contains_key(&id) {
                break id;
            }
        };
        let handle = Arc::new(SessionHandle {
            id,
            user: Mutex::new(Arc::from("")),
            backend_thread: tokio::sync::Mutex::new(None),
            killed: AtomicBool::new(false),
            kill_signal: Notify::new(),
        });
        map.insert(id, handle.clone());
        handle
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
        let a = r.register();
        let b = r.register();
        assert_ne!(a.id, b.id);
        assert!(a.id.0 != 0 && b.id.0 != 0);
        assert!(r.get(a.id).is_some());
        r.unregister(a.id);
        assert!(r.get(a.id).is_none());
        assert_eq!(r.len(), 1);
    }
}
