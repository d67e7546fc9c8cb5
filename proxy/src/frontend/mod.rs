//! One task per client: login, then the command loop. A session borrows a backend connection
//! for each command, brings it into the session's state, relays the command and the response,
//! and gives the connection back as soon as no transaction is open and nothing pins it.
//!
//! A session idle (outside a transaction) for `idle_client_timeout` is closed with ERR 4031;
//! one idle inside a transaction is left alone, since closing it would roll the transaction
//! back (the backend's own `wait_timeout` still applies). On drain, idle sessions are closed
//! with ERR 1053 and sessions in a transaction go on until it ends.

pub(crate) mod authenticate;
mod cmd;
mod diagnostics;
mod dispatch;
pub(crate) mod handshake;
mod intake;
mod relay;
mod reroute;
mod session;
mod sync;
mod tracking;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

pub use cmd::prepared::StatementBudget;
pub use handshake::{LoggedIn, pool_key};

use crate::auth;
use crate::backend::{PoolKey, PooledConn};
use crate::config::AuthPluginName;
use crate::context::Shared;
use crate::credentials::Credential;
use crate::errors::ClientError;
use crate::metrics::{Metrics, SessionGauge};
use crate::protocol::codec::PacketStream;
use crate::protocol::packets::{self};
use crate::protocol::{CapabilityFlags, StatusFlags};
use crate::registry::{Activity, SessionHandle};
use crate::session::{PinSet, SessionState};
use crate::sql::Digest;
use cmd::prepared::SessionStatements;

/// How long Sluice tries to deliver a final error to a client it is about to close.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one client connection from its first byte to its close. Until the client speaks,
/// the task holds only its socket, the greeting's offer and a kill signal (a few hundred
/// bytes, see `handshake::first_bytes`); the rest is allocated once it does.
pub async fn run(
    socket: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    handle: Arc<SessionHandle>,
) {
    let Ok(greeted) = handshake::greet(&socket, &shared, &handle) else {
        return;
    };
    let spoke = handshake::first_bytes(&socket, &handle).await;
    Box::pin(after_greeting(socket, peer, shared, handle, greeted, spoke)).await;
}

/// The login after the greeting, then the session.
async fn after_greeting(
    socket: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    handle: Arc<SessionHandle>,
    greeted: handshake::Greeted,
    spoke: bool,
) {
    let Some((client, logged_in)) =
        handshake::finish(socket, peer, &shared, &handle, greeted, spoke).await
    else {
        return;
    };
    // Boxed on its own: the session's state is allocated only once the client logged in.
    Box::pin(serve_session(client, peer, shared, handle, logged_in)).await;
}

/// The logged-in part of a session: the command loop, then the cleanup.
async fn serve_session(
    client: PacketStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    handle: Arc<SessionHandle>,
    logged_in: LoggedIn,
) {
    // Feeds the `tls` metric label and SHOW CLIENTS.
    let tls = client.is_tls();
    handle.set_tls(tls);
    handle.set_activity(Activity::Idle, Instant::now());
    let gauge = shared.metrics.logged_in(&logged_in.user.username, tls);
    tracing::debug!(client = %handle.id, user = %crate::logsafe::Escaped(&logged_in.user.username), %peer, tls, "client logged in");
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
    /// The session's `LAST_INSERT_ID()` is in `state` (else only its connection knows it,
    /// after `LAST_INSERT_ID(expr)` or a procedure, and it is read before release).
    insert_id_known: bool,
    /// Likewise for `FOUND_ROWS()` (after `SQL_CALC_FOUND_ROWS` or `SELECT ... INTO`).
    found_rows_known: bool,
    /// The warning count the next relayed OK packet carries instead of the connection's
    /// (see [`ClientSession::session_warnings_on_ok`]).
    ok_warnings: Option<u16>,
    /// Whether the last statement cleared the diagnostics area is the server's to say.
    diagnostics_check: bool,
    /// The borrowed connection's diagnostics area holds Sluice's marker in place of the
    /// session's captured conditions, which `SIGNAL` cannot raise again: after stored code,
    /// the marker still there means the code left the area alone.
    diagnostics_marker: bool,
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
