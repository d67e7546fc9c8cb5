//! Operating Sluice: the SQL admin console (MySQL protocol, PgBouncer's vocabulary) and the
//! HTTP endpoints for Prometheus and health checks.
//!
//! - [`console`]: the admin listener, its login and command loop;
//! - [`commands`]: parsing and running `SHOW POOLS`, `PAUSE`, `RELOAD`, ...;
//! - [`resultset`]: the typed text result sets the console answers with;
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`health`]: what `/readyz` checks, with a short cache.

pub mod commands;
pub mod console;
pub mod health;
pub mod http;
pub mod resultset;
