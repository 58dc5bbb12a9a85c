//! The chunker against S3 and DynamoDB served by moto: chunks are exact slices of the
//! source (`docs/behaviour.md#chunks`) and overlapping runs are fenced.

use anyhow::Result;
use std::time::{Duration, Instant};
use txpipe::chunker::{Chunker, ChunkerError};
use txpipe::cutting::split_source;
use txpipe::store::StoreError;
use txpipe_e2e::*;

/// A source mixing LF and CRLF rows, quoted fields with embedded newlines, and blanks.
fn tricky_source(rows: usize) -> Vec<u8> {
    let mut s = String::from(
        "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\r\n",
    );
    for i in 0..rows {
        let eol = if i % 3 == 0 { "\r\n" } else { "\n" };
        if i % 11 == 5 {
            s.push_str(&format!(
                "{i},\"'C{i}\nx'\",'2','F','28007','M{}','28007','es_food',{}.5,0{eol}",
                i % 4,
                i % 50
            ));
        } else {
            s.push_str(&format!(
                "{i},'C{}','2','M','28007','M{}','28007','es_food',{}.25,0{eol}",
                i % 17,
                i % 4,
                i % 90
            ));
        }
        if i % 13 == 0 {
            s.push_str("\r\n");
        }
    }
    s.into_bytes()
}

async fn stored_chunks(stack: &Stack) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for key in stack.list(&stack.stream().await?.chunks_prefix()).await? {
        out.push(stack.get(&key).await?.unwrap_or_default());
    }
    Ok(out)
}

fn expected(source: &[u8], r: u64) -> Vec<Vec<u8>> {
    split_source(source, r)
        .unwrap()
        .into_iter()
        .map(|c| c.bytes)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_are_the_spec_slices_with_boundaries_inside_rows_and_crlf() -> Result<()> {
    let stack = Stack::start(false).await?;
    let source = tricky_source(103);
    stack.put(SOURCE_KEY, source.clone()).await?;
    // Tiny read windows put range boundaries inside rows, quotes and CRLF pairs.
    for (i, window) in [1u64, 2, 7, 13, 64].into_iter().enumerate() {
        let key = format!("input/t{i}.csv");
        stack.put(&key, source.clone()).await?;
        let ctx = stack.chunker(&[("TXPIPE_SOURCE_KEY", &key), ("TXPIPE_ROWS_PER_CHUNK", "10")])?;
        let mut settings = ctx.settings().clone();
        settings.read_window = window;
        let mut chunker = Chunker::new(
            ctx.stores().objects.as_ref(),
            ctx.stores().cursors.as_ref(),
            settings,
        );
        let run = chunker.run(far(), None, |_| {}).await?;
        assert!(run.finished);
        assert_eq!(run.written.len(), 11, "window {window}");
        assert_eq!(
            run.written.last().map(|c| (c.rows, c.last)),
            Some((3, true))
        );
        let stream = stack.stream_of(&key).await?;
        let want = expected(&source, 10);
        for (k, bytes) in want.iter().enumerate() {
            let got = stack.get(&stream.chunk_key(k as u64)).await?.unwrap();
            assert_eq!(&got, bytes, "window {window} chunk {k}");
        }
    }
    // Row by row against the source text: header first, then rows k·R.. in file order.
    let ctx = stack.chunker(&[("TXPIPE_ROWS_PER_CHUNK", "10")])?;
    ctx.run(far(), None).await?;
    let chunks = stored_chunks(&stack).await?;
    let text = String::from_utf8(source)?;
    let mut records: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in text.chars() {
        cur.push(ch);
        if ch == '"' {
            quoted = !quoted;
        }
        if ch == '\n' && !quoted {
            records.push(std::mem::take(&mut cur));
        }
    }
    let header = records.remove(0);
    let rows: Vec<&String> = records.iter().filter(|r| !r.trim().is_empty()).collect();
    for (k, chunk) in chunks.iter().enumerate() {
        let chunk = String::from_utf8(chunk.clone())?;
        assert!(chunk.starts_with(&header));
        let body: String = chunk[header.len()..]
            .split_inclusive('\n')
            .filter(|l| !l.trim().is_empty())
            .collect();
        let want: String = rows
            .iter()
            .skip(k * 10)
            .take(10)
            .map(|s| s.as_str())
            .collect();
        assert_eq!(body, want, "chunk {k}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_source_gives_no_chunk_and_a_clean_finish() -> Result<()> {
    let stack = Stack::start(false).await?;
    stack
        .put(
            SOURCE_KEY,
            b"step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n\n"
                .to_vec(),
        )
        .await?;
    let run = stack.chunker(&[])?.run(far(), None).await?;
    assert!(run.finished);
    assert!(run.written.is_empty());
    assert!(stack.list("chunks/").await?.is_empty());
    // Again: still finished, still nothing.
    let run = stack.chunker(&[])?.run(far(), None).await?;
    assert!(run.finished && run.written.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_put_and_cursor_rewrites_the_same_chunk() -> Result<()> {
    let stack = Stack::start(false).await?;
    let source = tricky_source(45);
    stack.put(SOURCE_KEY, source.clone()).await?;
    let ctx = stack.chunker(&[("TXPIPE_ROWS_PER_CHUNK", "10")])?;
    ctx.run(far(), Some(2)).await?;
    // Cut and write chunk 2, then "die" before the cursor moves.
    let mut chunker = raw_chunker(&ctx);
    let cursor = chunker.open().await?.into_cursor().unwrap();
    assert_eq!(cursor.next_chunk, 2);
    let prepared = chunker.prepare(&cursor).await?.unwrap();
    chunker.put(&prepared).await?;
    let first = stack.get(&prepared.key).await?.unwrap();
    // A new container finishes the job.
    let run = stack
        .chunker(&[("TXPIPE_ROWS_PER_CHUNK", "10")])?
        .run(far(), None)
        .await?;
    assert_eq!(run.written.first().map(|c| c.number), Some(2));
    assert_eq!(stack.get(&prepared.key).await?.unwrap(), first);
    assert_eq!(stored_chunks(&stack).await?, expected(&source, 10));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cursor_condition_fences_a_second_writer() -> Result<()> {
    // The race made deterministic: two containers read the same cursor, both write
    // chunk 0 (same key, same bytes), both try to advance; exactly one wins.
    let stack = Stack::start(false).await?;
    stack.put(SOURCE_KEY, tricky_source(25)).await?;
    let a = stack.chunker(&[("TXPIPE_ROWS_PER_CHUNK", "10")])?;
    let b = stack.chunker(&[("TXPIPE_ROWS_PER_CHUNK", "10")])?;
    let mut ca = raw_chunker(&a);
    let mut cb = raw_chunker(&b);
    let cursor = ca.open().await?.into_cursor().unwrap();
    assert_eq!(cb.open().await?.into_cursor(), Some(cursor.clone()));
    let first = ca.step(&cursor).await?;
    assert!(matches!(first, txpipe::chunker::Step::Written(ref c, _) if c.number == 0));
    match cb.step(&cursor).await? {
        txpipe::chunker::Step::Lost(stored) => assert_eq!(stored.next_chunk, 1),
        other => panic!("the second writer must lose the condition, got {other:?}"),
    }
    // The loser continues from the stored cursor: no gap, no duplicate.
    let run = b.run(far(), None).await?;
    assert_eq!(
        run.written.iter().map(|c| c.number).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        stored_chunks(&stack).await?,
        expected(&tricky_source(25), 10)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_invocations_are_fenced() -> Result<()> {
    let stack = Stack::start(false).await?;
    let source = tricky_source(400);
    stack.put(SOURCE_KEY, source.clone()).await?;
    let a = stack.chunker(&[("TXPIPE_ROWS_PER_CHUNK", "10")])?;
    let b = stack.chunker(&[("TXPIPE_ROWS_PER_CHUNK", "10")])?;
    let (ra, rb) = tokio::join!(a.run(far(), None), b.run(far(), None));
    let (ra, rb) = (ra?, rb?);
    let mut numbers: Vec<u64> = ra
        .written
        .iter()
        .chain(&rb.written)
        .map(|c| c.number)
        .collect();
    numbers.sort();
    // Every chunk advanced by exactly one of the two.
    assert_eq!(numbers, (0..40).collect::<Vec<_>>());
    assert_eq!(stored_chunks(&stack).await?, expected(&source, 10));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_restart_and_refuses_a_changed_source() -> Result<()> {
    let stack = Stack::start(false).await?;
    let source = tricky_source(95);
    stack.put(SOURCE_KEY, source.clone()).await?;
    let run = stack
        .chunker(&[("TXPIPE_ROWS_PER_CHUNK", "10")])?
        .run(far(), Some(4))
        .await?;
    assert_eq!((run.next_chunk, run.finished), (4, false));
    let run = stack
        .chunker(&[("TXPIPE_ROWS_PER_CHUNK", "10")])?
        .run(far(), Some(2))
        .await?;
    assert_eq!(
        run.written.iter().map(|c| c.number).collect::<Vec<_>>(),
        vec![4, 5]
    );

    // The file changes under the cursor: refused, nothing more written.
    let first_stream = stack.stream().await?;
    let mut changed = source.clone();
    changed.extend_from_slice(b"999,'C1','2','M','1','M1','1','es_food',1.0,0\n");
    stack.put(SOURCE_KEY, changed.clone()).await?;
    let err = stack
        .chunker(&[("TXPIPE_ROWS_PER_CHUNK", "10")])?
        .run(far(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChunkerError::Store(StoreError::SourceChanged { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("refusing to mix two files"));
    assert!(err.to_string().contains("txpipe restart-source"));
    assert_eq!(stack.list(&first_stream.chunks_prefix()).await?.len(), 6);

    // Restored: the run completes exactly, in the same stream.
    stack.put(SOURCE_KEY, source.clone()).await?;
    assert_eq!(stack.stream().await?, first_stream);
    // R is pinned for the stream: another R is refused, with what to do.
    let err = stack
        .chunker(&[("TXPIPE_ROWS_PER_CHUNK", "11")])?
        .run(far(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ChunkerError::RowsPerChunkChanged {
                pinned: 10,
                configured: 11,
                ..
            }
        ),
        "{err}"
    );
    let run = stack
        .chunker(&[("TXPIPE_ROWS_PER_CHUNK", "10")])?
        .run(far(), None)
        .await?;
    assert!(run.finished);
    assert_eq!(stored_chunks(&stack).await?, expected(&source, 10));

    // Replaced after its stream finished: the old stream keeps the cursor until the
    // detector has applied every chunk of it (nothing abandoned while behind) ...
    stack.put(SOURCE_KEY, changed.clone()).await?;
    let run = stack
        .chunker(&[("TXPIPE_ROWS_PER_CHUNK", "10")])?
        .run(far(), None)
        .await?;
    assert_eq!(run.stream.as_ref(), Some(&first_stream));
    assert!(run.written.is_empty());
    let stores = stack.stores(&stack.config(&[])?);
    let mut head = txpipe::store::DetectorHead::empty(&first_stream, "test");
    head.next_chunk = run.next_chunk;
    head.finished = true;
    stores.state.put_head(&head, None).await?;
    // ... then the new file is a new stream, the old one untouched.
    let run = stack
        .chunker(&[("TXPIPE_ROWS_PER_CHUNK", "10")])?
        .run(far(), None)
        .await?;
    let second_stream = stack.stream().await?;
    assert_ne!(second_stream, first_stream);
    assert_eq!(run.stream.as_ref(), Some(&second_stream));
    assert!(run.finished);
    let chunk_bytes = |stream: txpipe::layout::StreamName| {
        let stack = &stack;
        async move {
            let mut out = Vec::new();
            for key in stack.list(&stream.chunks_prefix()).await? {
                out.push(stack.get(&key).await?.unwrap_or_default());
            }
            anyhow::Ok(out)
        }
    };
    assert_eq!(chunk_bytes(first_stream).await?, expected(&source, 10));
    assert_eq!(chunk_bytes(second_stream).await?, expected(&changed, 10));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sources_whose_keys_read_alike_never_share_a_stream() -> Result<()> {
    let stack = Stack::start(false).await?;
    let (a, b) = (tricky_source(12), tricky_source(23));
    stack.put("input/a-b.csv", a.clone()).await?;
    stack.put("input/a/b.csv", b.clone()).await?;
    for key in ["input/a-b.csv", "input/a/b.csv"] {
        stack
            .chunker(&[("TXPIPE_SOURCE_KEY", key), ("TXPIPE_ROWS_PER_CHUNK", "10")])?
            .run(far(), None)
            .await?;
    }
    let (sa, sb) = (
        stack.stream_of("input/a-b.csv").await?,
        stack.stream_of("input/a/b.csv").await?,
    );
    assert_ne!(sa, sb);
    assert_eq!(stack.list(&sa.chunks_prefix()).await?.len(), 2);
    assert_eq!(stack.list(&sb.chunks_prefix()).await?.len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_mode_emits_one_chunk_per_interval_within_budget() -> Result<()> {
    let stack = Stack::start(false).await?;
    stack.put(SOURCE_KEY, tricky_source(1000)).await?;
    let ctx = stack.chunker(&[
        ("TXPIPE_ROWS_PER_CHUNK", "10"),
        ("TXPIPE_CHUNK_INTERVAL_MS", "200"),
        ("TXPIPE_CHUNKER_BUDGET_SECS", "1"),
    ])?;
    let t = Instant::now();
    let run = ctx.run(far(), None).await?;
    // Ticks at 0, 200, 400, 600, (800 if it fits): never past the 1 s budget.
    assert!(
        (3..=5).contains(&run.written.len()),
        "{}",
        run.written.len()
    );
    assert!(t.elapsed() < Duration::from_millis(1500));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_with_bare_cr_line_endings_is_refused_loudly_at_its_header() -> Result<()> {
    let stack = Stack::start(false).await?;
    // An old Mac export: it used to be read whole as its header line.
    let source = tricky_source(2_000)
        .into_iter()
        .map(|b| if b == b'\n' { b'\r' } else { b })
        .collect::<Vec<u8>>();
    stack.put(SOURCE_KEY, source).await?;
    let chunker = stack.chunker(&[("TXPIPE_ROWS_PER_CHUNK", "10")])?;
    let err = chunker.run(far(), None).await.unwrap_err();
    assert!(matches!(err, ChunkerError::Header { .. }), "{err}");
    assert!(err.to_string().contains("bare carriage return"), "{err}");
    assert!(err.to_string().contains("input/transactions.csv"), "{err}");
    let id = chunker.settings().source_id();
    assert!(chunker.stores().cursors.load_cursor(&id).await?.is_none());
    Ok(())
}
