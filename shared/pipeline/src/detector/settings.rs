//! The detector's settings, read from the environment.

use crate::config::{detections_per_file, rows_per_chunk, ConfigError, PatternConfig, Settings};

/// Where the detector reads and writes, and its thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorSettings {
    /// Pipeline bucket: chunks, detections, snapshots.
    pub bucket: String,
    /// Bucket of CustomerImportance.csv.
    pub importance_bucket: String,
    /// Key of CustomerImportance.csv.
    pub importance_key: String,
    /// Prefix of every stream's chunks (`chunks/`).
    pub chunk_prefix: String,
    /// R, used when a chunk lacks its first-row metadata.
    pub rows_per_chunk: u64,
    /// Detections per S3 file.
    pub per_file: u64,
    /// A snapshot every this many chunks (and at the end of the stream).
    pub snapshot_every: u64,
    /// Pattern thresholds.
    pub pattern: PatternConfig,
}

impl DetectorSettings {
    /// Reads `TXPIPE_BUCKET`, `TXPIPE_SOURCE_BUCKET` (where the importance file lives
    /// too), `TXPIPE_IMPORTANCE_KEY`, `TXPIPE_ROWS_PER_CHUNK`,
    /// `TXPIPE_DETECTIONS_PER_FILE`, `TXPIPE_SNAPSHOT_EVERY` and the pattern thresholds.
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let bucket = s.required(
            "TXPIPE_BUCKET",
            "the pipeline bucket (chunks, detections, state)",
        )?;
        Ok(DetectorSettings {
            importance_bucket: s
                .string("TXPIPE_SOURCE_BUCKET")
                .unwrap_or_else(|| bucket.clone()),
            importance_key: s
                .string("TXPIPE_IMPORTANCE_KEY")
                .unwrap_or_else(|| "input/CustomerImportance.csv".into()),
            bucket,
            chunk_prefix: "chunks/".into(),
            rows_per_chunk: rows_per_chunk(s)?,
            per_file: detections_per_file(s)?,
            snapshot_every: s.number(
                "TXPIPE_SNAPSHOT_EVERY",
                20,
                1..=100_000,
                "chunks from 1 to 100000",
            )?,
            pattern: PatternConfig::from_settings(s)?,
        })
    }

    /// Where a stream's detection files go: `detections/<stream name>/`.
    pub fn detections_prefix(&self, stream: &str) -> String {
        format!(
            "detections/{}",
            stream.strip_prefix(&self.chunk_prefix).unwrap_or(stream)
        )
    }

    /// The snapshot covering chunks `0..next`: `state/<stream>snapshot-<next>.bin`.
    pub fn snapshot_key(&self, stream: &str, next: u64) -> String {
        format!("state/{stream}snapshot-{next:08}.bin")
    }
}
