//! Virtual prepared statements. A client's statement ids are Sluice's own; each execute runs on
//! whichever backend connection the session borrows, where the statement is prepared once and
//! cached (see `backend::statements`). A cursor or long data keeps the backend connection until
//! the execute, the last fetch, a reset or a close.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use crate::backend::BackendError;
use crate::backend::statements::{
    PARSE_VARS, PrepareMeta, RESPONSE_ID_AT, StatementKey, StatementOwner,
};
use crate::errors::ClientError;
use crate::frontend::{ClientSession, Flow, SYNC_ALL};
use crate::protocol::codec::ProtocolError;
use crate::protocol::command::*;
use crate::protocol::response::Expect;
use crate::protocol::{HEADER_LEN, StatusFlags};
use crate::session::tracker::reduce_command;
use crate::session::{PinReason, PinSet, VarValues, tracked_index};
use crate::sql::{self, Classification};

/// Statements one session may hold, as MySQL's default `max_prepared_stmt_count`.
pub const MAX_STATEMENTS_PER_SESSION: usize = 16_382;

/// Statement text one session may hold, all its statements together.
pub const MAX_STATEMENT_BYTES_PER_SESSION: usize = 64 << 20;

/// Statements all sessions together may hold.
pub const MAX_STATEMENTS_TOTAL: usize = 1_000_000;

/// Statement text all sessions together may hold.
pub const MAX_STATEMENT_BYTES_TOTAL: usize = 1 << 30;

/// What all sessions' prepared statements take: a hostile session (or many) cannot grow
/// Sluice's memory without bound; past a bound a prepare gets MySQL's own ERR 1461.
#[derive(Debug, Default)]
pub struct StatementBudget {
    count: AtomicUsize,
    bytes: AtomicUsize,
}

impl StatementBudget {
    /// Takes room for one statement of `bytes` text, if there is room.
    fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let took = self
            .count
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < MAX_STATEMENTS_TOTAL).then_some(n + 1)
            })
            .is_ok();
        if !took {
            return None;
        }
        let room = self
            .bytes
            .fetch_update(Relaxed, Relaxed, |n| {
                (n + bytes <= MAX_STATEMENT_BYTES_TOTAL).then_some(n + bytes)
            })
            .is_ok();
        if !room {
            self.count.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    /// Statements held now, and their text bytes.
    pub fn used(&self) -> (usize, usize) {
        (self.count.load(Relaxed), self.bytes.load(Relaxed))
    }
}

/// One statement's share of the budget, given back when the statement goes.
#[derive(Debug)]
struct Reservation {
    budget: Arc<StatementBudget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.count.fetch_sub(1, Relaxed);
        self.budget.bytes.fetch_sub(self.bytes, Relaxed);
    }
}

/// COM_STMT_EXECUTE flag: open a read-only cursor.
const CURSOR_TYPE_READ_ONLY: u8 = 0x01;

/// Where the parameter block starts in COM_STMT_EXECUTE: command, id, flags, iteration count.
const EXECUTE_PARAMS_AT: usize = 10;

/// A statement as the client prepared it.
#[derive(Debug, Clone)]
pub struct StatementDef {
    pub key: StatementKey,
    pub params: u16,
    /// Parameter types the client last sent (it sends them once and then only values).
    pub types: Option<Arc<[u8]>>,
    /// What the statement's text does to session state, applied at every execute.
    pub class: Arc<Classification>,
    /// Its share of the statement budget.
    reservation: Arc<Reservation>,
}

/// A statement that holds the session's backend connection.
#[derive(Debug, Clone)]
struct Hold {
    server_id: u32,
    /// Prepared for this hold alone (the cached one was held by another statement of the
    /// session); closed when the hold ends.
    private: bool,
    cursor: bool,
    long_data: bool,
    /// Parameter types a private statement holds from its last execute (a cached one keeps
    /// them in its cache entry).
    types: Option<Arc<[u8]>>,
}

/// The session's prepared statements.
#[derive(Debug, Default)]
pub struct SessionStatements {
    next_id: u32,
    defs: HashMap<u32, StatementDef>,
    holds: HashMap<u32, Hold>,
    /// Statements whose long data could not be delivered: their execute fails with this.
    lost_long_data: HashMap<u32, ClientError>,
}

impl SessionStatements {
    /// True while a cursor or long data keeps the backend connection.
    pub fn holds_backend(&self) -> bool {
        !self.holds.is_empty()
    }

    /// Why the statements keep the backend connection: an open cursor, long data.
    pub fn hold_reasons(&self) -> PinSet {
        let mut set = PinSet::default();
        for h in self.holds.values() {
            if h.cursor {
                set.insert(PinReason::Cursor);
            }
            if h.long_data {
                set.insert(PinReason::LongData);
            }
        }
        set
    }

    /// Forgets every statement (the client reset its session or changed user).
    pub fn clear(&mut self) {
        self.defs.clear();
        self.holds.clear();
        self.lost_long_data.clear();
    }

    /// Forgets the holds: the backend connection they were on is gone or reset.
    pub fn drop_holds(&mut self) {
        self.holds.clear();
    }
}

/// The `SET` statements that give a connection whose variables are `current` the settings a
/// statement was prepared with, and that put `current` back; `None` when they already match.
fn settings_switch(
    current: &VarValues,
    settings: &[(usize, String)],
) -> (Option<String>, Option<String>) {
    let mut want = current.clone();
    for (i, v) in settings {
        if let Some(slot) = want.0.get_mut(*i) {
            *slot = Some(v.clone());
        }
    }
    (
        want.replay_statement(current, None),
        current.replay_statement(&want, None),
    )
}

/// The fixed part of a COM_STMT_EXECUTE.
struct Execute {
    id: u32,
    flags: u8,
    /// Offset of the new-params-bound flag in the payload, when the statement has parameters.
    bound_flag_at: Option<usize>,
}

/// Sets the transaction bits of every classic EOF packet's status flags in `framed` (packets
/// with their frame headers) to those of `status`.
fn set_transaction_status(framed: &mut [u8], status: StatusFlags) {
    let bits = StatusFlags::SERVER_STATUS_AUTOCOMMIT
        | StatusFlags::SERVER_STATUS_IN_TRANS
        | StatusFlags::SERVER_STATUS_IN_TRANS_READONLY;
    let mut at = 0;
    while let Some(header) = framed
        .get(at..at + HEADER_LEN)
        .and_then(|h| <&[u8; HEADER_LEN]>::try_from(h).ok())
    {
        let len = crate::protocol::frame_len(header);
        let body = at + HEADER_LEN;
        if len == 5
            && framed.get(body) == Some(&0xFE)
            && let Some(flags) = framed.get_mut(body + 3..body + 5)
        {
            let old = StatusFlags::from_bits_retain(u16::from_le_bytes([flags[0], flags[1]]));
            let new = (old - bits) | (status & bits);
            flags.copy_from_slice(&new.bits().to_le_bytes());
        }
        at = body + len;
    }
}

fn read_id(payload: &[u8]) -> Option<u32> {
    let b = payload.get(1..5)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Why a statement could not be made ready on the backend.
enum NotReady {
    /// The server refused to prepare it: this ERR packet goes to the client.
    Server(Vec<u8>),
    Backend(BackendError),
}

impl From<BackendError> for NotReady {
    fn from(e: BackendError) -> Self {
        NotReady::Backend(e)
    }
}

impl ClientSession {
    /// COM_STMT_PREPARE: answered from the backend connection's cache when it has the
    /// statement, else prepared there.
    pub(in crate::frontend) async fn stmt_prepare(&mut self) -> Flow {
        let max = self.shared.config().max_allowed_packet;
        let payload = match self.client.read_packet(max).await {
            Ok((_, p)) => p,
            Err(ProtocolError::TooLarge { max, .. }) => {
                crate::frontend::farewell(
                    &self.shared.metrics,
                    &mut self.client,
                    1,
                    &ClientError::packet_too_large(max),
                )
                .await;
                return Flow::Close;
            }
            Err(_) => return Flow::Close,
        };
        let text_len = payload.len().saturating_sub(1);
        let session_bytes: usize = self.stmts.defs.values().map(|d| d.reservation.bytes).sum();
        let reservation = if self.stmts.defs.len() >= MAX_STATEMENTS_PER_SESSION
            || session_bytes + text_len > MAX_STATEMENT_BYTES_PER_SESSION
        {
            None
        } else {
            self.shared.statement_budget.reserve(text_len)
        };
        let Some(reservation) = reservation else {
            return self
                .reply_server_error(&ClientError::too_many_statements(
                    MAX_STATEMENTS_PER_SESSION.min(self.stmts.defs.len()),
                ))
                .await;
        };
        if let Err(err) = self.acquire(SYNC_ALL).await {
            return self.reply_error(&err).await;
        }
        let sql = payload.get(1..).unwrap_or_default();
        let class = sql::classify(sql, self.lex_mode(), true);
        let mut key = StatementKey {
            schema: self.state.schema.as_deref().map(Arc::from),
            settings: self.parse_settings(),
            sql: self.shared.statement_texts.intern(sql),
            owner: None,
        };
        let Some(b) = self.backend.as_mut() else {
            return Flow::Close;
        };
        // A statement that reads user variables describes its columns by their types now:
        // the server answers it, not the cache.
        let fresh = class.any(|s| s.reads_user_vars);
        let cached = b
            .statements
            .get_mut(&key)
            .filter(|_| !fresh)
            .map(|e| e.meta.clone());
        let meta = match cached {
            Some(meta) => meta,
            None => match b.prepare(&key).await {
                Ok(Ok((_, meta))) => meta,
                Ok(Err(err_packet)) => return self.prepare_refused(&err_packet).await,
                Err(e) => return self.backend_failed(e).await,
            },
        };
        self.stmts.next_id = self.stmts.next_id.wrapping_add(1).max(1);
        while self.stmts.defs.contains_key(&self.stmts.next_id) {
            self.stmts.next_id = self.stmts.next_id.wrapping_add(1).max(1);
        }
        let id = self.stmts.next_id;
        if meta.params > 0 && self.shared.dialect.is_mysql() {
            // Its executions' types stay with the server statement: this client statement
            // gets one of its own (the cached one, if no execution has typed it yet).
            let owned = StatementKey {
                owner: Some(StatementOwner {
                    client: self.handle.id.0,
                    statement: id,
                }),
                ..key.clone()
            };
            if !b.statements.take_over(&key, owned.clone()) {
                match b.prepare(&owned).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err_packet)) => return self.prepare_refused(&err_packet).await,
                    Err(e) => return self.backend_failed(e).await,
                }
            }
            key = owned;
        }
        self.stmts.defs.insert(
            id,
            StatementDef {
                key,
                params: meta.params,
                types: None,
                class: Arc::new(class),
                reservation: Arc::new(reservation),
            },
        );
        if self.shared.dialect.is_mysql() {
            // MySQL's prepare clears the diagnostics area (MariaDB's keeps it), whether or not
            // this one reached the server.
            self.state.diagnostics.clear();
        }
        let flow = self.send_prepare_response(&meta, id).await;
        self.release_if_free().await;
        flow
    }

    /// The server refused to prepare: its error is the session's diagnostics area, on the
    /// connection the session holds.
    async fn prepare_refused(&mut self, err_packet: &[u8]) -> Flow {
        self.state.diagnostics.statement_ran(0, true);
        if let Some(b) = self.backend.as_mut() {
            b.conditions = true;
        }
        let flow = self.reply_raw_error(err_packet).await;
        self.release_if_free().await;
        flow
    }

    async fn send_prepare_response(&mut self, meta: &PrepareMeta, id: u32) -> Flow {
        let mut response = meta.response.clone();
        if let Some(at) = response.get_mut(RESPONSE_ID_AT..RESPONSE_ID_AT + 4) {
            at.copy_from_slice(&id.to_le_bytes());
        }
        // A cached response's EOF packets show the transaction state of when it was cached.
        if let Some(b) = self.backend.as_ref() {
            set_transaction_status(&mut response, b.status);
        }
        match self.client.write_all(&response).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// Parses the fixed part of the COM_STMT_EXECUTE at the front of the client's buffer and
    /// makes sure its parameter types (if any) are buffered too.
    async fn read_execute_header(&mut self, len: usize) -> Option<(Execute, Option<Vec<u8>>)> {
        let id = read_id(self.payload(len))?;
        let flags = *self.payload(len).get(5)?;
        let params = self
            .stmts
            .defs
            .get(&id)
            .map_or(0, |d| usize::from(d.params));
        if params == 0 {
            return Some((
                Execute {
                    id,
                    flags,
                    bound_flag_at: None,
                },
                None,
            ));
        }
        let flag_at = EXECUTE_PARAMS_AT + params.div_ceil(8);
        let types_end = flag_at + 1 + 2 * params;
        let want = types_end.min(len);
        if self.client.fill(HEADER_LEN + want).await.is_err() {
            return None;
        }
        let payload = self.payload(len);
        let bound = *payload.get(flag_at)? == 1;
        let types = if bound {
            Some(payload.get(flag_at + 1..types_end)?.to_vec())
        } else {
            None
        };
        Some((
            Execute {
                id,
                flags,
                bound_flag_at: Some(flag_at),
            },
            types,
        ))
    }

    /// COM_STMT_EXECUTE.
    pub(in crate::frontend) async fn stmt_execute(&mut self, len: usize) -> Flow {
        let Some((exec, new_types)) = self.read_execute_header(len).await else {
            if self.skip_command().await == Flow::Close {
                return Flow::Close;
            }
            return self
                .reply_error(&ClientError::malformed_packet("COM_STMT_EXECUTE"))
                .await;
        };
        if let Some(err) = self.stmts.lost_long_data.remove(&exec.id) {
            if self.skip_command().await == Flow::Close {
                return Flow::Close;
            }
            return self.reply_error(&err).await;
        }
        let Some(def) = self.stmts.defs.get_mut(&exec.id) else {
            return self.unknown_statement(exec.id, COM_STMT_EXECUTE).await;
        };
        if let Some(types) = new_types {
            def.types = Some(Arc::from(types));
        }
        let def = def.clone();
        if let Err(err) = self.acquire(SYNC_ALL).await {
            if self.skip_command().await == Flow::Close {
                return Flow::Close;
            }
            return self.reply_error(&err).await;
        }
        let reads_diagnostics = def.class.any(|s| s.reads_diagnostics);
        if let Err(e) = self.prepare_connection(&def.class, reads_diagnostics).await {
            return self.failed_before_relay(e.into()).await;
        }
        let (server_id, server_types) = match self.ready_statement(exec.id, &def).await {
            Ok(ready) => ready,
            Err(e) => return self.failed_before_relay(e).await,
        };
        // The server keeps the types of the last execute that sent them; this connection's copy
        // of the statement may have other ones, or none.
        let send_types = exec.bound_flag_at.is_some()
            && def.types.is_some()
            && def.types != server_types
            && self.payload(len).get(exec.bound_flag_at.unwrap_or(0)) == Some(&0);
        let sent = if send_types {
            self.forward_execute_with_types(&exec, server_id, &def)
                .await
        } else {
            self.forward_with_id(server_id).await
        };
        if let Some(flow) = sent {
            return flow;
        }
        self.note_bound_types(exec.id, &def);
        let (flow, summary) = self.relay_reply(Expect::ResultSets).await;
        if let Some(s) = summary {
            let cursor = exec.flags & CURSOR_TYPE_READ_ONLY != 0
                && s.error.is_none()
                && s.status
                    .is_some_and(|st| st.contains(StatusFlags::SERVER_STATUS_CURSOR_EXISTS));
            self.update_hold(exec.id, |h| {
                h.long_data = false;
                h.cursor = cursor;
            })
            .await;
            let class = def.class.clone();
            if crate::frontend::tracking::may_pin(&class, &def.key.sql) {
                self.pending_digest = Some(crate::sql::digest(&def.key.sql));
            }
            let mut reduction = reduce_command(class.statements.first(), &s, self.reduce_context());
            if !class.certain {
                reduction
                    .taint
                    .insert(crate::session::ResetReason::Unclassified);
                reduction.readback_vars = true;
            }
            if self.apply(&s, reduction).await {
                return self.server_released().await;
            }
            self.release_if_free().await;
        }
        flow
    }

    /// COM_STMT_FETCH: only on the backend connection that holds the statement's cursor.
    pub(in crate::frontend) async fn stmt_fetch(&mut self, len: usize) -> Flow {
        let id = read_id(self.payload(len)).unwrap_or(0);
        if !self.stmts.defs.contains_key(&id) {
            return self.unknown_statement(id, COM_STMT_FETCH).await;
        }
        let hold = self.stmts.holds.get(&id).cloned().filter(|h| h.cursor);
        let (Some(hold), true) = (hold, self.backend.is_some()) else {
            if self.skip_command().await == Flow::Close {
                return Flow::Close;
            }
            return self
                .reply_server_error(&ClientError::no_open_cursor(
                    id,
                    self.shared.dialect.is_mysql(),
                ))
                .await;
        };
        if let Some(flow) = self.forward_with_id(hold.server_id).await {
            return flow;
        }
        let (flow, summary) = self.relay_reply(Expect::Fetch).await;
        if let Some(s) = summary {
            // The server closes an exhausted cursor.
            let done = s.error.is_some()
                || s.status
                    .is_some_and(|st| st.contains(StatusFlags::SERVER_STATUS_LAST_ROW_SENT));
            if done {
                self.update_hold(id, |h| h.cursor = false).await;
            }
            self.after_command(&s).await;
        }
        flow
    }

    /// COM_STMT_SEND_LONG_DATA: no response; the data stays on the backend statement, which
    /// keeps the connection until the execute.
    pub(in crate::frontend) async fn stmt_long_data(&mut self, len: usize) -> Flow {
        let id = read_id(self.payload(len)).unwrap_or(0);
        let Some(def) = self.stmts.defs.get(&id).cloned() else {
            // The server answers nothing to this either; the execute will fail.
            return self.skip_command().await;
        };
        // Nothing can be answered now; the execute reports lost data.
        if let Err(err) = self.acquire(SYNC_ALL).await {
            self.stmts.lost_long_data.insert(id, err);
            return self.skip_command().await;
        }
        let server_id = match self.ready_statement(id, &def).await {
            Ok((server_id, _)) => server_id,
            Err(e) => {
                let detail = match e {
                    NotReady::Server(p) => crate::protocol::packets::Err::parse(&p)
                        .map(|e| String::from_utf8_lossy(e.message).into_owned())
                        .unwrap_or_default(),
                    NotReady::Backend(e) => e.to_string(),
                };
                self.stmts
                    .lost_long_data
                    .insert(id, ClientError::backend_lost(&detail));
                self.release_if_free().await;
                return self.skip_command().await;
            }
        };
        if let Some(flow) = self.forward_with_id(server_id).await {
            return flow;
        }
        self.update_hold(id, |h| h.long_data = true).await;
        Flow::Continue
    }

    /// COM_STMT_RESET: clears long data and closes the cursor, which only exist on a held
    /// connection; otherwise there is nothing to reset.
    pub(in crate::frontend) async fn stmt_reset(&mut self, len: usize) -> Flow {
        let id = read_id(self.payload(len)).unwrap_or(0);
        if !self.stmts.defs.contains_key(&id) {
            return self.unknown_statement(id, COM_STMT_RESET).await;
        }
        let Some(hold) = self.stmts.holds.get(&id).cloned() else {
            // As the server's OK would: ROW_COUNT() is 0 after it.
            self.state.answered_locally(0);
            return self.answer_locally(None).await;
        };
        if let Some(flow) = self.forward_with_id(hold.server_id).await {
            return flow;
        }
        let (flow, summary) = self.relay_reply(Expect::Single).await;
        if let Some(s) = summary {
            self.update_hold(id, |h| {
                h.cursor = false;
                h.long_data = false;
            })
            .await;
            self.after_command(&s).await;
        }
        flow
    }

    /// COM_STMT_CLOSE: no response. The statement stays cached on the backend for others.
    pub(in crate::frontend) async fn stmt_close(&mut self, len: usize) -> Flow {
        let id = read_id(self.payload(len)).unwrap_or(0);
        if self.skip_command().await == Flow::Close {
            return Flow::Close;
        }
        let def = self.stmts.defs.remove(&id);
        // A statement of its own (MySQL, see `StatementOwner`) is of no use to anyone else.
        if let (Some(def), Some(b)) = (def.filter(|d| d.key.owner.is_some()), self.backend.as_mut())
            && !self.stmts.holds.contains_key(&id)
            && let Some(e) = b.statements.remove(&def.key)
            && let Err(e) = b.close_statement(e.server_id).await
        {
            tracing::warn!(client = %self.handle.id, error = %e, "cannot close a statement");
            b.broken = true;
        }
        if let Some(hold) = self.stmts.holds.get(&id).cloned()
            && let Some(b) = self.backend.as_mut()
        {
            let mut reset = [0u8; 5];
            reset[0] = COM_STMT_RESET;
            reset[1..].copy_from_slice(&hold.server_id.to_le_bytes());
            let cleared = if hold.private {
                b.close_statement(hold.server_id).await
            } else {
                b.simple_command(&reset, "COM_STMT_RESET").await.map(|_| ())
            };
            if let Err(e) = cleared {
                tracing::warn!(client = %self.handle.id, error = %e, "cannot clear a closed statement's cursor");
                b.broken = true;
            }
            self.update_hold(id, |h| {
                h.cursor = false;
                h.long_data = false;
            })
            .await;
            self.release_if_free().await;
        }
        Flow::Continue
    }

    async fn unknown_statement(&mut self, id: u32, cmd: u8) -> Flow {
        if self.skip_command().await == Flow::Close {
            return Flow::Close;
        }
        // The server names the function that refused, not the command; MySQL 8 and later
        // check every statement command in one place.
        let mysql = self.shared.dialect.is_mysql();
        let function = match cmd {
            COM_STMT_EXECUTE | COM_STMT_FETCH | COM_STMT_RESET | COM_STMT_SEND_LONG_DATA
                if mysql =>
            {
                "mysql_stmt_precheck"
            }
            COM_STMT_EXECUTE => "mysqld_stmt_execute",
            COM_STMT_FETCH => "mysqld_stmt_fetch",
            COM_STMT_RESET => "mysqld_stmt_reset",
            COM_STMT_SEND_LONG_DATA => "mysqld_stmt_send_long_data",
            _ => name(cmd),
        };
        self.reply_server_error(&ClientError::unknown_statement(id, function))
            .await
    }

    /// The server id of statement `id` on the held backend connection, preparing it there if
    /// needed, and the parameter types the server holds for it.
    async fn ready_statement(
        &mut self,
        id: u32,
        def: &StatementDef,
    ) -> Result<(u32, Option<Arc<[u8]>>), NotReady> {
        if let Some(h) = self.stmts.holds.get(&id).cloned() {
            let types = self.held_types(&h, def);
            return Ok((h.server_id, types));
        }
        let b = self
            .backend
            .as_mut()
            .ok_or(NotReady::Backend(BackendError::Unsupported(
                "a statement without a backend connection",
            )))?;
        let held_by_other = match b.statements.get_mut(&def.key) {
            Some(e) if !e.held => return Ok((e.server_id, e.bound_types.clone())),
            Some(_) => true,
            None => false,
        };
        self.before_own_statement().await;
        let b = self
            .backend
            .as_mut()
            .ok_or(NotReady::Backend(BackendError::Unsupported(
                "a statement without a backend connection",
            )))?;
        // Prepare in the schema and settings the client prepared it in, then go back.
        let back = b.schema.clone();
        let switch = def.key.schema.is_some() && def.key.schema.as_deref() != back.as_deref();
        if let (true, Some(schema)) = (switch, def.key.schema.as_deref()) {
            b.init_db(schema).await?;
        }
        let (apply, restore) = settings_switch(&b.vars, &def.key.settings);
        if let Some(sql) = &apply {
            b.query_row(sql, "preparing in the statement's settings")
                .await?;
        }
        let prepared = if held_by_other {
            b.prepare_private(&def.key).await?
        } else {
            b.prepare(&def.key).await?
        };
        if let Some(sql) = &restore {
            b.query_row(sql, "restoring settings after a prepare")
                .await?;
        }
        if let (true, Some(schema)) = (switch, back.as_deref()) {
            b.init_db(schema).await?;
        }
        self.state.own_statement_ran();
        let (server_id, _) = prepared.map_err(NotReady::Server)?;
        if held_by_other {
            self.stmts.holds.insert(
                id,
                Hold {
                    server_id,
                    private: true,
                    cursor: false,
                    long_data: false,
                    types: None,
                },
            );
        }
        Ok((server_id, None))
    }

    /// The session's values of the settings that change how statements parse.
    pub(in crate::frontend) fn parse_settings(&self) -> Arc<[(usize, String)]> {
        let vars = self
            .state
            .vars
            .as_ref()
            .or_else(|| self.backend.as_ref().map(|b| &b.baseline));
        let mut settings: Vec<(usize, String)> = PARSE_VARS
            .iter()
            .filter_map(|name| {
                let i = tracked_index(name)?;
                let v = vars?.0.get(i)?.clone()?;
                Some((i, v))
            })
            .collect();
        // Result columns' collation follows an explicit SET character_set_results on MySQL.
        if self.state.results_collation_set {
            settings.push((usize::MAX, String::new()));
        }
        Arc::from(settings)
    }

    /// Types the server holds for a held statement (see `note_bound_types`).
    fn held_types(&mut self, hold: &Hold, def: &StatementDef) -> Option<Arc<[u8]>> {
        if hold.private {
            return hold.types.clone();
        }
        self.backend
            .as_mut()?
            .statements
            .get_mut(&def.key)
            .and_then(|e| e.bound_types.clone())
    }

    /// After an execute that carried or was given the client's types, the server holds them.
    fn note_bound_types(&mut self, id: u32, def: &StatementDef) {
        let (Some(types), Some(b)) = (def.types.clone(), self.backend.as_mut()) else {
            return;
        };
        match self.stmts.holds.get_mut(&id) {
            Some(h) if h.private => h.types = Some(types),
            _ => {
                if let Some(e) = b.statements.get_mut(&def.key) {
                    e.bound_types = Some(types);
                }
            }
        }
    }

    /// Changes statement `id`'s hold; a hold with neither cursor nor long data ends (a private
    /// statement is closed then), and a new one marks the cached statement as held.
    async fn update_hold(&mut self, id: u32, change: impl FnOnce(&mut Hold)) {
        let Some(def) = self.stmts.defs.get(&id) else {
            self.stmts.holds.remove(&id);
            return;
        };
        let key = def.key.clone();
        let Some(b) = self.backend.as_mut() else {
            self.stmts.holds.remove(&id);
            return;
        };
        let mut hold = match self.stmts.holds.get(&id) {
            Some(h) => h.clone(),
            None => match b.statements.get_mut(&key) {
                Some(e) => Hold {
                    server_id: e.server_id,
                    private: false,
                    cursor: false,
                    long_data: false,
                    types: None,
                },
                None => return,
            },
        };
        change(&mut hold);
        let active = hold.cursor || hold.long_data;
        if !hold.private
            && let Some(e) = b.statements.get_mut(&key)
        {
            e.held = active;
        }
        if active {
            self.stmts.holds.insert(id, hold);
            return;
        }
        self.stmts.holds.remove(&id);
        if hold.private
            && let Err(e) = b.close_statement(hold.server_id).await
        {
            tracing::warn!(client = %self.handle.id, error = %e, "cannot close a private statement");
            b.broken = true;
        }
    }

    /// Forwards the client's command with its statement id replaced by the server's. Returns
    /// the flow if the session cannot go on with the command.
    async fn forward_with_id(&mut self, server_id: u32) -> Option<Flow> {
        if let Some(id) = self
            .client
            .buffered_mut()
            .get_mut(HEADER_LEN + 1..HEADER_LEN + 5)
        {
            id.copy_from_slice(&server_id.to_le_bytes());
        }
        self.send_command().await
    }

    /// Forwards a COM_STMT_EXECUTE that relies on types the server's statement lacks, with the
    /// client's types put in.
    async fn forward_execute_with_types(
        &mut self,
        exec: &Execute,
        server_id: u32,
        def: &StatementDef,
    ) -> Option<Flow> {
        let max = self.shared.config().max_allowed_packet;
        let payload = match self.client.read_packet(max).await {
            Ok((_, p)) => p,
            Err(ProtocolError::TooLarge { max, .. }) => {
                if let Some(b) = self.backend.as_mut() {
                    b.broken = true;
                }
                crate::frontend::farewell(
                    &self.shared.metrics,
                    &mut self.client,
                    1,
                    &ClientError::packet_too_large(max),
                )
                .await;
                return Some(Flow::Close);
            }
            Err(_) => return Some(Flow::Close),
        };
        let (Some(at), Some(types)) = (exec.bound_flag_at, def.types.as_ref()) else {
            return Some(Flow::Close);
        };
        let Some((head, values)) = payload
            .split_at_checked(at)
            .and_then(|(h, rest)| Some((h, rest.get(1..)?)))
        else {
            return Some(
                self.reply_error(&ClientError::malformed_packet("COM_STMT_EXECUTE"))
                    .await,
            );
        };
        let mut rebuilt = Vec::with_capacity(payload.len() + types.len() + 1);
        rebuilt.extend_from_slice(head);
        rebuilt.push(1);
        rebuilt.extend_from_slice(types);
        rebuilt.extend_from_slice(values);
        if let Some(id) = rebuilt.get_mut(1..5) {
            id.copy_from_slice(&server_id.to_le_bytes());
        }
        let b = self.backend.as_mut()?;
        match b.stream.write_packet(0, &rebuilt).await {
            Ok(()) => {
                b.last_used = std::time::Instant::now();
                None
            }
            Err(e) => Some(self.backend_lost(e.into(), false).await),
        }
    }

    /// A statement could not be made ready: the command is dropped and the client told why.
    async fn failed_before_relay(&mut self, e: NotReady) -> Flow {
        if self.skip_command().await == Flow::Close {
            return Flow::Close;
        }
        match e {
            NotReady::Server(packet) => {
                let flow = self.reply_raw_error(&packet).await;
                self.release_if_free().await;
                flow
            }
            NotReady::Backend(e) => self.backend_failed(e).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eof_packets_take_the_transaction_state_and_keep_the_rest() {
        // OK (12 bytes), one definition (3 bytes), EOF with autocommit and no-backslash-escapes.
        let mut framed = Vec::new();
        framed.extend_from_slice(&[12, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        framed.extend_from_slice(&[3, 0, 0, 2, 3, b'd', b'e']);
        framed.extend_from_slice(&[5, 0, 0, 3, 0xFE, 0, 0, 0x02, 0x02]);
        let before = framed.clone();
        set_transaction_status(
            &mut framed,
            StatusFlags::SERVER_STATUS_AUTOCOMMIT | StatusFlags::SERVER_STATUS_IN_TRANS,
        );
        let eof = before.len() - 2;
        assert_eq!(framed[..eof], before[..eof]);
        assert_eq!(framed[eof..], [0x03, 0x02]);
        // A truncated buffer is left alone past its last whole header.
        let mut short = framed[..framed.len() - 3].to_vec();
        set_transaction_status(&mut short, StatusFlags::empty());
    }
}
