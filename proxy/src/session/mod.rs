//! Per-client session state that must follow the client from one backend connection to the
//! next: schema, tracked system variables, autocommit, the multi-statement option, the session
//! counters and diagnostics area, and what holds the session on its connection.
//!
//! - [`vars`]: the replayable system variables;
//! - [`holds`]: the hold-and-reset policy (pin reasons, reset reasons, the decisions);
//! - [`tracker`]: the pure reducer from (classification, response) to state changes.

pub mod holds;
pub mod tracker;
pub mod vars;

use std::sync::Arc;

pub use holds::{PinReason, PinSet, PinState, ResetReason, ResetSet, may_release};
pub use vars::{
    CHARSET_VARS, IGNORED_VARS, TRACKED_VARS, TrackedVar, VarKind, VarValues, is_ignored, quote,
    quote_ident, tracked_index,
};

/// `SHOW WARNINGS` as the server answered it right after one of the session's statements: the
/// response's column definitions and rows (payloads, without frame headers), so the session's
/// diagnostics outlive its hold on the connection they were produced on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedWarnings {
    /// The column-count packet and the column definitions.
    pub head: Vec<Vec<u8>>,
    /// One text row per condition: Level, Code, Message.
    pub rows: Vec<Vec<u8>>,
    /// The session's `character_set_results` when captured (`None`: the pool's), which the
    /// column definitions depend on.
    pub results_charset: Option<String>,
}

/// Where the session's diagnostics area (the conditions of its last statement) is.
#[derive(Debug, Clone, Default)]
pub struct DiagnosticsArea {
    /// On the backend connection the session holds: the server answers for it.
    pub on_backend: bool,
    /// `@@warning_count`: every condition of the last statement.
    pub warning_count: u64,
    /// `@@error_count`.
    pub error_count: u64,
    /// The conditions the session's last statement raised itself (a diagnostics statement
    /// raises none, and leaves the area as it was): what MySQL's OK to COM_PING and
    /// COM_INIT_DB counts.
    pub raised: u64,
    /// The conditions, captured before the connection went back.
    pub captured: Option<Arc<CapturedWarnings>>,
    /// An error Sluice answered itself in the server's name (an unknown statement id): put on
    /// the connection (`SIGNAL`) before a statement that reads the diagnostics area.
    pub local_error: Option<crate::errors::ClientError>,
}

impl DiagnosticsArea {
    /// True when the last statement left no condition.
    pub fn is_empty(&self) -> bool {
        self.warning_count == 0 && self.error_count == 0
    }

    /// A statement of the session ran on its connection and left `warnings` conditions
    /// (`error`: one of them an error).
    pub fn statement_ran(&mut self, warnings: u16, error: bool) {
        self.on_backend = true;
        self.warning_count = u64::from(warnings) + u64::from(error);
        self.error_count = u64::from(error);
        self.raised = self.warning_count;
        self.captured = None;
        self.local_error = None;
    }

    /// Sluice answered the statement itself with `err`, as the server would have.
    pub fn local_error(&mut self, err: &crate::errors::ClientError) {
        *self = DiagnosticsArea {
            on_backend: false,
            warning_count: 1,
            error_count: 1,
            raised: 1,
            captured: None,
            local_error: Some(err.clone()),
        };
    }

    /// Sluice answered the statement itself without a condition.
    pub fn clear(&mut self) {
        *self = DiagnosticsArea::default();
    }
}

/// The state a client session expects any backend connection it borrows to be in.
#[derive(Debug, Clone, Default)]
pub struct SessionState {
    /// Current schema; `None` until the client picks one.
    pub schema: Option<String>,
    /// Tracked variables; `None` while they are what a new connection of this pool starts with.
    pub vars: Option<VarValues>,
    /// MySQL: the session set `character_set_results` itself, after which result columns
    /// carry that character set's default collation rather than the connection's; only a
    /// `SET` of the variable (whatever its value) gives another connection the same.
    pub results_collation_set: bool,
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
    /// The conditions of the session's last statement.
    pub diagnostics: DiagnosticsArea,
}

impl SessionState {
    /// Sluice answered the client itself, as the server would have: `ROW_COUNT()` is then
    /// what that answer sets (0 after an OK, -1 after an error or a result set).
    pub fn answered_locally(&mut self, row_count: i64) {
        self.row_count = row_count;
        self.counters_on_backend = false;
    }

    /// Sluice ran a statement of its own on the borrowed connection: the connection's
    /// `ROW_COUNT()`, `FOUND_ROWS()` and diagnostics area are no longer the session's.
    pub fn own_statement_ran(&mut self) {
        self.counters_on_backend = false;
        self.found_rows_on_backend = false;
        self.diagnostics.on_backend = false;
    }

    /// The session gave its connection back: nothing on the next one is the session's.
    pub fn connection_released(&mut self) {
        self.own_statement_ran();
        self.insert_id_on_backend = false;
    }
}
