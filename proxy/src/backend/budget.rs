//! One connection budget per user for every Sluice instance in front of a database
//! (`per_user_scope = "database"`), without a coordinator of Sluice's own: the database is
//! asked.
//!
//! - Before opening a connection for a budgeted user, an instance takes a named lock on the
//!   writer (`GET_LOCK`, the same name in every instance), counts the user's connections the
//!   database shows (`information_schema.PROCESSLIST`), opens the connection only if the
//!   count is below the budget, and releases the lock once the new connection has logged in
//!   (so it shows in the count the next instance takes). Two instances can therefore never
//!   open past the budget together, however their requests interleave.
//! - Every monitor tick, each instance counts the connections the database shows per user
//!   and sizes its own cap for that user to the budget minus what the others hold, so its
//!   borrowers wait in its queue instead of asking the database in vain.
//!
//! The lock and the count run on one connection of their own per instance (logged in as the
//! monitor user), to the writer.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::conn::{BackendConn, BackendError};
use super::topology::{Route, Target, Topology};
use crate::credentials::Credentials;

/// The longest an instance waits for another to finish opening a connection.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// What became of a request to open a connection under the budget.
#[derive(Debug)]
pub(crate) enum Admission<T> {
    /// The count allowed it; the open's own result.
    Opened(T),
    /// The database already shows the whole budget; `peers` of it are not this instance's.
    Full { peers: usize },
    /// The lock or the count could not be taken.
    Failed(BackendError),
}

/// The coordination connection and who it logs in as.
#[derive(Debug)]
pub(crate) struct Budget {
    topology: Topology,
    credentials: Arc<Credentials>,
    /// One open at a time per instance; the connection is kept between opens.
    coordinator: tokio::sync::Mutex<Option<BackendConn>>,
}

impl Budget {
    pub(crate) fn new(topology: Topology, credentials: Arc<Credentials>) -> Self {
        Budget {
            topology,
            credentials,
            coordinator: tokio::sync::Mutex::new(None),
        }
    }

    /// Runs `open` for `user` if the database shows fewer than `budget` of its connections,
    /// holding the budget's lock until it is done. `ours` is how many places this instance
    /// holds for the user (this one included).
    pub(crate) async fn admit<T>(
        &self,
        target: Target,
        user: &str,
        budget: usize,
        ours: usize,
        open: impl Future<Output = T>,
    ) -> Admission<T> {
        let mut slot = self.coordinator.lock().await;
        let conn = match self.coordinator_conn(&mut slot, target).await {
            Ok(c) => c,
            Err(e) => return Admission::Failed(e),
        };
        let lock = lock_name(user);
        let wait = LOCK_WAIT.as_secs();
        match conn
            .query_row(&format!("SELECT GET_LOCK('{lock}', {wait})"), "GET_LOCK")
            .await
        {
            Ok(Some(row)) if row.first().and_then(Option::as_deref) == Some("1") => {}
            Ok(_) => {
                return Admission::Failed(BackendError::Coordination(format!(
                    "another Sluice instance held the connection budget lock for more than {}s",
                    wait
                )));
            }
            Err(e) => {
                *slot = None;
                return Admission::Failed(e);
            }
        }
        let result = match count_user(conn, user).await {
            Ok(shown) if shown < budget => Admission::Opened(open.await),
            // Places of ours that the database shows are ours; the rest belong to others.
            Ok(shown) => Admission::Full {
                peers: shown.saturating_sub(ours.saturating_sub(1)),
            },
            Err(e) => Admission::Failed(e),
        };
        let released = conn
            .query_row(&format!("DO RELEASE_LOCK('{lock}')"), "RELEASE_LOCK")
            .await;
        if released.is_err() {
            // The lock dies with the connection; the next open logs in again.
            *slot = None;
        }
        result
    }

    /// Connections the database shows per user now (every user), for sizing the caps.
    pub(crate) async fn shown_per_user(&self) -> Result<HashMap<String, usize>, BackendError> {
        let Ok(target) = self.topology.target(Route::Writer) else {
            return Ok(HashMap::new());
        };
        let mut slot = self.coordinator.lock().await;
        let conn = self.coordinator_conn(&mut slot, target).await?;
        let rows = conn
            .query_rows(
                "SELECT USER, COUNT(*) FROM information_schema.PROCESSLIST GROUP BY USER",
                "counting connections per user",
                10_000,
            )
            .await;
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                *slot = None;
                return Err(e);
            }
        };
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let mut cols = r.into_iter();
                let user = cols.next()??;
                let n = cols.next()??.parse().ok()?;
                Some((user, n))
            })
            .collect())
    }

    /// The coordination connection to `target`'s host, opened (again) when needed.
    async fn coordinator_conn<'a>(
        &self,
        slot: &'a mut Option<BackendConn>,
        target: Target,
    ) -> Result<&'a mut BackendConn, BackendError> {
        let usable = slot.as_ref().is_some_and(|c| {
            c.host == target.host && c.epoch == target.epoch && !c.stream.is_stale()
        });
        if !usable {
            *slot = None;
            let conn = self.open_coordinator(target).await?;
            *slot = Some(conn);
        }
        slot.as_mut().ok_or_else(|| {
            BackendError::Coordination("no connection to count connections on".into())
        })
    }

    async fn open_coordinator(&self, target: Target) -> Result<BackendConn, BackendError> {
        super::monitor::open_side(&self.topology, &self.credentials, target.host, target.epoch)
            .await
    }
}

/// How many connections of `user` the database shows.
async fn count_user(conn: &mut BackendConn, user: &str) -> Result<usize, BackendError> {
    // A hex literal: no quoting rules (or sql_mode) to get wrong.
    let sql = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = X'{}'",
        hex(user.as_bytes())
    );
    let row = conn
        .query_row(&sql, "counting a user's connections")
        .await?;
    Ok(row
        .and_then(|r| r.into_iter().next().flatten())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// The named lock of `user`'s budget: the same in every instance, short enough for MySQL's
/// 64-character limit whatever the user name.
fn lock_name(user: &str) -> String {
    // FNV-1a: stable across builds and instances.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("sluice-budget-{h:016x}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_names_are_short_stable_and_per_user() {
        let long = "u".repeat(300);
        assert_eq!(lock_name("app"), lock_name("app"));
        assert_ne!(lock_name("app"), lock_name("other"));
        assert!(lock_name(&long).len() <= 64);
        assert!(
            lock_name("a'b")
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        );
        assert_eq!(hex(b"a'\n"), "61270a");
    }
}
