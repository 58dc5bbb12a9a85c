//! The detector's part of the configuration.

use crate::config::Config;
use txpipe_core::config::{PatternConfig, StreamShape};

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
    /// A snapshot is written once this many deltas follow the last one (or their bytes
    /// reach its size, or the stream ends).
    pub snapshot_max_deltas: u64,
    /// The largest snapshot part object, in bytes.
    pub snapshot_part_bytes: u64,
    /// Failed attempts at one chunk, for a reason that repeats, before it is parked.
    pub park_after_attempts: u64,
    /// Pattern thresholds.
    pub patterns: PatternConfig,
    /// The function's memory in MB, when known (Lambda sets it).
    pub memory_limit_mb: Option<u64>,
}

impl DetectorSettings {
    /// The detector's part of the configuration.
    pub fn from_config(c: &Config) -> Self {
        DetectorSettings {
            bucket: c.bucket.clone(),
            importance_bucket: c.source.bucket.clone(),
            importance_key: c.source.importance_key.clone(),
            shape: c.shape,
            snapshot_max_deltas: c.detector.snapshot_max_deltas,
            snapshot_part_bytes: c.detector.snapshot_part_bytes,
            park_after_attempts: c.detector.park_after_attempts,
            patterns: c.patterns.clone(),
            memory_limit_mb: c.detector.memory_limit_mb,
        }
    }
}
