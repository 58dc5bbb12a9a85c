//! The chunker's cursor: where in which version of which source file the next chunk
//! starts, and where the recent chunks started (to re-cut one that went missing). A
//! prefix stream's cursor also says which of its files it is in, how many have joined,
//! and where discovery goes on.

use txpipe_core::layout::StreamName;
use txpipe_core::varint;

/// Position of the chunker in one source: a file, or a prefix whose files join one
/// stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkCursor {
    /// Bucket of the source.
    pub source_bucket: String,
    /// Key of the source file, or the prefix (ending in `/`) of a prefix stream.
    pub source_key: String,
    /// The file the next chunk starts in: the source file itself, or one file of the
    /// prefix.
    pub file_key: String,
    /// Index of that file in the order files joined the stream (0 for a single file).
    pub file: u64,
    /// ETag of the current file when it was opened; a different ETag is another file.
    pub etag: String,
    /// The stream this version of the source feeds (its name includes the version).
    pub stream: StreamName,
    /// R, pinned for the life of the stream.
    pub rows_per_chunk: u64,
    /// Size of the current file in bytes.
    pub size: u64,
    /// The current file's header line, which chunks repeat (empty: the file is not
    /// opened yet).
    pub header: Vec<u8>,
    /// Next chunk number.
    pub next_chunk: u64,
    /// Byte offset of the next chunk's first row in the current file.
    pub offset: u64,
    /// Data rows written to chunks so far.
    pub rows_emitted: u64,
    /// Whether the end-of-stream chunk has been written (or the source had no rows).
    pub finished: bool,
    /// Where the most recent chunks started, oldest first (at most
    /// [`RECENT_CHUNK_STARTS`]): enough to re-cut any chunk the detector has not
    /// applied yet, since backpressure keeps it within that window.
    pub recent: Vec<ChunkStart>,
    /// Bumped by every write: the condition that fences two writers.
    pub version: u64,
    /// Prefix stream: files joined so far.
    pub files: u64,
    /// Prefix stream: the greatest key that joined (listing goes on after it).
    pub newest_key: String,
    /// Prefix stream: where the rolling walk over the whole prefix goes on (it finds
    /// files whose keys sort before `newest_key`, and files changed after joining).
    pub walk_after: String,
    /// Prefix stream: closing was asked for (`txpipe close-stream`); the rows left are
    /// cut as the last chunk.
    pub closing: bool,
    /// Prefix stream: when new data last joined (Unix ms), for cutting a quiet tail.
    pub tail_ms: i64,
    /// Prefix stream: files that joined late (their keys sort before files that had
    /// joined already).
    pub late_files: u64,
    /// Prefix stream: files changed (overwritten) after they joined.
    pub changed_files: u64,
    /// Prefix stream: the latest late or changed files, newest last (at most
    /// [`FLAGGED_NOTES`]), e.g. `late: 2026/12/04/09/part-0007.csv`.
    pub flagged: Vec<String>,
    /// Prefix stream: the header line for headerless files, pinned for the life of
    /// the stream (empty: none).
    pub columns: Vec<u8>,
    /// Prefix stream: why the stream stands still (a file changed before it was cut),
    /// with the way on; empty while it goes on.
    pub blocked: String,
}

/// How many late or changed files a cursor names (the counts go on beyond).
pub const FLAGGED_NOTES: usize = 10;

/// The most chunk starts a cursor remembers (it keeps only the backpressure window's
/// worth, see [`ChunkCursor::remember`]).
pub const RECENT_CHUNK_STARTS: usize = 10_240;

/// Where one chunk started in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkStart {
    /// The chunk.
    pub chunk: u64,
    /// Index of the file it starts in (0 for a single file).
    pub file: u64,
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

    /// A cursor at chunk 0 of a new `stream` over `source_key` (a file, or a prefix
    /// ending in `/`), with no file opened and nothing cut yet.
    pub fn start(
        source_bucket: &str,
        source_key: &str,
        stream: StreamName,
        rows_per_chunk: u64,
    ) -> Self {
        ChunkCursor {
            source_bucket: source_bucket.to_string(),
            source_key: source_key.to_string(),
            file_key: String::new(),
            file: 0,
            etag: String::new(),
            stream,
            rows_per_chunk,
            size: 0,
            header: Vec::new(),
            next_chunk: 0,
            offset: 0,
            rows_emitted: 0,
            finished: false,
            recent: Vec::new(),
            version: 0,
            files: 0,
            newest_key: String::new(),
            walk_after: String::new(),
            closing: false,
            tail_ms: 0,
            late_files: 0,
            changed_files: 0,
            flagged: Vec::new(),
            blocked: String::new(),
            columns: Vec::new(),
        }
    }

    /// Whether the source is a prefix whose files join one stream.
    pub fn is_prefix(&self) -> bool {
        self.source_key.ends_with('/')
    }

    /// Notes a late or changed file (`what`: `late: <key>` or `changed: <key> …`).
    pub fn flag(&mut self, what: String) {
        self.flagged.push(what);
        if self.flagged.len() > FLAGGED_NOTES {
            self.flagged.remove(0);
        }
    }

    /// Where the next chunk starts.
    pub fn next_start(&self) -> ChunkStart {
        ChunkStart {
            chunk: self.next_chunk,
            file: self.file,
            offset: self.offset,
            first_row: self.rows_emitted + 1,
        }
    }

    /// Data rows of chunk `k` (< `next_chunk`), if its start is remembered.
    pub fn rows_of(&self, k: u64) -> Option<u64> {
        let start = self.start_of(k)?;
        let end = match self.start_of(k + 1) {
            Some(next) => next.first_row,
            None if k + 1 == self.next_chunk => self.rows_emitted + 1,
            None => return None,
        };
        Some(end - start.first_row)
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
    /// difference from the previous entry (a prefix stream's also give the file).
    pub fn encode_recent(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.recent.len() * 8);
        let mut prev = ChunkStart::default();
        varint::put(&mut out, self.recent.len() as u64);
        for s in &self.recent {
            varint::put(&mut out, s.chunk.wrapping_sub(prev.chunk));
            varint::put(&mut out, s.offset.wrapping_sub(prev.offset));
            varint::put(&mut out, s.first_row.wrapping_sub(prev.first_row));
            if self.is_prefix() {
                varint::put(&mut out, s.file.wrapping_sub(prev.file));
            }
            prev = *s;
        }
        out
    }

    /// Reads [`ChunkCursor::encode_recent`]'s form (`with_file` for a prefix stream's);
    /// `None` if it is damaged.
    pub fn decode_recent(bytes: &[u8], with_file: bool) -> Option<Vec<ChunkStart>> {
        let mut pos = 0;
        let n = varint::read(bytes, &mut pos)? as usize;
        if n > RECENT_CHUNK_STARTS {
            return None;
        }
        let mut prev = ChunkStart::default();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = ChunkStart {
                chunk: prev.chunk.wrapping_add(varint::read(bytes, &mut pos)?),
                file: 0,
                offset: prev.offset.wrapping_add(varint::read(bytes, &mut pos)?),
                first_row: prev.first_row.wrapping_add(varint::read(bytes, &mut pos)?),
            };
            if with_file {
                s.file = prev.file.wrapping_add(varint::read(bytes, &mut pos)?);
            }
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
            file_key: "k.csv".into(),
            etag: "\"e\"".into(),
            size: 100,
            header: b"h\n".to_vec(),
            offset: 2,
            ..ChunkCursor::start("b", "k.csv", StreamName::parse("k.00000000").unwrap(), 10)
        }
    }

    #[test]
    fn recent_starts_round_trip_and_stay_bounded() {
        let mut c = cursor();
        for k in 0..(RECENT_CHUNK_STARTS as u64 + 5) {
            c.remember(
                ChunkStart {
                    file: 0,
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
        assert_eq!(
            ChunkCursor::decode_recent(&bytes, false),
            Some(c.recent.clone())
        );
        assert_eq!(
            ChunkCursor::decode_recent(&bytes[..bytes.len() - 1], false),
            None
        );
        assert_eq!(ChunkCursor::decode_recent(&[0xff], false), None);
        // The backpressure window is all that is kept: 616 starts stay a few KB.
        let mut small = cursor();
        for k in 0..1_000u64 {
            small.remember(
                ChunkStart {
                    file: 0,
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
