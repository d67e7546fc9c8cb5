//! COM_QUERY: classify, handle KILL, give the session its own counters, relay, track.

use crate::backend::BackendError;
use crate::frontend::tracking::may_pin;
use crate::frontend::{ClientSession, Flow, SYNC_ALL};
use crate::protocol::command::*;
use crate::protocol::response::{Expect, INSPECT_WHOLE, Summary};
use crate::sql::{self, Classification};

impl ClientSession {
    /// COM_QUERY: classify, handle KILL, relay, track.
    pub(in crate::frontend) async fn query(&mut self, len: usize) -> Flow {
        let class = sql::classify(&self.payload(len)[1..]);
        self.pending_digest = may_pin(&class, self.payload(len))
            .then(|| sql::digest(self.payload(len).get(1..).unwrap_or_default()));
        if let Some(kill) = class.kill.clone() {
            if self.skip_command().await == Flow::Close {
                return Flow::Close;
            }
            return self.kill(kill, false).await;
        }
        let needs_session_counters = class.uses_last_insert_id || !class.counters.is_empty();
        if !needs_session_counters {
            let (flow, summary) = self.relay_command(Some(Expect::ResultSets), SYNC_ALL).await;
            if let Some(s) = summary {
                self.after_statement(&s, &class).await;
            }
            return flow;
        }
        if let Err(err) = self.acquire(SYNC_ALL).await {
            if self.skip_command().await == Flow::Close {
                return Flow::Close;
            }
            return self.reply_error(&err).await;
        }
        // The backend connection may show another session's counters: give this session's.
        if class.uses_last_insert_id
            && let Err(e) = self.replay_last_insert_id().await
        {
            if self.skip_command().await == Flow::Close {
                return Flow::Close;
            }
            return self.backend_failed(e).await;
        }
        // Calls whose value the borrowed connection does not hold are answered by Sluice.
        let stale: Vec<_> = class
            .counters
            .iter()
            .filter(|c| match c.counter {
                sql::Counter::RowCount => !self.state.counters_on_backend,
                sql::Counter::FoundRows => !self.state.found_rows_on_backend,
            })
            .copied()
            .collect();
        let sent = if !stale.is_empty() && len <= INSPECT_WHOLE {
            self.send_with_counters(len, &stale).await
        } else {
            self.send_command().await
        };
        if let Some(flow) = sent {
            return flow;
        }
        let (flow, summary) = self.relay_reply(Expect::ResultSets).await;
        if let Some(s) = summary {
            self.after_statement(&s, &class).await;
        }
        flow
    }

    /// Sends the client's query with `ROW_COUNT()` and `FOUND_ROWS()` replaced by the session's
    /// values, which the borrowed connection does not have.
    pub(in crate::frontend) async fn send_with_counters(
        &mut self,
        len: usize,
        calls: &[sql::CounterCall],
    ) -> Option<Flow> {
        let sql = self.payload(len).get(1..).unwrap_or_default();
        let mut payload = vec![COM_QUERY];
        payload.extend(sql::substitute_counters(
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
        let Some(b) = self.backend.as_mut() else {
            return Ok(());
        };
        let sql = format!("DO LAST_INSERT_ID({})", self.state.last_insert_id);
        b.query_row(&sql, "replaying LAST_INSERT_ID()").await?;
        self.state.own_statement_ran();
        self.state.insert_id_on_backend = true;
        Ok(())
    }

    /// After a client statement (COM_QUERY, COM_STMT_EXECUTE): the session's counters, then
    /// everything `after_command` does.
    pub(in crate::frontend) async fn after_statement(
        &mut self,
        summary: &Summary,
        class: &Classification,
    ) {
        let st = &mut self.state;
        if let Some(id) = summary.insert_id {
            st.last_insert_id = id;
            st.insert_id_on_backend = true;
        }
        st.row_count = match (summary.error, summary.result_rows, summary.last_ok) {
            (None, None, Some((affected, _))) => i64::try_from(affected).unwrap_or(i64::MAX),
            _ => -1,
        };
        if let Some(rows) = summary.result_rows {
            st.found_rows = rows;
            st.found_rows_on_backend = true;
        }
        st.counters_on_backend = true;
        if class.calc_found_rows
            && summary.error.is_none()
            && let Some(b) = self.backend.as_mut()
        {
            // Only the server knows how many rows the query would have found without LIMIT.
            self.state.own_statement_ran();
            match b
                .query_row("SELECT FOUND_ROWS()", "reading FOUND_ROWS()")
                .await
            {
                Ok(row) => {
                    if let Some(n) = row
                        .and_then(|r| r.into_iter().next().flatten())
                        .and_then(|v| v.parse().ok())
                    {
                        self.state.found_rows = n;
                    }
                }
                Err(e) => {
                    tracing::warn!(client = %self.handle.id, error = %e, "cannot read FOUND_ROWS()");
                    b.broken = true;
                }
            }
        }
        self.after_command(summary, class).await;
    }
}
