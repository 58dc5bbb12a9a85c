//! The chunker as the Lambda runs it: built once per container, then one
//! [`ChunkerService::handle`] per schedule tick, with its logs and metrics.

use super::{Chunker, ChunkerError, ChunkerRun, ChunkerSettings, WrittenChunk};
use crate::aws::AwsClients;
use crate::config::Config;
use crate::metrics::{emit, Unit};
use crate::setup::{SetupError, Stores};
use crate::timing::millis;
use serde_json::Value;
use std::time::Instant;

/// The chunker service: stores and settings, made once per container.
pub struct ChunkerService {
    stores: Stores,
    settings: ChunkerSettings,
}

/// What one chunker invocation answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChunkerResponse {
    /// Chunks this invocation wrote, in order.
    pub chunks: Vec<u64>,
    /// The cursor's next chunk afterwards.
    pub next_chunk: u64,
    /// Whether the source is fully chunked.
    pub finished: bool,
    /// Times another invocation moved the cursor first.
    pub lost_races: u64,
}

impl ChunkerService {
    /// Reads the process environment and AWS configuration, as the Lambda does.
    pub async fn from_env() -> Result<Self, SetupError> {
        let config = Config::from_env()?;
        let clients = AwsClients::from_env().await;
        Ok(Self::new(Stores::aws(&clients, &config), &config))
    }

    /// A chunker over given stores.
    pub fn new(stores: Stores, config: &Config) -> Self {
        ChunkerService {
            stores,
            settings: ChunkerSettings::from_config(config),
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &ChunkerSettings {
        &self.settings
    }

    /// The stores in use.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// One tick: any event works (the schedule's payload carries nothing we need).
    /// Emits chunks until `deadline`.
    pub async fn handle(
        &self,
        _event: &Value,
        deadline: Instant,
    ) -> Result<ChunkerResponse, ChunkerError> {
        tracing::info!(
            budget_ms = millis(deadline.saturating_duration_since(Instant::now())),
            "schedule tick"
        );
        let run = self.run(deadline, None).await?;
        Ok(ChunkerResponse {
            chunks: run.written.iter().map(|c| c.number).collect(),
            next_chunk: run.next_chunk,
            finished: run.finished,
            lost_races: run.lost_races,
        })
    }

    /// Emits chunks until `deadline` or `max_chunks`, logging one event per chunk.
    pub async fn run(
        &self,
        deadline: Instant,
        max_chunks: Option<u64>,
    ) -> Result<ChunkerRun, ChunkerError> {
        let mut chunker = Chunker::new(
            self.stores.objects.as_ref(),
            self.stores.cursors.as_ref(),
            self.settings.clone(),
        );
        let before = self.stores.requests.get();
        let run = chunker.run(deadline, max_chunks, report_written).await?;
        tracing::info!(
            chunks = run.written.len(),
            next_chunk = run.next_chunk,
            finished = run.finished,
            lost_races = run.lost_races,
            requests = self.stores.requests.get() - before,
            "chunker invocation done"
        );
        Ok(run)
    }
}

/// Logs one written chunk and emits its metrics.
fn report_written(c: &WrittenChunk) {
    tracing::info!(
        chunk = c.number,
        key = %c.key,
        rows = c.rows,
        bytes = c.bytes,
        last = c.last,
        ms = c.micros as f64 / 1000.0,
        "chunk written"
    );
    emit(
        "chunker",
        &[
            ("ChunksCreated", 1.0, Unit::Count),
            ("ChunkRows", c.rows as f64, Unit::Count),
            (
                "ChunkerMillis",
                c.micros as f64 / 1000.0,
                Unit::Milliseconds,
            ),
        ],
    );
}
