//! The chunker Lambda: on each EventBridge schedule tick, emit one chunk per interval
//! from the DynamoDB cursor until the budget or the invocation's time runs out.

use lambda_runtime::{run, service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;
use std::time::Duration;
use txpipe::chunker::ChunkerService;
use txpipe::timing::deadline_from_epoch_ms;

/// Time kept back from the invocation's deadline to finish the last commit and return.
const MARGIN: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let service = ChunkerService::from_env().await?;
    run(service_fn(|event: LambdaEvent<Value>| {
        let service = &service;
        async move {
            let deadline = deadline_from_epoch_ms(event.context.deadline, MARGIN);
            Ok::<_, Error>(service.handle(&event.payload, deadline).await?)
        }
    }))
    .await
}
