//! Sandbox shared by Sluice's end-to-end tests, benchmarks and demo: real servers, real clients.

/// Real external clients (PyMySQL, the `mariadb` CLI) driven from tests.
pub mod clients;
/// Private MariaDB servers on loopback with real random passwords.
pub mod mariadb;
/// Free loopback ports.
pub mod ports;
/// Child processes: finding programs, tying children to this process, bounded waits.
pub mod process;

pub use clients::{mariadb_cli, mariadb_cli_async, pymysql, pymysql_async, stdout_if_success};
pub use mariadb::{MariaDb, MariaDbOptions};
pub use ports::free_port;
pub use process::spawn_tied;
