//! A light look at statement text, before it runs: what the server's session tracking will not
//! report (named locks, `LOCK TABLES`, `SELECT ... INTO @x`), and `KILL`, which Sluice maps to
//! backend threads. Not a parser: a lexer that knows strings, comments and executable comments.

use crate::session::{PinReason, PinSet};

/// What Sluice must know about a query before relaying it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Pins the statement causes.
    pub pins: PinSet,
    /// Set when the query is a `KILL` statement.
    pub kill: Option<Kill>,
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
    Word(&'a [u8]),
    Quoted,
    UserVar,
    SysVar,
    Assign,
    Number(&'a [u8]),
    Semicolon,
    Comma,
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

    fn skip_quoted(&mut self, q: u8) {
        self.i += 1;
        while self.i < self.s.len() {
            let b = self.s[self.i];
            if b == b'\\' && q != b'`' {
                self.i += 2;
            } else if b == q {
                if self.peek(1) == q {
                    self.i += 2;
                } else {
                    self.i += 1;
                    return;
                }
            } else {
                self.i += 1;
            }
        }
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

    fn next(&mut self) -> Option<Tok<'a>> {
        self.skip_trivia();
        let b = *self.s.get(self.i)?;
        let start = self.i;
        let tok = match b {
            b'\'' | b'"' | b'`' => {
                self.skip_quoted(b);
                if b == b'`' {
                    Tok::Word(&self.s[start + 1..self.i.saturating_sub(1).max(start + 1)])
                } else {
                    Tok::Quoted
                }
            }
            b'@' if self.peek(1) == b'@' => {
                self.i += 2;
                while is_word_byte(self.peek(0)) || self.peek(0) == b'.' {
                    self.i += 1;
                }
                Tok::SysVar
            }
            b'@' => {
                self.i += 1;
                match self.peek(0) {
                    q @ (b'\'' | b'"' | b'`') => self.skip_quoted(q),
                    _ => {
                        while is_word_byte(self.peek(0)) || self.peek(0) == b'.' {
                            self.i += 1;
                        }
                    }
                }
                Tok::UserVar
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
        Some(tok)
    }
}

fn is(tok: Option<&Tok<'_>>, kw: &str) -> bool {
    matches!(tok, Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw.as_bytes()))
}

/// Looks at a COM_QUERY's text (or its first part, for very large queries).
pub fn classify(sql: &[u8]) -> Classification {
    let mut out = Classification::default();
    let mut lexer = Lexer::new(sql);
    let mut statements = 0;
    loop {
        let mut toks = Vec::new();
        let mut ended = true;
        while let Some(t) = lexer.next() {
            if t == Tok::Semicolon {
                ended = false;
                break;
            }
            toks.push(t);
        }
        if !toks.is_empty() {
            statements += 1;
            classify_statement(&toks, &mut out);
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

fn classify_statement(toks: &[Tok<'_>], out: &mut Classification) {
    let first = toks.first();
    if is(first, "SET") {
        classify_set(&toks[1..], &mut out.pins);
    } else if is(first, "LOCK") || is(first, "BACKUP") {
        out.pins.insert(PinReason::TableLock);
    } else if is(first, "FLUSH") {
        let words: Vec<_> = toks.iter().collect();
        if words
            .windows(3)
            .any(|w| is(Some(w[0]), "WITH") && is(Some(w[1]), "READ") && is(Some(w[2]), "LOCK"))
            || words
                .windows(2)
                .any(|w| is(Some(w[0]), "FOR") && is(Some(w[1]), "EXPORT"))
        {
            out.pins.insert(PinReason::TableLock);
        }
    } else if is(first, "PREPARE") {
        out.pins.insert(PinReason::SqlPrepare);
    } else if is(first, "XA") {
        out.pins.insert(PinReason::Xa);
    } else if is(first, "HANDLER") {
        out.pins.insert(PinReason::Handler);
    } else if is(first, "CREATE") {
        let temporary = toks
            .iter()
            .take_while(|t| !is(Some(t), "TABLE"))
            .any(|t| is(Some(t), "TEMPORARY"));
        if temporary {
            out.pins.insert(PinReason::TemporaryTable);
        }
    } else if is(first, "KILL") {
        out.kill = Some(classify_kill(&toks[1..]));
    }
    // Anywhere in a statement: assignments to user variables and named locks.
    for w in toks.windows(2) {
        match (w[0], w[1]) {
            (Tok::UserVar, Tok::Assign) => {
                out.pins.insert(PinReason::UserVariable);
            }
            (Tok::Word(k), Tok::UserVar) if k.eq_ignore_ascii_case(b"INTO") => {
                out.pins.insert(PinReason::UserVariable);
            }
            (Tok::Word(f), Tok::LParen) if f.eq_ignore_ascii_case(b"GET_LOCK") => {
                out.pins.insert(PinReason::NamedLock);
            }
            _ => {}
        }
    }
}

/// `SET` assignments: user variables pin; system variables are left to session tracking,
/// except the ones it does not report.
fn classify_set(toks: &[Tok<'_>], pins: &mut PinSet) {
    let mut depth = 0i32;
    let mut at_target = true;
    let mut i = 0;
    while let Some(t) = toks.get(i) {
        if at_target {
            at_target = false;
            let t = if is(Some(t), "SESSION") || is(Some(t), "LOCAL") {
                i += 1;
                toks.get(i).copied().unwrap_or(Tok::Other)
            } else {
                *t
            };
            match t {
                Tok::UserVar => {
                    pins.insert(PinReason::UserVariable);
                }
                // Characteristics of the next transaction and active roles are session state
                // that tracking does not reliably report.
                Tok::Word(w)
                    if w.eq_ignore_ascii_case(b"TRANSACTION")
                        || w.eq_ignore_ascii_case(b"ROLE") =>
                {
                    pins.insert(PinReason::SessionVariable);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pins(sql: &str) -> Vec<PinReason> {
        classify(sql.as_bytes()).pins.iter().collect()
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
            (
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                PinReason::SessionVariable,
            ),
            ("SET ROLE r", PinReason::SessionVariable),
        ];
        for (sql, reason) in cases {
            assert_eq!(pins(sql), vec![reason], "{sql}");
        }
        assert!(pins("CREATE TABLE t (a int)").is_empty());
        assert_eq!(pins("SELECT 1; SET @x=1; LOCK TABLES t READ").len(), 2);
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
}
