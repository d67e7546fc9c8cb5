//! The hold-and-reset policy, as data. A session holds its backend connection while a
//! transaction is open or while it has state the connection keeps and Sluice cannot replay
//! elsewhere (the pin reasons). A connection goes back to the pool clean, or through
//! `COM_RESET_CONNECTION` when anything on it may outlive the session that used it (the reset
//! reasons). Every path that gives a connection back (release, disconnect, KILL, drain, idle
//! timeout) asks the same two questions: [`may_release`] and [`ResetSet::is_empty`].
//!
//! Statement text may add pins and reset reasons; only the server (a transaction ending) or a
//! reset removes what Sluice cannot see. A pin that statement text clears (`SET @x = NULL`,
//! `RELEASE_LOCK`) lets the session go, but its connection still goes back through a reset,
//! because reading the text might have been wrong.

use std::collections::{HashMap, HashSet};
use std::fmt;

/// Why a session keeps its backend connection between transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinReason {
    /// `SET @x = ...`, `SELECT ... INTO @x`, `@x := ...`.
    UserVariable,
    /// A system variable outside the replayable set, `SET ROLE`.
    SessionVariable,
    /// `CREATE TEMPORARY TABLE`.
    TemporaryTable,
    /// `GET_LOCK()`.
    NamedLock,
    /// `LOCK TABLES`, `FLUSH TABLES ... WITH READ LOCK`, `BACKUP STAGE`.
    TableLock,
    /// Text `PREPARE name FROM ...`.
    SqlPrepare,
    /// `XA START` and the other XA statements.
    Xa,
    /// `HANDLER ... OPEN`.
    Handler,
    /// The server reported a state change Sluice cannot attribute (a stored procedure, say).
    UnknownStateChange,
    /// `SET TRANSACTION ...` (or MySQL's scopeless `SET @@transaction_isolation`): it applies
    /// to the next transaction on this connection only, and the server does not report it.
    NextTransaction,
    /// A server-side cursor is open (`COM_STMT_EXECUTE` with a cursor, `COM_STMT_FETCH`).
    Cursor,
    /// `COM_STMT_SEND_LONG_DATA` sent data the statement's execute has not used yet.
    LongData,
}

impl PinReason {
    /// Every reason, in a fixed order (for counters and reports).
    pub const ALL: [PinReason; 12] = [
        PinReason::UserVariable,
        PinReason::SessionVariable,
        PinReason::TemporaryTable,
        PinReason::NamedLock,
        PinReason::TableLock,
        PinReason::SqlPrepare,
        PinReason::Xa,
        PinReason::Handler,
        PinReason::UnknownStateChange,
        PinReason::NextTransaction,
        PinReason::Cursor,
        PinReason::LongData,
    ];

    /// Position in [`PinReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A stable name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            PinReason::UserVariable => "user_variable",
            PinReason::SessionVariable => "session_variable",
            PinReason::TemporaryTable => "temporary_table",
            PinReason::NamedLock => "named_lock",
            PinReason::TableLock => "table_lock",
            PinReason::SqlPrepare => "sql_prepare",
            PinReason::Xa => "xa",
            PinReason::Handler => "handler",
            PinReason::UnknownStateChange => "unknown_state_change",
            PinReason::NextTransaction => "next_transaction",
            PinReason::Cursor => "cursor",
            PinReason::LongData => "long_data",
        }
    }
}

impl fmt::Display for PinReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of pin reasons.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PinSet(u16);

impl PinSet {
    /// The set as bits (one per reason, in [`PinReason::ALL`] order), to share through an atomic.
    pub fn bits(self) -> u16 {
        self.0
    }

    /// The set from [`PinSet::bits`].
    pub fn from_bits(bits: u16) -> Self {
        PinSet(bits)
    }

    /// Adds a reason; returns true if it was new.
    pub fn insert(&mut self, r: PinReason) -> bool {
        let bit = 1 << r.index();
        let new = self.0 & bit == 0;
        self.0 |= bit;
        new
    }

    /// True if `r` is in the set.
    pub fn contains(self, r: PinReason) -> bool {
        self.0 & (1 << r.index()) != 0
    }

    /// True if the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The reasons in the set.
    pub fn iter(self) -> impl Iterator<Item = PinReason> {
        PinReason::ALL
            .into_iter()
            .filter(move |r| self.contains(*r))
    }

    /// Removes a reason.
    pub fn remove(&mut self, r: PinReason) {
        self.0 &= !(1 << r.index());
    }

    /// Adds every reason of `other`.
    pub fn extend(&mut self, other: PinSet) {
        self.0 |= other.0;
    }
}

/// Why a connection is reset before anyone else borrows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetReason {
    /// The session held state of this kind on it (even if it cleared it since).
    Pinned(PinReason),
    /// A statement Sluice could not read for certain (longer than it inspects, or read
    /// differently in another `sql_mode` or character set).
    Unclassified,
    /// A statement ran code Sluice cannot see into (`CALL`, `EXECUTE`, a stored function,
    /// a compound statement).
    StoredCode,
    /// The client left, was killed or timed out inside a transaction.
    AbandonedTransaction,
    /// Sluice lost track of the connection's state (a read-back of it failed).
    StateUnknown,
}

impl ResetReason {
    /// Every reason, in a fixed order (for counters).
    pub const ALL: [ResetReason; 16] = [
        ResetReason::Pinned(PinReason::UserVariable),
        ResetReason::Pinned(PinReason::SessionVariable),
        ResetReason::Pinned(PinReason::TemporaryTable),
        ResetReason::Pinned(PinReason::NamedLock),
        ResetReason::Pinned(PinReason::TableLock),
        ResetReason::Pinned(PinReason::SqlPrepare),
        ResetReason::Pinned(PinReason::Xa),
        ResetReason::Pinned(PinReason::Handler),
        ResetReason::Pinned(PinReason::UnknownStateChange),
        ResetReason::Pinned(PinReason::NextTransaction),
        ResetReason::Pinned(PinReason::Cursor),
        ResetReason::Pinned(PinReason::LongData),
        ResetReason::Unclassified,
        ResetReason::StoredCode,
        ResetReason::AbandonedTransaction,
        ResetReason::StateUnknown,
    ];

    /// Position in [`ResetReason::ALL`].
    pub fn index(self) -> usize {
        match self {
            ResetReason::Pinned(p) => p.index(),
            ResetReason::Unclassified => 12,
            ResetReason::StoredCode => 13,
            ResetReason::AbandonedTransaction => 14,
            ResetReason::StateUnknown => 15,
        }
    }

    /// A stable name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::Pinned(p) => p.as_str(),
            ResetReason::Unclassified => "unclassified_statement",
            ResetReason::StoredCode => "stored_code",
            ResetReason::AbandonedTransaction => "abandoned_transaction",
            ResetReason::StateUnknown => "state_unknown",
        }
    }
}

/// A set of reset reasons, carried by the connection until a reset clears it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResetSet(u32);

impl ResetSet {
    /// Adds a reason.
    pub fn insert(&mut self, r: ResetReason) {
        self.0 |= 1 << r.index();
    }

    /// Adds every pin of `pins`.
    pub fn insert_pins(&mut self, pins: PinSet) {
        for p in pins.iter() {
            self.insert(ResetReason::Pinned(p));
        }
    }

    /// True when the connection may go back without a reset.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The reasons in the set.
    pub fn iter(self) -> impl Iterator<Item = ResetReason> {
        ResetReason::ALL
            .into_iter()
            .filter(move |r| self.0 & (1 << r.index()) != 0)
    }
}

/// Whether a session may give its connection back now.
pub fn may_release(pins: PinSet, in_transaction: bool) -> bool {
    pins.is_empty() && !in_transaction
}

/// What holds a session on its backend connection, with names, so that the statements that
/// clear the state (`DROP TEMPORARY TABLE`, `RELEASE_LOCK`, ...) let the session go again.
/// Lock names compare exactly (the servers treat them case-sensitively); the classifier hands
/// in user variable, prepared statement and handler names in lower case.
#[derive(Debug, Clone, Default)]
pub struct PinState {
    user_vars: HashSet<Vec<u8>>,
    temp_tables: HashSet<Vec<u8>>,
    /// Named locks with their recursion count (a lock taken twice is released twice).
    named_locks: HashMap<Vec<u8>, u32>,
    /// Locks whose names Sluice could not read: only `RELEASE_ALL_LOCKS()` or a reset frees
    /// them for sure.
    unnamed_locks: bool,
    sql_prepared: HashSet<Vec<u8>>,
    handlers: HashSet<Vec<u8>>,
    /// Reasons without names.
    flags: PinSet,
}

/// Most names of one kind a session's pin state keeps; past it, the kind is held until a
/// reset (a hostile session cannot grow Sluice's memory through names).
pub const MAX_NAMES: usize = 1024;

impl PinState {
    /// The reasons that currently hold the session.
    pub fn reasons(&self) -> PinSet {
        let mut set = self.flags;
        for (reason, empty) in [
            (PinReason::UserVariable, self.user_vars.is_empty()),
            (PinReason::TemporaryTable, self.temp_tables.is_empty()),
            (
                PinReason::NamedLock,
                self.named_locks.is_empty() && !self.unnamed_locks,
            ),
            (PinReason::SqlPrepare, self.sql_prepared.is_empty()),
            (PinReason::Handler, self.handlers.is_empty()),
        ] {
            if !empty {
                set.insert(reason);
            }
        }
        set
    }

    /// True when nothing holds the session.
    pub fn is_empty(&self) -> bool {
        self.reasons().is_empty()
    }

    /// Records state a statement created (`None`: a name Sluice cannot know).
    pub fn add(&mut self, reason: PinReason, name: Option<&[u8]>) {
        let set = match reason {
            PinReason::UserVariable => &mut self.user_vars,
            PinReason::TemporaryTable => &mut self.temp_tables,
            PinReason::SqlPrepare => &mut self.sql_prepared,
            PinReason::Handler => &mut self.handlers,
            PinReason::NamedLock => {
                match name {
                    Some(n) if self.named_locks.len() < MAX_NAMES => {
                        *self.named_locks.entry(n.to_vec()).or_default() += 1
                    }
                    _ => self.unnamed_locks = true,
                }
                return;
            }
            _ => {
                self.flags.insert(reason);
                return;
            }
        };
        match name {
            Some(n) if set.len() < MAX_NAMES => {
                set.insert(n.to_vec());
            }
            // A name Sluice cannot know (or too many): held until a reset.
            _ => {
                self.flags.insert(reason);
            }
        }
    }

    /// Forgets state a statement cleared; `None` clears every item of the kind.
    pub fn remove(&mut self, reason: PinReason, name: Option<&[u8]>) {
        fn drop_from(set: &mut HashSet<Vec<u8>>, name: Option<&[u8]>) {
            match name {
                Some(n) => {
                    set.remove(n);
                }
                None => set.clear(),
            }
        }
        match reason {
            PinReason::UserVariable => drop_from(&mut self.user_vars, name),
            PinReason::TemporaryTable => drop_from(&mut self.temp_tables, name),
            PinReason::SqlPrepare => drop_from(&mut self.sql_prepared, name),
            PinReason::Handler => drop_from(&mut self.handlers, name),
            PinReason::NamedLock => match name {
                Some(n) => {
                    if let Some(count) = self.named_locks.get_mut(n) {
                        *count -= 1;
                        if *count == 0 {
                            self.named_locks.remove(n);
                        }
                    }
                }
                None => {
                    self.named_locks.clear();
                    self.unnamed_locks = false;
                }
            },
            PinReason::TableLock
            | PinReason::Xa
            | PinReason::NextTransaction
            | PinReason::Cursor
            | PinReason::LongData => self.flags.remove(reason),
            // Only a reset clears these.
            PinReason::SessionVariable | PinReason::UnknownStateChange => {}
        }
    }

    /// Forgets a named lock the server says this connection does not hold.
    pub fn forget_lock(&mut self, name: &[u8]) {
        self.named_locks.remove(name);
    }

    /// Forgets the named state a transaction's end took with it (nothing named does), and
    /// the pending next-transaction characteristics.
    pub fn transaction_ended(&mut self) {
        self.flags.remove(PinReason::NextTransaction);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_state_releases_by_name() {
        let mut p = PinState::default();
        p.add(PinReason::NamedLock, Some(b"A"));
        p.add(PinReason::NamedLock, Some(b"A"));
        p.add(PinReason::NamedLock, Some(b"b"));
        p.add(PinReason::TemporaryTable, Some(b"db.t"));
        p.remove(PinReason::NamedLock, Some(b"a"));
        assert!(
            p.reasons().contains(PinReason::NamedLock),
            "lock names are case-sensitive"
        );
        p.remove(PinReason::NamedLock, Some(b"A"));
        p.remove(PinReason::NamedLock, Some(b"b"));
        assert!(p.reasons().contains(PinReason::NamedLock), "taken twice");
        p.remove(PinReason::NamedLock, Some(b"A"));
        p.remove(PinReason::TemporaryTable, Some(b"db.other"));
        assert_eq!(
            p.reasons().iter().collect::<Vec<_>>(),
            vec![PinReason::TemporaryTable]
        );
        p.remove(PinReason::TemporaryTable, Some(b"db.t"));
        p.add(PinReason::SessionVariable, None);
        p.remove(PinReason::SessionVariable, None);
        assert_eq!(
            p.reasons().iter().collect::<Vec<_>>(),
            vec![PinReason::SessionVariable],
            "only a reset clears an unreplayable variable"
        );
    }

    #[test]
    fn a_lock_without_a_readable_name_needs_release_all() {
        let mut p = PinState::default();
        p.add(PinReason::NamedLock, None);
        p.remove(PinReason::NamedLock, Some(b"x"));
        assert!(p.reasons().contains(PinReason::NamedLock));
        p.remove(PinReason::NamedLock, None);
        assert!(p.is_empty());
    }

    #[test]
    fn too_many_names_hold_until_a_reset() {
        let mut p = PinState::default();
        for i in 0..=MAX_NAMES {
            p.add(PinReason::UserVariable, Some(format!("v{i}").as_bytes()));
        }
        for i in 0..=MAX_NAMES {
            p.remove(PinReason::UserVariable, Some(format!("v{i}").as_bytes()));
        }
        assert!(p.reasons().contains(PinReason::UserVariable));
    }

    #[test]
    fn the_decision_table() {
        let none = PinSet::default();
        let mut lock = PinSet::default();
        lock.insert(PinReason::NamedLock);
        assert!(may_release(none, false));
        assert!(!may_release(none, true), "an open transaction holds");
        assert!(!may_release(lock, false), "a pin holds");
        let mut taint = ResetSet::default();
        assert!(taint.is_empty(), "a clean connection goes back as it is");
        taint.insert_pins(lock);
        taint.insert(ResetReason::StoredCode);
        assert_eq!(
            taint.iter().map(ResetReason::as_str).collect::<Vec<_>>(),
            ["named_lock", "stored_code"]
        );
        // Every reason has its own index.
        let mut seen = std::collections::HashSet::new();
        assert!(ResetReason::ALL.iter().all(|r| seen.insert(r.index())));
        assert!(
            ResetReason::ALL
                .iter()
                .enumerate()
                .all(|(i, r)| r.index() == i)
        );
    }
}
