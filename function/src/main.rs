//! The Lambda binary: init once, then serve invocations through the Lambda Runtime API.
//!
//! A failed init (secret unreadable, bad configuration) does not end the process: each
//! invocation tries the init again and, while it keeps failing, answers with its error. So
//! the caller sees why (`SecretError`, `ConfigurationError`) instead of a bare runtime exit,
//! and a transient failure heals without a new instance.

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;
use sluice_function::{Config, Error, Function, IamSigner, SecretsClient};
use tokio::sync::OnceCell;
use tracing::Instrument;

// One thread: Lambda runs one invocation at a time per instance, and a small function gets a
// fraction of a vCPU.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    sluice_function::init_logging();
    // The init phase proper, before the first event.
    let _ = ready().await;
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        let span = tracing::info_span!("invocation", request_id = %event.context.request_id);
        async move { ready().await?.handle(event.payload).await }.instrument(span)
    }))
    .await
}

/// The initialised function, initialising it now if that has not succeeded yet.
async fn ready() -> Result<&'static Function, Error> {
    static FUNCTION: OnceCell<Function> = OnceCell::const_new();
    FUNCTION
        .get_or_try_init(|| async {
            let config = Config::from_env()?;
            match config.iam.clone() {
                Some(iam) => Function::init_iam(config, IamSigner::from_env(&iam).await?).await,
                None => Function::init(config, SecretsClient::from_env().await).await,
            }
        })
        .await
        .inspect_err(|e| tracing::error!(error_type = e.error_type(), error = %e, "init failed"))
}
