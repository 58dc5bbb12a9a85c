//! The detector Lambda: for each S3 chunk event, apply the chunks it names exactly once,
//! in order, and write detections to S3 and Postgres.
//!
//! The same binary, with `TXPIPE_MODE=db-setup`, is the stack's `DbSetup` custom
//! resource: it creates the detector's database role and schema and answers
//! CloudFormation (`txpipe::postgres::db_setup`).

use lambda_runtime::{run, service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;
use std::time::Duration;
use txpipe::detector::DetectorService;
use txpipe::postgres::db_setup::DbSetupService;
use txpipe::timing::deadline_from_epoch_ms;

/// Time kept back from the invocation's deadline to commit the chunk in hand and return.
const MARGIN: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    match std::env::var("TXPIPE_MODE").unwrap_or_default().trim() {
        "" | "detector" => detector().await,
        "db-setup" => db_setup().await,
        other => Err(format!(
            "TXPIPE_MODE={other:?}: expected db-setup, or unset for the detector"
        )
        .into()),
    }
}

async fn detector() -> Result<(), Error> {
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

async fn db_setup() -> Result<(), Error> {
    let service = DbSetupService::from_env().await;
    run(service_fn(|event: LambdaEvent<Value>| {
        let service = &service;
        async move {
            // The service keeps its own margin to answer CloudFormation in time.
            let deadline = deadline_from_epoch_ms(event.context.deadline, Duration::ZERO);
            let config = &event.context.env_config;
            let log = format!("{} {}", config.log_group, config.log_stream);
            Ok::<_, Error>(service.handle(&event.payload, deadline, Some(&log)).await?)
        }
    }))
    .await
}
