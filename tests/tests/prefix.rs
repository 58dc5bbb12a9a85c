//! Prefix streams against moto and Postgres: every file under a prefix joins one
//! stream (`docs/behaviour.md#streams-over-a-prefix`). The same data split into parts
//! gives the single file's outputs; files join once, in order, late ones after; a file
//! that changes stops the stream visibly; a quiet tail is cut; closing ends it.

use anyhow::Result;
use std::time::{Duration, Instant};
use txpipe::chunker::{close_stream, skip_file, ChunkerError, ChunkerService};
use txpipe::detector::DetectorService;
use txpipe::layout::StreamName;
use txpipe_e2e::outputs::{stream_outputs, StreamOutputs};
use txpipe_e2e::*;

const PREFIX: &str = "feed/";
const R: &str = "2000";

fn settings(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut s = vec![
        ("TXPIPE_ROWS_PER_CHUNK", R),
        ("TXPIPE_UPGRADE_MIN_MERCHANT_TXNS", "2000"),
        ("TXPIPE_DEI_MIN_FEMALE", "30"),
        ("TXPIPE_PG_TRANSACTIONS", "on"),
    ];
    s.extend_from_slice(extra);
    s
}

fn prefix_settings(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut s = settings(&[("TXPIPE_SOURCE_PREFIX", PREFIX)]);
    s.extend_from_slice(extra);
    s
}

/// Ticks of the chunker, each chunk delivered to the detector as S3 would, until the
/// chunker has nothing more to cut now (or the stream is finished). Short deadlines:
/// an invocation out of rows returns instead of polling.
async fn drive(chunker: &ChunkerService, detector: &DetectorService) -> Result<(StreamName, bool)> {
    loop {
        let deadline = Instant::now() + Duration::from_secs(3);
        let tick = chunker.handle(&serde_json::json!({}), deadline).await?;
        let source = &tick.sources[0];
        let stream =
            StreamName::parse(source.stream.as_deref().unwrap_or_default()).expect("a stream");
        for k in &source.chunks {
            deliver(detector, &[stream.chunk_key(*k)]).await?;
        }
        if source.finished || source.chunks.is_empty() {
            return Ok((stream, source.finished));
        }
    }
}

/// Splits a file's data rows into parts of the given row counts (the rest in the
/// last), each with the header, in the ways real extracts differ.
fn parts(source: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let text = std::str::from_utf8(source).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    let mut out = Vec::new();
    let mut at = 0usize;
    for (i, &n) in sizes.iter().chain(std::iter::once(&usize::MAX)).enumerate() {
        let take = &rows[at..at.saturating_add(n).min(rows.len())];
        at += take.len();
        let mut part = String::new();
        let eol = if i % 3 == 2 { "\r\n" } else { "\n" };
        if i == 4 {
            part.push('\u{feff}'); // a BOM
        }
        part.push_str(header);
        part.push_str(eol);
        for (j, row) in take.iter().enumerate() {
            part.push_str(row);
            // One part ends without a final line terminator.
            if !(i == 5 && j + 1 == take.len()) {
                part.push_str(eol);
            }
        }
        out.push(part.into_bytes());
    }
    out
}

fn part_key(i: usize) -> String {
    format!("{PREFIX}2026/12/04/{:02}/part-{:04}.csv", 10 + i / 4, i + 1)
}

/// Outputs that do not depend on the stream's name: the ledger without chunk keys.
fn comparable(mut o: StreamOutputs) -> StreamOutputs {
    for row in &mut o.ledger {
        row.1.clear();
    }
    o
}

async fn single_file_outputs(stack: &Stack, source: &[u8]) -> Result<StreamOutputs> {
    stack.put(SOURCE_KEY, source.to_vec()).await?;
    let s = settings(&[]);
    let (stream, finished) = drive(&stack.chunker(&s)?, &stack.detector(&s).await?).await?;
    assert!(finished);
    Ok(comparable(stream_outputs(stack, &stream, true).await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_of_uneven_sizes_give_the_single_files_outputs() -> Result<()> {
    let stack = Stack::start(true).await?;
    let dir = temp_dir("prefix-parts")?;
    let (transactions, importance) = generate(&dir, 21_000, 7, 900)?;
    stack.put(IMPORTANCE_KEY, importance).await?;
    let want = single_file_outputs(&stack, &transactions).await?;

    let s = prefix_settings(&[]);
    let chunker = stack.chunker(&s)?;
    let detector = stack.detector(&s).await?;
    // An empty file, a header-only part, a one-row part, boundaries off R, CRLF, a
    // BOM, an unterminated last row; half uploaded before the first tick, half while
    // the stream runs.
    let parts = parts(&transactions, &[0, 1, 2999, 4000, 7, 5000, 1]);
    stack
        .put(&format!("{PREFIX}2026/12/04/09/empty.csv"), Vec::new())
        .await?;
    let (first, rest) = parts.split_at(4);
    for (i, p) in first.iter().enumerate() {
        stack.put(&part_key(i), p.clone()).await?;
    }
    let (stream, finished) = drive(&chunker, &detector).await?;
    assert!(
        !finished,
        "a prefix stream does not end before it is closed"
    );
    for (i, p) in rest.iter().enumerate() {
        stack.put(&part_key(first.len() + i), p.clone()).await?;
    }
    drive(&chunker, &detector).await?;
    let stores = stack.stores(&stack.config(&s)?);
    let id = chunker.settings().source_id();
    let cursor = stores.cursors.load_cursor(&id).await?.unwrap();
    assert_eq!(cursor.files, parts.len() as u64 + 1);
    assert_eq!(cursor.late_files, 0);
    assert!(close_stream(stores.cursors.as_ref(), &cursor).await?);
    let (again, finished) = drive(&chunker, &detector).await?;
    assert!(finished);
    assert_eq!(again, stream);

    let got = comparable(stream_outputs(&stack, &stream, true).await?);
    assert!(!got.detections.is_empty());
    assert_eq!(got.batches, want.batches, "detection files");
    assert_eq!(got.detections, want.detections, "Postgres detections");
    assert_eq!(got.rejected, want.rejected, "rejected rows");
    assert_eq!(got.stats, want.stats, "customer stats");
    assert_eq!(
        got.ledger, want.ledger,
        "ledger (chunk, rows, rejected, detections)"
    );
    assert_eq!(got.transactions, want.transactions, "transactions copy");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headerless_reordered_and_bad_header_files_in_one_stream() -> Result<()> {
    let stack = Stack::start(true).await?;
    let dir = temp_dir("prefix-headers")?;
    let (transactions, importance) = generate(&dir, 9_000, 3, 500)?;
    stack.put(IMPORTANCE_KEY, importance).await?;
    let want = single_file_outputs(&stack, &transactions).await?;
    let text = std::str::from_utf8(&transactions)?;
    let header = text.lines().next().unwrap().to_string();
    let rows: Vec<&str> = text.lines().skip(1).collect();
    // Part 1 with no header (as Firehose writes), part 2 with its columns reversed,
    // then a file whose header lacks `amount`, then the rest with the header.
    let mut p1 = rows[..3000].join("\n");
    p1.push('\n');
    let reversed = |line: &str| line.split(',').rev().collect::<Vec<_>>().join(",");
    let mut p2 = reversed(&header) + "\n";
    for row in &rows[3000..6000] {
        p2.push_str(&reversed(row));
        p2.push('\n');
    }
    let bad = "step,customer,merchant\n1,'C1','M1'\n2,'C2','M2'\n".to_string();
    let p4 = format!("{header}\n{}\n", rows[6000..].join("\n"));
    stack.put(&part_key(0), p1.into_bytes()).await?;
    stack.put(&part_key(1), p2.into_bytes()).await?;
    stack.put(&part_key(2), bad.into_bytes()).await?;
    stack.put(&part_key(3), p4.into_bytes()).await?;
    // Old Mac line endings: not rows at all; skipped whole and reported, never read
    // as one giant record.
    let cr_only = format!("{header}\r1,'C1','1','F','1','M1','1','c',1.0,0\r");
    stack.put(&part_key(4), cr_only.into_bytes()).await?;

    let columns = Box::leak(header.clone().into_boxed_str());
    let s = prefix_settings(&[("TXPIPE_SOURCE_COLUMNS", columns)]);
    let chunker = stack.chunker(&s)?;
    let detector = stack.detector(&s).await?;
    drive(&chunker, &detector).await?;
    let stores = stack.stores(&stack.config(&s)?);
    let cursor = stores
        .cursors
        .load_cursor(&chunker.settings().source_id())
        .await?
        .unwrap();
    // The columns are pinned with the stream: a re-cut must read headers as the cut did.
    let other = prefix_settings(&[("TXPIPE_SOURCE_COLUMNS", "customer,gender,merchant,amount")]);
    let err = stack
        .chunker(&other)?
        .handle(
            &serde_json::json!({}),
            Instant::now() + Duration::from_secs(3),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ChunkerError::ColumnsChanged { .. }), "{err}");
    close_stream(stores.cursors.as_ref(), &cursor).await?;
    let (stream, finished) = drive(&chunker, &detector).await?;
    assert!(finished);
    let got = stream_outputs(&stack, &stream, false).await?;
    // The bad file's two rows are rejected with the reason, numbered in the stream;
    // everything else is the single file's.
    let bad_rows: Vec<_> = got
        .rejected
        .iter()
        .filter(|r| r.3.contains("header is unusable"))
        .collect();
    assert_eq!(bad_rows.len(), 2, "{:?}", got.rejected);
    assert_eq!(bad_rows[0].0, 6001);
    assert_eq!(got.batches, want.batches, "detection files");
    assert_eq!(got.detections.len(), want.detections.len());
    // The two extra rows move chunk boundaries: the stats but their last chunk agree.
    let no_chunk = |o: &StreamOutputs| -> Vec<_> {
        o.stats
            .iter()
            .map(|s| (s.0.clone(), s.1.clone(), s.2, s.3.clone()))
            .collect()
    };
    assert_eq!(no_chunk(&got), no_chunk(&want));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_files_join_after_and_changed_files_stop_the_stream_visibly() -> Result<()> {
    let stack = Stack::start(true).await?;
    let dir = temp_dir("prefix-late")?;
    let (transactions, importance) = generate(&dir, 6_000, 5, 300)?;
    stack.put(IMPORTANCE_KEY, importance).await?;
    let p = parts(&transactions, &[2500, 2500, 500]);
    let s = prefix_settings(&[("TXPIPE_ROWS_PER_CHUNK", "1000")]);
    let config = stack.config(&s)?;
    let stores = stack.stores(&config);
    let chunker = stack.chunker(&s)?;
    let detector = stack.detector(&s).await?;
    let id = chunker.settings().source_id();
    stack.put(&part_key(5), p[0].clone()).await?;
    drive(&chunker, &detector).await?;
    // A key sorting before the one that joined: it still joins, after it, as late.
    stack.put(&part_key(1), p[1].clone()).await?;
    drive(&chunker, &detector).await?;
    let cursor = stores.cursors.load_cursor(&id).await?.unwrap();
    assert_eq!(cursor.files, 2);
    assert_eq!(cursor.late_files, 1);
    assert_eq!(cursor.flagged, vec![format!("late: {}", part_key(1))]);
    let late = stores.cursors.file_at(&cursor.stream, 1).await?.unwrap();
    assert_eq!((late.key.as_str(), late.late), (part_key(1).as_str(), true));
    assert_eq!(cursor.rows_emitted, 5000, "both files cut, in join order");

    // A file already cut is overwritten: recorded and counted, never applied again.
    stack.put(&part_key(5), b"overwritten".to_vec()).await?;
    // The next file joins (500 rows wait for more), then changes before it is cut.
    stack.put(&part_key(7), p[2].clone()).await?;
    drive(&chunker, &detector).await?;
    let cursor = stores.cursors.load_cursor(&id).await?.unwrap();
    assert_eq!(cursor.changed_files, 1, "{:?}", cursor.flagged);
    assert!(cursor
        .flagged
        .iter()
        .any(|f| f.starts_with(&format!("changed: {}", part_key(5)))));
    assert_eq!(cursor.rows_emitted, 5000);
    stack.put(&part_key(7), b"step,customer\n".to_vec()).await?;
    stack.put(&part_key(8), p[3].clone()).await?;
    let before = stores.cursors.load_cursor(&id).await?.unwrap();
    let err = chunker
        .handle(
            &serde_json::json!({}),
            Instant::now() + Duration::from_secs(3),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ChunkerError::FileChanged { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&part_key(7)) && text.contains("txpipe skip-file"),
        "{text}"
    );
    // Nothing moved: the stream stands where it was, and says so on every tick.
    let after = stores.cursors.load_cursor(&id).await?.unwrap();
    assert_eq!(
        (after.next_chunk, after.rows_emitted),
        (before.next_chunk, before.rows_emitted)
    );
    // `txpipe status` shows where and why, and the way on.
    let status = txpipe_cli::status::read_status(&stack.local.clients, &config, PREFIX, None)
        .await?
        .render();
    for want in [
        "files             4 joined".to_string(),
        format!("late: {}", part_key(1)),
        format!("changed: {}", part_key(5)),
        format!(
            "BLOCKED           stream {} stops at file 2 {}",
            after.stream,
            part_key(7)
        ),
        format!("txpipe skip-file --key {}", part_key(7)),
    ] {
        assert!(status.contains(&want), "{want:?} not in\n{status}");
    }

    // The operator skips the file; the stream goes on with the next one.
    let file = stores.cursors.file_at(&after.stream, 2).await?.unwrap();
    assert_eq!(file.key, part_key(7));
    skip_file(stores.cursors.as_ref(), &after, &file)
        .await
        .map_err(anyhow::Error::msg)?;
    let cursor = stores.cursors.load_cursor(&id).await?.unwrap();
    close_stream(stores.cursors.as_ref(), &cursor).await?;
    let (_, finished) = drive(&chunker, &detector).await?;
    assert!(finished);
    let cursor = stores.cursors.load_cursor(&id).await?.unwrap();
    assert_eq!(cursor.files, 4);
    assert_eq!(
        cursor.rows_emitted, 5500,
        "the skipped file's rows are not in the stream"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_tail_is_cut_short_and_closing_marks_the_end() -> Result<()> {
    let stack = Stack::start(false).await?;
    let dir = temp_dir("prefix-flush")?;
    let stack = {
        drop(stack);
        Stack::start(true).await?
    };
    let (transactions, importance) = generate(&dir, 8_500, 9, 200)?;
    let importance_bytes = importance.clone();
    stack.put(IMPORTANCE_KEY, importance).await?;
    let s = prefix_settings(&[
        ("TXPIPE_ROWS_PER_CHUNK", "1000"),
        ("TXPIPE_FLUSH_AFTER_SECS", "2"),
        ("TXPIPE_CHILD_MIN_TXNS", "5"),
    ]);
    let clock = txpipe_testkit::clock::TestClock::new();
    let config = stack.config(&s)?;
    let stores = stack.stores(&config);
    let chunker = stack.chunker_over(&s, stores.clone(), clock.clone())?;
    let detector = stack.detector(&s).await?;
    let id = chunker.settings().source_id();
    stack.put(&part_key(0), transactions).await?;
    let (stream, _) = drive(&chunker, &detector).await?;
    let cursor = stores.cursors.load_cursor(&id).await?.unwrap();
    assert_eq!(
        (cursor.next_chunk, cursor.rows_emitted),
        (8, 8000),
        "500 rows wait"
    );
    clock.advance(chrono::Duration::seconds(3));
    drive(&chunker, &detector).await?;
    let cursor = stores.cursors.load_cursor(&id).await?.unwrap();
    assert_eq!(
        (cursor.next_chunk, cursor.rows_emitted),
        (9, 8500),
        "the tail is cut short"
    );
    assert!(!cursor.finished);
    // Closing at a chunk boundary still marks the end: a last chunk with no rows.
    close_stream(stores.cursors.as_ref(), &cursor).await?;
    let (_, finished) = drive(&chunker, &detector).await?;
    assert!(finished);
    let head = stores.state.load_head(&stream).await?.unwrap();
    assert_eq!(head.next_chunk, 10);
    assert!(head.finished, "{head:?}");
    // A replay over the stream's chunk objects, with the boundaries recorded on them
    // (a short chunk, an empty last one), reproduces its detection files.
    let config = txpipe::config::PatternConfig::default()
        .with(&txpipe::patterns::upgrade::MIN_MERCHANT_TXNS, 2000)
        .with(&txpipe::patterns::dei::MIN_FEMALE, 30)
        .with(&txpipe::patterns::child::MIN_TXNS, 5);
    let table = txpipe::parse::ImportanceTable::parse(&importance_bytes)?.table;
    let mut engine = txpipe::engine::Engine::new(config, std::sync::Arc::new(table));
    let mut replayed = Vec::new();
    let chunks = txpipe_cli::replay_cmd::replay_stream(
        stores.objects.as_ref(),
        BUCKET,
        &stream,
        &mut engine,
        1000,
        50,
        |c| {
            replayed.extend(c.batches);
            Ok(())
        },
    )
    .await?;
    assert_eq!(chunks, 10);
    let stored = stream_outputs(&stack, &stream, false).await?;
    assert!(!stored.batches.is_empty());
    let replayed: Vec<Vec<(String, String, String, String)>> = replayed
        .iter()
        .map(|b| txpipe_e2e::outputs::batch_lines(&String::from_utf8_lossy(&b.to_jsonl())).unwrap())
        .collect();
    assert_eq!(replayed, stored.batches.into_values().collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_ahead_of_the_cursor_that_changed_is_skipped_and_recuts_stay_exact() -> Result<()> {
    let stack = Stack::start(true).await?;
    let dir = temp_dir("prefix-skip-ahead")?;
    let (transactions, importance) = generate(&dir, 2_300, 4, 300)?;
    stack.put(IMPORTANCE_KEY, importance).await?;
    let p = parts(&transactions, &[1500, 200]);
    let s = prefix_settings(&[("TXPIPE_ROWS_PER_CHUNK", "1000")]);
    let stores = stack.stores(&stack.config(&s)?);
    let chunker = stack.chunker(&s)?;
    let detector = stack.detector(&s).await?;
    let id = chunker.settings().source_id();
    // File A: one chunk cut, 500 rows wait in the middle of A. File B joins (700 rows
    // in all: still waiting), then is overwritten before it is cut.
    stack.put(&part_key(0), p[0].clone()).await?;
    drive(&chunker, &detector).await?;
    // Chunk 0 cut again while the cursor is still in A: from A's first row, not its
    // header (what the watch writes when the detector stalls).
    let in_a = stores.cursors.load_cursor(&id).await?.unwrap();
    assert_eq!(in_a.file, 0);
    let again = raw_chunker(&chunker).recut(&in_a, 0).await?;
    assert_eq!(
        again.bytes,
        stack.get(&in_a.stream.chunk_key(0)).await?.unwrap()
    );
    stack.put(&part_key(1), p[1].clone()).await?;
    drive(&chunker, &detector).await?;
    stack.put(&part_key(1), b"overwritten".to_vec()).await?;
    stack.put(&part_key(2), p[2].clone()).await?;
    let err = chunker
        .handle(
            &serde_json::json!({}),
            Instant::now() + Duration::from_secs(3),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&part_key(1)), "{err}");
    let cursor = stores.cursors.load_cursor(&id).await?.unwrap();
    assert_eq!(
        (cursor.file, cursor.rows_emitted),
        (0, 1000),
        "still in the middle of A"
    );
    assert!(
        cursor.blocked.contains("txpipe skip-file"),
        "{:?}",
        cursor.blocked
    );
    // B is ahead of the cursor: skipping it keeps none of it; A's rest and C follow.
    let b = stores.cursors.file_at(&cursor.stream, 1).await?.unwrap();
    let said = skip_file(stores.cursors.as_ref(), &cursor, &b)
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(said.contains("ends at byte 0"), "{said}");
    drive(&chunker, &detector).await?;
    let cursor = stores.cursors.load_cursor(&id).await?.unwrap();
    assert_eq!(cursor.rows_emitted, 2000, "A's 500 rows and C's first 500");
    assert!(cursor.blocked.is_empty());
    // The chunk that spans A, the skipped B and C is cut again byte for byte.
    let stored = stack.get(&cursor.stream.chunk_key(1)).await?.unwrap();
    let mut raw = raw_chunker(&chunker);
    let again = raw.recut(&cursor, 1).await?;
    assert_eq!(again.bytes, stored);
    // So is chunk 0, which starts at A's first row (not at its header).
    let first = raw.recut(&cursor, 0).await?;
    assert_eq!(
        first.bytes,
        stack.get(&cursor.stream.chunk_key(0)).await?.unwrap()
    );
    close_stream(stores.cursors.as_ref(), &cursor).await?;
    let (_, finished) = drive(&chunker, &detector).await?;
    assert!(finished);
    let cursor = stores.cursors.load_cursor(&id).await?.unwrap();
    assert_eq!(cursor.rows_emitted, 2100);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_chunk_that_loses_its_commit_is_never_written() -> Result<()> {
    let stack = Stack::start(true).await?;
    let dir = temp_dir("prefix-commit-first")?;
    let (transactions, importance) = generate(&dir, 1_800, 8, 300)?;
    stack.put(IMPORTANCE_KEY, importance).await?;
    let p = parts(&transactions, &[1500]);
    let s = prefix_settings(&[
        ("TXPIPE_ROWS_PER_CHUNK", "1000"),
        ("TXPIPE_FLUSH_AFTER_SECS", "1"),
    ]);
    let stores = stack.stores(&stack.config(&s)?);
    let chunker = stack.chunker(&s)?;
    let detector = stack.detector(&s).await?;
    let id = chunker.settings().source_id();
    stack.put(&part_key(0), p[0].clone()).await?;
    drive(&chunker, &detector).await?;
    let stale = stores.cursors.load_cursor(&id).await?.unwrap();
    assert_eq!(stale.next_chunk, 1);
    // Another invocation joins a file meanwhile (300 rows: still short of a chunk).
    stack.put(&part_key(1), p[1].clone()).await?;
    chunker
        .handle(
            &serde_json::json!({}),
            Instant::now() + Duration::from_secs(3),
        )
        .await?;
    // This one, from its stale cursor, cuts the quiet tail as a short chunk 1 and loses
    // the commit: chunk 1 must not exist in its version, which the other's cut of
    // chunk 1 (with different rows) would then overwrite after the detector read it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let step = raw_chunker(&chunker).step(&stale).await?;
    assert!(matches!(step, txpipe::chunker::Step::Lost(_)), "{step:?}");
    assert_eq!(stack.get(&stale.stream.chunk_key(1)).await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_chunk_not_yet_written_is_in_flight_not_missing() -> Result<()> {
    let stack = Stack::start(true).await?;
    let dir = temp_dir("prefix-in-flight")?;
    let (transactions, importance) = generate(&dir, 2_000, 6, 300)?;
    stack.put(IMPORTANCE_KEY, importance).await?;
    let p = parts(&transactions, &[1000]);
    let s = prefix_settings(&[("TXPIPE_ROWS_PER_CHUNK", "1000")]);
    let stores = stack.stores(&stack.config(&s)?);
    let chunker = stack.chunker(&s)?;
    let detector = stack.detector(&s).await?;
    stack.put(&part_key(0), p[0].clone()).await?;
    let (stream, _) = drive(&chunker, &detector).await?;
    // Chunk 1 is cut, but its object is not there yet (the gap between the commit and
    // the write): an event must not report it missing.
    stack.put(&part_key(1), p[1].clone()).await?;
    chunker
        .handle(
            &serde_json::json!({}),
            Instant::now() + Duration::from_secs(3),
        )
        .await?;
    let key = stream.chunk_key(1);
    let object = stores
        .objects
        .get(BUCKET, &key)
        .await?
        .expect("chunk 1 written");
    stores
        .objects
        .delete(BUCKET, std::slice::from_ref(&key))
        .await?;
    let reply = deliver(&detector, &[stream.chunk_key(0)]).await?;
    assert!(reply.applied.is_empty());
    let head = stores.state.load_head(&stream).await?.unwrap();
    assert_eq!(head.next_chunk, 1);
    assert!(
        head.failure.is_none(),
        "the newest chunk is in flight, not missing: {:?}",
        head.failure
    );
    // Once written, it applies.
    let metadata: Vec<(&str, String)> = object
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    stores
        .objects
        .put(BUCKET, &key, object.bytes.clone(), &metadata)
        .await?;
    let reply = deliver(&detector, &[key]).await?;
    assert_eq!(reply.streams[0].applied, vec![1]);
    Ok(())
}
