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
        let mut tracker = ResponseTracker::new(expect, deprecate_eof, true, untrack);
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

    pub(in crate::frontend) async fn release_if_free(&mut self) {
        let Some(b) = self.backend.as_ref() else {
            return;
        };
        if b.broken
            || (self.state.pins.is_empty()
                && !b.in_transaction()
                && !self.stmts.holds_backend()
                && !self.hold_for_next_transaction
                && !self.keep_for_warnings())
        {
            self.release().await;
        }
    }

    /// Whether to keep the connection for the next command because the last statement left
    /// warnings (so `SHOW WARNINGS` sees them), unless another session is waiting for it.
    pub(in crate::frontend) fn keep_for_warnings(&self) -> bool {
        self.hold_for_warnings && self.shared.pool.counts().2 == 0
    }

    /// Gives the backend connection back. Takes the session's kill lock first, so a
    /// concurrent KILL QUERY finishes before the connection can pass to someone else.
    pub(in crate::frontend) async fn release(&mut self) {
        self.state.connection_released();
        if self.stmts.holds_backend() {
            // Cursors or long data die with the connection's session state.
            if let Some(b) = self.backend.as_mut() {
                b.needs_reset = true;
            }
            self.stmts.drop_holds();
        }
        if let Some(conn) = self.backend.take() {
            let mut slot = self.handle.backend_thread.lock().await;
            *slot = None;
            self.handle.set_lent_thread(None);
            drop(conn);
        }
    }
}
