//! The detector's head item: the one record whose conditional update commits a chunk.

use txpipe_core::engine::Totals;
use txpipe_core::layout::StreamName;

/// Everything needed to know where a stream's detector stands and to rebuild it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorHead {
    /// The stream.
    pub stream: StreamName,
    /// Chunks `0..next_chunk` are applied.
    pub next_chunk: u64,
    /// Incremented by every commit; the commit condition.
    pub version: u64,
    /// The latest snapshot (None: no snapshot yet, rebuild from chunk 0's delta).
    pub snapshot: Option<SnapshotRef>,
    /// Bytes of the deltas written since that snapshot (drives when the next is due).
    pub delta_bytes_since_snapshot: u64,
    /// Next S3 detection batch number.
    pub next_batch: u64,
    /// Detections waiting for a full batch (the batcher's compact stored form; fewer
    /// than one file's worth, so bounded).
    pub pending: Vec<u8>,
    /// Whether the end-of-stream chunk has been applied and the last batch flushed.
    pub finished: bool,
    /// A finished stream whose final prune has not succeeded yet: state objects the
    /// head does not name may be left. The chunker's watch wakes the detector until
    /// they are gone (no later snapshot would catch them).
    pub prune_pending: bool,
    /// Settings fingerprint (thresholds, R, detections per file and importance table)
    /// the state was built with.
    pub fingerprint: String,
    /// The chunker's cursor this stream comes from (`s3://bucket/key`), learned from
    /// the chunks; used to measure lag.
    pub source: Option<String>,
    /// Running totals, for status.
    pub totals: Totals,
    /// Unix milliseconds of the last write.
    pub updated_ms: i64,
    /// The next chunk failed and why; parked when it failed too often for a reason
    /// that repeats.
    pub failure: Option<ChunkFailure>,
}

/// A snapshot of the whole state after chunks `0..next`, stored in `parts` objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRef {
    /// The snapshot covers chunks `0..next`.
    pub next: u64,
    /// Number of part objects.
    pub parts: u32,
    /// Total size in bytes.
    pub bytes: u64,
}

/// Failed attempts at the stream's next chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkFailure {
    /// The chunk.
    pub chunk: u64,
    /// The last error, in full.
    pub reason: String,
    /// Attempts that failed for a reason that repeats.
    pub attempts: u64,
    /// Unix milliseconds of the first failed attempt.
    pub first_ms: i64,
    /// Unix milliseconds of the last one.
    pub last_ms: i64,
    /// Whether the stream is parked at this chunk: nothing is applied until an operator
    /// resumes it (`txpipe resume`).
    pub parked: bool,
    /// The chunk object is missing or does not match what was cut: the chunker's
    /// watch writes it again from the source on its next tick, without waiting for
    /// the stall period.
    pub recut: bool,
}

impl DetectorHead {
    /// The head of a stream nothing has been applied to.
    pub fn empty(stream: &StreamName, fingerprint: &str) -> Self {
        DetectorHead {
            stream: stream.clone(),
            next_chunk: 0,
            version: 0,
            snapshot: None,
            delta_bytes_since_snapshot: 0,
            next_batch: 0,
            pending: Vec::new(),
            finished: false,
            prune_pending: false,
            fingerprint: fingerprint.to_string(),
            source: None,
            totals: Totals::default(),
            updated_ms: 0,
            failure: None,
        }
    }

    /// The parked chunk, if the stream is parked.
    pub fn parked(&self) -> Option<&ChunkFailure> {
        self.failure.as_ref().filter(|f| f.parked)
    }
}
