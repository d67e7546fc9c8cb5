//! The pool's bookkeeping under its lock: places under the caps (all users, and per user),
//! idle connections by key, and the queue of waiting borrowers. Pure data: no I/O, no
//! guards run here, so the grant rules can be tested without sockets.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::PoolKey;
use crate::backend::conn::BackendConn;

/// A borrower waiting for a connection or a place.
#[derive(Debug)]
pub(super) struct Waiter<G> {
    pub key: PoolKey,
    pub tx: oneshot::Sender<G>,
    pub since: Instant,
}

/// The caps a grant must respect, read once per decision.
#[derive(Debug, Clone, Copy)]
pub(super) struct Caps {
    pub max: usize,
    /// 0: no per-user cap.
    pub per_user: usize,
}

/// What the pool can give a borrower now.
#[derive(Debug)]
pub(super) enum Decision {
    /// An idle connection of its key.
    Conn(BackendConn),
    /// A new place under the caps, to open a connection in.
    Slot,
    /// A place taken over from an idle connection of another key, which the caller closes.
    SlotFrom(BackendConn),
    /// Nothing while the user is at its own cap (others may still be served).
    UserAtCap,
    /// Nothing while the pool is at its cap.
    Full,
}

/// Everything the pool's lock protects.
#[derive(Debug)]
pub(super) struct State<G> {
    /// Connections counted against the cap: idle, lent, opening, resetting.
    pub open: usize,
    /// The same, per user.
    pub user_open: HashMap<Arc<str>, usize>,
    pub idle: HashMap<PoolKey, Vec<BackendConn>>,
    pub idle_count: usize,
    pub waiters: VecDeque<Waiter<G>>,
    pub warm_keys: HashMap<PoolKey, ()>,
    pub closed: bool,
    /// PAUSE: no grants; connections coming back are closed.
    pub paused: bool,
    /// The part of each user's `max_connections_per_user` left to other Sluice instances
    /// (with `per_user_scope = "database"`; 0 otherwise).
    pub peers_share: usize,
}

impl<G> Default for State<G> {
    fn default() -> Self {
        State {
            open: 0,
            user_open: HashMap::new(),
            idle: HashMap::new(),
            idle_count: 0,
            waiters: VecDeque::new(),
            warm_keys: HashMap::new(),
            closed: false,
            paused: false,
            peers_share: 0,
        }
    }
}

impl<G> State<G> {
    /// Counts a new place for `user`.
    pub fn take_place(&mut self, user: &Arc<str>) {
        self.open += 1;
        *self.user_open.entry(user.clone()).or_default() += 1;
    }

    /// Gives back a place of `user`.
    pub fn release_place(&mut self, user: &str) {
        self.open = self.open.saturating_sub(1);
        if let Some(n) = self.user_open.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.user_open.remove(user);
            }
        }
    }

    /// Connections `user` holds in this Sluice (idle, lent, opening).
    pub fn user_count(&self, user: &str) -> usize {
        self.user_open.get(user).copied().unwrap_or(0)
    }

    /// How many connections `user` may hold in this Sluice.
    pub fn user_cap(&self, caps: Caps) -> usize {
        if caps.per_user == 0 {
            return usize::MAX;
        }
        caps.per_user.saturating_sub(self.peers_share).max(1)
    }

    /// What `key` can have now (see [`Decision`]); counts a place when it grants one.
    pub fn decide(&mut self, key: &PoolKey, schema: Option<&str>, caps: Caps) -> Decision {
        if let Some(conn) = self.take_idle(key, schema) {
            return Decision::Conn(conn);
        }
        if self.user_count(&key.user) >= self.user_cap(caps) {
            // At its own cap, a user may still swap an idle connection of another kind of
            // its own for one it can use.
            return match self.take_idle_where(|k| k.user == key.user) {
                Some(v) => Decision::SlotFrom(v),
                None => Decision::UserAtCap,
            };
        }
        if self.open < caps.max {
            self.take_place(&key.user);
            return Decision::Slot;
        }
        match self.take_idle_where(|_| true) {
            Some(v) => {
                self.release_place(&v.key.user.clone());
                self.take_place(&key.user);
                Decision::SlotFrom(v)
            }
            None => Decision::Full,
        }
    }

    /// An idle connection of `key`: the most recently used (keeps the working set warm and
    /// lets the rest time out), preferring one already in `schema`.
    pub fn take_idle(&mut self, key: &PoolKey, schema: Option<&str>) -> Option<BackendConn> {
        let conns = self.idle.get_mut(key)?;
        let pos = conns
            .iter()
            .rposition(|c| c.schema.as_deref() == schema)
            .or_else(|| conns.len().checked_sub(1))?;
        let conn = conns.remove(pos);
        self.idle_count -= 1;
        Some(conn)
    }

    /// The least recently used idle connection of a key `pick` accepts; still counted.
    fn take_idle_where(&mut self, pick: impl Fn(&PoolKey) -> bool) -> Option<BackendConn> {
        let conns = self
            .idle
            .iter_mut()
            .find(|(k, v)| pick(k) && !v.is_empty())
            .map(|(_, v)| v)?;
        let conn = conns.remove(0);
        self.idle_count -= 1;
        Some(conn)
    }

    /// Any idle connection, no longer counted against the caps (to be closed).
    pub fn evict_any_idle(&mut self) -> Option<BackendConn> {
        let conn = self.take_idle_where(|_| true)?;
        self.release_place(&conn.key.user.clone());
        Some(conn)
    }

    /// Keeps `conn` idle (still counted).
    pub fn put_idle(&mut self, conn: BackendConn) {
        self.idle_count += 1;
        self.idle.entry(conn.key.clone()).or_default().push(conn);
    }

    /// Takes out every idle connection `drop_it` selects, no longer counted (to be closed).
    pub fn take_idle_if(&mut self, drop_it: impl Fn(&BackendConn) -> bool) -> Vec<BackendConn> {
        let mut out = Vec::new();
        for conns in self.idle.values_mut() {
            let mut i = 0;
            while i < conns.len() {
                if drop_it(&conns[i]) {
                    out.push(conns.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        self.idle.retain(|_, v| !v.is_empty());
        self.idle_count -= out.len();
        for c in &out {
            self.release_place(&c.key.user.clone());
        }
        out
    }

    /// Live waiters (a borrower that timed out leaves a closed sender behind).
    pub fn live_waiters(&self) -> usize {
        self.waiters.iter().filter(|w| !w.tx.is_closed()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::topology::Route;
    use crate::protocol::CapabilityFlags;

    fn key(user: &str) -> PoolKey {
        PoolKey {
            user: Arc::from(user),
            caps: CapabilityFlags::empty(),
            collation: 45,
            route: Route::Writer,
        }
    }

    fn caps(max: usize, per_user: usize) -> Caps {
        Caps { max, per_user }
    }

    #[test]
    fn a_user_at_its_cap_waits_while_others_are_served() {
        let mut st: State<()> = State::default();
        let (a, b) = (key("a"), key("b"));
        for _ in 0..2 {
            assert!(matches!(st.decide(&a, None, caps(4, 2)), Decision::Slot));
        }
        assert!(matches!(
            st.decide(&a, None, caps(4, 2)),
            Decision::UserAtCap
        ));
        assert!(matches!(st.decide(&b, None, caps(4, 2)), Decision::Slot));
        assert_eq!((st.open, st.user_count("a"), st.user_count("b")), (3, 2, 1));
        st.release_place("a");
        assert!(matches!(st.decide(&a, None, caps(4, 2)), Decision::Slot));
        assert!(matches!(st.decide(&b, None, caps(4, 2)), Decision::Slot));
        assert!(matches!(st.decide(&b, None, caps(4, 0)), Decision::Full));
        assert_eq!(st.user_cap(caps(4, 0)), usize::MAX);
    }

    #[test]
    fn other_instances_shares_shrink_a_database_wide_budget() {
        let mut st: State<()> = State {
            peers_share: 3,
            ..State::default()
        };
        let a = key("a");
        assert!(matches!(st.decide(&a, None, caps(10, 4)), Decision::Slot));
        assert!(matches!(
            st.decide(&a, None, caps(10, 4)),
            Decision::UserAtCap
        ));
        // Never below one: an instance can always make progress.
        st.peers_share = 5;
        assert_eq!(st.user_cap(caps(10, 4)), 1);
    }
}
