//! COM_RESET_CONNECTION.

use crate::frontend::{ClientSession, Flow};
use crate::session::SessionState;

impl ClientSession {
    /// COM_RESET_CONNECTION: the session starts over (keeping its schema, as the server does).
    pub(in crate::frontend) async fn reset_connection(&mut self) -> Flow {
        if self.skip_command().await == Flow::Close {
            return Flow::Close;
        }
        if let Some(b) = self.backend.as_mut()
            && let Err(e) = b.reset().await
        {
            tracing::warn!(client = %self.handle.id, error = %e, "backend reset failed");
            b.broken = true;
        }
        self.unpin_all();
        self.stmts.clear();
        // The server keeps the schema and FOUND_ROWS() across a reset; the rest starts over.
        self.state = SessionState {
            schema: self.state.schema.take(),
            multi_statements: self.state.multi_statements,
            found_rows: self.state.found_rows,
            ..SessionState::default()
        };
        self.insert_id_known = true;
        self.found_rows_known = true;
        self.release().await;
        self.answer_locally(Some(1)).await
    }
}
