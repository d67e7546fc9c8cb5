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
//! - Each instance holds one of [`MAX_INSTANCES`] named locks (`sluice-instance-N`) for as
//!   long as its coordination connection lives; every monitor tick it counts the locks held,
//!   which is how many instances share the database, and caps each user in this instance at
//!   its fair share of the budget (the budget divided by the instances, the remainder going to
//!   the lowest-numbered ones). Its borrowers wait in its own queue for that share, so one
//!   busy instance cannot starve another.
//!
//! When an instance dies its connections close and its instance lock goes with them; the
//! others see one instance fewer at their next tick and take its share. When the service
//! scales out, the new instance's opens pass the count check only as others' connections
//! close: those above their new share close as they come back to their pool, so the budget
//! holds throughout. An instance cut off without its TCP connections closing (a lost host)
//! keeps its connections, and its share, until the database times them out (`wait_timeout`).
//!
//! The lock and the count run on one connection of their own per instance (logged in as the
//! monitor user), to the writer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::conn::{BackendConn, BackendError};
use super::topology::{Route, Target, Topology};
use crate::credentials::Credentials;

/// The longest an instance waits for another to finish opening a connection.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Instances that can share a budget (named locks `sluice-instance-0` and up).
pub(crate) const MAX_INSTANCES: usize = 32;

/// What became of a request to open a connection under the budget.
#[derive(Debug)]
pub(crate) enum Admission<T> {
    /// The count allowed it; the open's own result.
    Opened(T),
    /// The database already shows the whole budget.
    Full,
    /// The lock or the count could not be taken.
    Failed(BackendError),
}

/// The coordination connection and who it logs in as.
#[derive(Debug)]
pub(crate) struct Budget {
    topology: Topology,
    credentials: Arc<Credentials>,
    /// One open at a time per instance; the connection is kept between opens, with the
    /// instance lock it holds.
    coordinator: tokio::sync::Mutex<Option<(BackendConn, usize)>>,
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
    /// holding the budget's lock until it is done.
    pub(crate) async fn admit<T>(
        &self,
        target: Target,
        user: &str,
        budget: usize,
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
            Ok(_) => Admission::Full,
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

    /// The part of a `budget` that belongs to the other instances now: the budget less this
    /// instance's fair share, by how many instances hold an instance lock.
    pub(crate) async fn others_share(&self, budget: usize) -> Result<usize, BackendError> {
        let Ok(target) = self.topology.target(Route::Writer) else {
            return Ok(0);
        };
        let mut slot = self.coordinator.lock().await;
        self.coordinator_conn(&mut slot, target).await?;
        let Some((conn, ours)) = slot.as_mut() else {
            return Ok(0);
        };
        let ours = *ours;
        let mut sql = String::from("SELECT ");
        for n in 0..MAX_INSTANCES {
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("IS_USED_LOCK('{}') IS NOT NULL", instance_lock(n)));
        }
        let row = match conn.query_row(&sql, "counting Sluice instances").await {
            Ok(row) => row.unwrap_or_default(),
            Err(e) => {
                *slot = None;
                return Err(e);
            }
        };
        let held: Vec<bool> = row.iter().map(|v| v.as_deref() == Some("1")).collect();
        let instances = held.iter().filter(|h| **h).count().max(1);
        let rank = held.iter().take(ours).filter(|h| **h).count();
        Ok(budget - fair_share(budget, instances, rank))
    }

    /// The coordination connection to `target`'s host, opened (again) when needed, with an
    /// instance lock taken on it.
    async fn coordinator_conn<'a>(
        &self,
        slot: &'a mut Option<(BackendConn, usize)>,
        target: Target,
    ) -> Result<&'a mut BackendConn, BackendError> {
        let usable = slot.as_ref().is_some_and(|(c, _)| {
            c.host == target.host && c.epoch == target.epoch && !c.stream.is_stale()
        });
        if !usable {
            *slot = None;
            let mut conn = self.open_coordinator(target).await?;
            let n = take_instance_lock(&mut conn).await?;
            *slot = Some((conn, n));
        }
        slot.as_mut().map(|(c, _)| c).ok_or_else(|| {
            BackendError::Coordination("no connection to count connections on".into())
        })
    }

    async fn open_coordinator(&self, target: Target) -> Result<BackendConn, BackendError> {
        super::monitor::open_side(&self.topology, &self.credentials, target.host, target.epoch)
            .await
    }
}

/// Takes the first free instance lock on `conn` (held while it lives); returns its number.
async fn take_instance_lock(conn: &mut BackendConn) -> Result<usize, BackendError> {
    for n in 0..MAX_INSTANCES {
        let row = conn
            .query_row(
                &format!("SELECT GET_LOCK('{}', 0)", instance_lock(n)),
                "GET_LOCK",
            )
            .await?;
        if row.and_then(|r| r.into_iter().next().flatten()).as_deref() == Some("1") {
            return Ok(n);
        }
    }
    Err(BackendError::Coordination(format!(
        "more than {MAX_INSTANCES} Sluice instances share this database's budget"
    )))
}

/// The name of instance lock `n`.
fn instance_lock(n: usize) -> String {
    format!("sluice-instance-{n}")
}

/// The share of `budget` of the instance at `rank` among `instances`: an even split, the
/// remainder going to the lowest ranks.
fn fair_share(budget: usize, instances: usize, rank: usize) -> usize {
    let instances = instances.max(1);
    budget / instances + usize::from(rank < budget % instances)
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

    #[test]
    fn shares_add_up_to_the_budget() {
        for budget in 1..20 {
            for instances in 1..6 {
                let total: usize = (0..instances)
                    .map(|r| fair_share(budget, instances, r))
                    .sum();
                assert_eq!(total, budget, "{budget} over {instances}");
            }
        }
        assert_eq!(fair_share(5, 2, 0), 3);
        assert_eq!(fair_share(5, 2, 1), 2);
        assert_eq!(fair_share(4, 0, 0), 4);
    }
}
