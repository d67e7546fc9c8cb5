//! COM_RESET_CONNECTION.

use crate::frontend::{ClientSession, Flow, SYNC_ALL};
use crate::session::SessionState;

impl ClientSession {
    /// COM_RESET_CONNECTION: the session starts over (keeping its schema, as the server does).
    pub(in crate::frontend) async fn reset_connection(&mut self) -> Flow {
        if self.skip_command().await == Flow::Close {
            return Flow::Close;
        }
        // MySQL's reset sets the character set variables to the server's defaults rather than
        // the login's collation, and only a real reset says what they become; MariaDB's keeps
        // the login's, which every pooled connection of this session's key starts from.
        let mysql = self.shared.dialect.is_mysql();
        if mysql
            && self.backend.is_none()
            && let Err(err) = self.acquire(SYNC_ALL).await
        {
            return self.reply_error(&err).await;
        }
        // The server keeps FOUND_ROWS() across a reset: a value only the connection knows
        // (after SQL_CALC_FOUND_ROWS, SELECT ... INTO, stored code) is read first.
        if !self.found_rows_known {
            self.before_own_statement().await;
        }
        let mut vars = None;
        if let Some(b) = self.backend.as_mut() {
            match b.reset().await {
                Ok(()) => vars = (b.vars != b.baseline).then(|| b.vars.clone()),
                Err(e) => {
                    tracing::warn!(client = %self.handle.id, error = %e, "backend reset failed");
                    b.broken = true;
                }
            }
        }
        self.unpin_all();
        self.stmts.clear();
        // The server keeps the schema and FOUND_ROWS() across a reset; the rest starts over.
        self.state = SessionState {
            schema: self.state.schema.take(),
            multi_statements: self.state.multi_statements,
            found_rows: self.state.found_rows,
            vars,
            ..SessionState::default()
        };
        self.insert_id_known = true;
        self.found_rows_known = true;
        self.release().await;
        self.answer_locally(Some(1)).await
    }
}
