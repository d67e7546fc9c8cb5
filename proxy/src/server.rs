//! The listener: accepts clients, runs one task per client, enforces the client limit, and
//! drains gracefully. The state every task shares lives in `context`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::admin::health::Readiness;
use crate::auth::{ServerRsaKey, Sha2Cache};
use crate::backend::{Connector, Pool};
use crate::config::{Config, FullAuth};
use crate::context::{RefusalLog, Shared, stop_requested};
use crate::credentials::{Credentials, LoadError};
use crate::errors::ClientError;
use crate::metrics::Metrics;
use crate::protocol::CapabilityFlags;
use crate::registry::Registry;
use crate::reload::{ConfigSource, ReloadError, ReloadHook, ReloadReport};
use crate::stats::Stats;
use crate::tls::{BackendTls, ClientTls};

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

/// How often recorded histogram samples are folded into their buckets when nobody scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// After `shutdown_timeout`, how long killed sessions get to close before Sluice stops.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Why Sluice could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    /// A secret of `[secrets_manager] secret_ids` could not be read or used (the message names
    /// it and why, never its value), or IAM logins, RDS IAM tokens or database account lookups
    /// cannot work.
    #[error(transparent)]
    Credentials(#[from] LoadError),
    #[error("{setting}: {source}")]
    Tls {
        setting: &'static str,
        source: crate::tls::TlsError,
    },
    #[error("cannot make the RSA key for caching_sha2 full authentication: {0}")]
    RsaKey(crate::auth::AuthError),
}

/// A bound, not yet running proxy.
#[derive(Debug)]
pub struct Proxy {
    listener: TcpListener,
    http_listener: Option<TcpListener>,
    admin_listener: Option<TcpListener>,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    stopped_tx: watch::Sender<bool>,
}

/// Reloads a running proxy's configuration (SIGHUP) and registers reload hooks.
#[derive(Debug, Clone)]
pub struct ReloadHandle(Arc<Shared>);

impl ReloadHandle {
    /// Reads the configuration again from its source and applies it.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        self.0.reload()
    }

    /// Sets where [`ReloadHandle::reload`] (and RELOAD) read the configuration from.
    pub fn set_source(&self, source: ConfigSource) {
        self.0.set_config_source(source);
    }

    /// Applies `config` as a reload would.
    pub fn apply(&self, config: Config) -> ReloadReport {
        self.0.apply_config(config)
    }

    /// Registers a hook run on every reload (see [`ReloadHook`]). The client TLS module
    /// registers one for `tls.` so renewed certificates are read again.
    pub fn add_hook(&self, hook: ReloadHook) {
        self.0.add_reload_hook(hook);
    }
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
    /// Reads the users' credentials (every Secrets Manager secret), binds the listeners
    /// (clients, HTTP, admin console) and learns the backend's version (without logging in).
    pub async fn bind(config: Config) -> Result<Proxy, StartError> {
        let credentials = Arc::new(Credentials::load(&config).await?);
        let listener =
            listen(&config.listen, config.listen_backlog).map_err(|source| StartError::Bind {
                address: config.listen.clone(),
                source,
            })?;
        let tls = ClientTls::from_config(&config.tls).map_err(|source| StartError::Tls {
            setting: "tls",
            source,
        })?;
        let backend_tls =
            BackendTls::from_config(&config.backend).map_err(|source| StartError::Tls {
                setting: "backend.tls",
                source,
            })?;
        let rsa_key = match config.caching_sha2_full_auth {
            FullAuth::Never => None,
            FullAuth::FirstLogin => Some(ServerRsaKey::generate().map_err(StartError::RsaKey)?),
        };
        let http_listener = listen_optional(&config.http_listen).await?;
        let admin_listener = listen_optional(&config.admin_listen).await?;
        let stats = Arc::new(Stats::default());
        let max_packet = u32::try_from(config.max_allowed_packet).unwrap_or(u32::MAX);
        let connector = Connector::new(
            config.backend.address.clone(),
            config.backend.connect_timeout,
            max_packet,
            config.backend.max_prepared_statements_per_connection,
            stats.clone(),
        )
        .with_tls(backend_tls);
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
        if tls.is_some() {
            capabilities.insert(CapabilityFlags::CLIENT_SSL);
        }
        let pool = Pool::new(
            &config.backend,
            connector,
            credentials.clone(),
            stats.clone(),
        );
        let (shutdown_tx, shutdown) = watch::channel(false);
        let (stopped_tx, stopped) = watch::channel(false);
        let shared = Shared {
            config: ArcSwap::from_pointee(config),
            credentials,
            pool,
            stats,
            registry: Registry::default(),
            server_version,
            capabilities,
            collation,
            shutdown,
            tls,
            sha2_cache: Sha2Cache::default(),
            rsa_key,
            shutdown_tx: shutdown_tx.clone(),
            stopped,
            metrics: Metrics::new(),
            readiness: Readiness::default(),
            config_source: Mutex::new(None),
            reload_hooks: Mutex::new(Vec::new()),
            reload_lock: Mutex::new(()),
            known_schemas: Mutex::new(HashSet::new()),
            refusals: RefusalLog::new(),
        };
        if let Some(tls) = shared.tls.clone() {
            // New files or a changed mode apply to new connections; sessions keep theirs.
            shared.add_reload_hook(ReloadHook {
                name: "tls",
                keys: &["tls."],
                run: Box::new(move |config| {
                    tls.apply(&config.tls)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }),
            });
        }
        Ok(Proxy {
            listener,
            http_listener,
            admin_listener,
            shared: Arc::new(shared),
            shutdown_tx,
            stopped_tx,
        })
    }

    /// Where RELOAD and SIGHUP read the configuration from (the binary: its file).
    pub fn set_config_source(&self, source: ConfigSource) {
        self.shared.set_config_source(source);
    }

    /// A handle that reloads the configuration (SIGHUP) and registers reload hooks.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle(self.shared.clone())
    }

    /// The address of `/metrics`, `/healthz` and `/readyz`, unless turned off.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The address of the admin console, unless turned off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
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

    /// Accepts clients until shut down, then drains: no new clients, `/readyz` answers 503,
    /// idle sessions are closed with ERR 1053, open transactions may finish for up to
    /// `shutdown_timeout`, and the sessions left are closed.
    pub async fn run(self) {
        let Proxy {
            listener,
            http_listener,
            admin_listener,
            shared,
            shutdown_tx,
            stopped_tx,
        } = self;
        shared.pool.spawn_maintenance();
        if let Some(tls) = &shared.tls {
            tls.spawn_watch(shared.config().tls.reload_interval, shutdown_tx.subscribe());
        }
        if let Some(l) = http_listener {
            tokio::spawn(crate::admin::http::serve(l, shared.clone()));
        }
        if let Some(l) = admin_listener {
            tokio::spawn(crate::admin::console::serve(l, shared.clone()));
        }
        spawn_metrics_upkeep(&shared);
        shared.credentials.spawn_refresh(shutdown_tx.subscribe());
        let mut shutdown = shutdown_tx.subscribe();
        {
            let config = shared.config();
            tracing::info!(listen = %config.listen, backend = %config.backend.address,
                http = %config.http_listen, admin = %config.admin_listen,
                version = %shared.server_version, "sluice is accepting clients");
        }
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
        let limit = shared.config().shutdown_timeout;
        tracing::info!(
            sessions = shared.registry.len(),
            shutdown_timeout = %humantime::format_duration(limit),
            "draining: no new clients; idle sessions close, open transactions may finish"
        );
        if !shared.registry.wait_empty(limit).await {
            tracing::warn!(
                sessions = shared.registry.len(),
                "shutdown_timeout reached; closing the remaining sessions (their open transactions roll back)"
            );
            shared.registry.kill_all();
            shared.registry.wait_empty(KILL_GRACE).await;
        }
        shared.pool.close();
        let _ = stopped_tx.send(true);
        tracing::info!("sluice stopped");
    }
}

/// Folds histogram samples into buckets now and then, until the proxy stops.
fn spawn_metrics_upkeep(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let mut stopped = shared.stopped.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop_requested(&mut stopped) => return,
            }
            let Some(shared) = weak.upgrade() else { return };
            shared.metrics.upkeep();
        }
    });
}

/// Binds an optional listener (HTTP, admin console); an empty address turns it off.
async fn listen_optional(address: &str) -> Result<Option<TcpListener>, StartError> {
    if address.is_empty() {
        return Ok(None);
    }
    TcpListener::bind(address)
        .await
        .map(Some)
        .map_err(|source| StartError::Bind {
            address: address.to_string(),
            source,
        })
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

async fn serve(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let stats = shared.stats.clone();
    stats.client_connections_total.fetch_add(1, Relaxed);
    let limit = shared.config().max_client_connections as u64;
    let admitted = stats
        .client_connections
        .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
        .is_ok();
    if !admitted {
        shared.metrics.setup_failed("too many connections");
        if let Some(suppressed) = shared.refusals.should_log() {
            tracing::warn!(%peer, max_client_connections = limit, refused_since_last_log = suppressed,
                "client refused: max_client_connections reached (ERR 1040)");
        }
        crate::frontend::refuse(
            socket,
            &shared,
            ClientError::too_many_connections(limit as usize),
        )
        .await;
        return;
    }
    let handle = shared.registry.register(peer);
    let id = handle.id;
    crate::frontend::run(socket, peer, shared.clone(), handle).await;
    shared.registry.unregister(id);
    stats.client_connections.fetch_sub(1, Relaxed);
}

#[cfg(test)]
mod tests {
    /// The size of the future a function returns, without calling it.
    fn future_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Each client's task holds its session's future for as long as the client is connected,
    /// idle or not: the large login and command futures are boxed so that it stays small.
    #[test]
    fn a_session_task_stays_small() {
        let size = future_size(super::serve as fn(_, _, _) -> _);
        assert!(
            size <= 4096,
            "a client session's task takes {size} bytes; box the future that grew it"
        );
    }
}
