//! The detector Lambda: for each S3 chunk event, apply the chunks it names exactly once,
//! in order, and write detections to S3 and Postgres.

use lambda_runtime::{run, service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;
use std::time::Duration;
use txpipe::detector::DetectorService;
use txpipe::timing::deadline_from_epoch_ms;

/// Time kept back from the invocation's deadline to commit the chunk in hand and return.
const MARGIN: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    // Loads CustomerImportance.csv once per container; state stays warm across events.
    let service = DetectorService::from_env().await?;
    run(service_fn(|event: LambdaEvent<Value>| {
        let service = &service;
        async move {
            let deadline = deadline_from_epoch_ms(event.context.deadline, MARGIN);
            Ok::<_, Error>(service.handle(&event.payload, deadline).await?)
        }
    }))
    .await
}
