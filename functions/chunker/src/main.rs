//! The chunker Lambda: on each EventBridge schedule tick, emit one chunk per interval
//! from the DynamoDB cursor until the budget or the invocation's time runs out.

use lambda_runtime::{run, service_fn, tracing, Error, LambdaEvent};
use serde_json::{json, Value};
use std::time::Duration;
use txpipe::config::Settings;
use txpipe::service::{deadline_from_epoch_ms, ChunkerContext};
use txpipe::store::clients::AwsClients;

/// Time kept back from the invocation's deadline to finish the last commit and return.
const MARGIN: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let clients = AwsClients::from_env().await;
    let context = ChunkerContext::new(&clients, &Settings::from_env())?;
    run(service_fn(|event: LambdaEvent<Value>| {
        handle(&context, event)
    }))
    .await
}

/// Any event works as a tick (the schedule's payload carries nothing we need).
async fn handle(context: &ChunkerContext, event: LambdaEvent<Value>) -> Result<Value, Error> {
    let deadline = deadline_from_epoch_ms(event.context.deadline, MARGIN);
    tracing::info!(
        budget_ms = deadline
            .saturating_duration_since(std::time::Instant::now())
            .as_millis() as u64,
        "schedule tick"
    );
    let run = context.invoke(deadline, None, |_| {}).await?;
    Ok(json!({
        "chunks": run.written.iter().map(|c| c.number).collect::<Vec<_>>(),
        "next_chunk": run.next_chunk,
        "finished": run.finished,
        "lost_races": run.lost_races,
    }))
}
