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

use crate::server::{Shared, stop_requested};

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
