//! The detector (mechanism Y): apply each chunk of a stream exactly once, in order,
//! write its outputs idempotently, then commit with one conditional write.
//!
//! A warm detector keeps each stream's engine in memory and proves it current through
//! the commit condition; any failure drops that memory, so the next invocation
//! rebuilds from the last snapshot plus the deltas after it
//! (`docs/architecture.md#exactly-once`).

mod apply;
mod archive;
mod event;
mod failure;
mod rebuild;
mod service;
mod settings;
mod sink;

pub use event::{targets_from_event, ChunkTarget, EventTargets};
pub use service::{DetectorResponse, DetectorService, StreamReply};
pub use settings::DetectorSettings;
pub use sink::{ChunkRecord, ChunkSink, NoOutputs, PairRow, ProcessedRow, SinkError};

use crate::clock::Clock;
use crate::setup::Stores;
use crate::store::{ChunkCursor, ChunkFailure, DetectorHead, Fenced, Retry, StoreError};
use crate::timing::millis;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use txpipe_core::batch::DetectionBatcher;
use txpipe_core::cutting::content_hash;
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
    /// The sink cannot take a chunk now (asked before the chunk touched the state).
    #[error(transparent)]
    SinkUnreachable(SinkError),
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
    /// A chunk object is not what the chunker cut (metadata missing, rows or first row
    /// not as recorded): it is not applied; the chunker re-cuts it from the source.
    #[error("chunk object {key} does not match what the chunker cut: {why}; it is not applied, and the chunker writes it again from the source on its next tick")]
    ChunkDamaged {
        /// The chunk's key.
        key: String,
        /// What does not match.
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

impl DetectorError {
    /// Whether trying the same chunk again can succeed.
    pub fn retry(&self) -> Retry {
        match self {
            DetectorError::Store(e) => e.retry(),
            DetectorError::Sink(e) | DetectorError::SinkUnreachable(e) => e.retry,
            DetectorError::Contended { .. } => Retry::Transient,
            DetectorError::Importance { .. }
            | DetectorError::SettingsChanged { .. }
            | DetectorError::State { .. } => Retry::Permanent,
            // Every event for it finds it again until the chunker re-cuts it: counted
            // attempts would park a stream the re-cut heals. One it does not heal
            // keeps failing visibly (status, the stall alarm) while kicks back off.
            DetectorError::ChunkDamaged { .. } => Retry::Transient,
        }
    }
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
    pub detections: txpipe_core::PerPattern,
    /// Detection files written.
    pub batches: u64,
    /// Remote requests made for this chunk (S3, DynamoDB, Postgres round trips).
    pub requests: u64,
    /// Size of the chunk's stored state delta, in bytes.
    pub delta_bytes: u64,
    /// Whether a snapshot of the whole state was written after this chunk.
    pub snapshot: bool,
    /// Whether this was the end-of-stream chunk.
    pub last: bool,
    /// Chunks the chunker had created beyond this one when the invocation ended
    /// (lag; from the cursor when the stream is the configured source's).
    pub behind: u64,
    /// Distinct (merchant, customer) pairs in the stream's state after this chunk.
    pub state_pairs: u64,
    /// Heap bytes of the stream's state after this chunk.
    pub state_bytes: u64,
    /// The process's projected peak memory as a percentage of the function's memory
    /// (see [`projected_memory_percent`]), when the function's memory is known.
    pub memory_percent: Option<u64>,
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
    /// A chunk the chunker has cut is gone (expired or deleted) or not what it cut
    /// (overwritten, truncated): the chunker re-cuts it on its next tick.
    pub missing: Option<u64>,
    /// The stream is parked at this chunk: nothing is applied until it is resumed.
    pub parked: Option<ChunkFailure>,
    /// Another invocation holds the stream's lease and applies it.
    pub busy: bool,
    /// The invocation's deadline came before the chunks it could see were applied;
    /// the next invocation (or the chunker's watch) goes on.
    pub deferred: bool,
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
    /// The times an earlier attempt at the head's next chunk fixed (its delta was
    /// written, its commit was not): a redo publishes the same times.
    pinned: Option<ChunkTimes>,
}

/// When a chunk's application started and when its detections were found: fixed by
/// its first attempt and written with its delta before any output, so every output
/// of the chunk, redone or not, carries the same times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkTimes {
    chunk: u64,
    started: chrono::DateTime<chrono::Utc>,
    detected: chrono::DateTime<chrono::Utc>,
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
    clock: Arc<dyn Clock>,
    /// This container's name on stream leases.
    owner: String,
}

/// What a detector process needs besides its streams' state: binary, SDK clients,
/// importance table, a chunk in flight (81 MiB measured with a small state).
pub const MEMORY_BASELINE_BYTES: u64 = 100 << 20;

/// The process's projected peak memory, as a percentage of `limit_mb`, for a state of
/// `state_bytes`: the baseline plus 1.5 times the state, for the snapshot being encoded
/// and allocator slack (`docs/capacity.md`: whole processes peaked at 1.06–1.28 times
/// the engine's heap). A state that will not fit must be seen long before a container
/// dies at every start.
pub fn projected_memory_percent(state_bytes: u64, limit_mb: u64) -> u64 {
    let projected = MEMORY_BASELINE_BYTES + state_bytes.saturating_mul(3) / 2;
    projected.saturating_mul(100) / limit_mb.max(1).saturating_mul(1 << 20)
}

/// Commit attempts before giving up on a contended stream.
const COMMIT_ATTEMPTS: u32 = 3;

/// Time kept back before the deadline: a chunk is not started without this much left
/// on top of the slowest chunk seen so far.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

impl Detector {
    /// Loads CustomerImportance.csv and makes a detector over `stores` and `sink`.
    pub async fn load(
        stores: Stores,
        sink: Arc<dyn ChunkSink>,
        settings: DetectorSettings,
        clock: Arc<dyn Clock>,
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
            owner: format!("detector-{:016x}", clock.now_ms() as u64 ^ lease_nonce()),
            clock,
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

    /// Whether this container holds the stream's state in memory (its next chunk
    /// needs no rebuild).
    pub fn is_warm(&self, stream: &StreamName) -> bool {
        self.warm.contains_key(stream)
    }

    /// A stream's warm state, encoded as a snapshot, with its next chunk: a warm
    /// container and a cold rebuild from storage must hold the same bytes.
    pub fn state_image(&self, stream: &StreamName) -> Option<(u64, Vec<u8>)> {
        self.warm
            .get(stream)
            .map(|st| (st.engine.next_chunk(), st.engine.encode_snapshot()))
    }

    /// A stream's warm state: its head, its engine, and the detections waiting for
    /// their file (`txpipe explain`, after [`Detector::load_stream`]).
    pub fn warm_state(
        &self,
        stream: &StreamName,
    ) -> Option<(&DetectorHead, &Engine, &[txpipe_core::Detection])> {
        let st = self.warm.get(stream)?;
        Some((&st.head, &st.engine, st.batcher.pending()))
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

    /// Rebuilds a stream's state from storage and keeps it warm, applying nothing (as a
    /// cold container would before its first chunk). Returns the next chunk.
    pub async fn load_stream(&mut self, stream: &StreamName) -> Result<u64, DetectorError> {
        let st = self.rebuild(stream).await?;
        let next = st.head.next_chunk;
        self.warm.insert(stream.clone(), st);
        Ok(next)
    }

    /// Applies every chunk of `stream` up to `upto` — or up to the chunker's cursor,
    /// if that is further — that is not applied yet, in order, while one more chunk
    /// fits before `deadline`. Stops cleanly at a chunk that does not exist yet, at a
    /// parked chunk, or when another invocation holds the stream.
    pub async fn catch_up(
        &mut self,
        stream: &StreamName,
        upto: u64,
        deadline: Instant,
    ) -> Result<CatchUp, DetectorError> {
        let mut report = CatchUp::default();
        let mut target = upto;
        loop {
            let lease_ms = millis(deadline.saturating_duration_since(Instant::now())) as i64;
            let now_ms = self.clock.now_ms();
            let leased = self
                .stores
                .state
                .acquire_lease(stream, &self.owner, now_ms, now_ms + lease_ms + 5_000)
                .await?;
            if leased == Fenced::Lost {
                // The holder re-checks the cursor after giving the lease back, so the
                // chunk of this event is not left behind.
                report.busy = true;
                return Ok(report);
            }
            let result = self
                .catch_up_with_retries(stream, target, deadline, &mut report)
                .await;
            if let Err(e) = self.stores.state.release_lease(stream, &self.owner).await {
                tracing::warn!(%stream, error = %e, "could not give the stream's lease back; it expires by itself");
            }
            result?;
            let stopped = report.deferred
                || report.waiting_for.is_some()
                || report.missing.is_some()
                || report.parked.is_some();
            // Chunks cut while the lease was held may have found it taken: look again.
            match self.cursor_of(stream).await {
                Some(cursor) if !stopped && cursor.next_chunk > report.next_chunk => {
                    target = cursor.next_chunk - 1;
                }
                _ => return Ok(report),
            }
        }
    }

    async fn catch_up_with_retries(
        &mut self,
        stream: &StreamName,
        upto: u64,
        deadline: Instant,
        report: &mut CatchUp,
    ) -> Result<(), DetectorError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            // After a lost commit, a finished stream may hold what this container wrote
            // late (a delta after the final prune): the retry tidies it.
            let tidy = attempts > 1;
            match self
                .try_catch_up(stream, upto, deadline, report, tidy)
                .await
            {
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
        deadline: Instant,
        report: &mut CatchUp,
        tidy: bool,
    ) -> Result<(), DetectorError> {
        // Taken out of the map while in use: an error leaves it out, so the next
        // invocation rebuilds from storage instead of trusting half-applied memory.
        let mut st = match self.warm.remove(stream) {
            // Another container may have moved the stream since: one GetItem per
            // invocation says, before anything is written from memory that is stale.
            Some(mut st) => match self.stores.state.load_head(stream).await? {
                Some(head) if head.version == st.head.version => {
                    st.head.failure = head.failure; // a resume clears it in place
                    st
                }
                _ => match self.rebuild_settled(stream).await {
                    Ok(rebuilt) => rebuilt,
                    Err(e) => return self.rebuild_failed(stream, e, report).await,
                },
            },
            None => {
                let t = Instant::now();
                let st = match self.rebuild_settled(stream).await {
                    Ok(st) => st,
                    Err(e) => return self.rebuild_failed(stream, e, report).await,
                };
                report.reload_ms = Some(millis(t.elapsed()));
                st
            }
        };
        if let Some(parked) = st.head.parked() {
            report.parked = Some(parked.clone());
            report.next_chunk = st.head.next_chunk;
            self.warm.insert(stream.clone(), st);
            return Ok(());
        }
        if st.head.finished && (st.head.prune_pending || tidy) {
            self.final_prune(&mut st, stream).await;
        }
        let cursor = match &st.head.source {
            Some(source) => self.load_cursor(source, stream).await,
            None => None,
        };
        let target = cursor
            .as_ref()
            .map_or(upto, |c| upto.max(c.next_chunk.saturating_sub(1)));
        if st.head.next_chunk > upto {
            report.duplicate = true;
        }
        let mut slowest = Duration::ZERO;
        while st.head.next_chunk <= target {
            let j = st.head.next_chunk;
            if Instant::now() + slowest + DEADLINE_MARGIN > deadline {
                report.deferred = true;
                break;
            }
            let started = Instant::now();
            // A single file's stream reads one version of it: its chunks name it.
            let source_etag = cursor
                .as_ref()
                .filter(|c| !c.is_prefix())
                .map(|c| c.etag.as_str());
            match self.apply_next(&mut st, stream, target, source_etag).await {
                Ok(Some(mut applied)) => {
                    if let Some(c) = &cursor {
                        applied.behind = c.next_chunk.saturating_sub(j + 1);
                    }
                    report.applied.push(applied);
                    slowest = slowest.max(started.elapsed());
                }
                // A prefix stream's newest chunk is committed before it is written: not
                // there yet is in flight, not missing (its write announces it; a crash
                // in between is healed by the chunker's watch).
                Ok(None)
                    if cursor.as_ref().is_some_and(|c| {
                        c.next_chunk > j && !(c.is_prefix() && c.next_chunk == j + 1)
                    }) =>
                {
                    let reason = format!(
                        "chunk object {} is missing although the chunker has cut it (expired or deleted); the chunker re-cuts it on its next tick",
                        stream.chunk_key(j)
                    );
                    if !self
                        .record_failure(&mut st.head, j, reason.clone(), Retry::Transient, true)
                        .await
                    {
                        // Another container moved the stream on: this one is behind, and
                        // its chunk is gone because it was applied long ago. Reload.
                        return Err(DetectorError::Contended {
                            stream: stream.clone(),
                            chunk: j,
                            attempts: 1,
                        });
                    }
                    tracing::error!(%stream, chunk = j, "{reason}");
                    report.missing = Some(j);
                    break;
                }
                Ok(None) => {
                    report.waiting_for = Some(j);
                    break;
                }
                Err(e @ DetectorError::Contended { .. }) => return Err(e),
                // Refused before the chunk touched the engine: this state is still the
                // head's, so it stays warm and the next attempt does not rebuild it.
                Err(e @ DetectorError::SinkUnreachable(_)) => {
                    self.record_failure(&mut st.head, j, e.to_string(), e.retry(), false)
                        .await;
                    self.warm.insert(stream.clone(), st);
                    return Err(e);
                }
                // Not applied, and nothing to retry here: the chunker writes it again
                // from the source, whose event applies it. A re-cut that does not
                // cure it counts as a failed attempt, so the stream parks visibly.
                Err(e @ DetectorError::ChunkDamaged { .. }) => {
                    let reason = e.to_string();
                    if !self
                        .record_failure(&mut st.head, j, reason.clone(), e.retry(), true)
                        .await
                    {
                        return Err(DetectorError::Contended {
                            stream: stream.clone(),
                            chunk: j,
                            attempts: 1,
                        });
                    }
                    tracing::error!(%stream, chunk = j, "{reason}");
                    report.parked = st.head.parked().cloned();
                    report.missing = Some(j);
                    break;
                }
                Err(e) => {
                    self.record_failure(&mut st.head, j, e.to_string(), e.retry(), false)
                        .await;
                    return Err(e);
                }
            }
        }
        report.next_chunk = st.head.next_chunk;
        self.warm.insert(stream.clone(), st);
        Ok(())
    }

    /// The chunker's cursor of `source`, if it describes `stream` (a report, not a
    /// duty: a failed read is logged and treated as unknown).
    async fn load_cursor(&self, source: &str, stream: &StreamName) -> Option<ChunkCursor> {
        match self.stores.cursors.load_cursor(source).await {
            Ok(cursor) => cursor.filter(|c| c.stream == *stream),
            Err(e) => {
                tracing::warn!(%stream, error = %e, "could not read the chunker's cursor");
                None
            }
        }
    }

    /// The cursor of the stream, from the warm head's source.
    async fn cursor_of(&self, stream: &StreamName) -> Option<ChunkCursor> {
        let source = self.warm.get(stream)?.head.source.clone()?;
        self.load_cursor(&source, stream).await
    }
}

/// A little entropy for lease owner names, without a random number generator.
fn lease_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    t ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod memory_tests {
    use super::projected_memory_percent;

    #[test]
    fn projected_memory_is_baseline_plus_one_and_a_half_times_the_state() {
        // 100 MiB baseline of a 200 MiB function, no state yet.
        assert_eq!(projected_memory_percent(0, 200), 50);
        // 10 M pairs at 40 B (the measured heap): 100 MiB + 600 MB of 1024 MB.
        assert_eq!(projected_memory_percent(400_000_000, 1024), 65);
        // The same state in 512 MB is over the limit, and says so.
        assert_eq!(projected_memory_percent(400_000_000, 512), 131);
        // Nothing overflows or divides by zero.
        assert!(projected_memory_percent(u64::MAX, 0) > 100);
    }
}
