//! The chunker (mechanism X): cut the next R rows of the source into a chunk object, then
//! move the cursor with a conditional write. The chunk key depends only on the source
//! and the chunk number, so a crash between the two steps rewrites the same object
//! with the same bytes; two overlapping runs are fenced by the cursor condition.

mod service;

pub use service::{ChunkerResponse, ChunkerService};

use crate::config::Config;
use crate::store::{ChunkCursor, CursorStore, Fenced, ObjectStore, StoreError};
use std::time::{Duration, Instant};
use txpipe_core::cutting::{cut_rows, read_header, Cut};
use txpipe_core::layout::{stream_for_source, StreamName};
use txpipe_core::parse::HeaderError;

/// Object metadata on every chunk: 1-based source row number of its first data row.
pub const META_FIRST_ROW: &str = "txpipe-first-row";
/// Object metadata: data rows in the chunk.
pub const META_ROWS: &str = "txpipe-rows";
/// Object metadata: `true` on the end-of-stream chunk.
pub const META_LAST: &str = "txpipe-last";

/// What the chunker reads and writes, and how fast: the plain values it takes from
/// the [`Config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkerSettings {
    /// Bucket of transactions.csv.
    pub source_bucket: String,
    /// Key of transactions.csv.
    pub source_key: String,
    /// Bucket the chunks go to.
    pub bucket: String,
    /// Data rows per chunk (R).
    pub rows_per_chunk: u64,
    /// Time between chunks; `None` is burst mode (no pacing).
    pub interval: Option<Duration>,
    /// How long one invocation keeps emitting.
    pub budget: Duration,
    /// Bytes fetched per ranged GET (grows when a chunk needs more).
    pub read_window: u64,
}

impl ChunkerSettings {
    /// The chunker's part of the configuration.
    pub fn from_config(c: &Config) -> Self {
        ChunkerSettings {
            source_bucket: c.source.bucket.clone(),
            source_key: c.source.transactions_key.clone(),
            bucket: c.bucket.clone(),
            rows_per_chunk: c.shape.rows_per_chunk,
            interval: c.chunker.interval,
            budget: c.chunker.budget,
            read_window: c.chunker.read_window,
        }
    }

    /// The stream this source's chunks belong to.
    pub fn stream(&self) -> StreamName {
        stream_for_source(&self.source_key)
    }
}

/// The chunker could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ChunkerError {
    /// A remote call failed (including a source that changed under the cursor).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source object does not exist.
    #[error("source s3://{bucket}/{key} does not exist: upload transactions.csv there or set TXPIPE_SOURCE_BUCKET / TXPIPE_SOURCE_KEY")]
    NoSource {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// The source's header is unusable.
    #[error("source s3://{bucket}/{key}: {source}")]
    Header {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// What is wrong.
        source: HeaderError,
    },
    /// The source ends before its stated size.
    #[error("source s3://{bucket}/{key} ended at byte {at} before its size {size}")]
    Truncated {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Where reading stopped.
        at: u64,
        /// The size HEAD reported.
        size: u64,
    },
}

/// A chunk cut from the source and ready to write, with the cursor that follows it.
#[derive(Debug, Clone)]
pub struct PreparedChunk {
    /// Chunk number.
    pub number: u64,
    /// Object key.
    pub key: String,
    /// Header line then the rows.
    pub bytes: Vec<u8>,
    /// Data rows.
    pub rows: u64,
    /// Source row number of the first data row.
    pub first_row: u64,
    /// End of stream.
    pub last: bool,
    /// The cursor after this chunk.
    pub next: ChunkCursor,
}

/// One chunk written and committed, for logs and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenChunk {
    /// Chunk number.
    pub number: u64,
    /// Object key.
    pub key: String,
    /// Data rows.
    pub rows: u64,
    /// Object size.
    pub bytes: u64,
    /// End of stream.
    pub last: bool,
    /// Wall time of read + put + commit, in microseconds.
    pub micros: u64,
}

/// What one invocation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChunkerRun {
    /// Chunks this invocation wrote and committed.
    pub written: Vec<WrittenChunk>,
    /// Whether the source is fully chunked.
    pub finished: bool,
    /// Times another invocation advanced the cursor first.
    pub lost_races: u64,
    /// The cursor's next chunk at the end.
    pub next_chunk: u64,
}

/// Outcome of one step.
#[derive(Debug, Clone)]
pub enum Step {
    /// A chunk was written and the cursor moved.
    Written(WrittenChunk, ChunkCursor),
    /// Another writer moved the cursor first; here is the stored one.
    Lost(ChunkCursor),
    /// The source is finished; nothing to do.
    Finished(ChunkCursor),
}

/// Bytes read ahead of the cursor, kept between chunks of one invocation.
#[derive(Debug, Default)]
struct ReadAhead {
    offset: u64,
    bytes: Vec<u8>,
}

/// The chunker over an object store and a cursor store.
pub struct Chunker<'a> {
    objects: &'a dyn ObjectStore,
    cursors: &'a dyn CursorStore,
    settings: ChunkerSettings,
    ahead: ReadAhead,
}

impl<'a> Chunker<'a> {
    /// A chunker for one source.
    pub fn new(
        objects: &'a dyn ObjectStore,
        cursors: &'a dyn CursorStore,
        settings: ChunkerSettings,
    ) -> Self {
        Chunker {
            objects,
            cursors,
            settings,
            ahead: ReadAhead::default(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &ChunkerSettings {
        &self.settings
    }

    /// Emits chunks until the source is finished or `deadline` leaves no room for
    /// another, pacing one per interval (none in burst mode). `max_chunks` caps this
    /// run (tests and replays); `on_chunk` sees each chunk as it is committed.
    pub async fn run(
        &mut self,
        deadline: Instant,
        max_chunks: Option<u64>,
        mut on_chunk: impl FnMut(&WrittenChunk),
    ) -> Result<ChunkerRun, ChunkerError> {
        let started = Instant::now();
        let deadline = deadline.min(started + self.settings.budget);
        let mut cursor = self.open().await?;
        let mut run = ChunkerRun::default();
        // Worst chunk time seen, so a paced run stops before it would overrun.
        let mut slowest = Duration::from_millis(200);
        let mut ticks = 0u32;
        loop {
            if cursor.finished || max_chunks.is_some_and(|m| run.written.len() as u64 >= m) {
                break;
            }
            if let Some(interval) = self.settings.interval {
                let tick = started + interval * ticks;
                if tick + slowest > deadline {
                    break;
                }
                tokio::time::sleep_until(tick.into()).await;
            } else if Instant::now() + slowest > deadline {
                break;
            }
            let t = Instant::now();
            match self.step(&cursor).await? {
                Step::Written(chunk, next) => {
                    slowest = slowest.max(t.elapsed());
                    on_chunk(&chunk);
                    run.written.push(chunk);
                    cursor = next;
                    ticks += 1;
                }
                Step::Lost(stored) => {
                    run.lost_races += 1;
                    cursor = stored;
                }
                Step::Finished(c) => cursor = c,
            }
        }
        run.finished = cursor.finished;
        run.next_chunk = cursor.next_chunk;
        Ok(run)
    }

    /// Loads the cursor, creating it from the source's header if there is none.
    pub async fn open(&mut self) -> Result<ChunkCursor, ChunkerError> {
        let s = &self.settings;
        let id = ChunkCursor::source_id(&s.source_bucket, &s.source_key);
        if let Some(cursor) = self.cursors.load_cursor(&id).await? {
            return Ok(cursor);
        }
        let info = self
            .objects
            .head(&s.source_bucket, &s.source_key)
            .await?
            .ok_or_else(|| ChunkerError::NoSource {
                bucket: s.source_bucket.clone(),
                key: s.source_key.clone(),
            })?;
        let mut buf = Vec::new();
        let header = loop {
            let at_eof = buf.len() as u64 >= info.size;
            if let Some(result) = read_header(&buf, at_eof) {
                break result.map_err(|source| ChunkerError::Header {
                    bucket: s.source_bucket.clone(),
                    key: s.source_key.clone(),
                    source,
                })?;
            }
            let from = buf.len() as u64;
            let more = self
                .objects
                .get_range(
                    &s.source_bucket,
                    &s.source_key,
                    from,
                    from + (64 << 10).max(from),
                    &info.etag,
                )
                .await?;
            if more.is_empty() {
                return Err(self.truncated(from, info.size));
            }
            buf.extend_from_slice(&more);
        };
        let fresh = ChunkCursor {
            source_bucket: s.source_bucket.clone(),
            source_key: s.source_key.clone(),
            etag: info.etag,
            size: info.size,
            header: header.line,
            next_chunk: 0,
            offset: header.data_offset,
            rows_emitted: 0,
            finished: false,
        };
        match self.cursors.create_cursor(&fresh).await? {
            Fenced::Written => Ok(fresh),
            // Another invocation created it first: use theirs.
            Fenced::Lost => Ok(self.reload(&id).await?),
        }
    }

    async fn reload(&self, id: &str) -> Result<ChunkCursor, StoreError> {
        self.cursors.load_cursor(id).await?.ok_or_else(|| {
            StoreError::corrupt(id, "cursor vanished after a conditional write lost")
        })
    }

    fn truncated(&self, at: u64, size: u64) -> ChunkerError {
        ChunkerError::Truncated {
            bucket: self.settings.source_bucket.clone(),
            key: self.settings.source_key.clone(),
            at,
            size,
        }
    }

    /// One chunk: cut, write, commit the cursor.
    pub async fn step(&mut self, cursor: &ChunkCursor) -> Result<Step, ChunkerError> {
        let t = Instant::now();
        let Some(prepared) = self.prepare(cursor).await? else {
            return Ok(Step::Finished(cursor.clone()));
        };
        if prepared.rows > 0 {
            self.put(&prepared).await?;
        }
        match self
            .cursors
            .advance_cursor(&prepared.next, cursor.next_chunk)
            .await?
        {
            Fenced::Written => {
                let written = WrittenChunk {
                    number: prepared.number,
                    key: prepared.key,
                    rows: prepared.rows,
                    bytes: prepared.bytes.len() as u64,
                    last: prepared.last,
                    micros: t.elapsed().as_micros() as u64,
                };
                if prepared.rows == 0 {
                    // An empty source: finished with no chunk at all.
                    return Ok(Step::Finished(prepared.next));
                }
                Ok(Step::Written(written, prepared.next))
            }
            Fenced::Lost => {
                self.ahead = ReadAhead::default();
                Ok(Step::Lost(self.reload(&cursor.id()).await?))
            }
        }
    }

    /// Cuts the chunk at `cursor` (None when the cursor is finished). A source with no
    /// data rows gives a 0-row prepared chunk that only finishes the cursor.
    pub async fn prepare(
        &mut self,
        cursor: &ChunkCursor,
    ) -> Result<Option<PreparedChunk>, ChunkerError> {
        if cursor.finished {
            return Ok(None);
        }
        if self.ahead.offset != cursor.offset {
            self.ahead = ReadAhead {
                offset: cursor.offset,
                bytes: Vec::new(),
            };
        }
        let mut window = self.settings.read_window.max(1);
        let (consumed, rows, last) = loop {
            let end = cursor.offset + self.ahead.bytes.len() as u64;
            let at_eof = end >= cursor.size;
            match cut_rows(&self.ahead.bytes, self.settings.rows_per_chunk, at_eof) {
                Cut::Done {
                    consumed,
                    rows,
                    last,
                } => break (consumed, rows, last),
                Cut::NeedMore => {
                    let more = self
                        .objects
                        .get_range(
                            &cursor.source_bucket,
                            &cursor.source_key,
                            end,
                            (end + window).min(cursor.size),
                            &cursor.etag,
                        )
                        .await?;
                    if more.is_empty() {
                        return Err(self.truncated(end, cursor.size));
                    }
                    self.ahead.bytes.extend_from_slice(&more);
                    window = window.saturating_mul(2);
                }
            }
        };
        let mut bytes = Vec::with_capacity(cursor.header.len() + consumed);
        bytes.extend_from_slice(&cursor.header);
        bytes.extend_from_slice(&self.ahead.bytes[..consumed]);
        self.ahead.bytes.drain(..consumed);
        self.ahead.offset += consumed as u64;
        let stream = stream_for_source(&cursor.source_key);
        let next = ChunkCursor {
            next_chunk: cursor.next_chunk + u64::from(rows > 0),
            offset: cursor.offset + consumed as u64,
            rows_emitted: cursor.rows_emitted + rows,
            finished: last,
            ..cursor.clone()
        };
        Ok(Some(PreparedChunk {
            number: cursor.next_chunk,
            key: stream.chunk_key(cursor.next_chunk),
            bytes,
            rows,
            first_row: cursor.rows_emitted + 1,
            last,
            next,
        }))
    }

    /// Writes a prepared chunk under its deterministic key.
    pub async fn put(&self, chunk: &PreparedChunk) -> Result<(), ChunkerError> {
        self.objects
            .put(
                &self.settings.bucket,
                &chunk.key,
                chunk.bytes.clone(),
                &[
                    (META_FIRST_ROW, chunk.first_row.to_string()),
                    (META_ROWS, chunk.rows.to_string()),
                    (META_LAST, chunk.last.to_string()),
                ],
            )
            .await?;
        Ok(())
    }
}
