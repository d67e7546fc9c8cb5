//! The checkout guards: a lent connection ([`PooledConn`]) and a place under the caps to open
//! one in ([`OpenSlot`]). Dropping either gives back what it holds, so a borrower that times
//! out, fails or is cancelled can never leak a connection or a place.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::Pool;
use crate::backend::conn::BackendConn;

/// A place under the caps, counted for `user`, to be filled with a new connection. Dropped
/// unfilled, it passes to the next waiter or is released.
#[derive(Debug)]
pub struct OpenSlot {
    pool: Option<Pool>,
    user: Arc<str>,
}

impl OpenSlot {
    pub(super) fn new(pool: Pool, user: Arc<str>) -> Self {
        OpenSlot {
            pool: Some(pool),
            user,
        }
    }

    /// Gives up the guard without releasing the place (the caller accounts for it).
    pub(super) fn disarm(mut self) {
        self.pool = None;
    }

    /// The user the place is counted for.
    pub(super) fn user(&self) -> &Arc<str> {
        &self.user
    }

    pub(super) fn fill(mut self, conn: BackendConn) -> PooledConn {
        PooledConn {
            pool: self.pool.take(),
            conn: Some(conn),
        }
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.slot_freed(&self.user);
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
    pub(super) fn new(pool: Pool, conn: BackendConn) -> Self {
        PooledConn {
            pool: Some(pool),
            conn: Some(conn),
        }
    }

    /// The connection, without returning it to the pool (the caller accounts for it).
    pub(super) fn into_inner(mut self) -> BackendConn {
        self.pool = None;
        match self.conn.take() {
            Some(c) => c,
            None => unreachable_conn(),
        }
    }

    /// Closes the connection but keeps its place under the caps for a new one.
    pub(super) fn discard_into_slot(mut self) -> OpenSlot {
        let pool = self.pool.take();
        let conn = match self.conn.take() {
            Some(c) => c,
            None => unreachable_conn(),
        };
        let user = conn.key.user.clone();
        if let Some(pool) = &pool {
            pool.close_conn(conn);
        }
        OpenSlot { pool, user }
    }
}

fn unreachable_conn() -> ! {
    // `conn` is only ever None after into_inner, discard_into_slot or drop, which consume
    // the guard.
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
