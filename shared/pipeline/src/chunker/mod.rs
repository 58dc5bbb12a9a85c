//! The chunker (mechanism X): cut the next R rows of the source into a chunk object, then
//! move the cursor with a conditional write. The chunk key depends only on the source
//! and the chunk number, so a crash between the two steps rewrites the same object
//! with the same bytes; two overlapping runs are fenced by the cursor condition.

mod service;
mod watch;

pub use service::{ChunkerResponse, ChunkerService, SourceTick};
pub use watch::{StreamWatch, Watch};

use crate::config::Config;
use crate::store::cursor::ChunkStart;
use crate::store::{ChunkCursor, CursorStore, Fenced, ObjectStore, StateStore, StoreError};
use std::time::{Duration, Instant};
use txpipe_core::cutting::{cut_rows, read_header, Cut};
use txpipe_core::layout::{stream_for_source_version, StreamName};
use txpipe_core::parse::HeaderError;

/// Object metadata on every chunk: 1-based source row number of its first data row.
pub const META_FIRST_ROW: &str = "txpipe-first-row";
/// Object metadata: data rows in the chunk.
pub const META_ROWS: &str = "txpipe-rows";
/// Object metadata: `true` on the end-of-stream chunk.
pub const META_LAST: &str = "txpipe-last";
/// Object metadata: R, the stream's rows per chunk.
pub const META_ROWS_PER_CHUNK: &str = "txpipe-rows-per-chunk";
/// Object metadata: the chunker's cursor the chunk came from (`s3://bucket/key`).
pub const META_SOURCE: &str = "txpipe-source";
/// Object metadata: the ETag of the source version the chunk was cut from.
pub const META_SOURCE_ETAG: &str = "txpipe-source-etag";

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
    /// Backpressure: no chunk is cut while the detector is this many chunks behind.
    pub max_lag_chunks: u64,
}

impl ChunkerSettings {
    /// The chunker's part of the configuration, for its first source.
    pub fn from_config(c: &Config) -> Self {
        Self::for_source(c, c.source.transactions_key())
    }

    /// The chunker's part of the configuration, for the source `key`.
    pub fn for_source(c: &Config, key: &str) -> Self {
        ChunkerSettings {
            source_bucket: c.source.bucket.clone(),
            source_key: key.to_string(),
            bucket: c.bucket.clone(),
            rows_per_chunk: c.shape.rows_per_chunk,
            interval: c.chunker.interval,
            budget: c.chunker.budget,
            read_window: c.chunker.read_window,
            max_lag_chunks: c.chunker.max_lag_chunks,
        }
    }

    /// The cursor id of the source.
    pub fn source_id(&self) -> String {
        ChunkCursor::source_id(&self.source_bucket, &self.source_key)
    }
}

/// The chunker could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ChunkerError {
    /// A remote call failed (including a source that changed under the cursor).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source object is gone while its stream is still being cut.
    #[error("source s3://{bucket}/{key} is gone although its stream is not finished: restore the same file there, or upload a new one and start it as a new stream with `txpipe restart-source`")]
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
    /// The stream was started with another R.
    #[error("stream {stream} of s3://{bucket}/{key} is cut with R={pinned} rows per chunk, but this chunker is configured with R={configured}; restore TXPIPE_ROWS_PER_CHUNK={pinned}, or start the file anew as a new stream with `txpipe restart-source`")]
    RowsPerChunkChanged {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// The stream.
        stream: StreamName,
        /// R pinned in the cursor.
        pinned: u64,
        /// R configured now.
        configured: u64,
    },
    /// A chunk cannot be re-cut: where it started is no longer remembered.
    #[error("chunk {chunk} of stream {stream} cannot be re-cut: the cursor remembers where chunks {oldest}.. started only")]
    CannotRecut {
        /// The stream.
        stream: StreamName,
        /// The chunk.
        chunk: u64,
        /// The oldest chunk whose start is remembered.
        oldest: u64,
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
    /// The stream the chunks belong to (none while waiting for the source file).
    pub stream: Option<StreamName>,
    /// The source file does not exist yet: nothing to do until it is uploaded.
    pub waiting_for_input: bool,
    /// Chunk slots skipped because the detector was too far behind.
    pub backpressure_waits: u64,
}

/// What opening the cursor found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The cursor, ready to cut from.
    Cursor(ChunkCursor),
    /// The source file is not uploaded yet.
    WaitingForInput,
}

impl Opened {
    /// The cursor, if there is one.
    pub fn into_cursor(self) -> Option<ChunkCursor> {
        match self {
            Opened::Cursor(cursor) => Some(cursor),
            Opened::WaitingForInput => None,
        }
    }
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

/// The chunker over an object store and a cursor store; with the detector's heads,
/// it also holds back while the detector is too far behind.
pub struct Chunker<'a> {
    objects: &'a dyn ObjectStore,
    cursors: &'a dyn CursorStore,
    heads: Option<&'a dyn StateStore>,
    settings: ChunkerSettings,
    ahead: ReadAhead,
}

impl<'a> Chunker<'a> {
    /// A chunker for one source, without backpressure.
    pub fn new(
        objects: &'a dyn ObjectStore,
        cursors: &'a dyn CursorStore,
        settings: ChunkerSettings,
    ) -> Self {
        Chunker {
            objects,
            cursors,
            heads: None,
            settings,
            ahead: ReadAhead::default(),
        }
    }

    /// Holds back while the detector (whose heads `heads` holds) is more than
    /// `max_lag_chunks` behind.
    pub fn with_backpressure(mut self, heads: &'a dyn StateStore) -> Self {
        self.heads = Some(heads);
        self
    }

    /// The settings.
    pub fn settings(&self) -> &ChunkerSettings {
        &self.settings
    }

    /// Emits chunks until the source is finished or `deadline` leaves no room for
    /// another, pacing one per interval (none in burst mode) and holding back while the
    /// detector is too far behind. `max_chunks` caps this run (tests and replays);
    /// `on_chunk` sees each chunk as it is committed.
    pub async fn run(
        &mut self,
        deadline: Instant,
        max_chunks: Option<u64>,
        mut on_chunk: impl FnMut(&WrittenChunk),
    ) -> Result<ChunkerRun, ChunkerError> {
        let started = Instant::now();
        let deadline = deadline.min(started + self.settings.budget);
        let mut run = ChunkerRun::default();
        let mut cursor = match self.open().await? {
            Opened::Cursor(cursor) => cursor,
            Opened::WaitingForInput => {
                run.waiting_for_input = true;
                return Ok(run);
            }
        };
        // Worst chunk time seen, so a paced run stops before it would overrun.
        let mut slowest = Duration::from_millis(200);
        let mut ticks = 0u32;
        let mut applied: Option<u64> = None;
        loop {
            if cursor.finished || max_chunks.is_some_and(|m| run.written.len() as u64 >= m) {
                break;
            }
            let tick = match self.settings.interval {
                Some(interval) => started + interval * ticks,
                None => Instant::now(),
            };
            if tick + slowest > deadline {
                break;
            }
            tokio::time::sleep_until(tick.into()).await;
            if self.held_back(&cursor, &mut applied).await? {
                run.backpressure_waits += 1;
                ticks += 1;
                if self.settings.interval.is_none() {
                    break; // burst mode: nothing to wait for within this run
                }
                continue;
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
        run.stream = Some(cursor.stream);
        Ok(run)
    }

    /// Whether the detector is `max_lag_chunks` or more behind `cursor`. The head is
    /// read again only when the last reading says so (one read per tick at most while
    /// it keeps up).
    async fn held_back(
        &self,
        cursor: &ChunkCursor,
        applied: &mut Option<u64>,
    ) -> Result<bool, ChunkerError> {
        let Some(heads) = self.heads else {
            return Ok(false);
        };
        let behind = |applied: u64| cursor.next_chunk.saturating_sub(applied);
        if applied.is_some_and(|a| behind(a) < self.settings.max_lag_chunks) {
            return Ok(false);
        }
        let head = heads.load_head(&cursor.stream).await?;
        let a = head.map_or(0, |h| h.next_chunk);
        *applied = Some(a);
        let held = behind(a) >= self.settings.max_lag_chunks;
        if held {
            tracing::warn!(
                stream = %cursor.stream,
                cut = cursor.next_chunk,
                applied = a,
                max_lag = self.settings.max_lag_chunks,
                "backpressure: the detector is too far behind; not cutting"
            );
        }
        Ok(held)
    }

    /// Loads the cursor, creating it from the source's header if there is none. A
    /// source replaced after its stream finished starts a new stream; one replaced
    /// while its stream is still running is refused (never mixed into it).
    pub async fn open(&mut self) -> Result<Opened, ChunkerError> {
        let s = &self.settings;
        let id = s.source_id();
        let stored = self.cursors.load_cursor(&id).await?;
        let Some(info) = self.objects.head(&s.source_bucket, &s.source_key).await? else {
            return match stored {
                // Finished streams need their source no longer.
                Some(cursor) if cursor.finished => Ok(Opened::Cursor(cursor)),
                Some(_) => Err(ChunkerError::NoSource {
                    bucket: s.source_bucket.clone(),
                    key: s.source_key.clone(),
                }),
                None => Ok(Opened::WaitingForInput),
            };
        };
        if let Some(cursor) = stored {
            if cursor.etag == info.etag {
                if cursor.rows_per_chunk != s.rows_per_chunk {
                    return Err(ChunkerError::RowsPerChunkChanged {
                        bucket: s.source_bucket.clone(),
                        key: s.source_key.clone(),
                        stream: cursor.stream,
                        pinned: cursor.rows_per_chunk,
                        configured: s.rows_per_chunk,
                    });
                }
                return Ok(Opened::Cursor(cursor));
            }
            if !cursor.finished {
                return Err(StoreError::SourceChanged {
                    bucket: s.source_bucket.clone(),
                    key: s.source_key.clone(),
                    expected: cursor.etag,
                }
                .into());
            }
            let fresh = self.fresh_cursor(info.etag, info.size).await?;
            tracing::info!(
                finished = %cursor.stream,
                started = %fresh.stream,
                "source replaced after its stream finished: starting a new stream"
            );
            return match self.cursors.replace_cursor(&fresh, &cursor.stream).await? {
                Fenced::Written => Ok(Opened::Cursor(fresh)),
                Fenced::Lost => Ok(Opened::Cursor(self.reload(&id).await?)),
            };
        }
        let fresh = self.fresh_cursor(info.etag, info.size).await?;
        match self.cursors.create_cursor(&fresh).await? {
            Fenced::Written => Ok(Opened::Cursor(fresh)),
            // Another invocation created it first: use theirs.
            Fenced::Lost => Ok(Opened::Cursor(self.reload(&id).await?)),
        }
    }

    /// A cursor at chunk 0 of the source version `etag`, from its header.
    pub async fn fresh_cursor(&self, etag: String, size: u64) -> Result<ChunkCursor, ChunkerError> {
        let s = &self.settings;
        let mut buf = Vec::new();
        let header = loop {
            let at_eof = buf.len() as u64 >= size;
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
                    &etag,
                )
                .await?;
            if more.is_empty() {
                return Err(self.truncated(from, size));
            }
            buf.extend_from_slice(&more);
        };
        Ok(ChunkCursor {
            source_bucket: s.source_bucket.clone(),
            source_key: s.source_key.clone(),
            stream: stream_for_source_version(&s.source_bucket, &s.source_key, &etag),
            etag,
            rows_per_chunk: s.rows_per_chunk,
            size,
            header: header.line,
            next_chunk: 0,
            offset: header.data_offset,
            rows_emitted: 0,
            finished: false,
            recent: Vec::new(),
        })
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
        let start = ChunkStart {
            chunk: cursor.next_chunk,
            offset: cursor.offset,
            first_row: cursor.rows_emitted + 1,
        };
        let (bytes, consumed, rows, last) = self.cut_at(cursor, start).await?;
        let mut next = ChunkCursor {
            next_chunk: cursor.next_chunk + u64::from(rows > 0),
            offset: cursor.offset + consumed,
            rows_emitted: cursor.rows_emitted + rows,
            finished: last,
            ..cursor.clone()
        };
        if rows > 0 {
            // The backpressure window, plus room for the chunks of one tick in flight.
            next.remember(start, self.settings.max_lag_chunks as usize + 64);
        }
        Ok(Some(PreparedChunk {
            number: cursor.next_chunk,
            key: cursor.stream.chunk_key(cursor.next_chunk),
            bytes,
            rows,
            first_row: start.first_row,
            last,
            next,
        }))
    }

    /// Cuts chunk `k` again, exactly as it was first cut (chunks are deterministic
    /// slices of one source version), to restore a chunk object that went missing or to
    /// announce it to the detector again.
    pub async fn recut(
        &mut self,
        cursor: &ChunkCursor,
        k: u64,
    ) -> Result<PreparedChunk, ChunkerError> {
        let start = cursor
            .start_of(k)
            .filter(|_| k < cursor.next_chunk)
            .ok_or_else(|| ChunkerError::CannotRecut {
                stream: cursor.stream.clone(),
                chunk: k,
                oldest: cursor.recent.first().map_or(cursor.next_chunk, |s| s.chunk),
            })?;
        let (bytes, _, rows, last) = self.cut_at(cursor, start).await?;
        Ok(PreparedChunk {
            number: k,
            key: cursor.stream.chunk_key(k),
            bytes,
            rows,
            first_row: start.first_row,
            last,
            next: cursor.clone(),
        })
    }

    /// The chunk starting at `start`: its bytes (header first), the source bytes it
    /// takes, its rows, and whether it ends the stream.
    async fn cut_at(
        &mut self,
        cursor: &ChunkCursor,
        start: ChunkStart,
    ) -> Result<(Vec<u8>, u64, u64, bool), ChunkerError> {
        if self.ahead.offset != start.offset {
            self.ahead = ReadAhead {
                offset: start.offset,
                bytes: Vec::new(),
            };
        }
        let mut window = self.settings.read_window.max(1);
        let (consumed, rows, last) = loop {
            let end = start.offset + self.ahead.bytes.len() as u64;
            let at_eof = end >= cursor.size;
            match cut_rows(&self.ahead.bytes, cursor.rows_per_chunk, at_eof) {
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
        Ok((bytes, consumed as u64, rows, last))
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
                    (META_ROWS_PER_CHUNK, chunk.next.rows_per_chunk.to_string()),
                    (META_SOURCE, chunk.next.id()),
                    (META_SOURCE_ETAG, chunk.next.etag.clone()),
                ],
            )
            .await?;
        Ok(())
    }
}
