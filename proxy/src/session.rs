//! Per-client session state that must follow the client from one backend connection to the
//! next: schema, tracked system variables, autocommit, the multi-statement option, and the
//! reasons a session is pinned to its backend connection.

use std::collections::{HashMap, HashSet};
use std::fmt;

/// Why a session keeps its backend connection between transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinReason {
    /// `SET @x = ...`, `SELECT ... INTO @x`, `@x := ...`.
    UserVariable,
    /// A system variable outside the replayable set, `SET TRANSACTION`, `SET ROLE`.
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
}

impl PinReason {
    /// Every reason, in a fixed order (for counters and reports).
    pub const ALL: [PinReason; 9] = [
        PinReason::UserVariable,
        PinReason::SessionVariable,
        PinReason::TemporaryTable,
        PinReason::NamedLock,
        PinReason::TableLock,
        PinReason::SqlPrepare,
        PinReason::Xa,
        PinReason::Handler,
        PinReason::UnknownStateChange,
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

/// How a replayed value is written in the `SET` statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarKind {
    /// A string literal (`'utf8mb4'`, `'ON'`, `'STRICT_TRANS_TABLES'`).
    Text,
    /// A string literal, or `NULL` when the server reports an empty value.
    NullableText,
    /// A bare number: servers refuse `'100'` for numeric variables (ERR 1232).
    Number,
}

/// A system variable Sluice tracks and replays instead of pinning (like ProxySQL's table of
/// tracked variables: adding one is a one-line change here).
#[derive(Debug)]
pub struct TrackedVar {
    pub name: &'static str,
    pub kind: VarKind,
}

const fn var(name: &'static str, kind: VarKind) -> TrackedVar {
    TrackedVar { name, kind }
}

/// How many leading entries of [`TRACKED_VARS`] are the connection character set variables,
/// which are re-read after they change (tracking does not report `collation_connection`
/// after `SET NAMES ... COLLATE`).
pub const CHARSET_VARS: usize = 4;

/// The replayable variables, in the order they are applied: `character_set_connection` before
/// `collation_connection`, since setting the former resets the latter. A variable a server
/// does not have (MariaDB's `max_statement_time` on MySQL, say) is left out on that server.
pub const TRACKED_VARS: &[TrackedVar] = &[
    var("character_set_client", VarKind::Text),
    var("character_set_results", VarKind::NullableText),
    var("character_set_connection", VarKind::Text),
    var("collation_connection", VarKind::Text),
    var("auto_increment_increment", VarKind::Number),
    var("auto_increment_offset", VarKind::Number),
    var("big_tables", VarKind::Text),
    var("block_encryption_mode", VarKind::Text),
    var("completion_type", VarKind::Text),
    var("default_storage_engine", VarKind::Text),
    var("default_tmp_storage_engine", VarKind::NullableText),
    var("default_week_format", VarKind::Number),
    var("div_precision_increment", VarKind::Number),
    var("foreign_key_checks", VarKind::Text),
    var("group_concat_max_len", VarKind::Number),
    var("innodb_lock_wait_timeout", VarKind::Number),
    var("interactive_timeout", VarKind::Number),
    var("join_buffer_size", VarKind::Number),
    var("lc_messages", VarKind::Text),
    var("lc_time_names", VarKind::Text),
    var("lock_wait_timeout", VarKind::Number),
    var("long_query_time", VarKind::Number),
    var("max_execution_time", VarKind::Number),
    var("max_heap_table_size", VarKind::Number),
    var("max_join_size", VarKind::Number),
    var("max_sort_length", VarKind::Number),
    var("max_statement_time", VarKind::Number),
    var("net_read_timeout", VarKind::Number),
    var("net_write_timeout", VarKind::Number),
    var("optimizer_search_depth", VarKind::Number),
    var("optimizer_switch", VarKind::Text),
    var("sort_buffer_size", VarKind::Number),
    var("sql_auto_is_null", VarKind::Text),
    var("sql_big_selects", VarKind::Text),
    var("sql_buffer_result", VarKind::Text),
    var("sql_mode", VarKind::Text),
    var("sql_notes", VarKind::Text),
    var("sql_quote_show_create", VarKind::Text),
    var("sql_safe_updates", VarKind::Text),
    var("sql_select_limit", VarKind::Number),
    var("sql_warnings", VarKind::Text),
    var("time_zone", VarKind::Text),
    var("tmp_table_size", VarKind::Number),
    // MariaDB before 11.1 and MySQL 5.7 call these tx_*; MySQL 8 and later transaction_*.
    var("transaction_isolation", VarKind::Text),
    var("transaction_read_only", VarKind::Text),
    var("tx_isolation", VarKind::Text),
    var("tx_read_only", VarKind::Text),
    var("unique_checks", VarKind::Text),
    var("wait_timeout", VarKind::Number),
];

/// Variables servers report through session tracking that are not session state a client set:
/// MySQL 8 and later report `statement_id`, which changes with every statement; MariaDB with a
/// binary log reports `last_gtid` (read-only) after every write; the database character set and
/// collation follow the current schema, which Sluice replays itself.
pub const IGNORED_VARS: &[&str] = &[
    "statement_id",
    "last_gtid",
    "character_set_database",
    "collation_database",
];

/// True for a reported variable that is no session state (see [`IGNORED_VARS`]).
pub fn is_ignored(name: &str) -> bool {
    IGNORED_VARS.iter().any(|v| v.eq_ignore_ascii_case(name))
}

/// Position of a variable in [`TRACKED_VARS`].
pub fn tracked_index(name: &str) -> Option<usize> {
    TRACKED_VARS
        .iter()
        .position(|v| v.name.eq_ignore_ascii_case(name))
}

/// Values of the tracked variables, as text, in [`TRACKED_VARS`] order; `None` for a variable
/// the server does not have.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VarValues(pub Vec<Option<String>>);

impl VarValues {
    /// The assignments that turn `current` into `self`, as one `SET` statement, or `None` if
    /// there is nothing to do. `autocommit` is added when it differs too.
    pub fn replay_statement(
        &self,
        current: &VarValues,
        autocommit: Option<bool>,
    ) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(on) = autocommit {
            parts.push(format!("autocommit={}", u8::from(on)));
        }
        for (i, var) in TRACKED_VARS.iter().enumerate() {
            let Some(Some(want)) = self.0.get(i) else {
                continue;
            };
            if matches!(current.0.get(i), Some(Some(have)) if have == want) {
                continue;
            }
            let value = match var.kind {
                VarKind::NullableText if want.is_empty() => "NULL".to_string(),
                VarKind::Number if is_number(want) => want.clone(),
                _ => quote(want),
            };
            parts.push(format!("{}={value}", var.name));
        }
        if parts.is_empty() {
            None
        } else {
            Some(format!("SET SESSION {}", parts.join(", ")))
        }
    }
}

/// A plain decimal number, safe to write unquoted.
fn is_number(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|&b| b == b'.').count() <= 1
}

/// Quotes a value reported by the server as an SQL string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Quotes an identifier (a schema name) with backticks.
pub fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// A change to what pins a session, found in a statement's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinEffect {
    /// The statement creates state of this kind, named where names matter
    /// (`@x`, a temporary table, a lock name, a text-prepared statement, a handler).
    Add(PinReason, Option<String>),
    /// The statement clears the named state (`None`: all state of this kind).
    Remove(PinReason, Option<String>),
}

/// What holds a session on its backend connection, with names, so that the statements that
/// clear the state (`DROP TEMPORARY TABLE`, `RELEASE_LOCK`, ...) release the session again.
#[derive(Debug, Clone, Default)]
pub struct PinState {
    user_vars: HashSet<String>,
    temp_tables: HashSet<String>,
    /// Named locks with their recursion count (a lock taken twice is released twice).
    named_locks: HashMap<String, u32>,
    sql_prepared: HashSet<String>,
    handlers: HashSet<String>,
    /// Reasons without names: table locks, XA, unreplayable variables, unknown state.
    flags: PinSet,
}

impl PinState {
    /// The reasons that currently hold the session.
    pub fn reasons(&self) -> PinSet {
        let mut set = self.flags;
        for (reason, empty) in [
            (PinReason::UserVariable, self.user_vars.is_empty()),
            (PinReason::TemporaryTable, self.temp_tables.is_empty()),
            (PinReason::NamedLock, self.named_locks.is_empty()),
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

    /// Records state the server reported or a statement created.
    pub fn add(&mut self, reason: PinReason, name: Option<&str>) {
        let name = name.map(str::to_ascii_lowercase).unwrap_or_default();
        match reason {
            PinReason::UserVariable => {
                self.user_vars.insert(name);
            }
            PinReason::TemporaryTable => {
                self.temp_tables.insert(name);
            }
            PinReason::NamedLock => *self.named_locks.entry(name).or_default() += 1,
            PinReason::SqlPrepare => {
                self.sql_prepared.insert(name);
            }
            PinReason::Handler => {
                self.handlers.insert(name);
            }
            PinReason::TableLock
            | PinReason::Xa
            | PinReason::SessionVariable
            | PinReason::UnknownStateChange => {
                self.flags.insert(reason);
            }
        }
    }

    /// Forgets state a statement cleared; `None` clears every item of the kind.
    pub fn remove(&mut self, reason: PinReason, name: Option<&str>) {
        let name = name.map(str::to_ascii_lowercase);
        fn drop_from(set: &mut HashSet<String>, name: Option<String>) {
            match name {
                Some(n) => {
                    set.remove(&n);
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
                    if let Some(count) = self.named_locks.get_mut(&n) {
                        *count -= 1;
                        if *count == 0 {
                            self.named_locks.remove(&n);
                        }
                    }
                }
                None => self.named_locks.clear(),
            },
            PinReason::TableLock | PinReason::Xa => self.flags.remove(reason),
            // Only a reset clears these.
            PinReason::SessionVariable | PinReason::UnknownStateChange => {}
        }
    }
}

/// The state a client session expects any backend connection it borrows to be in.
#[derive(Debug, Clone, Default)]
pub struct SessionState {
    /// Current schema; `None` until the client picks one.
    pub schema: Option<String>,
    /// Tracked variables; `None` while they are what a new connection of this pool starts with.
    pub vars: Option<VarValues>,
    /// Whether statements run with autocommit; `None` while it is what a new connection has.
    pub autocommit: Option<bool>,
    /// Whether multi-statement queries are allowed (CLIENT_MULTI_STATEMENTS / COM_SET_OPTION).
    pub multi_statements: bool,
    /// Why the session holds on to its backend connection, if it does.
    pub pins: PinState,
    /// The session's `LAST_INSERT_ID()`.
    pub last_insert_id: u64,
    /// The session's `ROW_COUNT()`: affected rows of its last statement, -1 after a result set.
    pub row_count: i64,
    /// The session's `FOUND_ROWS()`.
    pub found_rows: u64,
    /// The backend connection still shows this session's `ROW_COUNT()`: the session's last
    /// statement ran on it and nothing ran there since.
    pub counters_on_backend: bool,
    /// The backend connection still shows this session's `FOUND_ROWS()`: the session's last
    /// query with a result ran on it, and only the session's statements since.
    pub found_rows_on_backend: bool,
    /// The backend connection shows this session's `LAST_INSERT_ID()`: it was set there
    /// (by an insert or by Sluice) since the session borrowed it.
    pub insert_id_on_backend: bool,
}

impl SessionState {
    /// Sluice ran a statement of its own on the borrowed connection: the connection's
    /// `ROW_COUNT()` and `FOUND_ROWS()` are no longer the session's.
    pub fn own_statement_ran(&mut self) {
        self.counters_on_backend = false;
        self.found_rows_on_backend = false;
    }

    /// The session gave its connection back: nothing on the next one is the session's.
    pub fn connection_released(&mut self) {
        self.own_statement_ran();
        self.insert_id_on_backend = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_sets_only_what_differs_in_table_order() {
        let n = TRACKED_VARS.len();
        let mut base = VarValues(vec![None; n]);
        let mut want = VarValues(vec![None; n]);
        let i = |name| tracked_index(name).unwrap();
        for (name, a, b) in [
            ("character_set_client", "latin1", "utf8mb4"),
            ("character_set_results", "latin1", ""),
            ("character_set_connection", "latin1", "latin1"),
            ("wait_timeout", "28800", "100"),
            ("sql_mode", "STRICT_TRANS_TABLES", "ANSI_QUOTES"),
        ] {
            base.0[i(name)] = Some(a.into());
            want.0[i(name)] = Some(b.into());
        }
        assert_eq!(
            want.replay_statement(&base, None).unwrap(),
            "SET SESSION character_set_client='utf8mb4', character_set_results=NULL, \
             sql_mode='ANSI_QUOTES', wait_timeout=100"
        );
        assert_eq!(base.replay_statement(&base, None), None);
        assert_eq!(
            base.replay_statement(&base, Some(false)).unwrap(),
            "SET SESSION autocommit=0"
        );
        // A variable the server lacks is never set.
        assert_eq!(
            base.replay_statement(&VarValues(vec![None; n]), None)
                .map(|s| s.contains("tx_isolation")),
            Some(false)
        );
    }

    #[test]
    fn numbers_are_bare_only_when_they_are_numbers() {
        assert!(is_number("100") && is_number("0.000000") && is_number("-1"));
        assert!(!is_number("") && !is_number("1.2.3") && !is_number("1; DROP"));
    }

    #[test]
    fn pin_state_releases_by_name() {
        let mut p = PinState::default();
        p.add(PinReason::NamedLock, Some("A"));
        p.add(PinReason::NamedLock, Some("a"));
        p.add(PinReason::TemporaryTable, Some("db.t"));
        p.remove(PinReason::NamedLock, Some("a"));
        assert!(p.reasons().contains(PinReason::NamedLock), "taken twice");
        p.remove(PinReason::NamedLock, Some("A"));
        p.remove(PinReason::TemporaryTable, Some("db.other"));
        assert_eq!(
            p.reasons().iter().collect::<Vec<_>>(),
            vec![PinReason::TemporaryTable]
        );
        p.remove(PinReason::TemporaryTable, Some("DB.T"));
        p.add(PinReason::SessionVariable, None);
        p.remove(PinReason::SessionVariable, None);
        assert_eq!(
            p.reasons().iter().collect::<Vec<_>>(),
            vec![PinReason::SessionVariable]
        );
    }

    #[test]
    fn quoting_escapes() {
        assert_eq!(quote("a'b\\c"), "'a''b\\\\c'");
        assert_eq!(quote_ident("we`ird"), "`we``ird`");
    }

    #[test]
    fn pin_sets() {
        let mut p = PinSet::default();
        assert!(p.insert(PinReason::NamedLock));
        assert!(!p.insert(PinReason::NamedLock));
        assert!(p.contains(PinReason::NamedLock) && !p.contains(PinReason::Xa));
        assert_eq!(p.iter().collect::<Vec<_>>(), vec![PinReason::NamedLock]);
    }
}
