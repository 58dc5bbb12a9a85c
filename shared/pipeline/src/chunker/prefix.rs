//! Prefix streams: every `.csv` file under a prefix joins one stream, once, in the order
//! it is discovered, pinned by its ETag. Discovery lists after the newest key that
//! joined (new keys of a time-ordered layout arrive there), and each invocation also
//! walks one page of the whole prefix, so a key that sorts before files already joined
//! still joins (late, after them) and a file overwritten after it joined is recorded.
//! The stream has no end until it is closed; rows that do not fill a chunk are cut
//! once no file has joined for the flush period.

use super::{Chunker, ChunkerError, ChunkerRun};
use crate::metrics::{emit, Unit};
use crate::store::{ChunkCursor, Fenced, Listed, SourceFile, StoreError};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use txpipe_core::layout::stream_for_source_version;

/// Keys per listing request (S3's most).
const LIST_PAGE: u32 = 1_000;
/// Listing pages for new keys per discovery: a backfill of many files joins over a few
/// discoveries, each bounded.
const NEW_KEY_PAGES: usize = 10;
/// Files per join transaction: DynamoDB takes 100 items, the cursor and 2 per file.
const JOIN_BATCH: usize = 49;
/// File log entries per batch read (BatchGetItem's most).
const LOOKUP_BATCH: usize = 100;

/// Whether a key under the prefix is a data file (`.csv`; folders and other files,
/// such as a manifest, are not).
pub fn is_data_file(key: &str) -> bool {
    key.to_ascii_lowercase().ends_with(".csv")
}

impl Chunker<'_> {
    /// The cursor of a prefix stream with no file yet.
    pub fn fresh_prefix_cursor(&self) -> ChunkCursor {
        let s = &self.settings;
        let created = self.clock.now_ms();
        ChunkCursor {
            source_bucket: s.source_bucket.clone(),
            source_key: s.source_key.clone(),
            file_key: String::new(),
            file: 0,
            etag: String::new(),
            // A stream started again over the same prefix is a new stream.
            stream: stream_for_source_version(
                &s.source_bucket,
                s.source_key.trim_end_matches('/'),
                &created.to_string(),
            ),
            rows_per_chunk: s.rows_per_chunk,
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
            tail_ms: created,
            late_files: 0,
            changed_files: 0,
            flagged: Vec::new(),
        }
    }

    /// Joins the files that appeared after the newest key that joined and, with
    /// `walk`, checks one page of the whole prefix for late and changed files. A
    /// closing or finished stream takes no more files.
    pub(super) async fn discover(
        &mut self,
        mut cursor: ChunkCursor,
        walk: bool,
        run: &mut ChunkerRun,
    ) -> Result<ChunkCursor, ChunkerError> {
        if cursor.closing || cursor.finished {
            return Ok(cursor);
        }
        for _ in 0..NEW_KEY_PAGES {
            let page = self
                .objects
                .list_page(
                    &cursor.source_bucket,
                    &cursor.source_key,
                    &cursor.newest_key,
                    LIST_PAGE,
                )
                .await?;
            let Some(newest) = page.objects.last().map(|o| o.key.clone()) else {
                break;
            };
            let found: Vec<Listed> = page
                .objects
                .into_iter()
                .filter(|o| is_data_file(&o.key))
                .collect();
            match self.join(cursor.clone(), &found, Some(newest), run).await? {
                Some(joined) => cursor = joined,
                // Another invocation moved the cursor: go on from theirs next time.
                None => return Ok(self.reload(&cursor.id()).await?),
            }
            if !page.truncated {
                break;
            }
        }
        if walk {
            cursor = self.walk(cursor, run).await?;
        }
        Ok(cursor)
    }

    /// One page of the rolling walk over the whole prefix, from where the last one
    /// stopped (it starts over at the end): files not in the file log whose keys sort
    /// before the newest join late; joined files with another ETag are recorded as
    /// changed.
    async fn walk(
        &mut self,
        cursor: ChunkCursor,
        run: &mut ChunkerRun,
    ) -> Result<ChunkCursor, ChunkerError> {
        let page = self
            .objects
            .list_page(
                &cursor.source_bucket,
                &cursor.source_key,
                &cursor.walk_after,
                LIST_PAGE,
            )
            .await?;
        let mut next = cursor.clone();
        next.walk_after = match page.truncated {
            true => page
                .objects
                .last()
                .map(|o| o.key.clone())
                .unwrap_or_default(),
            false => String::new(),
        };
        let listed: Vec<Listed> = page
            .objects
            .into_iter()
            .filter(|o| is_data_file(&o.key))
            .collect();
        let mut joined: HashMap<String, SourceFile> = HashMap::new();
        for batch in listed.chunks(LOOKUP_BATCH) {
            let keys: Vec<String> = batch.iter().map(|o| o.key.clone()).collect();
            joined.extend(self.cursors.files_by_key(&cursor.stream, &keys).await?);
        }
        let mut late = Vec::new();
        for o in listed {
            match joined.get(&o.key) {
                Some(f) if f.etag != o.etag && f.changed.is_none() => {
                    let change = format!(
                        "overwritten with ETag {} after it joined with ETag {}",
                        o.etag, f.etag
                    );
                    tracing::error!(stream = %cursor.stream, file = %o.key, change = %change, "a file changed after it joined: its rows stay as they joined; upload new content under a new key");
                    self.cursors
                        .mark_changed(&cursor.stream, f, &change)
                        .await?;
                    next.changed_files += 1;
                    next.flag(format!("changed: {} {change}", o.key));
                    run.changed_files += 1;
                }
                Some(_) => {}
                None if o.key <= cursor.newest_key => late.push(o),
                None => {} // sorts after the newest: the listing of new keys joins it
            }
        }
        if !late.is_empty() {
            tracing::warn!(stream = %cursor.stream, files = late.len(), first = %late[0].key, "files found whose keys sort before files that joined already: they join now, after them");
        }
        match self.join(next, &late, None, run).await? {
            Some(c) => Ok(c),
            None => Ok(self.reload(&cursor.id()).await?),
        }
    }

    /// Writes `files` into the file log in the order given and moves the cursor on
    /// (`newest`: the listing got this far). `late`: `newest` is `None`. `None` when
    /// another invocation moved the cursor first.
    async fn join(
        &mut self,
        mut cursor: ChunkCursor,
        files: &[Listed],
        newest: Option<String>,
        run: &mut ChunkerRun,
    ) -> Result<Option<ChunkCursor>, ChunkerError> {
        let late = newest.is_none();
        let now = self.clock.now_ms();
        let mut batches: Vec<&[Listed]> = files.chunks(JOIN_BATCH).collect();
        if batches.is_empty() {
            batches.push(&[]); // the cursor still moves on (listing position)
        }
        let count = batches.len();
        for (n, batch) in batches.into_iter().enumerate() {
            let entries: Vec<SourceFile> = batch
                .iter()
                .enumerate()
                .map(|(i, o)| SourceFile {
                    index: cursor.files + i as u64,
                    key: o.key.clone(),
                    etag: o.etag.clone(),
                    size: o.size,
                    joined_ms: now,
                    late,
                    changed: None,
                })
                .collect();
            let mut next = cursor.clone();
            next.version += 1;
            next.files += entries.len() as u64;
            if !entries.is_empty() {
                next.tail_ms = now;
            }
            match &newest {
                Some(newest) if n + 1 == count => next.newest_key = newest.clone(),
                Some(_) => {
                    next.newest_key = batch.last().map_or(next.newest_key, |o| o.key.clone())
                }
                None => {
                    next.late_files += entries.len() as u64;
                    for f in &entries {
                        next.flag(format!("late: {}", f.key));
                    }
                }
            }
            if next == cursor {
                continue;
            }
            match self.cursors.join_files(&next, &entries).await? {
                Fenced::Written => {}
                Fenced::Lost => return Ok(None),
            }
            for f in &entries {
                tracing::info!(stream = %next.stream, file = %f.key, index = f.index, bytes = f.size, late, "file joined the stream");
            }
            run.files_joined += entries.len() as u64;
            if late {
                run.late_files += entries.len() as u64;
            }
            cursor = next;
        }
        Ok(Some(cursor))
    }

    /// Out of rows: waits, looking for new files every poll period, until there is
    /// something to cut (new files, closing asked, the quiet tail due) or the
    /// invocation's time is up (`None`).
    pub(super) async fn wait_for_data(
        &mut self,
        cursor: ChunkCursor,
        deadline: Instant,
        slowest: Duration,
        run: &mut ChunkerRun,
    ) -> Result<Option<ChunkCursor>, ChunkerError> {
        let waited_ms = self.clock.now_ms();
        let flush_ms = self.settings.flush_after.as_millis() as i64;
        let mut cursor = cursor;
        loop {
            let poll = self.settings.poll;
            if Instant::now() + poll + slowest > deadline {
                return Ok(None);
            }
            tokio::time::sleep(poll).await;
            let stored = self.reload(&cursor.id()).await?;
            if stored.closing || stored.finished || stored.next_chunk != cursor.next_chunk {
                return Ok(Some(stored));
            }
            let files = stored.files;
            let found = self.discover(stored, false, run).await?;
            let due = found.tail_ms + flush_ms;
            if found.files > files || (due > waited_ms && due <= self.clock.now_ms()) {
                return Ok(Some(found));
            }
            cursor = found;
        }
    }
}

/// Reports what discovery found, for the alarms on late and changed files.
pub(super) fn report_discovery(run: &ChunkerRun) {
    if run.files_joined + run.late_files + run.changed_files == 0 {
        return;
    }
    emit(
        "chunker",
        &[
            ("FilesJoined", run.files_joined as f64, Unit::Count),
            ("LateFiles", run.late_files as f64, Unit::Count),
            ("ChangedFiles", run.changed_files as f64, Unit::Count),
        ],
    );
}

/// `txpipe close-stream`: the prefix stream takes no more files; the chunker cuts its
/// remaining rows and marks the last chunk. `Ok(false)`: already closing.
pub async fn close_stream(
    cursors: &dyn crate::store::CursorStore,
    cursor: &ChunkCursor,
) -> Result<bool, StoreError> {
    if cursor.closing || cursor.finished {
        return Ok(false);
    }
    let next = ChunkCursor {
        closing: true,
        version: cursor.version + 1,
        ..cursor.clone()
    };
    match cursors.advance_cursor(&next, cursor.next_chunk).await? {
        Fenced::Written => Ok(true),
        Fenced::Lost => Err(StoreError::corrupt(
            cursor.id(),
            "the cursor moved meanwhile; run the command again",
        )),
    }
}

/// `txpipe skip-file`: the file `file` that stopped the stream (changed or gone after it
/// joined) ends where the stream stands; the chunker goes on with the next file.
pub async fn skip_file(
    cursors: &dyn crate::store::CursorStore,
    cursor: &ChunkCursor,
    file: &SourceFile,
) -> Result<String, String> {
    let mut next = cursor.clone();
    next.version += 1;
    if file.index == cursor.file && cursor.file_key == file.key {
        next.size = cursor.offset;
    } else if file.index == cursor.file + u64::from(!cursor.file_key.is_empty())
        && cursor.offset >= cursor.size
    {
        next.file = file.index;
        next.file_key = file.key.clone();
        next.etag = file.etag.clone();
        next.size = 0;
        next.offset = 0;
        next.header = Vec::new();
    } else {
        return Err(format!(
            "{} is not where the stream stands (it is at file {} {:?}, byte {} of {}): only the file the stream is stopped at can be skipped",
            file.key, cursor.file, cursor.file_key, cursor.offset, cursor.size
        ));
    }
    let at = next.size;
    next.flag(format!("skipped: {} from byte {at}", file.key));
    match cursors.advance_cursor(&next, cursor.next_chunk).await {
        Ok(Fenced::Written) => Ok(format!(
            "{} ends at byte {at} for stream {}; the chunker goes on with the next file\n",
            file.key, cursor.stream
        )),
        Ok(Fenced::Lost) => Err("the cursor moved meanwhile; run the command again".into()),
        Err(e) => Err(e.to_string()),
    }
}
