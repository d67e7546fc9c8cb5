//! Configuration: a TOML file, environment overrides for container use, defaults that match
//! RDS Proxy's, and validation that names the bad key.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything Sluice reads at start. Every key is documented in `proxy/sluice.example.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address clients connect to.
    pub listen: String,
    /// Length of the queue of connections not yet accepted (capped by the kernel's somaxconn).
    pub listen_backlog: u32,
    /// Version string announced to clients; empty means "the backend's, plus -sluice".
    pub server_version: String,
    /// How long a client may take to complete its login.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// The largest packet Sluice accepts from a client, in bytes.
    pub max_allowed_packet: usize,
    /// On SIGTERM, how long open transactions may take to finish before sessions are closed.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Runtime worker threads; 0 means one per CPU.
    pub worker_threads: usize,
    /// `pretty` for terminals, `json` for containers.
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `sluice=debug`.
    pub log_level: String,
    /// Address of the HTTP listener for /metrics, /healthz and /readyz; empty turns it off.
    pub http_listen: String,
    /// Address of the admin console (MySQL protocol); empty turns it off.
    pub admin_listen: String,
    /// Client sessions Sluice accepts at once; the next one gets ERR 1040.
    pub max_client_connections: usize,
    /// A client idle (between commands, outside a transaction) for this long is disconnected.
    #[serde(with = "duration")]
    pub idle_client_timeout: Duration,
    /// A client idle inside a transaction for this long has it rolled back and is closed;
    /// zero turns this off.
    #[serde(with = "duration")]
    pub idle_in_transaction_timeout: Duration,
    /// How long a client may take to send one whole command once it has started it.
    #[serde(with = "duration")]
    pub client_read_timeout: Duration,
    /// Commands up to this many bytes are read whole before a backend connection is borrowed.
    pub max_buffered_command: usize,
    /// Address of the reader endpoint (read-only sessions spread over replicas); empty: off.
    pub reader_listen: String,
    /// When caching_sha2_password clients must send their password in full.
    pub caching_sha2_full_auth: FullAuth,
    /// The admin console's own login.
    pub admin: AdminConfig,
    /// TLS between clients and Sluice.
    pub tls: TlsConfig,
    /// Users whose credentials come from AWS Secrets Manager.
    pub secrets_manager: SecretsManagerConfig,
    /// Clients logging in with their AWS IAM identity instead of a password.
    pub iam: IamConfig,
    /// Database users Sluice logs in as with RDS IAM authentication tokens.
    pub rds_iam: RdsIamConfig,
    /// Users Sluice does not know, looked up in the database's own accounts.
    pub database_accounts: DatabaseAccountsConfig,
    /// The database Sluice fronts and its connection pool.
    pub backend: BackendConfig,
    /// Database users clients may log in as (the static source, for local use).
    pub users: Vec<UserConfig>,
}

/// When Sluice asks caching_sha2_password clients for a full authentication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullAuth {
    /// Never: Sluice knows every password, so the fast path (a scramble) always suffices.
    #[default]
    Never,
    /// Like MySQL's server cache: a user's first login after start, or after a password
    /// change, sends the password in full (over TLS, or RSA-encrypted without it).
    FirstLogin,
}

/// The admin console's login (its own, not a database user's).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub username: String,
    /// Empty: the console refuses every login.
    pub password: Secret,
}

/// Client-side TLS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Whether clients may, or must, upgrade to TLS.
    pub mode: TlsMode,
    /// PEM certificate chain presented to clients.
    pub cert_file: String,
    /// PEM private key of that certificate.
    pub key_file: String,
    /// The certificate chain itself, in PEM, instead of `cert_file` (for containers that get
    /// it from a secret through the environment).
    pub cert_pem: Secret,
    /// The private key itself, in PEM, instead of `key_file`.
    pub key_pem: Secret,
    /// PEM CA bundle for mutual TLS: when set, every client must present a certificate that
    /// one of these CAs signed (needs `mode = "required"`). Empty: no client certificates.
    pub client_ca_file: String,
    /// How often the two files are checked for changes (a renewed certificate is picked up
    /// without a restart).
    #[serde(with = "duration")]
    pub reload_interval: Duration,
}

/// Whether clients may or must use TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS is not offered.
    #[default]
    Disabled,
    /// TLS is offered; plain clients are accepted too.
    Preferred,
    /// Clients that do not upgrade are refused with ERR 3159.
    Required,
}

/// AWS Secrets Manager as the source of database users (one RDS-format secret per user).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsManagerConfig {
    /// Secret ARNs or names; empty means Secrets Manager is not used.
    pub secret_ids: Vec<String>,
    /// How often every secret is read again.
    #[serde(with = "duration")]
    pub refresh_interval: Duration,
    /// After a rotation, how long clients may still log in with the previous password.
    #[serde(with = "duration")]
    pub rotation_window: Duration,
}

/// Clients that log in with AWS IAM: they send, as their password over TLS, a signed
/// `sts:GetCallerIdentity` request bound to this Sluice; STS says whose it is, and
/// `identities` map that ARN to a database user.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IamConfig {
    /// The name tokens must be bound to (their signed `x-sluice-audience` header); empty turns
    /// IAM logins off.
    pub audience: String,
    /// Where tokens are sent to be checked, `https://host[:port]`; empty means
    /// `https://sts.<sts_region>.amazonaws.com` (with the VPC interface endpoint's private DNS,
    /// that name reaches the endpoint). Tokens must be signed for this host.
    pub sts_endpoint: String,
    /// The region of STS; empty means the standard AWS environment's (`AWS_REGION`).
    pub sts_region: String,
    /// Tokens signed longer ago than this are refused (STS's own limit is 15 minutes).
    #[serde(with = "duration")]
    pub token_max_age: Duration,
    /// How long a token STS has verified is accepted again without asking STS.
    #[serde(with = "duration")]
    pub cache_ttl: Duration,
    /// Limit for one STS call; a login that hits it is refused as "cannot verify now".
    #[serde(with = "duration")]
    pub sts_timeout: Duration,
    /// Which AWS identities may log in as which database users.
    pub identities: Vec<IamIdentity>,
}

/// One mapping from AWS identities to a database user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IamIdentity {
    /// An IAM role or user ARN (`arn:aws:iam::123456789012:role/orders`); `*` matches any run
    /// of characters. Assumed-role sessions match as their role
    /// (`arn:aws:iam::ACCOUNT:role/NAME`, without the role's path).
    pub arn: String,
    /// The database user such a client logs in as (the user name it sends).
    pub database_user: String,
}

/// Logging in to the database with RDS IAM authentication tokens instead of passwords.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RdsIamConfig {
    /// Database users Sluice logs in as with a token made from its own AWS credentials.
    pub users: Vec<String>,
    /// The database's region; empty means the standard AWS environment's (`AWS_REGION`).
    pub region: String,
    /// The endpoint name every token is signed for; empty means each host of `backend.address`
    /// gets tokens signed for itself.
    pub hostname: String,
    /// The port tokens are signed for; 0 means the port in `backend.address`.
    pub port: u16,
    /// How often tokens are made anew (they are valid for 15 minutes).
    #[serde(with = "duration")]
    pub refresh_interval: Duration,
}

/// Users unknown to Sluice, looked up in the database (`mysql.user`) through a lookup account.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseAccountsConfig {
    /// Turns the lookup on.
    pub enabled: bool,
    /// A user Sluice knows (`[[users]]` or a secret) with `SELECT` on `mysql.user`.
    pub lookup_user: String,
    /// How long a looked-up account is used before it is read again (a failed login reads it
    /// again at once).
    #[serde(with = "duration")]
    pub cache_ttl: Duration,
}

/// TLS between Sluice and the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTlsMode {
    /// Never use TLS.
    Disabled,
    /// Use TLS when the server offers it, without checking its certificate.
    #[default]
    Preferred,
    /// Require TLS and a certificate signed by `tls_ca_file`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host Sluice connects to.
    VerifyIdentity,
}

/// What `backend.max_connections_per_user` bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UserCapScope {
    /// The connections this Sluice holds.
    #[default]
    Instance,
    /// Every connection the database shows for the user: all Sluice instances together.
    Database,
}

/// The backend servers and the bounded pool of connections to them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// `host:port` of the database, or several separated by commas (a writer and its
    /// replicas); each host is resolved again for every new connection.
    pub address: String,
    /// Hard cap on backend connections, all users together.
    pub max_connections: usize,
    /// Idle connections kept open per pool once it has been used.
    pub min_idle: usize,
    /// How long a command may wait for a backend connection before it fails with ERR 9501.
    #[serde(with = "duration")]
    pub borrow_timeout: Duration,
    /// Idle connections beyond `min_idle` are closed after this long.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Connections are closed (when idle) after this age.
    #[serde(with = "duration")]
    pub max_lifetime: Duration,
    /// Deadline for opening one backend connection, login included.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// A connection idle for longer than this is pinged before it is handed out.
    #[serde(with = "duration")]
    pub liveness_check_after: Duration,
    /// Prepared statements each backend connection keeps; the least recently used is closed
    /// on the server to make room.
    pub max_prepared_statements_per_connection: usize,
    /// Whether and how strictly backend connections use TLS.
    pub tls: BackendTlsMode,
    /// PEM bundle of the CAs that may sign the database's certificate (the RDS bundle).
    pub tls_ca_file: String,
    /// Name checked against the certificate under `verify-identity`; empty means the host of
    /// `address`.
    pub tls_server_name: String,
    /// How often the monitor checks each host (reachable, read-only, replication lag).
    #[serde(with = "duration")]
    pub monitor_interval: Duration,
    /// The user the monitor logs in as; empty: the first user Sluice knows.
    pub monitor_user: String,
    /// Its password, when it is not one of the users clients log in as; empty: the password
    /// Sluice knows for `monitor_user`.
    pub monitor_password: Secret,
    /// Replicas further behind than this are skipped by the reader endpoint.
    #[serde(with = "duration")]
    pub max_replica_lag: Duration,
    /// Backend connections one user may hold; 0: no cap beyond `max_connections`.
    pub max_connections_per_user: usize,
    /// Whether `max_connections_per_user` counts this Sluice's connections or the database's.
    pub per_user_scope: UserCapScope,
}

impl BackendConfig {
    /// The hosts of `address`, in the order given.
    pub fn hosts(&self) -> Vec<String> {
        self.address
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// A database user: the name and password clients log in with, which Sluice also uses to log
/// in to the backend.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub username: String,
    pub password: Secret,
    /// The plugin Sluice asks this user's clients to authenticate with.
    #[serde(default)]
    pub auth_plugin: AuthPluginName,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("username", &self.username)
            .field("password", &self.password)
            .field("auth_plugin", &self.auth_plugin)
            .finish()
    }
}

/// Client-side authentication plugins Sluice speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum AuthPluginName {
    #[default]
    #[serde(rename = "mysql_native_password")]
    MysqlNativePassword,
    #[serde(rename = "caching_sha2_password")]
    CachingSha2Password,
    /// MariaDB's `ed25519` (the client side is `client_ed25519`).
    #[serde(rename = "client_ed25519", alias = "ed25519")]
    Ed25519,
    /// The password (for Sluice: an IAM token) in clear, inside TLS. Not for `[[users]]`.
    #[serde(rename = "mysql_clear_password", skip_deserializing)]
    ClearPassword,
}

impl AuthPluginName {
    /// The plugin's protocol name (the client side's, as it goes in an auth switch).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthPluginName::MysqlNativePassword => "mysql_native_password",
            AuthPluginName::CachingSha2Password => "caching_sha2_password",
            AuthPluginName::Ed25519 => "client_ed25519",
            AuthPluginName::ClearPassword => "mysql_clear_password",
        }
    }
}

/// Log output style.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// A password: never printed, logged or serialized in clear.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The password itself, for computing scrambles.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:6033".into(),
            listen_backlog: 4096,
            server_version: String::new(),
            handshake_timeout: Duration::from_secs(10),
            max_allowed_packet: 64 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(30),
            worker_threads: 0,
            log_format: LogFormat::Pretty,
            log_level: "info".into(),
            http_listen: "127.0.0.1:9090".into(),
            admin_listen: "127.0.0.1:6032".into(),
            max_client_connections: 10_000,
            idle_client_timeout: Duration::from_secs(1800),
            idle_in_transaction_timeout: Duration::ZERO,
            client_read_timeout: Duration::from_secs(30),
            max_buffered_command: 256 * 1024,
            reader_listen: String::new(),
            caching_sha2_full_auth: FullAuth::Never,
            admin: AdminConfig::default(),
            tls: TlsConfig::default(),
            secrets_manager: SecretsManagerConfig::default(),
            iam: IamConfig::default(),
            rds_iam: RdsIamConfig::default(),
            database_accounts: DatabaseAccountsConfig::default(),
            backend: BackendConfig::default(),
            users: Vec::new(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            username: "admin".into(),
            password: Secret::default(),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            mode: TlsMode::Disabled,
            cert_file: String::new(),
            key_file: String::new(),
            cert_pem: Secret::default(),
            key_pem: Secret::default(),
            client_ca_file: String::new(),
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl Default for SecretsManagerConfig {
    fn default() -> Self {
        SecretsManagerConfig {
            secret_ids: Vec::new(),
            refresh_interval: Duration::from_secs(300),
            rotation_window: Duration::from_secs(600),
        }
    }
}

impl Default for IamConfig {
    fn default() -> Self {
        IamConfig {
            audience: String::new(),
            sts_endpoint: String::new(),
            sts_region: String::new(),
            token_max_age: Duration::from_secs(300),
            cache_ttl: Duration::from_secs(60),
            sts_timeout: Duration::from_secs(3),
            identities: Vec::new(),
        }
    }
}

impl Default for RdsIamConfig {
    fn default() -> Self {
        RdsIamConfig {
            users: Vec::new(),
            region: String::new(),
            hostname: String::new(),
            port: 0,
            refresh_interval: Duration::from_secs(300),
        }
    }
}

impl Default for DatabaseAccountsConfig {
    fn default() -> Self {
        DatabaseAccountsConfig {
            enabled: false,
            lookup_user: String::new(),
            cache_ttl: Duration::from_secs(30),
        }
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            address: "127.0.0.1:3306".into(),
            max_connections: 20,
            min_idle: 0,
            borrow_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(300),
            max_lifetime: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(5),
            liveness_check_after: Duration::from_secs(30),
            max_prepared_statements_per_connection: 256,
            tls: BackendTlsMode::Preferred,
            tls_ca_file: String::new(),
            tls_server_name: String::new(),
            monitor_interval: Duration::from_secs(1),
            monitor_user: String::new(),
            monitor_password: Secret::default(),
            max_replica_lag: Duration::from_secs(10),
            max_connections_per_user: 0,
            per_user_scope: UserCapScope::Instance,
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {reason}")]
    Env { var: &'static str, reason: String },
    #[error("`{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

/// More hosts than this in `backend.address` is a mistake (each one gets a monitor).
const MAX_BACKEND_HOSTS: usize = 16;

/// How an environment variable's text becomes a TOML value.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Integer,
    /// `true` or `false`.
    Bool,
    /// Comma-separated, into an array of strings.
    List,
    /// Comma-separated `ARN=database_user` pairs, into `[[iam.identities]]` tables.
    Identities,
}

/// Environment variables that override file values, for containers.
const ENV_OVERRIDES: &[(&str, &[&str], Kind)] = &[
    ("SLUICE_LISTEN", &["listen"], Kind::Text),
    ("SLUICE_LISTEN_BACKLOG", &["listen_backlog"], Kind::Integer),
    ("SLUICE_SERVER_VERSION", &["server_version"], Kind::Text),
    (
        "SLUICE_HANDSHAKE_TIMEOUT",
        &["handshake_timeout"],
        Kind::Text,
    ),
    (
        "SLUICE_MAX_ALLOWED_PACKET",
        &["max_allowed_packet"],
        Kind::Integer,
    ),
    ("SLUICE_SHUTDOWN_TIMEOUT", &["shutdown_timeout"], Kind::Text),
    ("SLUICE_WORKER_THREADS", &["worker_threads"], Kind::Integer),
    ("SLUICE_LOG_FORMAT", &["log_format"], Kind::Text),
    ("SLUICE_LOG_LEVEL", &["log_level"], Kind::Text),
    (
        "SLUICE_BACKEND_ADDRESS",
        &["backend", "address"],
        Kind::Text,
    ),
    (
        "SLUICE_BACKEND_MAX_CONNECTIONS",
        &["backend", "max_connections"],
        Kind::Integer,
    ),
    (
        "SLUICE_BACKEND_MIN_IDLE",
        &["backend", "min_idle"],
        Kind::Integer,
    ),
    (
        "SLUICE_BACKEND_BORROW_TIMEOUT",
        &["backend", "borrow_timeout"],
        Kind::Text,
    ),
    (
        "SLUICE_BACKEND_IDLE_TIMEOUT",
        &["backend", "idle_timeout"],
        Kind::Text,
    ),
    (
        "SLUICE_BACKEND_MAX_LIFETIME",
        &["backend", "max_lifetime"],
        Kind::Text,
    ),
    (
        "SLUICE_BACKEND_CONNECT_TIMEOUT",
        &["backend", "connect_timeout"],
        Kind::Text,
    ),
    (
        "SLUICE_BACKEND_LIVENESS_CHECK_AFTER",
        &["backend", "liveness_check_after"],
        Kind::Text,
    ),
    (
        "SLUICE_BACKEND_MAX_PREPARED_STATEMENTS_PER_CONNECTION",
        &["backend", "max_prepared_statements_per_connection"],
        Kind::Integer,
    ),
    ("SLUICE_BACKEND_TLS", &["backend", "tls"], Kind::Text),
    (
        "SLUICE_BACKEND_TLS_CA_FILE",
        &["backend", "tls_ca_file"],
        Kind::Text,
    ),
    (
        "SLUICE_BACKEND_TLS_SERVER_NAME",
        &["backend", "tls_server_name"],
        Kind::Text,
    ),
    (
        "SLUICE_BACKEND_MONITOR_INTERVAL",
        &["backend", "monitor_interval"],
        Kind::Text,
    ),
    (
        "SLUICE_BACKEND_MONITOR_USER",
        &["backend", "monitor_user"],
        Kind::Text,
    ),
    (
        "SLUICE_BACKEND_MONITOR_PASSWORD",
        &["backend", "monitor_password"],
        Kind::Text,
    ),
    (
        "SLUICE_BACKEND_MAX_REPLICA_LAG",
        &["backend", "max_replica_lag"],
        Kind::Text,
    ),
    (
        "SLUICE_BACKEND_MAX_CONNECTIONS_PER_USER",
        &["backend", "max_connections_per_user"],
        Kind::Integer,
    ),
    (
        "SLUICE_BACKEND_PER_USER_SCOPE",
        &["backend", "per_user_scope"],
        Kind::Text,
    ),
    ("SLUICE_READER_LISTEN", &["reader_listen"], Kind::Text),
    (
        "SLUICE_IDLE_IN_TRANSACTION_TIMEOUT",
        &["idle_in_transaction_timeout"],
        Kind::Text,
    ),
    (
        "SLUICE_CLIENT_READ_TIMEOUT",
        &["client_read_timeout"],
        Kind::Text,
    ),
    (
        "SLUICE_MAX_BUFFERED_COMMAND",
        &["max_buffered_command"],
        Kind::Integer,
    ),
    ("SLUICE_HTTP_LISTEN", &["http_listen"], Kind::Text),
    ("SLUICE_ADMIN_LISTEN", &["admin_listen"], Kind::Text),
    (
        "SLUICE_MAX_CLIENT_CONNECTIONS",
        &["max_client_connections"],
        Kind::Integer,
    ),
    (
        "SLUICE_IDLE_CLIENT_TIMEOUT",
        &["idle_client_timeout"],
        Kind::Text,
    ),
    (
        "SLUICE_CACHING_SHA2_FULL_AUTH",
        &["caching_sha2_full_auth"],
        Kind::Text,
    ),
    ("SLUICE_ADMIN_USERNAME", &["admin", "username"], Kind::Text),
    ("SLUICE_ADMIN_PASSWORD", &["admin", "password"], Kind::Text),
    ("SLUICE_TLS_MODE", &["tls", "mode"], Kind::Text),
    ("SLUICE_TLS_CERT_FILE", &["tls", "cert_file"], Kind::Text),
    ("SLUICE_TLS_KEY_FILE", &["tls", "key_file"], Kind::Text),
    ("SLUICE_TLS_CERT_PEM", &["tls", "cert_pem"], Kind::Text),
    ("SLUICE_TLS_KEY_PEM", &["tls", "key_pem"], Kind::Text),
    (
        "SLUICE_TLS_CLIENT_CA_FILE",
        &["tls", "client_ca_file"],
        Kind::Text,
    ),
    (
        "SLUICE_SECRETS_MANAGER_SECRET_IDS",
        &["secrets_manager", "secret_ids"],
        Kind::List,
    ),
    (
        "SLUICE_SECRETS_MANAGER_REFRESH_INTERVAL",
        &["secrets_manager", "refresh_interval"],
        Kind::Text,
    ),
    (
        "SLUICE_SECRETS_MANAGER_ROTATION_WINDOW",
        &["secrets_manager", "rotation_window"],
        Kind::Text,
    ),
    ("SLUICE_IAM_AUDIENCE", &["iam", "audience"], Kind::Text),
    (
        "SLUICE_IAM_STS_ENDPOINT",
        &["iam", "sts_endpoint"],
        Kind::Text,
    ),
    ("SLUICE_IAM_STS_REGION", &["iam", "sts_region"], Kind::Text),
    (
        "SLUICE_IAM_IDENTITIES",
        &["iam", "identities"],
        Kind::Identities,
    ),
    ("SLUICE_RDS_IAM_USERS", &["rds_iam", "users"], Kind::List),
    ("SLUICE_RDS_IAM_REGION", &["rds_iam", "region"], Kind::Text),
    (
        "SLUICE_RDS_IAM_HOSTNAME",
        &["rds_iam", "hostname"],
        Kind::Text,
    ),
    ("SLUICE_RDS_IAM_PORT", &["rds_iam", "port"], Kind::Integer),
    (
        "SLUICE_DATABASE_ACCOUNTS_ENABLED",
        &["database_accounts", "enabled"],
        Kind::Bool,
    ),
    (
        "SLUICE_DATABASE_ACCOUNTS_LOOKUP_USER",
        &["database_accounts", "lookup_user"],
        Kind::Text,
    ),
];

/// The environment variables [`Config::load`] reads, for documentation and `--help`.
pub fn env_override_names() -> impl Iterator<Item = &'static str> {
    ENV_OVERRIDES.iter().map(|(var, _, _)| *var)
}

impl Config {
    /// Reads `path`, applies environment overrides from `env`, and validates.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string(), env)
    }

    /// Parses TOML text, applies environment overrides from `env`, and validates.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let parse_err = |e: &dyn fmt::Display| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| parse_err(&e))?;
        for &(var, path, kind) in ENV_OVERRIDES {
            let Some(raw) = env(var) else { continue };
            let value = match kind {
                Kind::Text => toml::Value::String(raw),
                Kind::Integer => {
                    toml::Value::Integer(raw.trim().parse().map_err(|_| ConfigError::Env {
                        var,
                        reason: format!("expected an integer, got {raw:?}"),
                    })?)
                }
                Kind::Bool => match raw.trim() {
                    "true" | "1" => toml::Value::Boolean(true),
                    "false" | "0" => toml::Value::Boolean(false),
                    _ => {
                        return Err(ConfigError::Env {
                            var,
                            reason: format!("expected true or false, got {raw:?}"),
                        });
                    }
                },
                Kind::List => toml::Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_string()))
                        .collect(),
                ),
                Kind::Identities => identities_from_env(var, &raw)?,
            };
            set_path(&mut table, path, value);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| parse_err(&e))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| {
            Err(ConfigError::Invalid {
                key: key.to_string(),
                reason: reason.to_string(),
            })
        };
        if self.listen.parse::<SocketAddr>().is_err() {
            return invalid(
                "listen",
                "must be an IP address and port, such as 127.0.0.1:6033",
            );
        }
        let hosts = self.backend.hosts();
        if hosts.is_empty() || hosts.len() > MAX_BACKEND_HOSTS {
            return invalid(
                "backend.address",
                "must be host:port, or up to 16 of them separated by commas, such as \
                 db-a.internal:3306,db-b.internal:3306",
            );
        }
        for host in &hosts {
            match host.rsplit_once(':') {
                Some((name, port)) if !name.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "backend.address".into(),
                        reason: format!("{host:?} must be host:port, such as db.internal:3306"),
                    });
                }
            }
        }
        if !self.backend.monitor_password.expose().is_empty()
            && self.backend.monitor_user.is_empty()
        {
            return invalid(
                "backend.monitor_password",
                "needs backend.monitor_user (whose password it is)",
            );
        }
        if self.backend.monitor_interval < Duration::from_millis(100) {
            return invalid("backend.monitor_interval", "must be at least 100ms");
        }
        if self.client_read_timeout.is_zero() {
            return invalid("client_read_timeout", "must be longer than zero");
        }
        if !(1024..=self.max_allowed_packet.max(1024)).contains(&self.max_buffered_command) {
            return invalid(
                "max_buffered_command",
                "must be between 1024 bytes and max_allowed_packet",
            );
        }
        if !self.reader_listen.is_empty() && self.reader_listen.parse::<SocketAddr>().is_err() {
            return invalid(
                "reader_listen",
                "must be an IP address and port, or empty to turn it off",
            );
        }
        if self.backend.max_connections_per_user > self.backend.max_connections {
            return invalid(
                "backend.max_connections_per_user",
                "cannot exceed backend.max_connections",
            );
        }
        if self.backend.per_user_scope == UserCapScope::Database
            && self.backend.max_connections_per_user == 0
        {
            return invalid(
                "backend.per_user_scope",
                "\"database\" needs backend.max_connections_per_user (the budget)",
            );
        }
        if self.backend.max_connections == 0 {
            return invalid("backend.max_connections", "must be at least 1");
        }
        if self.backend.max_prepared_statements_per_connection == 0 {
            return invalid(
                "backend.max_prepared_statements_per_connection",
                "must be at least 1",
            );
        }
        if self.backend.min_idle > self.backend.max_connections {
            return invalid("backend.min_idle", "cannot exceed backend.max_connections");
        }
        for (key, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("backend.borrow_timeout", self.backend.borrow_timeout),
            ("backend.idle_timeout", self.backend.idle_timeout),
            ("backend.max_lifetime", self.backend.max_lifetime),
            ("backend.connect_timeout", self.backend.connect_timeout),
        ] {
            if d.is_zero() {
                return invalid(key, "must be longer than zero");
            }
        }
        if !(1024..=1 << 30).contains(&self.max_allowed_packet) {
            return invalid(
                "max_allowed_packet",
                "must be between 1024 and 1073741824 bytes",
            );
        }
        for (key, addr) in [
            ("http_listen", &self.http_listen),
            ("admin_listen", &self.admin_listen),
        ] {
            if !addr.is_empty() && addr.parse::<SocketAddr>().is_err() {
                return invalid(
                    key,
                    "must be an IP address and port, or empty to turn it off",
                );
            }
        }
        if self.max_client_connections == 0 {
            return invalid("max_client_connections", "must be at least 1");
        }
        if self.idle_client_timeout.is_zero() {
            return invalid("idle_client_timeout", "must be longer than zero");
        }
        if self.admin.username.is_empty() {
            return invalid("admin.username", "must not be empty");
        }
        if self.tls.mode != TlsMode::Disabled
            && ((self.tls.cert_file.is_empty() && self.tls.cert_pem.expose().is_empty())
                || (self.tls.key_file.is_empty() && self.tls.key_pem.expose().is_empty()))
        {
            return invalid(
                "tls.cert_file",
                "tls.mode preferred or required needs tls.cert_file and tls.key_file (or \
                 tls.cert_pem and tls.key_pem)",
            );
        }
        if !self.tls.client_ca_file.is_empty() && self.tls.mode != TlsMode::Required {
            // Under `preferred` a plain-text client would skip the certificate check.
            return invalid(
                "tls.client_ca_file",
                "client certificates (mutual TLS) need tls.mode = \"required\"",
            );
        }
        if self.tls.reload_interval.is_zero() {
            return invalid("tls.reload_interval", "must be longer than zero");
        }
        if matches!(
            self.backend.tls,
            BackendTlsMode::VerifyCa | BackendTlsMode::VerifyIdentity
        ) && self.backend.tls_ca_file.is_empty()
        {
            return invalid(
                "backend.tls_ca_file",
                "backend.tls verify-ca and verify-identity need a CA bundle (for RDS: \
                 https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem)",
            );
        }
        let sm = &self.secrets_manager;
        if sm.refresh_interval < Duration::from_secs(1) {
            return invalid("secrets_manager.refresh_interval", "must be at least 1s");
        }
        if sm.rotation_window > Duration::from_secs(24 * 3600) {
            return invalid("secrets_manager.rotation_window", "must be at most 24h");
        }
        if sm.secret_ids.iter().any(|id| id.trim().is_empty()) {
            return invalid("secrets_manager.secret_ids", "contains an empty id");
        }
        self.validate_identity()?;
        if self.users.is_empty()
            && sm.secret_ids.is_empty()
            && self.iam.identities.is_empty()
            && !self.database_accounts.enabled
        {
            return invalid(
                "users",
                "no users configured: add a [[users]] table, [secrets_manager] secret_ids, \
                 [[iam.identities]] or [database_accounts]",
            );
        }
        let mut seen = HashSet::new();
        for u in &self.users {
            if !valid_user_name(&u.username) {
                return invalid("users.username", "must be 1 to 80 characters without NUL");
            }
            if !seen.insert(u.username.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "users.username".into(),
                    reason: format!("user {:?} is listed twice", u.username),
                });
            }
        }
        Ok(())
    }

    /// Checks `[iam]`, `[rds_iam]` and `[database_accounts]`.
    fn validate_identity(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| {
            Err(ConfigError::Invalid {
                key: key.to_string(),
                reason,
            })
        };
        let iam = &self.iam;
        if !iam.identities.is_empty() || !iam.audience.is_empty() {
            if iam.audience.trim().is_empty()
                || !iam.audience.bytes().all(|b| (0x21..0x7F).contains(&b))
            {
                return invalid(
                    "iam.audience",
                    "IAM logins need an audience: a name for this Sluice, printable and \
                     without spaces, that clients sign their tokens for"
                        .into(),
                );
            }
            if iam.identities.is_empty() {
                return invalid(
                    "iam.identities",
                    "iam.audience is set but no [[iam.identities]] maps an AWS identity to a \
                     database user"
                        .into(),
                );
            }
            if self.tls.mode == TlsMode::Disabled {
                return invalid(
                    "iam.audience",
                    "IAM tokens travel as a clear-text password, so IAM logins need client TLS \
                     (tls.mode preferred or required)"
                        .into(),
                );
            }
            if !iam.sts_endpoint.is_empty() && sts_authority(&iam.sts_endpoint).is_none() {
                return invalid(
                    "iam.sts_endpoint",
                    format!(
                        "{:?} must be https://host[:port] (or http:// for a local stand-in), \
                         without a path",
                        iam.sts_endpoint
                    ),
                );
            }
            if iam.token_max_age.is_zero() || iam.token_max_age > Duration::from_secs(900) {
                return invalid(
                    "iam.token_max_age",
                    "must be longer than zero and at most 15m (STS's own limit)".into(),
                );
            }
            if iam.sts_timeout.is_zero() {
                return invalid("iam.sts_timeout", "must be longer than zero".into());
            }
            for id in &iam.identities {
                if !id.arn.starts_with("arn:") || id.arn.len() > 2048 {
                    return invalid(
                        "iam.identities.arn",
                        format!(
                            "{:?} is not an ARN (arn:aws:iam::123456789012:role/name)",
                            id.arn
                        ),
                    );
                }
                if !valid_user_name(&id.database_user) {
                    return invalid(
                        "iam.identities.database_user",
                        "must be 1 to 80 characters without NUL".into(),
                    );
                }
            }
        }
        let rds = &self.rds_iam;
        if !rds.users.is_empty() {
            if !matches!(
                self.backend.tls,
                BackendTlsMode::VerifyCa | BackendTlsMode::VerifyIdentity
            ) {
                return invalid(
                    "rds_iam.users",
                    "RDS IAM tokens are sent as a clear-text password, so backend.tls must be \
                     verify-ca or verify-identity (with the RDS CA bundle)"
                        .into(),
                );
            }
            if let Some(u) = rds.users.iter().find(|u| !valid_user_name(u)) {
                return invalid(
                    "rds_iam.users",
                    format!("{u:?} must be 1 to 80 characters without NUL"),
                );
            }
            if rds.refresh_interval < Duration::from_secs(1)
                || rds.refresh_interval > Duration::from_secs(600)
            {
                return invalid(
                    "rds_iam.refresh_interval",
                    "must be between 1s and 10m (tokens are valid for 15 minutes)".into(),
                );
            }
        }
        let accounts = &self.database_accounts;
        if accounts.enabled && !valid_user_name(&accounts.lookup_user) {
            return invalid(
                "database_accounts.lookup_user",
                "the lookup needs an account: name a user from [[users]] or a secret that may \
                 SELECT from mysql.user"
                    .into(),
            );
        }
        Ok(())
    }

    /// The configured user called `name`.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.username == name)
    }
}

/// A user name MySQL can hold: 1 to 80 bytes, no NUL.
fn valid_user_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('\0') && name.len() <= 80
}

/// `host[:port]` of an `http(s)://host[:port]` URL without a path; `None` for anything else.
pub fn sts_authority(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    ok.then_some(rest)
}

/// `arn=user,arn=user` into an array of `{arn, database_user}` tables.
fn identities_from_env(var: &'static str, raw: &str) -> Result<toml::Value, ConfigError> {
    let mut out = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((arn, user)) = pair.rsplit_once('=') else {
            return Err(ConfigError::Env {
                var,
                reason: format!("{pair:?} is not ARN=database_user"),
            });
        };
        let mut t = toml::Table::new();
        t.insert("arn".into(), toml::Value::String(arn.trim().to_string()));
        t.insert(
            "database_user".into(),
            toml::Value::String(user.trim().to_string()),
        );
        out.push(toml::Value::Table(t));
    }
    Ok(toml::Value::Array(out))
}

fn set_path(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut t = table;
    for p in parents {
        let entry = t
            .entry((*p).to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let Some(next) = entry.as_table_mut() else {
            return;
        };
        t = next;
    }
    t.insert((*last).to_string(), value);
}

/// Durations written as "5s", "2m", "1h", "250ms".
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write it like \"5s\", \"2m\" or \"1h\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        listen = "127.0.0.1:6033"
        [backend]
        address = "127.0.0.1:3306"
        max_connections = 20
        min_idle = 0
        borrow_timeout = "120s"
        idle_timeout = "5m"
        max_lifetime = "1h"
        [[users]]
        username = "app"
        password = "secret"
    "#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn parses_the_documented_keys() {
        let c = Config::from_toml(MINIMAL, "test", no_env).unwrap();
        assert_eq!(c.backend.borrow_timeout, Duration::from_secs(120));
        assert_eq!(c.backend.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.users[0].password.expose(), "secret");
        assert_eq!(c.users[0].auth_plugin, AuthPluginName::MysqlNativePassword);
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../sluice.example.toml");
        Config::from_toml(text, "sluice.example.toml", no_env).unwrap();
    }

    #[test]
    fn the_example_file_names_every_environment_variable() {
        let text = include_str!("../sluice.example.toml");
        let missing: Vec<&str> = ENV_OVERRIDES
            .iter()
            .map(|(var, _, _)| *var)
            .filter(|var| !text.contains(var))
            .collect();
        assert!(
            missing.is_empty(),
            "not in sluice.example.toml: {missing:?}"
        );
    }

    #[test]
    fn environment_overrides_file_values() {
        let env = |k: &str| match k {
            "SLUICE_BACKEND_MAX_CONNECTIONS" => Some("7".to_string()),
            "SLUICE_BACKEND_BORROW_TIMEOUT" => Some("3s".to_string()),
            "SLUICE_LISTEN" => Some("0.0.0.0:3306".to_string()),
            _ => None,
        };
        let c = Config::from_toml(MINIMAL, "test", env).unwrap();
        assert_eq!(c.backend.max_connections, 7);
        assert_eq!(c.backend.borrow_timeout, Duration::from_secs(3));
        assert_eq!(c.listen, "0.0.0.0:3306");

        let bad = |k: &str| (k == "SLUICE_BACKEND_MAX_CONNECTIONS").then(|| "many".to_string());
        let err = Config::from_toml(MINIMAL, "test", bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("SLUICE_BACKEND_MAX_CONNECTIONS"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "max_connections = 20",
                "max_connections = 0",
                "backend.max_connections",
            ),
            ("min_idle = 0", "min_idle = 50", "backend.min_idle"),
            (
                "borrow_timeout = \"120s\"",
                "borrow_timeout = \"soon\"",
                "invalid duration",
            ),
            (
                "listen = \"127.0.0.1:6033\"",
                "listen = \"nowhere\"",
                "listen",
            ),
            (
                "username = \"app\"",
                "username = \"app\"\nfoo = 1",
                "unknown field",
            ),
        ];
        for (from, to, expect) in cases {
            let text = MINIMAL.replace(from, to);
            let err = Config::from_toml(&text, "test", no_env)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{to}: {err}");
        }
    }

    #[test]
    fn new_sections_parse_and_validate() {
        let env = |k: &str| match k {
            "SLUICE_SECRETS_MANAGER_SECRET_IDS" => Some(" app-db, arn:aws:x ,".to_string()),
            "SLUICE_BACKEND_TLS" => Some("verify-identity".to_string()),
            "SLUICE_BACKEND_TLS_CA_FILE" => Some("/etc/sluice/rds-ca.pem".to_string()),
            "SLUICE_HTTP_LISTEN" => Some("0.0.0.0:9090".to_string()),
            _ => None,
        };
        let c = Config::from_toml("", "test", env).unwrap();
        assert_eq!(c.secrets_manager.secret_ids, ["app-db", "arn:aws:x"]);
        assert_eq!(c.backend.tls, BackendTlsMode::VerifyIdentity);
        assert_eq!(c.http_listen, "0.0.0.0:9090");
        assert!(c.users.is_empty());

        let err = Config::from_toml("", "test", no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("secret_ids"), "{err}");
        let tls = format!("{MINIMAL}\n[tls]\nmode = \"required\"\n");
        let err = Config::from_toml(&tls, "test", no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.cert_file"), "{err}");
        let mtls = format!(
            "{MINIMAL}\n[tls]\nmode = \"preferred\"\ncert_file = \"c\"\nkey_file = \"k\"\nclient_ca_file = \"ca\"\n"
        );
        let err = Config::from_toml(&mtls, "test", no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.client_ca_file"), "{err}");
        let verify = MINIMAL.replace("min_idle = 0", "min_idle = 0\ntls = \"verify-ca\"");
        let err = Config::from_toml(&verify, "test", no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("backend.tls_ca_file"), "{err}");
    }

    #[test]
    fn identity_sections_validate_and_come_from_the_environment() {
        let tls = "[tls]\nmode = \"required\"\ncert_pem = \"c\"\nkey_pem = \"k\"\n";
        let env = |k: &str| match k {
            "SLUICE_IAM_AUDIENCE" => Some("sluice-prod".to_string()),
            "SLUICE_IAM_IDENTITIES" => {
                Some("arn:aws:iam::1:role/a-*=app, arn:aws:iam::1:user/b=report".to_string())
            }
            "SLUICE_DATABASE_ACCOUNTS_ENABLED" => Some("true".to_string()),
            "SLUICE_DATABASE_ACCOUNTS_LOOKUP_USER" => Some("lookup".to_string()),
            _ => None,
        };
        let c = Config::from_toml(tls, "test", env).unwrap();
        assert_eq!(c.iam.audience, "sluice-prod");
        assert_eq!(
            c.iam.identities,
            [
                IamIdentity {
                    arn: "arn:aws:iam::1:role/a-*".into(),
                    database_user: "app".into()
                },
                IamIdentity {
                    arn: "arn:aws:iam::1:user/b".into(),
                    database_user: "report".into()
                },
            ]
        );
        assert!(c.database_accounts.enabled);
        assert!(!format!("{c:?}").contains("\"c\""), "PEM stays hidden");

        let bad_env = |k: &str| (k == "SLUICE_IAM_IDENTITIES").then(|| "no-equals".to_string());
        let err = Config::from_toml(MINIMAL, "test", bad_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ARN=database_user"), "{err}");
        let bad_bool =
            |k: &str| (k == "SLUICE_DATABASE_ACCOUNTS_ENABLED").then(|| "yes".to_string());
        let err = Config::from_toml(MINIMAL, "test", bad_bool)
            .unwrap_err()
            .to_string();
        assert!(err.contains("true or false"), "{err}");

        let iam = |extra: &str| {
            format!(
                "{MINIMAL}\n[iam]\naudience = \"a\"\n{extra}\n[[iam.identities]]\narn = \"arn:aws:iam::1:role/r\"\ndatabase_user = \"app\"\n"
            )
        };
        for (text, key) in [
            (iam(""), "iam.audience"),
            (
                format!("{}\n{tls}", iam("sts_endpoint = \"sts.example.com\"")),
                "iam.sts_endpoint",
            ),
            (
                format!("{}\n{tls}", iam("token_max_age = \"1h\"")),
                "iam.token_max_age",
            ),
            (
                format!("{MINIMAL}\n[rds_iam]\nusers = [\"app\"]\n"),
                "rds_iam.users",
            ),
            (
                format!("{MINIMAL}\n[database_accounts]\nenabled = true\n"),
                "database_accounts.lookup_user",
            ),
        ] {
            let err = Config::from_toml(&text, "test", no_env)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        let ok = format!("{}\n{tls}", iam("sts_endpoint = \"http://127.0.0.1:5000\""));
        Config::from_toml(&ok, "test", no_env).unwrap();
        let verified = MINIMAL.replace(
            "min_idle = 0",
            "min_idle = 0\ntls = \"verify-ca\"\ntls_ca_file = \"ca.pem\"",
        );
        Config::from_toml(
            &format!("{verified}\n[rds_iam]\nusers = [\"app\"]\n"),
            "test",
            no_env,
        )
        .unwrap();
        assert_eq!(
            sts_authority("https://sts.eu-west-1.amazonaws.com/"),
            Some("sts.eu-west-1.amazonaws.com")
        );
        assert_eq!(sts_authority("ftp://x"), None);
        assert_eq!(sts_authority("https://h/path"), None);
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config::from_toml(MINIMAL, "test", no_env).unwrap();
        let shown = format!("{c:?} {}", toml::to_string(&c).unwrap());
        assert!(!shown.contains("\"secret\""), "{shown}");
        assert!(shown.contains("\"***\""), "{shown}");
    }
}
