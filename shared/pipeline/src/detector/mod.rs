//! Mechanism Y as a service: apply each chunk exactly once, in order, write its outputs
//! idempotently, then commit with one conditional write (DESIGN.md invariants 1, 2, 4).
//!
//! A warm detector keeps each stream's engine in memory and proves it current through
//! the commit condition; any failure drops that memory, so the next invocation
//! rebuilds from the last snapshot plus the deltas after it.

mod event;
mod outputs;
mod settings;

pub use event::{targets_from_event, ChunkTarget, EventTargets};
pub use outputs::{ChunkRecord, ChunkSink, PairRow, ProcessedRow, SinkError};
pub use settings::DetectorSettings;

use crate::batch::DetectionBatcher;
use crate::chunker::{META_FIRST_ROW, META_LAST};
use crate::detection::Detection;
use crate::engine::{ApplyError, ChunkDelta, CodecError, Engine};
use crate::layout::chunk_key;
use crate::parse::{HeaderError, ImportanceTable, RejectedRow, TransactionReader};
use crate::store::{
    CursorStore, DetectorHead, Fenced, ObjectStore, RequestCounter, StateStore, StoreError,
};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// A step boundary inside one chunk's processing, where tests can stop the detector
/// as if the process died there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// The chunk object has been read.
    AfterRead,
    /// Full detection batches are in S3.
    AfterS3,
    /// The chunk's rows are in Postgres.
    AfterSink,
    /// The snapshot (when one is due) is in S3.
    AfterSnapshot,
    /// The head has moved.
    AfterCommit,
}

impl FaultPoint {
    /// Every boundary, in processing order.
    pub const ALL: [FaultPoint; 5] = [
        FaultPoint::AfterRead,
        FaultPoint::AfterS3,
        FaultPoint::AfterSink,
        FaultPoint::AfterSnapshot,
        FaultPoint::AfterCommit,
    ];
}

/// Decides whether to fail at a boundary of a chunk (test seam; `None` in production).
pub type FaultHook = Arc<dyn Fn(FaultPoint, u64) -> bool + Send + Sync>;

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
    /// Stored state was built with other thresholds or another importance file.
    #[error("stream {stream} was built with settings `{stored}`, but this detector runs with `{current}`; start a new stream (new source key) or restore the settings")]
    SettingsChanged {
        /// Stream.
        stream: String,
        /// Stored fingerprint.
        stored: String,
        /// This detector's fingerprint.
        current: String,
    },
    /// Stored state does not decode or fit.
    #[error("stream {stream}: stored state is unusable: {why}")]
    State {
        /// Stream.
        stream: String,
        /// What is wrong.
        why: String,
    },
    /// Another writer kept winning the commit.
    #[error("stream {stream}: chunk {chunk} commit lost to another writer {attempts} times")]
    Contended {
        /// Stream.
        stream: String,
        /// Chunk.
        chunk: u64,
        /// Attempts made.
        attempts: u32,
    },
    /// A fault injected by a test.
    #[error("injected fault {point:?} at chunk {chunk}")]
    Injected {
        /// Where.
        point: FaultPoint,
        /// Which chunk.
        chunk: u64,
    },
}

/// One applied chunk, with its figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedChunk {
    /// Stream prefix.
    pub stream: String,
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
    /// Size of the chunk's stored state delta, in bytes (it drives DynamoDB write cost).
    pub delta_bytes: u64,
    /// Whether this was the end-of-stream chunk.
    pub last: bool,
    /// Chunks the chunker had created beyond this one when the invocation ended
    /// (lag; from the cursor when a lag probe is set, else from the event).
    pub behind: u64,
    /// Milliseconds per step: read, apply, S3 outputs, sink, snapshot, commit, total.
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
    objects: Arc<dyn ObjectStore>,
    state: Arc<dyn StateStore>,
    sink: Arc<dyn ChunkSink>,
    requests: RequestCounter,
    settings: DetectorSettings,
    importance: Arc<ImportanceTable>,
    importance_rejected: Vec<RejectedRow>,
    fingerprint: String,
    warm: HashMap<String, StreamState>,
    fault: Option<FaultHook>,
    lag_probe: Option<LagProbe>,
}

/// Where to read how many chunks the chunker has created, to report lag.
struct LagProbe {
    cursors: Arc<dyn CursorStore>,
    source_id: String,
    stream: String,
}

/// Commit attempts before giving up on a contended stream.
const COMMIT_ATTEMPTS: u32 = 3;

impl Detector {
    /// Loads CustomerImportance.csv and makes a detector. `requests` must be the
    /// counter the stores and sink increment.
    pub async fn new(
        objects: Arc<dyn ObjectStore>,
        state: Arc<dyn StateStore>,
        sink: Arc<dyn ChunkSink>,
        requests: RequestCounter,
        settings: DetectorSettings,
    ) -> Result<Self, DetectorError> {
        let (bucket, key) = (&settings.importance_bucket, &settings.importance_key);
        let importance_error = |why: String| DetectorError::Importance {
            bucket: bucket.clone(),
            key: key.clone(),
            why,
        };
        let object = objects.get(bucket, key).await?.ok_or_else(|| {
            importance_error(
                "does not exist; upload CustomerImportance.csv there or set TXPIPE_IMPORTANCE_KEY"
                    .into(),
            )
        })?;
        let load = ImportanceTable::parse(&object.bytes)
            .map_err(|e: HeaderError| importance_error(e.to_string()))?;
        let fingerprint = format!(
            "{};importance={:016x}",
            settings.pattern.fingerprint(),
            content_hash(&object.bytes)
        );
        Ok(Detector {
            objects,
            state,
            sink,
            requests,
            settings,
            importance: Arc::new(load.table),
            importance_rejected: load.rejected,
            fingerprint,
            warm: HashMap::new(),
            fault: None,
            lag_probe: None,
        })
    }

    /// Installs a fault hook (tests).
    pub fn with_fault_hook(mut self, hook: FaultHook) -> Self {
        self.fault = Some(hook);
        self
    }

    /// Reports lag against the chunker's cursor for `source_id` (one read per
    /// invocation that applied chunks of `stream`).
    pub fn with_lag_probe(
        mut self,
        cursors: Arc<dyn CursorStore>,
        source_id: String,
        stream: String,
    ) -> Self {
        self.lag_probe = Some(LagProbe {
            cursors,
            source_id,
            stream,
        });
        self
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

    /// Applies every chunk of `stream` up to and including `upto` that is not applied
    /// yet, in order, stopping cleanly at the first chunk that does not exist.
    pub async fn catch_up(&mut self, stream: &str, upto: u64) -> Result<CatchUp, DetectorError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.try_catch_up(stream, upto).await {
                Err(DetectorError::Contended { .. }) if attempts < COMMIT_ATTEMPTS => {
                    tracing::warn!(
                        stream,
                        attempts,
                        "commit lost to another writer; reloading state"
                    );
                }
                Err(DetectorError::Contended { chunk, .. }) => {
                    return Err(DetectorError::Contended {
                        stream: stream.into(),
                        chunk,
                        attempts,
                    })
                }
                other => return other,
            }
        }
    }

    async fn try_catch_up(&mut self, stream: &str, upto: u64) -> Result<CatchUp, DetectorError> {
        let mut report = CatchUp::default();
        // Taken out of the map while in use: an error leaves it out, so the next
        // invocation rebuilds from storage instead of trusting half-applied memory.
        let mut st = match self.warm.remove(stream) {
            Some(st) => st,
            None => {
                let t = Instant::now();
                let st = self.rebuild(stream).await?;
                report.reload_ms = Some(t.elapsed().as_millis() as u64);
                st
            }
        };
        if st.head.next_chunk > upto {
            report.duplicate = true;
        }
        while st.head.next_chunk <= upto {
            let j = st.head.next_chunk;
            match self.apply_one(&mut st, stream, j, upto).await? {
                Some(applied) => report.applied.push(applied),
                None => {
                    report.waiting_for = Some(j);
                    break;
                }
            }
        }
        report.next_chunk = st.head.next_chunk;
        self.warm.insert(stream.to_string(), st);
        if let Some(probe) = self.lag_probe.as_ref().filter(|p| p.stream == stream) {
            if !report.applied.is_empty() {
                // Lag is a report, not a duty: a failed read keeps the event's figure.
                if let Ok(Some(cursor)) = probe.cursors.load_cursor(&probe.source_id).await {
                    for a in &mut report.applied {
                        a.behind = cursor.next_chunk.saturating_sub(a.chunk + 1);
                    }
                }
                if let Some(last) = report.applied.last_mut() {
                    last.requests += 1; // the cursor read
                }
            }
        }
        Ok(report)
    }

    /// Rebuilds a stream's state: the head, then the snapshot it names, then the deltas
    /// after that snapshot.
    async fn rebuild(&self, stream: &str) -> Result<StreamState, DetectorError> {
        let bad = |why: String| DetectorError::State {
            stream: stream.into(),
            why,
        };
        let Some(head) = self.state.load_head(stream).await? else {
            return Ok(StreamState {
                engine: Engine::new(self.settings.pattern.clone(), self.importance.clone()),
                head: DetectorHead::empty(stream, &self.fingerprint),
                batcher: DetectionBatcher::new(self.settings.per_file),
            });
        };
        if head.fingerprint != self.fingerprint {
            return Err(DetectorError::SettingsChanged {
                stream: stream.into(),
                stored: head.fingerprint,
                current: self.fingerprint.clone(),
            });
        }
        let mut engine = match head.snapshot_next {
            Some(s) => {
                let key = self.settings.snapshot_key(stream, s);
                let object = self
                    .objects
                    .get(&self.settings.bucket, &key)
                    .await?
                    .ok_or_else(|| bad(format!("snapshot {key} named by the head is missing")))?;
                let engine = Engine::decode_snapshot(
                    &object.bytes,
                    self.settings.pattern.clone(),
                    self.importance.clone(),
                )
                .map_err(|e: CodecError| bad(format!("{key}: {e}")))?;
                if engine.next_chunk() != s {
                    return Err(bad(format!(
                        "{key} covers chunks 0..{}, not 0..{s}",
                        engine.next_chunk()
                    )));
                }
                engine
            }
            None => Engine::new(self.settings.pattern.clone(), self.importance.clone()),
        };
        for (k, bytes) in self
            .state
            .load_deltas(stream, engine.next_chunk(), head.next_chunk)
            .await?
        {
            let delta = ChunkDelta::decode(&bytes).map_err(|e| bad(format!("delta {k}: {e}")))?;
            engine.apply_delta(&delta).map_err(|e| bad(e.to_string()))?;
        }
        let batcher =
            DetectionBatcher::restore(self.settings.per_file, head.next_batch, &head.pending)
                .map_err(|e| bad(e.to_string()))?;
        Ok(StreamState {
            engine,
            head,
            batcher,
        })
    }

    fn fault(&self, point: FaultPoint, chunk: u64) -> Result<(), DetectorError> {
        match &self.fault {
            Some(hook) if hook(point, chunk) => Err(DetectorError::Injected { point, chunk }),
            _ => Ok(()),
        }
    }

    /// Applies chunk `j`: read, apply, outputs, snapshot, commit. `None` when the chunk
    /// does not exist yet.
    async fn apply_one(
        &self,
        st: &mut StreamState,
        stream: &str,
        j: u64,
        newest: u64,
    ) -> Result<Option<AppliedChunk>, DetectorError> {
        let s = &self.settings;
        let started = Instant::now();
        let requests_before = self.requests.get();
        let y_start = Utc::now();
        let key = chunk_key(stream, j);
        let Some(object) = self.objects.get(&s.bucket, &key).await? else {
            return Ok(None);
        };
        let mut millis = StepMillis {
            read: started.elapsed().as_millis() as u64,
            ..StepMillis::default()
        };
        self.fault(FaultPoint::AfterRead, j)?;

        let meta = |name: &str| object.metadata.get(name).map(String::as_str);
        let first_row = meta(META_FIRST_ROW)
            .and_then(|v| v.parse().ok())
            .unwrap_or(j * s.rows_per_chunk + 1);
        let last = meta(META_LAST) == Some("true");
        let t = Instant::now();
        let outcome = match st.engine.apply_chunk(j, &object.bytes, first_row) {
            Ok(outcome) => outcome,
            Err(ApplyError::Header { source, .. }) => {
                tracing::error!(chunk = j, key, error = %source, "chunk header unusable; every row of the chunk is rejected");
                st.engine
                    .reject_chunk(j, &object.bytes, first_row, &source.to_string())
                    .map_err(|e| DetectorError::State {
                        stream: stream.into(),
                        why: e.to_string(),
                    })?
            }
            Err(e) => {
                return Err(DetectorError::State {
                    stream: stream.into(),
                    why: e.to_string(),
                })
            }
        };
        let detected_at = Utc::now();
        let detections: Vec<Detection> = outcome
            .detections
            .iter()
            .map(|key| Detection {
                key: key.clone(),
                chunk: j,
                y_start,
                detected_at,
            })
            .collect();
        millis.apply = t.elapsed().as_millis() as u64;

        let t = Instant::now();
        let mut batches = st.batcher.push(detections.iter().cloned());
        if last {
            batches.extend(st.batcher.flush());
        }
        let detections_prefix = s.detections_prefix(stream);
        for batch in &batches {
            self.objects
                .put(
                    &s.bucket,
                    &batch.key(&detections_prefix),
                    batch.to_jsonl(),
                    &[],
                )
                .await?;
        }
        millis.s3 = t.elapsed().as_millis() as u64;
        self.fault(FaultPoint::AfterS3, j)?;

        let t = Instant::now();
        let transactions = processed_rows(&object.bytes, first_row, &self.importance);
        let pairs = st
            .engine
            .pairs_of(&outcome.delta)
            .map(|p| PairRow {
                merchant: p.merchant.to_string(),
                customer: p.customer.to_string(),
                txns: p.txns,
                cents: p.cents,
                gender: p.gender,
                weight: p.weight,
            })
            .collect::<Vec<_>>();
        self.sink
            .record_chunk(&ChunkRecord {
                stream,
                key: &key,
                chunk: j,
                rows: outcome.delta.rows,
                rejected_count: outcome.delta.rejected,
                started: y_start,
                detections: &detections,
                rejected: &outcome.rejected,
                transactions: &transactions,
                pairs: &pairs,
            })
            .await?;
        millis.sink = t.elapsed().as_millis() as u64;
        self.fault(FaultPoint::AfterSink, j)?;

        let t = Instant::now();
        let mut snapshot_next = st.head.snapshot_next;
        if last || (j + 1).is_multiple_of(s.snapshot_every) {
            self.objects
                .put(
                    &s.bucket,
                    &s.snapshot_key(stream, j + 1),
                    st.engine.encode_snapshot(),
                    &[],
                )
                .await?;
            snapshot_next = Some(j + 1);
            millis.snapshot = t.elapsed().as_millis() as u64;
        }
        self.fault(FaultPoint::AfterSnapshot, j)?;

        let t = Instant::now();
        let head = DetectorHead {
            stream: stream.to_string(),
            next_chunk: j + 1,
            version: st.head.version + 1,
            snapshot_next,
            next_batch: st.batcher.next_batch(),
            pending: st.batcher.encode_pending(),
            finished: last,
            fingerprint: self.fingerprint.clone(),
            totals: st.engine.totals(),
            updated_ms: Utc::now().timestamp_millis(),
        };
        let expected = (st.head.version > 0).then_some(st.head.version);
        let delta = outcome.delta.encode();
        match self.state.commit(&head, expected, j, &delta).await? {
            Fenced::Written => {}
            Fenced::Lost => {
                return Err(DetectorError::Contended {
                    stream: stream.into(),
                    chunk: j,
                    attempts: 1,
                })
            }
        }
        millis.commit = t.elapsed().as_millis() as u64;
        st.head = head;
        self.fault(FaultPoint::AfterCommit, j)?;

        let mut per_pattern = [0u64; 3];
        for d in &detections {
            per_pattern[d.key.pattern.index()] += 1;
        }
        millis.total = started.elapsed().as_millis() as u64;
        Ok(Some(AppliedChunk {
            stream: stream.into(),
            chunk: j,
            rows: outcome.delta.rows,
            rejected: outcome.delta.rejected,
            detections: per_pattern,
            batches: batches.len() as u64,
            requests: self.requests.get() - requests_before,
            delta_bytes: delta.len() as u64,
            last,
            behind: newest.saturating_sub(j),
            millis,
        }))
    }

    /// The stored head of a stream (for status).
    pub async fn head(&self, stream: &str) -> Result<Option<DetectorHead>, DetectorError> {
        Ok(self.state.load_head(stream).await?)
    }
}

/// The valid rows of a chunk with their weights, for the processed-transactions table.
fn processed_rows(bytes: &[u8], first_row: u64, importance: &ImportanceTable) -> Vec<ProcessedRow> {
    let Ok(reader) = TransactionReader::new(bytes, first_row) else {
        return Vec::new();
    };
    reader
        .filter_map(Result::ok)
        .filter_map(|tx| {
            let (customer, merchant) = tx.ids().ok()?;
            Some(ProcessedRow {
                row: tx.row,
                weight: importance.weight(merchant, customer),
                customer: customer.to_string(),
                merchant: merchant.to_string(),
                gender: tx.gender,
                cents: tx.cents,
                raw: String::from_utf8_lossy(tx.raw).into_owned(),
            })
        })
        .collect()
}

/// FNV-1a over the importance file: identifies its content in the state fingerprint
/// (identity, not security).
fn content_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
