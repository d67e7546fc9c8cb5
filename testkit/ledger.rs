//! A ledger load for failover tests: accounts whose total never changes, transfers between
//! them in transactions, and a record of every commit a client saw acknowledged. After an
//! outage the ledger is checked: the total is intact and every acknowledged transfer is there.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};

use crate::mariadb::MariaDb;

/// The ledger's schema, its accounts and the user that writes it.
#[derive(Debug, Clone)]
pub struct Ledger {
    pub schema: String,
    pub accounts: u32,
    pub initial_balance: i64,
    /// A user with data privileges only (no SUPER or READ_ONLY ADMIN), so `read_only`
    /// applies to it.
    pub user: String,
    pub password: String,
}

/// What a client saw go wrong.
#[derive(Debug, Clone)]
pub struct LoadError {
    pub at: Instant,
    /// The server error code, if it was an ERR packet (Sluice's or the database's).
    pub code: Option<u16>,
    pub message: String,
}

/// Everything the clients of one load saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Transfer ids whose COMMIT was acknowledged, and when.
    pub acked: Vec<(u64, Instant)>,
    pub errors: Vec<LoadError>,
}

impl LoadReport {
    /// The first acknowledgement after `t`.
    pub fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.acked
            .iter()
            .map(|(_, at)| *at)
            .filter(|at| *at > t)
            .min()
    }
}

impl Ledger {
    /// Creates `schema` with `accounts` accounts of `initial_balance` each, and its user, on
    /// `db` (a primary: a replica gets it by replication).
    pub fn create(
        db: &MariaDb,
        schema: &str,
        accounts: u32,
        initial_balance: i64,
    ) -> Result<Ledger> {
        let ledger = Ledger {
            schema: schema.to_string(),
            accounts,
            initial_balance,
            user: format!("{schema}_w"),
            password: format!("pw-{schema}"),
        };
        db.sql(&format!(
            "CREATE DATABASE {s}; \
             CREATE TABLE {s}.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB; \
             CREATE TABLE {s}.transfers (id BIGINT PRIMARY KEY, src INT NOT NULL, dst INT NOT NULL, \
               amount INT NOT NULL, server_id INT NOT NULL) ENGINE=InnoDB; \
             INSERT INTO {s}.accounts SELECT seq, {b} FROM {s}.seq_1_to_{n}; \
             CREATE USER '{u}'@'%' IDENTIFIED BY '{p}'; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.* TO '{u}'@'%';",
            s = schema,
            b = initial_balance,
            n = accounts,
            u = ledger.user,
            p = ledger.password,
        ))
        .context("cannot create the ledger")?;
        Ok(ledger)
    }

    /// Runs `clients` clients against `opts` (Sluice), each transferring in a loop until
    /// `stop` is set or `limit` has passed. A client whose session fails connects again.
    pub async fn run(
        &self,
        opts: OptsBuilder,
        clients: u32,
        stop: Arc<AtomicBool>,
        limit: Duration,
    ) -> LoadReport {
        let opts = opts
            .user(Some(self.user.clone()))
            .pass(Some(self.password.clone()));
        let mut tasks = Vec::new();
        for client in 0..clients {
            let (opts, stop, ledger) = (opts.clone(), stop.clone(), self.clone());
            tasks.push(tokio::spawn(async move {
                ledger.client(client, opts, stop, limit).await
            }));
        }
        let mut report = LoadReport::default();
        for t in tasks {
            if let Ok(r) = t.await {
                report.acked.extend(r.acked);
                report.errors.extend(r.errors);
            }
        }
        report
    }

    async fn client(
        &self,
        client: u32,
        opts: OptsBuilder,
        stop: Arc<AtomicBool>,
        limit: Duration,
    ) -> LoadReport {
        let mut report = LoadReport::default();
        let deadline = Instant::now() + limit;
        let mut conn: Option<Conn> = None;
        let mut n: u64 = 0;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            n += 1;
            let id = u64::from(client) * 1_000_000_000 + n;
            if conn.is_none() {
                match Conn::new(Opts::from(opts.clone())).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        report.errors.push(error(&e));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            match self.transfer(c, id).await {
                Ok(()) => report.acked.push((id, Instant::now())),
                Err(e) => {
                    report.errors.push(error(&e));
                    // The session may be gone (Sluice closes one whose transaction was lost).
                    conn = None;
                }
            }
        }
        if let Some(c) = conn {
            let _ = c.disconnect().await;
        }
        report
    }

    /// One transfer between two accounts picked from `id`, in one transaction. The accounts
    /// are updated in id order, so two transfers never deadlock.
    async fn transfer(&self, c: &mut Conn, id: u64) -> Result<(), mysql_async::Error> {
        let n = u64::from(self.accounts);
        let src = id.wrapping_mul(2_654_435_761) % n + 1;
        let dst = (src + id % (n - 1)) % n + 1;
        let amount = id % 7 + 1;
        let s = &self.schema;
        let (first, second) = if src < dst {
            ((src, "-"), (dst, "+"))
        } else {
            ((dst, "+"), (src, "-"))
        };
        c.query_drop("BEGIN").await?;
        for (account, sign) in [first, second] {
            c.query_drop(format!(
                "UPDATE {s}.accounts SET balance = balance {sign} {amount} WHERE id = {account}"
            ))
            .await?;
        }
        c.query_drop(format!(
            "INSERT INTO {s}.transfers VALUES ({id}, {src}, {dst}, {amount}, @@server_id)"
        ))
        .await?;
        c.query_drop("COMMIT").await
    }

    /// Checks the ledger on `db`: the total is what it was, and every acknowledged transfer
    /// is there. Returns how many transfers it holds.
    pub fn check(&self, db: &MariaDb, acked: &[(u64, Instant)]) -> Result<usize> {
        let s = &self.schema;
        let total: i64 = db
            .sql(&format!("SELECT SUM(balance) FROM {s}.accounts"))?
            .trim()
            .parse()
            .context("the ledger's total")?;
        let expected = i64::from(self.accounts) * self.initial_balance;
        if total != expected {
            bail!("the ledger's total is {total}, expected {expected}");
        }
        let stored: HashSet<u64> = db
            .sql(&format!("SELECT id FROM {s}.transfers"))?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let missing: Vec<u64> = acked
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !stored.contains(id))
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} acknowledged transfers are missing, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
        }
        Ok(stored.len())
    }
}

fn error(e: &mysql_async::Error) -> LoadError {
    let code = match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    };
    LoadError {
        at: Instant::now(),
        code,
        message: e.to_string(),
    }
}
