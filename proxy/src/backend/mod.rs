//! Server connections (connect, log in, set up session tracking, reset) and the bounded pool
//! that lends them to client sessions.

mod conn;
mod pool;

pub use conn::{BackendConn, BackendError, BackendId, Connector, KEY_CAPS};
pub use pool::{BorrowError, Pool, PoolKey, PooledConn};
