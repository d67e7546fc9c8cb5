//! Per-client session state that must follow the client from one backend connection to the
//! next: schema, tracked system variables, autocommit, the multi-statement option, and the
//! reasons a session is pinned to its backend connection.

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
    /// COM_STMT_PREPARE (server-side prepared statements).
    PreparedStatement,
    /// `XA START` and the other XA statements.
    Xa,
    /// `HANDLER ... OPEN`.
    Handler,
    /// The server reported a state change Sluice cannot attribute (a stored procedure, say).
    UnknownStateChange,
}

impl PinReason {
    /// Every reason, in a fixed order (for counters and reports).
    pub const ALL: [PinReason; 10] = [
        PinReason::UserVariable,
        PinReason::SessionVariable,
        PinReason::TemporaryTable,
        PinReason::NamedLock,
        PinReason::TableLock,
        PinReason::SqlPrepare,
        PinReason::PreparedStatement,
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
            PinReason::PreparedStatement => "prepared_statement",
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

    /// Adds every reason of `other`.
    pub fn extend(&mut self, other: PinSet) {
        self.0 |= other.0;
    }
}

/// A system variable Sluice tracks and replays instead of pinning (like ProxySQL's table of
/// tracked variables: adding one is a one-line change here).
#[derive(Debug)]
pub struct TrackedVar {
    pub name: &'static str,
    /// The variable may be NULL; the server reports NULL as an empty value.
    pub nullable: bool,
}

/// The replayable variables, in the order they are applied: `character_set_connection` before
/// `collation_connection`, since setting the former resets the latter.
pub const TRACKED_VARS: &[TrackedVar] = &[
    TrackedVar {
        name: "character_set_client",
        nullable: false,
    },
    TrackedVar {
        name: "character_set_results",
        nullable: true,
    },
    TrackedVar {
        name: "character_set_connection",
        nullable: false,
    },
    TrackedVar {
        name: "collation_connection",
        nullable: false,
    },
];

/// Variables servers report through session tracking that are not session state a client set:
/// MySQL 8 and later report `statement_id`, which changes with every statement.
pub const IGNORED_VARS: &[&str] = &["statement_id"];

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

/// Values of the tracked variables, as text, in [`TRACKED_VARS`] order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VarValues(pub Vec<String>);

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
            let want = self.0.get(i)?;
            if current.0.get(i) == Some(want) {
                continue;
            }
            if var.nullable && want.is_empty() {
                parts.push(format!("{}=NULL", var.name));
            } else {
                parts.push(format!("{}={}", var.name, quote(want)));
            }
        }
        if parts.is_empty() {
            None
        } else {
            Some(format!("SET SESSION {}", parts.join(", ")))
        }
    }
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
    pub pins: PinSet,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_sets_only_what_differs_in_table_order() {
        let base = VarValues(vec![
            "latin1".into(),
            "latin1".into(),
            "latin1".into(),
            "latin1_swedish_ci".into(),
        ]);
        let want = VarValues(vec![
            "utf8mb4".into(),
            "".into(),
            "utf8mb4".into(),
            "utf8mb4_unicode_ci".into(),
        ]);
        assert_eq!(
            want.replay_statement(&base, None).unwrap(),
            "SET SESSION character_set_client='utf8mb4', character_set_results=NULL, \
             character_set_connection='utf8mb4', collation_connection='utf8mb4_unicode_ci'"
        );
        assert_eq!(base.replay_statement(&base, None), None);
        assert_eq!(
            base.replay_statement(&base, Some(false)).unwrap(),
            "SET SESSION autocommit=0"
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
