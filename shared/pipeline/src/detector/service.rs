//! The detector as the Lambda runs it: built once per container (importance table
//! loaded, warm state kept between events), then one [`DetectorService::handle`] per
//! S3 event, with its logs and metrics.

use super::{
    targets_from_event, AppliedChunk, ChunkSink, Detector, DetectorError, DetectorSettings,
};
use crate::aws::AwsClients;
use crate::config::Config;
use crate::metrics::{emit, Unit};
use crate::setup::{SetupError, Stores};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Mutex, MutexGuard};
use txpipe_core::layout::StreamName;

/// The detector service.
pub struct DetectorService {
    detector: Mutex<Detector>,
    /// Whether the importance file's rejected rows are in the sink yet (tried on every
    /// event until it succeeds, so a database outage at cold start loses nothing).
    importance_rejects_recorded: std::sync::atomic::AtomicBool,
}

/// What one detector invocation answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetectorResponse {
    /// `ok`, or `malformed` for an event that is not an S3 notification (it is
    /// answered, not retried: retrying cannot help).
    pub status: &'static str,
    /// Why the event is malformed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// One entry per stream the event named.
    pub streams: Vec<StreamReply>,
    /// Records that named no chunk, each with the reason.
    pub ignored: Vec<String>,
    /// Every chunk applied, with its figures (for in-process callers; not serialized).
    #[serde(skip)]
    pub applied: Vec<AppliedChunk>,
}

/// What happened to one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamReply {
    /// The stream.
    pub stream: String,
    /// The newest chunk the event named.
    pub requested: u64,
    /// Chunks applied, in order.
    pub applied: Vec<u64>,
    /// The requested chunk was already applied.
    pub duplicate: bool,
    /// A chunk not written yet stopped the catch-up here.
    pub waiting_for: Option<u64>,
    /// A chunk the chunker has cut is gone or not what it cut; the chunker re-cuts it.
    pub missing: Option<u64>,
    /// The stream is parked at this chunk: `txpipe resume` once the cause is fixed.
    pub parked: Option<u64>,
    /// Another invocation is applying this stream.
    pub busy: bool,
    /// The deadline came first; the next invocation goes on.
    pub deferred: bool,
    /// Chunks applied so far in the stream.
    pub next_chunk: u64,
}

impl DetectorService {
    /// Reads the process environment and AWS configuration, as the Lambda does.
    pub async fn from_env() -> Result<Self, SetupError> {
        let config = Config::from_env()?;
        let clients = AwsClients::from_env().await;
        let stores = Stores::aws(&clients, &config);
        let sink = stores.postgres(&clients, &config)?;
        Self::new(stores, sink, &config).await
    }

    /// A detector over given stores and sink.
    pub async fn new(
        stores: Stores,
        sink: Arc<dyn ChunkSink>,
        config: &Config,
    ) -> Result<Self, SetupError> {
        Self::with_clock(stores, sink, config, crate::clock::system()).await
    }

    /// The same, reading time from `clock` (tests).
    pub async fn with_clock(
        stores: Stores,
        sink: Arc<dyn ChunkSink>,
        config: &Config,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Result<Self, SetupError> {
        let detector =
            Detector::load(stores, sink, DetectorSettings::from_config(config), clock).await?;
        if let Some(first) = detector.importance_rejected().first() {
            tracing::warn!(
                rejected = detector.importance_rejected().len(),
                first = %first.reason,
                "CustomerImportance.csv has rejected rows; they are stored in rejected_rows"
            );
        }
        Ok(DetectorService {
            detector: Mutex::new(detector),
            importance_rejects_recorded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The detector itself (status, tests).
    pub async fn detector(&self) -> MutexGuard<'_, Detector> {
        self.detector.lock().await
    }

    /// One S3 event: applies the chunks it names (and any before them) in order. A
    /// malformed event is logged and answered; a failure to apply a chunk is an error,
    /// so Lambda retries and the on-failure destination keeps what still fails.
    pub async fn handle(
        &self,
        event: &Value,
        deadline: Instant,
    ) -> Result<DetectorResponse, DetectorError> {
        let mut detector = self.detector.lock().await;
        let targets = match targets_from_event(event) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "malformed event ignored");
                return Ok(DetectorResponse {
                    status: "malformed",
                    error: Some(e.to_string()),
                    streams: Vec::new(),
                    ignored: Vec::new(),
                    applied: Vec::new(),
                });
            }
        };
        for why in &targets.ignored {
            tracing::warn!(reason = %why, "event record ignored");
        }
        if !targets.targets.is_empty() {
            self.record_importance_rejects(&detector).await?;
        }
        let bucket = detector.settings().bucket.clone();
        let mut response = DetectorResponse {
            status: "ok",
            error: None,
            streams: Vec::new(),
            ignored: targets.ignored,
            applied: Vec::new(),
        };
        for target in &targets.targets {
            if target.bucket != bucket {
                tracing::warn!(event_bucket = %target.bucket, %bucket, "event from another bucket; reading the configured bucket");
            }
            let report = detector
                .catch_up(&target.stream, target.chunk, deadline)
                .await?;
            log_catch_up(&target.stream, target.chunk, &report);
            response.streams.push(StreamReply {
                stream: target.stream.to_string(),
                requested: target.chunk,
                applied: report.applied.iter().map(|a| a.chunk).collect(),
                duplicate: report.duplicate,
                waiting_for: report.waiting_for,
                missing: report.missing,
                parked: report.parked.as_ref().map(|p| p.chunk),
                busy: report.busy,
                deferred: report.deferred,
                next_chunk: report.next_chunk,
            });
            response.applied.extend(report.applied);
        }
        Ok(response)
    }
}

impl DetectorService {
    async fn record_importance_rejects(&self, detector: &Detector) -> Result<(), DetectorError> {
        use std::sync::atomic::Ordering;
        if self.importance_rejects_recorded.load(Ordering::Relaxed) {
            return Ok(());
        }
        detector.record_importance_rejects().await?;
        self.importance_rejects_recorded
            .store(true, Ordering::Relaxed);
        Ok(())
    }
}

fn log_catch_up(stream: &StreamName, requested: u64, report: &super::CatchUp) {
    if let Some(ms) = report.reload_ms {
        tracing::info!(%stream, reload_ms = ms, next_chunk = report.next_chunk, "state loaded");
    }
    for a in &report.applied {
        report_applied(a);
    }
    if report.duplicate {
        tracing::info!(%stream, chunk = requested, "duplicate event: chunk already applied");
    }
    if let Some(k) = report.waiting_for {
        tracing::info!(%stream, chunk = k, "chunk not written yet; a later event completes it");
    }
    if report.missing.is_some() {
        emit("detector", &[("MissingChunks", 1.0, Unit::Count)]);
    }
    if let Some(p) = &report.parked {
        tracing::error!(
            %stream,
            chunk = p.chunk,
            attempts = p.attempts,
            reason = %p.reason,
            resume = %format!("txpipe resume --stream {stream}"),
            "stream parked: nothing is applied until the cause is fixed and it is resumed"
        );
        emit("detector", &[("ChunksParked", 1.0, Unit::Count)]);
    }
    if report.busy {
        tracing::info!(%stream, "another invocation is applying this stream; it picks this chunk up");
    }
    if report.deferred {
        tracing::warn!(%stream, next_chunk = report.next_chunk, "deadline reached with chunks left; the next invocation goes on");
    }
}

/// Projected memory use at which the detector warns (the template's alarm uses the
/// same figure).
const MEMORY_WARN_PERCENT: u64 = 80;

/// Logs one applied chunk and emits its metrics.
fn report_applied(a: &AppliedChunk) {
    tracing::info!(
        stream = %a.stream,
        chunk = a.chunk,
        rows = a.rows,
        rejected = a.rejected,
        detections = %a.detections,
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
        state_pairs = a.state_pairs,
        state_bytes = a.state_bytes,
        "chunk applied"
    );
    if let Some(percent) = a.memory_percent.filter(|p| *p >= MEMORY_WARN_PERCENT) {
        tracing::warn!(
            stream = %a.stream,
            state_pairs = a.state_pairs,
            state_bytes = a.state_bytes,
            memory_percent = percent,
            "the stream's state nears the function's memory: raise DetectorMemory (docs/capacity.md) before a cold start fails for want of it"
        );
    }
    // One `Detections<PatIdN>` metric per pattern.
    let per_pattern: Vec<(String, f64)> = a
        .detections
        .iter()
        .map(|(p, n)| (format!("Detections{}", p.id()), n as f64))
        .collect();
    let mut values = vec![
        ("ChunksApplied", 1.0, Unit::Count),
        ("RowsProcessed", a.rows as f64, Unit::Count),
        ("RowsRejected", a.rejected as f64, Unit::Count),
    ];
    for (name, n) in &per_pattern {
        values.push((name.as_str(), *n, Unit::Count));
    }
    values.extend([
        ("ChunkMillis", a.millis.total as f64, Unit::Milliseconds),
        ("LagChunks", a.behind as f64, Unit::Count),
        ("StatePairs", a.state_pairs as f64, Unit::Count),
        ("StateBytes", a.state_bytes as f64, Unit::Bytes),
    ]);
    if let Some(percent) = a.memory_percent {
        values.push(("StateMemoryPercent", percent as f64, Unit::Percent));
    }
    emit("detector", &values);
}
