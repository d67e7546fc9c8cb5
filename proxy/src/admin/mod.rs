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

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::backend::login::{self, LoginError};
use crate::backend::{BackendConn, PoolKey, Route};
use crate::context::{Shared, stop_requested};
use crate::protocol::CapabilityFlags;

/// Logs in as `user` on a backend connection of its own, outside the pool (so a busy pool
/// cannot hold it up), through the pool's login path: every password Sluice knows for the user
/// is tried, since a rotation may be under way. Close it with [`close_side_connection`].
pub(crate) async fn side_connection(
    shared: &Shared,
    user: Arc<str>,
    deadline: tokio::time::Instant,
) -> Result<BackendConn, String> {
    let key = PoolKey {
        user,
        caps: CapabilityFlags::empty(),
        collation: shared.collation,
        route: Route::Writer,
    };
    login::open(
        shared.pool.connector(),
        &shared.credentials,
        &key,
        deadline,
        Duration::ZERO,
    )
    .await
    .map_err(|e| match e {
        LoginError::Refused(e) | LoginError::Failed(e) => e.to_string(),
        LoginError::UnknownUser => format!("user {} is no longer known", key.user),
    })
}

/// Says goodbye to the server on a [`side_connection`] and counts it closed.
pub(crate) fn close_side_connection(shared: &Shared, conn: BackendConn) {
    conn.stream.try_quit();
    drop(conn);
    shared.stats.backend_closed();
}

/// Accepts connections on `listener` until the proxy stops, serving at most `max` at once,
/// each on its own task with what `serve` returns for it. `what` names the listener in logs.
async fn accept_until_stopped<F, Fut>(
    listener: TcpListener,
    shared: &Shared,
    max: usize,
    what: &'static str,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut stopped = shared.stopped.clone();
    let permits = Arc::new(Semaphore::new(max));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop_requested(&mut stopped) => return,
        };
        match accepted {
            Ok((socket, peer)) => {
                let task = serve(socket, peer);
                tokio::spawn(async move {
                    task.await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
