//! One connection to the backend server: how it is opened and logged in, the session-tracking
//! setup Sluice depends on, and the few commands Sluice sends on its own account.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mysql_common::io::ParseBuf;
use mysql_common::packets::HandshakePacket;
use tokio::net::TcpStream;

use super::pool::PoolKey;
use super::statements::{PrepareMeta, StatementCache, StatementKey};
use super::topology::HostId;
use crate::auth::{self, AuthError};
use crate::config::BackendTlsMode;
use crate::credentials::{BackendSecret, Transport};
use crate::protocol::codec::{PacketStream, ProtocolError};
use crate::protocol::lenenc::Reader;
use crate::protocol::packets::{self, HandshakeResponse};
use crate::protocol::response::{Expect, ResponseTracker, Summary};
use crate::protocol::{CapabilityFlags, StatusFlags, command, ok, put_packet};
use crate::session::{CHARSET_VARS, ResetReason, ResetSet, TRACKED_VARS, VarValues, tracked_index};
use crate::stats::Stats;
use crate::tls::BackendTls;

/// Capabilities that change what the server does or sends, so a client may only use backend
/// connections opened with the same ones. They are part of the pool key.
pub const KEY_CAPS: CapabilityFlags = CapabilityFlags::CLIENT_DEPRECATE_EOF
    .union(CapabilityFlags::CLIENT_FOUND_ROWS)
    .union(CapabilityFlags::CLIENT_LOCAL_FILES)
    .union(CapabilityFlags::CLIENT_IGNORE_SPACE)
    .union(CapabilityFlags::CLIENT_MULTI_RESULTS)
    .union(CapabilityFlags::CLIENT_PS_MULTI_RESULTS);

/// What Sluice asks for on every backend connection, beyond the key's capabilities.
const BASE_CAPS: CapabilityFlags = CapabilityFlags::CLIENT_LONG_PASSWORD
    .union(CapabilityFlags::CLIENT_LONG_FLAG)
    .union(CapabilityFlags::CLIENT_PROTOCOL_41)
    .union(CapabilityFlags::CLIENT_TRANSACTIONS)
    .union(CapabilityFlags::CLIENT_SECURE_CONNECTION)
    .union(CapabilityFlags::CLIENT_PLUGIN_AUTH)
    .union(CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA)
    .union(CapabilityFlags::CLIENT_CONNECT_ATTRS)
    .union(CapabilityFlags::CLIENT_SESSION_TRACK);

/// Largest packet Sluice reads whole on its own account (handshakes, its own small queries).
const CONTROL_PACKET_MAX: usize = 1 << 20;

/// Serial numbers of backend connections, shared by every host's connector.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A Sluice-internal serial number of a backend connection (not the server's thread id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendId(pub u64);

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a backend connection could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("timed out after {} connecting to {address}", humantime::format_duration(*.timeout))]
    ConnectTimeout { address: String, timeout: Duration },
    #[error("the server refused the connection: {message} (error {code})")]
    Refused { code: u16, message: String },
    #[error("{message} (error {code})")]
    LoginRefused { code: u16, message: String },
    #[error("the server lacks {0}, which Sluice needs")]
    Unsupported(&'static str),
    /// Coordinating with other Sluice instances through the database failed.
    #[error("{0}")]
    Coordination(String),
    #[error("the server answered {what} with error {code}: {message}")]
    Command {
        what: &'static str,
        code: u16,
        message: String,
    },
    #[error("the database at {address} does not offer TLS, which backend.tls requires")]
    TlsUnavailable { address: String },
    #[error("TLS handshake with {address} failed: {source}")]
    Tls {
        address: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

impl BackendError {
    /// True when the database rejected the credentials (as opposed to being unreachable).
    pub fn is_login_refused(&self) -> bool {
        matches!(self, BackendError::LoginRefused { .. })
    }
}

/// Opens backend connections to one host.
#[derive(Debug)]
pub struct Connector {
    /// `host:port`, resolved again at every connect.
    pub address: String,
    /// `connect_timeout` in milliseconds; a reload changes it.
    connect_timeout_ms: AtomicU64,
    pub max_packet: u32,
    /// `max_prepared_statements_per_connection`, for connections opened from now on; a reload
    /// changes it.
    statement_cache: AtomicUsize,
    /// Whether and how connections start TLS.
    pub tls: BackendTls,
    stats: Arc<Stats>,
}

impl Connector {
    /// A connector for `address` (`host:port`, resolved at every connect).
    pub fn new(
        address: String,
        connect_timeout: Duration,
        max_packet: u32,
        statement_cache: usize,
        stats: Arc<Stats>,
    ) -> Self {
        Connector {
            address,
            connect_timeout_ms: AtomicU64::new(millis(connect_timeout)),
            max_packet,
            statement_cache: AtomicUsize::new(statement_cache),
            tls: BackendTls::disabled(),
            stats,
        }
    }

    /// How long opening a connection may take, login included.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.load(Ordering::Relaxed))
    }

    /// The statement cache bound connections opened now get.
    pub fn statement_cache(&self) -> usize {
        self.statement_cache.load(Ordering::Relaxed)
    }

    /// Applies reloaded settings to the connections opened from now on.
    pub fn set_limits(&self, connect_timeout: Duration, statement_cache: usize) {
        self.connect_timeout_ms
            .store(millis(connect_timeout), Ordering::Relaxed);
        self.statement_cache
            .store(statement_cache, Ordering::Relaxed);
    }

    /// Uses `tls` for every connection opened from now on.
    pub fn with_tls(mut self, tls: BackendTls) -> Self {
        self.tls = tls;
        self
    }

    /// Opens, logs in (with `secret`) and prepares a connection for `key`, starting in
    /// `schema`.
    pub async fn open(
        &self,
        key: &PoolKey,
        secret: &BackendSecret,
        schema: Option<&str>,
    ) -> Result<BackendConn, BackendError> {
        let result = self
            .within_timeout(async {
                let stream = self.dial().await?;
                let id = BackendId(NEXT_ID.fetch_add(1, Ordering::Relaxed));
                let mut conn = BackendConn::login(stream, id, key, secret, schema, self).await?;
                conn.statements = StatementCache::new(self.statement_cache());
                conn.prepare_session().await?;
                conn.record_baseline();
                Ok(conn)
            })
            .await;
        match &result {
            Ok(_) => self.stats.backend_opened(),
            Err(_) => {
                self.stats
                    .backend_connect_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Takes a connection this connector opened out of the pool's counts (a monitor's).
    pub(crate) fn not_pooled(&self) {
        self.stats.backend_not_pooled();
    }

    /// Reads the server's greeting without logging in: its version and capabilities.
    pub async fn probe(&self) -> Result<(String, CapabilityFlags), BackendError> {
        self.within_timeout(async {
            let mut stream = self.dial().await?;
            let (_, payload) = stream.read_packet(CONTROL_PACKET_MAX).await?;
            let hs = parse_greeting(&payload)?;
            Ok((hs.server_version_str().into_owned(), hs.capabilities()))
        })
        .await
    }

    /// What protects `stream`: TLS counts as verified only when `backend.tls` checks the
    /// certificate.
    fn transport(&self, stream: &PacketStream) -> Transport {
        match (stream.is_tls(), self.tls.mode) {
            (false, _) => Transport::Plain,
            (true, BackendTlsMode::VerifyCa | BackendTlsMode::VerifyIdentity) => {
                Transport::VerifiedTls
            }
            (true, _) => Transport::Tls,
        }
    }

    /// Opens a TCP connection to the backend, resolving its name again.
    async fn dial(&self) -> Result<PacketStream, BackendError> {
        let tcp = TcpStream::connect(self.address.as_str())
            .await
            .map_err(|source| BackendError::Connect {
                address: self.address.clone(),
                source,
            })?;
        Ok(PacketStream::new(tcp).map_err(ProtocolError::from)?)
    }

    /// Bounds a connection attempt by `connect_timeout`.
    async fn within_timeout<T>(
        &self,
        attempt: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let limit = self.connect_timeout();
        tokio::time::timeout(limit, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::ConnectTimeout {
                    address: self.address.clone(),
                    timeout: limit,
                })
            })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn parse_greeting(payload: &[u8]) -> Result<HandshakePacket<'_>, BackendError> {
    if payload.first() == Some(&0xFF) {
        let e = packets::Err::parse(payload).ok_or(ProtocolError::Malformed("ERR packet"))?;
        return Err(BackendError::Refused {
            code: e.code,
            message: e.message_lossy(),
        });
    }
    // mysql_common reads the scramble's length as a signed byte and subtracts 8, which
    // overflows (a panic in debug builds) for 0x80..=0x87; real servers send 21.
    let malformed = || BackendError::Protocol(ProtocolError::Malformed("server greeting"));
    let version_end = payload
        .iter()
        .skip(1)
        .position(|&b| b == 0)
        .ok_or_else(malformed)?;
    // Protocol version, version and its NUL, then connection id (4), scramble (8), filler
    // (1), capabilities (2), collation (1), status (2), capabilities (2).
    if payload
        .get(1 + version_end + 1 + 20)
        .is_some_and(|&b| b >= 0x80)
    {
        return Err(malformed());
    }
    ParseBuf(payload)
        .parse::<HandshakePacket<'_>>(())
        .map_err(|_| malformed())
}

/// An open, logged-in backend connection and what Sluice knows of its session state.
#[derive(Debug)]
pub struct BackendConn {
    pub id: BackendId,
    /// The server's id for this connection (what `KILL` takes).
    pub thread_id: u32,
    pub stream: PacketStream,
    pub key: PoolKey,
    /// Capabilities negotiated with the server.
    pub caps: CapabilityFlags,
    /// Current schema.
    pub schema: Option<String>,
    /// Tracked variables right after login or reset.
    pub baseline: VarValues,
    /// Tracked variables now.
    pub vars: VarValues,
    pub autocommit: bool,
    /// Autocommit right after login or reset.
    pub baseline_autocommit: bool,
    pub multi_statements: bool,
    /// Status flags of the last response.
    pub status: StatusFlags,
    /// The greeting's scramble, which COM_CHANGE_USER answers to.
    nonce: Vec<u8>,
    /// The authentication plugin the login ended with (COM_CHANGE_USER uses it again).
    plugin: Vec<u8>,
    /// What protects the connection (what may be sent in clear on it).
    transport: Transport,
    pub created: Instant,
    pub last_used: Instant,
    /// Served a pinned session or lost its client mid-transaction: reset before reuse.
    pub needs_reset: bool,
    /// Why it needs the reset (see `session::holds`); cleared by the reset.
    pub reset_reasons: ResetSet,
    /// The last statement that ran on it left conditions (warnings, an error) in its
    /// diagnostics area, which a diagnostics statement would show.
    pub conditions: bool,
    /// MySQL: `character_set_results` was set on it (see
    /// [`crate::session::SessionState::results_collation_set`]); cleared by a reset.
    pub results_collation_set: bool,
    /// Unusable (I/O error, protocol confusion): close instead of reuse.
    pub broken: bool,
    /// Statements prepared on the server for the sessions that borrow this connection.
    pub statements: StatementCache,
    /// The host this connection goes to (set by the pool when it opens one).
    pub host: HostId,
    /// The writer epoch it was opened in (see `topology`).
    pub epoch: u64,
    /// The capabilities the server's greeting announced.
    pub server_caps: CapabilityFlags,
    /// Variables outside the replayable set that a `SET STATEMENT` set for one statement,
    /// with the value it restored: MariaDB echoes that value with its next report, which is
    /// then no change (see `session::tracker::Reduction::set_for_statement`).
    pub restored: Vec<(String, String)>,
}

impl BackendConn {
    /// This connection's share of `max_lifetime`: between 90 % and 100 %, spread by its serial
    /// number, so connections opened in one burst do not all expire at once.
    pub fn lifetime(&self, max_lifetime: Duration) -> Duration {
        // A multiplicative hash spreads consecutive ids over the whole range.
        let spread = self.id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54; // 0..1024
        max_lifetime.mul_f64(1.0 - spread as f64 / 10_240.0)
    }

    /// Whether it outlived its share of `max_lifetime`.
    pub fn expired(&self, max_lifetime: Duration) -> bool {
        self.created.elapsed() > self.lifetime(max_lifetime)
    }
}

impl BackendConn {
    async fn login(
        mut stream: PacketStream,
        id: BackendId,
        key: &PoolKey,
        secret: &BackendSecret,
        schema: Option<&str>,
        connector: &Connector,
    ) -> Result<BackendConn, BackendError> {
        let max_packet = connector.max_packet;
        let (seq, payload) = stream.read_packet(CONTROL_PACKET_MAX).await?;
        let hs = parse_greeting(&payload)?;
        let server_caps = hs.capabilities();
        for (cap, name) in [
            (CapabilityFlags::CLIENT_PROTOCOL_41, "protocol 4.1"),
            (
                CapabilityFlags::CLIENT_SECURE_CONNECTION,
                "secure authentication",
            ),
            (
                CapabilityFlags::CLIENT_PLUGIN_AUTH,
                "pluggable authentication",
            ),
            (
                CapabilityFlags::CLIENT_SESSION_TRACK,
                "session tracking (MySQL 5.7+ or MariaDB 10.2+)",
            ),
        ] {
            if !server_caps.contains(cap) {
                return Err(BackendError::Unsupported(name));
            }
        }
        // A session keeps the wire format it negotiated; a server (a new writer, say) that
        // cannot speak it cannot serve the session.
        if !server_caps.contains(key.caps & CapabilityFlags::CLIENT_DEPRECATE_EOF) {
            return Err(BackendError::Unsupported(
                "CLIENT_DEPRECATE_EOF, which this client session negotiated",
            ));
        }
        let mut caps = BASE_CAPS | (key.caps & KEY_CAPS);
        // Multi-statements imply multi-results on the server; only ask when the client copes.
        if key.caps.contains(CapabilityFlags::CLIENT_MULTI_RESULTS) {
            caps |= CapabilityFlags::CLIENT_MULTI_STATEMENTS;
        }
        caps &= server_caps
            | CapabilityFlags::CLIENT_CONNECT_WITH_DB
            | CapabilityFlags::CLIENT_CONNECT_ATTRS;
        let thread_id = hs.connection_id();
        let nonce = hs.nonce();
        let mut plugin: Vec<u8> = hs
            .auth_plugin_name_ref()
            .unwrap_or(b"mysql_native_password")
            .to_vec();
        if auth::client_response(&plugin, &nonce, "").is_err() {
            // A plugin Sluice does not speak: answer for native and let the server switch.
            plugin = auth::NATIVE.as_bytes().to_vec();
        }
        let mut seq = seq.wrapping_add(1);
        match connector.tls.connector() {
            Some((tls, name)) if server_caps.contains(CapabilityFlags::CLIENT_SSL) => {
                caps |= CapabilityFlags::CLIENT_SSL;
                stream
                    .write_packet(seq, &packets::ssl_request(caps, max_packet, key.collation))
                    .await
                    .map_err(ProtocolError::from)?;
                stream
                    .connect_tls(tls, name)
                    .await
                    .map_err(|source| BackendError::Tls {
                        address: connector.address.clone(),
                        source,
                    })?;
                seq = seq.wrapping_add(1);
            }
            _ if connector.tls.required() => {
                return Err(BackendError::TlsUnavailable {
                    address: connector.address.clone(),
                });
            }
            _ => {}
        }
        let transport = connector.transport(&stream);
        let response = secret.response(&plugin, &nonce, transport)?;
        let version = env!("CARGO_PKG_VERSION");
        let attrs = [
            ("_client_name", "sluice"),
            ("_client_version", version),
            ("program_name", "sluice"),
        ];
        let hello = HandshakeResponse {
            capabilities: caps,
            max_packet_size: max_packet,
            collation: key.collation,
            user: key.user.as_bytes(),
            auth_response: &response,
            database: schema.map(str::as_bytes),
            auth_plugin: &plugin,
            connect_attributes: &attrs,
        }
        .encode();
        stream
            .write_packet(seq, &hello)
            .await
            .map_err(ProtocolError::from)?;
        let (status, plugin) =
            auth_exchange(&mut stream, plugin, nonce.clone(), secret, transport).await?;
        let now = Instant::now();
        Ok(BackendConn {
            id,
            thread_id,
            stream,
            key: key.clone(),
            caps,
            schema: schema.map(str::to_string),
            baseline: VarValues::default(),
            vars: VarValues::default(),
            autocommit: status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT),
            baseline_autocommit: status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT),
            multi_statements: caps.contains(CapabilityFlags::CLIENT_MULTI_STATEMENTS),
            status,
            nonce,
            plugin,
            transport,
            created: now,
            last_used: now,
            needs_reset: false,
            reset_reasons: ResetSet::default(),
            conditions: false,
            results_collation_set: false,
            broken: false,
            statements: StatementCache::new(1),
            host: HostId(0),
            epoch: 0,
            server_caps,
            restored: Vec::new(),
        })
    }

    /// Turns on the session tracking Sluice relies on and reads the tracked state. Run after
    /// login and after every reset (a reset turns tracking off again).
    async fn prepare_session(&mut self) -> Result<(), BackendError> {
        self.query_row(
            "SET SESSION session_track_schema=1, session_track_state_change=1, \
             session_track_system_variables='*'",
            "session tracking setup",
        )
        .await?;
        self.read_all_tracked_vars().await?;
        Ok(())
    }

    /// Records the state right after login: what every session that never changed a variable
    /// expects. Not after a reset: MySQL's reset and change of user set the character set
    /// variables to the server's defaults rather than the login's collation, and the next
    /// session must get them replayed back.
    fn record_baseline(&mut self) {
        self.baseline = self.vars.clone();
        self.baseline_autocommit = self.autocommit;
    }

    /// Reads every tracked variable the server has (a variable it lacks stays `None`).
    pub async fn read_all_tracked_vars(&mut self) -> Result<(), BackendError> {
        let names: Vec<&str> = TRACKED_VARS.iter().map(|v| v.name).collect();
        let rows = self
            .session_variables(&names, "reading session variables")
            .await?;
        let mut vars = vec![None; TRACKED_VARS.len()];
        for (name, value) in rows {
            if let Some(i) = tracked_index(&name) {
                vars[i] = Some(value);
            }
        }
        self.vars = VarValues(vars);
        Ok(())
    }

    /// The session's values of `names` (plain variable names), as `SHOW SESSION VARIABLES`
    /// writes them, which is how session tracking reports them (ON/OFF, not 1/0): (name in
    /// lower case, value; NULL reads as empty). Names the server lacks are left out.
    pub async fn session_variables(
        &mut self,
        names: &[&str],
        what: &'static str,
    ) -> Result<Vec<(String, String)>, BackendError> {
        let list: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
        let sql = format!(
            "SHOW SESSION VARIABLES WHERE Variable_name IN ({})",
            list.join(",")
        );
        let rows = self.query_rows(&sql, what, names.len()).await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let mut cols = row.into_iter();
                let name = cols.next()??.to_ascii_lowercase();
                Some((name, cols.next()?.unwrap_or_default()))
            })
            .collect())
    }

    /// Reads the schema and the connection character set variables from the server. Needed
    /// where tracking is silent, such as `collation_connection` after
    /// `SET NAMES ... COLLATE ...`.
    pub async fn read_tracked_state(&mut self) -> Result<(), BackendError> {
        let mut sql = String::from("SELECT DATABASE()");
        for v in &TRACKED_VARS[..CHARSET_VARS] {
            sql.push_str(", @@session.");
            sql.push_str(v.name);
        }
        let row = self
            .query_row(&sql, "reading session state")
            .await?
            .ok_or(ProtocolError::Malformed("session state row"))?;
        if row.len() != CHARSET_VARS + 1 {
            return Err(ProtocolError::Malformed("session state row").into());
        }
        let mut values = row.into_iter();
        self.schema = values.next().flatten();
        if self.vars.0.len() < CHARSET_VARS {
            self.vars.0.resize(TRACKED_VARS.len(), None);
        }
        for (slot, value) in self.vars.0.iter_mut().zip(values) {
            // NULL (character_set_results) reads as empty, as session tracking reports it.
            *slot = Some(value.unwrap_or_default());
        }
        Ok(())
    }

    /// Runs a query for Sluice itself and returns the first row of its result, if any.
    pub async fn query_row(
        &mut self,
        sql: &str,
        what: &'static str,
    ) -> Result<Option<Vec<Option<String>>>, BackendError> {
        Ok(self.query_rows(sql, what, 1).await?.into_iter().next())
    }

    /// Runs a query for Sluice itself and returns up to `max_rows` rows of its result.
    pub async fn query_rows(
        &mut self,
        sql: &str,
        what: &'static str,
        max_rows: usize,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        Ok(self.query_named(sql, what, max_rows).await?.1)
    }

    /// Runs a query for Sluice itself: its column names and up to `max_rows` rows.
    pub async fn query_named(
        &mut self,
        sql: &str,
        what: &'static str,
        max_rows: usize,
    ) -> Result<(Vec<String>, Vec<Vec<Option<String>>>), BackendError> {
        let mut payload = Vec::with_capacity(1 + sql.len());
        payload.push(command::COM_QUERY);
        payload.extend_from_slice(sql.as_bytes());
        self.stream
            .write_packet(0, &payload)
            .await
            .map_err(ProtocolError::from)?;
        let deprecate_eof = self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        let (_, first) = self.stream.read_packet(CONTROL_PACKET_MAX).await?;
        let columns = match first.first() {
            Some(0x00) => {
                self.note_status(&first, true)?;
                return Ok((Vec::new(), Vec::new()));
            }
            Some(0xFF) => return Err(command_error(what, &first)),
            _ => Reader::new(&first)
                .lenenc_int()
                .ok_or(ProtocolError::Malformed("column count"))?,
        };
        let mut names = Vec::new();
        for _ in 0..columns {
            let (_, def) = self.stream.read_packet(CONTROL_PACKET_MAX).await?;
            names.push(column_name(&def).unwrap_or_default());
        }
        if !deprecate_eof {
            self.stream.read_packet(CONTROL_PACKET_MAX).await?;
        }
        let mut rows = Vec::new();
        loop {
            let (_, p) = self.stream.read_packet(CONTROL_PACKET_MAX).await?;
            if ok::is_terminator(p.first().copied().unwrap_or(0), p.len()) {
                self.note_status(&p, deprecate_eof)?;
                return Ok((names, rows));
            }
            if p.first() == Some(&0xFF) {
                return Err(command_error(what, &p));
            }
            if rows.len() < max_rows {
                let mut r = Reader::new(&p);
                let mut values = Vec::new();
                for _ in 0..columns {
                    let v = r
                        .lenenc_nullable()
                        .ok_or(ProtocolError::Malformed("text row"))?;
                    values.push(v.map(|b| String::from_utf8_lossy(b).into_owned()));
                }
                rows.push(values);
            }
        }
    }

    /// Runs a query for Sluice itself that answers with one result set and returns its
    /// packets' payloads: the column count and definitions, then the rows (no EOF packets).
    pub async fn query_result_set(
        &mut self,
        sql: &str,
        what: &'static str,
        max_rows: usize,
    ) -> Result<(Vec<Vec<u8>>, Vec<Vec<u8>>), BackendError> {
        let mut payload = Vec::with_capacity(1 + sql.len());
        payload.push(command::COM_QUERY);
        payload.extend_from_slice(sql.as_bytes());
        self.stream
            .write_packet(0, &payload)
            .await
            .map_err(ProtocolError::from)?;
        let deprecate_eof = self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        let (_, first) = self.stream.read_packet(CONTROL_PACKET_MAX).await?;
        let columns = match first.first() {
            Some(0xFF) => return Err(command_error(what, &first)),
            Some(0x00) => return Err(ProtocolError::Malformed("expected a result set").into()),
            _ => Reader::new(&first)
                .lenenc_int()
                .ok_or(ProtocolError::Malformed("column count"))?,
        };
        let mut head = vec![first];
        for _ in 0..columns {
            head.push(self.stream.read_packet(CONTROL_PACKET_MAX).await?.1);
        }
        if !deprecate_eof {
            self.stream.read_packet(CONTROL_PACKET_MAX).await?;
        }
        let mut rows = Vec::new();
        loop {
            let (_, p) = self.stream.read_packet(CONTROL_PACKET_MAX).await?;
            if ok::is_terminator(p.first().copied().unwrap_or(0), p.len()) {
                self.note_status(&p, deprecate_eof)?;
                return Ok((head, rows));
            }
            if p.first() == Some(&0xFF) {
                return Err(command_error(what, &p));
            }
            if rows.len() < max_rows {
                rows.push(p);
            }
        }
    }

    /// Prepares a statement on the server for the cache and returns its id and response, or
    /// the server's ERR packet. Statements evicted to make room are closed on the server.
    pub async fn prepare(
        &mut self,
        key: &StatementKey,
    ) -> Result<Result<(u32, Arc<PrepareMeta>), Vec<u8>>, BackendError> {
        let prepared = self.prepare_private(key).await?;
        if let Ok((server_id, meta)) = &prepared {
            for evicted in self
                .statements
                .insert(key.clone(), *server_id, meta.clone())
            {
                self.close_statement(evicted).await?;
            }
        }
        Ok(prepared)
    }

    /// Prepares a statement on the server outside the cache (its owner closes it).
    pub async fn prepare_private(
        &mut self,
        key: &StatementKey,
    ) -> Result<Result<(u32, Arc<PrepareMeta>), Vec<u8>>, BackendError> {
        let mut payload = Vec::with_capacity(1 + key.sql.len());
        payload.push(command::COM_STMT_PREPARE);
        payload.extend_from_slice(&key.sql);
        self.stream
            .write_packet(0, &payload)
            .await
            .map_err(ProtocolError::from)?;
        // The response is kept whole, to answer later prepares of the same text.
        let deprecate_eof = self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        let mut tracker = ResponseTracker::new(Expect::Prepare, deprecate_eof, true, false);
        let mut summary = Summary::default();
        let mut response = Vec::with_capacity(256);
        while !tracker.is_done() {
            let (seq, p) = self.stream.read_packet(CONTROL_PACKET_MAX).await?;
            tracker.on_packet(&p, p.len(), &mut summary)?;
            if summary.error.is_some() {
                return Ok(Err(p));
            }
            put_packet(&mut response, seq, &p);
        }
        let prepared = summary
            .prepared
            .ok_or(ProtocolError::Malformed("prepare OK"))?;
        let meta = Arc::new(PrepareMeta {
            response,
            params: prepared.params,
            columns: prepared.columns,
        });
        Ok(Ok((prepared.statement_id, meta)))
    }

    /// Closes a statement on the server (COM_STMT_CLOSE has no response).
    pub async fn close_statement(&mut self, server_id: u32) -> Result<(), BackendError> {
        let mut payload = [0u8; 5];
        payload[0] = command::COM_STMT_CLOSE;
        payload[1..].copy_from_slice(&server_id.to_le_bytes());
        self.stream
            .write_packet(0, &payload)
            .await
            .map_err(ProtocolError::from)?;
        Ok(())
    }

    /// Sends a command answered by one OK, EOF or ERR and returns its status.
    pub async fn simple_command(
        &mut self,
        payload: &[u8],
        what: &'static str,
    ) -> Result<StatusFlags, BackendError> {
        self.stream
            .write_packet(0, payload)
            .await
            .map_err(ProtocolError::from)?;
        let (_, p) = self.stream.read_packet(CONTROL_PACKET_MAX).await?;
        match p.first() {
            Some(0x00) => self.note_status(&p, true),
            Some(0xFE) => self.note_status(
                &p,
                self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF),
            ),
            Some(0xFF) => Err(command_error(what, &p)),
            _ => Err(ProtocolError::Malformed("reply to a simple command").into()),
        }
    }

    fn note_status(&mut self, p: &[u8], is_ok: bool) -> Result<StatusFlags, BackendError> {
        let status = if is_ok && p.len() > 5 {
            ok::Ok::parse(p, true).map(|o| o.status)
        } else {
            ok::eof_status(p)
        }
        .ok_or(ProtocolError::Malformed("OK packet"))?;
        self.status = status;
        self.autocommit = status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
        Ok(status)
    }

    /// Switches the current schema.
    pub async fn init_db(&mut self, schema: &str) -> Result<(), BackendError> {
        let mut payload = vec![command::COM_INIT_DB];
        payload.extend_from_slice(schema.as_bytes());
        self.simple_command(&payload, "COM_INIT_DB").await?;
        self.schema = Some(schema.to_string());
        Ok(())
    }

    /// Turns multi-statement queries on or off (COM_SET_OPTION).
    pub async fn set_multi_statements(&mut self, on: bool) -> Result<(), BackendError> {
        let option: u16 = if on { 0 } else { 1 };
        let mut payload = vec![command::COM_SET_OPTION];
        payload.extend_from_slice(&option.to_le_bytes());
        self.simple_command(&payload, "COM_SET_OPTION").await?;
        self.multi_statements = on;
        Ok(())
    }

    /// Clears all session state (COM_RESET_CONNECTION, which also rolls back) and sets up
    /// tracking again. `vars` are then what the server made of them, which may differ from
    /// the login's `baseline` (MySQL's character set variables).
    pub async fn reset(&mut self) -> Result<(), BackendError> {
        self.statements.clear();
        self.simple_command(&[command::COM_RESET_CONNECTION], "COM_RESET_CONNECTION")
            .await?;
        self.prepare_session().await?;
        self.needs_reset = false;
        self.reset_reasons = ResetSet::default();
        self.conditions = false;
        self.results_collation_set = false;
        self.restored.clear();
        Ok(())
    }

    /// Marks the connection for a reset before anyone else borrows it.
    pub fn taint(&mut self, reason: ResetReason) {
        self.reset_reasons.insert(reason);
        self.needs_reset = true;
    }

    /// Logs in again as the same user with no schema selected (COM_CHANGE_USER), clearing all
    /// session state. The only way to leave every schema once one was chosen.
    pub async fn change_user_no_schema(
        &mut self,
        secret: &BackendSecret,
    ) -> Result<(), BackendError> {
        self.statements.clear();
        let plugin = self.plugin.clone();
        let response = secret.response(&plugin, &self.nonce, self.transport)?;
        let mut payload = vec![command::COM_CHANGE_USER];
        payload.extend_from_slice(self.key.user.as_bytes());
        payload.push(0);
        payload.push(response.len() as u8);
        payload.extend_from_slice(&response);
        payload.push(0); // no schema
        payload.extend_from_slice(&u16::from(self.key.collation).to_le_bytes());
        payload.extend_from_slice(&plugin);
        payload.push(0);
        if self.caps.contains(CapabilityFlags::CLIENT_CONNECT_ATTRS) {
            payload.push(0);
        }
        self.stream
            .write_packet(0, &payload)
            .await
            .map_err(ProtocolError::from)?;
        let (status, plugin) = auth_exchange(
            &mut self.stream,
            plugin,
            self.nonce.clone(),
            secret,
            self.transport,
        )
        .await?;
        self.plugin = plugin;
        self.status = status;
        self.schema = None;
        self.prepare_session().await?;
        // Whether COM_CHANGE_USER keeps a COM_SET_OPTION is the server's business: say it again.
        let multi_statements = self.multi_statements;
        self.set_multi_statements(multi_statements).await?;
        self.needs_reset = false;
        self.reset_reasons = ResetSet::default();
        self.conditions = false;
        self.restored.clear();
        Ok(())
    }

    /// Checks that the server still answers.
    pub async fn ping(&mut self) -> Result<(), BackendError> {
        self.simple_command(&[command::COM_PING], "COM_PING")
            .await
            .map(|_| ())
    }

    /// True if a transaction is open, by the last status the server sent.
    pub fn in_transaction(&self) -> bool {
        self.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS)
    }
}

/// Answers the server's authentication requests until it says OK or ERR. `plugin` and `nonce`
/// are what the last response was computed with; the server may switch to another plugin.
/// What `secret` may answer on `transport` is its own rule ([`BackendSecret::response`]).
async fn auth_exchange(
    stream: &mut PacketStream,
    mut plugin: Vec<u8>,
    mut nonce: Vec<u8>,
    secret: &BackendSecret,
    transport: Transport,
) -> Result<(StatusFlags, Vec<u8>), BackendError> {
    // A server that keeps switching plugins is not logging anyone in.
    let mut rounds = 0u8;
    loop {
        rounds = rounds.saturating_add(1);
        if rounds > 16 {
            return Err(ProtocolError::Malformed("authentication exchange without an end").into());
        }
        let (rseq, p) = stream.read_packet(CONTROL_PACKET_MAX).await?;
        let seq = rseq.wrapping_add(1);
        match p.first() {
            Some(0x00) => {
                let okp = ok::Ok::parse(&p, true).ok_or(ProtocolError::Malformed("OK packet"))?;
                return Ok((okp.status, plugin));
            }
            Some(0xFF) => {
                let e = packets::Err::parse(&p).ok_or(ProtocolError::Malformed("ERR packet"))?;
                return Err(BackendError::LoginRefused {
                    code: e.code,
                    message: e.message_lossy(),
                });
            }
            Some(0xFE) => {
                // AuthSwitchRequest: plugin name, NUL, new nonce (scrambles NUL-terminated;
                // ed25519's 32 bytes exactly as they are).
                let mut r = Reader::new(p.get(1..).unwrap_or_default());
                let name = r
                    .null_terminated()
                    .ok_or_else(|| AuthError::UnsupportedPlugin("mysql_old_password".into()))?;
                plugin = name.to_vec();
                let data = r.take_rest();
                nonce = if plugin == auth::ED25519.as_bytes() {
                    data.to_vec()
                } else {
                    data.strip_suffix(&[0]).unwrap_or(data).to_vec()
                };
                let response = secret.response(&plugin, &nonce, transport)?;
                stream
                    .write_packet(seq, &response)
                    .await
                    .map_err(ProtocolError::from)?;
            }
            Some(0x01) if plugin == auth::CACHING_SHA2.as_bytes() => match p.get(1) {
                Some(&auth::FAST_AUTH_OK) => {}
                Some(&auth::PERFORM_FULL_AUTH) if stream.is_tls() => {
                    // Over TLS the password itself goes, NUL-terminated, as MySQL's clients do.
                    let mut clear = full_auth_password(secret)?.as_bytes().to_vec();
                    clear.push(0);
                    stream
                        .write_packet(seq, &clear)
                        .await
                        .map_err(ProtocolError::from)?;
                }
                Some(&auth::PERFORM_FULL_AUTH) => {
                    // No TLS: ask for the server's RSA key and send the password encrypted.
                    stream
                        .write_packet(seq, &[auth::REQUEST_PUBLIC_KEY])
                        .await
                        .map_err(ProtocolError::from)?;
                    let (kseq, key_packet) = stream.read_packet(CONTROL_PACKET_MAX).await?;
                    let pem = match key_packet.split_first() {
                        Some((0x01, pem)) => pem,
                        _ => return Err(AuthError::BadPublicKey.into()),
                    };
                    let cipher = auth::encrypt_password(full_auth_password(secret)?, &nonce, pem)?;
                    stream
                        .write_packet(kseq.wrapping_add(1), &cipher)
                        .await
                        .map_err(ProtocolError::from)?;
                }
                _ => return Err(ProtocolError::Malformed("caching_sha2_password exchange").into()),
            },
            _ => return Err(ProtocolError::Malformed("authentication exchange").into()),
        }
    }
}

/// The password caching_sha2_password's full authentication sends; only a password has one.
fn full_auth_password(secret: &BackendSecret) -> Result<&str, AuthError> {
    secret.password().ok_or_else(|| {
        AuthError::NeedsPassword("caching_sha2_password (full authentication)".into())
    })
}

/// The name of a column definition (catalog, schema, table, original table, then the name).
fn column_name(def: &[u8]) -> Option<String> {
    let mut r = Reader::new(def);
    for _ in 0..4 {
        r.lenenc_bytes()?;
    }
    Some(String::from_utf8_lossy(r.lenenc_bytes()?).into_owned())
}

fn command_error(what: &'static str, p: &[u8]) -> BackendError {
    match packets::Err::parse(p) {
        Some(e) => BackendError::Command {
            what,
            code: e.code,
            message: e.message_lossy(),
        },
        None => ProtocolError::Malformed("ERR packet").into(),
    }
}

#[cfg(test)]
mod greeting_tests {
    use super::*;

    /// A greeting whose scramble-length byte is `len`.
    fn greeting(len: u8) -> Vec<u8> {
        let mut p = vec![10];
        p.extend_from_slice(b"11.0.0\0");
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(b"abcdefgh\0");
        p.extend_from_slice(&0xF7FFu16.to_le_bytes());
        p.push(45);
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&0x81BFu16.to_le_bytes());
        p.push(len);
        p.extend_from_slice(&[0; 10]);
        p.extend_from_slice(b"ijklmnopqrst\0");
        p.extend_from_slice(b"mysql_native_password\0");
        p
    }

    #[test]
    fn a_hostile_scramble_length_is_refused_not_a_panic() {
        assert!(parse_greeting(&greeting(21)).is_ok());
        for len in [0x80, 0x83, 0x87, 0xFF] {
            assert!(parse_greeting(&greeting(len)).is_err(), "length {len:#x}");
        }
    }
}
