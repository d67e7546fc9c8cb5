//! COM_QUERY: classify the text, handle KILL and what Sluice answers itself, give the borrowed
//! connection the session's `LAST_INSERT_ID()` and counters where a statement reads them, relay,
//! then apply what the response reported.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::backend::BackendError;
use crate::frontend::tracking::may_pin;
use crate::frontend::{ClientSession, Flow, SYNC_ALL};
use crate::protocol::HEADER_LEN;
use crate::protocol::command::*;
use crate::protocol::response::{Expect, INSPECT_WHOLE};
use crate::session::tracker::{Context, reduce_query};
use crate::sql::{self, Charset, Classification, CounterCall, Diagnostics, Kill, LexMode};

/// Statements up to this size are read whole before they are relayed, so Sluice reads all of
/// their text; longer ones stream through and count as read in part.
pub const CLASSIFY_WHOLE_MAX: usize = 4 << 20;

/// Bytes of such statements buffered at once across all sessions; past it, a statement
/// streams through (and counts as read in part) rather than wait.
pub const CLASSIFY_BUDGET: usize = 64 << 20;

impl ClientSession {
    /// How the server reads this session's statement text.
    pub(in crate::frontend) fn lex_mode(&self) -> LexMode {
        let dialect = self.shared.dialect;
        let vars = self
            .state
            .vars
            .as_ref()
            .or_else(|| self.backend.as_ref().map(|b| &b.baseline));
        let var = |name: &str| {
            let i = crate::session::tracked_index(name)?;
            vars?.0.get(i)?.as_deref()
        };
        let sql_mode = var("sql_mode").unwrap_or_default().to_ascii_uppercase();
        let has = |m: &str| sql_mode.split(',').any(|p| p.trim() == m);
        LexMode {
            backslash_escapes: !has("NO_BACKSLASH_ESCAPES"),
            ansi_quotes: has("ANSI_QUOTES") || has("ANSI"),
            charset: Charset::from_name(var("character_set_client").unwrap_or_default()),
            dialect,
        }
    }

    /// What the tracking reducer needs to know of the session.
    pub(in crate::frontend) fn reduce_context(&self) -> Context {
        let mysql = self.shared.dialect.is_mysql();
        let classic_eof = self.backend.as_ref().is_some_and(|b| {
            !b.caps
                .contains(crate::protocol::CapabilityFlags::CLIENT_DEPRECATE_EOF)
        });
        Context {
            completion_type: self.completion_type(),
            clears_diagnostics_always: mysql,
            eof_hides_changes: mysql && classic_eof,
            results_collation_unseen: mysql,
        }
    }

    /// Makes the whole command available in the read buffer when it fits the limits. Returns
    /// whether it did, or `None` if the client went away.
    async fn buffer_whole(&mut self, len: usize) -> Option<bool> {
        if len <= INSPECT_WHOLE {
            return Some(true);
        }
        // A packet over 16 MiB spans frames; those always stream.
        if len > CLASSIFY_WHOLE_MAX || len >= crate::protocol::MAX_FRAME {
            return Some(false);
        }
        let budget = &self.shared.classify_buffered;
        let reserved = budget
            .fetch_update(Relaxed, Relaxed, |used| {
                (used + len <= CLASSIFY_BUDGET).then_some(used + len)
            })
            .is_ok();
        if !reserved {
            return Some(false);
        }
        // The rest must come within client_read_timeout, as for any command.
        let limit = self.shared.config().client_read_timeout;
        let filled = tokio::time::timeout(limit, self.client.fill(HEADER_LEN + len)).await;
        budget.fetch_sub(len, Relaxed);
        match filled {
            Ok(Ok(())) => Some(true),
            Ok(Err(_)) => None,
            Err(_) => {
                self.stalled_mid_command(len, limit).await;
                None
            }
        }
    }

    /// COM_QUERY.
    pub(in crate::frontend) async fn query(&mut self, len: usize) -> Flow {
        let Some(complete) = self.buffer_whole(len).await else {
            return Flow::Close;
        };
        let sql = self.payload(len).get(1..).unwrap_or_default();
        let class = sql::classify(sql, self.lex_mode(), complete);
        let possibly_diagnostic = sql::possibly_diagnostic(sql);
        self.pending_digest = may_pin(&class, sql).then(|| sql::digest(sql));
        if let Some(kill) = class.kill().cloned()
            && !matches!(kill, Kill::Own { .. })
        {
            if self.skip_command().await == Flow::Close {
                return Flow::Close;
            }
            return self.kill(kill, false).await;
        }
        if class.statements.len() > 1
            && class.any(|s| matches!(s.kill, Some(Kill::Query { .. } | Kill::Connection { .. })))
        {
            if self.skip_command().await == Flow::Close {
                return Flow::Close;
            }
            let err = crate::errors::ClientError::unsupported(
                "KILL inside a multi-statement query; send it as a query of its own",
            );
            return self.reply_error(&err).await;
        }
        // The session's own conditions, when they outlived its hold on their connection.
        if let [st] = class.statements.as_slice()
            && let Some(d @ Diagnostics::Show { .. }) = st.diagnostics
            && !self.state.diagnostics.on_backend
            && let Some(captured) = self.state.diagnostics.captured.clone()
        {
            if self.skip_command().await == Flow::Close {
                return Flow::Close;
            }
            if captured.results_charset == self.results_charset() {
                return self.answer_show_warnings(&captured, d).await;
            }
            // Column definitions follow character_set_results, which changed since.
            if let Err(err) = self.acquire(SYNC_ALL).await {
                return self.reply_error(&err).await;
            }
            let flow = match Box::pin(self.recode_captured(&captured)).await {
                Ok(recoded) => self.answer_show_warnings(&recoded, d).await,
                Err(e) => return self.backend_failed(e).await,
            };
            self.release_if_free().await;
            return flow;
        }
        if let Err(err) = self.acquire(SYNC_ALL).await {
            if self.skip_command().await == Flow::Close {
                return Flow::Close;
            }
            return self.reply_error(&err).await;
        }
        if let Err(e) = self.prepare_connection(&class, possibly_diagnostic).await {
            if self.skip_command().await == Flow::Close {
                return Flow::Close;
            }
            return self.backend_failed(e).await;
        }
        let value_columns = match class.statements.as_slice() {
            [st] => st.value_columns.clone().filter(|c| self.needs_values(c)),
            _ => None,
        };
        // Counter calls of the first statement read the session's previous statement, which
        // the connection may not have run; later statements' read this query's own.
        let stale: Vec<CounterCall> = match (&value_columns, class.statements.first()) {
            (None, Some(first)) => first
                .counters
                .iter()
                .filter(|c| match c.counter {
                    sql::Counter::RowCount => !self.state.counters_on_backend,
                    sql::Counter::FoundRows => !self.state.found_rows_on_backend,
                })
                .copied()
                .collect(),
            _ => Vec::new(),
        };
        let (flow, summary) = if let Some(columns) = value_columns {
            if let Some(flow) = self.send_command().await {
                return flow;
            }
            self.relay_with_values(&columns).await
        } else if !stale.is_empty() {
            if let Some(flow) = self.send_with_counters(len, &stale, class.certain).await {
                return flow;
            }
            self.relay_reply(Expect::ResultSets).await
        } else {
            // Refused unrun by a host that is no longer the writer (or not written at all):
            // sent again to the writer, outside a transaction (frontend/reroute.rs).
            if let Some(flow) = self.send_command_rerouting(SYNC_ALL).await {
                return flow;
            }
            self.relay_reply(Expect::ResultSets).await
        };
        let Some(summary) = summary else {
            return flow;
        };
        let reduction = reduce_query(&class, &summary, self.reduce_context());
        if self.apply(&summary, reduction).await {
            return self.server_released().await;
        }
        self.release_if_free().await;
        flow
    }

    /// Gives the borrowed connection what the query's statements read of the session and the
    /// connection does not have: `LAST_INSERT_ID()`, and an empty diagnostics area in place of
    /// another session's.
    pub(in crate::frontend) async fn prepare_connection(
        &mut self,
        class: &Classification,
        possibly_diagnostic: bool,
    ) -> Result<(), BackendError> {
        let reads_insert_id =
            !class.certain || class.any(|s| s.reads_insert_id || s.sets_insert_id || s.stored_code);
        if reads_insert_id {
            self.replay_last_insert_id().await?;
        }
        // Stored code and GET_LOCK may or may not clear the diagnostics area (on MariaDB only
        // a statement that opens a table does, or a lock wait that times out): the session's
        // own conditions go on the connection first, so that what the server's area holds
        // afterwards is the session's either way.
        let depends = class.any(|s| s.diagnostics_depend_on_run());
        let diagnostics = possibly_diagnostic || !class.certain || depends;
        if diagnostics {
            self.clear_foreign_diagnostics().await?;
        }
        // After the diagnostics: clearing the area changes FOUND_ROWS(). Restoring it takes
        // the session's conditions off the connection (they are captured first), so they go
        // back again (SIGNAL keeps FOUND_ROWS()).
        if class.any(|s| s.found_rows == sql::FoundRows::Unknown) || !class.certain {
            self.restore_found_rows().await?;
        }
        if diagnostics {
            // A marker stands in for conditions SIGNAL cannot raise again, where no statement
            // of the client's could show it.
            self.reraise_captured_conditions(depends && !possibly_diagnostic)
                .await?;
        }
        Ok(())
    }

    /// Puts the session's `FOUND_ROWS()` on the borrowed connection, before code Sluice
    /// cannot see into: whatever that code leaves (the value of its last SELECT, or the one it
    /// found) is then the session's, never the connection's last user's.
    pub(in crate::frontend) async fn restore_found_rows(&mut self) -> Result<(), BackendError> {
        if self.state.found_rows_on_backend {
            return Ok(());
        }
        self.before_own_statement().await;
        let Some(b) = self.backend.as_mut() else {
            return Ok(());
        };
        let sql = found_rows_statement(self.state.found_rows);
        b.query_row(&sql, "restoring FOUND_ROWS()").await?;
        self.state.own_statement_ran();
        self.state.found_rows_on_backend = true;
        Ok(())
    }

    /// The server closes the connection after `COMMIT RELEASE` (or `completion_type =
    /// RELEASE`): the client's session ends as it would directly. The server ends the session
    /// (its locks, its temporary tables) before it closes the connection, so the client's
    /// connection closes only after the server's did: whatever the client does next, as on a
    /// direct connection, finds the session gone.
    pub(in crate::frontend) async fn server_released(&mut self) -> Flow {
        /// How long the server may take to end the session.
        const SESSION_END_WAIT: Duration = Duration::from_secs(5);
        if let Some(b) = self.backend.as_mut() {
            b.broken = true;
            let closed = async {
                while b.stream.read_more().await.is_ok() {
                    let n = b.stream.buffered().len();
                    b.stream.consume(n);
                }
            };
            if tokio::time::timeout(SESSION_END_WAIT, closed)
                .await
                .is_err()
            {
                tracing::warn!(client = %self.handle.id, "the server did not close the released connection");
            }
        }
        Flow::Close
    }

    /// Sends the client's query with the counter calls in `calls` replaced by the session's
    /// values, which the borrowed connection does not have. A query Sluice could not read for
    /// certain is not rewritten; the connection's counters are made neutral instead, so it
    /// never reads another session's.
    async fn send_with_counters(
        &mut self,
        len: usize,
        calls: &[CounterCall],
        certain: bool,
    ) -> Option<Flow> {
        if !certain {
            self.before_own_statement().await;
            let neutral = match self.backend.as_mut() {
                Some(b) => b.query_row("SELECT 0 LIMIT 0", "neutral counters").await,
                None => Ok(None),
            };
            self.state.own_statement_ran();
            if let Err(e) = neutral {
                if self.skip_command().await == Flow::Close {
                    return Some(Flow::Close);
                }
                return Some(self.backend_failed(e).await);
            }
            return self.send_command().await;
        }
        let sql = self.payload(len).get(1..).unwrap_or_default();
        let mut payload = vec![COM_QUERY];
        payload.extend(sql::counters::substitute(
            sql,
            calls,
            self.state.row_count,
            self.state.found_rows,
        ));
        if self.skip_command().await == Flow::Close {
            return Some(Flow::Close);
        }
        let b = self.backend.as_mut()?;
        match b.stream.write_packet(0, &payload).await {
            Ok(()) => None,
            Err(e) => Some(self.backend_lost(e.into(), false).await),
        }
    }

    /// Gives the borrowed connection the session's `LAST_INSERT_ID()`, unless it has it.
    pub(in crate::frontend) async fn replay_last_insert_id(&mut self) -> Result<(), BackendError> {
        if self.state.insert_id_on_backend {
            return Ok(());
        }
        self.before_own_statement().await;
        let Some(b) = self.backend.as_mut() else {
            return Ok(());
        };
        let sql = format!("DO LAST_INSERT_ID({})", self.state.last_insert_id);
        b.query_row(&sql, "replaying LAST_INSERT_ID()").await?;
        self.state.own_statement_ran();
        self.state.insert_id_on_backend = true;
        Ok(())
    }
}

/// A statement after which `FOUND_ROWS()` is `n`: a `SELECT SQL_CALC_FOUND_ROWS ... LIMIT 0`
/// over exactly `n` generated rows (past a million, a million: never another session's
/// value). The work is proportional to `n`; recursion stays within MySQL's default
/// `cte_max_recursion_depth` (1,000).
fn found_rows_statement(n: u64) -> String {
    let n = n.min(1_000_000);
    if n == 0 {
        return "SELECT 1 FROM DUAL WHERE 0".to_string();
    }
    if n <= 1000 {
        return format!(
            "WITH RECURSIVE d(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM d WHERE i < {n}) \
             SELECT SQL_CALC_FOUND_ROWS 1 FROM d LIMIT 0"
        );
    }
    // q full thousands (the filter on `a` applies before the join), then r more.
    let (q, r) = (n / 1000, n % 1000);
    format!(
        "WITH RECURSIVE d(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM d WHERE i < 999) \
         SELECT SQL_CALC_FOUND_ROWS 1 FROM (SELECT 1 AS x FROM d AS a, d AS b WHERE a.i < {q} \
         UNION ALL SELECT 1 FROM d WHERE i < {r}) AS g LIMIT 0"
    )
}
