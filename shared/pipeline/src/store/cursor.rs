//! The chunker's cursor: where in which version of which source file the next chunk
//! starts, and where the recent chunks started (to re-cut one that went missing).

use txpipe_core::layout::StreamName;
use txpipe_core::varint;

/// Position of the chunker in one source object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkCursor {
    /// Bucket of the source.
    pub source_bucket: String,
    /// Key of the source.
    pub source_key: String,
    /// ETag of the source when the cursor was made; a different ETag is another file.
    pub etag: String,
    /// The stream this version of the source feeds (its name includes the version).
    pub stream: StreamName,
    /// R, pinned for the life of the stream.
    pub rows_per_chunk: u64,
    /// Size of the source in bytes.
    pub size: u64,
    /// The header line chunks repeat.
    pub header: Vec<u8>,
    /// Next chunk number.
    pub next_chunk: u64,
    /// Byte offset of the next chunk's first row.
    pub offset: u64,
    /// Data rows written to chunks so far.
    pub rows_emitted: u64,
    /// Whether the end-of-stream chunk has been written (or the source had no rows).
    pub finished: bool,
    /// Where the most recent chunks started, oldest first (at most
    /// [`RECENT_CHUNK_STARTS`]): enough to re-cut any chunk the detector has not
    /// applied yet, since backpressure keeps it within that window.
    pub recent: Vec<ChunkStart>,
}

/// The most chunk starts a cursor remembers (it keeps only the backpressure window's
/// worth, see [`ChunkCursor::remember`]).
pub const RECENT_CHUNK_STARTS: usize = 10_240;

/// Where one chunk started in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkStart {
    /// The chunk.
    pub chunk: u64,
    /// Byte offset of its first data row.
    pub offset: u64,
    /// 1-based source row number of its first data row.
    pub first_row: u64,
}

impl ChunkCursor {
    /// The id a cursor is stored under: `s3://bucket/key`.
    pub fn source_id(bucket: &str, key: &str) -> String {
        format!("s3://{bucket}/{key}")
    }

    /// This cursor's id.
    pub fn id(&self) -> String {
        Self::source_id(&self.source_bucket, &self.source_key)
    }

    /// Where chunk `k` started, if it is recent enough to be remembered.
    pub fn start_of(&self, k: u64) -> Option<ChunkStart> {
        self.recent.iter().find(|s| s.chunk == k).copied()
    }

    /// Remembers where a chunk started, keeping the last `window` starts (at most
    /// [`RECENT_CHUNK_STARTS`]). Backpressure keeps every unapplied chunk within the
    /// last `max_lag_chunks`, so that window is all a re-cut can need; a wider one
    /// only makes every cursor write dearer (DynamoDB charges per KB).
    pub fn remember(&mut self, start: ChunkStart, window: usize) {
        let window = window.clamp(1, RECENT_CHUNK_STARTS);
        self.recent.retain(|s| s.chunk != start.chunk);
        self.recent.push(start);
        if self.recent.len() > window {
            let excess = self.recent.len() - window;
            self.recent.drain(..excess);
        }
    }

    /// The remembered starts in their stored form: LEB128 varints, each field as the
    /// difference from the previous entry.
    pub fn encode_recent(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.recent.len() * 8);
        let mut prev = ChunkStart {
            chunk: 0,
            offset: 0,
            first_row: 0,
        };
        varint::put(&mut out, self.recent.len() as u64);
        for s in &self.recent {
            varint::put(&mut out, s.chunk.wrapping_sub(prev.chunk));
            varint::put(&mut out, s.offset.wrapping_sub(prev.offset));
            varint::put(&mut out, s.first_row.wrapping_sub(prev.first_row));
            prev = *s;
        }
        out
    }

    /// Reads [`ChunkCursor::encode_recent`]'s form; `None` if it is damaged.
    pub fn decode_recent(bytes: &[u8]) -> Option<Vec<ChunkStart>> {
        let mut pos = 0;
        let n = varint::read(bytes, &mut pos)? as usize;
        if n > RECENT_CHUNK_STARTS {
            return None;
        }
        let mut prev = ChunkStart {
            chunk: 0,
            offset: 0,
            first_row: 0,
        };
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let s = ChunkStart {
                chunk: prev.chunk.wrapping_add(varint::read(bytes, &mut pos)?),
                offset: prev.offset.wrapping_add(varint::read(bytes, &mut pos)?),
                first_row: prev.first_row.wrapping_add(varint::read(bytes, &mut pos)?),
            };
            out.push(s);
            prev = s;
        }
        (pos == bytes.len()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> ChunkCursor {
        ChunkCursor {
            source_bucket: "b".into(),
            source_key: "k.csv".into(),
            etag: "\"e\"".into(),
            stream: StreamName::parse("k.00000000").unwrap(),
            rows_per_chunk: 10,
            size: 100,
            header: b"h\n".to_vec(),
            next_chunk: 0,
            offset: 2,
            rows_emitted: 0,
            finished: false,
            recent: Vec::new(),
        }
    }

    #[test]
    fn recent_starts_round_trip_and_stay_bounded() {
        let mut c = cursor();
        for k in 0..(RECENT_CHUNK_STARTS as u64 + 5) {
            c.remember(
                ChunkStart {
                    chunk: k,
                    offset: 1_000 * k + 2,
                    first_row: 10 * k + 1,
                },
                usize::MAX,
            );
        }
        assert_eq!(c.recent.len(), RECENT_CHUNK_STARTS);
        assert_eq!(c.recent[0].chunk, 5);
        assert_eq!(c.start_of(4), None);
        assert_eq!(c.start_of(7).map(|s| s.first_row), Some(71));
        let bytes = c.encode_recent();
        assert!(bytes.len() < 100 * 1024, "{}", bytes.len());
        assert_eq!(ChunkCursor::decode_recent(&bytes), Some(c.recent.clone()));
        assert_eq!(ChunkCursor::decode_recent(&bytes[..bytes.len() - 1]), None);
        assert_eq!(ChunkCursor::decode_recent(&[0xff]), None);
        // The backpressure window is all that is kept: 616 starts stay a few KB.
        let mut small = cursor();
        for k in 0..1_000u64 {
            small.remember(
                ChunkStart {
                    chunk: k,
                    offset: 1_300_000 * k + 90,
                    first_row: 10_000 * k + 1,
                },
                616,
            );
        }
        assert_eq!(small.recent.len(), 616);
        assert_eq!(small.recent[0].chunk, 384);
        assert!(
            small.encode_recent().len() < 8 * 1024,
            "{}",
            small.encode_recent().len()
        );
    }
}
