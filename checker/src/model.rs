//! Which sessions rightly hold a backend connection: the policy Sluice promises, computed from
//! what each step does and what the server answered on a direct connection. It tells a
//! legitimate hold from a needless pin (a session Sluice keeps for no reason) and from a
//! missing one (a session whose state would be lost or reach another client).

use std::collections::{BTreeSet, HashMap};

use super::grammar::Effect;
use super::wire::Answer;

/// Error codes of statements that never ran (refused while parsed or opened): their text's
/// effects do not happen. The same list as Sluice's.
pub const DID_NOT_RUN: &[u16] = sluice::session::tracker::DID_NOT_RUN;

/// One client session's held state.
#[derive(Debug, Clone, Default)]
pub struct Holds {
    pub user_vars: BTreeSet<String>,
    pub temp_tables: BTreeSet<String>,
    pub locks: HashMap<String, u32>,
    pub table_lock: bool,
    pub prepared: BTreeSet<String>,
    pub handlers: BTreeSet<String>,
    pub xa: bool,
    pub next_transaction: bool,
    /// Held until a reset: an unreplayable variable, an unexplained state change.
    pub sticky: bool,
    pub cursors: BTreeSet<usize>,
    pub in_transaction: bool,
    /// `completion_type` (0 NO_CHAIN, 1 CHAIN, 2 RELEASE).
    pub completion_type: u8,
    /// The client's result sets end with classic EOF packets from MySQL, which never raise
    /// the state-changed flag there: rows from a stored function rightly hold the session.
    pub eof_hides_changes: bool,
}

impl Holds {
    /// Nothing held, for a client whose result sets hide state changes or not.
    pub fn new(eof_hides_changes: bool) -> Holds {
        Holds {
            eof_hides_changes,
            ..Holds::default()
        }
    }

    /// True when the session rightly keeps its connection.
    pub fn holds(&self) -> bool {
        self.in_transaction
            || !self.user_vars.is_empty()
            || !self.temp_tables.is_empty()
            || self.locks.values().any(|n| *n > 0)
            || self.table_lock
            || !self.prepared.is_empty()
            || !self.handlers.is_empty()
            || self.xa
            || self.next_transaction
            || self.sticky
            || !self.cursors.is_empty()
    }

    /// The session ended or was reset: nothing is held.
    pub fn clear(&mut self) {
        *self = Holds::new(self.eof_hides_changes);
    }

    /// Applies a step's effects, given the direct connection's answer.
    pub fn apply(&mut self, effects: &[Effect], answer: &Answer) {
        let error = answer.error();
        let ran = !(answer.packets().len() == 1 && error.is_some_and(|e| DID_NOT_RUN.contains(&e)));
        let succeeded = error.is_none();
        if let Some(status) = answer.status() {
            let was = self.in_transaction;
            self.in_transaction = status & 0x0001 != 0;
            if was && !self.in_transaction {
                self.next_transaction = false;
            }
        }
        for e in effects {
            self.effect(e, answer, ran, succeeded);
        }
        // The server ends the session (COMMIT RELEASE): nothing is held any more.
        let released = effects
            .iter()
            .any(|e| matches!(e, Effect::EndTransaction { release: true }));
        if matches!(answer, Answer::Closed(_)) || (released && succeeded) {
            self.clear();
        }
    }

    fn effect(&mut self, e: &Effect, answer: &Answer, ran: bool, succeeded: bool) {
        let call_says_one = |function: &str| {
            answer
                .column_named(function)
                .is_some_and(|c| matches!(answer.value(c), Some(Some(v)) if v == b"1"))
        };
        match e {
            // A variable set to NULL still exists (with its type): only a reset clears it.
            Effect::UserVar(name, _) if ran => {
                self.user_vars.insert(name.clone());
            }
            Effect::TempTable(name, create) => {
                if *create && ran {
                    self.temp_tables.insert(name.clone());
                } else if !create && succeeded {
                    self.temp_tables.remove(name);
                }
            }
            Effect::Lock(name, get) => {
                if *get && call_says_one("GET_LOCK(") {
                    *self.locks.entry(name.clone()).or_default() += 1;
                } else if !get
                    && call_says_one("RELEASE_LOCK(")
                    && let Some(n) = self.locks.get_mut(name)
                {
                    *n = n.saturating_sub(1);
                }
            }
            Effect::ReleaseAllLocks if succeeded => self.locks.clear(),
            Effect::TableLock(on) => {
                if *on && ran {
                    self.table_lock = true;
                } else if !on && succeeded {
                    self.table_lock = false;
                }
            }
            Effect::SqlPrepare(name, add) => {
                if *add && ran {
                    self.prepared.insert(name.clone());
                } else if !add && succeeded {
                    self.prepared.remove(name);
                }
            }
            Effect::Handler(name, open) => {
                if *open && ran {
                    self.handlers.insert(name.clone());
                } else if !open && succeeded {
                    self.handlers.remove(name);
                }
            }
            Effect::Xa(start) => {
                if *start && ran {
                    self.xa = true;
                } else if !start && succeeded {
                    self.xa = false;
                }
            }
            Effect::NextTransaction if ran => self.next_transaction = true,
            Effect::EndTransaction { .. } if succeeded => self.next_transaction = false,
            Effect::Unreplayable if ran => self.sticky = true,
            Effect::UnknownState if ran => self.sticky = true,
            Effect::StoredRows if ran && self.eof_hides_changes && answer.packets().len() > 1 => {
                self.sticky = true
            }
            Effect::Cursor(slot, open) => {
                let status = answer.status().unwrap_or(0);
                if *open && succeeded && status & 0x0040 != 0 {
                    self.cursors.insert(*slot);
                } else if !open || !succeeded || status & 0x0080 != 0 {
                    self.cursors.remove(slot);
                }
            }
            Effect::CursorFetch(slot) => {
                let status = answer.status().unwrap_or(0);
                if !succeeded || status & 0x0080 != 0 {
                    self.cursors.remove(slot);
                }
            }
            Effect::CompletionType(t) if succeeded => self.completion_type = *t,
            Effect::Several(list) => {
                for e in list {
                    self.effect(e, answer, ran, succeeded);
                }
            }
            _ => {}
        }
    }
}
