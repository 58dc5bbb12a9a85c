//! Offline replay: the whole pipeline's logic over an in-memory source, with no AWS.
//! It is the reference every deployed run is compared with, and the `txpipe replay`
//! command.

use crate::batch::{DetectionBatch, DetectionBatcher};
use crate::cutting::split_source;
use crate::detection::Detection;
use crate::engine::{ApplyError, Engine};
use crate::parse::{HeaderError, RejectedRow};
use chrono::{DateTime, Utc};

/// What one chunk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSummary {
    /// Chunk number.
    pub chunk: u64,
    /// Valid rows.
    pub rows: u64,
    /// Rejected rows.
    pub rejected: u64,
    /// New detections.
    pub detections: u64,
    /// Engine time in microseconds.
    pub micros: u64,
}

/// Everything a replay produced.
#[derive(Debug, Default)]
pub struct ReplayOutput {
    /// All detections in global order.
    pub detections: Vec<Detection>,
    /// The S3 batches, in order (the last may be short).
    pub batches: Vec<DetectionBatch>,
    /// One summary per chunk.
    pub chunks: Vec<ChunkSummary>,
    /// Every rejected row.
    pub rejected: Vec<RejectedRow>,
}

/// A replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The source's header is unusable.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A chunk could not be applied.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// Runs `engine` over every chunk of `source`, batching detections `per_file` at a time.
pub fn replay(
    source: &[u8],
    engine: &mut Engine,
    rows_per_chunk: u64,
    per_file: u64,
    mut now: impl FnMut() -> DateTime<Utc>,
) -> Result<ReplayOutput, ReplayError> {
    let mut out = ReplayOutput::default();
    let mut batcher = DetectionBatcher::new(per_file);
    for chunk in split_source(source, rows_per_chunk)? {
        let y_start = now();
        let started = std::time::Instant::now();
        let outcome = engine.apply_chunk(chunk.k, &chunk.bytes, chunk.first_row)?;
        let micros = started.elapsed().as_micros() as u64;
        let detected_at = now();
        let new: Vec<Detection> = outcome
            .detections
            .into_iter()
            .map(|key| Detection {
                key,
                chunk: chunk.k,
                y_start,
                detected_at,
            })
            .collect();
        out.chunks.push(ChunkSummary {
            chunk: chunk.k,
            rows: outcome.delta.rows,
            rejected: outcome.delta.rejected,
            detections: new.len() as u64,
            micros,
        });
        out.rejected.extend(outcome.rejected);
        out.detections.extend(new.iter().cloned());
        out.batches.extend(batcher.push(new));
        if chunk.last {
            out.batches.extend(batcher.flush());
        }
    }
    Ok(out)
}
