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
    /// The latest snapshot covers chunks `0..snapshot_next` (None: no snapshot yet).
    pub snapshot_next: Option<u64>,
    /// Next S3 detection batch number.
    pub next_batch: u64,
    /// Detections waiting for a full batch (stored batcher form).
    pub pending: String,
    /// Whether the end-of-stream chunk has been applied and the last batch flushed.
    pub finished: bool,
    /// Settings fingerprint (thresholds and importance table) the state was built with.
    pub fingerprint: String,
    /// Running totals, for status.
    pub totals: Totals,
    /// Unix milliseconds of the commit.
    pub updated_ms: i64,
}

impl DetectorHead {
    /// The head of a stream nothing has been applied to.
    pub fn empty(stream: &StreamName, fingerprint: &str) -> Self {
        DetectorHead {
            stream: stream.clone(),
            next_chunk: 0,
            version: 0,
            snapshot_next: None,
            next_batch: 0,
            pending: "[]".into(),
            finished: false,
            fingerprint: fingerprint.to_string(),
            totals: Totals::default(),
            updated_ms: 0,
        }
    }
}
