//! Offline replay: the whole pipeline's logic over an in-memory source, with no AWS.
//! It is the reference every deployed run is compared with, and the `txpipe replay`
//! command.

use crate::batch::{DetectionBatch, DetectionBatcher};
use crate::cutting::{ChunkReadError, ChunkReader};
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

/// What one chunk of a streamed replay produced (see [`replay_from`]).
#[derive(Debug)]
pub struct ReplayedChunk {
    /// The chunk's figures.
    pub summary: ChunkSummary,
    /// Its new detections, in order.
    pub detections: Vec<Detection>,
    /// The S3 batches that became full (and the final one after the last chunk).
    pub batches: Vec<DetectionBatch>,
    /// Its rejected rows.
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
    /// The source could not be read, or an output not written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<ChunkReadError> for ReplayError {
    fn from(e: ChunkReadError) -> Self {
        match e {
            ChunkReadError::Io(e) => ReplayError::Io(e),
            ChunkReadError::Header(e) => ReplayError::Header(e),
        }
    }
}

/// Runs `engine` over every chunk of `source`, batching detections `per_file` at a time.
pub fn replay(
    source: &[u8],
    engine: &mut Engine,
    rows_per_chunk: u64,
    per_file: u64,
    now: impl FnMut() -> DateTime<Utc>,
) -> Result<ReplayOutput, ReplayError> {
    let mut out = ReplayOutput::default();
    replay_from(source, engine, rows_per_chunk, per_file, now, |chunk| {
        out.chunks.push(chunk.summary);
        out.rejected.extend(chunk.rejected);
        out.detections.extend(chunk.detections);
        out.batches.extend(chunk.batches);
        Ok(())
    })?;
    Ok(out)
}

/// One chunk as the replay applies it: its bytes and the boundaries the chunker
/// recorded with it.
#[derive(Debug, Clone, Copy)]
pub struct ChunkToReplay<'a> {
    /// Chunk number.
    pub k: u64,
    /// Header line then rows (and, spanning files, each later file's header and rows).
    pub bytes: &'a [u8],
    /// Where each later file's header line starts in `bytes`.
    pub later_headers: &'a [usize],
    /// Source row number of its first data row.
    pub first_row: u64,
    /// End of stream: the last, short detection file is written after it.
    pub last: bool,
}

/// Applies chunks in order as the detector does and batches their detections: the
/// replay of a file ([`replay_from`]) and of a stream's stored chunk objects alike.
pub struct ChunkReplay<'e> {
    engine: &'e mut Engine,
    batcher: DetectionBatcher,
}

impl<'e> ChunkReplay<'e> {
    /// A replay over `engine`, `per_file` detections per batch.
    pub fn new(engine: &'e mut Engine, per_file: u64) -> Self {
        ChunkReplay {
            engine,
            batcher: DetectionBatcher::new(per_file),
        }
    }

    /// Applies the next chunk.
    pub fn apply(
        &mut self,
        chunk: ChunkToReplay<'_>,
        mut now: impl FnMut() -> DateTime<Utc>,
    ) -> Result<ReplayedChunk, ApplyError> {
        let y_start = now();
        let started = std::time::Instant::now();
        let outcome = self.engine.apply_segments(
            chunk.k,
            chunk.bytes,
            chunk.later_headers,
            chunk.first_row,
            None,
        )?;
        let micros = started.elapsed().as_micros() as u64;
        let detected_at = now();
        let detections: Vec<Detection> = outcome
            .detections
            .into_iter()
            .zip(outcome.evidence)
            .map(|(key, evidence)| Detection {
                key,
                chunk: chunk.k,
                y_start,
                detected_at,
                evidence: Some(evidence),
            })
            .collect();
        let mut batches = self.batcher.push(detections.iter().cloned());
        if chunk.last {
            batches.extend(self.batcher.flush());
        }
        Ok(ReplayedChunk {
            summary: ChunkSummary {
                chunk: chunk.k,
                rows: outcome.delta.rows,
                rejected: outcome.delta.rejected,
                detections: detections.len() as u64,
                micros,
            },
            detections,
            batches,
            rejected: outcome.rejected,
        })
    }
}

/// [`replay`] over a source read piece by piece, handing each chunk's results to
/// `on_chunk` as soon as they exist: memory stays about one chunk, whatever the size of
/// the source.
pub fn replay_from(
    source: impl std::io::Read,
    engine: &mut Engine,
    rows_per_chunk: u64,
    per_file: u64,
    mut now: impl FnMut() -> DateTime<Utc>,
    mut on_chunk: impl FnMut(ReplayedChunk) -> Result<(), std::io::Error>,
) -> Result<(), ReplayError> {
    let mut replay = ChunkReplay::new(engine, per_file);
    let mut chunks = ChunkReader::new(source, rows_per_chunk);
    while let Some(chunk) = chunks.next_chunk()? {
        let replayed = replay.apply(
            ChunkToReplay {
                k: chunk.k,
                bytes: chunk.bytes,
                later_headers: &[],
                first_row: chunk.first_row,
                last: chunk.last,
            },
            &mut now,
        )?;
        on_chunk(replayed)?;
    }
    Ok(())
}
