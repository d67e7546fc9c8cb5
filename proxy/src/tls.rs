//! TLS settings turned into rustls configurations: the certificate Sluice shows clients
//! (reloaded when its files change) and how Sluice checks the database's certificate.
//!
//! aws-lc-rs is the only crypto provider; it is named explicitly, so nothing depends on a
//! process-wide default.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{
    ProducesTickets, ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier,
};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use tokio::sync::watch;

use crate::config::{BackendConfig, BackendTlsMode, TlsConfig, TlsMode};

/// TLS sessions remembered for resumption (TLS 1.2 ids and TLS 1.3 stateful resumption).
const SESSION_CACHE: usize = 16 * 1024;

/// Why TLS could not be set up. Names the file, never a key's bytes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM {what}")]
    Empty { what: &'static str, path: String },
    #[error("{path}: not a PEM {what} ({reason})")]
    Pem {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("backend.tls_server_name / backend.address: {0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("cannot build a certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("turning client TLS on or off needs a restart")]
    NeedsRestart,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(what: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_string(),
        source,
    })
}

fn parse_certs(
    what: &'static str,
    path: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_string(),
        });
    }
    Ok(certs)
}

/// The certificates a PEM CA bundle holds, as trust roots.
fn root_store(what: &'static str, path: &str, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(what, path, pem)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The certificate, key and client CA files as last read.
#[derive(PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    /// Absent without `tls.client_ca_file`.
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(config: &TlsConfig) -> Result<Files, TlsError> {
        let client_ca = (!config.client_ca_file.is_empty())
            .then(|| read("client CA bundle", &config.client_ca_file))
            .transpose()?;
        // PEM given inline (from the environment, as ECS injects secrets) or read from files.
        let inline = |pem: &crate::config::Secret| {
            (!pem.expose().is_empty()).then(|| pem.expose().as_bytes().to_vec())
        };
        Ok(Files {
            cert: match inline(&config.cert_pem) {
                Some(pem) => pem,
                None => read("certificate", &config.cert_file)?,
            },
            key: match inline(&config.key_pem) {
                Some(pem) => pem,
                None => read("private key", &config.key_file)?,
            },
            client_ca,
        })
    }
}

/// The settings and files in force, and the rustls configuration made from them.
struct Current {
    config: TlsConfig,
    files: Files,
    server: Arc<ServerConfig>,
    /// What resumes sessions. Kept across certificate swaps, so sessions resume after one;
    /// replaced when the client CA bundle changes, since a resumed session is not checked
    /// against the bundle again.
    resumption: Resumption,
}

/// Session cache and ticket keys.
#[derive(Clone)]
struct Resumption {
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
}

impl Resumption {
    fn new() -> Result<Self, TlsError> {
        Ok(Resumption {
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE),
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new()?,
        })
    }
}

/// What Sluice offers clients: the mode and the current rustls configuration.
pub struct ClientTls {
    current: RwLock<Current>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("ClientTls")
            .field("mode", &current.config.mode)
            .field("cert_file", &current.config.cert_file)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the certificate and key; `None` when `tls.mode` is disabled.
    pub fn from_config(config: &TlsConfig) -> Result<Option<Arc<ClientTls>>, TlsError> {
        if config.mode == TlsMode::Disabled {
            return Ok(None);
        }
        let resumption = Resumption::new()?;
        let files = Files::read(config)?;
        let server = Self::build(config, &files, &resumption)?;
        Ok(Some(Arc::new(ClientTls {
            current: RwLock::new(Current {
                config: config.clone(),
                files,
                server,
                resumption,
            }),
        })))
    }

    fn build(
        config: &TlsConfig,
        files: &Files,
        resumption: &Resumption,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let certs = parse_certs("certificate", &config.cert_file, &files.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| TlsError::Pem {
            what: "private key",
            path: config.key_file.clone(),
            reason: e.to_string(),
        })?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let roots = root_store("client CA bundle", &config.client_ca_file, pem)?;
                // A client without a certificate completes the TLS handshake, so that the
                // login can refuse it with an error it can show (a certificate from another
                // CA fails the handshake itself).
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .allow_unauthenticated()
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder.with_single_cert(certs, key)?;
        server.session_storage = resumption.sessions.clone();
        server.ticketer = resumption.ticketer.clone();
        Ok(Arc::new(server))
    }

    /// Whether clients must present a certificate (`tls.client_ca_file` is set).
    pub fn requires_client_certificate(&self) -> bool {
        !self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .config
            .client_ca_file
            .is_empty()
    }

    /// Whether TLS is optional or required.
    pub fn mode(&self) -> TlsMode {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .config
            .mode
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        tokio_rustls::TlsAcceptor::from(current.server.clone())
    }

    /// Reads the files again and switches to them if they changed. A pair that does not load
    /// (a key written before its certificate, say) leaves the current one in place.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let config = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .config
            .clone();
        self.apply(&config)
    }

    /// Takes new `[tls]` settings (a configuration reload): the mode between `preferred` and
    /// `required`, other files, or the same files with new contents. Turning TLS off needs a
    /// restart, since the greeting's capabilities are fixed at start.
    pub fn apply(&self, config: &TlsConfig) -> Result<bool, TlsError> {
        if config.mode == TlsMode::Disabled {
            return Err(TlsError::NeedsRestart);
        }
        let files = Files::read(config)?;
        let resumption = {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            if current.files == files && current.config.mode == config.mode {
                return Ok(false);
            }
            if current.files.client_ca == files.client_ca {
                current.resumption.clone()
            } else {
                // Sessions checked against the old bundle (or none) must not resume.
                Resumption::new()?
            }
        };
        let server = Self::build(config, &files, &resumption)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Current {
            config: config.clone(),
            files,
            server,
            resumption,
        };
        Ok(true)
    }

    /// Checks the files every `interval` until shutdown.
    pub fn spawn_watch(self: &Arc<Self>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let tls = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = crate::context::stop_requested(&mut shutdown) => return,
                }
                let Some(tls) = tls.upgrade() else { return };
                match tls.reload() {
                    Ok(true) => {
                        tracing::info!("TLS certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate files changed but do not load; keeping the current ones")
                    }
                }
            }
        });
    }
}

/// How Sluice starts TLS on backend connections.
#[derive(Clone)]
pub struct BackendTls {
    pub mode: BackendTlsMode,
    connector: Option<tokio_rustls::TlsConnector>,
    server_name: Option<ServerName<'static>>,
    /// `tls_server_name` was given: every host is checked against it.
    explicit_name: bool,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("mode", &self.mode)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl BackendTls {
    /// Builds the client configuration `backend.tls` asks for.
    pub fn from_config(config: &BackendConfig) -> Result<BackendTls, TlsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let verifier: Arc<dyn ServerCertVerifier> = match config.tls {
            BackendTlsMode::Disabled => {
                return Ok(BackendTls {
                    mode: config.tls,
                    connector: None,
                    server_name: None,
                    explicit_name: false,
                });
            }
            BackendTlsMode::Preferred => Arc::new(AnyCertificate(provider.clone())),
            BackendTlsMode::VerifyCa | BackendTlsMode::VerifyIdentity => {
                let pem = read("CA bundle", &config.tls_ca_file)?;
                let roots = root_store("certificate", &config.tls_ca_file, &pem)?;
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()?;
                if config.tls == BackendTlsMode::VerifyCa {
                    Arc::new(AnyName(webpki))
                } else {
                    webpki
                }
            }
        };
        let client = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let host = if config.tls_server_name.is_empty() {
            let first = config.hosts().into_iter().next().unwrap_or_default();
            host_of(&first)
        } else {
            config.tls_server_name.clone()
        };
        let server_name =
            ServerName::try_from(host.clone()).map_err(|_| TlsError::ServerName(host))?;
        Ok(BackendTls {
            mode: config.tls,
            connector: Some(tokio_rustls::TlsConnector::from(Arc::new(client))),
            server_name: Some(server_name),
            explicit_name: !config.tls_server_name.is_empty(),
        })
    }

    /// The same settings for connections to `address` (one host of `backend.address`): under
    /// `verify-identity` its certificate must name that host, unless `tls_server_name` is set.
    pub fn for_address(&self, address: &str) -> Result<BackendTls, TlsError> {
        let mut tls = self.clone();
        if tls.connector.is_some() && !tls.explicit_name {
            let host = host_of(address);
            tls.server_name =
                Some(ServerName::try_from(host.clone()).map_err(|_| TlsError::ServerName(host))?);
        }
        Ok(tls)
    }

    /// A backend that does not use TLS.
    pub fn disabled() -> BackendTls {
        BackendTls {
            mode: BackendTlsMode::Disabled,
            connector: None,
            server_name: None,
            explicit_name: false,
        }
    }

    /// The connector and name to use, unless TLS is off.
    pub fn connector(&self) -> Option<(&tokio_rustls::TlsConnector, ServerName<'static>)> {
        Some((self.connector.as_ref()?, self.server_name.clone()?))
    }

    /// True if a server without TLS must be refused.
    pub fn required(&self) -> bool {
        matches!(
            self.mode,
            BackendTlsMode::VerifyCa | BackendTlsMode::VerifyIdentity
        )
    }
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
fn host_of(address: &str) -> String {
    address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// `preferred`: encrypt without checking who signed the certificate (MySQL's own
/// `ssl-mode=PREFERRED`); the handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name in the certificate is not
/// checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
