//! The detector's part of the configuration.

use crate::config::Config;
use crate::store::ChunkCursor;
use txpipe_core::config::{PatternConfig, StreamShape};
use txpipe_core::layout::{stream_for_source, StreamName};

/// Where the detector reads and writes, and its thresholds: the plain values it takes
/// from the [`Config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorSettings {
    /// Pipeline bucket: chunks, detections, snapshots.
    pub bucket: String,
    /// Bucket of CustomerImportance.csv.
    pub importance_bucket: String,
    /// Key of CustomerImportance.csv.
    pub importance_key: String,
    /// R and detections per file.
    pub shape: StreamShape,
    /// A snapshot every this many chunks (and at the end of the stream).
    pub snapshot_every: u64,
    /// Pattern thresholds.
    pub patterns: PatternConfig,
    /// The chunker's cursor of the configured source, read to report lag.
    pub source_id: String,
    /// The configured source's stream (the one the cursor describes).
    pub source_stream: StreamName,
}

impl DetectorSettings {
    /// The detector's part of the configuration.
    pub fn from_config(c: &Config) -> Self {
        DetectorSettings {
            bucket: c.bucket.clone(),
            importance_bucket: c.source.bucket.clone(),
            importance_key: c.source.importance_key.clone(),
            shape: c.shape,
            snapshot_every: c.detector.snapshot_every,
            patterns: c.patterns.clone(),
            source_id: ChunkCursor::source_id(&c.source.bucket, &c.source.transactions_key),
            source_stream: stream_for_source(&c.source.transactions_key),
        }
    }
}
