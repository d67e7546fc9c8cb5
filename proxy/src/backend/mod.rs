//! Server connections (connect, log in, set up session tracking, reset), the hosts behind
//! them (which one is the writer), the monitor that watches those hosts, and the bounded pool
//! that lends connections to client sessions.

pub(crate) mod budget;
mod conn;
pub(crate) mod login;
pub mod monitor;
mod pool;
/// Server-side prepared statements cached per backend connection.
pub mod statements;
pub mod topology;

pub use conn::{BackendConn, BackendError, BackendId, Connector, KEY_CAPS};
pub use pool::{BorrowError, IdleConn, Pool, PoolKey, PooledConn, UserCounts};
pub use topology::{HostId, Route, Topology};
