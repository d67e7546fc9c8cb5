//! `KILL [QUERY] <id>` and COM_PROCESS_KILL, with ids as Sluice hands them out.

use crate::errors::ClientError;
use crate::frontend::{ClientSession, Flow, SYNC_ALL};
use crate::registry::ClientId;
use crate::sql::Kill;

impl ClientSession {
    /// `KILL [QUERY] <id>` and COM_PROCESS_KILL, with ids as Sluice hands them out. The command
    /// itself was already read.
    pub(in crate::frontend) async fn kill(&mut self, kill: Kill, from_command: bool) -> Flow {
        let (id, modifier, connection) = match kill {
            Kill::Query { id, modifier } => (id, modifier, false),
            Kill::Connection { id, modifier } => (id, modifier, true),
            Kill::Own { .. } => {
                return self
                    .reply_error(&ClientError::unsupported("KILL CONNECTION_ID() here"))
                    .await;
            }
            Kill::Unsupported(what) => {
                return self.reply_error(&ClientError::unsupported(what)).await;
            }
        };
        let target = u32::try_from(id)
            .ok()
            .and_then(|i| self.shared.registry.get(ClientId(i)));
        let Some(target) = target else {
            return self
                .reply_server_error(&ClientError::unknown_thread(id))
                .await;
        };
        if target.user() != self.key.user {
            return self.reply_server_error(&ClientError::not_owner(id)).await;
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
}
