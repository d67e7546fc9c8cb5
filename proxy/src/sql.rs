//! A light look at statement text, before it runs: what the server's session tracking will not
//! report (named locks, `LOCK TABLES`, `SELECT ... INTO @x`) and the statements that clear it,
//! calls of `LAST_INSERT_ID()`, `ROW_COUNT()` and `FOUND_ROWS()`, and `KILL`, which Sluice maps
//! to backend threads. Not a parser: a lexer that knows strings, comments and executable
//! comments.

use crate::session::{PinEffect, PinReason, PinSet};

/// What Sluice must know about a query before relaying it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Classification {
    /// State the statement creates or clears, in order.
    pub effects: Vec<PinEffect>,
    /// Set when the query is a `KILL` statement.
    pub kill: Option<Kill>,
    /// `SET TRANSACTION ...` without a scope: it applies to the next transaction only, which
    /// must run on the same backend connection.
    pub next_transaction: bool,
    /// Reads `LAST_INSERT_ID()` (or `@@last_insert_id`, `@@identity`).
    pub uses_last_insert_id: bool,
    /// A `SELECT SQL_CALC_FOUND_ROWS`, whose `FOUND_ROWS()` Sluice cannot count itself.
    pub calc_found_rows: bool,
    /// Calls of `ROW_COUNT()` and `FOUND_ROWS()`, which Sluice answers for the session.
    pub counters: Vec<CounterCall>,
    /// A `CALL`: whatever state change it reports may include user variables or temporary
    /// tables, which session tracking does not name.
    pub is_call: bool,
}

impl Classification {
    /// The reasons the statement pins for (ignoring what it clears).
    pub fn pins(&self) -> PinSet {
        let mut set = PinSet::default();
        for e in &self.effects {
            if let PinEffect::Add(r, _) = e {
                set.insert(*r);
            }
        }
        set
    }
}

/// A session counter function whose value depends on the session's previous statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    RowCount,
    FoundRows,
}

/// Where a counter function is called in the statement text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterCall {
    pub counter: Counter,
    /// Byte range of the call, from the function name to its closing parenthesis.
    pub start: usize,
    pub end: usize,
    /// The call is a whole item of the top select list without an alias: the substituted value
    /// keeps the call's text as its column name.
    pub alias: bool,
}

/// Rewrites `sql` with the session's counter values in place of the calls in `calls`.
pub fn substitute_counters(
    sql: &[u8],
    calls: &[CounterCall],
    row_count: i64,
    found_rows: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(sql.len() + 48 * calls.len());
    let mut at = 0;
    for c in calls {
        // Calls come in text order; anything else is skipped rather than trusted.
        let (Some(text), Some(before)) = (sql.get(c.start..c.end), sql.get(at..c.start)) else {
            continue;
        };
        out.extend_from_slice(before);
        // IFNULL with a BIGINT makes the column BIGINT, as the functions' own are; a bare
        // literal would be an INT.
        let value = match c.counter {
            Counter::RowCount => format!("IFNULL({row_count}, {})", i64::MAX),
            Counter::FoundRows => format!("IFNULL({found_rows}, {})", i64::MAX),
        };
        out.extend_from_slice(value.as_bytes());
        if c.alias {
            out.extend_from_slice(b" AS `");
            for &b in text {
                if b == b'`' {
                    out.push(b'`');
                }
                out.push(b);
            }
            out.push(b'`');
        }
        at = c.end;
    }
    out.extend_from_slice(sql.get(at..).unwrap_or_default());
    out
}

/// A `KILL` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kill {
    /// `KILL [HARD|SOFT] QUERY <id>`: stop the statement that session is running.
    Query {
        id: u64,
        modifier: Option<&'static str>,
    },
    /// `KILL [HARD|SOFT] [CONNECTION] <id>`: end that session.
    Connection {
        id: u64,
        modifier: Option<&'static str>,
    },
    /// A form Sluice cannot map (the text says which).
    Unsupported(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    /// A keyword or identifier (backquotes removed).
    Word(&'a [u8]),
    /// A string literal's raw content.
    Quoted(&'a [u8]),
    /// `@name`: the name.
    UserVar(&'a [u8]),
    /// `@@[scope.]name`: what follows the `@@`.
    SysVar(&'a [u8]),
    Assign,
    Number(&'a [u8]),
    Semicolon,
    Comma,
    Dot,
    LParen,
    RParen,
    Other,
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    in_exec_comment: bool,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

impl<'a> Lexer<'a> {
    fn new(s: &'a [u8]) -> Self {
        Lexer {
            s,
            i: 0,
            in_exec_comment: false,
        }
    }

    fn peek(&self, ahead: usize) -> u8 {
        self.s.get(self.i + ahead).copied().unwrap_or(0)
    }

    /// Skips a quoted string starting at the current position; returns its raw content.
    fn skip_quoted(&mut self, q: u8) -> &'a [u8] {
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() {
            let b = self.s[self.i];
            if b == b'\\' && q != b'`' {
                self.i += 2;
            } else if b == q {
                if self.peek(1) == q {
                    self.i += 2;
                } else {
                    self.i += 1;
                    return self.s.get(start..self.i - 1).unwrap_or_default();
                }
            } else {
                self.i += 1;
            }
        }
        self.s.get(start..).unwrap_or_default()
    }

    /// Skips whitespace and comments; enters `/*! ... */` executable comments, whose content runs.
    fn skip_trivia(&mut self) {
        loop {
            let b = self.peek(0);
            if b.is_ascii_whitespace() {
                self.i += 1;
            } else if b == b'/' && self.peek(1) == b'*' {
                if self.peek(2) == b'!' || (self.peek(2) == b'M' && self.peek(3) == b'!') {
                    self.i += if self.peek(2) == b'!' { 3 } else { 4 };
                    while self.peek(0).is_ascii_digit() {
                        self.i += 1;
                    }
                    self.in_exec_comment = true;
                } else {
                    match self.s[self.i + 2..].windows(2).position(|w| w == b"*/") {
                        Some(p) => self.i += 2 + p + 2,
                        None => self.i = self.s.len(),
                    }
                }
            } else if b == b'*' && self.peek(1) == b'/' && self.in_exec_comment {
                self.i += 2;
                self.in_exec_comment = false;
            } else if b == b'#'
                || (b == b'-'
                    && self.peek(1) == b'-'
                    && (self.peek(2).is_ascii_whitespace() || self.peek(2) == 0))
            {
                match self.s[self.i..].iter().position(|&c| c == b'\n') {
                    Some(p) => self.i += p + 1,
                    None => self.i = self.s.len(),
                }
            } else {
                return;
            }
        }
    }

    /// The next token and where it starts.
    fn next(&mut self) -> Option<(Tok<'a>, usize)> {
        self.skip_trivia();
        let b = *self.s.get(self.i)?;
        let start = self.i;
        let tok = match b {
            b'\'' | b'"' => Tok::Quoted(self.skip_quoted(b)),
            b'`' => Tok::Word(self.skip_quoted(b)),
            b'@' if self.peek(1) == b'@' => {
                self.i += 2;
                while is_word_byte(self.peek(0)) || self.peek(0) == b'.' {
                    self.i += 1;
                }
                Tok::SysVar(self.s.get(start + 2..self.i).unwrap_or_default())
            }
            b'@' => {
                self.i += 1;
                match self.peek(0) {
                    q @ (b'\'' | b'"' | b'`') => Tok::UserVar(self.skip_quoted(q)),
                    _ => {
                        while is_word_byte(self.peek(0)) || self.peek(0) == b'.' {
                            self.i += 1;
                        }
                        Tok::UserVar(self.s.get(start + 1..self.i).unwrap_or_default())
                    }
                }
            }
            b':' if self.peek(1) == b'=' => {
                self.i += 2;
                Tok::Assign
            }
            b';' => {
                self.i += 1;
                Tok::Semicolon
            }
            b',' => {
                self.i += 1;
                Tok::Comma
            }
            b'.' => {
                self.i += 1;
                Tok::Dot
            }
            b'(' => {
                self.i += 1;
                Tok::LParen
            }
            b')' => {
                self.i += 1;
                Tok::RParen
            }
            b if b.is_ascii_digit() => {
                while is_word_byte(self.peek(0)) || self.peek(0) == b'.' {
                    self.i += 1;
                }
                let text = &self.s[start..self.i];
                if text.iter().all(u8::is_ascii_digit) {
                    Tok::Number(text)
                } else {
                    Tok::Word(text)
                }
            }
            b if is_word_byte(b) => {
                while is_word_byte(self.peek(0)) {
                    self.i += 1;
                }
                Tok::Word(&self.s[start..self.i])
            }
            _ => {
                self.i += 1;
                Tok::Other
            }
        };
        Some((tok, start))
    }
}

fn is(tok: Option<&Tok<'_>>, kw: &str) -> bool {
    matches!(tok, Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw.as_bytes()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Looks at a COM_QUERY's text (or its first part, for very large queries).
pub fn classify(sql: &[u8]) -> Classification {
    let mut out = Classification::default();
    let mut lexer = Lexer::new(sql);
    let mut statements = 0;
    let mut toks = Vec::new();
    let mut spans = Vec::new();
    loop {
        toks.clear();
        spans.clear();
        let mut ended = true;
        while let Some((t, start)) = lexer.next() {
            if t == Tok::Semicolon {
                ended = false;
                break;
            }
            toks.push(t);
            spans.push((start, lexer.i));
        }
        if !toks.is_empty() {
            statements += 1;
            classify_statement(&toks, &spans, &mut out);
        }
        if ended {
            break;
        }
    }
    if statements > 1 && out.kill.is_some() {
        out.kill = Some(Kill::Unsupported("KILL inside a multi-statement query"));
    }
    out
}

/// A possibly qualified name (`t` or `db.t`) starting at `toks[i]`.
fn qualified_name(toks: &[Tok<'_>], i: usize) -> Option<String> {
    let Some(Tok::Word(first)) = toks.get(i) else {
        return None;
    };
    match (toks.get(i + 1), toks.get(i + 2)) {
        (Some(Tok::Dot), Some(Tok::Word(second))) => {
            Some(format!("{}.{}", text(first), text(second)))
        }
        _ => Some(text(first)),
    }
}

/// Index of the first token after `TABLE [IF [NOT] EXISTS]`.
fn after_table_keyword(toks: &[Tok<'_>]) -> Option<usize> {
    let mut i = toks.iter().position(|t| is(Some(t), "TABLE"))? + 1;
    if is(toks.get(i), "IF") {
        i += 1;
        if is(toks.get(i), "NOT") {
            i += 1;
        }
        if is(toks.get(i), "EXISTS") {
            i += 1;
        }
    }
    Some(i)
}

fn classify_statement(toks: &[Tok<'_>], spans: &[(usize, usize)], out: &mut Classification) {
    let first = toks.first();
    let second = toks.get(1);
    let add = |out: &mut Classification, r, name: Option<String>| {
        out.effects.push(PinEffect::Add(r, name));
    };
    let remove = |out: &mut Classification, r, name: Option<String>| {
        out.effects.push(PinEffect::Remove(r, name));
    };
    if is(first, "SET") {
        classify_set(&toks[1..], out);
    } else if is(first, "LOCK") {
        add(out, PinReason::TableLock, None);
    } else if is(first, "UNLOCK") {
        remove(out, PinReason::TableLock, None);
    } else if is(first, "BACKUP") {
        // BACKUP STAGE START ... END, BACKUP LOCK ... UNLOCK (MariaDB).
        if is(toks.last(), "END") || is(second, "UNLOCK") {
            remove(out, PinReason::TableLock, None);
        } else {
            add(out, PinReason::TableLock, None);
        }
    } else if is(first, "FLUSH") {
        if toks
            .windows(3)
            .any(|w| is(Some(&w[0]), "WITH") && is(Some(&w[1]), "READ") && is(Some(&w[2]), "LOCK"))
            || toks
                .windows(2)
                .any(|w| is(Some(&w[0]), "FOR") && is(Some(&w[1]), "EXPORT"))
        {
            add(out, PinReason::TableLock, None);
        }
    } else if is(first, "PREPARE") {
        let name = match second {
            Some(Tok::Word(n)) => Some(text(n)),
            _ => None,
        };
        add(out, PinReason::SqlPrepare, name);
    } else if (is(first, "DEALLOCATE") || is(first, "DROP")) && is(second, "PREPARE") {
        if let Some(Tok::Word(n)) = toks.get(2) {
            remove(out, PinReason::SqlPrepare, Some(text(n)));
        }
    } else if is(first, "XA") {
        if is(second, "START") || is(second, "BEGIN") {
            add(out, PinReason::Xa, None);
        } else if is(second, "COMMIT") || is(second, "ROLLBACK") {
            remove(out, PinReason::Xa, None);
        }
    } else if is(first, "HANDLER") {
        if let Some(table) = qualified_name(toks, 1) {
            let rest = toks.iter().skip(2);
            let mut words = rest.skip_while(|t| !is(Some(t), "OPEN") && !is(Some(t), "CLOSE"));
            match words.next() {
                Some(t) if is(Some(t), "OPEN") => {
                    let alias = match (words.next(), words.next()) {
                        (Some(a), Some(Tok::Word(n))) if is(Some(a), "AS") => Some(text(n)),
                        (Some(Tok::Word(n)), _) => Some(text(n)),
                        _ => None,
                    };
                    add(out, PinReason::Handler, Some(alias.unwrap_or(table)));
                }
                Some(_) => remove(out, PinReason::Handler, Some(table)),
                None => {}
            }
        }
    } else if is(first, "CREATE") {
        let temporary = toks
            .iter()
            .take_while(|t| !is(Some(t), "TABLE"))
            .any(|t| is(Some(t), "TEMPORARY"));
        if temporary {
            let name = after_table_keyword(toks).and_then(|i| qualified_name(toks, i));
            add(out, PinReason::TemporaryTable, name);
        }
    } else if is(first, "DROP") {
        // DROP [TEMPORARY] TABLE a, b: a temporary table hides a base table of the same name.
        let is_table = toks
            .iter()
            .take(3)
            .any(|t| is(Some(t), "TABLE") || is(Some(t), "TABLES"));
        if is_table {
            let mut i = toks
                .iter()
                .position(|t| is(Some(t), "TABLE") || is(Some(t), "TABLES"))
                .map_or(toks.len(), |p| p + 1);
            if is(toks.get(i), "IF") && is(toks.get(i + 1), "EXISTS") {
                i += 2;
            }
            while let Some(name) = qualified_name(toks, i) {
                remove(out, PinReason::TemporaryTable, Some(name));
                i += if toks.get(i + 1) == Some(&Tok::Dot) {
                    3
                } else {
                    1
                };
                if toks.get(i) != Some(&Tok::Comma) {
                    break;
                }
                i += 1;
            }
        }
    } else if is(first, "KILL") {
        out.kill = Some(classify_kill(&toks[1..]));
    } else if is(first, "CALL") {
        out.is_call = true;
    }
    // Anywhere in a statement: user variable assignments, named locks, counter functions.
    let top_select = is(first, "SELECT");
    let mut depth = 0i32;
    let mut in_select_list = top_select;
    let mut into = false;
    for (i, t) in toks.iter().enumerate() {
        let next = toks.get(i + 1);
        match *t {
            Tok::LParen => depth += 1,
            Tok::RParen => depth -= 1,
            // A SET target is classify_set's business (`SET @x := NULL` clears @x).
            Tok::UserVar(_)
                if is(first, "SET") && (i == 1 || toks.get(i - 1) == Some(&Tok::Comma)) => {}
            Tok::UserVar(name) if next == Some(&Tok::Assign) || into => {
                add(out, PinReason::UserVariable, Some(text(name)));
            }
            Tok::SysVar(name) => {
                let name = name.rsplit(|&b| b == b'.').next().unwrap_or_default();
                if name.eq_ignore_ascii_case(b"last_insert_id")
                    || name.eq_ignore_ascii_case(b"identity")
                {
                    out.uses_last_insert_id = true;
                }
            }
            Tok::Word(w) if next == Some(&Tok::LParen) => {
                let arg = toks.get(i + 2);
                let empty_call = arg == Some(&Tok::RParen);
                if w.eq_ignore_ascii_case(b"GET_LOCK") {
                    let name = match arg {
                        Some(Tok::Quoted(n)) => Some(text(n)),
                        _ => None,
                    };
                    add(out, PinReason::NamedLock, name);
                } else if w.eq_ignore_ascii_case(b"RELEASE_LOCK") {
                    if let Some(Tok::Quoted(n)) = arg {
                        remove(out, PinReason::NamedLock, Some(text(n)));
                    }
                } else if w.eq_ignore_ascii_case(b"RELEASE_ALL_LOCKS") {
                    remove(out, PinReason::NamedLock, None);
                } else if w.eq_ignore_ascii_case(b"LAST_INSERT_ID") && empty_call {
                    out.uses_last_insert_id = true;
                } else if empty_call
                    && (w.eq_ignore_ascii_case(b"ROW_COUNT")
                        || w.eq_ignore_ascii_case(b"FOUND_ROWS"))
                {
                    let counter = if w.eq_ignore_ascii_case(b"ROW_COUNT") {
                        Counter::RowCount
                    } else {
                        Counter::FoundRows
                    };
                    let before = i.checked_sub(1).and_then(|p| toks.get(p));
                    let item_start = before == Some(&Tok::Comma)
                        || before.is_some_and(|b| SELECT_MODIFIERS.iter().any(|k| is(Some(b), k)));
                    let after = toks.get(i + 3);
                    let item_end = after.is_none()
                        || after == Some(&Tok::Comma)
                        || after.is_some_and(|a| ITEM_END.iter().any(|k| is(Some(a), k)));
                    let start = spans.get(i).map_or(0, |s| s.0);
                    let end = spans.get(i + 2).map_or(start, |s| s.1);
                    out.counters.push(CounterCall {
                        counter,
                        start,
                        end,
                        alias: in_select_list && depth == 0 && item_start && item_end,
                    });
                }
            }
            Tok::Word(w) => {
                if depth == 0
                    && (w.eq_ignore_ascii_case(b"FROM") || w.eq_ignore_ascii_case(b"INTO"))
                {
                    in_select_list = false;
                }
                if w.eq_ignore_ascii_case(b"SQL_CALC_FOUND_ROWS") {
                    out.calc_found_rows = true;
                }
                into = w.eq_ignore_ascii_case(b"INTO");
                continue;
            }
            Tok::Comma if into => continue,
            _ => {}
        }
        if !matches!(t, Tok::UserVar(_)) {
            into = false;
        }
    }
}

/// Words that may come right before the first item of a select list.
const SELECT_MODIFIERS: &[&str] = &[
    "SELECT",
    "ALL",
    "DISTINCT",
    "DISTINCTROW",
    "HIGH_PRIORITY",
    "STRAIGHT_JOIN",
    "SQL_SMALL_RESULT",
    "SQL_BIG_RESULT",
    "SQL_BUFFER_RESULT",
    "SQL_CACHE",
    "SQL_NO_CACHE",
    "SQL_CALC_FOUND_ROWS",
];

/// Words that end a select-list item (anything else after it is an alias or an operator).
const ITEM_END: &[&str] = &[
    "FROM",
    "WHERE",
    "GROUP",
    "HAVING",
    "ORDER",
    "LIMIT",
    "INTO",
    "UNION",
    "FOR",
    "LOCK",
    "WINDOW",
    "EXCEPT",
    "INTERSECT",
];

/// `SET` assignments: user variables pin (or unpin, when set to NULL); system variables are
/// left to session tracking, except what it does not report.
fn classify_set(toks: &[Tok<'_>], out: &mut Classification) {
    let mut depth = 0i32;
    let mut at_target = true;
    let mut i = 0;
    while let Some(t) = toks.get(i) {
        if at_target {
            at_target = false;
            let scoped = is(Some(t), "SESSION") || is(Some(t), "LOCAL") || is(Some(t), "GLOBAL");
            let target = if scoped {
                i += 1;
                toks.get(i).copied().unwrap_or(Tok::Other)
            } else {
                *t
            };
            match target {
                Tok::UserVar(name) => {
                    // `SET @x = NULL` (alone, up to the next comma) clears the variable.
                    let value_is_null = matches!(toks.get(i + 1), Some(Tok::Assign | Tok::Other))
                        && is(toks.get(i + 2), "NULL")
                        && matches!(toks.get(i + 3), None | Some(Tok::Comma));
                    let effect = if value_is_null {
                        PinEffect::Remove(PinReason::UserVariable, Some(text(name)))
                    } else {
                        PinEffect::Add(PinReason::UserVariable, Some(text(name)))
                    };
                    out.effects.push(effect);
                }
                // Without a scope, it sets the next transaction only; with SESSION, session
                // tracking reports the variables it changes.
                Tok::Word(w) if w.eq_ignore_ascii_case(b"TRANSACTION") && !scoped => {
                    out.next_transaction = true;
                    return;
                }
                Tok::Word(w) if w.eq_ignore_ascii_case(b"TRANSACTION") => return,
                // Active roles are session state that tracking does not report.
                Tok::Word(w) if w.eq_ignore_ascii_case(b"ROLE") => {
                    out.effects
                        .push(PinEffect::Add(PinReason::SessionVariable, None));
                }
                Tok::Word(w) if w.eq_ignore_ascii_case(b"STATEMENT") => return,
                _ => {}
            }
        }
        match t {
            Tok::LParen => depth += 1,
            Tok::RParen => depth -= 1,
            Tok::Comma if depth == 0 => at_target = true,
            _ => {}
        }
        i += 1;
    }
}

fn classify_kill(toks: &[Tok<'_>]) -> Kill {
    let mut i = 0;
    let modifier = if is(toks.first(), "HARD") {
        i += 1;
        Some("HARD")
    } else if is(toks.first(), "SOFT") {
        i += 1;
        Some("SOFT")
    } else {
        None
    };
    let query = if is(toks.get(i), "QUERY") {
        i += 1;
        true
    } else {
        if is(toks.get(i), "CONNECTION") {
            i += 1;
        }
        false
    };
    if is(toks.get(i), "ID") {
        return Kill::Unsupported(
            "KILL QUERY ID (kill by query id); use KILL QUERY <connection id>",
        );
    }
    if is(toks.get(i), "USER") {
        return Kill::Unsupported("KILL USER; use KILL [QUERY] <connection id>");
    }
    match (toks.get(i), toks.len() == i + 1) {
        (Some(Tok::Number(n)), true) => {
            match std::str::from_utf8(n).ok().and_then(|n| n.parse().ok()) {
                Some(id) if query => Kill::Query { id, modifier },
                Some(id) => Kill::Connection { id, modifier },
                None => Kill::Unsupported("KILL with a connection id out of range"),
            }
        }
        _ => Kill::Unsupported("KILL with an expression; give the connection id as a number"),
    }
}

/// A statement's digest: its text with every literal replaced by `?`, comments dropped,
/// spacing and letter case normalized, and a hash of that text. Statements that differ only in
/// their values share a digest, so it can be logged (and grouped) without logging any value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// FNV-1a of the whole normalized text.
    pub hash: u64,
    /// The normalized text, cut at [`DIGEST_TEXT_MAX`] bytes.
    pub text: String,
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.hash)
    }
}

/// Longest normalized text a [`Digest`] keeps (its hash covers all of it).
pub const DIGEST_TEXT_MAX: usize = 200;

/// The digest of a COM_QUERY's text (see [`Digest`]).
pub fn digest(sql: &[u8]) -> Digest {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Last {
        Start,
        Word,
        Literal,
        Comma,
        Open,
        Glue,
        Other,
    }
    let mut text = String::with_capacity(sql.len().min(256));
    let mut last = Last::Start;
    // Where the text stood before the last ", ": a list of literals collapses to one `?`.
    let mut before_comma = 0usize;
    let mut lexer = Lexer::new(sql);
    let mut prev_end = 0usize;
    while let Some((tok, start)) = lexer.next() {
        // `f(x)` stays a call; `IN (x)` keeps its space.
        let adjacent = start == prev_end;
        prev_end = lexer.i;
        let (piece, kind): (std::borrow::Cow<'_, str>, Last) = match tok {
            Tok::Quoted(_) | Tok::Number(_) => ("?".into(), Last::Literal),
            // 0x1F, 1e5, 12.5: literals the lexer reads as words.
            Tok::Word(w) if w.first().is_some_and(u8::is_ascii_digit) => {
                ("?".into(), Last::Literal)
            }
            Tok::Word(w) => (
                String::from_utf8_lossy(w).to_ascii_lowercase().into(),
                Last::Word,
            ),
            Tok::UserVar(n) => (
                format!("@{}", String::from_utf8_lossy(n)).into(),
                Last::Word,
            ),
            Tok::SysVar(n) => (
                format!("@@{}", String::from_utf8_lossy(n).to_ascii_lowercase()).into(),
                Last::Word,
            ),
            Tok::Assign => (":=".into(), Last::Other),
            Tok::Semicolon => (";".into(), Last::Other),
            Tok::Comma => (",".into(), Last::Comma),
            Tok::Dot => (".".into(), Last::Glue),
            Tok::LParen => ("(".into(), Last::Open),
            Tok::RParen => (")".into(), Last::Other),
            Tok::Other => {
                let b = sql.get(start).copied().unwrap_or(b'?');
                // X'..' and b'..' arrive as a word and a string: the string is the literal.
                let c = if b.is_ascii_graphic() { b as char } else { '?' };
                (c.to_string().into(), Last::Other)
            }
        };
        if kind == Last::Literal && last == Last::Comma && text.ends_with("?,") {
            // `IN (?, ?, ?)` and `IN (?, ?)` are one statement shape.
            text.truncate(before_comma);
            last = Last::Literal;
            continue;
        }
        let glued = matches!(last, Last::Start | Last::Open | Last::Glue)
            || matches!(kind, Last::Comma | Last::Glue)
            || piece == ")"
            || (piece == "(" && last == Last::Word && adjacent);
        if !glued {
            text.push(' ');
        }
        if kind == Last::Comma {
            before_comma = text.len();
        }
        text.push_str(&piece);
        last = kind;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    if text.len() > DIGEST_TEXT_MAX {
        let mut cut = DIGEST_TEXT_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    Digest { hash, text }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pins(sql: &str) -> Vec<PinReason> {
        classify(sql.as_bytes()).pins().iter().collect()
    }

    #[test]
    fn user_variables_pin_however_they_are_written() {
        for sql in [
            "SET @x = 1",
            "set @`odd name` := 2",
            "SELECT 1 INTO @y",
            "SELECT @z := 5",
            "DO @a:=1",
            "SET NAMES utf8mb4, @x = 3",
            "/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE */",
        ] {
            assert_eq!(pins(sql), vec![PinReason::UserVariable], "{sql}");
        }
    }

    #[test]
    fn reading_variables_or_mentions_in_strings_do_not_pin() {
        for sql in [
            "SELECT @x",
            "SELECT '@x := 1', \"GET_LOCK(\"",
            "SELECT 1 /* SET @x = 1 */",
            "SELECT 1 -- GET_LOCK('a', 1)\n",
            "SELECT 1 # LOCK TABLES t READ",
            "SET NAMES utf8mb4",
            "SET autocommit = 0",
            "SET SESSION sql_mode = 'ANSI'",
            "SET STATEMENT max_statement_time=1 FOR SELECT @x := 1",
            "INSERT INTO t VALUES (1)",
            "SELECT get_lock_count FROM t",
            "UNLOCK TABLES",
        ] {
            let p = pins(sql);
            // SET STATEMENT ... FOR is still a SELECT with an assignment inside.
            if sql.starts_with("SET STATEMENT") {
                assert_eq!(p, vec![PinReason::UserVariable]);
            } else {
                assert!(p.is_empty(), "{sql}: {p:?}");
            }
        }
    }

    #[test]
    fn each_pin_reason_is_recognised() {
        let cases = [
            ("DO GET_LOCK('a', 0)", PinReason::NamedLock),
            ("select get_lock ('a', 0)", PinReason::NamedLock),
            ("LOCK TABLES t WRITE", PinReason::TableLock),
            ("FLUSH TABLES WITH READ LOCK", PinReason::TableLock),
            (
                "CREATE TEMPORARY TABLE t (a int)",
                PinReason::TemporaryTable,
            ),
            (
                "create or replace temporary table t (a int)",
                PinReason::TemporaryTable,
            ),
            ("PREPARE s FROM 'SELECT 1'", PinReason::SqlPrepare),
            ("XA START 'x'", PinReason::Xa),
            ("HANDLER t OPEN", PinReason::Handler),
            ("SET ROLE r", PinReason::SessionVariable),
        ];
        for (sql, reason) in cases {
            assert_eq!(pins(sql), vec![reason], "{sql}");
        }
        assert!(pins("CREATE TABLE t (a int)").is_empty());
        assert_eq!(pins("SELECT 1; SET @x=1; LOCK TABLES t READ").len(), 2);
    }

    fn effects(sql: &str) -> Vec<PinEffect> {
        classify(sql.as_bytes()).effects
    }

    fn add(r: PinReason, n: &str) -> PinEffect {
        PinEffect::Add(r, Some(n.to_string()))
    }

    fn remove(r: PinReason, n: Option<&str>) -> PinEffect {
        PinEffect::Remove(r, n.map(str::to_string))
    }

    #[test]
    fn state_is_named_and_cleared_by_its_statements() {
        use PinReason::*;
        let cases: Vec<(&str, Vec<PinEffect>)> = vec![
            (
                "SET @a = 1, @b := NULL",
                vec![add(UserVariable, "a"), remove(UserVariable, Some("b"))],
            ),
            (
                "SELECT 1, 2 INTO @x, @y",
                vec![add(UserVariable, "x"), add(UserVariable, "y")],
            ),
            ("SET @x = NULL + 1", vec![add(UserVariable, "x")]),
            (
                "CREATE TEMPORARY TABLE IF NOT EXISTS db.t (a int)",
                vec![add(TemporaryTable, "db.t")],
            ),
            (
                "DROP TEMPORARY TABLE IF EXISTS t, db.u",
                vec![
                    remove(TemporaryTable, Some("t")),
                    remove(TemporaryTable, Some("db.u")),
                ],
            ),
            ("DROP TABLE t", vec![remove(TemporaryTable, Some("t"))]),
            (
                "SELECT GET_LOCK('l1', 5), RELEASE_LOCK('l0')",
                vec![add(NamedLock, "l1"), remove(NamedLock, Some("l0"))],
            ),
            ("DO RELEASE_ALL_LOCKS()", vec![remove(NamedLock, None)]),
            ("LOCK TABLES t READ", vec![PinEffect::Add(TableLock, None)]),
            ("UNLOCK TABLES", vec![remove(TableLock, None)]),
            ("BACKUP STAGE START", vec![PinEffect::Add(TableLock, None)]),
            ("BACKUP STAGE END", vec![remove(TableLock, None)]),
            ("PREPARE s1 FROM 'SELECT 1'", vec![add(SqlPrepare, "s1")]),
            (
                "DEALLOCATE PREPARE s1",
                vec![remove(SqlPrepare, Some("s1"))],
            ),
            ("DROP PREPARE s1", vec![remove(SqlPrepare, Some("s1"))]),
            ("XA START 'x'", vec![PinEffect::Add(Xa, None)]),
            ("XA COMMIT 'x'", vec![remove(Xa, None)]),
            ("XA RECOVER", vec![]),
            ("HANDLER t OPEN AS h", vec![add(Handler, "h")]),
            ("HANDLER t OPEN", vec![add(Handler, "t")]),
            ("HANDLER h CLOSE", vec![remove(Handler, Some("h"))]),
            ("HANDLER h READ FIRST", vec![]),
        ];
        for (sql, want) in cases {
            assert_eq!(effects(sql), want, "{sql}");
        }
    }

    #[test]
    fn transaction_characteristics() {
        let c = classify(b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE");
        assert!(c.next_transaction && c.effects.is_empty());
        let c = classify(b"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED");
        assert!(!c.next_transaction && c.effects.is_empty());
    }

    #[test]
    fn counter_functions_are_found_and_substituted() {
        let c = classify(b"SELECT LAST_INSERT_ID()");
        assert!(c.uses_last_insert_id && c.counters.is_empty());
        assert!(classify(b"SELECT @@session.identity").uses_last_insert_id);
        assert!(!classify(b"SELECT LAST_INSERT_ID(5)").uses_last_insert_id);
        assert!(classify(b"SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1").calc_found_rows);

        let sub = |sql: &str| {
            let c = classify(sql.as_bytes());
            String::from_utf8(substitute_counters(sql.as_bytes(), &c.counters, -1, 7)).unwrap()
        };
        assert_eq!(
            sub("SELECT ROW_COUNT()"),
            "SELECT IFNULL(-1, 9223372036854775807) AS `ROW_COUNT()`"
        );
        assert_eq!(
            sub("select found_rows() n, row_count ( ) + 1"),
            "select IFNULL(7, 9223372036854775807) n, IFNULL(-1, 9223372036854775807) + 1"
        );
        assert_eq!(
            sub("SELECT a, FOUND_ROWS() FROM t WHERE b = ROW_COUNT()"),
            "SELECT a, IFNULL(7, 9223372036854775807) AS `FOUND_ROWS()` FROM t WHERE b = IFNULL(-1, 9223372036854775807)"
        );
        assert_eq!(
            sub("INSERT INTO log VALUES (ROW_COUNT())"),
            "INSERT INTO log VALUES (IFNULL(-1, 9223372036854775807))"
        );
        assert_eq!(sub("SELECT 'ROW_COUNT()'"), "SELECT 'ROW_COUNT()'");
    }

    #[test]
    fn kill_forms() {
        let k = |s: &str| classify(s.as_bytes()).kill;
        assert_eq!(
            k("KILL 12"),
            Some(Kill::Connection {
                id: 12,
                modifier: None
            })
        );
        assert_eq!(
            k("kill connection 7"),
            Some(Kill::Connection {
                id: 7,
                modifier: None
            })
        );
        assert_eq!(
            k("KILL QUERY 9"),
            Some(Kill::Query {
                id: 9,
                modifier: None
            })
        );
        assert_eq!(
            k("KILL HARD QUERY 9"),
            Some(Kill::Query {
                id: 9,
                modifier: Some("HARD")
            })
        );
        assert!(matches!(k("KILL QUERY ID 9"), Some(Kill::Unsupported(_))));
        assert!(matches!(k("KILL USER app"), Some(Kill::Unsupported(_))));
        assert!(matches!(
            k("KILL CONNECTION_ID()"),
            Some(Kill::Unsupported(_))
        ));
        assert!(matches!(k("SELECT 1; KILL 3"), Some(Kill::Unsupported(_))));
        assert_eq!(k("SELECT 'KILL 3'"), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let samples: [&[u8]; 8] = [
            b"'",
            b"/*",
            b"/*!",
            b"@",
            b"@'",
            b"KILL",
            b"\xff\xfe@\x80",
            b"`",
        ];
        for s in samples {
            classify(s);
        }
        let mut seed = 0x2545F4914F6CDD1Du64;
        let alphabet = b"@:=;'\"`/*!-#\\ \nSETKILLQUERYGET_LOCK(),0123";
        for _ in 0..2000 {
            let len = (seed % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            classify(&bytes);
        }
    }

    #[test]
    fn digests_hide_values_and_group_statements() {
        let a = digest(b"SELECT * FROM t WHERE a = 5 AND b = 'hunter2' -- note");
        assert_eq!(a.text, "select * from t where a = ? and b = ?");
        let b = digest(b"select *  from t /* other */ where a=6 and b=\"x\"");
        assert_eq!(a, b);
        assert_ne!(a.hash, digest(b"SELECT * FROM t WHERE a = 5").hash);
        let d = digest(b"SET @secret := 0x5eC1e7, @n = 1e9, @s = X'41'");
        assert!(
            !d.text.contains("5eC1e7") && !d.text.contains("41"),
            "{}",
            d.text
        );
        assert_eq!(
            digest(b"SELECT a FROM t WHERE id IN (1, 2, 3)").text,
            "select a from t where id in (?)"
        );
        assert_eq!(
            digest(b"SELECT a FROM t WHERE id IN (1,2)"),
            digest(b"SELECT a FROM t WHERE id IN (7)")
        );
        assert_eq!(
            digest(b"SELECT GET_LOCK('l', 10), db.f(x)").text,
            "select get_lock(?), db.f(x)"
        );
        let long = format!("SELECT {}", "a, ".repeat(200));
        assert!(digest(long.as_bytes()).text.len() <= DIGEST_TEXT_MAX + 3);
        assert_eq!(digest(b"").text, "");
        assert_eq!(format!("{}", digest(b"")).len(), 16);
    }
}
