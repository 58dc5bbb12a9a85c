//! The detector Lambda: for each S3 chunk event, apply the chunks it names exactly once,
//! in order, and write detections to S3 and Postgres.

use lambda_runtime::{run, service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;
use tokio::sync::Mutex;
use txpipe::config::Settings;
use txpipe::detector::Detector;
use txpipe::service::{detector_from_env, handle_detector_event};
use txpipe::store::clients::AwsClients;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let clients = AwsClients::from_env().await;
    // Loads CustomerImportance.csv once per container; state stays warm across events.
    let detector = Mutex::new(detector_from_env(&clients, &Settings::from_env()).await?);
    run(service_fn(|event: LambdaEvent<Value>| {
        handle(&detector, event)
    }))
    .await
}

async fn handle(detector: &Mutex<Detector>, event: LambdaEvent<Value>) -> Result<Value, Error> {
    let mut detector = detector.lock().await;
    Ok(handle_detector_event(&mut detector, &event.payload, |_| {}).await?)
}
