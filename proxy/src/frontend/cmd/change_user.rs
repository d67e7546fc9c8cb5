//! COM_CHANGE_USER: Sluice authenticates the new user itself; the session starts over.

use crate::auth;
use crate::config::AuthPluginName;
use crate::errors::ClientError;
use crate::frontend::authenticate::{self, Answer};
use crate::frontend::{ClientSession, Flow, farewell, pool_key};
use crate::protocol::CapabilityFlags;
use crate::protocol::packets::{self, ChangeUser};
use crate::session::SessionState;

impl ClientSession {
    /// COM_CHANGE_USER: Sluice authenticates the new user itself; the session starts over.
    pub(in crate::frontend) async fn change_user(&mut self) -> Flow {
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
        let host = self.peer.ip().to_string();
        let who = authenticate::resolve(&self.shared, &user_name).await;
        let plugin = who.plugin(AuthPluginName::MysqlNativePassword);
        let mut seq = 1u8;
        let collation = cu.collation.map_or(self.key.collation, |c| c as u8);
        let database =
            (!cu.database.is_empty()).then(|| String::from_utf8_lossy(cu.database).into_owned());
        if plugin == AuthPluginName::ClearPassword && !self.tls {
            let err = ClientError::access_denied_because(
                &user_name,
                &host,
                "this user logs in with an AWS IAM token, which needs TLS",
            );
            farewell(&self.shared.metrics, &mut self.client, seq, &err).await;
            return Flow::Close;
        }
        // The client answered the connection's scramble, unless it gets a switch.
        let mut nonce = self.scramble.to_vec();
        let mut response = cu.auth_response.to_vec();
        // ed25519 signs a nonce of its own; an IAM token outgrows COM_CHANGE_USER's one-byte
        // length: both always get a switch.
        let always_switch = matches!(
            plugin,
            AuthPluginName::Ed25519 | AuthPluginName::ClearPassword
        );
        if always_switch || cu.auth_plugin != Some(plugin.as_str().as_bytes()) {
            // Ask for an answer to a fresh challenge with the user's plugin.
            nonce = match auth::challenge(plugin, &self.scramble) {
                Ok(n) => n,
                Err(_) => return Flow::Close,
            };
            if self
                .client
                .write_packet(seq, &auth::switch_request(plugin, &nonce))
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
        let answer = if plugin == AuthPluginName::ClearPassword {
            Answer::Cleartext(&response)
        } else {
            Answer::Scramble {
                nonce: &nonce,
                response: &response,
            }
        };
        let user = match authenticate::verify(&self.shared, who, &user_name, &host, plugin, answer)
            .await
        {
            Ok(u) => u,
            Err(refusal) => {
                tracing::info!(client = %self.id(), user = %crate::logsafe::Escaped(&user_name), %host, "COM_CHANGE_USER refused");
                farewell(&self.shared.metrics, &mut self.client, seq, &refusal.error).await;
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
        self.insert_id_known = true;
        self.found_rows_known = true;
        self.user = user;
        self.key = pool_key(&self.user.username, self.caps, collation, self.key.route);
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
}
