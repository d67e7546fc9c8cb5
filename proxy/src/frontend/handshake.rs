//! A client's login: Sluice's greeting, the client's answer, authentication against the users
//! Sluice knows (no backend involved), and the initial schema.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use mysql_common::io::ParseBuf;
use mysql_common::packets::HandshakeResponse;

use super::authenticate::{self, Answer};
use crate::auth;
use crate::backend::{PoolKey, Route};
use crate::config::{AuthPluginName, TlsMode};
use crate::context::Shared;
use crate::credentials::Credential;
use crate::errors::ClientError;
use crate::logsafe::Escaped;
use crate::protocol::codec::{PacketStream, ProtocolError};
use crate::protocol::packets::{self, Greeting};
use crate::protocol::{CapabilityFlags, StatusFlags};
use crate::registry::{Activity, SessionHandle};

/// Largest login packet accepted (user, scramble, schema and connect attributes).
const MAX_LOGIN_PACKET: usize = 64 * 1024;

/// A client that completed its login.
#[derive(Debug)]
pub struct LoggedIn {
    pub user: Credential,
    /// Capabilities both sides agreed on.
    pub caps: CapabilityFlags,
    pub collation: u8,
    pub schema: Option<String>,
    /// The connection's scramble, for COM_CHANGE_USER.
    pub scramble: [u8; 20],
    /// The endpoint it connected to (writer or reader).
    pub route: Route,
}

impl LoggedIn {
    /// The pool this client borrows from.
    pub fn pool_key(&self) -> PoolKey {
        pool_key(&self.user.username, self.caps, self.collation, self.route)
    }
}

/// The pool key for a client of `user` with these capabilities and login collation, on the
/// endpoint of `route`.
pub fn pool_key(user: &Arc<str>, caps: CapabilityFlags, collation: u8, route: Route) -> PoolKey {
    PoolKey {
        user: user.clone(),
        caps: caps & crate::backend::KEY_CAPS,
        collation,
        route,
    }
}

/// Why a login ended without a session. `reply` is sent to the client if the connection
/// still allows it.
#[derive(Debug)]
pub struct LoginFailure {
    pub reply: Option<(u8, ClientError)>,
    pub reason: &'static str,
}

impl LoginFailure {
    /// A failure answered with `err` at sequence id `seq`.
    pub(crate) fn with(seq: u8, err: ClientError, reason: &'static str) -> Self {
        LoginFailure {
            reply: Some((seq, err)),
            reason,
        }
    }

    /// A failure that leaves nothing to answer (the client left).
    pub(crate) fn silent(reason: &'static str) -> Self {
        LoginFailure {
            reply: None,
            reason,
        }
    }

    /// A packet that could not be read while the client's next packet would have had sequence
    /// id `seq`: the answer, if any, goes out right after it.
    fn reading(e: ProtocolError, seq: u8) -> Self {
        let reply = seq.wrapping_add(1);
        match e {
            ProtocolError::Closed | ProtocolError::Io(_) | ProtocolError::TimedOut => {
                LoginFailure::silent("client disconnected during login")
            }
            ProtocolError::TooLarge { .. } => LoginFailure::with(
                reply,
                ClientError::bad_handshake("login packet too large"),
                "oversized login packet",
            ),
            ProtocolError::OutOfOrder { .. } => LoginFailure::with(
                reply,
                ClientError::out_of_order(),
                "login packet out of order",
            ),
            ProtocolError::Malformed(what) => LoginFailure::with(
                reply,
                ClientError::bad_handshake(what),
                "malformed login packet",
            ),
        }
    }
}

/// Writing failed: the client is gone, there is nobody to answer.
impl From<std::io::Error> for LoginFailure {
    fn from(_: std::io::Error) -> Self {
        LoginFailure::silent("client disconnected during login")
    }
}

/// Reads the client's login packet (or its SSL request) and its capability flags, checking
/// the sequence id against `seq`, which then moves past it.
pub(crate) async fn read_login_packet(
    client: &mut PacketStream,
    seq: &mut u8,
) -> Result<(Vec<u8>, CapabilityFlags), LoginFailure> {
    let (rseq, payload) = client
        .read_packet(MAX_LOGIN_PACKET)
        .await
        .map_err(|e| LoginFailure::reading(e, *seq))?;
    if rseq != *seq {
        return Err(LoginFailure::with(
            rseq.wrapping_add(1),
            ClientError::out_of_order(),
            "login packet out of order",
        ));
    }
    *seq = rseq.wrapping_add(1);
    let caps = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(|b| CapabilityFlags::from_bits_truncate(u32::from_le_bytes(b)))
        .ok_or_else(|| {
            LoginFailure::with(
                *seq,
                ClientError::bad_handshake("login packet too short"),
                "malformed login packet",
            )
        })?;
    Ok((payload, caps))
}

/// Parses a login packet of a client with `caps`; a refusal is answered at `seq`.
pub(crate) fn parse_login(
    payload: &[u8],
    caps: CapabilityFlags,
    seq: u8,
) -> Result<HandshakeResponse<'_>, LoginFailure> {
    if !caps.contains(CapabilityFlags::CLIENT_PROTOCOL_41)
        || !caps.contains(CapabilityFlags::CLIENT_SECURE_CONNECTION)
    {
        return Err(LoginFailure::with(
            seq,
            ClientError::unsupported_client(),
            "pre-4.1 client",
        ));
    }
    ParseBuf(payload).parse(()).map_err(|_| {
        LoginFailure::with(
            seq,
            ClientError::bad_handshake("cannot parse the login packet"),
            "malformed login packet",
        )
    })
}

/// caching_sha2_password full authentication: asks for the password itself, which comes in
/// clear over TLS, or RSA-encrypted under Sluice's key (sent first if the client asks).
/// Returns what the client sent, or `None` if it sent nothing usable.
async fn full_authentication(
    client: &mut PacketStream,
    shared: &Shared,
    scramble: &[u8; 20],
    seq: &mut u8,
) -> Result<Option<Vec<u8>>, LoginFailure> {
    let reply = exchange(
        client,
        seq,
        &packets::auth_more_data(&[auth::PERFORM_FULL_AUTH]),
    )
    .await?;
    if client.is_tls() {
        let mut sent = reply;
        return Ok((sent.pop() == Some(0)).then_some(sent));
    }
    let Some(key) = &shared.rsa_key else {
        return Ok(None);
    };
    if reply != [auth::REQUEST_PUBLIC_KEY] {
        // A password in clear over plain TCP is refused, as MySQL refuses it.
        return Ok(None);
    }
    let cipher = exchange(client, seq, &packets::auth_more_data(key.public_pem())).await?;
    Ok(key.decrypt_password(&cipher, scramble))
}

/// Sends one login-phase packet and reads the client's answer, keeping `seq` in step.
pub(crate) async fn exchange(
    client: &mut PacketStream,
    seq: &mut u8,
    payload: &[u8],
) -> Result<Vec<u8>, LoginFailure> {
    client.write_packet(*seq, payload).await?;
    let (rseq, reply) = client
        .read_packet(MAX_LOGIN_PACKET)
        .await
        .map_err(|e| LoginFailure::reading(e, seq.wrapping_add(1)))?;
    if rseq != seq.wrapping_add(1) {
        return Err(LoginFailure::with(
            rseq.wrapping_add(1),
            ClientError::out_of_order(),
            "authentication reply out of order",
        ));
    }
    *seq = rseq.wrapping_add(1);
    Ok(reply)
}

/// Sluice's greeting, written at once (a fresh socket takes its hundred bytes without
/// waiting): what it offered, and any part the socket did not take.
pub(crate) struct Greeted {
    offer: Offer,
    unsent: Vec<u8>,
}

/// Greets a new client without waiting.
pub(crate) fn greet(
    socket: &TcpStream,
    shared: &Shared,
    session: &SessionHandle,
) -> Result<Greeted, LoginFailure> {
    let scramble =
        auth::new_scramble().map_err(|_| LoginFailure::silent("no randomness for a scramble"))?;
    let plugin = shared.credentials.greeting_plugin();
    let caps = shared.offered_caps();
    let greeting = Greeting {
        server_version: &shared.server_version,
        connection_id: session.id.0,
        scramble: &scramble,
        capabilities: caps,
        collation: shared.collation,
        status: StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        auth_plugin: plugin.as_str(),
    }
    .encode();
    let mut framed = Vec::with_capacity(greeting.len() + crate::protocol::HEADER_LEN);
    crate::protocol::put_packet(&mut framed, 0, &greeting);
    let written = match socket.try_write(&framed) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(_) => return Err(LoginFailure::silent("client disconnected during login")),
    };
    let unsent = framed.split_off(written.min(framed.len()));
    Ok(Greeted {
        offer: Offer {
            scramble,
            caps,
            plugin,
        },
        unsent,
    })
}

/// Waits until a greeted client sends something (or leaves): true; false when its login was
/// cut short first (handshake timeout, or a flood making room). With no state beyond the
/// socket's and a kill signal's, this is all a connection that never speaks costs (no timer
/// of its own: the listener's reaper ends logins past `handshake_timeout`).
pub(crate) async fn first_bytes(socket: &TcpStream, session: &SessionHandle) -> bool {
    // A peek, not a readiness check: readiness starts out set on a new socket, while a peek
    // that finds nothing clears it (and its one-byte buffer lives only during a poll).
    let data = std::future::poll_fn(|cx| {
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        socket.poll_peek(cx, &mut buf).map(|_| ())
    });
    tokio::select! {
        _ = data => true,
        _ = session.login_cut_short() => false,
    }
}

/// The rest of a greeted client's login, once it spoke (`spoke`) or its login was cut short:
/// the logged-in stream and who logged in, or `None` once it was refused (and told why,
/// where it can be) or left.
pub(crate) async fn finish(
    socket: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    handle: &SessionHandle,
    greeted: Greeted,
    spoke: bool,
) -> Option<(PacketStream, LoggedIn)> {
    let mut client = PacketStream::new(socket).ok()?;
    let mut seq = 1u8;
    let unsent = !greeted.unsent.is_empty();
    let outcome = if unsent && client.write_all(&greeted.unsent).await.is_err() {
        Some(Err(LoginFailure::silent(
            "client disconnected during login",
        )))
    } else if spoke || unsent {
        boxed_login(&mut client, shared, handle, peer, &mut seq, greeted.offer).await
    } else {
        None
    };
    let failure = match outcome {
        Some(Ok(logged_in)) => {
            handle.set_activity(Activity::Idle, std::time::Instant::now());
            return Some((client, logged_in));
        }
        Some(Err(failure)) => failure,
        None if handle.login_expired() && !handle.is_killed() => {
            let limit = shared.config().handshake_timeout;
            tracing::info!(client = %handle.id, %peer, reason = "handshake_timeout", "client refused: login not completed in time");
            LoginFailure::with(
                seq,
                ClientError::handshake_timeout(limit),
                "handshake timeout",
            )
        }
        None => {
            tracing::info!(client = %handle.id, %peer, "login cut short to make room for new clients (max_client_connections)");
            let limit = shared.config().max_client_connections;
            LoginFailure::with(
                seq,
                ClientError::login_evicted(limit),
                "evicted by a newer client",
            )
        }
    };
    // Boxed: a path every client's login future would otherwise make room for.
    Box::pin(refused(client, peer, shared, handle, failure)).await;
    None
}

/// How a login ended: logged in, refused, or (`None`) cut short.
type LoginOutcome = Option<Result<LoggedIn, LoginFailure>>;

/// [`login`], unless cut short, in a box of its own: allocated only for a client that spoke.
fn boxed_login<'a>(
    client: &'a mut PacketStream,
    shared: &'a Shared,
    handle: &'a SessionHandle,
    peer: SocketAddr,
    seq: &'a mut u8,
    offer: Offer,
) -> std::pin::Pin<Box<dyn Future<Output = LoginOutcome> + Send + 'a>> {
    Box::pin(async move {
        tokio::select! {
            o = login(client, shared, handle, peer, seq, offer) => Some(o),
            _ = handle.login_cut_short() => None,
        }
    })
}

/// Counts a failed login and tells the client why, where the connection allows it.
async fn refused(
    mut client: PacketStream,
    peer: SocketAddr,
    shared: &Shared,
    handle: &SessionHandle,
    failure: LoginFailure,
) {
    shared
        .stats
        .client_handshake_failures
        .fetch_add(1, Ordering::Relaxed);
    shared.metrics.setup_failed(failure.reason);
    match failure.reply {
        Some((seq, err)) => {
            if err.code != crate::errors::ER_NET_READ_INTERRUPTED
                && err.code != crate::errors::ER_CON_COUNT
            {
                tracing::info!(client = %handle.id, %peer, reason = failure.reason, code = err.code, "client refused");
            }
            super::farewell(&shared.metrics, &mut client, seq, &err).await;
        }
        // Load balancer health checks connect and close: not worth an info line.
        None => {
            tracing::debug!(client = %handle.id, %peer, reason = failure.reason, "login ended")
        }
    }
}

/// Runs the login after the greeting: the client's first packet, then (boxed, allocated
/// only once that packet is whole) TLS, authentication and the initial schema.
async fn login(
    client: &mut PacketStream,
    shared: &Shared,
    session: &SessionHandle,
    peer: SocketAddr,
    seq: &mut u8,
    offer: Offer,
) -> Result<LoggedIn, LoginFailure> {
    let first = read_login_packet(client, seq).await?;
    Box::pin(authenticate(
        client, shared, session, peer, seq, offer, first,
    ))
    .await
}

/// What Sluice's greeting offered the client.
pub(crate) struct Offer {
    scramble: [u8; 20],
    caps: CapabilityFlags,
    plugin: AuthPluginName,
}

/// The login after the client's first packet: TLS, authentication, the initial schema.
async fn authenticate(
    client: &mut PacketStream,
    shared: &Shared,
    session: &SessionHandle,
    peer: SocketAddr,
    seq: &mut u8,
    offer: Offer,
    first: (Vec<u8>, CapabilityFlags),
) -> Result<LoggedIn, LoginFailure> {
    let Offer {
        scramble,
        caps: offered,
        plugin: greeting_plugin,
    } = offer;
    let (mut payload, mut client_caps) = first;
    if client_caps.contains(CapabilityFlags::CLIENT_SSL) && payload.len() == 32 {
        let Some(tls) = &shared.tls else {
            return Err(LoginFailure::with(
                *seq,
                ClientError::bad_handshake("TLS was requested but Sluice has no TLS configured"),
                "TLS requested",
            ));
        };
        if let Err(e) = client.accept_tls(&tls.acceptor()).await {
            tracing::info!(client = %session.id, %peer, error = %e, "TLS handshake failed");
            return Err(LoginFailure::silent("TLS handshake failed"));
        }
        (payload, client_caps) = read_login_packet(client, seq).await?;
        if tls.requires_client_certificate() && !client.client_certificate_presented() {
            tracing::info!(client = %session.id, %peer, "client refused: no TLS client certificate (tls.client_ca_file is set)");
            return Err(LoginFailure::with(
                *seq,
                ClientError::client_certificate_required(),
                "no client certificate",
            ));
        }
    } else if shared
        .tls
        .as_ref()
        .is_some_and(|t| t.mode() == TlsMode::Required)
    {
        tracing::info!(client = %session.id, %peer, "plain-text client refused: tls.mode is required");
        return Err(LoginFailure::with(
            *seq,
            ClientError::tls_required(),
            "plain-text client refused",
        ));
    }
    let response = parse_login(&payload, client_caps, *seq)?;

    let caps = response.capabilities() & offered;
    let user_name = String::from_utf8_lossy(response.user()).into_owned();
    let host = peer.ip().to_string();
    let who = authenticate::resolve(shared, &user_name).await;
    // Unknown users go through the same steps as known ones, so their replies look alike.
    let plugin = who.plugin(greeting_plugin);
    if plugin == AuthPluginName::ClearPassword && !client.is_tls() {
        // An IAM token is a bearer credential: never ask for one in clear text.
        tracing::info!(client = %session.id, user = %Escaped(&user_name), %host, "IAM login refused: no TLS");
        return Err(LoginFailure::with(
            *seq,
            ClientError::access_denied_because(
                &user_name,
                &host,
                "this user logs in with an AWS IAM token, which needs TLS: connect with TLS \
                 (ssl-mode=REQUIRED)",
            ),
            "IAM login without TLS",
        ));
    }
    let client_plugin = response.auth_plugin().map(|p| p.as_bytes().to_vec());
    let mut auth_data = response.scramble_buf().to_vec();
    let mut nonce = scramble.to_vec();
    // ed25519 signs a nonce of its own, so its clients always get a switch.
    let client_used_plugin = plugin != AuthPluginName::Ed25519
        && match client_plugin.as_deref() {
            Some(name) => name == plugin.as_str().as_bytes(),
            // Without CLIENT_PLUGIN_AUTH the client answered for mysql_native_password.
            None => plugin == AuthPluginName::MysqlNativePassword,
        };
    if !client_used_plugin {
        if !caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) {
            return Err(LoginFailure::with(
                *seq,
                ClientError::unsupported_client(),
                "client cannot switch plugins",
            ));
        }
        nonce = auth::challenge(plugin, &scramble)
            .map_err(|_| LoginFailure::silent("no randomness for a nonce"))?;
        auth_data = exchange(client, seq, &auth::switch_request(plugin, &nonce)).await?;
    }
    // caching_sha2 with `caching_sha2_full_auth = "first-login"`: like MySQL with a cold
    // cache, a user's first login with this password sends it in full.
    let full_auth = plugin == AuthPluginName::CachingSha2Password
        && !auth_data.is_empty()
        && shared.rsa_key.is_some()
        && !who
            .credential()
            .is_some_and(|u| shared.sha2_cache.contains(&u.username, u.password.expose()));
    let sent = if full_auth {
        shared
            .stats
            .client_full_auths
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(full_authentication(client, shared, &scramble, seq).await?)
    } else {
        None
    };
    let answer = match (&sent, plugin) {
        (Some(Some(password)), _) => Answer::Cleartext(password),
        (Some(None), _) => Answer::Unusable,
        (None, AuthPluginName::ClearPassword) => Answer::Cleartext(&auth_data),
        (None, _) => Answer::Scramble {
            nonce: &nonce,
            response: &auth_data,
        },
    };
    let user = authenticate::verify(shared, who, &user_name, &host, plugin, answer)
        .await
        .map_err(|r| LoginFailure::with(*seq, r.error, r.reason))?;
    if full_auth {
        shared
            .sha2_cache
            .insert(&user.username, user.password.expose());
    }
    if plugin == AuthPluginName::CachingSha2Password && !auth_data.is_empty() && !full_auth {
        client
            .write_packet(*seq, &packets::auth_more_data(&[auth::FAST_AUTH_OK]))
            .await?;
        *seq = seq.wrapping_add(1);
    }

    let schema = response
        .db_name()
        .filter(|db| !db.is_empty())
        .map(|db| String::from_utf8_lossy(db).into_owned());
    let logged_in = LoggedIn {
        user,
        caps,
        collation: response.collation(),
        schema,
        scramble,
        route: session.route,
    };
    if let Some(db) = &logged_in.schema
        && let Err(e) = shared.check_schema(&logged_in.pool_key(), db).await
    {
        return Err(LoginFailure::with(*seq, e, "initial schema refused"));
    }
    // Before the OK: the moment the client reads it, another session of the same user may
    // KILL it, and KILL checks the owner.
    session.set_user(logged_in.user.username.clone());
    client
        .write_packet(
            *seq,
            &packets::ok(0, 0, StatusFlags::SERVER_STATUS_AUTOCOMMIT, 0),
        )
        .await?;
    if client.is_tls() {
        shared
            .stats
            .client_tls_logins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(logged_in)
}
