//! What each statement of a COM_QUERY does to session state that the server's session tracking
//! does not report, or reports in a way Sluice must not trust alone: named and table locks,
//! `HANDLER`, XA, `SET TRANSACTION`, scopeless `SET @@var` (MariaDB does not track it),
//! `SET STATEMENT ... FOR` (tracking reports its temporary values), stored code, and the
//! statements that clear held state. Also what Sluice must act on before a statement runs:
//! `KILL`, the session counters, diagnostics statements, and how a `COMMIT`/`ROLLBACK` ends.
//!
//! The classification only ever *adds* reasons to hold or reset a connection; a statement it
//! reads as clearing state releases the connection through a reset, so a wrong reading costs
//! the session its own state at worst, never another session's isolation.

use super::builtins::is_builtin;
use super::counters::{Counter, CounterCall};
use super::kill::{Kill, classify_kill};
use super::lexer::{Charset, Kind, LexMode, Lexer, Token, mode_sensitive, unescape};
use crate::session::PinReason;

/// Names of held state: user variables, lock names, temporary tables, text-prepared
/// statements, handlers. `None` in an effect means "every one of this kind" (or, for an add,
/// one whose name Sluice cannot know).
pub type Name = Vec<u8>;

/// A change to what holds a session's connection, read from statement text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The statement creates state of this kind.
    Add(PinReason, Option<Name>),
    /// The statement clears this state (`None`: all of this kind).
    Remove(PinReason, Option<Name>),
}

/// How a system variable is assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `SET x`, `SET SESSION x`, `SET @@session.x`: the server's session tracking reports it.
    Session,
    /// `SET @@x`: session scope (or next transaction, for the transaction variables), and
    /// MariaDB's session tracking does not report it.
    Scopeless,
    /// `SET GLOBAL x`: not session state.
    Global,
}

/// A system variable a `SET` assigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysVarSet {
    /// Lower case, without the scope prefix.
    pub name: String,
    pub scope: Scope,
}

/// How a `COMMIT` or `ROLLBACK` ends the transaction, as written (the session's
/// `completion_type` decides what is not written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Completion {
    /// `AND CHAIN` (`Some(true)`) or `AND NO CHAIN` (`Some(false)`).
    pub chain: Option<bool>,
    /// `RELEASE` (`Some(true)`) or `NO RELEASE` (`Some(false)`).
    pub release: Option<bool>,
}

/// A diagnostics statement Sluice can answer from the session's own diagnostics area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diagnostics {
    /// `SHOW WARNINGS [LIMIT [offset,] n]` (`errors_only`: `SHOW ERRORS`).
    Show {
        errors_only: bool,
        offset: u64,
        limit: Option<u64>,
    },
    /// `SHOW COUNT(*) WARNINGS` / `SHOW COUNT(*) ERRORS`.
    Count { errors_only: bool },
}

/// What a statement does to `FOUND_ROWS()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FoundRows {
    /// Leaves it (DML, `SET`, `SHOW WARNINGS`, ...).
    #[default]
    Keeps,
    /// A `SELECT`: its rows (or, with `SQL_CALC_FOUND_ROWS` or `INTO`, what the server says);
    /// on MySQL also `UPDATE` and `DO` (what the server says).
    Sets,
    /// Other statements that answer with rows, and code Sluice cannot see into.
    Unknown,
}

/// Statements that leave `FOUND_ROWS()` as it was.
const KEEPS_FOUND_ROWS: &[&str] = &[
    "UPDATE",
    "DELETE",
    "SET",
    "DO",
    "BEGIN",
    "START",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "USE",
    "PREPARE",
    "DEALLOCATE",
    "DROP",
    "ALTER",
    "RENAME",
    "TRUNCATE",
    "LOCK",
    "UNLOCK",
    "XA",
    "KILL",
    "GET",
    "SIGNAL",
    "RESIGNAL",
    "FLUSH",
    "GRANT",
    "REVOKE",
    "LOAD",
];

/// What a column of a single-row answer shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueColumn {
    /// `ROW_COUNT()` or `FOUND_ROWS()`.
    Counter(Counter),
    /// `@@warning_count`.
    WarningCount,
    /// `@@error_count`.
    ErrorCount,
    /// Something the server answers right (`LAST_INSERT_ID()`, which Sluice restores there).
    Server,
}

/// What Sluice knows about one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statement {
    /// The first keyword, upper case (`SELECT`, `SET`, `CALL`, ...), or empty.
    pub verb: String,
    /// Held state created or cleared, in order.
    pub effects: Vec<Effect>,
    /// System variables assigned by `SET`.
    pub sysvars: Vec<SysVarSet>,
    /// `SET STATEMENT ... FOR`: tracking reports the temporary values.
    pub set_statement: bool,
    /// The variables a `SET STATEMENT` sets for its statement (lower case): MariaDB reports
    /// their restored values later, with the next report it sends.
    pub set_statement_vars: Vec<String>,
    /// Reads `LAST_INSERT_ID()` (or `@@identity`, `@@last_insert_id`).
    pub reads_insert_id: bool,
    /// Mentions a user variable (whose type shows in a prepared statement's columns).
    pub reads_user_vars: bool,
    /// Calls `LAST_INSERT_ID(expr)`, which sets the session's value.
    pub sets_insert_id: bool,
    /// `SQL_CALC_FOUND_ROWS`: only the server knows the count.
    pub calc_found_rows: bool,
    /// Calls of `ROW_COUNT()` and `FOUND_ROWS()`.
    pub counters: Vec<CounterCall>,
    /// The statement answers one row of session values and nothing else (`SELECT ROW_COUNT()
    /// AS n, @@warning_count`, `SHOW COUNT(*) WARNINGS`): what each column shows.
    pub value_columns: Option<Vec<ValueColumn>>,
    /// Runs code whose statements Sluice cannot see: `CALL`, `EXECUTE`, a stored function, a
    /// compound statement.
    pub stored_code: bool,
    /// `KILL ...`.
    pub kill: Option<Kill>,
    /// `COMMIT` / `ROLLBACK` (not `ROLLBACK TO SAVEPOINT`).
    pub completion: Option<Completion>,
    /// A diagnostics statement Sluice can answer itself.
    pub diagnostics: Option<Diagnostics>,
    /// A diagnostics statement of any form (`SHOW WARNINGS`, `GET DIAGNOSTICS`, ...): it
    /// leaves the diagnostics area as it is.
    pub reads_diagnostics: bool,
    /// The statement (probably) opens tables: on MariaDB that clears the connection's
    /// warnings, which statements without tables keep.
    pub uses_tables: bool,
    /// What the statement does to `FOUND_ROWS()`.
    pub found_rows: FoundRows,
    /// Byte range of the statement in the query text.
    pub start: usize,
    pub end: usize,
}

impl Statement {
    /// Whether the statement clears the diagnostics area is known only from how it ran:
    /// stored code, and `GET_LOCK` (MariaDB clears the area when the wait times out).
    pub fn diagnostics_depend_on_run(&self) -> bool {
        self.stored_code || self.adds().any(|r| r == PinReason::NamedLock)
    }

    /// The pin reasons this statement adds.
    pub fn adds(&self) -> impl Iterator<Item = PinReason> + '_ {
        self.effects.iter().filter_map(|e| match e {
            Effect::Add(r, _) => Some(*r),
            Effect::Remove(..) => None,
        })
    }

    /// True if the statement's text explains a state change the server reports: it creates
    /// or clears user variables, temporary tables, text-prepared statements, or sets system
    /// variables or the schema.
    pub fn explains_state_change(&self) -> bool {
        self.verb == "SET"
            || self.verb == "USE"
            || self.effects.iter().any(|e| {
                matches!(
                    e,
                    Effect::Add(
                        PinReason::UserVariable | PinReason::TemporaryTable | PinReason::SqlPrepare,
                        _
                    ) | Effect::Remove(
                        PinReason::UserVariable | PinReason::TemporaryTable | PinReason::SqlPrepare,
                        _
                    )
                )
            })
    }
}

/// What Sluice knows about one COM_QUERY.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classification {
    pub statements: Vec<Statement>,
    /// Sluice read the whole text, the server will read it the same way whatever mode the
    /// session is in, and every statement's boundaries are known. When false, the connection
    /// is reset before anyone else borrows it.
    pub certain: bool,
    /// A word naming unreported state appears in the text only where the lexer sees no code
    /// (strings, comments): the connection is reset before anyone else borrows it.
    pub hidden_danger: bool,
}

impl Classification {
    /// True if any statement matches `f`.
    pub fn any(&self, f: impl Fn(&Statement) -> bool) -> bool {
        self.statements.iter().any(f)
    }

    /// True when the query is one `KILL`.
    pub fn kill(&self) -> Option<&Kill> {
        match self.statements.as_slice() {
            [only] => only.kill.as_ref(),
            _ => None,
        }
    }
}

/// Classifies a COM_QUERY's text. `complete` says whether `sql` is the whole text (a very
/// large query may be seen only in part). The text is read in `mode`; if it contains bytes
/// whose meaning depends on the mode, it is read in the other modes too, and any difference
/// makes the classification uncertain (with every reading's effects kept).
pub fn classify(sql: &[u8], mode: LexMode, complete: bool) -> Classification {
    let (mut out, mut certain) = classify_in(sql, mode);
    // A statement that changes sql_mode or the character set changes how the server reads the
    // statements after it in the same query: read the text in every mode, keep every
    // reading's effects, and count it as uncertain if the readings differ.
    let n = out.statements.len();
    let mode_changes = out.statements[..n.saturating_sub(1)]
        .iter()
        .any(changes_lexing);
    if mode_changes && mode_sensitive(sql) {
        for other in every_mode(mode.dialect).filter(|m| *m != mode) {
            let (alt, alt_certain) = classify_in(sql, other);
            if alt.statements != out.statements {
                certain = false;
                merge_effects(&mut out, alt);
            }
            certain &= alt_certain;
        }
    }
    out.hidden_danger = hides_danger(sql, mode);
    out.certain = certain && complete;
    out
}

/// Words that name state the server does not report (locks, handlers, transaction
/// characteristics, roles, scopeless system variables).
const DANGER_WORDS: [&[u8]; 6] = [b"lock", b"handler", b"transaction", b"tx_", b"role", b"@@"];

/// True when the raw text holds one of [`DANGER_WORDS`] that no code token holds: the lexer
/// read it as a string, a comment or a quoted name. If the lexer was wrong about that, state
/// would go unseen, so the connection is reset before reuse (a reset, not a pin: the text very
/// likely is what the lexer says).
fn hides_danger(sql: &[u8], mode: LexMode) -> bool {
    let present = |hay: &[u8], word: &[u8]| {
        hay.len() >= word.len()
            && hay
                .windows(word.len())
                .any(|w| w.eq_ignore_ascii_case(word))
    };
    let in_text: Vec<&[u8]> = DANGER_WORDS
        .iter()
        .copied()
        .filter(|w| present(sql, w))
        .collect();
    if in_text.is_empty() {
        return false;
    }
    let mut in_code = vec![false; in_text.len()];
    for t in Lexer::new(sql, mode) {
        let text: &[u8] = match t.kind {
            Kind::Word => t.text,
            // `@@x` reaches the lexer as a system variable token; its text lacks the `@@`.
            Kind::SysVar => {
                if let Some(i) = in_text.iter().position(|w| *w == b"@@") {
                    in_code[i] = true;
                }
                t.text
            }
            _ => continue,
        };
        for (i, w) in in_text.iter().enumerate() {
            in_code[i] |= present(text, w);
        }
    }
    in_code.iter().any(|seen| !seen)
}

/// A statement after which the server may read text differently.
fn changes_lexing(st: &Statement) -> bool {
    st.verb == "SET"
        && (st.sysvars.is_empty()
            || st
                .sysvars
                .iter()
                .any(|v| v.name == "sql_mode" || v.name == "character_set_client"))
}

/// Every mode a session of `dialect` can be in, as far as lexing goes.
fn every_mode(dialect: super::lexer::Dialect) -> impl Iterator<Item = LexMode> {
    let charsets = [
        Charset::Simple,
        Charset::Big5,
        Charset::Sjis,
        Charset::Gbk,
        Charset::Gb18030,
    ];
    charsets.into_iter().flat_map(move |charset| {
        [(true, false), (false, false), (true, true), (false, true)]
            .into_iter()
            .map(move |(backslash_escapes, ansi_quotes)| LexMode {
                backslash_escapes,
                ansi_quotes,
                charset,
                dialect,
            })
    })
}

/// Adds another reading's effects to `out` (only adds count: holding more is safe).
fn merge_effects(out: &mut Classification, other: Classification) {
    let extra: Vec<Statement> = other.statements;
    let first = out.statements.first_mut();
    if let Some(first) = first {
        for s in extra {
            for e in s.effects {
                if matches!(e, Effect::Add(..)) && !first.effects.contains(&e) {
                    first.effects.push(e);
                }
            }
            first.sysvars.extend(s.sysvars);
            first.stored_code |= s.stored_code;
            first.reads_insert_id |= s.reads_insert_id;
            first.sets_insert_id |= s.sets_insert_id;
        }
    }
}

/// Classifies in one mode; returns whether the text was read without surprises.
fn classify_in(sql: &[u8], mode: LexMode) -> (Classification, bool) {
    let mut lexer = Lexer::new(sql, mode);
    let mut out = Classification::default();
    let mut toks: Vec<Token<'_>> = Vec::new();
    let mut certain = true;
    loop {
        toks.clear();
        let mut depth = 0i32;
        let mut compound = false;
        let mut ended = true;
        while let Some(t) = lexer.next_token() {
            if t.kind == Kind::Semicolon && depth <= 0 {
                ended = false;
                break;
            }
            if toks.is_empty() {
                compound = starts_compound(&t);
            } else if toks.len() < 12 && !compound && defines_routine(&toks, &t) {
                compound = true;
                // `BEGIN NOT ATOMIC`: the BEGIN already went by.
                depth = i32::from(toks[0].is("BEGIN"));
            }
            if compound {
                depth += block_depth_change(&toks, &t);
            }
            toks.push(t);
        }
        if !toks.is_empty() {
            let mut st = Statement {
                start: toks.first().map_or(0, |t| t.start),
                end: toks.last().map_or(0, |t| t.end),
                ..Statement::default()
            };
            classify_statement(&toks, mode, &mut st);
            if depth != 0 {
                certain = false;
            }
            out.statements.push(st);
        }
        if ended {
            break;
        }
    }
    certain &= !lexer.unterminated();
    (out, certain)
}

/// `BEGIN NOT ATOMIC`, and MariaDB's compound statements outside stored programs.
fn starts_compound(t: &Token<'_>) -> bool {
    ["IF", "CASE", "LOOP", "WHILE", "REPEAT", "FOR"]
        .iter()
        .any(|k| t.is(k))
}

/// `CREATE [OR REPLACE] [DEFINER = ...] [AGGREGATE] {PROCEDURE|FUNCTION|TRIGGER|EVENT|PACKAGE}`
/// and `BEGIN NOT ATOMIC`: their bodies hold `;`.
fn defines_routine(toks: &[Token<'_>], t: &Token<'_>) -> bool {
    let first = &toks[0];
    if first.is("BEGIN") {
        return toks.len() == 1 && t.is("NOT");
    }
    first.is("CREATE")
        && ["PROCEDURE", "FUNCTION", "TRIGGER", "EVENT", "PACKAGE"]
            .iter()
            .any(|k| t.is(k))
}

/// How a token moves the block nesting of a compound statement. `BEGIN`, `CASE` and a
/// statement-level `IF`, `LOOP`, `WHILE`, `REPEAT` or `FOR` open a block; `END` closes one
/// (the `IF` of `END IF` opens nothing). `IF(...)` in an expression is a function.
fn block_depth_change(toks: &[Token<'_>], t: &Token<'_>) -> i32 {
    let prev = toks.last();
    if t.is("END") {
        return -1;
    }
    if prev.is_some_and(|p| p.is("END")) {
        return 0;
    }
    if t.is("BEGIN") || t.is("CASE") {
        return 1;
    }
    let statement_start = prev.is_none_or(|p| {
        p.kind == Kind::Semicolon
            || ["THEN", "ELSE", "DO", "BEGIN", "ATOMIC"]
                .iter()
                .any(|k| p.is(k))
            || (p.kind == Kind::Other && p.text == b":")
    });
    let opener = ["IF", "LOOP", "WHILE", "REPEAT", "FOR"]
        .iter()
        .any(|k| t.is(k));
    i32::from(statement_start && opener)
}

fn word_text(t: Option<&Token<'_>>) -> Option<Name> {
    t.filter(|t| t.is_ident()).map(|t| t.text.to_vec())
}

/// A possibly qualified name (`t` or `db.t`) starting at `toks[i]`, and the index after it.
fn qualified_name(toks: &[Token<'_>], i: usize) -> Option<(Name, usize)> {
    let first = toks.get(i).filter(|t| t.is_ident())?;
    match (toks.get(i + 1), toks.get(i + 2)) {
        (Some(d), Some(second)) if d.kind == Kind::Dot && second.is_ident() => {
            let mut n = first.text.to_vec();
            n.push(b'.');
            n.extend_from_slice(second.text);
            Some((n, i + 3))
        }
        _ => Some((first.text.to_vec(), i + 1)),
    }
}

/// A string argument's value (`'a'`, `_utf8mb4'a'`, `N'a'`) and the index after it, if the
/// argument is a literal.
fn string_arg(toks: &[Token<'_>], i: usize, mode: LexMode) -> Option<(Name, usize)> {
    let (t, next) = match toks.get(i) {
        Some(t) if t.kind == Kind::Str => (t, i + 1),
        // An introducer: _charset'...' or N'...'.
        Some(w) if w.kind == Kind::Word && (w.text.starts_with(b"_") || w.is("N")) => {
            (toks.get(i + 1).filter(|t| t.kind == Kind::Str)?, i + 2)
        }
        _ => return None,
    };
    Some((unescape(t.text, t.quote, mode), next))
}

fn add(st: &mut Statement, r: PinReason, name: Option<Name>) {
    st.effects.push(Effect::Add(r, name));
}

fn remove(st: &mut Statement, r: PinReason, name: Option<Name>) {
    st.effects.push(Effect::Remove(r, name));
}

fn lower(mut n: Name) -> Name {
    n.make_ascii_lowercase();
    n
}

fn classify_statement(toks: &[Token<'_>], mode: LexMode, st: &mut Statement) {
    let first = &toks[0];
    st.verb = if first.kind == Kind::Word {
        String::from_utf8_lossy(first.text).to_ascii_uppercase()
    } else {
        String::new()
    };
    let second = toks.get(1);
    let is2 = |kw: &str| second.is_some_and(|t| t.is(kw));
    let mut body_from = 0usize;
    match st.verb.as_str() {
        "SET" => {
            classify_set(&toks[1..], st, &mut body_from);
            if st.set_statement {
                if let Some(inner) = toks.get(body_from..).filter(|t| !t.is_empty()) {
                    let mut wrapped = Statement::default();
                    classify_statement(inner, mode, &mut wrapped);
                    st.effects.append(&mut wrapped.effects);
                    st.stored_code |= wrapped.stored_code;
                    st.reads_insert_id |= wrapped.reads_insert_id;
                    st.sets_insert_id |= wrapped.sets_insert_id;
                    st.counters.append(&mut wrapped.counters);
                    st.calc_found_rows |= wrapped.calc_found_rows;
                    st.completion = wrapped.completion;
                    st.uses_tables = wrapped.uses_tables;
                }
                // Whatever the wrapped statement does to FOUND_ROWS(): the server says.
                st.found_rows = FoundRows::Unknown;
                return;
            }
        }
        "LOCK" => add(st, PinReason::TableLock, None),
        "UNLOCK" => remove(st, PinReason::TableLock, None),
        "BACKUP" => {
            // BACKUP STAGE START ... END; BACKUP LOCK ... BACKUP UNLOCK (MariaDB).
            if toks.last().is_some_and(|t| t.is("END")) || is2("UNLOCK") {
                remove(st, PinReason::TableLock, None);
            } else {
                add(st, PinReason::TableLock, None);
            }
        }
        "FLUSH" => {
            let read_lock = toks
                .windows(3)
                .any(|w| w[0].is("WITH") && w[1].is("READ") && w[2].is("LOCK"));
            let export = toks.windows(2).any(|w| w[0].is("FOR") && w[1].is("EXPORT"));
            if read_lock || export {
                add(st, PinReason::TableLock, None);
            }
        }
        "PREPARE" => add(st, PinReason::SqlPrepare, word_text(second).map(lower)),
        "DEALLOCATE" | "DROP" if is2("PREPARE") => {
            remove(st, PinReason::SqlPrepare, word_text(toks.get(2)).map(lower));
        }
        "EXECUTE" => st.stored_code = true,
        "CALL" => st.stored_code = true,
        "XA" => {
            if is2("START") || is2("BEGIN") {
                add(st, PinReason::Xa, None);
            } else if is2("COMMIT") || is2("ROLLBACK") {
                remove(st, PinReason::Xa, None);
            }
        }
        "HANDLER" => classify_handler(toks, st),
        "CREATE" => classify_create(toks, st, &mut body_from),
        "DROP" => classify_drop(toks, st),
        "KILL" => st.kill = Some(classify_kill(&toks[1..])),
        "COMMIT" => st.completion = Some(completion(&toks[1..])),
        "ROLLBACK" if !toks.iter().any(|t| t.is("TO")) => {
            st.completion = Some(completion(&toks[1..]));
        }
        "BEGIN" if is2("NOT") => st.stored_code = true,
        "IF" | "CASE" | "LOOP" | "WHILE" | "REPEAT" | "FOR" => st.stored_code = true,
        "SHOW" => st.diagnostics = classify_show(&toks[1..]),
        _ => {}
    }
    if first.kind == Kind::Word
        && !st.verb.is_empty()
        && toks
            .get(1)
            .is_some_and(|t| t.kind == Kind::Other && t.text == b":")
    {
        // `label: BEGIN ... END` compound statement.
        st.stored_code = true;
    }
    scan_anywhere(&toks[body_from..], mode, st);
    st.reads_diagnostics = st.diagnostics.is_some()
        || (st.verb == "SHOW"
            && toks
                .get(1)
                .is_some_and(|t| t.is("WARNINGS") || t.is("ERRORS") || t.is("COUNT")))
        || (st.verb == "GET" && toks.iter().any(|t| t.is("DIAGNOSTICS")));
    // PREPARE opens the tables of the statement it prepares.
    let prepared_text = (st.verb == "PREPARE")
        .then(|| toks.iter().position(|t| t.is("FROM")))
        .flatten()
        .and_then(|i| toks.get(i + 1))
        .filter(|t| t.kind == Kind::Str)
        .map(|t| unescape(t.text, t.quote, mode));
    if st.verb == "PREPARE" {
        st.uses_tables = match prepared_text {
            Some(text) => classify(&text, mode, true).any(|s| s.uses_tables),
            None => true,
        };
        return;
    }
    let drops_prepared = st.verb == "DEALLOCATE"
        || (st.verb == "DROP" && toks.get(1).is_some_and(|t| t.is("PREPARE")));
    st.uses_tables = !st.reads_diagnostics
        && !drops_prepared
        && (TABLE_VERBS.contains(&st.verb.as_str())
            || st.stored_code
            || toks.iter().enumerate().any(|(i, t)| {
                (t.is("FROM") && !toks.get(i + 1).is_some_and(|n| n.is("DUAL"))) || t.is("JOIN")
            }));
    st.found_rows = found_rows_effect(toks, st, mode);
    st.value_columns = match st.diagnostics {
        Some(Diagnostics::Count { errors_only }) => Some(vec![if errors_only {
            ValueColumn::ErrorCount
        } else {
            ValueColumn::WarningCount
        }]),
        _ => value_columns(toks, st),
    };
}

/// What a statement does to `FOUND_ROWS()`.
fn found_rows_effect(toks: &[Token<'_>], st: &Statement, mode: LexMode) -> FoundRows {
    let first = &toks[0];
    let with_select = |from: usize| toks[from..].iter().any(|t| t.is("SELECT"));
    // SET STATEMENT ... FOR <statement>: whatever the wrapped statement does; the server says.
    if st.stored_code || st.set_statement {
        FoundRows::Unknown
    } else if st.verb == "SELECT"
        || st.verb == "WITH"
        || first.kind == Kind::LParen
        // MySQL's UPDATE sets it to the rows it matched, and its DO runs as a one-row SELECT:
        // what the server knows, read from it.
        || (mode.dialect.is_mysql() && (st.verb == "UPDATE" || st.verb == "DO"))
    {
        FoundRows::Sets
    } else if matches!(st.diagnostics, Some(Diagnostics::Show { .. })) {
        FoundRows::Keeps
    } else if (st.verb == "INSERT" || st.verb == "REPLACE" || st.verb == "CREATE") && with_select(1)
    {
        FoundRows::Unknown
    } else if KEEPS_FOUND_ROWS.contains(&st.verb.as_str())
        || ((st.verb == "INSERT" || st.verb == "REPLACE" || st.verb == "CREATE") && !with_select(1))
        || (st.verb == "HANDLER" && !toks.iter().any(|t| t.is("READ")))
    {
        FoundRows::Keeps
    } else {
        FoundRows::Unknown
    }
}

/// `SET` assignments. User variables hold (or clear, when set to exactly NULL); system
/// variables are left to session tracking, except the forms it does not report.
fn classify_set(toks: &[Token<'_>], st: &mut Statement, body_from: &mut usize) {
    let Some(first) = toks.first() else { return };
    if first.is("STATEMENT") {
        // SET STATEMENT a=1, b=2 FOR <statement>: the assignments last one statement.
        st.set_statement = true;
        // The wrapped statement is classified as itself.
        let end = toks.iter().position(|t| t.is("FOR"));
        if let Some(pos) = end {
            *body_from = pos + 2;
        }
        // The names: the first word, and each word after a comma outside parentheses, when an
        // `=` follows.
        let assignments = toks.get(1..end.unwrap_or(toks.len())).unwrap_or_default();
        let mut depth = 0i32;
        let mut expect_name = true;
        for (i, t) in assignments.iter().enumerate() {
            match t.kind {
                Kind::LParen => depth += 1,
                Kind::RParen => depth -= 1,
                Kind::Comma if depth == 0 => expect_name = true,
                _ if expect_name => {
                    expect_name = false;
                    if t.is_ident() && assignments.get(i + 1).is_some_and(|n| n.kind == Kind::Eq) {
                        st.set_statement_vars
                            .push(String::from_utf8_lossy(t.text).to_ascii_lowercase());
                    }
                }
                _ => {}
            }
        }
        return;
    }
    if first.is("TRANSACTION") {
        add(st, PinReason::NextTransaction, None);
        return;
    }
    if (first.is("SESSION") || first.is("LOCAL") || first.is("GLOBAL"))
        && toks.get(1).is_some_and(|t| t.is("TRANSACTION"))
    {
        return;
    }
    if first.is("ROLE") {
        // Active roles are session state that tracking does not report.
        add(st, PinReason::SessionVariable, None);
        return;
    }
    if first.is("PASSWORD") || (first.is("DEFAULT") && toks.get(1).is_some_and(|t| t.is("ROLE"))) {
        return;
    }
    // The assignments, separated by top-level commas. A scope keyword holds for the
    // assignments after it until another one.
    let mut scope = Scope::Session;
    let mut depth = 0i32;
    let mut at_target = true;
    let mut i = 0;
    while let Some(t) = toks.get(i) {
        if at_target
            && (t.is("NAMES")
                || t.is("CHARSET")
                || (t.is("CHARACTER") && toks.get(i + 1).is_some_and(|n| n.is("SET"))))
        {
            // SET NAMES x [COLLATE y], SET CHARACTER SET x: tracking reports what they set.
            at_target = false;
        } else if at_target {
            at_target = false;
            let mut target = *t;
            if t.is("SESSION") || t.is("LOCAL") {
                scope = Scope::Session;
                i += 1;
            } else if t.is("GLOBAL") {
                scope = Scope::Global;
                i += 1;
            }
            if let Some(t2) = toks.get(i) {
                target = *t2;
            }
            match target.kind {
                // `SET @x = NULL` does not remove the variable: it stays, NULL, with the type
                // it had (which shows in a result's column definition). Only a reset clears it.
                Kind::UserVar => add(
                    st,
                    PinReason::UserVariable,
                    Some(lower(target.text.to_vec())),
                ),
                Kind::SysVar => {
                    let text = String::from_utf8_lossy(target.text).to_ascii_lowercase();
                    let (var_scope, name) = match text.split_once('.') {
                        Some(("session" | "local", n)) => (Scope::Session, n.to_string()),
                        Some(("global", n)) => (Scope::Global, n.to_string()),
                        Some((_, n)) => (Scope::Scopeless, n.to_string()),
                        None => (Scope::Scopeless, text.clone()),
                    };
                    note_sysvar(st, name, var_scope);
                }
                Kind::Word | Kind::QuotedIdent => {
                    let name = String::from_utf8_lossy(target.text).to_ascii_lowercase();
                    // `SET x.y = ...` (a structured variable such as a key cache setting).
                    let name = match (toks.get(i + 1), toks.get(i + 2)) {
                        (Some(d), Some(n)) if d.kind == Kind::Dot && n.is_ident() => {
                            String::from_utf8_lossy(n.text).to_ascii_lowercase()
                        }
                        _ => name,
                    };
                    note_sysvar(st, name, scope);
                }
                _ => {}
            }
        }
        match t.kind {
            Kind::LParen => depth += 1,
            Kind::RParen => depth -= 1,
            Kind::Comma if depth == 0 => at_target = true,
            _ => {}
        }
        i += 1;
    }
}

/// Statements that open tables whatever they say.
const TABLE_VERBS: &[&str] = &[
    "INSERT", "UPDATE", "DELETE", "REPLACE", "LOAD", "HANDLER", "LOCK", "ANALYZE", "CHECK",
    "OPTIMIZE", "REPAIR", "TRUNCATE", "RENAME", "ALTER", "CREATE", "DROP", "SHOW", "DESCRIBE",
    "DESC", "EXPLAIN", "TABLE", "CALL", "EXECUTE", "CHECKSUM",
];

/// Whether a query might read a diagnostics area: its raw text mentions warnings, errors or
/// diagnostics anywhere (inside comments and strings too, so no way of writing it escapes).
pub fn possibly_diagnostic(sql: &[u8]) -> bool {
    const WORDS: [&[u8]; 3] = [b"warning", b"error", b"diagnostics"];
    sql.windows(5).enumerate().any(|(i, w)| {
        let rest = &sql[i..];
        (w.eq_ignore_ascii_case(b"warni")
            || w.eq_ignore_ascii_case(b"error")
            || w.eq_ignore_ascii_case(b"diagn"))
            && WORDS.iter().any(|word| {
                rest.len() >= word.len() && rest[..word.len()].eq_ignore_ascii_case(word)
            })
    })
}

/// The transaction variables, whose scopeless assignment applies to the next transaction.
const TRANSACTION_VARS: [&str; 4] = [
    "tx_isolation",
    "tx_read_only",
    "transaction_isolation",
    "transaction_read_only",
];

fn note_sysvar(st: &mut Statement, name: String, scope: Scope) {
    if scope == Scope::Scopeless && TRANSACTION_VARS.contains(&name.as_str()) {
        add(st, PinReason::NextTransaction, None);
    }
    st.sysvars.push(SysVarSet { name, scope });
}

fn classify_handler(toks: &[Token<'_>], st: &mut Statement) {
    let Some((table, next)) = qualified_name(toks, 1) else {
        return;
    };
    let Some(action) = toks.get(next) else { return };
    if action.is("OPEN") {
        let alias = match (toks.get(next + 1), toks.get(next + 2)) {
            (Some(a), Some(n)) if a.is("AS") && n.is_ident() => Some(n.text.to_vec()),
            (Some(n), _) if n.is_ident() => Some(n.text.to_vec()),
            _ => None,
        };
        let name = alias.unwrap_or_else(|| {
            table
                .rsplit(|&b| b == b'.')
                .next()
                .unwrap_or_default()
                .to_vec()
        });
        add(st, PinReason::Handler, Some(lower(name)));
    } else if action.is("CLOSE") {
        let name = table
            .rsplit(|&b| b == b'.')
            .next()
            .unwrap_or_default()
            .to_vec();
        remove(st, PinReason::Handler, Some(lower(name)));
    }
}

fn classify_create(toks: &[Token<'_>], st: &mut Statement, body_from: &mut usize) {
    let head: Vec<&Token<'_>> = toks.iter().take(12).collect();
    if head.iter().any(|t| {
        ["PROCEDURE", "FUNCTION", "TRIGGER", "EVENT", "PACKAGE"]
            .iter()
            .any(|k| t.is(k))
    }) {
        // A stored program's body runs later, not now.
        *body_from = toks.len();
        return;
    }
    let temporary = toks
        .iter()
        .take_while(|t| !t.is("TABLE"))
        .any(|t| t.is("TEMPORARY"));
    if !temporary {
        return;
    }
    let Some(mut i) = toks.iter().position(|t| t.is("TABLE")).map(|p| p + 1) else {
        return;
    };
    for kw in ["IF", "NOT", "EXISTS"] {
        if toks.get(i).is_some_and(|t| t.is(kw)) {
            i += 1;
        }
    }
    add(
        st,
        PinReason::TemporaryTable,
        qualified_name(toks, i).map(|(n, _)| n),
    );
}

fn classify_drop(toks: &[Token<'_>], st: &mut Statement) {
    // DROP [TEMPORARY] TABLE[S] [IF EXISTS] a, db.b: a temporary table hides a base table of
    // the same name, so any dropped name may be a temporary table.
    let Some(pos) = toks
        .iter()
        .take(3)
        .position(|t| t.is("TABLE") || t.is("TABLES"))
    else {
        return;
    };
    let mut i = pos + 1;
    if toks.get(i).is_some_and(|t| t.is("IF")) && toks.get(i + 1).is_some_and(|t| t.is("EXISTS")) {
        i += 2;
    }
    while let Some((name, next)) = qualified_name(toks, i) {
        remove(st, PinReason::TemporaryTable, Some(name));
        if toks.get(next).is_none_or(|t| t.kind != Kind::Comma) {
            break;
        }
        i = next + 1;
    }
}

fn completion(toks: &[Token<'_>]) -> Completion {
    let mut c = Completion::default();
    let mut i = 0;
    while let Some(t) = toks.get(i) {
        let no = t.is("NO");
        let word = if no { toks.get(i + 1) } else { Some(t) };
        if word.is_some_and(|w| w.is("CHAIN")) {
            c.chain = Some(!no);
        }
        if word.is_some_and(|w| w.is("RELEASE")) {
            c.release = Some(!no);
        }
        i += if no { 2 } else { 1 };
    }
    c
}

fn number(t: Option<&Token<'_>>) -> Option<u64> {
    let t = t.filter(|t| t.kind == Kind::Number)?;
    std::str::from_utf8(t.text).ok()?.parse().ok()
}

/// `SHOW WARNINGS|ERRORS [LIMIT [offset,] n]`, `SHOW COUNT(*) WARNINGS|ERRORS`.
fn classify_show(toks: &[Token<'_>]) -> Option<Diagnostics> {
    let first = toks.first()?;
    if first.is("COUNT") {
        let star = toks.get(1)?.kind == Kind::LParen
            && toks.get(2).is_some_and(|t| t.text == b"*")
            && toks.get(3)?.kind == Kind::RParen;
        let which = toks.get(4)?;
        if !star || toks.len() != 5 {
            return None;
        }
        return if which.is("WARNINGS") {
            Some(Diagnostics::Count { errors_only: false })
        } else if which.is("ERRORS") {
            Some(Diagnostics::Count { errors_only: true })
        } else {
            None
        };
    }
    let errors_only = if first.is("WARNINGS") {
        false
    } else if first.is("ERRORS") {
        true
    } else {
        return None;
    };
    let (offset, limit) = match &toks[1..] {
        [] => (0, None),
        [l, n] if l.is("LIMIT") => (0, Some(number(Some(n))?)),
        [l, o, c, n] if l.is("LIMIT") && c.kind == Kind::Comma => {
            (number(Some(o))?, Some(number(Some(n))?))
        }
        [l, n, o, off] if l.is("LIMIT") && o.is("OFFSET") => {
            (number(Some(off))?, Some(number(Some(n))?))
        }
        _ => return None,
    };
    Some(Diagnostics::Show {
        errors_only,
        offset,
        limit,
    })
}

/// Things that may appear anywhere in a statement: user variable assignments, named locks,
/// the session counters, stored function calls.
fn scan_anywhere(toks: &[Token<'_>], mode: LexMode, st: &mut Statement) {
    let set_targets = st.verb == "SET";
    let mut into = false;
    let mut depth = 0i32;
    for (i, t) in toks.iter().enumerate() {
        let next = toks.get(i + 1);
        let prev = i.checked_sub(1).and_then(|p| toks.get(p));
        match t.kind {
            Kind::LParen => depth += 1,
            Kind::RParen => depth -= 1,
            // A SET target is classify_set's business (`SET @x := NULL` clears @x).
            Kind::UserVar
                if set_targets
                    && depth == 0
                    && (i == 1 || prev.is_some_and(|p| p.kind == Kind::Comma)) => {}
            Kind::UserVar if next.is_some_and(|n| n.kind == Kind::Assign) || into => {
                add(st, PinReason::UserVariable, Some(lower(t.text.to_vec())));
            }
            Kind::UserVar => st.reads_user_vars = true,
            Kind::SysVar => {
                let name = t.text.rsplit(|&b| b == b'.').next().unwrap_or_default();
                if name.eq_ignore_ascii_case(b"last_insert_id")
                    || name.eq_ignore_ascii_case(b"identity")
                {
                    st.reads_insert_id = true;
                }
            }
            Kind::Word if next.is_some_and(|n| n.kind == Kind::LParen) => {
                call(toks, i, mode, st);
            }
            Kind::Dot
                if next.is_some_and(|n| n.is_ident())
                    && toks.get(i + 2).is_some_and(|n| n.kind == Kind::LParen)
                    && prev.is_some_and(|p| p.is_ident()) =>
            {
                // db.f(...): built-ins are never qualified.
                st.stored_code = true;
            }
            _ => {}
        }
        if t.kind == Kind::Word {
            if t.is("SQL_CALC_FOUND_ROWS") {
                st.calc_found_rows = true;
            }
            into = t.is("INTO");
        } else if !(t.kind == Kind::UserVar || (t.kind == Kind::Comma && into)) {
            into = false;
        }
    }
}

/// A call `word(` at `toks[i]`.
fn call(toks: &[Token<'_>], i: usize, mode: LexMode, st: &mut Statement) {
    let t = &toks[i];
    let name = t.text;
    let arg = toks.get(i + 2);
    let empty = arg.is_some_and(|a| a.kind == Kind::RParen);
    let eq = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    if eq("GET_LOCK") {
        let lock = string_arg(toks, i + 2, mode)
            .filter(|(_, next)| toks.get(*next).is_some_and(|t| t.kind == Kind::Comma))
            .map(|(n, _)| n);
        add(st, PinReason::NamedLock, lock);
    } else if eq("RELEASE_LOCK") {
        let lock = string_arg(toks, i + 2, mode)
            .filter(|(_, next)| toks.get(*next).is_some_and(|t| t.kind == Kind::RParen))
            .map(|(n, _)| n);
        // A name Sluice cannot read may be any lock: the release goes through a reset anyway.
        if let Some(lock) = lock {
            remove(st, PinReason::NamedLock, Some(lock));
        }
    } else if eq("RELEASE_ALL_LOCKS") {
        remove(st, PinReason::NamedLock, None);
    } else if eq("LAST_INSERT_ID") {
        if empty {
            st.reads_insert_id = true;
        } else {
            st.sets_insert_id = true;
        }
    } else if empty && (eq("ROW_COUNT") || eq("FOUND_ROWS")) {
        let counter = if eq("ROW_COUNT") {
            Counter::RowCount
        } else {
            Counter::FoundRows
        };
        st.counters.push(CounterCall {
            counter,
            start: t.start,
            end: toks.get(i + 2).map_or(t.end, |r| r.end),
        });
    } else if !is_builtin(name) && !names_a_table(toks, i) {
        st.stored_code = true;
    }
}

/// True when `word(` at `toks[i]` names a table or a column list rather than calling a
/// function (`INSERT INTO t (a)`, `WITH c (x) AS`, `REFERENCES t (id)`, ...).
fn names_a_table(toks: &[Token<'_>], i: usize) -> bool {
    let prev = i.checked_sub(1).and_then(|p| toks.get(p));
    let Some(prev) = prev else { return false };
    [
        "INTO",
        "INSERT",
        "REPLACE",
        "IGNORE",
        "TABLE",
        "EXISTS",
        "REFERENCES",
        "ON",
        "WITH",
        "KEY",
        "INDEX",
        "CONSTRAINT",
        "UNIQUE",
        "JOIN",
        "UPDATE",
        "FROM",
        "AS",
        "RECURSIVE",
        "DELAYED",
        "LOW_PRIORITY",
        "HIGH_PRIORITY",
        "PARTITION",
    ]
    .iter()
    .any(|k| prev.is(k))
        || prev.kind == Kind::Comma && toks[..i].iter().any(|t| t.is("WITH"))
        || prev.kind == Kind::Dot
}

/// `SELECT item [[AS] alias], ...` where every item is `ROW_COUNT()`, `FOUND_ROWS()`,
/// `LAST_INSERT_ID()`, `@@warning_count` or `@@error_count`, and there is nothing else.
fn value_columns(toks: &[Token<'_>], st: &Statement) -> Option<Vec<ValueColumn>> {
    if st.verb != "SELECT" {
        return None;
    }
    let mut i = 1;
    let mut columns = Vec::new();
    loop {
        let t = toks.get(i)?;
        let column = if t.kind == Kind::SysVar {
            i += 1;
            let name = t.text.to_ascii_lowercase();
            match name.as_slice() {
                b"warning_count" | b"session.warning_count" => ValueColumn::WarningCount,
                b"error_count" | b"session.error_count" => ValueColumn::ErrorCount,
                _ => return None,
            }
        } else {
            let (l, r) = (toks.get(i + 1)?, toks.get(i + 2)?);
            if t.kind != Kind::Word || l.kind != Kind::LParen || r.kind != Kind::RParen {
                return None;
            }
            i += 3;
            if t.is("ROW_COUNT") {
                ValueColumn::Counter(Counter::RowCount)
            } else if t.is("FOUND_ROWS") {
                ValueColumn::Counter(Counter::FoundRows)
            } else if t.is("LAST_INSERT_ID") {
                ValueColumn::Server
            } else {
                return None;
            }
        };
        columns.push(column);
        if toks.get(i).is_some_and(|t| t.is("AS")) {
            i += 1;
        }
        if toks
            .get(i)
            .is_some_and(|t| t.is_ident() || t.kind == Kind::Str)
        {
            i += 1;
        }
        match toks.get(i) {
            None => break,
            Some(t) if t.kind == Kind::Comma => i += 1,
            Some(_) => return None,
        }
    }
    columns
        .iter()
        .any(|c| *c != ValueColumn::Server)
        .then_some(columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::lexer::Dialect;

    const MODE: LexMode = LexMode {
        backslash_escapes: true,
        ansi_quotes: false,
        charset: Charset::Simple,
        dialect: Dialect::MariaDb(101106),
    };

    fn c(sql: &str) -> Classification {
        classify(sql.as_bytes(), MODE, true)
    }

    #[test]
    fn update_and_do_set_found_rows_on_mysql_only() {
        let mysql = |sql: &str| classify(sql.as_bytes(), LexMode::mysql(90700), true);
        for sql in ["UPDATE t SET v = 1", "DO 1"] {
            assert_eq!(c(sql).statements[0].found_rows, FoundRows::Keeps, "{sql}");
            assert_eq!(
                mysql(sql).statements[0].found_rows,
                FoundRows::Sets,
                "{sql}"
            );
        }
        assert_eq!(
            mysql("DELETE FROM t").statements[0].found_rows,
            FoundRows::Keeps
        );
    }

    fn adds(sql: &str) -> Vec<PinReason> {
        c(sql)
            .statements
            .iter()
            .flat_map(|s| s.adds().collect::<Vec<_>>())
            .collect()
    }

    fn named(r: PinReason, n: &str) -> Effect {
        Effect::Add(r, Some(n.as_bytes().to_vec()))
    }

    fn cleared(r: PinReason, n: Option<&str>) -> Effect {
        Effect::Remove(r, n.map(|n| n.as_bytes().to_vec()))
    }

    #[test]
    fn user_variables_hold_however_they_are_written() {
        for sql in [
            "SET @x = 1",
            "set @`odd name` := 2",
            "SELECT 1 INTO @y",
            "SELECT @z := 5",
            "DO @a:=1",
            "SET NAMES utf8mb4, @x = 3",
            "/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE */",
            "/*M!100100 SELECT @m := 1 */",
        ] {
            assert_eq!(adds(sql), vec![PinReason::UserVariable], "{sql}");
        }
    }

    #[test]
    fn skipped_text_holds_nothing() {
        for sql in [
            "SELECT @x",
            "SELECT '@x := 1', \"GET_LOCK(\"",
            "SELECT 1 /* SET @x = 1 */",
            "SELECT 1 -- GET_LOCK('a', 1)\n",
            "SELECT 1 # LOCK TABLES t READ",
            "SELECT 1 /*!999999 , GET_LOCK('a', 0) */",
            "SELECT 1 /*M!999999 , @u := 5 */",
            // MariaDB skips MySQL 5.7+ version comments.
            "SELECT 1 /*!80000 , GET_LOCK('a', 0) */",
            "SET NAMES utf8mb4",
            "SET autocommit = 0",
            "SET SESSION sql_mode = 'ANSI'",
            "INSERT INTO t VALUES (1)",
            "SELECT get_lock_count FROM t",
            "UNLOCK TABLES",
            "CREATE PROCEDURE p() BEGIN SET @x = 1; DO GET_LOCK('a', 0); END",
        ] {
            assert!(adds(sql).is_empty(), "{sql}: {:?}", adds(sql));
        }
    }

    #[test]
    fn set_statement_holds_nothing_and_is_marked() {
        let k = c("SET STATEMENT max_statement_time=1 FOR SELECT 1");
        assert!(k.statements[0].set_statement);
        let k = c("SET STATEMENT Histogram_Size = IF(1, 2, 3), `x` = 1 FOR SELECT 1");
        assert_eq!(k.statements[0].set_statement_vars, ["histogram_size", "x"]);
        assert!(k.statements[0].effects.is_empty());
        // What it does to FOUND_ROWS() is the wrapped statement's: the server says.
        assert_eq!(k.statements[0].found_rows, FoundRows::Unknown);
        // The statement it wraps still counts.
        assert_eq!(
            adds("SET STATEMENT max_statement_time=1 FOR SELECT @x := 1"),
            vec![PinReason::UserVariable]
        );
    }

    #[test]
    fn each_hold_reason_is_recognised() {
        use PinReason::*;
        let cases = [
            ("DO GET_LOCK('a', 0)", NamedLock),
            ("select get_lock ('a', 0)", NamedLock),
            ("LOCK TABLES t WRITE", TableLock),
            ("FLUSH TABLES WITH READ LOCK", TableLock),
            ("CREATE TEMPORARY TABLE t (a int)", TemporaryTable),
            (
                "create or replace temporary table t (a int)",
                TemporaryTable,
            ),
            ("PREPARE s FROM 'SELECT 1'", SqlPrepare),
            ("XA START 'x'", Xa),
            ("HANDLER t OPEN", Handler),
            ("SET ROLE r", SessionVariable),
            ("SET TRANSACTION READ ONLY", NextTransaction),
            ("SET @@tx_read_only = 1", NextTransaction),
            (
                "SET @@transaction_isolation = 'SERIALIZABLE'",
                NextTransaction,
            ),
        ];
        for (sql, reason) in cases {
            assert_eq!(adds(sql), vec![reason], "{sql}");
        }
        assert!(adds("CREATE TABLE t (a int)").is_empty());
        assert!(adds("SET SESSION TRANSACTION READ ONLY").is_empty());
        assert!(adds("SET @@session.tx_read_only = 1").is_empty());
        assert_eq!(adds("SELECT 1; SET @x=1; LOCK TABLES t READ").len(), 2);
    }

    #[test]
    fn state_is_named_and_cleared_by_its_statements() {
        use PinReason::*;
        let cases: Vec<(&str, Vec<Effect>)> = vec![
            (
                "SET @a = 1, @B := NULL",
                vec![named(UserVariable, "a"), named(UserVariable, "b")],
            ),
            (
                "SELECT 1, 2 INTO @x, @y",
                vec![named(UserVariable, "x"), named(UserVariable, "y")],
            ),
            ("SET @x = NULL + 1", vec![named(UserVariable, "x")]),
            (
                "CREATE TEMPORARY TABLE IF NOT EXISTS db.t (a int)",
                vec![named(TemporaryTable, "db.t")],
            ),
            (
                "DROP TEMPORARY TABLE IF EXISTS t, db.u",
                vec![
                    cleared(TemporaryTable, Some("t")),
                    cleared(TemporaryTable, Some("db.u")),
                ],
            ),
            ("DROP TABLE t", vec![cleared(TemporaryTable, Some("t"))]),
            (
                "SELECT GET_LOCK('L1', 5), RELEASE_LOCK('l0')",
                vec![named(NamedLock, "L1"), cleared(NamedLock, Some("l0"))],
            ),
            (
                "SELECT GET_LOCK('it''s', 0)",
                vec![named(NamedLock, "it's")],
            ),
            (
                "SELECT GET_LOCK(CONCAT('a', 'b'), 0)",
                vec![Effect::Add(NamedLock, None)],
            ),
            ("DO RELEASE_ALL_LOCKS()", vec![cleared(NamedLock, None)]),
            ("LOCK TABLES t READ", vec![Effect::Add(TableLock, None)]),
            ("UNLOCK TABLES", vec![cleared(TableLock, None)]),
            ("BACKUP STAGE START", vec![Effect::Add(TableLock, None)]),
            ("BACKUP STAGE END", vec![cleared(TableLock, None)]),
            ("PREPARE S1 FROM 'SELECT 1'", vec![named(SqlPrepare, "s1")]),
            (
                "DEALLOCATE PREPARE s1",
                vec![cleared(SqlPrepare, Some("s1"))],
            ),
            ("DROP PREPARE s1", vec![cleared(SqlPrepare, Some("s1"))]),
            ("XA START 'x'", vec![Effect::Add(Xa, None)]),
            ("XA COMMIT 'x'", vec![cleared(Xa, None)]),
            ("XA RECOVER", vec![]),
            ("HANDLER t OPEN AS h", vec![named(Handler, "h")]),
            ("HANDLER t OPEN", vec![named(Handler, "t")]),
            ("HANDLER h CLOSE", vec![cleared(Handler, Some("h"))]),
            ("HANDLER h READ FIRST", vec![]),
        ];
        for (sql, want) in cases {
            let got: Vec<Effect> = c(sql)
                .statements
                .into_iter()
                .flat_map(|s| s.effects)
                .collect();
            assert_eq!(got, want, "{sql}");
        }
    }

    #[test]
    fn system_variables_and_their_scopes() {
        let s = |sql: &str| -> Vec<(String, Scope)> {
            c(sql).statements[0]
                .sysvars
                .iter()
                .map(|v| (v.name.clone(), v.scope))
                .collect()
        };
        assert_eq!(
            s("SET time_zone = '+01:00'"),
            [("time_zone".into(), Scope::Session)]
        );
        assert_eq!(
            s("SET @@time_zone = '+01:00'"),
            [("time_zone".into(), Scope::Scopeless)]
        );
        assert_eq!(
            s("SET @@SESSION.Time_Zone = 1"),
            [("time_zone".into(), Scope::Session)]
        );
        assert_eq!(
            s("SET GLOBAL a = 1, b = 2, SESSION c = 3, @@global.d = 4"),
            [
                ("a".into(), Scope::Global),
                ("b".into(), Scope::Global),
                ("c".into(), Scope::Session),
                ("d".into(), Scope::Global)
            ]
        );
        assert_eq!(
            s("/*!40101 SET @@character_set_results = binary */"),
            [("character_set_results".into(), Scope::Scopeless)]
        );
        assert_eq!(
            s("SET sql_mode = CONCAT(@@sql_mode, ',ANSI'), x = 1").len(),
            2
        );
    }

    #[test]
    fn stored_code_is_noticed() {
        for sql in [
            "CALL p()",
            "EXECUTE s",
            "SELECT my_func(1)",
            "SELECT db.f()",
            "DO `weird`.f(1)",
            "BEGIN NOT ATOMIC SET @x = 1; END",
            "IF 1 THEN DO 1; END IF",
        ] {
            assert!(c(sql).any(|s| s.stored_code), "{sql}");
        }
        for sql in [
            "SELECT COUNT(*), IFNULL(a, 1), CONCAT('a', b) FROM t",
            "INSERT INTO t (a, b) VALUES (1, 2)",
            "INSERT t(a) VALUES (1)",
            "WITH c (x) AS (SELECT 1) SELECT * FROM c",
            "CREATE TABLE t (a INT, KEY k (a), FOREIGN KEY (a) REFERENCES u (id))",
            "SELECT JSON_TABLE('[]', '$[*]' COLUMNS (a INT PATH '$')) FROM DUAL",
        ] {
            assert!(!c(sql).any(|s| s.stored_code), "{sql}");
        }
    }

    #[test]
    fn compound_statements_keep_their_semicolons() {
        let k = c(
            "CREATE PROCEDURE p() BEGIN IF 1 THEN SELECT 1; END IF; CASE WHEN 1 THEN DO 1; END CASE; END; SELECT 2",
        );
        assert_eq!(k.statements.len(), 2, "{k:?}");
        assert!(k.certain);
        let k = c("BEGIN NOT ATOMIC DECLARE x INT; SELECT 1; END");
        assert_eq!(k.statements.len(), 1);
        assert!(k.statements[0].stored_code);
    }

    #[test]
    fn completions() {
        let done = |sql: &str| c(sql).statements[0].completion;
        assert_eq!(done("COMMIT"), Some(Completion::default()));
        assert_eq!(
            done("COMMIT WORK AND NO CHAIN RELEASE"),
            Some(Completion {
                chain: Some(false),
                release: Some(true)
            })
        );
        assert_eq!(
            done("ROLLBACK AND CHAIN NO RELEASE"),
            Some(Completion {
                chain: Some(true),
                release: Some(false)
            })
        );
        assert_eq!(done("ROLLBACK TO SAVEPOINT a"), None);
    }

    #[test]
    fn diagnostics_statements() {
        let d = |sql: &str| c(sql).statements[0].diagnostics;
        assert_eq!(
            d("SHOW WARNINGS"),
            Some(Diagnostics::Show {
                errors_only: false,
                offset: 0,
                limit: None
            })
        );
        assert_eq!(
            d("show errors limit 2, 3"),
            Some(Diagnostics::Show {
                errors_only: true,
                offset: 2,
                limit: Some(3)
            })
        );
        assert_eq!(
            d("SHOW COUNT(*) WARNINGS"),
            Some(Diagnostics::Count { errors_only: false })
        );
        assert_eq!(d("SHOW WARNINGS LIMIT @x"), None);
        assert_eq!(d("SHOW TABLES"), None);
    }

    #[test]
    fn tables_and_diagnostics() {
        for sql in [
            "SELECT a FROM t",
            "INSERT INTO t VALUES (1)",
            "SELECT (SELECT 1 FROM t)",
            "CALL p()",
            "SHOW TABLES",
        ] {
            assert!(c(sql).statements[0].uses_tables, "{sql}");
        }
        for sql in [
            "SELECT 1",
            "DO 1",
            "SET @x = 1",
            "SELECT 1 FROM DUAL",
            "COMMIT",
            "SHOW WARNINGS",
            "GET DIAGNOSTICS @n = NUMBER",
        ] {
            assert!(!c(sql).statements[0].uses_tables, "{sql}");
        }
        assert!(c("GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT").statements[0].reads_diagnostics);
        assert!(possibly_diagnostic(b"select @@Warning_Count"));
        assert!(possibly_diagnostic(b"/* x */ SHOW errors"));
        assert!(possibly_diagnostic(b"GET DIAGNOSTICS @a = NUMBER"));
        assert!(!possibly_diagnostic(b"SELECT warn FROM err"));
    }

    #[test]
    fn counters() {
        let k = c("SELECT ROW_COUNT(), FOUND_ROWS() AS f, LAST_INSERT_ID()");
        let s = &k.statements[0];
        assert_eq!(s.counters.len(), 2);
        assert!(s.reads_insert_id);
        assert_eq!(
            s.value_columns,
            Some(vec![
                ValueColumn::Counter(Counter::RowCount),
                ValueColumn::Counter(Counter::FoundRows),
                ValueColumn::Server
            ])
        );
        assert!(
            c("SELECT ROW_COUNT() a, FOUND_ROWS() AS `b`").statements[0]
                .value_columns
                .is_some()
        );
        assert!(
            c("SELECT ROW_COUNT() + 1").statements[0]
                .value_columns
                .is_none()
        );
        assert!(
            c("SELECT LAST_INSERT_ID()").statements[0]
                .value_columns
                .is_none()
        );
        assert_eq!(
            c("SELECT @@warning_count, @@session.error_count AS e").statements[0].value_columns,
            Some(vec![ValueColumn::WarningCount, ValueColumn::ErrorCount])
        );
        assert_eq!(
            c("SHOW COUNT(*) ERRORS").statements[0].value_columns,
            Some(vec![ValueColumn::ErrorCount])
        );
        assert!(c("SELECT LAST_INSERT_ID(5)").statements[0].sets_insert_id);
        assert!(c("SELECT @@session.identity").statements[0].reads_insert_id);
        assert!(c("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1").statements[0].calc_found_rows);
        // Inside a comment the server skips: no call.
        let k = c("SELECT LAST_INSERT_ID() AS a, ROW_COUNT() /*M!999999 , @u := NULL */ AS b");
        assert_eq!(k.statements[0].counters.len(), 1);
        assert!(k.statements[0].effects.is_empty());
    }

    #[test]
    fn mode_dependent_text_is_read_in_the_sessions_mode() {
        // With backslash escapes the string runs to the end; without, GET_LOCK runs.
        let sql = r"SELECT 'a\', GET_LOCK('x', 0) -- '";
        let k = c(sql);
        assert!(
            k.certain && k.hidden_danger,
            "read as a string, but a lock word hides in it"
        );
        assert!(adds(sql).is_empty());
        let nbe = LexMode {
            backslash_escapes: false,
            ..MODE
        };
        assert_eq!(
            classify(sql.as_bytes(), nbe, true).statements[0]
                .adds()
                .collect::<Vec<_>>(),
            vec![PinReason::NamedLock]
        );
        // A mode change inside the query makes the rest uncertain, with every reading kept.
        let k = c(r"SET sql_mode = 'NO_BACKSLASH_ESCAPES'; SELECT 'a\', GET_LOCK('x', 0) -- '");
        assert!(!k.certain);
        assert!(k.any(|s| s.adds().any(|r| r == PinReason::NamedLock)));
        assert!(c("SELECT 'plain', 1").certain);
        assert!(!c("SELECT 'plain', 1").hidden_danger);
        assert!(c("SELECT 1 /* GET_LOCK */").hidden_danger);
        assert!(!c("SELECT GET_LOCK('a', 0), @@tx_isolation").hidden_danger);
        assert!(
            !classify(b"SELECT 1", MODE, false).certain,
            "incomplete text"
        );
        assert!(!c("SELECT 'open").certain);
    }
}
