//! Statement digests for logs: the text with every literal replaced by `?`, so a statement can
//! be logged (and grouped) without any of its values.

use super::lexer::{Kind, LexMode, Lexer};

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
    let mut lexer = Lexer::new(sql, LexMode::mariadb(u32::MAX));
    let mut prev_end = 0usize;
    while let Some(tok) = lexer.next_token() {
        // `f(x)` stays a call; `IN (x)` keeps its space.
        let adjacent = tok.start == prev_end;
        prev_end = tok.end;
        let (piece, kind): (std::borrow::Cow<'_, str>, Last) = match tok.kind {
            Kind::Str | Kind::Number => ("?".into(), Last::Literal),
            // 1abc: a literal the lexer reads as a word.
            Kind::Word if tok.text.first().is_some_and(u8::is_ascii_digit) => {
                ("?".into(), Last::Literal)
            }
            Kind::Word | Kind::QuotedIdent => (
                String::from_utf8_lossy(tok.text)
                    .to_ascii_lowercase()
                    .into(),
                Last::Word,
            ),
            Kind::UserVar => (
                format!("@{}", String::from_utf8_lossy(tok.text)).into(),
                Last::Word,
            ),
            Kind::SysVar => (
                format!(
                    "@@{}",
                    String::from_utf8_lossy(tok.text).to_ascii_lowercase()
                )
                .into(),
                Last::Word,
            ),
            Kind::Assign => (":=".into(), Last::Other),
            Kind::Semicolon => (";".into(), Last::Other),
            Kind::Comma => (",".into(), Last::Comma),
            Kind::Dot => (".".into(), Last::Glue),
            Kind::LParen => ("(".into(), Last::Open),
            Kind::RParen => (")".into(), Last::Other),
            Kind::Eq => ("=".into(), Last::Other),
            Kind::Other => {
                let b = tok.text.first().copied().unwrap_or(b'?');
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
