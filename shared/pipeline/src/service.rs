//! The two invocations as the Lambdas (and the local runner) perform them: wiring from
//! the environment, one chunker run, one detector event, with their logs and metrics.

use crate::chunker::{Chunker, ChunkerError, ChunkerRun, ChunkerSettings, WrittenChunk};
use crate::config::{ConfigError, Settings};
use crate::detector::{
    targets_from_event, AppliedChunk, ChunkSink, Detector, DetectorError, DetectorSettings,
};
use crate::metrics::{emit, Unit};
use crate::postgres::{PgError, PgSettings, PgSink};
use crate::store::clients::AwsClients;
use crate::store::dynamo::DynamoTable;
use crate::store::s3::S3Store;
use crate::store::RequestCounter;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Wiring failed: a setting is missing or a service is unreachable.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Postgres settings.
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The detector could not start.
    #[error(transparent)]
    Detector(#[from] DetectorError),
}

/// Stores for the chunker, built once per container.
pub struct ChunkerContext {
    /// S3.
    pub objects: S3Store,
    /// DynamoDB.
    pub table: DynamoTable,
    /// Settings.
    pub settings: ChunkerSettings,
    /// Requests made through the stores.
    pub requests: RequestCounter,
}

impl ChunkerContext {
    /// Builds the chunker's stores from clients and settings (`TXPIPE_STATE_TABLE`).
    pub fn new(clients: &AwsClients, s: &Settings) -> Result<Self, SetupError> {
        let requests = RequestCounter::default();
        Ok(ChunkerContext {
            objects: S3Store::new(clients.s3.clone(), requests.clone()),
            table: DynamoTable::from_settings(clients.dynamodb.clone(), s, requests.clone())?,
            settings: ChunkerSettings::from_settings(s)?,
            requests,
        })
    }

    /// One scheduled invocation: emit chunks until `deadline` (or `max_chunks`),
    /// logging one event per chunk.
    pub async fn invoke(
        &self,
        deadline: Instant,
        max_chunks: Option<u64>,
        mut on_chunk: impl FnMut(&WrittenChunk),
    ) -> Result<ChunkerRun, ChunkerError> {
        let mut chunker = Chunker::new(&self.objects, &self.table, self.settings.clone());
        let before = self.requests.get();
        let run = chunker
            .run(deadline, max_chunks, |c| {
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
                on_chunk(c);
            })
            .await?;
        tracing::info!(
            chunks = run.written.len(),
            next_chunk = run.next_chunk,
            finished = run.finished,
            lost_races = run.lost_races,
            requests = self.requests.get() - before,
            "chunker invocation done"
        );
        Ok(run)
    }
}

/// The deadline of a Lambda invocation (epoch milliseconds) as an [`Instant`], less a
/// safety margin of `margin` or a quarter of the time left, whichever is smaller (so a
/// short timeout still leaves room to work).
pub fn deadline_from_epoch_ms(deadline_ms: u64, margin: Duration) -> Instant {
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    // Lambda sends epoch milliseconds; cargo-lambda's local emulator sends the timeout
    // itself (e.g. 600000). Anything before 2001 cannot be an epoch deadline.
    let left = if deadline_ms < 978_307_200_000 {
        Duration::from_millis(deadline_ms)
    } else {
        Duration::from_millis(deadline_ms.saturating_sub(now_ms))
    };
    Instant::now() + left - margin.min(left / 4)
}

/// Builds the detector from the environment: stores, Postgres sink, importance table.
pub async fn detector_from_env(clients: &AwsClients, s: &Settings) -> Result<Detector, SetupError> {
    let requests = RequestCounter::default();
    let objects = Arc::new(S3Store::new(clients.s3.clone(), requests.clone()));
    let table = Arc::new(DynamoTable::from_settings(
        clients.dynamodb.clone(),
        s,
        requests.clone(),
    )?);
    let pg = PgSettings::from_settings(s)?.ok_or_else(|| {
        PgError::Settings(
            "set TXPIPE_PG_URL (postgres://user:password@host:port/db) or TXPIPE_PG_SECRET_ARN"
                .into(),
        )
    })?;
    let secrets = aws_sdk_secretsmanager::Client::new(&clients.config);
    let sink: Arc<dyn ChunkSink> = Arc::new(PgSink::new(pg, secrets, requests.clone()));
    let chunker = ChunkerSettings::from_settings(s)?;
    let detector = Detector::new(
        objects,
        table.clone(),
        sink,
        requests,
        DetectorSettings::from_settings(s)?,
    )
    .await?
    .with_lag_probe(
        table,
        crate::store::ChunkCursor::source_id(&chunker.source_bucket, &chunker.source_key),
        chunker.stream(),
    );
    if !detector.importance_rejected().is_empty() {
        tracing::warn!(
            rejected = detector.importance_rejected().len(),
            first = %detector.importance_rejected()[0].reason,
            "CustomerImportance.csv has rejected rows; they are stored in rejected_rows"
        );
    }
    Ok(detector)
}

/// Logs one applied chunk and emits its metrics.
pub fn report_applied(a: &AppliedChunk) {
    tracing::info!(
        stream = %a.stream,
        chunk = a.chunk,
        rows = a.rows,
        rejected = a.rejected,
        pat1 = a.detections[0],
        pat2 = a.detections[1],
        pat3 = a.detections[2],
        batches = a.batches,
        requests = a.requests,
        behind = a.behind,
        last = a.last,
        read_ms = a.millis.read,
        apply_ms = a.millis.apply,
        s3_ms = a.millis.s3,
        sink_ms = a.millis.sink,
        snapshot_ms = a.millis.snapshot,
        commit_ms = a.millis.commit,
        ms = a.millis.total,
        "chunk applied"
    );
    emit(
        "detector",
        &[
            ("ChunksApplied", 1.0, Unit::Count),
            ("RowsProcessed", a.rows as f64, Unit::Count),
            ("RowsRejected", a.rejected as f64, Unit::Count),
            ("DetectionsPatId1", a.detections[0] as f64, Unit::Count),
            ("DetectionsPatId2", a.detections[1] as f64, Unit::Count),
            ("DetectionsPatId3", a.detections[2] as f64, Unit::Count),
            ("ChunkMillis", a.millis.total as f64, Unit::Milliseconds),
            ("LagChunks", a.behind as f64, Unit::Count),
        ],
    );
}

/// One detector invocation for an S3 event. A malformed event is logged and answered
/// (retrying it cannot help); a failure to apply a chunk is an error, so Lambda retries
/// and the on-failure destination keeps what still fails.
pub async fn handle_detector_event(
    detector: &mut Detector,
    event: &Value,
    mut on_applied: impl FnMut(&AppliedChunk),
) -> Result<Value, DetectorError> {
    let targets = match targets_from_event(event) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "malformed event ignored");
            return Ok(json!({"status": "malformed", "error": e.to_string()}));
        }
    };
    for why in &targets.ignored {
        tracing::warn!(reason = %why, "event record ignored");
    }
    let bucket = detector.settings().bucket.clone();
    let mut streams = Vec::new();
    for target in &targets.targets {
        if target.bucket != bucket {
            tracing::warn!(event_bucket = %target.bucket, %bucket, "event from another bucket; reading the configured bucket");
        }
        let report = detector.catch_up(&target.stream, target.chunk).await?;
        if let Some(ms) = report.reload_ms {
            tracing::info!(stream = %target.stream, reload_ms = ms, next_chunk = report.next_chunk, "state loaded");
        }
        for a in &report.applied {
            report_applied(a);
            on_applied(a);
        }
        if report.duplicate {
            tracing::info!(stream = %target.stream, chunk = target.chunk, "duplicate event: chunk already applied");
        }
        if let Some(k) = report.waiting_for {
            tracing::info!(stream = %target.stream, chunk = k, "chunk not written yet; a later event completes it");
        }
        streams.push(json!({
            "stream": target.stream,
            "requested": target.chunk,
            "applied": report.applied.iter().map(|a| a.chunk).collect::<Vec<_>>(),
            "duplicate": report.duplicate,
            "waiting_for": report.waiting_for,
            "next_chunk": report.next_chunk,
        }));
    }
    Ok(json!({"status": "ok", "streams": streams, "ignored": targets.ignored}))
}

/// The chunker as the Lambda runs it: built once per container from the environment,
/// then one [`ChunkerService::handle`] per schedule tick.
pub struct ChunkerService {
    context: ChunkerContext,
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
        let clients = AwsClients::from_env().await;
        Self::new(&clients, &Settings::from_env())
    }

    /// A chunker over explicit clients and settings.
    pub fn new(clients: &AwsClients, settings: &Settings) -> Result<Self, SetupError> {
        Ok(ChunkerService {
            context: ChunkerContext::new(clients, settings)?,
        })
    }

    /// One tick: any event works (the schedule's payload carries nothing we need).
    /// Emits chunks until `deadline`.
    pub async fn handle(
        &self,
        _event: &Value,
        deadline: Instant,
    ) -> Result<ChunkerResponse, ChunkerError> {
        tracing::info!(
            budget_ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64,
            "schedule tick"
        );
        let run = self.context.invoke(deadline, None, |_| {}).await?;
        Ok(ChunkerResponse {
            chunks: run.written.iter().map(|c| c.number).collect(),
            next_chunk: run.next_chunk,
            finished: run.finished,
            lost_races: run.lost_races,
        })
    }
}

/// The detector as the Lambda runs it: built once per container (importance table
/// loaded, warm state kept between events), then one [`DetectorService::handle`] per
/// S3 event.
pub struct DetectorService {
    detector: tokio::sync::Mutex<Detector>,
}

impl DetectorService {
    /// Reads the process environment and AWS configuration, as the Lambda does.
    pub async fn from_env() -> Result<Self, SetupError> {
        let clients = AwsClients::from_env().await;
        Self::new(&clients, &Settings::from_env()).await
    }

    /// A detector over explicit clients and settings.
    pub async fn new(clients: &AwsClients, settings: &Settings) -> Result<Self, SetupError> {
        Ok(DetectorService {
            detector: tokio::sync::Mutex::new(detector_from_env(clients, settings).await?),
        })
    }

    /// One S3 event: applies the chunks it names (and any before them) in order.
    pub async fn handle(&self, event: &Value, _deadline: Instant) -> Result<Value, DetectorError> {
        let mut detector = self.detector.lock().await;
        handle_detector_event(&mut detector, event, |_| {}).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_accepts_epoch_and_emulator_forms() {
        let now_ms = chrono::Utc::now().timestamp_millis() as u64;
        let left = |d: Instant| d.saturating_duration_since(Instant::now()).as_millis();
        // 60 s left on AWS: a 3 s margin.
        let d = deadline_from_epoch_ms(now_ms + 60_000, Duration::from_secs(3));
        assert!((56_000..=57_000).contains(&left(d)), "{}", left(d));
        // 2 s left: a quarter of it is kept back instead.
        let d = deadline_from_epoch_ms(now_ms + 2_000, Duration::from_secs(3));
        assert!((1_000..=1_500).contains(&left(d)), "{}", left(d));
        // cargo-lambda's emulator: the timeout itself.
        let d = deadline_from_epoch_ms(600_000, Duration::from_secs(3));
        assert!((596_000..=597_000).contains(&left(d)), "{}", left(d));
        // Already past: nothing left, no panic.
        assert_eq!(
            left(deadline_from_epoch_ms(
                now_ms - 5_000,
                Duration::from_secs(3)
            )),
            0
        );
    }
}
