//! The session's diagnostics area and the values only the session knows. The server keeps one
//! diagnostics area per connection; a session that moves between connections keeps its own:
//! the conditions of its last statement are read (`SHOW WARNINGS`) before its connection goes
//! back, and `SHOW WARNINGS`, `SHOW ERRORS` and their `COUNT(*)` forms are answered from them.
//! Single-row answers that show a session value (`SELECT ROW_COUNT()`, `@@warning_count`) are
//! relayed with that one value put in, so column definitions stay the server's. A connection
//! whose diagnostics area may hold another session's conditions is cleared before a statement
//! that might show them.

use std::sync::Arc;

use super::{ClientSession, Flow};
use crate::protocol::lenenc::{Reader, put_bytes, put_int};
use crate::protocol::response::{Expect, ResponseTracker, Summary};
use crate::protocol::{CapabilityFlags, StatusFlags, put_packet};
use crate::session::CapturedWarnings;
use crate::sql::{Counter, Diagnostics, Dialect, ValueColumn};

/// Most conditions kept per session (the server's own `max_error_count` default).
const MAX_CAPTURED: usize = 64;

/// The warning Sluice raises on a connection in place of session conditions it cannot raise
/// again (ER_SIGNAL_WARN's code, a message no server writes).
const MARKER_CODE: u16 = 1642;
const MARKER_MESSAGE: &str = "Sluice: this session's conditions are kept by the proxy";

impl ClientSession {
    /// Reads the conditions of the session's last statement off its connection, if they are
    /// there and there are any: before the connection goes back, and before Sluice runs a
    /// statement of its own on it.
    pub(in crate::frontend) async fn capture_diagnostics(&mut self) {
        let d = &self.state.diagnostics;
        if !d.on_backend || d.is_empty() {
            return;
        }
        let Some(b) = self.backend.as_mut().filter(|b| !b.broken) else {
            return;
        };
        match b
            .query_result_set("SHOW WARNINGS", "capturing warnings", MAX_CAPTURED)
            .await
        {
            Ok((head, rows)) => {
                let results_charset = self.results_charset();
                self.state.diagnostics.captured = Some(Arc::new(CapturedWarnings {
                    head,
                    rows,
                    results_charset,
                }));
            }
            Err(e) => {
                tracing::warn!(client = %self.handle.id, error = %e, "cannot read the session's warnings");
                b.broken = true;
            }
        }
        self.state.own_statement_ran();
    }

    /// Makes sure the borrowed connection's diagnostics area holds no other session's
    /// conditions before a statement that might show them.
    pub(in crate::frontend) async fn clear_foreign_diagnostics(
        &mut self,
    ) -> Result<(), crate::backend::BackendError> {
        if self.state.diagnostics.on_backend {
            return Ok(());
        }
        if let Some(err) = self.state.diagnostics.local_error.clone() {
            return Box::pin(self.signal_local_error(&err)).await;
        }
        // A single captured condition goes back on the connection, for a statement (a batch,
        // stored code) that may read it there.
        if let Some(err) = self.single_captured_condition() {
            return Box::pin(self.signal_local_error(&err)).await;
        }
        let dialect = self.shared.dialect;
        let Some(b) = self.backend.as_mut() else {
            return Ok(());
        };
        if !b.conditions {
            return Ok(());
        }
        self.before_own_statement().await;
        let Some(b) = self.backend.as_mut() else {
            return Ok(());
        };
        // MariaDB keeps a connection's warnings across statements that use no table; any
        // statement that uses one clears them. MySQL clears them at every statement.
        let sql = match dialect {
            Dialect::MariaDb(v) if v >= 100600 => {
                "DO (SELECT 1 FROM information_schema.KEYWORDS LIMIT 0)"
            }
            Dialect::MariaDb(_) => "DO (SELECT 1 FROM information_schema.ENGINES LIMIT 0)",
            Dialect::MySql(_) => "DO 0",
        };
        b.query_row(sql, "clearing the diagnostics area").await?;
        b.conditions = false;
        self.state.own_statement_ran();
        Ok(())
    }

    /// Puts the session's conditions back on the borrowed connection, after a statement of
    /// Sluice's own took them off: a single one as it was, more (or one too long for
    /// `SIGNAL`) as Sluice's marker when `marker` allows. Unlike
    /// [`Self::clear_foreign_diagnostics`], never runs a statement that changes
    /// `FOUND_ROWS()`.
    pub(in crate::frontend) async fn reraise_captured_conditions(
        &mut self,
        marker: bool,
    ) -> Result<(), crate::backend::BackendError> {
        let d = &self.state.diagnostics;
        if d.on_backend || self.backend.is_none() {
            return Ok(());
        }
        if let Some(err) = d
            .local_error
            .clone()
            .or_else(|| self.single_captured_condition())
        {
            return Box::pin(self.signal_local_error(&err)).await;
        }
        if !marker || d.is_empty() {
            return Ok(());
        }
        let marker = crate::errors::ClientError {
            code: MARKER_CODE,
            sql_state: *b"01000",
            message: MARKER_MESSAGE.to_string(),
        };
        Box::pin(self.signal_local_error(&marker)).await?;
        // The area holds the marker, not the session's conditions.
        self.state.diagnostics.on_backend = false;
        self.diagnostics_marker = true;
        Ok(())
    }

    /// After stored code ran over Sluice's marker: if the marker is gone, the code replaced
    /// the diagnostics area and the server's is the session's; else the session keeps the
    /// conditions Sluice captured.
    pub(in crate::frontend) async fn settle_marker(&mut self) {
        let Some(b) = self.backend.as_mut().filter(|b| !b.broken) else {
            return;
        };
        let rows = match b
            .query_result_set(
                "SHOW WARNINGS",
                "reading the diagnostics area",
                MAX_CAPTURED,
            )
            .await
        {
            Ok((_, rows)) => rows,
            Err(e) => {
                tracing::warn!(client = %self.handle.id, error = %e, "cannot read the diagnostics area");
                b.broken = true;
                return;
            }
        };
        // SHOW WARNINGS sets ROW_COUNT() and leaves FOUND_ROWS().
        self.state.counters_on_backend = false;
        let is_marker = |row: &Vec<u8>| {
            let mut r = Reader::new(row);
            let _level = r.lenenc_bytes();
            r.lenenc_bytes() == Some(MARKER_CODE.to_string().as_bytes())
                && r.lenenc_bytes() == Some(MARKER_MESSAGE.as_bytes())
        };
        if let [only] = rows.as_slice()
            && is_marker(only)
        {
            return;
        }
        let errors = rows
            .iter()
            .filter(|row| Reader::new(row).lenenc_bytes() == Some(&b"Error"[..]))
            .count();
        self.state.diagnostics = crate::session::DiagnosticsArea {
            on_backend: true,
            warning_count: rows.len() as u64,
            error_count: errors as u64,
            ..Default::default()
        };
    }

    /// The session's one captured condition, when it has exactly one that `SIGNAL` can raise
    /// again as it was (an error or a warning; the SQLSTATE, which `SHOW WARNINGS` does not
    /// show, becomes HY000 or 01000).
    fn single_captured_condition(&self) -> Option<crate::errors::ClientError> {
        let d = &self.state.diagnostics;
        let captured = d.captured.as_ref()?;
        let [row] = captured.rows.as_slice() else {
            return None;
        };
        if d.warning_count != 1 {
            return None;
        }
        let mut r = Reader::new(row);
        let level = r.lenenc_bytes()?;
        let code: u16 = std::str::from_utf8(r.lenenc_bytes()?).ok()?.parse().ok()?;
        let message = std::str::from_utf8(r.lenenc_bytes()?).ok()?;
        let sql_state = match level {
            b"Error" => *b"HY000",
            b"Warning" => *b"01000",
            _ => return None,
        };
        // SIGNAL takes up to 128 characters of message.
        if message.chars().count() > 128 {
            return None;
        }
        Some(crate::errors::ClientError {
            code,
            sql_state,
            message: message.to_string(),
        })
    }

    /// Makes the borrowed connection's diagnostics area hold exactly `err`, an error Sluice
    /// answered itself in the server's name, by raising it there with `SIGNAL`.
    async fn signal_local_error(
        &mut self,
        err: &crate::errors::ClientError,
    ) -> Result<(), crate::backend::BackendError> {
        if self.backend.is_none() {
            return Ok(());
        }
        self.before_own_statement().await;
        // Quotes doubled; backslashes doubled where the session's sql_mode reads them as
        // escapes.
        let mut text = err.message.replace('\'', "''");
        if self.lex_mode().backslash_escapes {
            text = text.replace('\\', "\\\\");
        }
        let sql = format!(
            "SIGNAL SQLSTATE '{}' SET MYSQL_ERRNO = {}, MESSAGE_TEXT = '{text}'",
            String::from_utf8_lossy(&err.sql_state),
            err.code,
        );
        let Some(b) = self.backend.as_mut() else {
            return Ok(());
        };
        match b.query_row(&sql, "raising the session's error").await {
            Err(crate::backend::BackendError::Command { code, .. }) if code == err.code => {}
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        b.conditions = true;
        // SIGNAL leaves FOUND_ROWS() as it was.
        let found_rows = self.state.found_rows_on_backend;
        self.state.own_statement_ran();
        self.state.found_rows_on_backend = found_rows;
        self.state.diagnostics.on_backend = true;
        self.state.diagnostics.local_error = None;
        Ok(())
    }

    /// The session's `character_set_results` (`None`: what a new connection has).
    pub(in crate::frontend) fn results_charset(&self) -> Option<String> {
        let i = crate::session::tracked_index("character_set_results")?;
        self.state.vars.as_ref()?.0.get(i)?.clone()
    }

    /// The captured conditions with column definitions for the session's character set now
    /// (it changed since they were captured), read from the borrowed connection.
    pub(in crate::frontend) async fn recode_captured(
        &mut self,
        captured: &CapturedWarnings,
    ) -> Result<Arc<CapturedWarnings>, crate::backend::BackendError> {
        self.before_own_statement().await;
        let Some(b) = self.backend.as_mut() else {
            return Ok(Arc::new(captured.clone()));
        };
        let (head, _) = b
            .query_result_set(
                "SHOW WARNINGS LIMIT 0",
                "reading the warnings' column definitions",
                0,
            )
            .await?;
        self.state.own_statement_ran();
        let recoded = Arc::new(CapturedWarnings {
            head,
            rows: captured.rows.clone(),
            results_charset: self.results_charset(),
        });
        self.state.diagnostics.captured = Some(recoded.clone());
        Ok(recoded)
    }

    /// Answers `SHOW WARNINGS` / `SHOW ERRORS` from the session's captured conditions. The
    /// command was already read.
    pub(in crate::frontend) async fn answer_show_warnings(
        &mut self,
        captured: &CapturedWarnings,
        d: Diagnostics,
    ) -> Flow {
        let Diagnostics::Show {
            errors_only,
            offset,
            limit,
        } = d
        else {
            return Flow::Continue;
        };
        // A diagnostics statement raises nothing of its own.
        self.state.diagnostics.raised = 0;
        let deprecate_eof = self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        let status = self.local_status();
        let mut out = Vec::new();
        let mut seq = 1u8;
        for p in &captured.head {
            put_packet(&mut out, seq, p);
            seq = seq.wrapping_add(1);
        }
        if !deprecate_eof {
            put_packet(&mut out, seq, &eof(status));
            seq = seq.wrapping_add(1);
        }
        let rows = captured
            .rows
            .iter()
            .filter(|r| !errors_only || first_value(r) == Some(b"Error".as_slice()))
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX)));
        for r in rows {
            put_packet(&mut out, seq, r);
            seq = seq.wrapping_add(1);
        }
        let end = if deprecate_eof {
            ok_terminator(status)
        } else {
            eof(status)
        };
        put_packet(&mut out, seq, &end);
        // As the server's own answer would: a result set, so ROW_COUNT() is -1.
        self.state.answered_locally(-1);
        match self.client.write_all(&out).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// The session's value for a value column, when its connection does not hold it.
    fn session_value(&self, column: ValueColumn) -> Option<Vec<u8>> {
        let st = &self.state;
        match column {
            ValueColumn::Counter(Counter::RowCount) if !st.counters_on_backend => {
                Some(st.row_count.to_string().into_bytes())
            }
            ValueColumn::Counter(Counter::FoundRows) if !st.found_rows_on_backend => {
                Some(st.found_rows.to_string().into_bytes())
            }
            ValueColumn::WarningCount if !st.diagnostics.on_backend => {
                Some(st.diagnostics.warning_count.to_string().into_bytes())
            }
            ValueColumn::ErrorCount if !st.diagnostics.on_backend => {
                Some(st.diagnostics.error_count.to_string().into_bytes())
            }
            _ => None,
        }
    }

    /// True if any of `columns` must show a value the connection does not hold.
    pub(in crate::frontend) fn needs_values(&self, columns: &[ValueColumn]) -> bool {
        columns.iter().any(|c| self.session_value(*c).is_some())
    }

    /// Relays the single-row result of a statement whose columns are session values, with
    /// the values the connection does not hold put in. The response is small and read whole.
    pub(in crate::frontend) async fn relay_with_values(
        &mut self,
        columns: &[ValueColumn],
    ) -> (Flow, Option<Summary>) {
        let values: Vec<Option<Vec<u8>>> = columns.iter().map(|c| self.session_value(*c)).collect();
        let untrack = !self.caps.contains(CapabilityFlags::CLIENT_SESSION_TRACK);
        let Some(b) = self.backend.as_mut() else {
            return (Flow::Close, None);
        };
        let deprecate_eof = b.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        let mut tracker = ResponseTracker::new(Expect::ResultSets, deprecate_eof, true, untrack);
        let mut summary = Summary::default();
        let mut out = Vec::new();
        let mut failure = None;
        while !tracker.is_done() {
            let (seq, p) = match b.stream.read_packet(SMALL_RESPONSE_MAX).await {
                Ok(x) => x,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let rows_before = summary.result_rows;
            let verdict = match tracker.on_packet(&p, p.len(), &mut summary) {
                Ok(v) => v,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            // The first row of the first result set carries the values.
            let first_row = rows_before == Some(0)
                && summary.result_rows == Some(1)
                && summary.results.is_empty();
            let payload = match verdict.replace {
                Some(r) => r,
                None if first_row => rewrite_row(&p, &values).unwrap_or(p),
                None => p,
            };
            put_packet(&mut out, seq, &payload);
        }
        if let Some(e) = failure {
            // Nothing reached the client yet: it can be told.
            return (self.backend_lost(e, false).await, None);
        }
        summary.relayed_bytes = out.len() as u64;
        if self.client.write_all(&out).await.is_err() {
            return (Flow::Close, None);
        }
        (Flow::Continue, Some(summary))
    }
}

/// Largest packet of a single-row answer Sluice reads whole.
const SMALL_RESPONSE_MAX: usize = 1 << 20;

/// The first column value of a text row.
fn first_value(row: &[u8]) -> Option<&[u8]> {
    Reader::new(row).lenenc_nullable()?
}

/// A text row with the values in `values` (where `Some`) put in place of the server's.
fn rewrite_row(row: &[u8], values: &[Option<Vec<u8>>]) -> Option<Vec<u8>> {
    let mut r = Reader::new(row);
    let mut out = Vec::with_capacity(row.len() + 8);
    for v in values {
        let original = r.lenenc_nullable()?;
        match (v, original) {
            (Some(v), _) => put_bytes(&mut out, v),
            (None, Some(o)) => put_bytes(&mut out, o),
            (None, None) => out.push(0xFB),
        }
    }
    Some(out)
}

/// A classic EOF packet with `status`.
fn eof(status: StatusFlags) -> Vec<u8> {
    let mut p = vec![0xFE, 0, 0];
    p.extend_from_slice(&status.bits().to_le_bytes());
    p
}

/// The OK packet that ends a result set under `CLIENT_DEPRECATE_EOF`.
fn ok_terminator(status: StatusFlags) -> Vec<u8> {
    let mut p = vec![0xFE];
    put_int(&mut p, 0);
    put_int(&mut p, 0);
    p.extend_from_slice(&status.bits().to_le_bytes());
    p.extend_from_slice(&0u16.to_le_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_get_values_put_in() {
        let mut row = Vec::new();
        put_bytes(&mut row, b"-1");
        put_bytes(&mut row, b"3");
        row.push(0xFB);
        let out = rewrite_row(&row, &[Some(b"17".to_vec()), None, Some(b"0".to_vec())]).unwrap();
        let mut r = Reader::new(&out);
        assert_eq!(r.lenenc_nullable(), Some(Some(&b"17"[..])));
        assert_eq!(r.lenenc_nullable(), Some(Some(&b"3"[..])));
        assert_eq!(r.lenenc_nullable(), Some(Some(&b"0"[..])));
        assert!(rewrite_row(&row, &[None, None, None, None]).is_none());
    }

    #[test]
    fn terminators_match_the_servers() {
        let s = StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        assert_eq!(ok_terminator(s), b"\xfe\x00\x00\x02\x00\x00\x00");
        assert_eq!(eof(s), b"\xfe\x00\x00\x02\x00");
    }
}
