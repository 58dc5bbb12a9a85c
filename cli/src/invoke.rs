//! `txpipe invoke`: one Lambda invocation run here, through the same handler code the
//! deployed functions call, configured from the same environment variables.

use anyhow::{Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};
use txpipe::chunker::ChunkerService;
use txpipe::detector::DetectorService;

/// Which function to invoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Function {
    /// The chunker (any event is a schedule tick).
    Chunker,
    /// The detector (an S3 ObjectCreated event for a chunk).
    Detector,
}

/// Runs one invocation and returns the function's JSON answer.
pub async fn invoke(
    function: Function,
    event: Option<&Path>,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let event: serde_json::Value = match event {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the event {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?
        }
        None if function == Function::Chunker => serde_json::json!({}),
        None => anyhow::bail!("the detector needs an S3 event: --event events/s3-put-chunk-0.json"),
    };
    let deadline = Instant::now() + timeout;
    Ok(match function {
        Function::Chunker => {
            let service = ChunkerService::from_env().await?;
            serde_json::to_value(service.handle(&event, deadline).await?)?
        }
        Function::Detector => {
            let service = DetectorService::from_env().await?;
            serde_json::to_value(service.handle(&event, deadline).await?)?
        }
    })
}
