//! Forwards a command to the session's backend connection and relays the response; gives the
//! connection back when nothing holds it; recovers when the connection breaks.

use std::time::Instant;

use super::{ClientSession, Flow, Sync, farewell};
use crate::backend::BackendError;
use crate::errors::ClientError;
use crate::protocol::codec::ProtocolError;
use crate::protocol::relay::{RelayError, forward_command_within, relay_response};
use crate::protocol::response::{Expect, ResponseTracker, Summary};
use crate::protocol::{CapabilityFlags, HEADER_LEN};

impl ClientSession {
    /// Borrows (if needed), forwards the client's command and relays the response. Returns the
    /// response summary when the command went through, whatever its result.
    pub(in crate::frontend) async fn relay_command(
        &mut self,
        expect: Option<Expect>,
        sync: Sync,
    ) -> (Flow, Option<Summary>) {
        if let Err(err) = self.acquire(sync).await {
            if self.skip_command().await == Flow::Close {
                return (Flow::Close, None);
            }
            return (self.reply_error(&err).await, None);
        }
        if let Some(flow) = self.send_command_rerouting(sync).await {
            return (flow, None);
        }
        match expect {
            Some(expect) => self.relay_reply(expect).await,
            None => (Flow::Continue, Some(Summary::default())),
        }
    }

    /// Forwards the client's command packet as it is in the buffer.
    pub(in crate::frontend) async fn send_command(&mut self) -> Option<Flow> {
        let max = self.shared.config().max_allowed_packet;
        // The rest of a command too large to buffer must come within client_read_timeout.
        let limit = self.shared.config().client_read_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let backend = self.backend.as_mut()?;
        let result =
            forward_command_within(&mut self.client, &mut backend.stream, max, deadline).await;
        match result {
            Ok(n) => {
                backend.last_used = std::time::Instant::now();
                self.gauge
                    .user()
                    .bytes_to_database
                    .increment((n + HEADER_LEN) as u64);
                None
            }
            Err(RelayError::TooLarge { .. }) => {
                backend.broken = true;
                farewell(
                    &self.shared.metrics,
                    &mut self.client,
                    1,
                    &ClientError::packet_too_large(max),
                )
                .await;
                Some(Flow::Close)
            }
            Err(RelayError::Backend(e)) | Err(RelayError::BackendMidResponse(e)) => {
                Some(self.backend_lost(e, false).await)
            }
            Err(RelayError::Client(e)) => {
                backend.broken = true;
                if matches!(e, ProtocolError::TimedOut) {
                    let err = ClientError::command_read_timeout(limit);
                    farewell(&self.shared.metrics, &mut self.client, 1, &err).await;
                }
                Some(Flow::Close)
            }
        }
    }

    /// Relays the backend's response to the command just sent.
    pub(in crate::frontend) async fn relay_reply(
        &mut self,
        expect: Expect,
    ) -> (Flow, Option<Summary>) {
        let max = self.shared.config().max_allowed_packet;
        // The command was just forwarded: from here to the response's end is the database's
        // response time (as the client's side of the relay keeps up).
        let started = Instant::now();
        let Some(backend) = self.backend.as_mut() else {
            return (Flow::Close, None);
        };
        let deprecate_eof = backend.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        let untrack = !self.caps.contains(CapabilityFlags::CLIENT_SESSION_TRACK);
        let mut tracker = ResponseTracker::new(expect, deprecate_eof, true, untrack)
            .with_ok_warnings(self.ok_warnings.take());
        let mut summary = Summary::default();
        let result = relay_response(
            &mut backend.stream,
            &mut self.client,
            &mut tracker,
            &mut summary,
            max,
        )
        .await;
        let metrics = self.gauge.user();
        metrics
            .database_latency
            .record(started.elapsed().as_secs_f64());
        metrics.bytes_to_client.increment(summary.relayed_bytes);
        match result {
            Ok(()) => {
                self.note_server_error(summary.error);
                (Flow::Continue, Some(summary))
            }
            Err(RelayError::Client(_)) | Err(RelayError::TooLarge { .. }) => {
                // The backend is mid-response or mid-file: nobody can use it any more.
                backend.broken = true;
                (Flow::Close, None)
            }
            Err(RelayError::Backend(e)) => (self.backend_lost(e, false).await, None),
            Err(RelayError::BackendMidResponse(e)) => (self.backend_lost(e, true).await, None),
        }
    }

    /// The backend connection broke during a command. The client gets an error; the session
    /// survives if nothing it depends on lived only on that connection.
    pub(in crate::frontend) async fn backend_lost(
        &mut self,
        e: ProtocolError,
        response_started: bool,
    ) -> Flow {
        let state_lost = !self.state.pins.is_empty()
            || self.backend.as_ref().is_some_and(|b| b.in_transaction());
        tracing::warn!(client = %self.id(), error = %e, state_lost, "backend connection lost during a command");
        if let Some(b) = self.backend.as_mut() {
            b.broken = true;
        }
        // The host may be gone: the monitor looks now, not at its next tick.
        self.shared.pool.topology().recheck();
        self.unpin_all();
        self.release().await;
        let err = ClientError::statement_interrupted(&e.to_string(), state_lost);
        if response_started || state_lost {
            if !response_started {
                farewell(&self.shared.metrics, &mut self.client, 1, &err).await;
            }
            return Flow::Close;
        }
        self.reply_error(&err).await
    }

    /// Sluice's own command on the backend failed: a server error goes to the client as it is;
    /// a broken connection is dropped.
    pub(in crate::frontend) async fn backend_failed(&mut self, e: BackendError) -> Flow {
        match e {
            BackendError::Command { code, message, .. } => {
                self.release_if_free().await;
                self.reply_error(&ClientError {
                    code,
                    sql_state: *b"HY000",
                    message,
                })
                .await
            }
            other => {
                if let Some(b) = self.backend.as_mut() {
                    b.broken = true;
                }
                self.stmts.drop_holds();
                self.unpin_all();
                self.release().await;
                self.reply_error(&ClientError::backend_lost(&other.to_string()))
                    .await
            }
        }
    }

    /// Gives the backend connection back. First sends the client the end of the response held
    /// for tracking, then reads what only the connection still knows
    /// of the session (its diagnostics area, a `LAST_INSERT_ID()` or `FOUND_ROWS()` the
    /// responses did not carry), then counts why it needs a reset, if it does. Takes the
    /// session's kill lock, so a concurrent KILL QUERY finishes before the connection can pass
    /// to someone else.
    pub(in crate::frontend) async fn release(&mut self) {
        // What the response reported is applied by now; the client need not wait for the
        // statements that follow. A client that went away is noticed at its next read.
        let _ = self.client.send_held().await;
        if self.backend.as_ref().is_some_and(|b| !b.broken) {
            self.before_own_statement().await;
        }
        self.state.connection_released();
        if self.stmts.holds_backend() {
            // Cursors or long data die with the connection's session state.
            if let Some(b) = self.backend.as_mut() {
                for r in self.stmts.hold_reasons().iter() {
                    b.taint(crate::session::ResetReason::Pinned(r));
                }
            }
            self.stmts.drop_holds();
        }
        if let Some(conn) = self.backend.take() {
            if conn.needs_reset && !conn.broken {
                for reason in conn.reset_reasons.iter() {
                    self.shared.stats.reset_requested(reason);
                }
            }
            let mut slot = self.handle.backend_thread.lock().await;
            *slot = None;
            self.handle.set_lent_thread(None);
            drop(conn);
        }
    }

    /// Reads from the connection what only it knows of the session (the diagnostics area, a
    /// `LAST_INSERT_ID()` or `FOUND_ROWS()` no response carried), before a statement of
    /// Sluice's own takes them over or the connection goes back.
    pub(in crate::frontend) async fn before_own_statement(&mut self) {
        self.capture_diagnostics().await;
        if self.insert_id_known && self.found_rows_known {
            return;
        }
        let Some(b) = self.backend.as_mut() else {
            return;
        };
        let row = b
            .query_row("SELECT LAST_INSERT_ID(), FOUND_ROWS()", "reading counters")
            .await;
        // MySQL warns that FOUND_ROWS() is deprecated: the area holds a condition that is not
        // the session's.
        b.conditions |= self.shared.dialect.is_mysql();
        let number = |v: Option<&Option<String>>| v.and_then(|v| v.as_deref()?.parse::<u64>().ok());
        match row {
            Ok(Some(row)) => {
                if !self.insert_id_known
                    && let Some(id) = number(row.first())
                {
                    self.state.last_insert_id = id;
                }
                if !self.found_rows_known
                    && let Some(n) = number(row.get(1))
                {
                    self.state.found_rows = n;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(client = %self.handle.id, error = %e, "cannot read the session's counters");
                b.broken = true;
            }
        }
        self.insert_id_known = true;
        self.found_rows_known = true;
        self.state.own_statement_ran();
    }
}
