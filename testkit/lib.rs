//! Sandbox shared by Sluice's end-to-end tests, benchmarks and demo: real servers, real clients.

/// AWS identities for tests: moto_server checking signatures, IAM roles, users and sessions.
pub mod aws_iam;
/// A MariaDB that asks for the password in clear, as RDS asks its IAM users.
pub mod cleartext;
/// Real external clients (PyMySQL, the `mariadb` CLI) driven from tests.
pub mod clients;
/// Sluice's resident memory with many idle clients (for the benches).
pub mod idle;
/// A ledger of transfers whose total must not change, for failover tests.
pub mod ledger;
/// Private MariaDB servers on loopback with real random passwords.
pub mod mariadb;
/// A local AWS (Secrets Manager, KMS) for tests: `moto_server` on loopback.
pub mod moto;
/// Private MySQL 9 servers (caching_sha2_password only) from a Debian sid chroot.
pub mod mysql9;
/// Test certificates (rcgen): CAs and server certificates as PEM files.
pub mod pki;
/// Free loopback ports.
pub mod ports;
/// Child processes: finding programs, tying children to this process, bounded waits.
pub mod process;
/// A primary and a replica that replicate (GTID), for failover tests.
pub mod replication;
/// Benchmark reports: medians and the Markdown file under `target/bench`.
pub mod report;
/// Where sandbox servers live: private directories, leftovers, exit-time cleanup, passwords.
mod sandbox;
/// The real `sluice` binary as a child process.
pub mod sluice;
/// sysbench runs and their figures.
pub mod sysbench;

pub use aws_iam::{AwsKeys, IamMoto};
pub use clients::{
    client_opts, mariadb_cli, mariadb_cli_async, pymysql, pymysql_async, stdout_if_success,
};
pub use ledger::{Ledger, LoadReport};
pub use mariadb::{MariaDb, MariaDbOptions};
pub use moto::Moto;
pub use mysql9::{Mysql9, Mysql9Options, Sha2Auth};
pub use pki::Pki;
pub use ports::free_port;
pub use process::spawn_tied;
pub use replication::ReplicaPair;
pub use sluice::{SluiceOptions, SluiceProcess};
