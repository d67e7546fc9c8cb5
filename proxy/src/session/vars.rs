//! The system variables Sluice replays on whichever connection a session borrows (one table,
//! like ProxySQL's: adding a variable is a one-line change), and how their values are written.

/// How a replayed value is written in the `SET` statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarKind {
    /// A string literal (`'utf8mb4'`, `'ON'`, `'STRICT_TRANS_TABLES'`).
    Text,
    /// A string literal, or `NULL` when the server reports an empty value.
    NullableText,
    /// A bare number: servers refuse `'100'` for numeric variables (ERR 1232).
    Number,
}

/// A system variable Sluice tracks and replays instead of pinning (like ProxySQL's table of
/// tracked variables: adding one is a one-line change here).
#[derive(Debug)]
pub struct TrackedVar {
    pub name: &'static str,
    pub kind: VarKind,
}

const fn var(name: &'static str, kind: VarKind) -> TrackedVar {
    TrackedVar { name, kind }
}

/// How many leading entries of [`TRACKED_VARS`] are the connection character set variables,
/// which are re-read after they change (tracking does not report `collation_connection`
/// after `SET NAMES ... COLLATE`).
pub const CHARSET_VARS: usize = 4;

/// The replayable variables, in the order they are applied: `character_set_connection` before
/// `collation_connection`, since setting the former resets the latter. A variable a server
/// does not have (MariaDB's `max_statement_time` on MySQL, say) is left out on that server.
pub const TRACKED_VARS: &[TrackedVar] = &[
    var("character_set_client", VarKind::Text),
    var("character_set_results", VarKind::NullableText),
    var("character_set_connection", VarKind::Text),
    var("collation_connection", VarKind::Text),
    var("auto_increment_increment", VarKind::Number),
    var("auto_increment_offset", VarKind::Number),
    var("big_tables", VarKind::Text),
    var("block_encryption_mode", VarKind::Text),
    var("completion_type", VarKind::Text),
    var("default_storage_engine", VarKind::Text),
    var("default_tmp_storage_engine", VarKind::NullableText),
    var("default_week_format", VarKind::Number),
    var("div_precision_increment", VarKind::Number),
    var("foreign_key_checks", VarKind::Text),
    var("group_concat_max_len", VarKind::Number),
    var("innodb_lock_wait_timeout", VarKind::Number),
    var("interactive_timeout", VarKind::Number),
    var("join_buffer_size", VarKind::Number),
    var("lc_messages", VarKind::Text),
    var("lc_time_names", VarKind::Text),
    var("lock_wait_timeout", VarKind::Number),
    var("long_query_time", VarKind::Number),
    var("max_execution_time", VarKind::Number),
    var("max_heap_table_size", VarKind::Number),
    var("max_join_size", VarKind::Number),
    var("max_sort_length", VarKind::Number),
    var("max_statement_time", VarKind::Number),
    var("net_read_timeout", VarKind::Number),
    var("net_write_timeout", VarKind::Number),
    var("optimizer_search_depth", VarKind::Number),
    var("optimizer_switch", VarKind::Text),
    var("sort_buffer_size", VarKind::Number),
    var("sql_auto_is_null", VarKind::Text),
    var("sql_big_selects", VarKind::Text),
    var("sql_buffer_result", VarKind::Text),
    var("sql_mode", VarKind::Text),
    var("sql_notes", VarKind::Text),
    var("sql_quote_show_create", VarKind::Text),
    var("sql_safe_updates", VarKind::Text),
    var("sql_select_limit", VarKind::Number),
    var("sql_warnings", VarKind::Text),
    var("time_zone", VarKind::Text),
    var("tmp_table_size", VarKind::Number),
    // MariaDB before 11.1 and MySQL 5.7 call these tx_*; MySQL 8 and later transaction_*.
    var("transaction_isolation", VarKind::Text),
    var("transaction_read_only", VarKind::Text),
    var("tx_isolation", VarKind::Text),
    var("tx_read_only", VarKind::Text),
    var("unique_checks", VarKind::Text),
    var("wait_timeout", VarKind::Number),
];

/// Variables servers report through session tracking that are not session state a client set:
/// MySQL 8 and later report `statement_id`, which changes with every statement; MariaDB with a
/// binary log reports `last_gtid` (read-only) after every write; the database character set and
/// collation follow the current schema, which Sluice replays itself.
pub const IGNORED_VARS: &[&str] = &[
    "statement_id",
    "last_gtid",
    "character_set_database",
    "collation_database",
];

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

/// Values of the tracked variables, as text, in [`TRACKED_VARS`] order; `None` for a variable
/// the server does not have.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VarValues(pub Vec<Option<String>>);

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
        let names = self.names_clause(current);
        for (i, var) in TRACKED_VARS.iter().enumerate() {
            if names.is_some() && i < CHARSET_VARS {
                continue;
            }
            let Some(Some(want)) = self.0.get(i) else {
                continue;
            };
            if matches!(current.0.get(i), Some(Some(have)) if have == want) {
                continue;
            }
            parts.push(assignment(var, want));
        }
        match names {
            Some(names) => Some(
                std::iter::once(format!("SET {names}"))
                    .chain(parts.iter().map(|p| format!("@@SESSION.{p}")))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            None if parts.is_empty() => None,
            None => Some(format!("SET SESSION {}", parts.join(", "))),
        }
    }

    /// `SET SESSION name=value` for the tracked variable `name`, with its value in `self`,
    /// whether or not a connection has it already; `None` if the server has no such variable.
    pub fn set_statement(&self, name: &str) -> Option<String> {
        let i = tracked_index(name)?;
        let want = self.0.get(i)?.as_ref()?;
        Some(format!(
            "SET SESSION {}",
            assignment(TRACKED_VARS.get(i)?, want)
        ))
    }

    /// `NAMES ... COLLATE ...` when the character set variables differ from `current` and
    /// the client, results and connection character sets are one. The server describes result
    /// columns with the collation of `character_set_results`, which the variable's text does
    /// not name: a login (and `SET NAMES x COLLATE y`) sets it to the collation, while
    /// `SET character_set_results = x` sets x's default collation (MySQL: `utf8mb4_0900_ai_ci`
    /// where the login asked for `utf8mb4_general_ci`).
    fn names_clause(&self, current: &VarValues) -> Option<String> {
        let value = |i: usize| self.0.get(i).and_then(|v| v.as_deref());
        let differs = (0..CHARSET_VARS).any(|i| current.0.get(i) != self.0.get(i));
        match (value(0), value(1), value(2), value(3)) {
            (Some(client), Some(results), Some(connection), Some(collation))
                if differs
                    && !client.is_empty()
                    && client == results
                    && client == connection
                    && !collation.is_empty() =>
            {
                Some(format!(
                    "NAMES {} COLLATE {}",
                    quote(client),
                    quote(collation)
                ))
            }
            _ => None,
        }
    }
}

/// A plain decimal number, safe to write unquoted.
fn is_number(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|&b| b == b'.').count() <= 1
}

/// `name=value` for a tracked variable: NULL for an empty nullable text (how the server
/// reports NULL), a number bare, anything else quoted.
fn assignment(var: &TrackedVar, want: &str) -> String {
    let value = match var.kind {
        VarKind::NullableText if want.is_empty() => "NULL".to_string(),
        VarKind::Number if is_number(want) => want.to_string(),
        _ => quote(want),
    };
    format!("{}={value}", var.name)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_variable_is_set_whatever_a_connection_has() {
        let mut v = VarValues(vec![None; TRACKED_VARS.len()]);
        let i = tracked_index("character_set_results").unwrap();
        assert_eq!(v.set_statement("character_set_results"), None);
        v.0[i] = Some("utf8mb4".into());
        assert_eq!(
            v.set_statement("character_set_results").unwrap(),
            "SET SESSION character_set_results='utf8mb4'"
        );
        v.0[i] = Some(String::new());
        assert_eq!(
            v.set_statement("character_set_results").unwrap(),
            "SET SESSION character_set_results=NULL"
        );
        assert_eq!(v.set_statement("no_such_variable"), None);
    }

    #[test]
    fn replay_sets_only_what_differs_in_table_order() {
        let n = TRACKED_VARS.len();
        let mut base = VarValues(vec![None; n]);
        let mut want = VarValues(vec![None; n]);
        let i = |name| tracked_index(name).unwrap();
        for (name, a, b) in [
            ("character_set_client", "latin1", "utf8mb4"),
            ("character_set_results", "latin1", ""),
            ("character_set_connection", "latin1", "latin1"),
            ("wait_timeout", "28800", "100"),
            ("sql_mode", "STRICT_TRANS_TABLES", "ANSI_QUOTES"),
        ] {
            base.0[i(name)] = Some(a.into());
            want.0[i(name)] = Some(b.into());
        }
        assert_eq!(
            want.replay_statement(&base, None).unwrap(),
            "SET SESSION character_set_client='utf8mb4', character_set_results=NULL, \
             sql_mode='ANSI_QUOTES', wait_timeout=100"
        );
        assert_eq!(base.replay_statement(&base, None), None);
        // One character set for client, results and connection: SET NAMES, so that result
        // columns carry the collation as after a login.
        let mut names = base.clone();
        for (name, value) in [
            ("character_set_client", "utf8mb4"),
            ("character_set_results", "utf8mb4"),
            ("character_set_connection", "utf8mb4"),
            ("collation_connection", "utf8mb4_general_ci"),
            ("wait_timeout", "100"),
        ] {
            names.0[i(name)] = Some(value.into());
        }
        assert_eq!(
            names.replay_statement(&base, Some(true)).unwrap(),
            "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci', @@SESSION.autocommit=1, \
             @@SESSION.wait_timeout=100"
        );
        assert_eq!(
            base.replay_statement(&base, Some(false)).unwrap(),
            "SET SESSION autocommit=0"
        );
        // A variable the server lacks is never set.
        assert_eq!(
            base.replay_statement(&VarValues(vec![None; n]), None)
                .map(|s| s.contains("tx_isolation")),
            Some(false)
        );
    }

    #[test]
    fn numbers_are_bare_only_when_they_are_numbers() {
        assert!(is_number("100") && is_number("0.000000") && is_number("-1"));
        assert!(!is_number("") && !is_number("1.2.3") && !is_number("1; DROP"));
    }

    #[test]
    fn quoting_escapes() {
        assert_eq!(quote("a'b\\c"), "'a''b\\\\c'");
        assert_eq!(quote_ident("we`ird"), "`we``ird`");
    }
}
