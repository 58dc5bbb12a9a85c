//! The chunker (mechanism X): cut the next R rows of the source into a chunk object, then
//! move the cursor with a conditional write. The chunk key depends only on the source
//! and the chunk number, so a crash between the two steps rewrites the same object
//! with the same bytes; two overlapping runs are fenced by the cursor condition.
//!
//! A source is one file, or a prefix whose files join one stream in the order they are
//! discovered (`prefix.rs`); a chunk of a prefix stream may span files, each file's rows
//! under its own header line.

mod prefix;
mod service;
mod watch;

pub use prefix::{close_stream, is_data_file, skip_file};
pub use service::{ChunkerResponse, ChunkerService, SourceTick};
pub use watch::{StreamWatch, Watch};

use crate::clock::{self, Clock};
use crate::config::Config;
use crate::metrics::{emit, Unit};
use crate::store::cursor::ChunkStart;
use crate::store::{
    ChunkCursor, CursorStore, Fenced, ObjectStore, SourceFile, StateStore, StoreError,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use txpipe_core::cutting::{content_hash, cut_rows, read_file_header, read_header, Cut};
use txpipe_core::layout::{
    stream_for_source_version, StreamName, META_CONTENT_HASH, META_FIRST_ROW, META_HEADERS,
    META_LAST, META_ROWS, META_ROWS_PER_CHUNK, META_SOURCE, META_SOURCE_ETAG,
};
use txpipe_core::parse::HeaderError;

/// Where a chunk's rows sit, as its metadata records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkBounds {
    /// Source row number of its first data row (`k·R + 1` when not recorded).
    pub first_row: u64,
    /// Where each later file's header line starts in the chunk.
    pub later_headers: Vec<usize>,
    /// End of stream.
    pub last: bool,
}

impl ChunkBounds {
    /// Reads chunk `k`'s boundaries from its object metadata; `Err` says which value
    /// is damaged.
    pub fn from_metadata(
        metadata: &std::collections::HashMap<String, String>,
        k: u64,
        rows_per_chunk: u64,
    ) -> Result<Self, String> {
        let meta = |name: &str| metadata.get(name).map(String::as_str);
        let later_headers = match meta(META_HEADERS) {
            None | Some("") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|v| v.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    format!("metadata {META_HEADERS}={list:?} is not a list of byte offsets")
                })?,
        };
        Ok(ChunkBounds {
            first_row: meta(META_FIRST_ROW)
                .and_then(|v| v.parse().ok())
                .unwrap_or(k * rows_per_chunk + 1),
            later_headers,
            last: meta(META_LAST) == Some("true"),
        })
    }
}

/// The most files after its first that one chunk spans: their offsets must fit in S3's
/// 2 KB of user metadata. A chunk that reaches it ends at that file's end, short.
pub const MAX_LATER_FILES: usize = 100;

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
    /// Prefix stream: the header line (with its terminator) for files without one.
    pub columns: Option<Vec<u8>>,
    /// Prefix stream: rows that do not fill a chunk are cut once no file has joined
    /// for this long.
    pub flush_after: Duration,
    /// Prefix stream: how often an invocation waiting for data looks for new files.
    pub poll: Duration,
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
            columns: c.source.columns.as_ref().map(|line| {
                let mut line = line.trim_end().as_bytes().to_vec();
                line.push(b'\n');
                line
            }),
            flush_after: c.chunker.flush_after,
            poll: c.chunker.poll,
        }
    }

    /// Whether the source is a prefix whose files join one stream.
    pub fn is_prefix(&self) -> bool {
        self.source_key.ends_with('/')
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
        source: Box<HeaderError>,
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
    /// The prefix stream was started with other columns for headerless files.
    #[error("stream {stream} reads headerless files with the columns {pinned:?}, but this chunker is configured with TXPIPE_SOURCE_COLUMNS={configured:?}; restore it, or close the stream and start a new one (`txpipe close-stream`, then `txpipe restart-source`)")]
    ColumnsChanged {
        /// The stream.
        stream: StreamName,
        /// The columns pinned in the cursor.
        pinned: String,
        /// The columns configured now.
        configured: String,
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
    /// A file of a prefix stream changed or vanished after it joined, before all of it
    /// was cut: the stream stops there rather than mix two versions.
    #[error("stream {stream} stops at file {index} {key}: it changed or vanished after it joined (joined with ETag {etag}). Restore it as it was, or run `txpipe skip-file --key {key}` to end it where the stream stands and go on with the next file (upload new content under a new key: a new key joins the stream)")]
    FileChanged {
        /// The stream.
        stream: StreamName,
        /// The file's key.
        key: String,
        /// Its place in the order files joined.
        index: u64,
        /// The ETag it joined with.
        etag: String,
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

impl ChunkerError {
    /// The source (or a prefix stream's file) changed or vanished since it was cut.
    pub fn source_is_gone(&self) -> bool {
        matches!(
            self,
            ChunkerError::Store(StoreError::SourceChanged { .. })
                | ChunkerError::FileChanged { .. }
                | ChunkerError::NoSource { .. }
        )
    }
}

/// A chunk cut from the source and ready to write, with the cursor that follows it.
#[derive(Debug, Clone)]
pub struct PreparedChunk {
    /// Chunk number.
    pub number: u64,
    /// Object key.
    pub key: String,
    /// Header line then the rows (and, spanning files, each later file's header line
    /// then its rows).
    pub bytes: Vec<u8>,
    /// Where each later file's header line starts in `bytes`.
    pub later_headers: Vec<usize>,
    /// Data rows.
    pub rows: u64,
    /// Source row number of the first data row.
    pub first_row: u64,
    /// End of stream.
    pub last: bool,
    /// ETag of the file the chunk starts in.
    pub etag: String,
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
    /// Prefix stream: files that joined during this invocation.
    pub files_joined: u64,
    /// Prefix stream: files found late (keys sorting before joined ones) this time.
    pub late_files: u64,
    /// Prefix stream: files found changed after joining this time.
    pub changed_files: u64,
    /// Prefix stream: the invocation ended waiting for more rows.
    pub waiting_for_data: bool,
}

/// What opening the cursor found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The cursor, ready to cut from.
    Cursor(Box<ChunkCursor>),
    /// The source file is not uploaded yet.
    WaitingForInput,
}

impl Opened {
    /// The cursor, if there is one.
    pub fn into_cursor(self) -> Option<ChunkCursor> {
        match self {
            Opened::Cursor(cursor) => Some(*cursor),
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
    /// A prefix stream has fewer than R rows left and its tail is not due yet.
    Waiting(ChunkCursor),
}

/// Bytes read ahead of the cursor in one file, kept between chunks of one invocation.
#[derive(Debug, Default)]
struct ReadAhead {
    key: String,
    etag: String,
    offset: u64,
    bytes: Vec<u8>,
}

/// One file of the source, opened: its version and the header its rows go under.
#[derive(Debug, Clone)]
struct OpenFile {
    index: u64,
    key: String,
    etag: String,
    size: u64,
    header: Vec<u8>,
    /// Where its data rows start.
    data_offset: u64,
}

/// Rows cut from one or more files, and where the cut ended.
#[derive(Debug)]
struct Span {
    bytes: Vec<u8>,
    later_headers: Vec<usize>,
    rows: u64,
    /// The file the cut ended in (`None`: a prefix stream with no file yet).
    end: Option<OpenFile>,
    offset: u64,
    /// Nothing but blank lines follows in the file the cut ended in.
    file_end: bool,
    /// ETag of the file the first row is in.
    etag: String,
    /// The chunk spans [`MAX_LATER_FILES`] files after its first and ends here.
    capped: bool,
    /// Where the cut really started in its first file (after that file's header when
    /// the start was the file's beginning): what a re-cut must start from.
    start_offset: u64,
}

/// The chunker over an object store and a cursor store; with the detector's heads,
/// it also holds back while the detector is too far behind.
pub struct Chunker<'a> {
    objects: &'a dyn ObjectStore,
    cursors: &'a dyn CursorStore,
    heads: Option<&'a dyn StateStore>,
    settings: ChunkerSettings,
    clock: Arc<dyn Clock>,
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
            clock: clock::system(),
            ahead: ReadAhead::default(),
        }
    }

    /// Holds back while the detector (whose heads `heads` holds) is more than
    /// `max_lag_chunks` behind.
    pub fn with_backpressure(mut self, heads: &'a dyn StateStore) -> Self {
        self.heads = Some(heads);
        self
    }

    /// Reads time from `clock` (a prefix stream's join times and quiet tail).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &ChunkerSettings {
        &self.settings
    }

    /// Emits chunks until the source is finished or `deadline` leaves no room for
    /// another, pacing one per interval (none in burst mode) and holding back while the
    /// detector is too far behind. A prefix stream looks for new files first and, out
    /// of rows, again every poll period, and is cut as fast as rows are there.
    /// `max_chunks` caps this run (tests and replays); `on_chunk` sees each chunk as it
    /// is committed.
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
            Opened::Cursor(cursor) => *cursor,
            Opened::WaitingForInput => {
                run.waiting_for_input = true;
                return Ok(run);
            }
        };
        let prefix = cursor.is_prefix();
        if prefix && !cursor.finished {
            cursor = self.discover(cursor, true, &mut run).await?;
        }
        let interval = self.settings.interval.filter(|_| !prefix);
        // Worst chunk time seen, so a paced run stops before it would overrun.
        let mut slowest = Duration::from_millis(200);
        let mut ticks = 0u32;
        let mut applied: Option<u64> = None;
        loop {
            if cursor.finished || max_chunks.is_some_and(|m| run.written.len() as u64 >= m) {
                break;
            }
            let tick = match interval {
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
                if interval.is_none() {
                    break; // burst mode: nothing to wait for within this run
                }
                continue;
            }
            let t = Instant::now();
            let step = match self.step(&cursor).await {
                Err(e @ ChunkerError::FileChanged { .. }) => {
                    self.record_blocked(&cursor, &e).await;
                    return Err(e);
                }
                other => other?,
            };
            match step {
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
                Step::Waiting(c) => {
                    match self.wait_for_data(c, deadline, slowest, &mut run).await? {
                        Some(c) => cursor = c,
                        None => {
                            run.waiting_for_data = true;
                            cursor = self.reload(&cursor.id()).await?;
                            break;
                        }
                    }
                }
            }
        }
        run.finished = cursor.finished;
        run.next_chunk = cursor.next_chunk;
        run.stream = Some(cursor.stream);
        prefix::report_discovery(&run);
        Ok(run)
    }

    /// Notes in the cursor why the stream stands still, for `txpipe status` (best
    /// effort: the error itself is what the tick reports).
    async fn record_blocked(&self, cursor: &ChunkCursor, why: &ChunkerError) {
        let text = why.to_string();
        if cursor.blocked == text {
            return;
        }
        let next = ChunkCursor {
            blocked: text,
            version: cursor.version + 1,
            ..cursor.clone()
        };
        if let Err(e) = self.cursors.advance_cursor(&next, cursor.next_chunk).await {
            tracing::warn!(stream = %cursor.stream, error = %e, "could not note the blocked file in the cursor");
        }
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

    /// Loads the cursor, creating it if there is none (from the source's header, or
    /// an empty prefix stream). A source replaced after its stream finished starts a
    /// new stream once the detector has applied every chunk of the old one; one
    /// replaced while its stream is still running is refused (never mixed into it).
    pub async fn open(&mut self) -> Result<Opened, ChunkerError> {
        let s = &self.settings;
        let id = s.source_id();
        let stored = self.cursors.load_cursor(&id).await?;
        if s.is_prefix() {
            return match stored {
                Some(cursor) => self.opened(cursor),
                None => {
                    let fresh = self.fresh_prefix_cursor();
                    match self.cursors.create_cursor(&fresh).await? {
                        Fenced::Written => Ok(Opened::Cursor(Box::new(fresh))),
                        Fenced::Lost => Ok(Opened::Cursor(Box::new(self.reload(&id).await?))),
                    }
                }
            };
        }
        let Some(info) = self.objects.head(&s.source_bucket, &s.source_key).await? else {
            return match stored {
                // Finished streams need their source no longer.
                Some(cursor) if cursor.finished => Ok(Opened::Cursor(Box::new(cursor))),
                Some(_) => Err(ChunkerError::NoSource {
                    bucket: s.source_bucket.clone(),
                    key: s.source_key.clone(),
                }),
                None => Ok(Opened::WaitingForInput),
            };
        };
        if let Some(cursor) = stored {
            if cursor.etag == info.etag {
                return self.opened(cursor);
            }
            if !cursor.finished {
                return Err(StoreError::SourceChanged {
                    bucket: s.source_bucket.clone(),
                    key: s.source_key.clone(),
                    expected: cursor.etag,
                }
                .into());
            }
            // The old stream is cut but maybe not applied: keep its cursor (so the
            // watch goes on announcing its chunks) until the detector has them all.
            if let Some(heads) = self.heads {
                let applied = heads
                    .load_head(&cursor.stream)
                    .await?
                    .map_or(0, |h| h.next_chunk);
                if applied < cursor.next_chunk {
                    tracing::info!(
                        stream = %cursor.stream,
                        applied,
                        cut = cursor.next_chunk,
                        "source replaced; the new file starts once the old stream is applied"
                    );
                    return Ok(Opened::Cursor(Box::new(cursor)));
                }
            }
            let fresh = self.fresh_cursor(info.etag, info.size).await?;
            tracing::info!(
                finished = %cursor.stream,
                started = %fresh.stream,
                "source replaced after its stream finished: starting a new stream"
            );
            return match self.cursors.replace_cursor(&fresh, &cursor.stream).await? {
                Fenced::Written => Ok(Opened::Cursor(Box::new(fresh))),
                Fenced::Lost => Ok(Opened::Cursor(Box::new(self.reload(&id).await?))),
            };
        }
        let fresh = self.fresh_cursor(info.etag, info.size).await?;
        match self.cursors.create_cursor(&fresh).await? {
            Fenced::Written => Ok(Opened::Cursor(Box::new(fresh))),
            // Another invocation created it first: use theirs.
            Fenced::Lost => Ok(Opened::Cursor(Box::new(self.reload(&id).await?))),
        }
    }

    /// Opened, unless the cursor's stream is cut with another R (or, over a prefix,
    /// other columns for headerless files) than configured.
    fn opened(&self, cursor: ChunkCursor) -> Result<Opened, ChunkerError> {
        let s = &self.settings;
        let configured = s.columns.clone().unwrap_or_default();
        if cursor.is_prefix() && cursor.columns != configured {
            return Err(ChunkerError::ColumnsChanged {
                stream: cursor.stream,
                pinned: String::from_utf8_lossy(&cursor.columns)
                    .trim_end()
                    .to_string(),
                configured: String::from_utf8_lossy(&configured).trim_end().to_string(),
            });
        }
        if cursor.rows_per_chunk != s.rows_per_chunk {
            return Err(ChunkerError::RowsPerChunkChanged {
                bucket: s.source_bucket.clone(),
                key: s.source_key.clone(),
                stream: cursor.stream,
                pinned: cursor.rows_per_chunk,
                configured: s.rows_per_chunk,
            });
        }
        Ok(Opened::Cursor(Box::new(cursor)))
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
                    source: Box::new(source),
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
                return Err(self.truncated(&s.source_key, from, size));
            }
            buf.extend_from_slice(&more);
        };
        let stream = stream_for_source_version(&s.source_bucket, &s.source_key, &etag);
        Ok(ChunkCursor {
            file_key: s.source_key.clone(),
            etag,
            size,
            header: header.line,
            offset: header.data_offset,
            ..ChunkCursor::start(&s.source_bucket, &s.source_key, stream, s.rows_per_chunk)
        })
    }

    async fn reload(&self, id: &str) -> Result<ChunkCursor, StoreError> {
        self.cursors.load_cursor(id).await?.ok_or_else(|| {
            StoreError::corrupt(id, "cursor vanished after a conditional write lost")
        })
    }

    fn truncated(&self, key: &str, at: u64, size: u64) -> ChunkerError {
        ChunkerError::Truncated {
            bucket: self.settings.source_bucket.clone(),
            key: key.to_string(),
            at,
            size,
        }
    }

    /// One chunk: cut, write, commit the cursor.
    pub async fn step(&mut self, cursor: &ChunkCursor) -> Result<Step, ChunkerError> {
        let t = Instant::now();
        let Some(prepared) = self.prepare(cursor).await? else {
            return Ok(match cursor.finished {
                true => Step::Finished(cursor.clone()),
                false => Step::Waiting(cursor.clone()),
            });
        };
        let cut = prepared.next.next_chunk > cursor.next_chunk;
        // A single file's chunk k is the same bytes however often it is cut: written
        // first, committed after. A prefix stream's depends on what had joined and on
        // the clock (a quiet tail, a close): its boundaries are committed first, then
        // only the winner writes it, so chunk k never exists in two versions. A crash
        // in between leaves it missing, and the watch cuts it again from the
        // committed boundaries.
        let commit_first = cursor.is_prefix();
        if cut && !commit_first {
            self.put(&prepared).await?;
        }
        match self
            .cursors
            .advance_cursor(&prepared.next, cursor.next_chunk)
            .await?
        {
            Fenced::Written => {
                if cut && commit_first {
                    self.put(&prepared).await?;
                }
                let written = WrittenChunk {
                    number: prepared.number,
                    key: prepared.key,
                    rows: prepared.rows,
                    bytes: prepared.bytes.len() as u64,
                    last: prepared.last,
                    micros: t.elapsed().as_micros() as u64,
                };
                if !cut {
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

    /// Cuts the chunk at `cursor`: `None` when the cursor is finished, or when a prefix
    /// stream has fewer than R rows left and neither closing nor a quiet tail says to
    /// cut them. A source with no data rows gives a 0-row prepared chunk that only
    /// finishes the cursor; a closing prefix stream whose rows ended exactly at a chunk
    /// boundary gets a last chunk of no rows, so the end is still marked.
    pub async fn prepare(
        &mut self,
        cursor: &ChunkCursor,
    ) -> Result<Option<PreparedChunk>, ChunkerError> {
        if cursor.finished {
            return Ok(None);
        }
        let mut start = cursor.next_start();
        let r = cursor.rows_per_chunk;
        let span = self.cut_span(cursor, start, r).await?;
        start.offset = span.start_offset;
        let last = if !cursor.is_prefix() {
            span.file_end
        } else if span.rows == r || span.capped {
            let end = span.end.as_ref().map_or(0, |f| f.index);
            cursor.closing
                && span.file_end
                && self
                    .cursors
                    .file_at(&cursor.stream, end + 1)
                    .await?
                    .is_none()
        } else if cursor.closing {
            true
        } else {
            let quiet = self.clock.now_ms() - cursor.tail_ms;
            if span.rows == 0 || quiet < self.settings.flush_after.as_millis() as i64 {
                return Ok(None);
            }
            false
        };
        let cut = span.rows > 0 || (last && cursor.is_prefix() && cursor.next_chunk > 0);
        let mut next = ChunkCursor {
            next_chunk: cursor.next_chunk + u64::from(cut),
            offset: span.offset,
            rows_emitted: cursor.rows_emitted + span.rows,
            finished: last,
            version: cursor.version + 1,
            blocked: String::new(),
            ..cursor.clone()
        };
        if let Some(end) = &span.end {
            next.file = end.index;
            next.file_key = end.key.clone();
            next.etag = end.etag.clone();
            next.size = end.size;
            next.header = end.header.clone();
        }
        if cut {
            // The backpressure window, plus room for the chunks of one tick in flight.
            next.remember(start, self.settings.max_lag_chunks as usize + 64);
        }
        Ok(Some(PreparedChunk {
            number: cursor.next_chunk,
            key: cursor.stream.chunk_key(cursor.next_chunk),
            bytes: span.bytes,
            later_headers: span.later_headers,
            rows: span.rows,
            first_row: start.first_row,
            last,
            etag: span.etag,
            next,
        }))
    }

    /// Cuts chunk `k` again, exactly as it was first cut (chunks are deterministic
    /// slices of pinned file versions), to restore a chunk object that went missing or
    /// to announce it to the detector again.
    pub async fn recut(
        &mut self,
        cursor: &ChunkCursor,
        k: u64,
    ) -> Result<PreparedChunk, ChunkerError> {
        let cannot = || ChunkerError::CannotRecut {
            stream: cursor.stream.clone(),
            chunk: k,
            oldest: cursor.recent.first().map_or(cursor.next_chunk, |s| s.chunk),
        };
        let start = cursor
            .start_of(k)
            .filter(|_| k < cursor.next_chunk)
            .ok_or_else(cannot)?;
        let want = match cursor.is_prefix() {
            true => cursor.rows_of(k).ok_or_else(cannot)?,
            false => cursor.rows_per_chunk,
        };
        let span = self.cut_span(cursor, start, want).await?;
        let last = match cursor.is_prefix() {
            true => cursor.finished && k + 1 == cursor.next_chunk,
            false => span.file_end,
        };
        Ok(PreparedChunk {
            number: k,
            key: cursor.stream.chunk_key(k),
            bytes: span.bytes,
            later_headers: span.later_headers,
            rows: span.rows,
            first_row: start.first_row,
            last,
            etag: span.etag,
            next: cursor.clone(),
        })
    }

    /// The file with index `index` in `cursor`'s stream, opened (`None`: a prefix
    /// stream with no such file yet).
    async fn file_for(
        &self,
        cursor: &ChunkCursor,
        index: u64,
    ) -> Result<Option<OpenFile>, ChunkerError> {
        if !cursor.is_prefix() || (index == cursor.file && !cursor.file_key.is_empty()) {
            return Ok(Some(OpenFile {
                index: cursor.file,
                key: cursor.file_key.clone(),
                etag: cursor.etag.clone(),
                size: cursor.size,
                header: cursor.header.clone(),
                data_offset: 0,
            }));
        }
        match self.cursors.file_at(&cursor.stream, index).await? {
            Some(file) => Ok(Some(self.open_file(cursor, &file).await?)),
            None => Ok(None),
        }
    }

    /// Reads the header of a prefix stream's file: its own, or the configured columns
    /// for a file without one. A file whose header lacks a needed column still goes
    /// into chunks (its rows are rejected with the reason), and is counted.
    async fn open_file(
        &self,
        cursor: &ChunkCursor,
        file: &SourceFile,
    ) -> Result<OpenFile, ChunkerError> {
        let stream = &cursor.stream;
        // The columns pinned when the stream started: a re-cut reads headers as the cut did.
        let columns = Some(cursor.columns.as_slice()).filter(|c| !c.is_empty());
        let mut buf = Vec::new();
        let header = loop {
            let at_eof = buf.len() as u64 >= file.size;
            if let Some(header) = read_file_header(&buf, at_eof, columns) {
                break header;
            }
            let from = buf.len() as u64;
            let more = self
                .file_range(
                    stream,
                    file,
                    from,
                    (from + (64 << 10).max(from)).min(file.size),
                )
                .await?;
            if more.is_empty() {
                return Err(self.truncated(&file.key, from, file.size));
            }
            buf.extend_from_slice(&more);
        };
        if let Some(problem) = &header.problem {
            tracing::error!(stream = %stream, file = %file.key, error = %problem, "file header unusable: its rows are rejected with the reason (a file without readable line endings is skipped whole); the stream goes on");
            emit("chunker", &[("BadHeaderFiles", 1.0, Unit::Count)]);
        }
        Ok(OpenFile {
            index: file.index,
            key: file.key.clone(),
            etag: file.etag.clone(),
            size: file.size,
            header: header.line,
            data_offset: header.data_offset.min(file.size),
        })
    }

    /// Bytes of a prefix stream's file, only from the version that joined.
    async fn file_range(
        &self,
        stream: &StreamName,
        file: &SourceFile,
        start: u64,
        end: u64,
    ) -> Result<Vec<u8>, ChunkerError> {
        let bucket = &self.settings.source_bucket;
        match self
            .objects
            .get_range(bucket, &file.key, start, end, &file.etag)
            .await
        {
            Err(StoreError::SourceChanged { .. }) => Err(ChunkerError::FileChanged {
                stream: stream.clone(),
                key: file.key.clone(),
                index: file.index,
                etag: file.etag.clone(),
            }),
            other => Ok(other?),
        }
    }

    /// Up to `want` rows from `start`: from the file it is in and, in a prefix stream,
    /// on through the files that joined after it, each later file's rows under its
    /// own header line.
    async fn cut_span(
        &mut self,
        cursor: &ChunkCursor,
        start: ChunkStart,
        want: u64,
    ) -> Result<Span, ChunkerError> {
        let mut span = Span {
            bytes: Vec::new(),
            later_headers: Vec::new(),
            rows: 0,
            end: None,
            offset: start.offset,
            file_end: false,
            etag: cursor.etag.clone(),
            capped: false,
            start_offset: start.offset,
        };
        let Some(mut file) = self.file_for(cursor, start.file).await? else {
            return Ok(span);
        };
        let mut offset = start.offset.max(file.data_offset);
        span.start_offset = offset;
        span.etag = file.etag.clone();
        let mut rows_bytes = Vec::new();
        loop {
            rows_bytes.clear();
            let (n, file_end) = self
                .cut_in_file(cursor, &file, offset, want - span.rows, &mut rows_bytes)
                .await?;
            if n > 0 || (span.bytes.is_empty() && !cursor.is_prefix()) {
                if span.bytes.is_empty() {
                    span.etag = file.etag.clone();
                } else {
                    if !span.bytes.ends_with(b"\n") {
                        span.bytes.push(b'\n'); // a file's last row may be unterminated
                    }
                    span.later_headers.push(span.bytes.len());
                }
                span.bytes.extend_from_slice(&file.header);
                span.bytes.extend_from_slice(&rows_bytes);
            }
            offset += rows_bytes.len() as u64;
            span.rows += n;
            span.file_end = file_end;
            if span.rows == want || !file_end || !cursor.is_prefix() {
                break;
            }
            if span.later_headers.len() >= MAX_LATER_FILES {
                span.capped = true;
                break;
            }
            match self.cursors.file_at(&cursor.stream, file.index + 1).await? {
                Some(next) => {
                    file = self.open_file(cursor, &next).await?;
                    offset = file.data_offset;
                }
                None => break,
            }
        }
        if span.bytes.is_empty() {
            span.bytes = file.header.clone();
        }
        span.offset = offset;
        span.end = Some(file);
        Ok(span)
    }

    /// Up to `want` rows of `file` from `offset`, appended to `out`: the rows cut and
    /// whether nothing but blank lines follows them in the file.
    async fn cut_in_file(
        &mut self,
        cursor: &ChunkCursor,
        file: &OpenFile,
        offset: u64,
        want: u64,
        out: &mut Vec<u8>,
    ) -> Result<(u64, bool), ChunkerError> {
        let a = &self.ahead;
        if a.offset != offset || a.key != file.key || a.etag != file.etag {
            self.ahead = ReadAhead {
                key: file.key.clone(),
                etag: file.etag.clone(),
                offset,
                bytes: Vec::new(),
            };
        }
        let mut window = self.settings.read_window.max(1);
        let (consumed, rows, last) = loop {
            let end = offset + self.ahead.bytes.len() as u64;
            let at_eof = end >= file.size;
            match cut_rows(&self.ahead.bytes, want, at_eof) {
                Cut::Done {
                    consumed,
                    rows,
                    last,
                } => break (consumed, rows, last),
                Cut::NeedMore => {
                    let stop = (end + window).min(file.size);
                    let more = match cursor.is_prefix() {
                        true => {
                            let joined = SourceFile {
                                index: file.index,
                                key: file.key.clone(),
                                etag: file.etag.clone(),
                                size: file.size,
                                joined_ms: 0,
                                late: false,
                                changed: None,
                            };
                            self.file_range(&cursor.stream, &joined, end, stop).await?
                        }
                        false => {
                            self.objects
                                .get_range(&cursor.source_bucket, &file.key, end, stop, &file.etag)
                                .await?
                        }
                    };
                    if more.is_empty() {
                        return Err(self.truncated(&file.key, end, file.size));
                    }
                    self.ahead.bytes.extend_from_slice(&more);
                    window = window.saturating_mul(2);
                }
            }
        };
        out.extend_from_slice(&self.ahead.bytes[..consumed]);
        self.ahead.bytes.drain(..consumed);
        self.ahead.offset += consumed as u64;
        Ok((rows, last))
    }

    /// Writes chunk `k`'s stored object again, as it is (its write announces it to the
    /// detector), when it cannot be cut again because `why` (the source is gone). With
    /// no object left, the chunk is lost for good: `why` says so, loudly.
    pub async fn rewrite_stored(
        &self,
        cursor: &ChunkCursor,
        k: u64,
        why: ChunkerError,
    ) -> Result<(), ChunkerError> {
        let key = cursor.stream.chunk_key(k);
        let Some(stored) = self.objects.get(&self.settings.bucket, &key).await? else {
            tracing::error!(stream = %cursor.stream, chunk = k, error = %why, "a chunk the detector has not applied is gone, and its source too");
            return Err(why);
        };
        let metadata: Vec<(&str, String)> = stored
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        self.objects
            .put(&self.settings.bucket, &key, stored.bytes, &metadata)
            .await?;
        Ok(())
    }

    /// Writes a prepared chunk under its deterministic key.
    pub async fn put(&self, chunk: &PreparedChunk) -> Result<(), ChunkerError> {
        let mut metadata = vec![
            (META_FIRST_ROW, chunk.first_row.to_string()),
            (META_ROWS, chunk.rows.to_string()),
            (META_LAST, chunk.last.to_string()),
            (META_ROWS_PER_CHUNK, chunk.next.rows_per_chunk.to_string()),
            (META_SOURCE, chunk.next.id()),
            (META_SOURCE_ETAG, chunk.etag.clone()),
            (
                META_CONTENT_HASH,
                format!("{:016x}", content_hash(&chunk.bytes)),
            ),
        ];
        if !chunk.later_headers.is_empty() {
            let offsets: Vec<String> = chunk.later_headers.iter().map(|o| o.to_string()).collect();
            metadata.push((META_HEADERS, offsets.join(",")));
        }
        self.objects
            .put(
                &self.settings.bucket,
                &chunk.key,
                chunk.bytes.clone(),
                &metadata,
            )
            .await?;
        Ok(())
    }
}
