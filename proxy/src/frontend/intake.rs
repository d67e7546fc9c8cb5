//! Reading a client's command before anything is borrowed for it, under a deadline: a client
//! that stalls half-way through a command holds no backend connection and is closed after
//! `client_read_timeout`; a header announcing more than `max_allowed_packet` is refused at
//! once (ERR 1153, as the server does). Also the end of a session left idle inside a
//! transaction (`idle_in_transaction_timeout`).

use std::time::Duration;

use super::{ClientSession, Flow, farewell};
use crate::errors::ClientError;
use crate::protocol::response::INSPECT_WHOLE;
use crate::protocol::{HEADER_LEN, MAX_FRAME};

impl ClientSession {
    /// Reads the command whose header announced `len` payload bytes into the buffer: all of
    /// it when it fits in `max_buffered_command`, else its first part (the rest is streamed to
    /// the backend under the same deadline). Returns `Close` when the session must end.
    pub(in crate::frontend) async fn read_command(&mut self, len: usize) -> Result<(), Flow> {
        let config = self.shared.config();
        let (max, limit) = (config.max_allowed_packet, config.client_read_timeout);
        // A full frame is continued by more; only the total is known to be too large later.
        if len > max && len < MAX_FRAME {
            tracing::info!(client = %self.id(), announced = len, max_allowed_packet = max,
                "command larger than max_allowed_packet refused");
            farewell(
                &self.shared.metrics,
                &mut self.client,
                1,
                &ClientError::packet_too_large(max),
            )
            .await;
            return Err(Flow::Close);
        }
        let buffered = len.min(config.max_buffered_command.max(INSPECT_WHOLE));
        drop(config);
        match tokio::time::timeout(limit, self.client.fill(HEADER_LEN + buffered)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Flow::Close),
            Err(_) => {
                tracing::info!(client = %self.id(), user = %self.key.user, peer = %self.peer,
                    announced = len, client_read_timeout = %humantime::format_duration(limit),
                    "closing a client that stalled in the middle of a command");
                farewell(
                    &self.shared.metrics,
                    &mut self.client,
                    1,
                    &ClientError::command_read_timeout(limit),
                )
                .await;
                Err(Flow::Close)
            }
        }
    }

    /// Ends a session idle inside a transaction for `limit`: the client is told, and the
    /// connection is reset (which rolls the transaction back) when the session finishes.
    pub(in crate::frontend) async fn end_idle_transaction(&mut self, limit: Duration) {
        tracing::info!(client = %self.id(), user = %self.key.user, peer = %self.peer,
            idle_in_transaction_timeout = %humantime::format_duration(limit),
            "rolling back and closing a session idle inside a transaction");
        self.goodbye(&ClientError::idle_in_transaction(limit)).await;
    }
}

/// `idle_in_transaction_timeout`, or a wait that never ends when it is off (zero).
pub(in crate::frontend) async fn idle_in_transaction(limit: Duration) {
    if limit.is_zero() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(limit).await;
}
