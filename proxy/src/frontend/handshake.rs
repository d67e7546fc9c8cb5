//! A client's login: Sluice's greeting, the client's answer, authentication against the users
//! Sluice knows (no backend involved), and the initial schema.

use std::net::SocketAddr;
use std::sync::Arc;

use mysql_common::io::ParseBuf;
use mysql_common::packets::HandshakeResponse;

use crate::auth;
use crate::backend::PoolKey;
use crate::config::AuthPluginName;
use crate::credentials::Credential;
use crate::errors::ClientError;
use crate::protocol::codec::{PacketStream, ProtocolError};
use crate::protocol::packets::{self, Greeting};
use crate::protocol::{CapabilityFlags, StatusFlags};
use crate::registry::SessionHandle;
use crate::server::Shared;

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
    fn with(seq: u8, err: ClientError, reason: &'static str) -> Self {
        LoginFailure {
            reply: Some((seq, err)),
            reason,
        }
    }

    fn silent(reason: &'static str) -> Self {
        LoginFailure {
            reply: None,
            reason,
        }
    }
}

impl From<ProtocolError> for LoginFailure {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::Closed | ProtocolError::Io(_) => {
                LoginFailure::silent("client disconnected during login")
            }
            ProtocolError::TooLarge { .. } => LoginFailure::with(
                1,
                ClientError::bad_handshake("login packet too large"),
                "oversized login packet",
            ),
            ProtocolError::OutOfOrder { .. } => {
                LoginFailure::with(1, ClientError::out_of_order(), "login packet out of order")
            }
            ProtocolError::Malformed(what) => LoginFailure::with(
                1,
                ClientError::bad_handshake(what),
                "malformed login packet",
            ),
        }
    }
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
    client
        .write_packet(0, &greeting)
        .await
        .map_err(ProtocolError::from)?;
    *seq = 1;

    let (rseq, payload) = client.read_packet(MAX_LOGIN_PACKET).await?;
    if rseq != 1 {
        return Err(LoginFailure::with(
            rseq.wrapping_add(1),
            ClientError::out_of_order(),
            "login packet out of order",
        ));
    }
    *seq = 2;
    let client_caps = payload
        .get(..4)
        .map(|b| CapabilityFlags::from_bits_truncate(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .ok_or_else(|| {
            LoginFailure::with(
                2,
                ClientError::bad_handshake("login packet too short"),
                "malformed login packet",
            )
        })?;
    if client_caps.contains(CapabilityFlags::CLIENT_SSL) && payload.len() == 32 {
        return Err(LoginFailure::with(
            2,
            ClientError::bad_handshake("TLS was requested but Sluice has no TLS configured"),
            "TLS requested",
        ));
    }
    if !client_caps.contains(CapabilityFlags::CLIENT_PROTOCOL_41)
        || !client_caps.contains(CapabilityFlags::CLIENT_SECURE_CONNECTION)
    {
        return Err(LoginFailure::with(
            2,
            ClientError::unsupported_client(),
            "pre-4.1 client",
        ));
    }
    let response: HandshakeResponse<'_> = ParseBuf(&payload).parse(()).map_err(|_| {
        LoginFailure::with(
            2,
            ClientError::bad_handshake("cannot parse the login packet"),
            "malformed login packet",
        )
    })?;

    let caps = response.capabilities() & shared.capabilities;
    let user_name = String::from_utf8_lossy(response.user()).into_owned();
    let host = peer.ip().to_string();
    let known = shared.credentials.get(&user_name);
    // Unknown users go through the same steps as known ones, so their replies look alike.
    let plugin = known.as_ref().map_or(greeting_plugin, |u| u.auth_plugin);
    let client_plugin = response.auth_plugin().map(|p| p.as_bytes().to_vec());
    let mut auth_data = response.scramble_buf().to_vec();
    let client_used_plugin = match client_plugin.as_deref() {
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
        client
            .write_packet(
                *seq,
                &packets::auth_switch_request(plugin.as_str(), &scramble),
            )
            .await
            .map_err(ProtocolError::from)?;
        let (rseq, data) = client.read_packet(MAX_LOGIN_PACKET).await?;
        if rseq != seq.wrapping_add(1) {
            return Err(LoginFailure::with(
                rseq.wrapping_add(1),
                ClientError::out_of_order(),
                "auth switch reply out of order",
            ));
        }
        *seq = rseq.wrapping_add(1);
        auth_data = data;
    }
    let user = match shared
        .credentials
        .authenticate(known, |u| u.verify_scramble(plugin, &scramble, &auth_data))
        .await
    {
        Some(u) => u,
        None => {
            shared
                .stats
                .client_auth_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(client = %session.id, user = %user_name, %host, "login refused: wrong password or unknown user");
            return Err(LoginFailure::with(
                *seq,
                ClientError::access_denied(&user_name, &host, !auth_data.is_empty()),
                "access denied",
            ));
        }
    };
    if plugin == AuthPluginName::CachingSha2Password && !auth_data.is_empty() {
        client
            .write_packet(*seq, &packets::auth_more_data(&[auth::FAST_AUTH_OK]))
            .await
            .map_err(ProtocolError::from)?;
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
        .await
        .map_err(ProtocolError::from)?;
    Ok(logged_in)
}
