//! The per-client loop: read a command, dispatch it, account for it; and the small replies
//! every command handler shares (errors, local OKs, skipping a command).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::{ClientSession, Flow, LoggedIn, farewell};
use crate::context::Shared;
use crate::errors::ClientError;
use crate::frontend::cmd::prepared::SessionStatements;
use crate::metrics::{SessionGauge, UserMetrics};
use crate::protocol::codec::{PacketStream, ProtocolError};
use crate::protocol::command::*;
use crate::protocol::packets::{self};
use crate::protocol::{CapabilityFlags, HEADER_LEN, StatusFlags};
use crate::registry::{Activity, ClientId, SessionHandle};
use crate::session::{PinSet, SessionState};
use crate::sql::{self, Digest};

/// MariaDB's status flag for `ANSI_QUOTES` in the session's `sql_mode`.
const SERVER_STATUS_ANSI_QUOTES: u16 = 0x8000;

impl ClientSession {
    pub(in crate::frontend) fn new(
        client: PacketStream,
        peer: SocketAddr,
        shared: Arc<Shared>,
        handle: Arc<SessionHandle>,
        l: LoggedIn,
        gauge: SessionGauge,
    ) -> Self {
        let key = l.pool_key();
        let state = SessionState {
            schema: l.schema,
            multi_statements: l.caps.contains(CapabilityFlags::CLIENT_MULTI_STATEMENTS),
            ..SessionState::default()
        };
        ClientSession {
            shared,
            handle,
            client,
            peer,
            user: l.user,
            caps: l.caps,
            key,
            scramble: l.scramble,
            state,
            backend: None,
            insert_id_known: true,
            found_rows_known: true,
            diagnostics_check: false,
            diagnostics_marker: false,
            ok_warnings: None,
            stmts: SessionStatements::default(),
            tls: gauge.tls(),
            gauge,
            logged_pins: PinSet::default(),
            logged_borrow_timeout: false,
            pending_digest: None,
        }
    }

    /// This session's user's metrics.
    pub(in crate::frontend) fn user_metrics(&self) -> &UserMetrics {
        self.gauge.user()
    }

    pub(in crate::frontend) fn id(&self) -> ClientId {
        self.handle.id
    }

    pub(in crate::frontend) async fn serve(&mut self) {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            // The end of the last response, held until its effects were applied.
            if self.client.send_held().await.is_err() {
                return;
            }
            if self.backend.is_none() {
                self.client.release_idle_memory();
            } else {
                self.client.trim_memory();
            }
            // On shutdown, sessions end between commands unless a transaction is open; a
            // pinned but idle session ends too (its connection is reset, not reused).
            let in_transaction = self.backend.as_ref().is_some_and(|b| b.in_transaction());
            let stopping = *shutdown.borrow();
            if stopping && !in_transaction {
                self.goodbye(&ClientError::shutting_down()).await;
                return;
            }
            let idle_limit = self.shared.config().idle_client_timeout;
            let idle_in_transaction = self.shared.config().idle_in_transaction_timeout;
            let header = tokio::select! {
                biased;
                _ = self.handle.killed() => {
                    let err = if *shutdown.borrow() {
                        ClientError::shutting_down()
                    } else {
                        ClientError::connection_killed()
                    };
                    self.goodbye(&err).await;
                    return;
                }
                _ = crate::context::stop_requested(&mut shutdown), if !stopping && !in_transaction => {
                    self.goodbye(&ClientError::shutting_down()).await;
                    return;
                }
                _ = tokio::time::sleep(idle_limit), if !in_transaction => {
                    tracing::info!(client = %self.id(), user = %self.key.user, peer = %self.peer,
                        idle_client_timeout = %humantime::format_duration(idle_limit),
                        pinned = !self.state.pins.is_empty(), "closing an idle client");
                    self.goodbye(&ClientError::idle_timeout(idle_limit)).await;
                    return;
                }
                _ = super::intake::idle_in_transaction(idle_in_transaction), if in_transaction => {
                    self.end_idle_transaction(idle_in_transaction).await;
                    return;
                }
                h = self.client.frame_header() => h,
            };
            let Ok((len, seq)) = header else { return };
            if seq != 0 {
                farewell(
                    &self.shared.metrics,
                    &mut self.client,
                    seq.wrapping_add(1),
                    &ClientError::out_of_order(),
                )
                .await;
                return;
            }
            if len == 0 {
                farewell(
                    &self.shared.metrics,
                    &mut self.client,
                    1,
                    &ClientError::malformed_packet("empty command packet"),
                )
                .await;
                return;
            }
            // The whole command (or, if very large, its first part) arrives before anything is
            // borrowed for it, within client_read_timeout.
            if self.read_command(len).await.is_err() {
                return;
            }
            let cmd = self.client.buffered()[HEADER_LEN];
            let started = Instant::now();
            self.handle.set_activity(Activity::Running, started);
            self.shared.stats.commands.fetch_add(1, Relaxed);
            self.pending_digest = None;
            // Boxed: the command's future is large and lives only while the command runs, so
            // an idle session's task keeps just the session (see the idle-memory bench).
            let flow = Box::pin(self.dispatch(cmd, len)).await;
            let done = Instant::now();
            let m = self.user_metrics();
            m.queries.increment(1);
            m.query_latency
                .record(done.duration_since(started).as_secs_f64());
            // A session that ends stays "active" until it has given its connection back.
            if flow == Flow::Close || self.handle.is_killed() {
                return;
            }
            let in_transaction = self.backend.as_ref().is_some_and(|b| b.in_transaction());
            let activity = if in_transaction {
                Activity::InTransaction
            } else {
                Activity::Idle
            };
            self.handle.set_activity(activity, done);
        }
    }

    /// Tells the client why Sluice closes its session, unasked (sequence id 1, as the answer
    /// to the command the client would send next).
    pub(in crate::frontend) async fn goodbye(&mut self, err: &ClientError) {
        farewell(&self.shared.metrics, &mut self.client, 1, err).await;
    }

    /// The digest of the COM_QUERY in the read buffer, if that is what is there.
    pub(in crate::frontend) fn buffered_digest(&self) -> Option<Digest> {
        let (len, _) = self.client.peek_header()?;
        let payload = self.payload(len);
        match payload.split_first() {
            Some((&COM_QUERY, sql)) => Some(sql::digest(sql)),
            _ => None,
        }
    }

    /// The command's bytes available in the buffer (all of it unless it is very large).
    pub(in crate::frontend) fn payload(&self, len: usize) -> &[u8] {
        let buf = self.client.buffered();
        &buf[HEADER_LEN..buf.len().min(HEADER_LEN + len)]
    }

    /// Reads and drops the current client command.
    pub(in crate::frontend) async fn skip_command(&mut self) -> Flow {
        let max = self.shared.config().max_allowed_packet;
        match self.client.skip_packet(max).await {
            Ok(_) => Flow::Continue,
            Err(ProtocolError::TooLarge { max, .. }) => {
                farewell(
                    &self.shared.metrics,
                    &mut self.client,
                    1,
                    &ClientError::packet_too_large(max),
                )
                .await;
                Flow::Close
            }
            Err(_) => Flow::Close,
        }
    }

    pub(in crate::frontend) async fn reply_error(&mut self, err: &ClientError) -> Flow {
        match self
            .client
            .write_packet(1, &self.shared.error_packet(err))
            .await
        {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// Sends an error Sluice answers in the server's name, which becomes the session's
    /// diagnostics area as the server's own would (`SHOW ERRORS`, `@@error_count`).
    pub(in crate::frontend) async fn reply_server_error(&mut self, err: &ClientError) -> Flow {
        self.state.diagnostics.local_error(err);
        // After an error ROW_COUNT() is -1.
        self.state.answered_locally(-1);
        self.reply_error(err).await
    }

    /// Relays an ERR packet the server sent to one of Sluice's own commands.
    pub(in crate::frontend) async fn reply_raw_error(&mut self, packet: &[u8]) -> Flow {
        match self.client.write_packet(1, packet).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// The status flags a locally generated OK carries.
    pub(in crate::frontend) fn local_status(&self) -> StatusFlags {
        let mut s = StatusFlags::empty();
        if self.state.autocommit.unwrap_or(true) {
            s |= StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        }
        if let Some(b) = self.backend.as_ref().filter(|b| b.in_transaction()) {
            // A read-only transaction (one a cursor keeps open, too) says so.
            s |= StatusFlags::SERVER_STATUS_IN_TRANS
                | (b.status & StatusFlags::SERVER_STATUS_IN_TRANS_READONLY);
        }
        // The servers also report the sql_mode flags that change how text is read.
        let mode = self.lex_mode();
        if !mode.backslash_escapes {
            s |= StatusFlags::SERVER_STATUS_NO_BACKSLASH_ESCAPES;
        }
        if mode.ansi_quotes && matches!(mode.dialect, crate::sql::Dialect::MariaDb(_)) {
            s |= StatusFlags::from_bits_retain(SERVER_STATUS_ANSI_QUOTES);
        }
        s
    }

    /// Answers the current command with OK, after reading it (unless `read` says it was).
    pub(in crate::frontend) async fn answer_locally(&mut self, seq: Option<u8>) -> Flow {
        self.answer_locally_with(seq, 0).await
    }

    /// [`ClientSession::answer_locally`] with an OK packet that says `warnings`.
    pub(in crate::frontend) async fn answer_locally_with(
        &mut self,
        seq: Option<u8>,
        warnings: u16,
    ) -> Flow {
        if seq.is_none() && self.skip_command().await == Flow::Close {
            return Flow::Close;
        }
        let ok = packets::ok(0, 0, self.local_status(), warnings);
        match self.client.write_packet(seq.unwrap_or(1), &ok).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// MySQL's OK to COM_PING and COM_INIT_DB counts the conditions the last statement
    /// raised (none after a diagnostics statement), which those commands keep: the session's
    /// count where its area is not on the connection that answers. `None` where the
    /// connection's own count is right (MariaDB counts the command's own conditions).
    pub(in crate::frontend) fn session_warnings_on_ok(&self) -> Option<u16> {
        let mysql = self.shared.dialect.is_mysql();
        let da = &self.state.diagnostics;
        (mysql && !da.on_backend).then(|| u16::try_from(da.raised).unwrap_or(u16::MAX))
    }

    /// Ends the session: a connection the session left state on, or a transaction open, is
    /// reset before reuse (the pins already marked it; `unpin_all` keeps those marks).
    pub(in crate::frontend) async fn finish(&mut self) {
        if let Some(b) = self.backend.as_mut()
            && b.in_transaction()
        {
            b.taint(crate::session::ResetReason::AbandonedTransaction);
        }
        self.unpin_all();
        self.release().await;
        tracing::debug!(client = %self.id(), "client session ended");
    }
}
