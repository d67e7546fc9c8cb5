//! Sluice: a MySQL/MariaDB proxy that authenticates clients itself and multiplexes their
//! transactions onto a small, bounded pool of backend connections.
//!
//! The pieces, by module:
//! - [`config`]: the TOML file, environment overrides, validation;
//! - [`protocol`]: MySQL framing, the packets Sluice writes, response tracking and relay;
//! - [`frontend`]: one task per client, from login through the command loop;
//! - [`backend`]: backend connections and the bounded pool;
//! - [`session`]: per-session state that follows a client across backend connections;
//! - [`sql`]: the light statement classifier (pins, KILL);
//! - [`auth`], [`credentials`]: passwords and scrambles;
//! - [`errors`]: every error Sluice sends, with its code;
//! - [`context`]: the state every task shares (configuration, pool, credentials, metrics);
//! - [`server`]: the listener, the client limit and the drain;
//! - [`stats`], [`registry`]: counters and live sessions;
//! - [`metrics`]: Prometheus metrics named after RDS Proxy's;
//! - [`admin`]: the admin console and the HTTP endpoints (/metrics, /healthz, /readyz);
//! - [`reload`]: what a configuration reload changes, and the hooks that apply it.
//! - [`tls`]: the certificates Sluice shows clients and how it checks the database's.

pub mod admin;
pub mod auth;
pub mod backend;
pub mod config;
pub mod context;
pub mod credentials;
pub mod errors;
pub mod frontend;
/// Client-supplied text made safe for logs (escaped, capped).
pub mod logsafe;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod reload;
pub mod server;
pub mod session;
pub mod sql;
pub mod stats;
pub mod tls;

pub use config::Config;
pub use reload::{ReloadHook, ReloadReport};
pub use server::{Proxy, ReloadHandle, ShutdownHandle, StartError};
pub use session::{PinReason, ResetReason};
pub use stats::{Snapshot, Stats};
