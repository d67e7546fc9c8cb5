//! One task per client: login, then the command loop. A session borrows a backend connection
//! for each command, brings it into the session's state, relays the command and the response,
//! and gives the connection back as soon as no transaction is open and nothing pins it.
//!
//! A session idle (outside a transaction) for `idle_client_timeout` is closed with ERR 4031;
//! one idle inside a transaction is left alone, since closing it would roll the transaction
//! back (the backend's own `wait_timeout` still applies). On drain, idle sessions are closed
//! with ERR 1053 and sessions in a transaction go on until it ends.

pub(crate) mod handshake;
mod prepared;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

pub use handshake::{LoggedIn, pool_key};

use crate::auth;
use crate::backend::{BackendError, PoolKey, PooledConn};
use crate::config::AuthPluginName;
use crate::credentials::Credential;
use crate::errors::ClientError;
use crate::metrics::{Metrics, SessionGauge, UserMetrics};
use crate::protocol::codec::{PacketStream, ProtocolError};
use crate::protocol::command::{self, *};
use crate::protocol::packets::{self, ChangeUser};
use crate::protocol::relay::{Direction, RelayError, forward_packet, relay_response};
use crate::protocol::response::{Expect, INSPECT_WHOLE, ResponseTracker, Summary, TrackedChange};
use crate::protocol::{CapabilityFlags, HEADER_LEN, StatusFlags};
use crate::registry::{Activity, ClientId, SessionHandle};
use crate::server::Shared;
use crate::session::{PinEffect, PinReason, PinSet, SessionState, is_ignored, tracked_index};
use crate::sql::{self, Classification, Digest, Kill};
use prepared::SessionStatements;

/// How long Sluice tries to deliver a final error to a client it is about to close.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one client connection from its first byte to its close.
pub async fn run(
    socket: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    handle: Arc<SessionHandle>,
) {
    let Ok(mut client) = PacketStream::new(socket) else {
        return;
    };
    let mut seq = 0u8;
    let limit = shared.config().handshake_timeout;
    // Boxed for the same reason as a command's future: login (TLS included) is large and brief.
    let outcome = tokio::time::timeout(
        limit,
        Box::pin(handshake::login(
            &mut client,
            &shared,
            &handle,
            peer,
            &mut seq,
        )),
    )
    .await;
    let logged_in = match outcome {
        Ok(Ok(l)) => l,
        Ok(Err(failure)) => {
            shared.stats.client_handshake_failures.fetch_add(1, Relaxed);
            shared.metrics.setup_failed(failure.reason);
            match failure.reply {
                Some((seq, err)) => {
                    tracing::info!(client = %handle.id, %peer, reason = failure.reason, code = err.code, "client refused");
                    farewell(&shared.metrics, &mut client, seq, &err).await;
                }
                // Load balancer health checks connect and close: not worth an info line.
                None => {
                    tracing::debug!(client = %handle.id, %peer, reason = failure.reason, "login ended")
                }
            }
            return;
        }
        Err(_) => {
            shared.stats.client_handshake_failures.fetch_add(1, Relaxed);
            shared.metrics.setup_failed("handshake timeout");
            tracing::info!(client = %handle.id, %peer, reason = "handshake_timeout", "client refused: login not completed in time");
            farewell(
                &shared.metrics,
                &mut client,
                seq,
                &ClientError::handshake_timeout(limit),
            )
            .await;
            return;
        }
    };
    // Feeds the `tls` metric label and SHOW CLIENTS.
    let tls = client.is_tls();
    handle.set_tls(tls);
    handle.set_user(logged_in.user.username.clone());
    handle.set_activity(Activity::Idle, Instant::now());
    let gauge = shared.metrics.logged_in(&logged_in.user.username, tls);
    tracing::debug!(client = %handle.id, user = %logged_in.user.username, %peer, tls, "client logged in");
    let mut session = ClientSession::new(client, peer, shared, handle, logged_in, gauge);
    session.serve().await;
    session.finish().await;
}

/// Sends a last error before closing, without waiting long for a client that does not read.
async fn farewell(metrics: &Metrics, client: &mut PacketStream, seq: u8, err: &ClientError) {
    metrics.error_sent(err.kind());
    let _ =
        tokio::time::timeout(FAREWELL_TIMEOUT, client.write_packet(seq, &err.to_packet())).await;
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, client.shutdown()).await;
}

/// Refuses a client after Sluice's handshake, the way MySQL refuses one over its connection
/// limit: greeting, the client's login packet, then `err` (ERR 1040) and close.
pub async fn refuse(socket: TcpStream, shared: &Shared, err: ClientError) {
    let Ok(mut client) = PacketStream::new(socket) else {
        return;
    };
    let Ok(scramble) = auth::new_scramble() else {
        return;
    };
    let greeting = packets::Greeting {
        server_version: &shared.server_version,
        connection_id: 0,
        scramble: &scramble,
        // Without CLIENT_SSL: a client must not start TLS just to be refused.
        capabilities: shared.capabilities - CapabilityFlags::CLIENT_SSL,
        collation: shared.collation,
        status: StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        auth_plugin: AuthPluginName::MysqlNativePassword.as_str(),
    }
    .encode();
    if client.write_packet(0, &greeting).await.is_err() {
        return;
    }
    let limit = shared.config().handshake_timeout.min(REFUSAL_READ_TIMEOUT);
    let seq = match tokio::time::timeout(limit, client.read_packet(REFUSAL_MAX_LOGIN_PACKET)).await
    {
        Ok(Ok((seq, _))) => seq.wrapping_add(1),
        // Whatever the client sent (or not), it gets the reason.
        _ => 2,
    };
    farewell(&shared.metrics, &mut client, seq, &err).await;
}

/// How long a refused client may take to send its login packet.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest login packet read from a refused client.
const REFUSAL_MAX_LOGIN_PACKET: usize = 64 * 1024;

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// Which parts of the session state a command needs on its backend connection first.
#[derive(Debug, Clone, Copy)]
struct Sync {
    schema: bool,
    multi_statements: bool,
}

const SYNC_ALL: Sync = Sync {
    schema: true,
    multi_statements: true,
};

struct ClientSession {
    shared: Arc<Shared>,
    handle: Arc<SessionHandle>,
    client: PacketStream,
    peer: SocketAddr,
    user: Credential,
    caps: CapabilityFlags,
    key: PoolKey,
    scramble: [u8; 20],
    state: SessionState,
    backend: Option<PooledConn>,
    /// The last statement left warnings: keep the connection for the next command, so
    /// `SHOW WARNINGS` sees them.
    hold_for_warnings: bool,
    /// The last statement was `SET TRANSACTION`, which applies to the next transaction on
    /// this connection: keep it until that transaction ends.
    hold_for_next_transaction: bool,
    /// Prepared statements, with Sluice's ids.
    stmts: SessionStatements,
    /// Counts the session in the authenticated-clients gauge; holds the user's metrics.
    gauge: SessionGauge,
    /// Whether the client connection uses TLS.
    tls: bool,
    /// Pin reasons already logged at info for this session (each is logged once).
    logged_pins: PinSet,
    /// A borrow timeout was already logged for this session.
    logged_borrow_timeout: bool,
    /// The digest of the statement being run, when it may pin (for the pin's log line).
    pending_digest: Option<Digest>,
}

impl ClientSession {
    fn new(
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
            hold_for_warnings: false,
            hold_for_next_transaction: false,
            stmts: SessionStatements::default(),
            tls: gauge.tls(),
            gauge,
            logged_pins: PinSet::default(),
            logged_borrow_timeout: false,
            pending_digest: None,
        }
    }

    /// This session's user's metrics.
    fn user_metrics(&self) -> &UserMetrics {
        self.gauge.user()
    }

    fn id(&self) -> ClientId {
        self.handle.id
    }

    async fn serve(&mut self) {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
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
                _ = crate::server::stop_requested(&mut shutdown), if !stopping && !in_transaction => {
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
            if self
                .client
                .fill(HEADER_LEN + len.min(INSPECT_WHOLE))
                .await
                .is_err()
            {
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
            let in_transaction = self.backend.as_ref().is_some_and(|b| b.in_transaction());
            let activity = if in_transaction {
                Activity::InTransaction
            } else {
                Activity::Idle
            };
            self.handle.set_activity(activity, done);
            if flow == Flow::Close || self.handle.is_killed() {
                return;
            }
        }
    }

    /// Tells the client why Sluice closes its session, unasked (sequence id 1, as the answer
    /// to the command the client would send next).
    async fn goodbye(&mut self, err: &ClientError) {
        farewell(&self.shared.metrics, &mut self.client, 1, err).await;
    }

    /// The digest of the COM_QUERY in the read buffer, if that is what is there.
    fn buffered_digest(&self) -> Option<Digest> {
        let (len, _) = self.client.peek_header()?;
        let payload = self.payload(len);
        match payload.split_first() {
            Some((&COM_QUERY, sql)) => Some(sql::digest(sql)),
            _ => None,
        }
    }

    /// The command's bytes available in the buffer (all of it unless it is very large).
    fn payload(&self, len: usize) -> &[u8] {
        let buf = self.client.buffered();
        &buf[HEADER_LEN..buf.len().min(HEADER_LEN + len)]
    }

    async fn dispatch(&mut self, cmd: u8, len: usize) -> Flow {
        match cmd {
            COM_QUIT => Flow::Close,
            COM_PING if self.backend.is_none() => self.answer_locally(None).await,
            COM_PING => self.relay_command(Some(Expect::Single), SYNC_ALL).await.0,
            COM_QUERY => self.query(len).await,
            COM_INIT_DB => {
                let schema = String::from_utf8_lossy(&self.payload(len)[1..]).into_owned();
                let sync = Sync {
                    schema: false,
                    ..SYNC_ALL
                };
                let (flow, summary) = self.relay_command(Some(Expect::Single), sync).await;
                if let Some(s) = summary.filter(|s| s.error.is_none()) {
                    // Session tracking reports it too; this covers servers that do not.
                    self.set_schema(Some(schema.clone()));
                    self.after_command(&s, &Default::default()).await;
                }
                flow
            }
            COM_FIELD_LIST => self.relay_and_track(Expect::FieldList).await,
            COM_STATISTICS => self.relay_and_track(Expect::SingleRaw).await,
            COM_SET_OPTION => {
                let option = self
                    .payload(len)
                    .get(1..3)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]));
                let sync = Sync {
                    multi_statements: false,
                    ..SYNC_ALL
                };
                let (flow, summary) = self.relay_command(Some(Expect::Single), sync).await;
                if let (Some(s), Some(option @ (0 | 1))) = (summary, option) {
                    if s.error.is_none() {
                        self.state.multi_statements = option == 0;
                        if let Some(b) = self.backend.as_mut() {
                            b.multi_statements = option == 0;
                        }
                    }
                    self.after_command(&s, &Default::default()).await;
                }
                flow
            }
            COM_STMT_PREPARE => self.stmt_prepare().await,
            COM_STMT_EXECUTE => self.stmt_execute(len).await,
            COM_STMT_FETCH => self.stmt_fetch(len).await,
            COM_STMT_RESET => self.stmt_reset(len).await,
            COM_STMT_SEND_LONG_DATA => self.stmt_long_data(len).await,
            COM_STMT_CLOSE => self.stmt_close(len).await,
            COM_RESET_CONNECTION => self.reset_connection().await,
            COM_CHANGE_USER => self.change_user().await,
            COM_PROCESS_KILL => {
                let id = self
                    .payload(len)
                    .get(1..5)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                if self.skip_command().await == Flow::Close {
                    return Flow::Close;
                }
                match id {
                    Some(id) => {
                        self.kill(
                            Kill::Connection {
                                id: u64::from(id),
                                modifier: None,
                            },
                            true,
                        )
                        .await
                    }
                    None => {
                        self.reply_error(&ClientError::malformed_packet("COM_PROCESS_KILL"))
                            .await
                    }
                }
            }
            // Replication, server administration and long-obsolete commands.
            COM_CREATE_DB | COM_DROP_DB | COM_REFRESH | COM_SHUTDOWN | COM_PROCESS_INFO
            | COM_CONNECT | COM_DEBUG | COM_TIME | COM_DELAYED_INSERT | COM_BINLOG_DUMP
            | COM_TABLE_DUMP | COM_CONNECT_OUT | COM_REGISTER_SLAVE | COM_DAEMON
            | COM_BINLOG_DUMP_GTID => {
                if self.skip_command().await == Flow::Close {
                    return Flow::Close;
                }
                self.reply_error(&ClientError::command_not_relayed(command::name(cmd)))
                    .await
            }
            _ => {
                if self.skip_command().await == Flow::Close {
                    return Flow::Close;
                }
                self.reply_error(&ClientError::unknown_command(cmd)).await
            }
        }
    }

    /// COM_QUERY: classify, handle KILL, relay, track.
    async fn query(&mut self, len: usize) -> Flow {
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
    async fn send_with_counters(&mut self, len: usize, calls: &[sql::CounterCall]) -> Option<Flow> {
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
    async fn replay_last_insert_id(&mut self) -> Result<(), BackendError> {
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

    async fn relay_and_track(&mut self, expect: Expect) -> Flow {
        let (flow, summary) = self.relay_command(Some(expect), SYNC_ALL).await;
        if let Some(s) = summary {
            self.after_command(&s, &Classification::default()).await;
        }
        flow
    }

    /// Makes sure the session holds a backend connection in the session's state.
    async fn acquire(&mut self, sync: Sync) -> Result<(), ClientError> {
        if self.backend.is_none() {
            let borrowed = self
                .shared
                .borrow(&self.key, self.state.schema.as_deref(), self.gauge.user())
                .await;
            let conn = match borrowed {
                Ok(conn) => conn,
                Err(e) => {
                    // A borrow timeout is logged once per session, with what was waiting.
                    let log = !self.logged_borrow_timeout;
                    let timeout = matches!(e, crate::backend::BorrowError::Timeout { .. });
                    let digest = if timeout && log {
                        self.logged_borrow_timeout = true;
                        self.buffered_digest()
                    } else {
                        None
                    };
                    return Err(self.shared.borrow_error(&self.key, e, digest.as_ref(), log));
                }
            };
            *self.handle.backend_thread.lock().await = Some(conn.thread_id);
            self.handle.set_lent_thread(Some(conn.thread_id));
            self.backend = Some(conn);
        }
        if let Err(e) = self.sync_state(sync).await {
            if let Some(b) = self.backend.as_mut() {
                b.broken |= !matches!(e, BackendError::Command { .. });
            }
            self.release_if_free().await;
            return Err(match e {
                BackendError::Command { code, message, .. } => ClientError {
                    code,
                    sql_state: *b"HY000",
                    message,
                },
                other => ClientError::backend_lost(&other.to_string()),
            });
        }
        Ok(())
    }

    /// Applies the session's schema, variables and options to its backend connection.
    async fn sync_state(&mut self, sync: Sync) -> Result<(), BackendError> {
        let Some(b) = self.backend.as_mut() else {
            return Ok(());
        };
        if sync.schema && b.schema != self.state.schema {
            match &self.state.schema {
                Some(s) => b.init_db(s).await?,
                // The password the database accepts now (the user's secret may have rotated
                // since this session logged in).
                None => {
                    let credentials = &self.shared.credentials;
                    let password = credentials
                        .backend_password(&self.user.username)
                        .unwrap_or_else(|| self.user.password.clone());
                    b.change_user_no_schema(&password).await?
                }
            }
        }
        let want_autocommit = self.state.autocommit.unwrap_or(b.baseline_autocommit);
        let autocommit = (b.autocommit != want_autocommit).then_some(want_autocommit);
        // Usually nothing differs: compare in place and copy values only to replay them.
        let replay = {
            let want = self.state.vars.as_ref().unwrap_or(&b.baseline);
            want.replay_statement(&b.vars, autocommit)
                .map(|sql| (sql, want.clone()))
        };
        if let Some((sql, want)) = replay {
            self.state.own_statement_ran();
            b.query_row(&sql, "replaying session variables").await?;
            b.vars = want;
            b.autocommit = want_autocommit;
        }
        if sync.multi_statements && b.multi_statements != self.state.multi_statements {
            b.set_multi_statements(self.state.multi_statements).await?;
        }
        Ok(())
    }

    /// Borrows (if needed), forwards the client's command and relays the response. Returns the
    /// response summary when the command went through, whatever its result.
    async fn relay_command(
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
        if let Some(flow) = self.send_command().await {
            return (flow, None);
        }
        match expect {
            Some(expect) => self.relay_reply(expect).await,
            None => (Flow::Continue, Some(Summary::default())),
        }
    }

    /// Forwards the client's command packet as it is in the buffer.
    async fn send_command(&mut self) -> Option<Flow> {
        let max = self.shared.config().max_allowed_packet;
        let backend = self.backend.as_mut()?;
        let result = forward_packet(
            &mut self.client,
            &mut backend.stream,
            max,
            Direction::ToBackend,
        )
        .await;
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
            Err(RelayError::Client(_)) => {
                backend.broken = true;
                Some(Flow::Close)
            }
        }
    }

    /// Sluice's own command on the backend failed: a server error goes to the client as it is;
    /// a broken connection is dropped.
    async fn backend_failed(&mut self, e: BackendError) -> Flow {
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

    /// Relays an ERR packet the server sent to one of Sluice's own commands.
    async fn reply_raw_error(&mut self, packet: &[u8]) -> Flow {
        match self.client.write_packet(1, packet).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }
    /// Relays the backend's response to the command just sent.
    async fn relay_reply(&mut self, expect: Expect) -> (Flow, Option<Summary>) {
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
            Ok(()) => (Flow::Continue, Some(summary)),
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
    async fn backend_lost(&mut self, e: ProtocolError, response_started: bool) -> Flow {
        let state_lost = !self.state.pins.is_empty()
            || self.backend.as_ref().is_some_and(|b| b.in_transaction());
        tracing::warn!(client = %self.id(), error = %e, state_lost, "backend connection lost during a command");
        if let Some(b) = self.backend.as_mut() {
            b.broken = true;
        }
        self.unpin_all();
        self.release().await;
        let err = ClientError::backend_lost(&e.to_string());
        if response_started || state_lost {
            if !response_started {
                farewell(&self.shared.metrics, &mut self.client, 1, &err).await;
            }
            return Flow::Close;
        }
        self.reply_error(&err).await
    }

    /// After a client statement (COM_QUERY, COM_STMT_EXECUTE): the session's counters, then
    /// everything `after_command` does.
    async fn after_statement(&mut self, summary: &Summary, class: &Classification) {
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

    /// Brings the session up to date with what a response reported, then gives the backend
    /// back if nothing holds it.
    async fn after_command(&mut self, summary: &Summary, class: &Classification) {
        let Some(b) = self.backend.as_mut() else {
            return;
        };
        if let Some(status) = summary.status {
            b.status = status;
            b.autocommit = status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
        }
        let autocommit = b.autocommit;
        let before = self.state.pins.reasons();
        // What the statement created counts even if it failed part-way; what it cleared only
        // if it succeeded.
        let succeeded = summary.error.is_none();
        for effect in &class.effects {
            match effect {
                PinEffect::Add(reason, name) => {
                    let name = qualify(*reason, name.as_deref(), self.state.schema.as_deref());
                    self.state.pins.add(*reason, name.as_deref());
                }
                PinEffect::Remove(reason, name) if succeeded => {
                    let name = qualify(*reason, name.as_deref(), self.state.schema.as_deref());
                    self.state.pins.remove(*reason, name.as_deref());
                }
                PinEffect::Remove(..) => {}
            }
        }
        let mut explained = !class.effects.is_empty() || class.next_transaction;
        let mut charset_changed = false;
        let mut schema_change = None;
        let mut state_changed = summary.untold_state_change;
        let mut unreplayable = None;
        let mut vars_changed = false;
        for change in &summary.changes {
            match change {
                TrackedChange::Schema(s) => {
                    explained = true;
                    schema_change = Some((!s.is_empty()).then(|| s.clone()));
                }
                TrackedChange::SystemVariable { name, value } => {
                    if name.eq_ignore_ascii_case("autocommit") || is_ignored(name) {
                        explained = true;
                    } else if let Some(i) = tracked_index(name) {
                        explained = true;
                        if let Some(v) = b.vars.0.get_mut(i) {
                            *v = Some(value.clone());
                        }
                        charset_changed |= i < crate::session::CHARSET_VARS;
                        vars_changed = true;
                    } else {
                        explained = true;
                        unreplayable = Some(name.clone());
                    }
                }
                TrackedChange::StateChanged => state_changed = true,
            }
        }
        if let Some(name) = unreplayable {
            if !self
                .state
                .pins
                .reasons()
                .contains(PinReason::SessionVariable)
            {
                tracing::info!(client = %self.handle.id, variable = %name, "session variable outside the replayable set");
            }
            self.state.pins.add(PinReason::SessionVariable, None);
        }
        // A procedure's user variables and temporary tables show only as "state changed",
        // whatever variables it also reports.
        if state_changed && (!explained || class.is_call) {
            self.state.pins.add(PinReason::UnknownStateChange, None);
        }
        if charset_changed {
            // Tracking does not report collation_connection after SET NAMES ... COLLATE.
            if let Err(e) = b.read_tracked_state().await {
                tracing::warn!(client = %self.handle.id, error = %e, "cannot read session state");
                b.broken = true;
                self.state.pins.add(PinReason::UnknownStateChange, None);
            }
            self.state.own_statement_ran();
        }
        if vars_changed {
            self.state.vars = Some(b.vars.clone());
        }
        self.state.autocommit = Some(autocommit);
        self.hold_for_warnings = summary.warnings > 0;
        self.hold_for_next_transaction = class.next_transaction && succeeded;
        if let Some(schema) = schema_change {
            self.set_schema(schema);
        }
        self.note_pin_changes(before);
        self.release_if_free().await;
    }

    fn set_schema(&mut self, schema: Option<String>) {
        if let Some(s) = &schema {
            self.shared.remember_schema(&self.key.user, s);
        }
        if let Some(b) = self.backend.as_mut() {
            b.schema = schema.clone();
        }
        self.state.schema = schema;
    }

    /// Counts and logs the reasons that started or stopped holding the session.
    fn note_pin_changes(&mut self, before: PinSet) {
        let after = self.state.pins.reasons();
        if after != before {
            self.handle.set_pins(after);
        }
        for reason in after.iter().filter(|r| !before.contains(*r)) {
            self.shared.stats.pinned(reason);
            // Once per reason and session at info, with the statement's digest (no values).
            if self.logged_pins.insert(reason) {
                let digest = self.pending_digest.as_ref();
                tracing::info!(client = %self.id(), user = %self.key.user, reason = reason.as_str(),
                    digest = %digest.map(ToString::to_string).unwrap_or_default(),
                    statement = digest.map_or("", |d| d.text.as_str()),
                    "session pinned to its backend connection");
            } else {
                tracing::debug!(client = %self.id(), user = %self.key.user, reason = reason.as_str(), "session pinned to its backend connection again");
            }
        }
        self.pending_digest = None;
        for reason in before.iter().filter(|r| !after.contains(*r)) {
            self.shared.stats.unpinned(reason);
            tracing::debug!(client = %self.id(), user = %self.key.user, reason = reason.as_str(), "session state cleared; multiplexing again");
        }
    }

    fn unpin_all(&mut self) {
        let before = self.state.pins.reasons();
        self.state.pins = Default::default();
        self.note_pin_changes(before);
    }

    async fn release_if_free(&mut self) {
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
    fn keep_for_warnings(&self) -> bool {
        self.hold_for_warnings && self.shared.pool.counts().2 == 0
    }

    /// Gives the backend connection back. Takes the session's kill lock first, so a
    /// concurrent KILL QUERY finishes before the connection can pass to someone else.
    async fn release(&mut self) {
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

    /// Reads and drops the current client command.
    async fn skip_command(&mut self) -> Flow {
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

    async fn reply_error(&mut self, err: &ClientError) -> Flow {
        match self
            .client
            .write_packet(1, &self.shared.error_packet(err))
            .await
        {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// The status flags a locally generated OK carries.
    fn local_status(&self) -> StatusFlags {
        let mut s = StatusFlags::empty();
        if self.state.autocommit.unwrap_or(true) {
            s |= StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        }
        if self.backend.as_ref().is_some_and(|b| b.in_transaction()) {
            s |= StatusFlags::SERVER_STATUS_IN_TRANS;
        }
        s
    }

    /// Answers the current command with OK, after reading it (unless `read` says it was).
    async fn answer_locally(&mut self, seq: Option<u8>) -> Flow {
        if seq.is_none() && self.skip_command().await == Flow::Close {
            return Flow::Close;
        }
        let ok = packets::ok(0, 0, self.local_status(), 0);
        match self.client.write_packet(seq.unwrap_or(1), &ok).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// COM_RESET_CONNECTION: the session starts over (keeping its schema, as the server does).
    async fn reset_connection(&mut self) -> Flow {
        if self.skip_command().await == Flow::Close {
            return Flow::Close;
        }
        if let Some(b) = self.backend.as_mut()
            && let Err(e) = b.reset().await
        {
            tracing::warn!(client = %self.handle.id, error = %e, "backend reset failed");
            b.broken = true;
        }
        self.unpin_all();
        self.stmts.clear();
        self.state = SessionState {
            schema: self.state.schema.take(),
            multi_statements: self.state.multi_statements,
            ..SessionState::default()
        };
        self.hold_for_next_transaction = false;
        self.release().await;
        self.answer_locally(Some(1)).await
    }

    /// COM_CHANGE_USER: Sluice authenticates the new user itself; the session starts over.
    async fn change_user(&mut self) -> Flow {
        let max = self.shared.config().max_allowed_packet.min(64 * 1024);
        let payload = match self.client.read_packet(max).await {
            Ok((_, p)) => p,
            Err(_) => return Flow::Close,
        };
        let Some(cu) = ChangeUser::parse(&payload, self.caps) else {
            farewell(
                &self.shared.metrics,
                &mut self.client,
                1,
                &ClientError::malformed_packet("COM_CHANGE_USER"),
            )
            .await;
            return Flow::Close;
        };
        let user_name = String::from_utf8_lossy(cu.user).into_owned();
        let known = self.shared.credentials.get(&user_name);
        let is_known = known.is_some();
        let plugin = known
            .as_ref()
            .map_or(AuthPluginName::MysqlNativePassword, |u| u.auth_plugin);
        let mut seq = 1u8;
        let mut scramble = self.scramble;
        let mut response = cu.auth_response.to_vec();
        let collation = cu.collation.map_or(self.key.collation, |c| c as u8);
        let database =
            (!cu.database.is_empty()).then(|| String::from_utf8_lossy(cu.database).into_owned());
        if cu.auth_plugin != Some(plugin.as_str().as_bytes()) {
            // Ask for an answer to a fresh scramble with the user's plugin.
            scramble = match auth::new_scramble() {
                Ok(s) => s,
                Err(_) => return Flow::Close,
            };
            if self
                .client
                .write_packet(
                    seq,
                    &packets::auth_switch_request(plugin.as_str(), &scramble),
                )
                .await
                .is_err()
            {
                return Flow::Close;
            }
            response = match self.client.read_packet(max).await {
                Ok((s, p)) => {
                    seq = s.wrapping_add(1);
                    p
                }
                Err(_) => return Flow::Close,
            };
        }
        let host = self.peer.ip().to_string();
        let user = match self
            .shared
            .credentials
            .authenticate(known, |u| u.verify_scramble(plugin, &scramble, &response))
            .await
        {
            Some(u) => u,
            None => {
                self.shared.stats.client_auth_failures.fetch_add(1, Relaxed);
                self.shared.metrics.auth_failed(&user_name, is_known);
                tracing::info!(client = %self.id(), user = %user_name, %host, "COM_CHANGE_USER refused");
                farewell(
                    &self.shared.metrics,
                    &mut self.client,
                    seq,
                    &ClientError::access_denied(&user_name, &host, !response.is_empty()),
                )
                .await;
                return Flow::Close;
            }
        };
        if plugin == AuthPluginName::CachingSha2Password && !response.is_empty() {
            if self
                .client
                .write_packet(seq, &packets::auth_more_data(&[auth::FAST_AUTH_OK]))
                .await
                .is_err()
            {
                return Flow::Close;
            }
            seq = seq.wrapping_add(1);
        }
        // The old user's connection goes back (reset first if the session left state on it).
        if let Some(b) = self.backend.as_mut() {
            b.needs_reset = true;
        }
        self.release().await;
        self.unpin_all();
        self.stmts.clear();
        self.hold_for_next_transaction = false;
        self.user = user;
        self.key = pool_key(&self.user.username, self.caps, collation);
        self.handle.set_user(self.user.username.clone());
        self.gauge = self.shared.metrics.logged_in(&self.user.username, self.tls);
        self.state = SessionState {
            schema: None,
            multi_statements: self.caps.contains(CapabilityFlags::CLIENT_MULTI_STATEMENTS),
            ..SessionState::default()
        };
        if let Some(db) = database {
            if let Err(e) = self.shared.check_schema(&self.key, &db).await {
                farewell(&self.shared.metrics, &mut self.client, seq, &e).await;
                return Flow::Close;
            }
            self.state.schema = Some(db);
        }
        let ok = packets::ok(0, 0, self.local_status(), 0);
        match self.client.write_packet(seq, &ok).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// `KILL [QUERY] <id>` and COM_PROCESS_KILL, with ids as Sluice hands them out. The command
    /// itself was already read.
    async fn kill(&mut self, kill: Kill, from_command: bool) -> Flow {
        let (id, modifier, connection) = match kill {
            Kill::Query { id, modifier } => (id, modifier, false),
            Kill::Connection { id, modifier } => (id, modifier, true),
            Kill::Unsupported(what) => {
                return self.reply_error(&ClientError::unsupported(what)).await;
            }
        };
        let target = u32::try_from(id)
            .ok()
            .and_then(|i| self.shared.registry.get(ClientId(i)));
        let Some(target) = target else {
            return self.reply_error(&ClientError::unknown_thread(id)).await;
        };
        if target.user() != self.key.user {
            return self.reply_error(&ClientError::not_owner(id)).await;
        }
        if target.id == self.id() {
            // Killing oneself: nothing else runs on this session; end it for KILL CONNECTION.
            if connection {
                self.handle.kill();
            }
            return self.answer_locally(Some(1)).await;
        }
        if connection {
            target.kill();
        }
        // Stop the target's running statement, if it holds a backend connection. Our own
        // connection is taken first, then the target's lock, so two KILLs cannot deadlock.
        if let Err(err) = self.acquire(SYNC_ALL).await {
            return self.reply_error(&err).await;
        }
        let slot = target.backend_thread.lock().await;
        let Some(thread) = *slot else {
            drop(slot);
            self.release_if_free().await;
            return self.answer_locally(Some(1)).await;
        };
        let statement = match modifier {
            Some(m) => format!("KILL {m} QUERY {thread}"),
            None => format!("KILL QUERY {thread}"),
        };
        let result = match self.backend.as_mut() {
            Some(b) => b.query_row(&statement, "KILL QUERY").await,
            None => Ok(None),
        };
        drop(slot);
        tracing::info!(client = %self.id(), target = id, backend_thread = thread, connection, from_command, "KILL relayed");
        match result {
            Ok(_) => {
                self.release_if_free().await;
                self.answer_locally(Some(1)).await
            }
            Err(e) => self.backend_failed(e).await,
        }
    }

    /// Ends the session: a connection the session left state on is reset before reuse.
    async fn finish(&mut self) {
        let dirty = !self.state.pins.is_empty() || self.stmts.holds_backend();
        self.unpin_all();
        if let Some(b) = self.backend.as_mut()
            && (dirty || b.in_transaction())
        {
            b.needs_reset = true;
        }
        self.release().await;
        tracing::debug!(client = %self.id(), "client session ended");
    }
}

/// Whether a query may pin its session, so its digest is worth computing for the pin's log
/// line: it has pin effects, is a CALL, or is a SET (unreplayable variables pin only once the
/// server reports them).
fn may_pin(class: &Classification, payload: &[u8]) -> bool {
    if !class.effects.is_empty() || class.is_call || class.next_transaction {
        return true;
    }
    let sql = payload.get(1..).unwrap_or_default();
    let start = sql
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(sql.len());
    matches!(
        sql.get(start..start + 4),
        Some([s, e, t, next]) if [*s, *e, *t].eq_ignore_ascii_case(b"SET") && !next.is_ascii_alphanumeric()
    )
}

/// Temporary tables are per schema: an unqualified name means the current schema's table.
fn qualify(reason: PinReason, name: Option<&str>, schema: Option<&str>) -> Option<String> {
    match (reason, name, schema) {
        (PinReason::TemporaryTable, Some(n), Some(s)) if !n.contains('.') => {
            Some(format!("{s}.{n}"))
        }
        (_, name, _) => name.map(str::to_string),
    }
}
