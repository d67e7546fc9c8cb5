//! `ROW_COUNT()` and `FOUND_ROWS()`: values of the session's previous statement, which
//! another backend connection does not have. Sluice puts the session's values in where it must,
//! in a form whose parse and type cannot differ from the call's: `COALESCE(value, ROW_COUNT())`
//! in the call's place (a function call is one operand wherever it stands, and the server types
//! it as the call itself: BIGINT, signed, not null), the rest of the text untouched.

/// A session counter function whose value depends on the session's previous statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    RowCount,
    FoundRows,
}

/// Where a counter function is called in the query text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterCall {
    pub counter: Counter,
    /// Byte range of the call, from the function name to its closing parenthesis.
    pub start: usize,
    pub end: usize,
}

/// `sql` with each call in `calls` (in text order) replaced by `COALESCE(value, CALL())`.
pub fn substitute(sql: &[u8], calls: &[CounterCall], row_count: i64, found_rows: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(sql.len() + 24 * calls.len());
    let mut at = 0;
    for c in calls {
        // Calls come in text order; anything else is skipped rather than trusted.
        let Some(before) = sql.get(at..c.start) else {
            continue;
        };
        if c.end > sql.len() || c.end <= c.start {
            continue;
        }
        out.extend_from_slice(before);
        let value = match c.counter {
            // The call itself is never evaluated (the value before it is not NULL); it is
            // there so the result's column type is the call's, not a literal's.
            Counter::RowCount => format!("COALESCE({row_count}, ROW_COUNT())"),
            Counter::FoundRows => format!("COALESCE({found_rows}, FOUND_ROWS())"),
        };
        out.extend_from_slice(value.as_bytes());
        at = c.end;
    }
    out.extend_from_slice(sql.get(at..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::classify::classify;
    use crate::sql::lexer::LexMode;

    fn sub(sql: &str) -> String {
        let c = classify(sql.as_bytes(), LexMode::mariadb(101106), true);
        let calls: Vec<CounterCall> = c
            .statements
            .iter()
            .flat_map(|s| s.counters.clone())
            .collect();
        String::from_utf8(substitute(sql.as_bytes(), &calls, -1, 7)).unwrap()
    }

    #[test]
    fn calls_become_values_and_nothing_else_changes() {
        assert_eq!(
            sub("INSERT INTO log VALUES (ROW_COUNT ( ), found_rows())"),
            "INSERT INTO log VALUES (COALESCE(-1, ROW_COUNT()), COALESCE(7, FOUND_ROWS()))"
        );
        assert_eq!(
            sub("SELECT a FROM t WHERE b = ROW_COUNT() /*M!999999 , @u := NULL */"),
            "SELECT a FROM t WHERE b = COALESCE(-1, ROW_COUNT()) /*M!999999 , @u := NULL */"
        );
        assert_eq!(sub("SELECT 'ROW_COUNT()'"), "SELECT 'ROW_COUNT()'");
    }
}
