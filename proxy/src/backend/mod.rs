//! Server connections (connect, log in, set up session tracking, reset) and the bounded pool
//! that lends them to client sessions.

mod conn;
pub(crate) mod login;
mod pool;
/// Server-side prepared statements cached per backend connection.
pub mod statements;

pub use conn::{BackendConn, BackendError, BackendId, Connector, KEY_CAPS};
pub use pool::{BorrowError, IdleConn, Pool, PoolKey, PooledConn, UserCounts};
