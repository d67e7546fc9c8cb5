//! The listener: accepts clients, runs one task per client, and stops gracefully.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::backend::{BackendError, BorrowError, Connector, Pool, PoolKey};
use crate::config::Config;
use crate::credentials::{Credentials, SecretError};
use crate::errors::ClientError;
use crate::protocol::CapabilityFlags;
use crate::registry::Registry;
use crate::stats::Stats;

/// Capabilities Sluice offers clients (before removing what the backend lacks).
const OFFERED_CAPS: CapabilityFlags = CapabilityFlags::CLIENT_LONG_PASSWORD
    .union(CapabilityFlags::CLIENT_FOUND_ROWS)
    .union(CapabilityFlags::CLIENT_LONG_FLAG)
    .union(CapabilityFlags::CLIENT_CONNECT_WITH_DB)
    .union(CapabilityFlags::CLIENT_LOCAL_FILES)
    .union(CapabilityFlags::CLIENT_IGNORE_SPACE)
    .union(CapabilityFlags::CLIENT_PROTOCOL_41)
    .union(CapabilityFlags::CLIENT_INTERACTIVE)
    .union(CapabilityFlags::CLIENT_TRANSACTIONS)
    .union(CapabilityFlags::CLIENT_SECURE_CONNECTION)
    .union(CapabilityFlags::CLIENT_MULTI_STATEMENTS)
    .union(CapabilityFlags::CLIENT_MULTI_RESULTS)
    .union(CapabilityFlags::CLIENT_PS_MULTI_RESULTS)
    .union(CapabilityFlags::CLIENT_PLUGIN_AUTH)
    .union(CapabilityFlags::CLIENT_CONNECT_ATTRS)
    .union(CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA)
    .union(CapabilityFlags::CLIENT_DEPRECATE_EOF);

/// Version announced when none is configured and the backend cannot be asked at start.
const FALLBACK_VERSION: &str = "8.0.40";

/// Schemas remembered as valid per user before the cache is cleared.
const MAX_KNOWN_SCHEMAS: usize = 4096;

/// State every client task shares.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub credentials: Arc<Credentials>,
    pub pool: Pool,
    pub stats: Arc<Stats>,
    pub registry: Registry,
    /// Version string announced to clients.
    pub server_version: String,
    /// Capabilities offered to clients.
    pub capabilities: CapabilityFlags,
    /// Collation announced in the greeting.
    pub collation: u8,
    /// Flips to true when Sluice starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// (user, schema) pairs the backend accepted recently, so logins naming a schema need no
    /// round trip.
    known_schemas: Mutex<HashSet<(Arc<str>, String)>>,
}

impl Shared {
    /// Checks that `schema` exists and `key`'s user may use it, as the server would at login.
    pub async fn check_schema(&self, key: &PoolKey, schema: &str) -> Result<(), ClientError> {
        let entry = (key.user.clone(), schema.to_string());
        if self
            .known_schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&entry)
        {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.config.backend.borrow_timeout;
        let mut conn = self
            .pool
            .borrow(key, Some(schema), deadline)
            .await
            .map_err(|e| self.borrow_error(key, e))?;
        if conn.schema.as_deref() != Some(schema)
            && let Err(e) = conn.init_db(schema).await
        {
            return Err(match e {
                BackendError::Command { code, message, .. } => ClientError {
                    code,
                    sql_state: *b"42000",
                    message,
                },
                other => {
                    conn.broken = true;
                    ClientError::backend_lost(&other.to_string())
                }
            });
        }
        drop(conn);
        self.remember_schema(&key.user, schema);
        Ok(())
    }

    /// Records that `user` may use `schema`.
    pub fn remember_schema(&self, user: &Arc<str>, schema: &str) {
        let mut known = self.known_schemas.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_KNOWN_SCHEMAS {
            known.clear();
        }
        known.insert((user.clone(), schema.to_string()));
    }

    /// Forgets schemas (after one was dropped, say).
    pub fn forget_schemas(&self) {
        self.known_schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The client-facing error for a failed borrow, logged once here.
    pub fn borrow_error(&self, key: &PoolKey, e: BorrowError) -> ClientError {
        match e {
            BorrowError::Timeout {
                waited,
                cap,
                waiting,
                last_error,
            } => {
                tracing::warn!(
                    user = %key.user,
                    waited_ms = waited.as_millis() as u64,
                    cap,
                    waiting,
                    last_error = last_error.as_deref().unwrap_or(""),
                    "borrow timeout"
                );
                ClientError::borrow_timeout(waited, &key.user, cap, waiting, last_error.as_deref())
            }
            BorrowError::Login(e) => {
                tracing::error!(user = %key.user, error = %e, "the database refused Sluice's login");
                ClientError::backend_login(&key.user, &e.to_string())
            }
            BorrowError::UnknownUser(u) => {
                ClientError::backend_login(&u, "the user is no longer configured")
            }
            BorrowError::ShuttingDown => ClientError::shutting_down(),
        }
    }
}

/// Why Sluice could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    /// A secret of `[secrets_manager] secret_ids` could not be read or used; the message
    /// names it and why, never its value.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// A bound, not yet running proxy.
#[derive(Debug)]
pub struct Proxy {
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
}

/// Triggers a graceful stop of a running proxy.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    /// Stops accepting; sessions end after their current command, or their transaction.
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

impl Proxy {
    /// Reads the users' credentials (every Secrets Manager secret), binds the listener and
    /// learns the backend's version (without logging in).
    pub async fn bind(config: Config) -> Result<Proxy, StartError> {
        let credentials = Arc::new(Credentials::load(&config).await?);
        let listener =
            listen(&config.listen, config.listen_backlog).map_err(|source| StartError::Bind {
                address: config.listen.clone(),
                source,
            })?;
        let stats = Arc::new(Stats::default());
        let max_packet = u32::try_from(config.max_allowed_packet).unwrap_or(u32::MAX);
        let connector = Connector::new(
            config.backend.address.clone(),
            config.backend.connect_timeout,
            max_packet,
            config.backend.max_prepared_statements_per_connection,
            stats.clone(),
        );
        let (version, caps, collation) = match connector.probe().await {
            Ok((version, caps)) => (version, caps, 45),
            Err(e) => {
                tracing::warn!(address = %config.backend.address, error = %e,
                    "cannot reach the backend at start; announcing a default server version");
                (FALLBACK_VERSION.to_string(), OFFERED_CAPS, 45)
            }
        };
        let server_version = if config.server_version.is_empty() {
            format!("{version}-sluice")
        } else {
            config.server_version.clone()
        };
        let mut capabilities = OFFERED_CAPS;
        if !caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF) {
            capabilities.remove(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        }
        let pool = Pool::new(
            &config.backend,
            connector,
            credentials.clone(),
            stats.clone(),
        );
        let (shutdown_tx, shutdown) = watch::channel(false);
        let shared = Shared {
            config,
            credentials,
            pool,
            stats,
            registry: Registry::default(),
            server_version,
            capabilities,
            collation,
            shutdown,
            known_schemas: Mutex::new(HashSet::new()),
        };
        Ok(Proxy {
            listener,
            shared: Arc::new(shared),
            shutdown_tx,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// The pool, for inspection.
    pub fn pool(&self) -> Pool {
        self.shared.pool.clone()
    }

    /// A handle that stops the proxy.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown_tx.clone())
    }

    /// Accepts clients until shut down, then lets sessions finish (up to `shutdown_timeout`).
    pub async fn run(self) {
        let Proxy {
            listener,
            shared,
            shutdown_tx,
        } = self;
        shared.pool.spawn_maintenance();
        shared.credentials.spawn_refresh(shutdown_tx.subscribe());
        let mut shutdown = shutdown_tx.subscribe();
        tracing::info!(listen = %shared.config.listen, backend = %shared.config.backend.address,
            version = %shared.server_version, "sluice is accepting clients");
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let shared = shared.clone();
                        tokio::spawn(serve(socket, peer, shared));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stop_requested(&mut shutdown) => break,
            }
        }
        drop(listener);
        tracing::info!(
            sessions = shared.registry.len(),
            "shutting down: no new clients; letting sessions finish"
        );
        if !shared
            .registry
            .wait_empty(shared.config.shutdown_timeout)
            .await
        {
            tracing::warn!(
                sessions = shared.registry.len(),
                "shutdown_timeout reached; closing the remaining sessions"
            );
            shared.registry.kill_all();
            shared.registry.wait_empty(Duration::from_secs(2)).await;
        }
        shared.pool.close();
        tracing::info!("sluice stopped");
    }
}

/// Raises the soft limit on open files to the hard limit and returns it: every client is a
/// file descriptor, and the usual soft limit of 1024 is far too low for a proxy.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// Binds the client listener with a deep accept queue (the standard library's is 128).
fn listen(address: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = address.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an IP address and port",
        )
    })?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Completes once shutdown was requested (the watch's read guard is not kept).
pub(crate) async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

async fn serve(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let stats = shared.stats.clone();
    stats.client_connections.fetch_add(1, Relaxed);
    stats.client_connections_total.fetch_add(1, Relaxed);
    let handle = shared.registry.register();
    let id = handle.id;
    crate::frontend::run(socket, peer, shared.clone(), handle).await;
    shared.registry.unregister(id);
    stats.client_connections.fetch_sub(1, Relaxed);
}
