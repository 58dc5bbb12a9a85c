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
        // A stream started again over the same prefix is a new stream.
        let stream = stream_for_source_version(
            &s.source_bucket,
            s.source_key.trim_end_matches('/'),
            &created.to_string(),
        );
        ChunkCursor {
            tail_ms: created,
            columns: s.columns.clone().unwrap_or_default(),
            ..ChunkCursor::start(&s.source_bucket, &s.source_key, stream, s.rows_per_chunk)
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

/// `txpipe skip-file`: a file that changed or vanished after it joined, before all of
/// it was cut, ends where the stream stands in it (or contributes nothing, if the
/// stream has not reached it): its file log entry records the bytes kept, which every
/// later cut and re-cut obeys. The chunker goes on with the next file.
pub async fn skip_file(
    cursors: &dyn crate::store::CursorStore,
    cursor: &ChunkCursor,
    file: &SourceFile,
) -> Result<String, String> {
    let current = file.index == cursor.file && !cursor.file_key.is_empty();
    let reached = cursor.file + u64::from(!cursor.file_key.is_empty());
    let kept = match current {
        true => cursor.offset,
        false if file.index >= reached => 0,
        false => {
            return Err(format!(
                "{} (file {}) was cut already: the stream is at file {} {}; upload new content under a new key",
                file.key, file.index, cursor.file, cursor.file_key
            ))
        }
    };
    let change = format!(
        "skipped from byte {kept} (txpipe skip-file): changed or vanished before it was cut"
    );
    let skipped = SourceFile {
        size: kept,
        ..file.clone()
    };
    cursors
        .mark_changed(&cursor.stream, &skipped, &change)
        .await
        .map_err(|e| e.to_string())?;
    let mut next = cursor.clone();
    next.version += 1;
    next.blocked = String::new();
    if current {
        next.size = kept;
    }
    next.flag(format!("skipped: {} from byte {kept}", file.key));
    match cursors.advance_cursor(&next, cursor.next_chunk).await {
        Ok(Fenced::Written) => Ok(format!(
            "{} ends at byte {kept} for stream {}; the chunker goes on with the next file on its next tick\n",
            file.key, cursor.stream
        )),
        Ok(Fenced::Lost) => Err("the cursor moved meanwhile; run the command again".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    //! Discovery's cost against in-memory stores that count requests: bounded per
    //! invocation whatever the prefix holds.
    use super::*;
    use crate::chunker::{Chunker, ChunkerSettings};
    use crate::store::{CursorStore, ListPage, ObjectInfo, ObjectStore, StoredObject};
    use async_trait::async_trait;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use txpipe_core::layout::StreamName;

    #[derive(Default)]
    struct Listing {
        keys: Mutex<BTreeMap<String, String>>,
        lists: AtomicU64,
    }

    fn unused<T>() -> Result<T, StoreError> {
        Err(StoreError::corrupt("test", "not used by discovery"))
    }

    #[async_trait]
    impl ObjectStore for Listing {
        async fn get(&self, _: &str, _: &str) -> Result<Option<StoredObject>, StoreError> {
            unused()
        }
        async fn head(&self, _: &str, _: &str) -> Result<Option<ObjectInfo>, StoreError> {
            unused()
        }
        async fn get_range(
            &self,
            _: &str,
            _: &str,
            _: u64,
            _: u64,
            _: &str,
        ) -> Result<Vec<u8>, StoreError> {
            unused()
        }
        async fn put_object(
            &self,
            _: &str,
            _: &str,
            _: Vec<u8>,
            _: &[(&str, String)],
            _: bool,
        ) -> Result<bool, StoreError> {
            unused()
        }
        async fn delete(&self, _: &str, _: &[String]) -> Result<(), StoreError> {
            unused()
        }
        async fn list(&self, _: &str, _: &str) -> Result<Vec<String>, StoreError> {
            unused()
        }
        async fn list_page(
            &self,
            _: &str,
            prefix: &str,
            after: &str,
            max: u32,
        ) -> Result<ListPage, StoreError> {
            self.lists.fetch_add(1, Ordering::Relaxed);
            let keys = self.keys.lock().unwrap();
            let mut objects: Vec<Listed> = keys
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                .filter(|(k, _)| k.starts_with(prefix))
                .take(max as usize + 1)
                .map(|(k, e)| Listed {
                    key: k.clone(),
                    etag: e.clone(),
                    size: 0,
                    modified_ms: 0,
                })
                .collect();
            let truncated = objects.len() > max as usize;
            objects.truncate(max as usize);
            Ok(ListPage { objects, truncated })
        }
    }

    #[derive(Default)]
    struct FileLog {
        cursor: Mutex<Option<ChunkCursor>>,
        by_index: Mutex<HashMap<u64, SourceFile>>,
        by_key: Mutex<HashMap<String, SourceFile>>,
        writes: AtomicU64,
        reads: AtomicU64,
    }

    #[async_trait]
    impl CursorStore for FileLog {
        async fn load_cursor(&self, _: &str) -> Result<Option<ChunkCursor>, StoreError> {
            Ok(self.cursor.lock().unwrap().clone())
        }
        async fn create_cursor(&self, c: &ChunkCursor) -> Result<Fenced, StoreError> {
            *self.cursor.lock().unwrap() = Some(c.clone());
            Ok(Fenced::Written)
        }
        async fn advance_cursor(&self, c: &ChunkCursor, _: u64) -> Result<Fenced, StoreError> {
            self.create_cursor(c).await
        }
        async fn replace_cursor(
            &self,
            c: &ChunkCursor,
            _: &StreamName,
        ) -> Result<Fenced, StoreError> {
            self.create_cursor(c).await
        }
        async fn join_files(
            &self,
            c: &ChunkCursor,
            files: &[SourceFile],
        ) -> Result<Fenced, StoreError> {
            assert!(files.len() <= JOIN_BATCH);
            self.writes.fetch_add(1, Ordering::Relaxed);
            for f in files {
                assert!(
                    self.by_key
                        .lock()
                        .unwrap()
                        .insert(f.key.clone(), f.clone())
                        .is_none(),
                    "{} joined twice",
                    f.key
                );
                self.by_index.lock().unwrap().insert(f.index, f.clone());
            }
            self.create_cursor(c).await
        }
        async fn file_at(
            &self,
            _: &StreamName,
            index: u64,
        ) -> Result<Option<SourceFile>, StoreError> {
            Ok(self.by_index.lock().unwrap().get(&index).cloned())
        }
        async fn files_by_key(
            &self,
            _: &StreamName,
            keys: &[String],
        ) -> Result<HashMap<String, SourceFile>, StoreError> {
            assert!(keys.len() <= LOOKUP_BATCH);
            self.reads.fetch_add(1, Ordering::Relaxed);
            let all = self.by_key.lock().unwrap();
            Ok(keys
                .iter()
                .filter_map(|k| all.get(k).map(|f| (k.clone(), f.clone())))
                .collect())
        }
        async fn mark_changed(
            &self,
            _: &StreamName,
            f: &SourceFile,
            change: &str,
        ) -> Result<(), StoreError> {
            let mut changed = f.clone();
            changed.changed = Some(change.into());
            self.by_key.lock().unwrap().insert(f.key.clone(), changed);
            Ok(())
        }
    }

    fn settings() -> ChunkerSettings {
        ChunkerSettings {
            source_bucket: "b".into(),
            source_key: "feed/".into(),
            bucket: "b".into(),
            rows_per_chunk: 10,
            interval: None,
            budget: Duration::from_secs(1),
            read_window: 1024,
            max_lag_chunks: 10,
            columns: None,
            flush_after: Duration::from_secs(60),
            poll: Duration::from_millis(100),
        }
    }

    #[tokio::test]
    async fn discovery_stays_bounded_over_100_000_files_and_finds_late_and_changed_ones() {
        let objects = Listing::default();
        let log = FileLog::default();
        {
            let mut keys = objects.keys.lock().unwrap();
            for i in 0..100_000 {
                keys.insert(format!("feed/2026/{:06}.csv", i + 1), format!("\"e{i}\""));
            }
        }
        let mut chunker = Chunker::new(&objects, &log, settings());
        let mut cursor = chunker.fresh_prefix_cursor();
        log.create_cursor(&cursor).await.unwrap();
        // A backfill joins at most 10 pages (10,000 files) per discovery.
        let mut discoveries = 0;
        while cursor.files < 100_000 {
            let lists = objects.lists.load(Ordering::Relaxed);
            let mut run = ChunkerRun::default();
            cursor = chunker.discover(cursor, false, &mut run).await.unwrap();
            assert!(objects.lists.load(Ordering::Relaxed) - lists <= NEW_KEY_PAGES as u64);
            discoveries += 1;
        }
        assert_eq!(discoveries, 10);
        assert_eq!(
            log.by_index.lock().unwrap()[&99_999].key,
            "feed/2026/100000.csv"
        );
        // Steady state: two listings, ten batch reads and one cursor write per tick,
        // whatever the prefix holds.
        let late_key = "feed/2026/050000-late.csv".to_string();
        objects
            .keys
            .lock()
            .unwrap()
            .insert(late_key.clone(), "\"late\"".into());
        objects
            .keys
            .lock()
            .unwrap()
            .insert("feed/2026/000002.csv".into(), "\"new\"".into());
        let mut ticks = 0;
        loop {
            let (lists, reads, writes) = (
                objects.lists.load(Ordering::Relaxed),
                log.reads.load(Ordering::Relaxed),
                log.writes.load(Ordering::Relaxed),
            );
            let mut run = ChunkerRun::default();
            cursor = chunker.discover(cursor, true, &mut run).await.unwrap();
            assert_eq!(objects.lists.load(Ordering::Relaxed) - lists, 2);
            assert!(log.reads.load(Ordering::Relaxed) - reads <= 10);
            assert_eq!(log.writes.load(Ordering::Relaxed) - writes, 1);
            ticks += 1;
            if cursor.late_files > 0 && cursor.changed_files > 0 {
                break;
            }
            assert!(ticks <= 101, "the walk covers the prefix in 100 ticks");
        }
        // The late file joined after every other, once; the overwritten one is recorded.
        let late = log.by_index.lock().unwrap()[&100_000].clone();
        assert_eq!((late.key.as_str(), late.late), (late_key.as_str(), true));
        assert!(log.by_key.lock().unwrap()["feed/2026/000002.csv"]
            .changed
            .is_some());
        assert_eq!(cursor.files, 100_001);
        assert!(
            ticks > 40,
            "found by the walk, page by page ({ticks} ticks)"
        );
    }
}
