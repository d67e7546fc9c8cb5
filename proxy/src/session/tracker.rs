//! The tracking reducer: from what Sluice read in a query's text (its classification) and what
//! the server answered (one result per statement, each with its own session-tracking data) to
//! the changes the session must make. Pure: no sockets, no clocks; the frontend applies the
//! [`Reduction`] and does the I/O it asks for (read-backs).
//!
//! The server's reports are facts and are applied as they come. What the text says adds
//! holds; what it says clears state counts only for statements that succeeded. A state change
//! the server reports and the text does not explain holds the session until a reset.

use super::holds::{ResetReason, ResetSet};
use crate::protocol::StatusFlags;
use crate::protocol::response::{ResultSummary, Summary, TrackedChange};
use crate::sql::{Classification, Effect, FoundRows, Scope, Statement};

/// Error codes of statements the server refused before running them (while parsing them or
/// opening what they name): nothing their text says happened.
pub const DID_NOT_RUN: &[u16] = &[
    1044, // access denied to a database
    1046, // no database selected
    1049, // unknown database
    1051, // unknown table (DROP)
    1054, // unknown column
    1064, // syntax
    1100, // table not locked
    1109, // unknown table
    1142, // table access denied
    1143, // column access denied
    1146, // no such table
    1149, // syntax
    1243, // unknown prepared statement
    1305, // no such procedure or function
    1792, // read-only transaction
];

/// What a query's response changes in the session.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reduction {
    /// Held state to record (always) and to forget (statements that succeeded), in order.
    pub effects: Vec<Effect>,
    /// System variables the server reported, in order (name lower case, value).
    pub vars: Vec<(String, String)>,
    /// The schema the server reported last (`Some(None)`: none selected).
    pub schema: Option<Option<String>>,
    /// A variable outside the replayable set changed (the statement's text says so).
    pub unreplayable: Option<String>,
    /// Variables outside the replayable set the server reported (name lower case, value):
    /// changed, unless a report is MariaDB's late echo of a value `SET STATEMENT` restored
    /// (the frontend knows those values).
    pub reported_unreplayable: Vec<(String, String)>,
    /// Variables outside the replayable set that a `SET STATEMENT` set for its statement only:
    /// MariaDB reports their restored values again with the next report it sends, however
    /// much later.
    pub set_for_statement: Vec<String>,
    /// A state change nobody explains: hold until a reset.
    pub unknown_state_change: bool,
    /// Read the replayable variables back from the server: they may have changed without a
    /// report (MariaDB's `SET @@var`, a procedure, `SET STATEMENT`).
    pub readback_vars: bool,
    /// The session's `LAST_INSERT_ID()` changed to a value the response does not carry.
    pub insert_id_unknown: bool,
    /// The last non-zero insert id the response carried.
    pub insert_id: Option<u64>,
    /// `ROW_COUNT()` after the query.
    pub row_count: Option<i64>,
    /// `FOUND_ROWS()` after the query, when the response says (`Some(None)`: only the server
    /// knows, as after `SQL_CALC_FOUND_ROWS`).
    pub found_rows: Option<Option<u64>>,
    /// The connection must be reset before anyone else uses it, for these reasons (pins
    /// are added by the frontend when it applies the effects).
    pub taint: ResetSet,
    /// A `COMMIT` or `ROLLBACK` ended the transaction (its pending characteristics go).
    pub transaction_ended: bool,
    /// The server closes the connection after this (`COMMIT RELEASE`, `completion_type`).
    pub release: bool,
    /// The diagnostics area after the query: replaced by these conditions (warning count,
    /// whether one is an error), or `None` when it is left as it was.
    pub diagnostics: Option<(u16, bool)>,
    /// MariaDB may or may not have cleared the diagnostics area (stored code that raised no
    /// condition clears it only if it opened a table): ask the server.
    pub diagnostics_unknown: bool,
    /// A diagnostics statement ran: it raised no condition of its own.
    pub diagnostics_read: bool,
    /// MySQL: the query set `character_set_results`, so result columns now carry that
    /// character set's default collation (see [`crate::session::SessionState::results_collation_set`]).
    pub results_collation_set: bool,
}

/// What the reducer needs to know about the session beyond the response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// The session's `completion_type`, for `COMMIT`/`ROLLBACK` without `RELEASE`/`CHAIN`.
    pub completion_type: CompletionType,
    /// MySQL clears the diagnostics area at every statement that is not itself a diagnostics
    /// statement; MariaDB only at statements that open tables or raise a condition.
    pub clears_diagnostics_always: bool,
    /// The result sets end with classic EOF packets from a server that never raises the
    /// state-changed flag in them (MySQL; MariaDB does): stored code that returned rows may
    /// have changed the session unseen.
    pub eof_hides_changes: bool,
    /// `SET character_set_results = x` gives result columns x's default collation, which no
    /// variable shows and a replay cannot restore (MySQL).
    pub results_collation_unseen: bool,
}

/// The session's `completion_type`, as the server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompletionType {
    #[default]
    NoChain,
    Chain,
    Release,
}

impl CompletionType {
    /// From the variable's value (`NO_CHAIN`, `CHAIN`, `RELEASE`, or 0, 1, 2).
    pub fn from_value(v: &str) -> Self {
        match v.to_ascii_uppercase().as_str() {
            "CHAIN" | "1" => CompletionType::Chain,
            "RELEASE" | "2" => CompletionType::Release,
            _ => CompletionType::NoChain,
        }
    }
}

/// Reduces a COM_QUERY's response. `completion_type` is the session's, for `COMMIT` and
/// `ROLLBACK` without `RELEASE`/`CHAIN` words.
pub fn reduce_query(class: &Classification, summary: &Summary, ctx: Context) -> Reduction {
    let mut out = Reduction::default();
    if !class.certain {
        out.taint.insert(ResetReason::Unclassified);
        out.readback_vars = true;
    }
    if class.hidden_danger {
        out.taint.insert(ResetReason::Unclassified);
    }
    let results = &summary.results;
    // One result per statement that ran; a statement that failed stops the rest. Any other
    // shape (a CALL's extra result sets, a compound statement) cannot be attributed.
    let one_to_one = !summary.results_overflow
        && !class.any(|s| s.stored_code)
        && (results.len() == class.statements.len()
            || (results.len() < class.statements.len()
                && results.last().is_some_and(|r| r.error.is_some())));
    if one_to_one {
        for (st, r) in class.statements.iter().zip(results) {
            reduce_statement(Some(st), r, summary, ctx, &mut out);
            found_rows_after(Some(st), r, &mut out);
        }
    } else if let [only] = results.as_slice()
        && only.error.is_some_and(|e| DID_NOT_RUN.contains(&e))
    {
        // Refused before anything ran.
        out.diagnostics = Some((only.warnings, true));
    } else {
        // Attribute nothing: every statement's additions count, nothing it clears does, and
        // any state change the server reports holds the session.
        for st in &class.statements {
            for e in &st.effects {
                if matches!(e, Effect::Add(..)) {
                    out.effects.push(e.clone());
                }
            }
            note_statement(st, ctx, &mut out);
        }
        for r in results {
            apply_reports(r, summary, &mut out);
            if state_changed(r, summary) || hidden_change(r, ctx) {
                out.unknown_state_change = true;
            }
            if r.warnings > 0 || r.error.is_some() {
                out.diagnostics = Some((r.warnings, r.error.is_some()));
                out.diagnostics_unknown = false;
            } else if !ctx.clears_diagnostics_always && class.any(|s| s.diagnostics_depend_on_run())
            {
                out.diagnostics_unknown = true;
            } else if ctx.clears_diagnostics_always || class.any(|s| s.uses_tables) {
                out.diagnostics = Some((0, false));
            }
        }
        out.taint.insert(ResetReason::Unclassified);
        out.readback_vars = true;
        out.insert_id_unknown = true;
    }
    if let Some(last) = results.last() {
        // The statement that produced the last result: one per result when they pair up,
        // else the query's last statement (a CALL's results all belong to it).
        let st = if one_to_one {
            class.statements.get(results.len() - 1)
        } else {
            class.statements.last()
        };
        counters(last, st, &mut out);
    }
    if !one_to_one && class.any(|s| s.found_rows != FoundRows::Keeps) {
        out.found_rows = Some(None);
    }
    out
}

/// Reduces the response to a command other than COM_QUERY (COM_STMT_EXECUTE with the
/// statement's classification, COM_INIT_DB, ...).
pub fn reduce_command(st: Option<&Statement>, summary: &Summary, ctx: Context) -> Reduction {
    let mut out = Reduction::default();
    let shape_known = summary.results.len() == 1 && !st.is_some_and(|s| s.stored_code);
    match summary.results.first() {
        Some(r) if shape_known => {
            reduce_statement(st, r, summary, ctx, &mut out);
            counters(r, st, &mut out);
            found_rows_after(st, r, &mut out);
        }
        _ => {
            if let Some(st) = st {
                for e in &st.effects {
                    if matches!(e, Effect::Add(..)) {
                        out.effects.push(e.clone());
                    }
                }
                note_statement(st, ctx, &mut out);
            }
            for r in &summary.results {
                apply_reports(r, summary, &mut out);
                if (state_changed(r, summary) || hidden_change(r, ctx))
                    && st.is_some_and(|s| s.stored_code)
                {
                    out.unknown_state_change = true;
                }
                if r.warnings > 0 || r.error.is_some() {
                    out.diagnostics = Some((r.warnings, r.error.is_some()));
                    out.diagnostics_unknown = false;
                } else if !ctx.clears_diagnostics_always && st.is_some_and(|s| s.stored_code) {
                    out.diagnostics_unknown = true;
                } else if ctx.clears_diagnostics_always || st.is_some_and(|s| s.uses_tables) {
                    out.diagnostics = Some((0, false));
                }
            }
            if let Some(last) = summary.results.last() {
                counters(last, st, &mut out);
            }
            if st.is_some_and(|s| s.stored_code) {
                out.taint.insert(ResetReason::StoredCode);
                out.readback_vars = true;
                out.insert_id_unknown = true;
            }
        }
    }
    out
}

/// What one statement's text says, whatever its result: stored code and variable forms that
/// session tracking does not report.
fn note_statement(st: &Statement, ctx: Context, out: &mut Reduction) {
    if ctx.results_collation_unseen && st.sysvars.iter().any(|v| v.name == "character_set_results")
    {
        // MySQL: result columns now carry the default collation of the new character set,
        // which no variable shows (even when the value did not change): the next session
        // must not inherit it, and the session's other connections need the SET too.
        out.taint.insert(ResetReason::StateUnknown);
        if !st.set_statement {
            out.results_collation_set = true;
        }
    }
    if st.stored_code {
        out.taint.insert(ResetReason::StoredCode);
        out.readback_vars = true;
        out.insert_id_unknown = true;
    }
    if st.set_statement {
        out.readback_vars = true;
    }
    if st.sets_insert_id {
        out.insert_id_unknown = true;
    }
    for v in st.sysvars.iter().filter(|v| v.scope == Scope::Scopeless) {
        if super::vars::tracked_index(&v.name).is_some() {
            out.readback_vars = true;
        } else if v.name != "autocommit" && !super::vars::is_ignored(&v.name) {
            out.unreplayable = Some(v.name.clone());
        }
    }
}

fn reduce_statement(
    st: Option<&Statement>,
    r: &ResultSummary,
    summary: &Summary,
    ctx: Context,
    out: &mut Reduction,
) {
    let completion_type = ctx.completion_type;
    let succeeded = r.error.is_none();
    let ran = !r.error.is_some_and(|e| DID_NOT_RUN.contains(&e));
    if let Some(st) = st {
        for e in &st.effects {
            match e {
                Effect::Add(..) if ran => out.effects.push(e.clone()),
                Effect::Add(..) => {}
                Effect::Remove(..) if succeeded => out.effects.push(e.clone()),
                Effect::Remove(..) => {}
            }
        }
        if ran {
            note_statement(st, ctx, out);
        }
        if let (Some(c), true) = (st.completion, succeeded) {
            out.transaction_ended = true;
            out.release = match c.release {
                Some(r) => r,
                None => completion_type == CompletionType::Release && c.chain != Some(true),
            };
        }
    }
    // SET STATEMENT's reported values are the temporary ones: read the real ones back.
    let temporary = st.is_some_and(|s| s.set_statement);
    if let Some(st) = st.filter(|_| temporary) {
        // The names come from the report where there is one (a classic EOF carries none) and
        // from the text; the frontend reads their values, so a wrong name costs a read only.
        let reported = summary
            .changes
            .get(r.changes.clone())
            .unwrap_or_default()
            .iter()
            .filter_map(|c| match c {
                TrackedChange::SystemVariable { name, .. } => Some(name.to_ascii_lowercase()),
                _ => None,
            });
        for name in reported.chain(st.set_statement_vars.iter().cloned()) {
            if name != "autocommit"
                && !super::vars::is_ignored(&name)
                && super::vars::tracked_index(&name).is_none()
                && !out.set_for_statement.contains(&name)
            {
                out.set_for_statement.push(name);
            }
        }
    } else {
        apply_reports(r, summary, out);
    }
    if state_changed(r, summary) {
        let explained = st.is_some_and(|s| s.explains_state_change() && !s.stored_code)
            || (!r.untold && reports_something(r, summary));
        if !explained {
            out.unknown_state_change = true;
        }
    }
    // The diagnostics area: a condition replaces it; a diagnostics statement leaves it; other
    // statements clear it (on MariaDB only those that open tables).
    if st.is_none() && r.error.is_none() {
        // A command that is no statement (COM_INIT_DB, COM_PING) keeps the diagnostics area
        // on both servers; MySQL's OK counts the conditions the last statement raised.
    } else if r.warnings > 0 || r.error.is_some() {
        out.diagnostics = Some((r.warnings, r.error.is_some()));
        out.diagnostics_unknown = false;
        out.diagnostics_read = false;
    } else if st.is_some_and(|s| s.reads_diagnostics) {
        out.diagnostics_read = true;
    } else if ctx.clears_diagnostics_always {
        out.diagnostics_read = false;
        out.diagnostics = Some((0, false));
        out.diagnostics_unknown = false;
    } else if st.is_some_and(|s| s.diagnostics_depend_on_run()) {
        // Whether code Sluice cannot see opened a table, or a lock wait timed out, only the
        // server knows.
        out.diagnostics_unknown = true;
    } else if st.is_some_and(|s| s.uses_tables) {
        out.diagnostics = Some((0, false));
        out.diagnostics_unknown = false;
    }
    // Commands that are no statement (COM_INIT_DB, COM_PING) leave MariaDB's area as it was.
}

/// The server said the session state changed in a way its reports do not spell out: the
/// flag came with the state-change tracker's entry, with nothing readable, or on a classic
/// EOF. MySQL raises the flag for every statement only to report `statement_id`; a flag that
/// comes with variable and schema reports alone says no more than those reports (the
/// state-change tracker adds its entry whenever anything untracked changes).
fn state_changed(r: &ResultSummary, summary: &Summary) -> bool {
    if r.untold {
        return true;
    }
    if !r
        .status
        .is_some_and(|s| s.contains(StatusFlags::SERVER_SESSION_STATE_CHANGED))
    {
        return false;
    }
    let changes = summary.changes.get(r.changes.clone()).unwrap_or_default();
    changes.is_empty()
        || changes
            .iter()
            .any(|c| matches!(c, TrackedChange::StateChanged))
}

/// A result set that ran stored code may have changed the session where the server cannot
/// say so (see [`Context::eof_hides_changes`]).
fn hidden_change(r: &ResultSummary, ctx: Context) -> bool {
    ctx.eof_hides_changes && r.rows.is_some()
}

/// The result carries a variable or schema change that is session state (which is what a
/// bare "state changed" accompanies when nothing else changed); MySQL's `statement_id` is not.
fn reports_something(r: &ResultSummary, summary: &Summary) -> bool {
    summary.changes.get(r.changes.clone()).is_some_and(|c| {
        c.iter().any(|c| match c {
            TrackedChange::StateChanged => false,
            TrackedChange::Schema(_) => true,
            TrackedChange::SystemVariable { name, .. } => !super::vars::is_ignored(name),
        })
    })
}

/// Applies the variable and schema changes the server reported in `r`.
fn apply_reports(r: &ResultSummary, summary: &Summary, out: &mut Reduction) {
    for change in summary.changes.get(r.changes.clone()).unwrap_or_default() {
        match change {
            TrackedChange::Schema(s) => out.schema = Some((!s.is_empty()).then(|| s.clone())),
            TrackedChange::SystemVariable { name, value } => {
                let name = name.to_ascii_lowercase();
                if name == "autocommit" || super::vars::is_ignored(&name) {
                    continue;
                }
                if super::vars::tracked_index(&name).is_some() {
                    out.vars.push((name, value.clone()));
                } else {
                    out.reported_unreplayable.push((name, value.clone()));
                }
            }
            TrackedChange::StateChanged => {}
        }
    }
    if r.insert_id != 0 {
        out.insert_id = Some(r.insert_id);
    }
}

/// `ROW_COUNT()` and `FOUND_ROWS()` after the last result. `SHOW WARNINGS` and `SHOW ERRORS`
/// leave `FOUND_ROWS()` as it was.
fn counters(last: &ResultSummary, st: Option<&Statement>, out: &mut Reduction) {
    if st.is_some_and(|s| matches!(s.diagnostics, Some(crate::sql::Diagnostics::Show { .. }))) {
        // A result set, so ROW_COUNT() is -1; FOUND_ROWS() stays.
        out.row_count = Some(-1);
        return;
    }
    out.row_count = Some(match (last.error, last.rows) {
        (None, None) => i64::try_from(last.affected).unwrap_or(i64::MAX),
        _ => -1,
    });
}

/// `FOUND_ROWS()` after a statement's result: a SELECT's rows; what only the server knows
/// (after `SQL_CALC_FOUND_ROWS`, `SELECT ... INTO`, and statements whose effect Sluice does
/// not know, for which it put the session's value on the connection first); or unchanged.
fn found_rows_after(st: Option<&Statement>, r: &ResultSummary, out: &mut Reduction) {
    let ran = !r.error.is_some_and(|e| DID_NOT_RUN.contains(&e));
    match st.map(|s| s.found_rows) {
        Some(FoundRows::Sets) if r.error.is_none() => {
            let counted = !r.cursor && !st.is_some_and(|s| s.calc_found_rows);
            out.found_rows = Some(r.rows.filter(|_| counted));
        }
        Some(FoundRows::Unknown) if ran => out.found_rows = Some(None),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::PinReason;
    use crate::sql::{LexMode, classify};

    fn class(sql: &str) -> Classification {
        classify(sql.as_bytes(), LexMode::mariadb(101106), true)
    }

    fn ok(status: u16, changes: std::ops::Range<usize>) -> ResultSummary {
        ResultSummary {
            status: Some(StatusFlags::from_bits_truncate(status)),
            changes,
            ..ResultSummary::default()
        }
    }

    fn err() -> ResultSummary {
        ResultSummary {
            error: Some(1064),
            ..ResultSummary::default()
        }
    }

    const CHANGED: u16 = 0x4002;
    const MARIA: Context = Context {
        completion_type: CompletionType::NoChain,
        clears_diagnostics_always: false,
        eof_hides_changes: false,
        results_collation_unseen: false,
    };

    fn ct(completion_type: CompletionType) -> Context {
        Context {
            completion_type,
            ..MARIA
        }
    }
    const PLAIN: u16 = 0x0002;

    fn summary(results: Vec<ResultSummary>, changes: Vec<TrackedChange>) -> Summary {
        Summary {
            results,
            changes,
            ..Summary::default()
        }
    }

    #[test]
    fn each_statement_of_a_batch_answers_for_its_own_state_change() {
        // The PREPARE explains its own change; the EXECUTE's (a temporary table made by the
        // prepared statement) is nobody's: hold until a reset.
        let c = class("PREPARE s FROM 'CREATE TEMPORARY TABLE t (a INT)'; EXECUTE s");
        let s = summary(
            vec![ok(CHANGED | 0x8, 0..1), ok(CHANGED, 1..2)],
            vec![TrackedChange::StateChanged, TrackedChange::StateChanged],
        );
        let r = reduce_query(&c, &s, MARIA);
        assert!(r.unknown_state_change);
        assert!(r.taint.iter().any(|t| t == ResetReason::StoredCode));

        // A SET of a user variable explains its own change; nothing else happened.
        let c = class("SET @a = 1; SELECT 1");
        let s = summary(
            vec![
                ok(CHANGED | 0x8, 0..1),
                ResultSummary {
                    rows: Some(1),
                    status: Some(StatusFlags::from_bits_truncate(PLAIN)),
                    ..Default::default()
                },
            ],
            vec![TrackedChange::StateChanged],
        );
        let r = reduce_query(&c, &s, MARIA);
        assert!(!r.unknown_state_change);
        assert_eq!(r.row_count, Some(-1));
        assert_eq!(r.found_rows, Some(Some(1)));
        assert!(r.taint.is_empty());
    }

    #[test]
    fn an_unexplained_change_holds() {
        let c = class("SELECT 1");
        let s = summary(vec![ok(CHANGED, 0..1)], vec![TrackedChange::StateChanged]);
        assert!(reduce_query(&c, &s, MARIA).unknown_state_change);
        // Reported variables explain the bare change that comes with them.
        let c = class("SET time_zone = '+01:00'");
        let s = summary(
            vec![ok(CHANGED, 0..2)],
            vec![
                TrackedChange::SystemVariable {
                    name: "time_zone".into(),
                    value: "+01:00".into(),
                },
                TrackedChange::StateChanged,
            ],
        );
        let r = reduce_query(&c, &s, MARIA);
        assert!(!r.unknown_state_change);
        assert_eq!(r.vars, vec![("time_zone".into(), "+01:00".into())]);
    }

    #[test]
    fn mysqls_statement_id_report_is_no_change_and_explains_none() {
        let statement_id = || TrackedChange::SystemVariable {
            name: "statement_id".into(),
            value: "9".into(),
        };
        // MySQL raises the flag for every statement to report statement_id.
        for sql in ["SELECT 1", "CALL p_select()"] {
            let s = summary(vec![ok(CHANGED, 0..1)], vec![statement_id()]);
            let r = reduce_query(&class(sql), &s, MARIA);
            assert!(!r.unknown_state_change, "{sql}");
            assert!(r.vars.is_empty() && r.reported_unreplayable.is_empty());
        }
        // With the state-change tracker's entry beside it, something untracked changed (a
        // stored function set a user variable): statement_id does not explain that.
        let s = summary(
            vec![ok(CHANGED, 0..2)],
            vec![statement_id(), TrackedChange::StateChanged],
        );
        assert!(reduce_query(&class("SELECT f()"), &s, MARIA).unknown_state_change);
        // A flag with nothing readable beside it is a change nobody can name.
        let s = summary(vec![ok(CHANGED, 0..0)], vec![]);
        assert!(reduce_query(&class("SELECT 1"), &s, MARIA).unknown_state_change);
        // MySQL's classic EOF never carries the flag: rows from stored code hold the session.
        let rows = || ResultSummary {
            rows: Some(1),
            status: Some(StatusFlags::from_bits_truncate(PLAIN)),
            ..Default::default()
        };
        let classic_mysql = Context {
            eof_hides_changes: true,
            ..MARIA
        };
        let s = summary(vec![rows()], vec![]);
        assert!(reduce_query(&class("SELECT f_setvar()"), &s, classic_mysql).unknown_state_change);
        assert!(!reduce_query(&class("SELECT f_setvar()"), &s, MARIA).unknown_state_change);
        assert!(!reduce_query(&class("SELECT 1"), &s, classic_mysql).unknown_state_change);
        // MySQL: a character_set_results of its own gives result columns a collation no
        // variable shows; the connection is reset before anyone else has it.
        let mysql = Context {
            clears_diagnostics_always: true,
            results_collation_unseen: true,
            ..MARIA
        };
        let s = summary(vec![ok(PLAIN, 0..0)], vec![]);
        let set = class("SET @@session.character_set_results = 'utf8mb4'");
        assert!(
            reduce_query(&set, &s, mysql)
                .taint
                .iter()
                .any(|t| t == ResetReason::StateUnknown)
        );
        assert!(reduce_query(&set, &s, MARIA).taint.is_empty());
    }

    #[test]
    fn clearing_counts_only_when_the_statement_succeeded() {
        let c = class("DO RELEASE_LOCK('a')");
        let r = reduce_query(&c, &summary(vec![err()], vec![]), MARIA);
        assert!(r.effects.is_empty());
        let r = reduce_query(&c, &summary(vec![ok(PLAIN, 0..0)], vec![]), MARIA);
        assert_eq!(r.effects.len(), 1);
        // A failed statement stops the batch: the statements after it did not run.
        let c = class("DO GET_LOCK('a', 0); SELECT x FROM nowhere; DO RELEASE_LOCK('a')");
        let r = reduce_query(&c, &summary(vec![ok(PLAIN, 0..0), err()], vec![]), MARIA);
        assert_eq!(
            r.effects,
            vec![Effect::Add(PinReason::NamedLock, Some(b"a".to_vec()))]
        );
        assert_eq!(r.diagnostics, Some((0, true)));
    }

    #[test]
    fn forms_tracking_misses_are_read_back() {
        for sql in [
            "SET @@time_zone = '+01:00'",
            "/*!40101 SET @@character_set_results = binary */",
            "SET STATEMENT time_zone = '+02:00' FOR SELECT 1",
            "CALL p()",
        ] {
            let s = summary(vec![ok(PLAIN, 0..0)], vec![]);
            assert!(reduce_query(&class(sql), &s, MARIA).readback_vars, "{sql}");
        }
        // SET STATEMENT's reported values are not the session's.
        let c = class("SET STATEMENT time_zone = '+02:00' FOR SELECT 1");
        let s = summary(
            vec![ResultSummary {
                rows: Some(1),
                status: Some(StatusFlags::from_bits_truncate(CHANGED)),
                changes: 0..1,
                ..Default::default()
            }],
            vec![TrackedChange::SystemVariable {
                name: "time_zone".into(),
                value: "+02:00".into(),
            }],
        );
        assert!(reduce_query(&c, &s, MARIA).vars.is_empty());
        // An unreplayable variable set without a scope is not reported either.
        let r = reduce_query(
            &class("SET @@histogram_size = 10"),
            &summary(vec![ok(PLAIN, 0..0)], vec![]),
            MARIA,
        );
        assert_eq!(r.unreplayable.as_deref(), Some("histogram_size"));
    }

    #[test]
    fn completions_release_by_word_or_completion_type() {
        let s = summary(vec![ok(PLAIN, 0..0)], vec![]);
        let r = |sql: &str, c| reduce_query(&class(sql), &s, ct(c));
        assert!(r("COMMIT RELEASE", CompletionType::NoChain).release);
        assert!(!r("COMMIT", CompletionType::NoChain).release);
        assert!(r("COMMIT", CompletionType::Release).release);
        assert!(!r("COMMIT NO RELEASE", CompletionType::Release).release);
        assert!(!r("ROLLBACK AND CHAIN", CompletionType::Release).release);
        assert!(r("ROLLBACK", CompletionType::NoChain).transaction_ended);
        assert!(!r("ROLLBACK TO SAVEPOINT a", CompletionType::NoChain).transaction_ended);
        let failed = summary(vec![err()], vec![]);
        assert!(!reduce_query(&class("COMMIT RELEASE"), &failed, MARIA).release);
    }

    #[test]
    fn uncertain_text_taints_and_reads_back() {
        let c = classify(b"SELECT 1", LexMode::mariadb(101106), false);
        let r = reduce_query(&c, &summary(vec![ok(PLAIN, 0..0)], vec![]), MARIA);
        assert!(r.taint.iter().any(|t| t == ResetReason::Unclassified));
        assert!(r.readback_vars);
    }

    #[test]
    fn the_diagnostics_area_follows_each_servers_rules() {
        let clean = summary(vec![ok(PLAIN, 0..0)], vec![]);
        // MariaDB keeps warnings across statements that use no table.
        assert_eq!(
            reduce_query(&class("DO 1"), &clean, MARIA).diagnostics,
            None
        );
        assert_eq!(
            reduce_query(&class("SELECT a FROM t"), &clean, MARIA).diagnostics,
            Some((0, false))
        );
        let mysql = Context {
            clears_diagnostics_always: true,
            results_collation_unseen: true,
            ..MARIA
        };
        assert_eq!(
            reduce_query(&class("DO 1"), &clean, mysql).diagnostics,
            Some((0, false))
        );
        assert_eq!(
            reduce_query(&class("SHOW WARNINGS"), &clean, mysql).diagnostics,
            None
        );
        let warned = summary(
            vec![ResultSummary {
                warnings: 2,
                status: Some(StatusFlags::from_bits_truncate(PLAIN)),
                ..Default::default()
            }],
            vec![],
        );
        assert_eq!(
            reduce_query(&class("DO 1/0"), &warned, MARIA).diagnostics,
            Some((2, false))
        );
    }

    #[test]
    fn counters_follow_the_last_result() {
        let c = class("INSERT INTO t VALUES (1)");
        let s = summary(
            vec![ResultSummary {
                affected: 3,
                insert_id: 9,
                status: Some(StatusFlags::from_bits_truncate(PLAIN)),
                ..Default::default()
            }],
            vec![],
        );
        let r = reduce_query(&c, &s, MARIA);
        assert_eq!(
            (r.row_count, r.insert_id, r.found_rows),
            (Some(3), Some(9), None)
        );
        let r = reduce_query(
            &class("SELECT 1 INTO @x"),
            &summary(vec![ok(CHANGED, 0..0)], vec![]),
            MARIA,
        );
        assert_eq!(r.found_rows, Some(None), "only the server knows");
        assert!(reduce_query(&class("SELECT LAST_INSERT_ID(7)"), &s, MARIA).insert_id_unknown);
    }
}
