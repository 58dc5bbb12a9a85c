//! The stack's `DbSetup` custom resource: on stack create and update, creates the
//! detector's database role and schema with the RDS master secret, then answers
//! CloudFormation (`txpipe::db_setup`).

use lambda_runtime::{run, service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;
use std::time::Duration;
use txpipe::db_setup::DbSetupService;
use txpipe::timing::deadline_from_epoch_ms;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
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
