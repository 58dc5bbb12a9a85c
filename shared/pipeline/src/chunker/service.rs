//! The chunker as the Lambda runs it: built once per container, then one
//! [`ChunkerService::handle`] per schedule tick — cut chunks, then watch the stream —
//! with its logs and metrics.

use super::watch::{StreamWatch, Watch};
use super::{Chunker, ChunkerError, ChunkerRun, ChunkerSettings, WrittenChunk};
use crate::aws::AwsClients;
use crate::clock::{self, Clock};
use crate::config::Config;
use crate::metrics::{emit, Unit};
use crate::setup::{SetupError, Stores};
use crate::timing::millis;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The chunker service: stores and settings, made once per container. It cuts every
/// configured source, each its own stream, side by side.
pub struct ChunkerService {
    stores: Stores,
    sources: Vec<ChunkerSettings>,
    stall: Duration,
    clock: Arc<dyn Clock>,
}

/// What one chunker invocation answers: one entry per source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChunkerResponse {
    /// Each source's tick, in the configured order.
    pub sources: Vec<SourceTick>,
}

impl ChunkerResponse {
    /// Whether every source is fully chunked.
    pub fn finished(&self) -> bool {
        self.sources.iter().all(|s| s.finished)
    }
}

/// What one tick did for one source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceTick {
    /// The source object.
    pub source: String,
    /// The stream (none while waiting for the source file).
    pub stream: Option<String>,
    /// Chunks this invocation wrote, in order.
    pub chunks: Vec<u64>,
    /// The cursor's next chunk afterwards.
    pub next_chunk: u64,
    /// Whether the source is fully chunked.
    pub finished: bool,
    /// The source file is not uploaded yet.
    pub waiting_for_input: bool,
    /// Times another invocation moved the cursor first.
    pub lost_races: u64,
    /// Chunk slots skipped because the detector was too far behind.
    pub backpressure_waits: u64,
    /// Prefix stream: files that joined in this tick.
    pub files_joined: u64,
    /// Prefix stream: the tick ended waiting for more rows (or for closing).
    pub waiting_for_data: bool,
    /// Chunks cut but not yet applied by the detector, after this tick.
    pub lag: u64,
    /// The chunk the detector has parked, if any: resume with `txpipe resume`.
    pub parked: Option<u64>,
    /// The chunk written again to wake a detector that made no progress, if any.
    pub kicked: Option<u64>,
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
            sources: config
                .source
                .transactions_keys
                .iter()
                .map(|key| ChunkerSettings::for_source(config, key))
                .collect(),
            stall: config.chunker.detector_stall,
            clock: clock::system(),
        }
    }

    /// The same, reading time from `clock` (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The settings of the first source.
    pub fn settings(&self) -> &ChunkerSettings {
        &self.sources[0]
    }

    /// The stores in use.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// One tick: for every source at once, cut chunks until `deadline`, then watch
    /// its stream. Any event works (the schedule's payload carries nothing we need).
    pub async fn handle(
        &self,
        _event: &Value,
        deadline: Instant,
    ) -> Result<ChunkerResponse, ChunkerError> {
        tracing::info!(
            budget_ms = millis(deadline.saturating_duration_since(Instant::now())),
            sources = self.sources.len(),
            "schedule tick"
        );
        let ticks = futures_util::future::join_all(
            self.sources
                .iter()
                .map(|settings| self.tick_source(settings, deadline)),
        )
        .await;
        Ok(ChunkerResponse {
            sources: ticks.into_iter().collect::<Result<_, _>>()?,
        })
    }

    async fn tick_source(
        &self,
        settings: &ChunkerSettings,
        deadline: Instant,
    ) -> Result<SourceTick, ChunkerError> {
        let mut chunker = self.chunker_for(settings);
        let cut_before = chunker
            .cursors
            .load_cursor(&settings.source_id())
            .await?
            .map_or(0, |c| c.next_chunk);
        let run = self.run_with(&mut chunker, deadline, None).await?;
        let watch = match run.waiting_for_input {
            true => Watch::default(),
            false => {
                StreamWatch {
                    heads: self.stores.state.as_ref(),
                    stall: self.stall,
                    clock: self.clock.as_ref(),
                }
                .check(&mut chunker, cut_before)
                .await?
            }
        };
        report_tick(settings, &run, &watch);
        Ok(SourceTick {
            source: settings.source_id(),
            stream: run.stream.as_ref().map(|s| s.to_string()),
            chunks: run.written.iter().map(|c| c.number).collect(),
            next_chunk: run.next_chunk,
            finished: run.finished,
            waiting_for_input: run.waiting_for_input,
            lost_races: run.lost_races,
            backpressure_waits: run.backpressure_waits,
            files_joined: run.files_joined,
            waiting_for_data: run.waiting_for_data,
            lag: watch.lag,
            parked: watch.parked.map(|p| p.chunk),
            kicked: watch.kicked,
        })
    }

    /// Emits chunks of the first source until `deadline` or `max_chunks`, logging one
    /// event per chunk (tests, benchmarks).
    pub async fn run(
        &self,
        deadline: Instant,
        max_chunks: Option<u64>,
    ) -> Result<ChunkerRun, ChunkerError> {
        let mut chunker = self.chunker_for(&self.sources[0]);
        self.run_with(&mut chunker, deadline, max_chunks).await
    }

    /// The chunker of one source over this service's stores, with backpressure.
    pub fn chunker_for(&self, settings: &ChunkerSettings) -> Chunker<'_> {
        Chunker::new(
            self.stores.objects.as_ref(),
            self.stores.cursors.as_ref(),
            settings.clone(),
        )
        .with_backpressure(self.stores.state.as_ref())
        .with_clock(self.clock.clone())
    }

    async fn run_with(
        &self,
        chunker: &mut Chunker<'_>,
        deadline: Instant,
        max_chunks: Option<u64>,
    ) -> Result<ChunkerRun, ChunkerError> {
        let before = self.stores.requests.get();
        let run = chunker.run(deadline, max_chunks, report_written).await?;
        tracing::info!(
            chunks = run.written.len(),
            next_chunk = run.next_chunk,
            finished = run.finished,
            lost_races = run.lost_races,
            backpressure_waits = run.backpressure_waits,
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

/// Logs what the tick saw and emits the metrics that must arrive every minute, so
/// their alarms hear silence as trouble.
fn report_tick(settings: &ChunkerSettings, run: &ChunkerRun, watch: &Watch) {
    if run.waiting_for_input {
        tracing::info!(
            source = %format!("s3://{}/{}", settings.source_bucket, settings.source_key),
            "waiting for input: the source file is not uploaded yet"
        );
    }
    if let Some(p) = &watch.parked {
        tracing::error!(
            stream = ?watch.stream.as_ref().map(|s| s.to_string()),
            chunk = p.chunk,
            attempts = p.attempts,
            reason = %p.reason,
            "the detector has parked a chunk; fix the cause, then run `txpipe resume`"
        );
    }
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    emit(
        "chunker",
        &[
            ("Ticks", 1.0, Unit::Count),
            ("LagChunks", watch.lag as f64, Unit::Count),
            ("ParkedChunks", flag(watch.parked.is_some()), Unit::Count),
            ("WaitingForInput", flag(run.waiting_for_input), Unit::Count),
            (
                "BackpressureWaits",
                run.backpressure_waits as f64,
                Unit::Count,
            ),
            ("DetectorKicks", flag(watch.kicked.is_some()), Unit::Count),
        ],
    );
}
