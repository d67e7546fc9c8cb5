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
use crate::backend::{Connector, Pool, Route, Topology};
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
    /// The reader endpoint (`reader_listen`), when on.
    reader_listener: Option<TcpListener>,
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
        let reader_listener = if config.reader_listen.is_empty() {
            None
        } else {
            Some(
                listen(&config.reader_listen, config.listen_backlog).map_err(|source| {
                    StartError::Bind {
                        address: config.reader_listen.clone(),
                        source,
                    }
                })?,
            )
        };
        let http_listener = listen_optional(&config.http_listen).await?;
        let admin_listener = listen_optional(&config.admin_listen).await?;
        let stats = Arc::new(Stats::default());
        let max_packet = u32::try_from(config.max_allowed_packet).unwrap_or(u32::MAX);
        let mut connectors = Vec::new();
        for address in config.backend.hosts() {
            let tls = backend_tls
                .for_address(&address)
                .map_err(|source| StartError::Tls {
                    setting: "backend.tls_server_name",
                    source,
                })?;
            connectors.push(Arc::new(
                Connector::new(
                    address,
                    config.backend.connect_timeout,
                    max_packet,
                    config.backend.max_prepared_statements_per_connection,
                    stats.clone(),
                )
                .with_tls(tls),
            ));
        }
        let (version, caps, collation) = match probe_any(&connectors).await {
            Some((version, caps)) => (version, caps, 45),
            None => {
                tracing::warn!(address = %config.backend.address,
                    "cannot reach the backend at start; announcing a default server version");
                (FALLBACK_VERSION.to_string(), OFFERED_CAPS, 45)
            }
        };
        let dialect = crate::sql::Dialect::from_server_version(&version);
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
        let topology = Topology::new(connectors, config.backend.max_replica_lag);
        topology.configure(&config.backend);
        let pool = Pool::new(
            &config.backend,
            topology,
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
            dialect,
            classify_buffered: std::sync::atomic::AtomicUsize::new(0),
            statement_texts: Default::default(),
            statement_budget: Default::default(),
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
            reader_listener,
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

    /// The reader endpoint's address, when `reader_listen` is set.
    pub fn reader_addr(&self) -> Option<SocketAddr> {
        self.reader_listener
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

    /// The shared context (live sessions, pool, counters), for inspection by tests.
    pub fn context(&self) -> Arc<Shared> {
        self.shared.clone()
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
            reader_listener,
            http_listener,
            admin_listener,
            shared,
            shutdown_tx,
            stopped_tx,
        } = self;
        shared.pool.spawn_maintenance();
        crate::backend::monitor::spawn(&shared.pool, stopped_tx.subscribe());
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
        spawn_login_reaper(&shared);
        shared.credentials.spawn_refresh(shutdown_tx.subscribe());
        if let Some(l) = reader_listener {
            let (shared, stop) = (shared.clone(), shutdown_tx.subscribe());
            tokio::spawn(accept_loop(l, shared, Route::Reader, stop));
        }
        let main = accept_loop(
            listener,
            shared.clone(),
            Route::Writer,
            shutdown_tx.subscribe(),
        );
        {
            let config = shared.config();
            tracing::info!(listen = %config.listen, backend = %config.backend.address,
                http = %config.http_listen, admin = %config.admin_listen,
                version = %shared.server_version, "sluice is accepting clients");
        }
        main.await;
        // Logins in progress end now: only logged-in sessions get the drain.
        shared.registry.expire_logins(Duration::ZERO);
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

/// Accepts clients on `listener` (whose sessions take `route`) until shutdown is requested;
/// the listener closes when this returns.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    route: Route,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    tokio::spawn(serve(socket, peer, shared.clone(), route));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop_requested(&mut shutdown) => return,
        }
    }
}

/// The version and capabilities of the first host that greets (no login), in the order of
/// `backend.address`.
async fn probe_any(connectors: &[Arc<Connector>]) -> Option<(String, CapabilityFlags)> {
    for c in connectors {
        match c.probe().await {
            Ok(found) => return Some(found),
            Err(e) => {
                tracing::warn!(address = %c.address, error = %e, "backend host did not greet")
            }
        }
    }
    None
}

/// How often logins are checked against `handshake_timeout`.
const LOGIN_REAPER_TICK: Duration = Duration::from_millis(100);

/// Ends logins that took longer than `handshake_timeout`, until the proxy stops: one timer
/// for every connection still logging in.
fn spawn_login_reaper(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let mut stopped = shared.stopped.clone();
    tokio::spawn(async move {
        let mut flood_memory = FloodMemory::default();
        let mut tick = tokio::time::interval(LOGIN_REAPER_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop_requested(&mut stopped) => return,
            }
            let Some(shared) = weak.upgrade() else { return };
            let limit = shared.config().handshake_timeout;
            shared.registry.expire_logins(limit);
            flood_memory.observe(shared.registry.len());
        }
    });
}

/// Gives memory back to the system once a flood of connections is gone: the allocator keeps
/// freed memory for reuse, which after thousands of short-lived connections would stay
/// resident long after them.
#[derive(Debug, Default)]
struct FloodMemory {
    /// The most sessions seen since memory was last given back.
    high: usize,
}

/// Sessions a burst must have reached before its end gives memory back.
const FLOOD_MIN: usize = 256;

impl FloodMemory {
    /// Notes the sessions live now; gives memory back once they fell to a quarter of a high
    /// mark above [`FLOOD_MIN`].
    fn observe(&mut self, sessions: usize) {
        self.high = self.high.max(sessions);
        if self.high >= FLOOD_MIN && sessions * 4 < self.high {
            release_free_memory();
            self.high = sessions;
        }
    }
}

/// Returns the allocator's free memory to the system (glibc only; elsewhere a no-op).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
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

async fn serve(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>, route: Route) {
    let stats = shared.stats.clone();
    stats.client_connections_total.fetch_add(1, Relaxed);
    let limit = shared.config().max_client_connections as u64;
    let mut admitted = stats
        .client_connections
        .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
        .is_ok();
    // At the limit, a connection that has not logged in yet (the oldest) makes room, so a
    // flood of stalled handshakes cannot keep real clients out. The count goes over the limit
    // for the moment the evicted one takes to end.
    if !admitted && shared.registry.evict_oldest_login() {
        stats.client_connections.fetch_add(1, Relaxed);
        admitted = true;
    }
    if !admitted {
        shared.metrics.setup_failed("too many connections");
        if let Some(suppressed) = shared.refusals.should_log() {
            tracing::warn!(%peer, max_client_connections = limit, refused_since_last_log = suppressed,
                "client refused: max_client_connections reached (ERR 1040)");
        }
        // Boxed: a rare path whose future would otherwise enlarge every client's task.
        Box::pin(crate::frontend::refuse(
            socket,
            &shared,
            ClientError::too_many_connections(limit as usize),
        ))
        .await;
        return;
    }
    let handle = shared.registry.register_on(peer, route);
    let id = handle.id;
    crate::frontend::run(socket, peer, shared.clone(), handle).await;
    shared.registry.unregister(id);
    stats.client_connections.fetch_sub(1, Relaxed);
}

#[cfg(test)]
mod tests {
    /// The size of the future a function returns, without calling it.
    fn future_size<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Each client's task holds its future for as long as the client is connected: until it
    /// speaks, only its socket, the greeting's offer and a kill signal; the login and the
    /// session are boxed once needed, so a flood of silent connections costs little.
    #[test]
    fn a_session_task_stays_small() {
        let size = future_size(super::serve as fn(_, _, _, _) -> _);
        assert!(
            size <= 768,
            "a client's task takes {size} bytes; box the future that grew it"
        );
    }
}
