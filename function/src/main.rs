//! The Lambda binary: init once, then serve invocations through the Lambda Runtime API.

use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;
use sluice_function::{Config, Function, SecretsClient};
use tracing::Instrument;

// One thread: Lambda runs one invocation at a time per instance, and a small function gets a
// fraction of a vCPU.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    sluice_function::init_logging();
    let function = match init().await {
        Ok(function) => Arc::new(function),
        Err(e) => {
            tracing::error!(error_type = e.error_type(), error = %e, "init failed");
            return Err(e.into());
        }
    };
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let function = Arc::clone(&function);
        let span = tracing::info_span!("invocation", request_id = %event.context.request_id);
        async move { function.handle(event.payload).await }.instrument(span)
    }))
    .await
}

async fn init() -> Result<Function, sluice_function::Error> {
    let config = Config::from_env()?;
    let secrets = SecretsClient::from_env().await;
    Function::init(config, secrets).await
}
