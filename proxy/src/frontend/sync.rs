//! Makes a borrowed backend connection match the session: schema, variables, options.

use super::{ClientSession, Sync};
use crate::backend::BackendError;
use crate::errors::ClientError;

impl ClientSession {
    /// Makes sure the session holds a backend connection in the session's state.
    pub(in crate::frontend) async fn acquire(&mut self, sync: Sync) -> Result<(), ClientError> {
        if self.backend.is_none() {
            let borrowed = self
                .shared
                .borrow(&self.key, self.state.schema.as_deref(), self.gauge.user())
                .await;
            let conn = match borrowed {
                Ok(conn) => conn,
                Err(e) => {
                    // A borrow timeout is logged once per session, with what was waiting.
                    let log = !self.logged_borrow_timeout;
                    let timeout = matches!(e, crate::backend::BorrowError::Timeout { .. });
                    let digest = if timeout && log {
                        self.logged_borrow_timeout = true;
                        self.buffered_digest()
                    } else {
                        None
                    };
                    return Err(self.shared.borrow_error(&self.key, e, digest.as_ref(), log));
                }
            };
            *self.handle.backend_thread.lock().await = Some(conn.thread_id);
            self.handle.set_lent_thread(Some(conn.thread_id));
            self.backend = Some(conn);
        }
        if let Err(e) = self.sync_state(sync).await {
            if let Some(b) = self.backend.as_mut() {
                b.broken |= !matches!(e, BackendError::Command { .. });
            }
            self.release_if_free().await;
            return Err(match e {
                BackendError::Command { code, message, .. } => ClientError {
                    code,
                    sql_state: *b"HY000",
                    message,
                },
                other => ClientError::backend_lost(&other.to_string()),
            });
        }
        Ok(())
    }

    /// Applies the session's schema, variables and options to its backend connection.
    pub(in crate::frontend) async fn sync_state(&mut self, sync: Sync) -> Result<(), BackendError> {
        if self.sync_needed(sync) {
            self.before_own_statement().await;
        }
        let Some(b) = self.backend.as_mut() else {
            return Ok(());
        };
        if sync.schema && b.schema != self.state.schema {
            match &self.state.schema {
                Some(s) => b.init_db(s).await?,
                // The password the database accepts now (the user's secret may have rotated
                // since this session logged in).
                None => {
                    let credentials = &self.shared.credentials;
                    let address = &self.shared.pool.topology().connector(b.host).address;
                    let password = credentials
                        .backend_password(&self.user.username, address)
                        .unwrap_or_else(|| self.user.password.clone().into());
                    b.change_user_no_schema(&password).await?
                }
            }
        }
        let want_autocommit = self.state.autocommit.unwrap_or(b.baseline_autocommit);
        let autocommit = (b.autocommit != want_autocommit).then_some(want_autocommit);
        // Usually nothing differs: compare in place and copy values only to replay them.
        let replay = {
            let want = self.state.vars.as_ref().unwrap_or(&b.baseline);
            want.replay_statement(&b.vars, autocommit)
                .map(|sql| (sql, want.clone()))
        };
        if let Some((sql, want)) = replay {
            self.state.own_statement_ran();
            b.query_row(&sql, "replaying session variables").await?;
            b.vars = want;
            b.autocommit = want_autocommit;
        }
        if self.state.results_collation_set && !b.results_collation_set {
            let want = self.state.vars.as_ref().unwrap_or(&b.baseline);
            if let Some(sql) = want.set_statement("character_set_results") {
                self.state.own_statement_ran();
                b.query_row(&sql, "replaying the results collation").await?;
            }
            b.results_collation_set = true;
            b.taint(crate::session::ResetReason::StateUnknown);
        }
        if sync.multi_statements && b.multi_statements != self.state.multi_statements {
            b.set_multi_statements(self.state.multi_statements).await?;
        }
        Ok(())
    }

    /// Whether [`ClientSession::sync_state`] would run a statement of Sluice's own.
    fn sync_needed(&self, sync: Sync) -> bool {
        let Some(b) = self.backend.as_ref() else {
            return false;
        };
        let want_autocommit = self.state.autocommit.unwrap_or(b.baseline_autocommit);
        let want = self.state.vars.as_ref().unwrap_or(&b.baseline);
        (sync.schema && b.schema != self.state.schema)
            || b.autocommit != want_autocommit
            || want.replay_statement(&b.vars, None).is_some()
            || (self.state.results_collation_set && !b.results_collation_set)
            || (sync.multi_statements && b.multi_statements != self.state.multi_statements)
    }
}
