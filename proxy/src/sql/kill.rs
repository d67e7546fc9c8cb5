//! `KILL` statements, which Sluice maps from its own client ids to backend threads.

use super::lexer::{Kind, Token};

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
    /// `KILL [QUERY|CONNECTION] CONNECTION_ID()`: the session's own backend thread, which
    /// the server can be left to kill as it is.
    Own { query: bool },
    /// A form Sluice cannot map (the text says which).
    Unsupported(&'static str),
}

/// Reads what follows `KILL`.
pub fn classify_kill(toks: &[Token<'_>]) -> Kill {
    let mut i = 0;
    let modifier = if toks.first().is_some_and(|t| t.is("HARD")) {
        i += 1;
        Some("HARD")
    } else if toks.first().is_some_and(|t| t.is("SOFT")) {
        i += 1;
        Some("SOFT")
    } else {
        None
    };
    let query = if toks.get(i).is_some_and(|t| t.is("QUERY")) {
        i += 1;
        true
    } else {
        if toks.get(i).is_some_and(|t| t.is("CONNECTION")) {
            i += 1;
        }
        false
    };
    if toks.get(i).is_some_and(|t| t.is("ID")) {
        return Kill::Unsupported(
            "KILL QUERY ID (kill by query id); use KILL QUERY <connection id>",
        );
    }
    if toks.get(i).is_some_and(|t| t.is("USER")) {
        return Kill::Unsupported("KILL USER; use KILL [QUERY] <connection id>");
    }
    let own = toks.get(i).is_some_and(|t| t.is("CONNECTION_ID"))
        && toks.get(i + 1).is_some_and(|t| t.kind == Kind::LParen)
        && toks.get(i + 2).is_some_and(|t| t.kind == Kind::RParen)
        && toks.len() == i + 3;
    if own {
        return Kill::Own { query };
    }
    match (toks.get(i), toks.len() == i + 1) {
        (Some(t), true) if t.kind == Kind::Number => {
            match std::str::from_utf8(t.text)
                .ok()
                .and_then(|n| n.parse().ok())
            {
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
    use crate::sql::classify::classify;
    use crate::sql::lexer::LexMode;

    fn k(s: &str) -> Option<Kill> {
        classify(s.as_bytes(), LexMode::mariadb(101106), true)
            .kill()
            .cloned()
    }

    #[test]
    fn kill_forms() {
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
        assert_eq!(
            k("KILL QUERY CONNECTION_ID()"),
            Some(Kill::Own { query: true })
        );
        assert_eq!(k("KILL CONNECTION_ID()"), Some(Kill::Own { query: false }));
        assert!(matches!(k("KILL QUERY ID 9"), Some(Kill::Unsupported(_))));
        assert!(matches!(k("KILL USER app"), Some(Kill::Unsupported(_))));
        assert!(matches!(k("KILL @x"), Some(Kill::Unsupported(_))));
        assert_eq!(k("SELECT 'KILL 3'"), None);
        assert_eq!(k("/*!99999 KILL 3 */ SELECT 1"), None);
    }
}
