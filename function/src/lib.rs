//! The AWS Lambda that targets Sluice, the Rust counterpart of the seed's Python function.
//!
//! At init it reads the database secret named by `SECRET_ARN` from Secrets Manager (or, with
//! `AUTH_MODE=iam`, signs a Sluice IAM token with its own role credentials and reads no secret)
//! and opens a small `mysql_async` pool to the proxy at `PROXY_ENDPOINT`; each invocation upserts the
//! customers of its event into the seed's `Customer` table and returns them as stored. See
//! [`Function`] and the crate's README.

/// Configuration from the environment.
pub mod config;
/// Pool, statements and the classification of database failures.
pub mod db;
/// Error classes and the Lambda error response.
pub mod error;
/// Init and invocation.
pub mod handler;
/// IAM mode: tokens signed with the function's own role credentials.
pub mod iam;
/// The database secret from Secrets Manager.
pub mod secret;

pub use config::{Config, DbTls, IamMode};
pub use db::Customer;
pub use error::Error;
pub use handler::{Function, Response, parse_event};
pub use iam::IamSigner;
pub use secret::{DbSecret, Password, SecretsClient};

/// Makes aws-lc-rs the process's rustls crypto provider (idempotent).
///
/// Only aws-lc-rs is compiled in, so rustls would pick it anyway; installing it explicitly
/// turns an accidental second provider in the dependency tree into no harm at run time.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// JSON logs on stdout, one object per line, at the level `AWS_LAMBDA_LOG_LEVEL` (or
/// `RUST_LOG`) names: `error`, `warn`, `info` (default), `debug` or `trace`.
pub fn init_logging() {
    let level = ["AWS_LAMBDA_LOG_LEVEL", "RUST_LOG"]
        .iter()
        .find_map(|name| std::env::var(name).ok())
        .and_then(|v| v.trim().parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let _ = tracing::subscriber::set_global_default(json_logs(level, std::io::stdout));
}

/// The function's log format: one JSON object per event, fields flattened, with the current
/// span's fields (the invocation's request id), written to `writer`.
pub fn json_logs<W>(level: tracing::Level, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_max_level(level)
        .with_writer(writer)
        .finish()
}
