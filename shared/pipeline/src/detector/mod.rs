//! The detector (mechanism Y): apply each chunk of a stream exactly once, in order,
//! write its outputs idempotently, then commit with one conditional write.
//!
//! A warm detector keeps each stream's engine in memory and proves it current through
//! the commit condition; any failure drops that memory, so the next invocation
//! rebuilds from the last snapshot plus the deltas after it
//! (`docs/architecture.md#exactly-once`).

mod apply;
mod event;
mod rebuild;
mod service;
mod settings;
mod sink;

pub use event::{targets_from_event, ChunkTarget, EventTargets};
pub use service::{DetectorResponse, DetectorService, StreamReply};
pub use settings::DetectorSettings;
pub use sink::{ChunkRecord, ChunkSink, PairRow, ProcessedRow, SinkError};

use crate::setup::Stores;
use crate::store::{DetectorHead, StoreError};
use crate::timing::millis;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use txpipe_core::batch::DetectionBatcher;
use txpipe_core::engine::Engine;
use txpipe_core::layout::StreamName;
use txpipe_core::parse::{HeaderError, ImportanceTable, RejectedRow};

/// The detector could not finish what an event asked.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    /// A remote call failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output database failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// CustomerImportance.csv is unusable.
    #[error("importance file s3://{bucket}/{key}: {why}")]
    Importance {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// Stored state was built with other settings or another importance file.
    #[error("stream {stream} was built with settings `{stored}`, but this detector runs with `{current}`; start a new stream (new source key) or restore the settings")]
    SettingsChanged {
        /// Stream.
        stream: StreamName,
        /// Stored fingerprint.
        stored: String,
        /// This detector's fingerprint.
        current: String,
    },
    /// Stored state does not decode or fit.
    #[error("stream {stream}: stored state is unusable: {why}")]
    State {
        /// Stream.
        stream: StreamName,
        /// What is wrong.
        why: String,
    },
    /// Another writer kept winning the commit.
    #[error("stream {stream}: chunk {chunk} commit lost to another writer {attempts} times")]
    Contended {
        /// Stream.
        stream: StreamName,
        /// Chunk.
        chunk: u64,
        /// Attempts made.
        attempts: u32,
    },
}

/// One applied chunk, with its figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedChunk {
    /// The stream.
    pub stream: StreamName,
    /// Chunk number.
    pub chunk: u64,
    /// Valid rows.
    pub rows: u64,
    /// Rejected rows.
    pub rejected: u64,
    /// New detections per pattern.
    pub detections: [u64; 3],
    /// Detection files written.
    pub batches: u64,
    /// Remote requests made for this chunk (S3, DynamoDB, Postgres round trips).
    pub requests: u64,
    /// Size of the chunk's stored state delta, in bytes (it drives write cost).
    pub delta_bytes: u64,
    /// Whether this was the end-of-stream chunk.
    pub last: bool,
    /// Chunks the chunker had created beyond this one when the invocation ended
    /// (lag; from the cursor when the stream is the configured source's).
    pub behind: u64,
    /// Milliseconds per step.
    pub millis: StepMillis,
}

/// Milliseconds spent in each step of one chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepMillis {
    /// GET of the chunk.
    pub read: u64,
    /// Engine apply and detect.
    pub apply: u64,
    /// Detection files.
    pub s3: u64,
    /// Postgres.
    pub sink: u64,
    /// Snapshot (0 when none was due).
    pub snapshot: u64,
    /// The conditional commit.
    pub commit: u64,
    /// Everything.
    pub total: u64,
}

/// What one stream's catch-up did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CatchUp {
    /// Chunks applied, in order.
    pub applied: Vec<AppliedChunk>,
    /// The event's chunk was already applied (a duplicate).
    pub duplicate: bool,
    /// A chunk up to the target does not exist yet: a later event completes it.
    pub waiting_for: Option<u64>,
    /// State was rebuilt from storage first, taking this many milliseconds.
    pub reload_ms: Option<u64>,
    /// Chunks applied so far in the stream.
    pub next_chunk: u64,
}

/// One stream's state held by a warm detector.
struct StreamState {
    engine: Engine,
    head: DetectorHead,
    batcher: DetectionBatcher,
}

/// The detector: stores, settings and the importance table, loaded once per container.
pub struct Detector {
    stores: Stores,
    sink: Arc<dyn ChunkSink>,
    settings: DetectorSettings,
    importance: Arc<ImportanceTable>,
    importance_rejected: Vec<RejectedRow>,
    fingerprint: String,
    warm: HashMap<StreamName, StreamState>,
}

/// Commit attempts before giving up on a contended stream.
const COMMIT_ATTEMPTS: u32 = 3;

impl Detector {
    /// Loads CustomerImportance.csv and makes a detector over `stores` and `sink`.
    pub async fn load(
        stores: Stores,
        sink: Arc<dyn ChunkSink>,
        settings: DetectorSettings,
    ) -> Result<Self, DetectorError> {
        let (bucket, key) = (&settings.importance_bucket, &settings.importance_key);
        let importance_error = |why: String| DetectorError::Importance {
            bucket: bucket.clone(),
            key: key.clone(),
            why,
        };
        let object = stores.objects.get(bucket, key).await?.ok_or_else(|| {
            importance_error(
                "does not exist; upload CustomerImportance.csv there or set TXPIPE_IMPORTANCE_KEY"
                    .into(),
            )
        })?;
        let load = ImportanceTable::parse(&object.bytes)
            .map_err(|e: HeaderError| importance_error(e.to_string()))?;
        let fingerprint = format!(
            "{};{};importance={:016x}",
            settings.patterns.fingerprint(),
            settings.shape.fingerprint(),
            content_hash(&object.bytes)
        );
        Ok(Detector {
            stores,
            sink,
            settings,
            importance: Arc::new(load.table),
            importance_rejected: load.rejected,
            fingerprint,
            warm: HashMap::new(),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &DetectorSettings {
        &self.settings
    }

    /// Rows of CustomerImportance.csv that were rejected, with reasons.
    pub fn importance_rejected(&self) -> &[RejectedRow] {
        &self.importance_rejected
    }

    /// The settings fingerprint stored with every stream's state.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Forgets warm state (as a cold container would start).
    pub fn forget(&mut self) {
        self.warm.clear();
    }

    /// Records the importance file's rejected rows in the sink (idempotent).
    pub async fn record_importance_rejects(&self) -> Result<(), DetectorError> {
        self.sink
            .record_importance_rejects(&self.settings.importance_key, &self.importance_rejected)
            .await?;
        Ok(())
    }

    /// The stored head of a stream (for status).
    pub async fn head(&self, stream: &StreamName) -> Result<Option<DetectorHead>, DetectorError> {
        Ok(self.stores.state.load_head(stream).await?)
    }

    /// Applies every chunk of `stream` up to and including `upto` that is not applied
    /// yet, in order, stopping cleanly at the first chunk that does not exist.
    pub async fn catch_up(
        &mut self,
        stream: &StreamName,
        upto: u64,
    ) -> Result<CatchUp, DetectorError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.try_catch_up(stream, upto).await {
                Err(DetectorError::Contended { .. }) if attempts < COMMIT_ATTEMPTS => {
                    tracing::warn!(
                        %stream,
                        attempts,
                        "commit lost to another writer; reloading state"
                    );
                }
                Err(DetectorError::Contended { chunk, .. }) => {
                    return Err(DetectorError::Contended {
                        stream: stream.clone(),
                        chunk,
                        attempts,
                    })
                }
                other => return other,
            }
        }
    }

    async fn try_catch_up(
        &mut self,
        stream: &StreamName,
        upto: u64,
    ) -> Result<CatchUp, DetectorError> {
        let mut report = CatchUp::default();
        // Taken out of the map while in use: an error leaves it out, so the next
        // invocation rebuilds from storage instead of trusting half-applied memory.
        let mut st = match self.warm.remove(stream) {
            Some(st) => st,
            None => {
                let t = Instant::now();
                let st = self.rebuild(stream).await?;
                report.reload_ms = Some(millis(t.elapsed()));
                st
            }
        };
        if st.head.next_chunk > upto {
            report.duplicate = true;
        }
        while st.head.next_chunk <= upto {
            let j = st.head.next_chunk;
            match self.apply_next(&mut st, stream, upto).await? {
                Some(applied) => report.applied.push(applied),
                None => {
                    report.waiting_for = Some(j);
                    break;
                }
            }
        }
        report.next_chunk = st.head.next_chunk;
        self.warm.insert(stream.clone(), st);
        self.measure_lag(stream, &mut report).await;
        Ok(report)
    }

    /// Replaces each applied chunk's lag with the chunker's cursor, when the stream is
    /// the configured source's (one read per invocation).
    async fn measure_lag(&self, stream: &StreamName, report: &mut CatchUp) {
        if report.applied.is_empty() || *stream != self.settings.source_stream {
            return;
        }
        // Lag is a report, not a duty: a failed read keeps the event's figure.
        if let Ok(Some(cursor)) = self
            .stores
            .cursors
            .load_cursor(&self.settings.source_id)
            .await
        {
            for a in &mut report.applied {
                a.behind = cursor.next_chunk.saturating_sub(a.chunk + 1);
            }
        }
        if let Some(last) = report.applied.last_mut() {
            last.requests += 1; // the cursor read
        }
    }
}

/// FNV-1a over the importance file: identifies its content in the state fingerprint
/// (identity, not security).
fn content_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
