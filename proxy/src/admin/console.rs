//! The admin console listener: MySQL protocol on its own port, its own login (`[admin]`), and
//! a command loop that answers from Sluice's state. Built on Sluice's own protocol code (see
//! DESIGN.md on why not opensrv-mysql). No TLS is offered: bind it to loopback or a private
//! interface.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::commands::{self, Reply};
use crate::auth;
use crate::config::AuthPluginName;
use crate::context::{Shared, stop_requested};
use crate::errors::ClientError;
use crate::frontend::handshake::{self, LoginFailure};
use crate::protocol::codec::{PacketStream, ProtocolError};
use crate::protocol::command::*;
use crate::protocol::packets::{self, Greeting};
use crate::protocol::{CapabilityFlags, StatusFlags};

/// Console sessions at once; more wait in the accept queue.
const MAX_SESSIONS: usize = 16;

/// Largest login or command packet the console reads.
const MAX_PACKET: usize = 64 * 1024;

/// How long a last error may take to reach a client being closed.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// What the console offers: no TLS, no multi-statements, no session tracking.
const CAPS: CapabilityFlags = CapabilityFlags::CLIENT_LONG_PASSWORD
    .union(CapabilityFlags::CLIENT_LONG_FLAG)
    .union(CapabilityFlags::CLIENT_CONNECT_WITH_DB)
    .union(CapabilityFlags::CLIENT_PROTOCOL_41)
    .union(CapabilityFlags::CLIENT_TRANSACTIONS)
    .union(CapabilityFlags::CLIENT_SECURE_CONNECTION)
    .union(CapabilityFlags::CLIENT_MULTI_RESULTS)
    .union(CapabilityFlags::CLIENT_PLUGIN_AUTH)
    .union(CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA)
    .union(CapabilityFlags::CLIENT_CONNECT_ATTRS)
    .union(CapabilityFlags::CLIENT_DEPRECATE_EOF);

/// Status flags of every console reply.
const STATUS: StatusFlags = StatusFlags::SERVER_STATUS_AUTOCOMMIT;

/// Accepts console clients until the proxy stops.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let next_id = AtomicU32::new(1);
    super::accept_until_stopped(
        listener,
        &shared.clone(),
        MAX_SESSIONS,
        "admin console",
        |socket, peer| {
            let shared = shared.clone();
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            async move { session(socket, peer, &shared, id).await }
        },
    )
    .await;
}

async fn farewell(shared: &Shared, client: &mut PacketStream, seq: u8, err: &ClientError) {
    let packet = shared.error_packet(err);
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, client.write_packet(seq, &packet)).await;
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, client.shutdown()).await;
}

/// One console client, from greeting to close.
async fn session(socket: TcpStream, peer: SocketAddr, shared: &Shared, id: u32) {
    let Ok(mut client) = PacketStream::new(socket) else {
        return;
    };
    let limit = shared.config().handshake_timeout;
    let caps = match tokio::time::timeout(limit, login(&mut client, shared, peer, id)).await {
        Ok(Ok(caps)) => caps,
        Ok(Err(failure)) => {
            tracing::debug!(%peer, reason = failure.reason, "admin console login ended");
            if let Some((seq, err)) = failure.reply {
                farewell(shared, &mut client, seq, &err).await;
            }
            return;
        }
        Err(_) => {
            farewell(
                shared,
                &mut client,
                2,
                &ClientError::handshake_timeout(limit),
            )
            .await;
            return;
        }
    };
    tracing::info!(%peer, "admin console session opened");
    let deprecate_eof = caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
    let mut stopped = shared.stopped.clone();
    loop {
        let idle_limit = shared.config().idle_client_timeout;
        let read = tokio::select! {
            r = client.read_packet(MAX_PACKET) => r,
            _ = stop_requested(&mut stopped) => {
                farewell(shared, &mut client, 1, &ClientError::shutting_down()).await;
                return;
            }
            _ = tokio::time::sleep(idle_limit) => {
                farewell(shared, &mut client, 1, &ClientError::idle_timeout(idle_limit)).await;
                return;
            }
        };
        let (seq, payload) = match read {
            Ok(p) => p,
            Err(ProtocolError::TooLarge { max, .. }) => {
                farewell(shared, &mut client, 1, &ClientError::packet_too_large(max)).await;
                return;
            }
            Err(ProtocolError::OutOfOrder { .. }) => {
                farewell(shared, &mut client, 1, &ClientError::out_of_order()).await;
                return;
            }
            Err(_) => return,
        };
        if seq != 0 {
            farewell(
                shared,
                &mut client,
                seq.wrapping_add(1),
                &ClientError::out_of_order(),
            )
            .await;
            return;
        }
        let Some((&cmd, body)) = payload.split_first() else {
            farewell(
                shared,
                &mut client,
                1,
                &ClientError::malformed_packet("empty command packet"),
            )
            .await;
            return;
        };
        let reply = match cmd {
            COM_QUIT => return,
            COM_PING | COM_INIT_DB | COM_RESET_CONNECTION => Reply::Ok(String::new()),
            COM_QUERY => {
                let text = String::from_utf8_lossy(body);
                tracing::debug!(%peer, command = %crate::logsafe::Escaped(&text), "admin command");
                match commands::parse(&text) {
                    Ok(command) => commands::run(command, shared).await,
                    Err(e) => Reply::Err(e),
                }
            }
            other => Reply::Err(ClientError::unknown_command(other)),
        };
        let written = match reply {
            Reply::Ok(info) => {
                client
                    .write_packet(1, &super::resultset::ok_with_info(STATUS, &info))
                    .await
            }
            Reply::Rows(rs) => client.write_all(&rs.encode(deprecate_eof, STATUS)).await,
            Reply::Err(e) => client.write_packet(1, &shared.error_packet(&e)).await,
        };
        if written.is_err() {
            return;
        }
    }
}

/// The console login: Sluice's greeting, the client's answer, the admin password checked with
/// mysql_native_password. Returns the agreed capabilities.
async fn login(
    client: &mut PacketStream,
    shared: &Shared,
    peer: SocketAddr,
    id: u32,
) -> Result<CapabilityFlags, LoginFailure> {
    let scramble =
        auth::new_scramble().map_err(|_| LoginFailure::silent("no randomness for a scramble"))?;
    let plugin = AuthPluginName::MysqlNativePassword.as_str();
    let greeting = Greeting {
        server_version: &shared.server_version,
        connection_id: id,
        scramble: &scramble,
        capabilities: CAPS,
        collation: 45,
        status: STATUS,
        auth_plugin: plugin,
    }
    .encode();
    client.write_packet(0, &greeting).await?;
    let mut seq = 1u8;
    let (payload, client_caps) = handshake::read_login_packet(client, &mut seq).await?;
    if client_caps.contains(CapabilityFlags::CLIENT_SSL) && payload.len() == 32 {
        return Err(LoginFailure::with(
            seq,
            ClientError::bad_handshake("the admin console does not offer TLS"),
            "TLS requested",
        ));
    }
    let response = handshake::parse_login(&payload, client_caps, seq)?;
    let caps = response.capabilities() & CAPS;
    let user = String::from_utf8_lossy(response.user()).into_owned();
    let mut auth_data = response.scramble_buf().to_vec();
    let answered_native = response
        .auth_plugin()
        .is_none_or(|p| p.as_bytes() == plugin.as_bytes());
    if !answered_native {
        if !caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) {
            return Err(LoginFailure::with(
                seq,
                ClientError::unsupported_client(),
                "client cannot switch plugins",
            ));
        }
        let switch = packets::auth_switch_request(plugin, &scramble);
        auth_data = handshake::exchange(client, &mut seq, &switch).await?;
    }
    let accepted = {
        let config = shared.config();
        let admin = &config.admin;
        // An empty admin password turns the console off for everyone, even for an empty answer.
        !admin.password.expose().is_empty()
            && user == admin.username
            && auth::verify(
                AuthPluginName::MysqlNativePassword,
                &scramble,
                admin.password.expose(),
                &auth_data,
            )
    };
    if !accepted {
        shared.metrics.admin_login_failed();
        tracing::warn!(%peer, user = %crate::logsafe::Escaped(&user), "admin console login refused");
        let host = peer.ip().to_string();
        return Err(LoginFailure::with(
            seq,
            ClientError::access_denied(&user, &host, !auth_data.is_empty()),
            "access denied",
        ));
    }
    client
        .write_packet(seq, &packets::ok(0, 0, STATUS, 0))
        .await?;
    Ok(caps)
}
