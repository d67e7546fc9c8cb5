//! Splits statement text into tokens the way the server's own lexer does, so that Sluice and the
//! server agree on what is code and what is a string or a comment. The rules follow
//! `sql/sql_lex.cc` of MariaDB 10.x and MySQL 8/9:
//!
//! - strings end at their quote; a doubled quote stays inside; a backslash escapes the next
//!   byte unless `NO_BACKSLASH_ESCAPES`; `"` quotes an identifier under `ANSI_QUOTES`;
//! - in the multibyte character sets whose second byte can be an ASCII byte (big5, sjis,
//!   cp932, gbk, gb18030) a lead byte takes its trail byte with it, so a trail `\` escapes
//!   nothing;
//! - `#` and `-- ` (two dashes then whitespace or a control character) comment to the end of
//!   the line; `/* */` comments do not nest;
//! - `/*!NNNNN ... */` (and MariaDB's `/*M!NNNNNN ... */`) run their content when the version
//!   allows it, by each server's rules; a skipped one may hold one nested comment.
//!
//! The lexer never fails: text the server would refuse (an unterminated string or comment) is
//! reported through [`Lexer::unterminated`], and callers treat it as uncertain.

/// How the server reads statement text for this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LexMode {
    /// `\` escapes inside strings (off under `NO_BACKSLASH_ESCAPES`).
    pub backslash_escapes: bool,
    /// `"` quotes identifiers (`ANSI_QUOTES`), not strings.
    pub ansi_quotes: bool,
    /// The client character set, where it changes how bytes pair up.
    pub charset: Charset,
    /// Which server's comment rules apply.
    pub dialect: Dialect,
}

impl LexMode {
    /// MariaDB's defaults for a server of `version` (`MYSQL_VERSION_ID` form, 101106).
    pub fn mariadb(version: u32) -> Self {
        LexMode {
            backslash_escapes: true,
            ansi_quotes: false,
            charset: Charset::Simple,
            dialect: Dialect::MariaDb(version),
        }
    }

    /// MySQL's defaults for a server of `version` (90700).
    pub fn mysql(version: u32) -> Self {
        LexMode {
            dialect: Dialect::MySql(version),
            ..LexMode::mariadb(0)
        }
    }
}

/// The server family and version, which decide executable comments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// MariaDB, with its `MYSQL_VERSION_ID` (10.11.6 is 101106).
    MariaDb(u32),
    /// MySQL, with its `MYSQL_VERSION_ID` (9.7.0 is 90700).
    MySql(u32),
}

impl Dialect {
    /// True for MySQL, whose protocol and session behaviour differ from MariaDB's in places.
    pub fn is_mysql(self) -> bool {
        matches!(self, Dialect::MySql(_))
    }

    /// Parses a server version string ("10.11.6-MariaDB-0+deb12u1", "9.7.0").
    pub fn from_server_version(version: &str) -> Dialect {
        // MariaDB's handshake says "5.5.5-10.11.6-MariaDB" for old replication clients.
        let version = version.strip_prefix("5.5.5-").unwrap_or(version);
        let mut parts = version
            .split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor, patch) = (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        );
        let id = major * 10_000 + minor.min(99) * 100 + patch.min(99);
        if version.to_ascii_lowercase().contains("mariadb") {
            Dialect::MariaDb(id)
        } else {
            Dialect::MySql(id)
        }
    }

    /// Whether an executable comment with `version` runs. `maria` is the `/*M!` form.
    fn runs(self, version: u32, maria: bool) -> bool {
        match self {
            // MariaDB skips MySQL 5.7+ version comments unless written with M.
            Dialect::MariaDb(server) => {
                version <= server && (!(50700..=99999).contains(&version) || maria)
            }
            Dialect::MySql(server) => version <= server,
        }
    }
}

/// Character sets that matter to the lexer: those whose multibyte characters can end in an
/// ASCII byte such as `\`, `'` or `` ` ``. Every other character set (latin1, utf8mb4, ...)
/// reads like a single-byte one for this purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Simple,
    Big5,
    /// sjis and cp932.
    Sjis,
    Gbk,
    Gb18030,
}

impl Charset {
    /// The character set named by `character_set_client`.
    pub fn from_name(name: &str) -> Charset {
        match name.to_ascii_lowercase().as_str() {
            "big5" => Charset::Big5,
            "sjis" | "cp932" => Charset::Sjis,
            "gbk" => Charset::Gbk,
            "gb18030" => Charset::Gb18030,
            _ => Charset::Simple,
        }
    }

    /// Length of the multibyte character starting at `s[0]`, if it is one (as `my_ismbchar`).
    fn mb_len(self, s: &[u8]) -> usize {
        let (Some(&a), Some(&b)) = (s.first(), s.get(1)) else {
            return 0;
        };
        let two = match self {
            Charset::Simple => return 0,
            Charset::Big5 => {
                (0xA1..=0xF9).contains(&a)
                    && ((0x40..=0x7E).contains(&b) || (0xA1..=0xFE).contains(&b))
            }
            Charset::Sjis => {
                ((0x81..=0x9F).contains(&a) || (0xE0..=0xFC).contains(&a))
                    && ((0x40..=0x7E).contains(&b) || (0x80..=0xFC).contains(&b))
            }
            Charset::Gbk => {
                (0x81..=0xFE).contains(&a)
                    && ((0x40..=0x7E).contains(&b) || (0x80..=0xFE).contains(&b))
            }
            Charset::Gb18030 => {
                if (0x81..=0xFE).contains(&a) && (0x30..=0x39).contains(&b) {
                    let four = matches!((s.get(2), s.get(3)),
                        (Some(c), Some(d)) if (0x81..=0xFE).contains(c) && (0x30..=0x39).contains(d));
                    return if four { 4 } else { 0 };
                }
                (0x81..=0xFE).contains(&a)
                    && ((0x40..=0x7E).contains(&b) || (0x80..=0xFE).contains(&b))
            }
        };
        if two { 2 } else { 0 }
    }
}

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A keyword or an unquoted identifier.
    Word,
    /// A quoted identifier (backticks, or `"` under `ANSI_QUOTES`); `text` is its content.
    QuotedIdent,
    /// A string literal; `text` is its raw content between the quotes.
    Str,
    /// `@name`, `@'name'`: `text` is the name.
    UserVar,
    /// `@@[scope.]name`: `text` is what follows `@@`.
    SysVar,
    /// A number (digits, `0x..`, `1.5e3`).
    Number,
    /// `:=`
    Assign,
    Semicolon,
    Comma,
    Dot,
    LParen,
    RParen,
    /// `=`
    Eq,
    /// Any other single byte.
    Other,
}

/// One token: its kind, its text (see [`Kind`]) and where it lies in the statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub kind: Kind,
    pub text: &'a [u8],
    pub start: usize,
    pub end: usize,
    /// The quote a string, quoted identifier or quoted variable name was written with.
    pub quote: u8,
}

impl Token<'_> {
    /// True for a word equal to `kw` (ASCII, any case).
    pub fn is(&self, kw: &str) -> bool {
        self.kind == Kind::Word && self.text.eq_ignore_ascii_case(kw.as_bytes())
    }

    /// True for an identifier, quoted or not.
    pub fn is_ident(&self) -> bool {
        matches!(self.kind, Kind::Word | Kind::QuotedIdent)
    }
}

/// The lexer over one COM_QUERY's text.
pub struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    mode: LexMode,
    /// Inside an executable comment whose content runs: its `*/` is skipped.
    in_exec_comment: bool,
    unterminated: bool,
}

/// Bytes that may appear in an unquoted identifier (any byte >= 0x80 too).
pub fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// The server's `my_isspace`.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

impl<'a> Lexer<'a> {
    /// A lexer over `s`, read as the server reads it under `mode`.
    pub fn new(s: &'a [u8], mode: LexMode) -> Self {
        Lexer {
            s,
            i: 0,
            mode,
            in_exec_comment: false,
            unterminated: false,
        }
    }

    /// True if a string, quoted identifier or comment was still open at the end: the server
    /// refuses such text.
    pub fn unterminated(&self) -> bool {
        self.unterminated
    }

    /// Where the lexer stands.
    pub fn position(&self) -> usize {
        self.i
    }

    fn peek(&self, ahead: usize) -> u8 {
        self.s.get(self.i + ahead).copied().unwrap_or(0)
    }

    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    /// Skips a string or quoted identifier opened by `q` at the current position (as
    /// `get_text` / `scan_ident_delimited`); returns its raw content.
    fn quoted(&mut self, q: u8, escapes: bool) -> &'a [u8] {
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() {
            let mb = self.mode.charset.mb_len(&self.s[self.i..]);
            if mb > 0 {
                self.i += mb;
                continue;
            }
            let b = self.s[self.i];
            if b == b'\\' && escapes {
                if self.i + 1 >= self.s.len() {
                    break;
                }
                self.i += 2;
            } else if b == q {
                if self.peek(1) == q {
                    self.i += 2;
                } else {
                    let content = &self.s[start..self.i];
                    self.i += 1;
                    return content;
                }
            } else {
                self.i += 1;
            }
        }
        self.i = self.s.len();
        self.unterminated = true;
        &self.s[start..]
    }

    /// Skips a comment body up to and including its `*/` (as `consume_comment`); one nested
    /// `/* */` is allowed when `nested`.
    fn consume_comment(&mut self, nested: bool) {
        while self.i < self.s.len() {
            let b = self.s[self.i];
            self.i += 1;
            if nested && b == b'/' && self.peek(0) == b'*' {
                self.i += 1;
                self.consume_comment(false);
                if self.unterminated {
                    return;
                }
                continue;
            }
            if b == b'*' && self.peek(0) == b'/' {
                self.i += 1;
                return;
            }
        }
        self.unterminated = true;
    }

    /// Handles `/*` at the current position: an executable comment that runs leaves the
    /// lexer inside its content; anything else is skipped.
    fn long_comment(&mut self) {
        let bang = self.peek(2) == b'!';
        let maria_bang = self.peek(2) == b'M' && self.peek(3) == b'!';
        let dialect = self.mode.dialect;
        let executable = bang || (maria_bang && matches!(dialect, Dialect::MariaDb(_)));
        if !executable {
            self.i += 2;
            self.consume_comment(false);
            return;
        }
        let marker = if maria_bang { 4 } else { 3 };
        let digits = |ahead: usize| self.peek(marker + ahead).is_ascii_digit();
        if !(0..5).all(digits) {
            // `/*!` without a version: the content always runs.
            self.i += marker;
            self.in_exec_comment = true;
            return;
        }
        let six = match dialect {
            Dialect::MariaDb(_) => digits(5),
            // MySQL reads six digits only when whitespace follows them.
            Dialect::MySql(_) => digits(5) && is_space(self.peek(marker + 6)),
        };
        let len = if six { 6 } else { 5 };
        let version = self.s[self.i + marker..self.i + marker + len]
            .iter()
            .fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
        if dialect.runs(version, maria_bang) {
            self.i += marker + len;
            self.in_exec_comment = true;
        } else {
            self.i += marker;
            self.consume_comment(true);
        }
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) {
        loop {
            let b = self.peek(0);
            if self.at_end() {
                if self.in_exec_comment {
                    self.unterminated = true;
                }
                return;
            }
            if is_space(b) {
                self.i += 1;
            } else if b == b'/' && self.peek(1) == b'*' {
                if self.in_exec_comment {
                    // A comment inside running comment content: save and restore the state.
                    self.in_exec_comment = false;
                    self.long_comment();
                    if !self.in_exec_comment {
                        self.in_exec_comment = true;
                    }
                } else {
                    self.long_comment();
                }
            } else if b == b'*' && self.peek(1) == b'/' && self.in_exec_comment {
                self.i += 2;
                self.in_exec_comment = false;
            } else if b == b'#'
                || (b == b'-'
                    && self.peek(1) == b'-'
                    && (is_space(self.peek(2)) || self.peek(2) < 0x20 || self.peek(2) == 0x7F))
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

    /// Reads identifier bytes from the current position (multibyte characters whole).
    fn ident_run(&mut self) {
        while self.i < self.s.len() {
            let mb = self.mode.charset.mb_len(&self.s[self.i..]);
            if mb > 0 {
                self.i += mb;
            } else if is_ident_byte(self.s[self.i]) {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    /// MySQL's `$tag$ ... $tag$` text; `None` if the `$` does not open one.
    fn dollar_quoted(&mut self) -> Option<&'a [u8]> {
        let rest = &self.s[self.i + 1..];
        let tag_len = rest.iter().position(|&b| b == b'$')?;
        if !rest[..tag_len]
            .iter()
            .all(|&b| is_ident_byte(b) && b != b'$')
        {
            return None;
        }
        let tag = &self.s[self.i..self.i + tag_len + 2];
        let body_start = self.i + tag.len();
        let body = &self.s[body_start..];
        match body.windows(tag.len()).position(|w| w == tag) {
            Some(p) => {
                self.i = body_start + p + tag.len();
                Some(&body[..p])
            }
            None => {
                self.i = self.s.len();
                self.unterminated = true;
                Some(body)
            }
        }
    }

    fn token(&self, kind: Kind, text: &'a [u8], start: usize) -> Token<'a> {
        let quote = match self.s.get(start) {
            Some(q @ (b'\'' | b'"' | b'`')) => *q,
            Some(b'@') => match self.s.get(start + 1) {
                Some(q @ (b'\'' | b'"' | b'`')) => *q,
                _ => 0,
            },
            Some(b'$') if kind == Kind::Str => b'$',
            _ => 0,
        };
        Token {
            kind,
            text,
            start,
            end: self.i,
            quote,
        }
    }

    /// The next token, or `None` at the end.
    pub fn next_token(&mut self) -> Option<Token<'a>> {
        self.skip_trivia();
        let start = self.i;
        let b = *self.s.get(self.i)?;
        let escapes = self.mode.backslash_escapes;
        let tok = match b {
            b'\'' => {
                let t = self.quoted(b'\'', escapes);
                self.token(Kind::Str, t, start)
            }
            b'"' if self.mode.ansi_quotes => {
                let t = self.quoted(b'"', false);
                self.token(Kind::QuotedIdent, t, start)
            }
            b'"' => {
                let t = self.quoted(b'"', escapes);
                self.token(Kind::Str, t, start)
            }
            b'`' => {
                let t = self.quoted(b'`', false);
                self.token(Kind::QuotedIdent, t, start)
            }
            b'@' if self.peek(1) == b'@' => {
                self.i += 2;
                let name_start = self.i;
                if self.peek(0) == b'`' {
                    let t = self.quoted(b'`', false);
                    return Some(self.token(Kind::SysVar, t, start));
                }
                // `@@scope.name` and `@@scope.`name``.
                loop {
                    self.ident_run();
                    if self.peek(0) == b'.' && (is_ident_byte(self.peek(1)) || self.peek(1) == b'`')
                    {
                        self.i += 1;
                        if self.peek(0) == b'`' {
                            self.quoted(b'`', false);
                            break;
                        }
                        continue;
                    }
                    break;
                }
                self.token(Kind::SysVar, &self.s[name_start..self.i], start)
            }
            b'@' => {
                self.i += 1;
                match self.peek(0) {
                    b'\'' => {
                        let t = self.quoted(b'\'', escapes);
                        self.token(Kind::UserVar, t, start)
                    }
                    b'"' => {
                        let t = self.quoted(b'"', escapes && !self.mode.ansi_quotes);
                        self.token(Kind::UserVar, t, start)
                    }
                    b'`' => {
                        let t = self.quoted(b'`', false);
                        self.token(Kind::UserVar, t, start)
                    }
                    _ => {
                        let name_start = self.i;
                        // The server reads a host-name-like run: letters, digits, . _ $
                        while self.i < self.s.len()
                            && (is_ident_byte(self.s[self.i]) || self.s[self.i] == b'.')
                        {
                            let mb = self.mode.charset.mb_len(&self.s[self.i..]);
                            self.i += mb.max(1);
                        }
                        self.token(Kind::UserVar, &self.s[name_start..self.i], start)
                    }
                }
            }
            b':' if self.peek(1) == b'=' => {
                self.i += 2;
                self.token(Kind::Assign, &self.s[start..self.i], start)
            }
            b'$' if matches!(self.mode.dialect, Dialect::MySql(_)) => match self.dollar_quoted() {
                Some(body) => self.token(Kind::Str, body, start),
                None => {
                    self.ident_run();
                    self.token(Kind::Word, &self.s[start..self.i], start)
                }
            },
            b if b.is_ascii_digit() => {
                self.ident_run();
                // 1.5, 1e-3, 1.5E+10
                if self.peek(0) == b'.' && self.peek(1).is_ascii_digit() {
                    self.i += 1;
                    self.ident_run();
                }
                if matches!(self.s.get(self.i.wrapping_sub(1)), Some(b'e' | b'E'))
                    && matches!(self.peek(0), b'+' | b'-')
                    && self.peek(1).is_ascii_digit()
                {
                    self.i += 1;
                    self.ident_run();
                }
                let text = &self.s[start..self.i];
                let numeric = text.iter().all(|c| c.is_ascii_digit() || *c == b'.')
                    || text.starts_with(b"0x")
                    || text.starts_with(b"0b")
                    || text.iter().any(|c| matches!(c, b'e' | b'E'))
                        && text.iter().all(|c| {
                            c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-')
                        });
                let kind = if numeric { Kind::Number } else { Kind::Word };
                self.token(kind, text, start)
            }
            b if is_ident_byte(b) => {
                // X'..', B'..', N'..' and _charset'..' are literals: the word, then a Str.
                self.ident_run();
                self.token(Kind::Word, &self.s[start..self.i], start)
            }
            _ => {
                self.i += 1;
                let kind = match b {
                    b';' => Kind::Semicolon,
                    b',' => Kind::Comma,
                    b'.' => Kind::Dot,
                    b'(' => Kind::LParen,
                    b')' => Kind::RParen,
                    b'=' => Kind::Eq,
                    _ => Kind::Other,
                };
                self.token(kind, &self.s[start..self.i], start)
            }
        };
        Some(tok)
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        self.next_token()
    }
}

/// The value of a string literal's raw content, as the server unescapes it.
pub fn unescape(raw: &[u8], quote: u8, mode: LexMode) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let mb = mode.charset.mb_len(&raw[i..]);
        if mb > 0 {
            out.extend_from_slice(&raw[i..i + mb]);
            i += mb;
            continue;
        }
        let b = raw[i];
        if b == b'\\' && mode.backslash_escapes && i + 1 < raw.len() {
            i += 1;
            out.extend_from_slice(match raw[i] {
                b'n' => b"\n",
                b't' => b"\t",
                b'r' => b"\r",
                b'b' => b"\x08",
                b'0' => b"\0",
                b'Z' => b"\x1a",
                b'_' => b"\\_",
                b'%' => b"\\%",
                _ => &raw[i..=i],
            });
        } else if b == quote && raw.get(i + 1) == Some(&quote) {
            out.push(quote);
            i += 1;
        } else {
            out.push(b);
        }
        i += 1;
    }
    out
}

/// Whether lexing `s` could come out differently in another mode: it holds a byte whose
/// meaning depends on `NO_BACKSLASH_ESCAPES`, `ANSI_QUOTES` or the character set.
pub fn mode_sensitive(s: &[u8]) -> bool {
    s.iter().any(|&b| b == b'\\' || b == b'"' || b >= 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARIA: LexMode = LexMode {
        backslash_escapes: true,
        ansi_quotes: false,
        charset: Charset::Simple,
        dialect: Dialect::MariaDb(101106),
    };
    const MYSQL: LexMode = LexMode {
        dialect: Dialect::MySql(90700),
        ..MARIA
    };

    fn words(sql: &str, mode: LexMode) -> Vec<String> {
        Lexer::new(sql.as_bytes(), mode)
            .map(|t| String::from_utf8_lossy(t.text).into_owned())
            .collect()
    }

    #[test]
    fn versions() {
        assert_eq!(
            Dialect::from_server_version("10.11.6-MariaDB-0+deb12u1"),
            Dialect::MariaDb(101106)
        );
        assert_eq!(Dialect::from_server_version("9.7.0"), Dialect::MySql(90700));
        assert_eq!(
            Dialect::from_server_version("5.5.5-10.11.6-MariaDB"),
            Dialect::MariaDb(101106)
        );
    }

    #[test]
    fn executable_comments_follow_each_server() {
        let sql = "SELECT 1 /*!40101 , 2 */ /*!999999 , 3 */ /*M!100100 , 4 */ /*!80000 , 5 */ /*! , 6 */";
        assert_eq!(
            words(sql, MARIA),
            ["SELECT", "1", ",", "2", ",", "4", ",", "6"]
        );
        assert_eq!(
            words(sql, MYSQL),
            ["SELECT", "1", ",", "2", ",", "5", ",", "6"]
        );
        // MySQL reads six digits only before whitespace: /*!999999x is version 99999 then "9x".
        assert_eq!(words("/*!100000 SELECT 1 */", MYSQL), Vec::<String>::new());
        assert_eq!(words("/*!100000SELECT 1 */", MYSQL), ["0SELECT", "1"]);
        // A skipped comment may hold one nested comment.
        assert_eq!(
            words("/*!999999 a /* b */ c */ d", MARIA),
            ["d"],
            "nested comment"
        );
        // A regular comment does not nest.
        assert_eq!(words("/* a /* b */ c */", MARIA), ["c", "*", "/"]);
    }

    #[test]
    fn comments_and_dashes() {
        assert_eq!(
            words("SELECT 1 --x\n", MARIA),
            ["SELECT", "1", "-", "-", "x"]
        );
        assert_eq!(words("SELECT 1 -- x\n2", MARIA), ["SELECT", "1", "2"]);
        assert_eq!(words("SELECT 1 --\t\n2", MARIA), ["SELECT", "1", "2"]);
        assert_eq!(words("SELECT 1 --", MARIA), ["SELECT", "1"]);
        assert_eq!(words("SELECT 1 # x\n2", MARIA), ["SELECT", "1", "2"]);
        let mut l = Lexer::new(b"SELECT /* open", MARIA);
        while l.next_token().is_some() {}
        assert!(l.unterminated());
    }

    #[test]
    fn quoting_depends_on_the_mode() {
        let sql = r#"SELECT 'a\', GET_LOCK(' -- ', "b\" x"#;
        let toks: Vec<_> = Lexer::new(sql.as_bytes(), MARIA).map(|t| t.kind).collect();
        // With backslash escapes the string runs on and `--` comments the rest out.
        assert_eq!(toks, [Kind::Word, Kind::Str]);
        let nbe = LexMode {
            backslash_escapes: false,
            ..MARIA
        };
        let w = words(sql, nbe);
        assert!(w.contains(&"GET_LOCK".to_string()), "{w:?}");
        let ansi = LexMode {
            ansi_quotes: true,
            ..MARIA
        };
        let toks: Vec<_> = Lexer::new(br#"SELECT "a\" , 1"#, ansi)
            .map(|t| t.kind)
            .collect();
        assert_eq!(
            toks,
            [Kind::Word, Kind::QuotedIdent, Kind::Comma, Kind::Number]
        );
    }

    #[test]
    fn multibyte_trail_bytes_do_not_escape() {
        // 0x81 0x5C is one sjis character; its second byte is not a backslash.
        let sql = b"SELECT '\x81\x5C', 1";
        let sjis = LexMode {
            charset: Charset::Sjis,
            ..MARIA
        };
        let kinds: Vec<_> = Lexer::new(sql, sjis).map(|t| t.kind).collect();
        assert_eq!(kinds, [Kind::Word, Kind::Str, Kind::Comma, Kind::Number]);
        let kinds: Vec<_> = Lexer::new(sql, MARIA).map(|t| t.kind).collect();
        assert_eq!(kinds, [Kind::Word, Kind::Str]);
        assert_eq!(Charset::Gb18030.mb_len(b"\x81\x30\x81\x30"), 4);
    }

    #[test]
    fn variables() {
        let t: Vec<_> = Lexer::new(
            b"SET @a.b := 1, @'c d' = 2, @@session.sql_mode = '', @@`x`",
            MARIA,
        )
        .filter(|t| matches!(t.kind, Kind::UserVar | Kind::SysVar | Kind::Assign))
        .map(|t| (t.kind, String::from_utf8_lossy(t.text).into_owned()))
        .collect();
        assert_eq!(
            t,
            [
                (Kind::UserVar, "a.b".into()),
                (Kind::Assign, ":=".into()),
                (Kind::UserVar, "c d".into()),
                (Kind::SysVar, "session.sql_mode".into()),
                (Kind::SysVar, "x".into()),
            ]
        );
    }

    #[test]
    fn dollar_quotes_on_mysql() {
        assert_eq!(
            words("SELECT $t$ GET_LOCK('a', 0) $t$, 1", MYSQL),
            ["SELECT", " GET_LOCK('a', 0) ", ",", "1"]
        );
        assert_eq!(words("SELECT $a", MARIA), ["SELECT", "$a"]);
    }

    #[test]
    fn unescaping() {
        assert_eq!(unescape(br"a\'b''c\n", b'\'', MARIA), b"a'b'c\n");
        let nbe = LexMode {
            backslash_escapes: false,
            ..MARIA
        };
        assert_eq!(unescape(br"a\n", b'\'', nbe), br"a\n");
    }

    #[test]
    fn never_panics() {
        let mut seed = 0x2545F4914F6CDD1Du64;
        let alphabet = b"@:=;'\"`/*!M-#\\ \n\t$SETKILL(),0123456789\x81\x5c\xa1";
        for mode in [MARIA, MYSQL] {
            for cs in [Charset::Simple, Charset::Sjis, Charset::Gb18030] {
                let mode = LexMode {
                    charset: cs,
                    ..mode
                };
                for _ in 0..3000 {
                    let len = (seed % 48) as usize;
                    let bytes: Vec<u8> = (0..len)
                        .map(|_| {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            alphabet[(seed % alphabet.len() as u64) as usize]
                        })
                        .collect();
                    let mut l = Lexer::new(&bytes, mode);
                    let mut last = 0;
                    while let Some(t) = l.next_token() {
                        assert!(t.end > last || t.end == bytes.len(), "progress");
                        last = t.end;
                    }
                }
            }
        }
    }
}
