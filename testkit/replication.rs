//! Two private MariaDB servers that replicate (GTID): a primary and a read-only replica with
//! the same accounts and passwords, for failover tests. The replica keeps its own binary log,
//! so it can be promoted (`SET GLOBAL read_only = 0`) and become the writer.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::mariadb::{MariaDb, MariaDbOptions};
use crate::ports::free_port;
use crate::sandbox::{Passwords, quote};

/// How long the replica may take to connect to its primary.
const CONNECT_DEADLINE: Duration = Duration::from_secs(20);

/// A primary and its replica; both stop and vanish on drop.
#[derive(Debug)]
pub struct ReplicaPair {
    pub primary: MariaDb,
    pub replica: MariaDb,
}

impl ReplicaPair {
    /// Starts a primary and a replica following it from its current position.
    pub fn start() -> Result<ReplicaPair> {
        let passwords = Passwords::random()?;
        let primary =
            MariaDb::start_with_passwords(options(1, false), free_port, passwords.clone())
                .context("cannot start the primary")?;
        let replica = MariaDb::start_with_passwords(options(2, true), free_port, passwords)
            .context("cannot start the replica")?;
        // Each server set up its own accounts from its init file; replicate only what comes
        // after that.
        let position = primary.sql("SELECT @@global.gtid_binlog_pos")?;
        replica.sql(&format!(
            "SET GLOBAL gtid_slave_pos = {}; \
             CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, \
             MASTER_USER = 'root', MASTER_PASSWORD = {}, MASTER_USE_GTID = slave_pos, \
             MASTER_CONNECT_RETRY = 1; \
             START SLAVE;",
            quote(position.trim()),
            primary.port(),
            quote(primary.root_password()),
        ))?;
        let pair = ReplicaPair { primary, replica };
        pair.wait_replicating(CONNECT_DEADLINE)?;
        Ok(pair)
    }

    /// Waits until the replica's I/O and SQL threads both run.
    pub fn wait_replicating(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let running = self.replica.sql(
                "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
                 WHERE VARIABLE_NAME = 'SLAVE_RUNNING'",
            )?;
            if running.trim() == "ON" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the replica did not start replicating within {limit:?}; its error.log ends \
                     with:\n{}",
                    self.replica.error_log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the replica has applied everything the primary has written so far.
    pub fn wait_caught_up(&self, limit: Duration) -> Result<()> {
        let position = self.primary.sql("SELECT @@global.gtid_binlog_pos")?;
        let done = self.replica.sql(&format!(
            "SELECT MASTER_GTID_WAIT({}, {})",
            quote(position.trim()),
            limit.as_secs_f64()
        ))?;
        if done.trim() != "0" {
            bail!(
                "the replica did not reach the primary's position {} within {limit:?}",
                position.trim()
            );
        }
        Ok(())
    }
}

/// A server with a binary log and GTIDs; a replica also starts read-only.
fn options(server_id: u32, replica: bool) -> MariaDbOptions {
    let mut extra_args = vec![
        format!("--server-id={server_id}"),
        "--log-bin=binlog".to_string(),
        "--binlog-format=ROW".to_string(),
        "--log-slave-updates=ON".to_string(),
        "--gtid-strict-mode=ON".to_string(),
        // A test that left a lock behind fails in seconds, not after InnoDB's 50 s.
        "--innodb-lock-wait-timeout=5".to_string(),
    ];
    if replica {
        extra_args.push("--read-only=ON".to_string());
    }
    MariaDbOptions {
        extra_args,
        ..MariaDbOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_follows_the_primary_and_survives_its_restart() {
        let mut pair = ReplicaPair::start().unwrap();
        assert_eq!(pair.replica.sql("SELECT @@read_only").unwrap().trim(), "1");
        assert_eq!(pair.primary.sql("SELECT @@read_only").unwrap().trim(), "0");
        pair.primary
            .sql("CREATE DATABASE r; CREATE TABLE r.t (i INT PRIMARY KEY); INSERT INTO r.t VALUES (1)")
            .unwrap();
        pair.wait_caught_up(Duration::from_secs(10)).unwrap();
        assert_eq!(pair.replica.sql("SELECT i FROM r.t").unwrap(), "1\n");

        let started = Instant::now();
        pair.primary.kill9();
        assert!(!pair.primary.is_running());
        pair.primary.restart().unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "restart took {took:?}");
        pair.primary.sql("INSERT INTO r.t VALUES (2)").unwrap();
        pair.wait_replicating(Duration::from_secs(10)).unwrap();
        pair.wait_caught_up(Duration::from_secs(10)).unwrap();
        assert_eq!(pair.replica.sql("SELECT COUNT(*) FROM r.t").unwrap(), "2\n");
        // Same accounts on both: a password works on either.
        assert_eq!(pair.primary.app_password(), pair.replica.app_password());
    }
}
