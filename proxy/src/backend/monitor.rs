//! The monitor: one task per host, each on a connection of its own, asks about once a
//! `monitor_interval` whether the host answers, whether it refuses writes (`@@read_only`,
//! `@@innodb_read_only`) and, for replicas, how far behind they are; and reports to the
//! topology, which picks the writer. While no writer is known the hosts are checked every
//! [`OUTAGE_INTERVAL`], so the queue of waiting borrowers moves the moment a writer answers.
//! A session that meets a read-only error or a lost connection asks for a check at once.
//!
//! A single host without a configured `monitor_user` has no writer to tell apart from others:
//! it is checked by its greeting alone (no login, no connection kept), and only when a session
//! meets trouble (a lost connection, a failed connect) and, during an outage, until it
//! answers; periodic greetings without a login would count as connection errors and get
//! Sluice's address blocked by the server's `max_connect_errors`. Once a session sees it
//! refuse a write, it is checked by logging in, as several hosts always are, until it is
//! writable again. A host whose monitor login is refused is taken as reachable and writable
//! (and the refusal logged), so the sessions' own logins report the real error.
//!
//! With `per_user_scope = "database"` one more task counts, every interval, the connections
//! the database shows per user and sizes this instance's per-user caps (see `budget`).

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::conn::{BackendConn, BackendError};
use super::login::{self, LoginError};
use super::pool::{Pool, PoolKey};
use super::topology::{HostId, Lag, Probe, Route, Topology};
use crate::credentials::{BackendSecret, Credentials};
use crate::protocol::CapabilityFlags;

/// How often hosts are checked while no writer is known.
pub const OUTAGE_INTERVAL: Duration = Duration::from_millis(50);

/// The shortest time between two checks of one host (re-check requests come in bursts).
const MIN_SPACING: Duration = Duration::from_millis(20);

/// Starts the monitor tasks; they end when `stop` turns true.
pub fn spawn(pool: &Pool, stop: watch::Receiver<bool>) {
    for host in 0..pool.topology().connectors().len() {
        tokio::spawn(watch_host(pool.clone(), HostId(host), stop.clone()));
    }
    tokio::spawn(size_budgets(pool.clone(), stop));
}

/// Checks one host until the proxy stops.
async fn watch_host(pool: Pool, host: HostId, mut stop: watch::Receiver<bool>) {
    let topology = pool.topology().clone();
    let mut conn: Option<BackendConn> = None;
    let mut lag_sql = LAG_QUERIES[0];
    loop {
        let started = Instant::now();
        let probe = check(&pool, host, &mut conn, &mut lag_sql).await;
        let interval = if topology.writer_missing() {
            OUTAGE_INTERVAL
        } else {
            topology.interval()
        };
        if let Probe::Down { error } = &probe {
            tracing::debug!(host = %topology.connector(host).address, %error, "host check failed");
        }
        topology.report(host, probe, interval);
        pool.drain_invalid();
        // The next check after the interval, or sooner when a session asks for one.
        let (interval, periodic) = if topology.writer_missing() {
            (OUTAGE_INTERVAL, true)
        } else {
            (interval, topology.needs_login_check(host))
        };
        tokio::select! {
            _ = tokio::time::sleep(interval), if periodic => {}
            _ = topology.recheck_requested() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let spacing = MIN_SPACING.saturating_sub(started.elapsed());
        if !spacing.is_zero() {
            tokio::time::sleep(spacing).await;
        }
    }
}

/// `SHOW REPLICA STATUS` (MariaDB 10.5+, MySQL 8.0.22+), else the older spelling.
const LAG_QUERIES: [&str; 2] = ["SHOW REPLICA STATUS", "SHOW SLAVE STATUS"];

/// One check of `host`, on `conn` (opened again when needed).
async fn check(
    pool: &Pool,
    host: HostId,
    conn: &mut Option<BackendConn>,
    lag_sql: &mut &'static str,
) -> Probe {
    let topology = pool.topology();
    let connector = topology.connector(host);
    let limit = connector.connect_timeout();
    if !topology.needs_login_check(host) {
        *conn = None;
        return greeting(pool, host).await;
    }
    // A connection the server closed (wait_timeout, a restart) is replaced once at once.
    for attempt in 0..2 {
        if conn.as_ref().is_none_or(|c| c.stream.is_stale()) {
            *conn = None;
            match tokio::time::timeout(limit, open(pool, host)).await {
                Ok(Ok(c)) => *conn = Some(c),
                Ok(Err(e)) if e.is_login_refused() => {
                    tracing::warn!(host = %connector.address, error = %e,
                        "the monitor cannot log in; taking the host as reachable and writable");
                    return greeting(pool, host).await;
                }
                Ok(Err(e)) => {
                    return Probe::Down {
                        error: e.to_string(),
                    };
                }
                Err(_) => {
                    return Probe::Down {
                        error: format!("no answer within {}", humantime::format_duration(limit)),
                    };
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            continue;
        };
        match tokio::time::timeout(limit, ask(c, lag_sql)).await {
            Ok(Ok(probe)) => {
                if matches!(
                    probe,
                    Probe::Up {
                        read_only: false,
                        ..
                    }
                ) {
                    topology.clear_suspect(host);
                }
                return probe;
            }
            Ok(Err(e)) if attempt == 0 => {
                tracing::debug!(error = %e, "monitor connection failed; opening another");
                *conn = None;
            }
            Ok(Err(e)) => {
                *conn = None;
                return Probe::Down {
                    error: e.to_string(),
                };
            }
            Err(_) => {
                *conn = None;
                return Probe::Down {
                    error: format!("no answer within {}", humantime::format_duration(limit)),
                };
            }
        }
    }
    Probe::Down {
        error: "the monitor connection keeps failing".into(),
    }
}

/// Logs in to `host` as the monitor user.
async fn open(pool: &Pool, host: HostId) -> Result<BackendConn, BackendError> {
    let epoch = pool.topology().epoch();
    open_side(pool.topology(), pool.credentials(), host, epoch).await
}

/// Checks `host` by its greeting alone: reachable (taken as writable) or not. A server that
/// greets with an error (too many connections) is reachable too.
async fn greeting(pool: &Pool, host: HostId) -> Probe {
    let connector = pool.topology().connector(host);
    match connector.probe().await {
        Ok((_, caps)) => Probe::Up {
            read_only: false,
            lag: Lag::NotReplica,
            caps,
        },
        Err(BackendError::Refused { .. }) => Probe::Up {
            read_only: false,
            lag: Lag::NotReplica,
            caps: pool
                .topology()
                .server_caps()
                .unwrap_or(CapabilityFlags::empty()),
        },
        Err(e) => Probe::Down {
            error: e.to_string(),
        },
    }
}

/// A connection of Sluice's own to `host` (not the pool's, not counted as one), logged in as
/// `backend.monitor_user` with `monitor_password`, or with the password Sluice knows for
/// that user, or else as the first user Sluice knows.
pub(crate) async fn open_side(
    topology: &Topology,
    credentials: &Credentials,
    host: HostId,
    epoch: u64,
) -> Result<BackendConn, BackendError> {
    let connector = topology.connector(host);
    let (user, password) = match topology.monitor_login() {
        Some(login) => login,
        None => match credentials.any() {
            Some(c) => (c.username.clone(), None),
            None => {
                return Err(BackendError::Coordination(
                    "no user to log in as (set backend.monitor_user)".into(),
                ));
            }
        },
    };
    let key = PoolKey {
        user,
        caps: CapabilityFlags::empty(),
        collation: 45,
        route: Route::Writer,
    };
    let mut conn = match password {
        Some(password) => {
            connector
                .open(&key, &BackendSecret::from(password), None)
                .await?
        }
        None => {
            let deadline = tokio::time::Instant::now() + connector.connect_timeout();
            login::open(connector, credentials, &key, deadline, Duration::ZERO)
                .await
                .map_err(|e| match e {
                    LoginError::Refused(e) | LoginError::Failed(e) => e,
                    LoginError::UnknownUser => BackendError::Coordination(format!(
                        "the monitor user {} is not known (set backend.monitor_password)",
                        key.user
                    )),
                })?
        }
    };
    connector.not_pooled();
    conn.host = host;
    conn.epoch = epoch;
    Ok(conn)
}

/// Asks a logged-in host whether it takes writes and, if not, how far behind it is.
async fn ask(conn: &mut BackendConn, lag_sql: &mut &'static str) -> Result<Probe, BackendError> {
    let row = conn
        .query_row(
            "SELECT @@global.read_only, @@global.innodb_read_only",
            "monitor check",
        )
        .await?
        .unwrap_or_default();
    let on = |v: Option<&Option<String>>| {
        !matches!(v.and_then(Option::as_deref), Some("0") | Some("OFF"))
    };
    let read_only = on(row.first()) || on(row.get(1));
    let lag = if read_only {
        replica_lag(conn, lag_sql).await?
    } else {
        Lag::NotReplica
    };
    Ok(Probe::Up {
        read_only,
        lag,
        caps: conn.server_caps,
    })
}

/// The replica's lag by its own account; `Unknown` when replication is stopped or Sluice may
/// not ask (the monitor user needs REPLICATION CLIENT, or MariaDB's REPLICA MONITOR).
async fn replica_lag(
    conn: &mut BackendConn,
    lag_sql: &mut &'static str,
) -> Result<Lag, BackendError> {
    let answer = match conn.query_named(lag_sql, "replica status", 1).await {
        // ER_PARSE_ERROR: the server knows only the other spelling.
        Err(BackendError::Command { code: 1064, .. }) if *lag_sql == LAG_QUERIES[0] => {
            *lag_sql = LAG_QUERIES[1];
            conn.query_named(lag_sql, "replica status", 1).await
        }
        other => other,
    };
    let (names, rows) = match answer {
        Ok(a) => a,
        Err(BackendError::Command { .. }) => return Ok(Lag::Unknown),
        Err(e) => return Err(e),
    };
    Ok(lag_from(&names, rows.first().map(Vec::as_slice)))
}

/// Reads `Seconds_Behind_Master` (MariaDB, older MySQL) or `Seconds_Behind_Source` from a
/// replica status row.
fn lag_from(names: &[String], row: Option<&[Option<String>]>) -> Lag {
    let Some(row) = row else {
        return Lag::NotReplica;
    };
    let column = names
        .iter()
        .position(|n| n == "Seconds_Behind_Master" || n == "Seconds_Behind_Source");
    match column.and_then(|i| row.get(i)).and_then(Option::as_deref) {
        Some(v) => v
            .parse()
            .map(|s| Lag::Behind(Duration::from_secs(s)))
            .unwrap_or(Lag::Unknown),
        None => Lag::Unknown,
    }
}

/// With `per_user_scope = "database"`: every interval, learns how many Sluice instances
/// share the database and sizes this one's per-user caps to its fair share (see `budget`).
async fn size_budgets(pool: Pool, mut stop: watch::Receiver<bool>) {
    loop {
        let interval = pool.topology().interval();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(budget) = pool.shared_budget() else {
            continue;
        };
        match pool.budget().others_share(budget).await {
            Ok(others) => pool.set_peers_share(others),
            Err(e) => {
                tracing::warn!(error = %e, "cannot count the Sluice instances sharing the database");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lag_is_read_from_either_spelling_and_null_is_unknown() {
        let row = |v: Option<&str>| vec![Some("x".to_string()), v.map(str::to_string)];
        let mariadb = names(&["Slave_IO_State", "Seconds_Behind_Master"]);
        let mysql = names(&["Replica_IO_State", "Seconds_Behind_Source"]);
        assert_eq!(
            lag_from(&mariadb, Some(&row(Some("3")))),
            Lag::Behind(Duration::from_secs(3))
        );
        assert_eq!(
            lag_from(&mysql, Some(&row(Some("0")))),
            Lag::Behind(Duration::ZERO)
        );
        assert_eq!(lag_from(&mysql, Some(&row(None))), Lag::Unknown);
        assert_eq!(lag_from(&mysql, None), Lag::NotReplica);
        assert_eq!(
            lag_from(&names(&["a"]), Some(&row(Some("1")))),
            Lag::Unknown
        );
    }
}
