//! A client's login: Sluice's greeting, the client's answer, authentication against the users
//! Sluice knows (no backend involved), and the initial schema.

use std::net::SocketAddr;
use std::sync::Arc;

use mysql_common::io::ParseBuf;
use mysql_common::packets::HandshakeResponse;

use super::authenticate::{self, Answer};
use crate::auth;
use crate::backend::PoolKey;
use crate::config::{AuthPluginName, TlsMode};
use crate::context::Shared;
use crate::credentials::Credential;
use crate::errors::ClientError;
use crate::protocol::codec::{PacketStream, ProtocolError};
use crate::protocol::packets::{self, Greeting};
use crate::protocol::{CapabilityFlags, StatusFlags};
use crate::registry::SessionHandle;

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
}

impl LoggedIn {
    /// The pool this client borrows from.
    pub fn pool_key(&self) -> PoolKey {
        pool_key(&self.user.username, self.caps, self.collation)
    }
}

/// The pool key for a client of `user` with these capabilities and login collation.
pub fn pool_key(user: &Arc<str>, caps: CapabilityFlags, collation: u8) -> PoolKey {
    PoolKey {
        user: user.clone(),
        caps: caps & crate::backend::KEY_CAPS,
        collation,
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
            ProtocolError::Closed | ProtocolError::Io(_) => {
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

/// Runs the login. `seq` tracks the next sequence id Sluice would send, so a caller that gives
/// up (handshake timeout) can still answer in order.
pub async fn login(
    client: &mut PacketStream,
    shared: &Shared,
    session: &SessionHandle,
    peer: SocketAddr,
    seq: &mut u8,
) -> Result<LoggedIn, LoginFailure> {
    let scramble =
        auth::new_scramble().map_err(|_| LoginFailure::silent("no randomness for a scramble"))?;
    let greeting_plugin = shared.credentials.greeting_plugin();
    let greeting = Greeting {
        server_version: &shared.server_version,
        connection_id: session.id.0,
        scramble: &scramble,
        capabilities: shared.capabilities,
        collation: shared.collation,
        status: StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        auth_plugin: greeting_plugin.as_str(),
    }
    .encode();
    client.write_packet(0, &greeting).await?;
    *seq = 1;

    let (mut payload, mut client_caps) = read_login_packet(client, seq).await?;
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

    let caps = response.capabilities() & shared.capabilities;
    let user_name = String::from_utf8_lossy(response.user()).into_owned();
    let host = peer.ip().to_string();
    let who = authenticate::resolve(shared, &user_name).await;
    // Unknown users go through the same steps as known ones, so their replies look alike.
    let plugin = who.plugin(greeting_plugin);
    if plugin == AuthPluginName::ClearPassword && !client.is_tls() {
        // An IAM token is a bearer credential: never ask for one in clear text.
        tracing::info!(client = %session.id, user = %user_name, %host, "IAM login refused: no TLS");
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
    };
    if let Some(db) = &logged_in.schema
        && let Err(e) = shared.check_schema(&logged_in.pool_key(), db).await
    {
        return Err(LoginFailure::with(*seq, e, "initial schema refused"));
    }
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
