//! The detector against moto and a real Postgres: outputs equal the offline replay,
//! and stay equal under faults at every step, duplicated and reordered events, cold
//! starts and a database outage (`docs/architecture.md#exactly-once`).

use anyhow::Result;
use chrono::Utc;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::sync::Arc;
use txpipe::detector::DetectorService;
use txpipe::engine::Engine;
use txpipe::parse::ImportanceTable;
use txpipe::replay::{replay, ReplayOutput};
use txpipe::store::ObjectStore;
use txpipe_e2e::*;
use txpipe_testkit::faults::{FaultPlan, FaultPoint};

/// Thresholds low enough that all three patterns fire on a small file.
const SMALL: &[(&str, &str)] = &[
    ("TXPIPE_ROWS_PER_CHUNK", "2000"),
    ("TXPIPE_UPGRADE_MIN_MERCHANT_TXNS", "3000"),
    ("TXPIPE_DEI_MIN_FEMALE", "20"),
    ("TXPIPE_SNAPSHOT_MAX_DELTAS", "7"),
    // Small parts, so every snapshot here is written and read back in many parts.
    ("TXPIPE_SNAPSHOT_PART_BYTES", "4096"),
    ("TXPIPE_PG_TRANSACTIONS", "on"),
];

struct Data {
    transactions: Vec<u8>,
    importance: Vec<u8>,
}

fn data() -> Result<Data> {
    let dir = temp_dir("detector-data")?;
    let (transactions, importance) = generate(&dir, 41_000, 7, 900)?;
    Ok(Data {
        transactions,
        importance,
    })
}

fn with_source(key: &str) -> Vec<(&str, &str)> {
    let mut v = SMALL.to_vec();
    v.push(("TXPIPE_SOURCE_KEY", key));
    v
}

/// Uploads the data under `key`, chunks it in burst mode, returns the chunk keys.
async fn chunk(stack: &Stack, key: &str, data: &Data) -> Result<Vec<String>> {
    let keys = chunk_some(stack, key, data, None).await?;
    Ok(keys)
}

/// Uploads the data under `key` (if not there yet) and cuts `n` more chunks (all when
/// `None`), returning their keys. The detector catches up to the chunker's cursor, so
/// a test that wants it part of the way cuts part of the way.
async fn chunk_some(stack: &Stack, key: &str, data: &Data, n: Option<u64>) -> Result<Vec<String>> {
    if stack.get(key).await?.is_none() {
        stack.put(key, data.transactions.clone()).await?;
        stack.put(IMPORTANCE_KEY, data.importance.clone()).await?;
    }
    let run = stack.chunker(&with_source(key))?.run(far(), n).await?;
    assert!(run.finished || n.is_some());
    Ok(run.written.into_iter().map(|c| c.key).collect())
}

fn reference(stack: &Stack, data: &Data) -> Result<ReplayOutput> {
    let config = stack.config(SMALL)?;
    let table = ImportanceTable::parse(&data.importance)?.table;
    let mut engine = Engine::new(config.patterns, Arc::new(table));
    Ok(replay(
        &data.transactions,
        &mut engine,
        config.shape.rows_per_chunk,
        config.shape.detections_per_file,
        Utc::now,
    )?)
}

/// What a run left in S3 and Postgres, timestamps aside.
#[derive(Debug, PartialEq, Eq)]
struct Outputs {
    /// Batch key → identities, in file order.
    batches: BTreeMap<String, Vec<(String, String, String)>>,
    /// (chunk, seq, pattern, merchant, customer) in global order.
    detections: Vec<(i64, i32, String, String, String)>,
    /// (chunk, key, rows, rejected, detections).
    ledger: Vec<(i64, String, i64, i64, i64)>,
    /// Rejected rows (row, reason).
    rejected: Vec<(i64, String)>,
    /// Transactions rows and their total amount.
    transactions: (i64, String),
    /// Customer stats rows and total txns.
    stats: (i64, i64),
}

async fn outputs(stack: &Stack, source_key: &str) -> Result<Outputs> {
    outputs_of(stack, &stack.stream_of(source_key).await?).await
}

async fn outputs_of(stack: &Stack, stream: &txpipe::layout::StreamName) -> Result<Outputs> {
    let mut batches = BTreeMap::new();
    for key in stack.list(&stream.detections_prefix()).await? {
        let text = String::from_utf8(stack.get(&key).await?.unwrap_or_default())?;
        let ids = batch_identities(&text)?;
        batches.insert(key.rsplit('/').next().unwrap_or_default().to_string(), ids);
    }
    let pg = stack.pg_client().await?;
    let detections = pg
        .query(
            "SELECT chunk, seq_in_chunk, pattern_id, merchant_id, customer_name FROM detections
             WHERE stream = $1 ORDER BY chunk, seq_in_chunk",
            &[&stream.as_str()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let ledger = pg
        .query(
            "SELECT chunk, key, rows, rejected, detections FROM chunks WHERE stream = $1 ORDER BY chunk",
            &[&stream.as_str()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let rejected = pg
        .query(
            "SELECT row_number, reason FROM rejected_rows WHERE file = 'transactions' AND source = $1 ORDER BY row_number",
            &[&stream.as_str()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let t = pg
        .query_one(
            "SELECT count(*), coalesce(sum(amount), 0)::text FROM transactions WHERE stream = $1",
            &[&stream.as_str()],
        )
        .await?;
    let s = pg
        .query_one(
            "SELECT count(*), coalesce(sum(txns), 0)::bigint FROM customer_stats WHERE stream = $1",
            &[&stream.as_str()],
        )
        .await?;
    Ok(Outputs {
        batches,
        detections,
        ledger,
        rejected,
        transactions: (t.get(0), t.get(1)),
        stats: (s.get(0), s.get(1)),
    })
}

async fn head(
    detector: &DetectorService,
    stream: &txpipe::layout::StreamName,
) -> Result<txpipe::store::DetectorHead> {
    detector
        .detector()
        .await
        .head(stream)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no head for {stream}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_equal_replay_and_survive_faults_duplicates_and_reordering() -> Result<()> {
    let stack = Stack::start(true).await?;
    let data = data()?;
    let clean_key = "input/clean.csv";
    let keys = chunk(&stack, clean_key, &data).await?;
    assert_eq!(keys.len(), 21);

    // Clean run: one event per chunk, in order.
    let detector = stack.detector(&with_source(clean_key)).await?;
    let (mut file_chunks, mut snapshot_chunks) = (Vec::new(), Vec::new());
    for key in &keys {
        let response = deliver(&detector, std::slice::from_ref(key)).await?;
        for a in &response.applied {
            if a.batches > 0 {
                file_chunks.push(a.chunk);
            }
            if a.snapshot {
                snapshot_chunks.push(a.chunk);
            }
        }
    }
    // A snapshot mid-stream and at the end, or the test proves less than it says.
    assert!(snapshot_chunks.len() >= 2, "{snapshot_chunks:?}");
    let clean = outputs(&stack, clean_key).await?;

    // Equal to the offline replay: identity, chunk, order, batch composition.
    let want = reference(&stack, &data)?;
    assert!(want.detections.iter().any(|d| d.key.pattern.number() == 1));
    assert!(want.detections.iter().any(|d| d.key.pattern.number() == 2));
    assert!(want.detections.iter().any(|d| d.key.pattern.number() == 3));
    let want_batches: BTreeMap<String, Vec<(String, String, String)>> = want
        .batches
        .iter()
        .map(|b| {
            (
                format!("{:08}.jsonl", b.number),
                b.detections
                    .iter()
                    .map(|d| {
                        (
                            d.key.pattern.id().to_string(),
                            d.key.merchant.clone(),
                            d.key.customer.clone(),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    assert_eq!(clean.batches, want_batches);
    let mut seq = BTreeMap::<u64, i32>::new();
    let want_rows: Vec<(i64, i32, String, String, String)> = want
        .detections
        .iter()
        .map(|d| {
            let s = seq.entry(d.chunk).or_default();
            *s += 1;
            (
                d.chunk as i64,
                *s - 1,
                d.key.pattern.id().to_string(),
                d.key.merchant.clone(),
                d.key.customer.clone(),
            )
        })
        .collect();
    assert_eq!(clean.detections, want_rows);
    assert_eq!(
        clean
            .ledger
            .iter()
            .map(|l| (l.0 as u64, l.2 as u64, l.3 as u64, l.4 as u64))
            .collect::<Vec<_>>(),
        want.chunks
            .iter()
            .map(|c| (c.chunk, c.rows, c.rejected, c.detections))
            .collect::<Vec<_>>()
    );
    assert_eq!(clean.rejected.len(), want.rejected.len());
    assert_eq!(
        clean.transactions.0 + clean.rejected.len() as i64,
        41_000,
        "every row is either processed or rejected"
    );

    // A fault at every step of a chunk: at an ordinary chunk, a snapshot chunk and the
    // last chunk, where that step happens at all.
    let last = keys.len() as u64 - 1;
    let ordinary = (1..last)
        .find(|k| !snapshot_chunks.contains(k))
        .unwrap_or(3);
    let mid_snapshot = snapshot_chunks[0];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut cases = 0;
    let chunk_points = FaultPoint::ALL.into_iter().filter(|p| !p.chunkless());
    for (i, point) in chunk_points.enumerate() {
        let chunks: Vec<u64> = match point {
            FaultPoint::WriteSnapshot => vec![mid_snapshot, last],
            // The first and the last chunk that complete a detection file.
            FaultPoint::WriteDetections => {
                let mut v: Vec<u64> = file_chunks
                    .first()
                    .into_iter()
                    .chain(file_chunks.last())
                    .copied()
                    .collect();
                v.dedup();
                v
            }
            _ => vec![ordinary, mid_snapshot, last],
        };
        for at in chunks {
            cases += 1;
            let key = format!("input/fault-{i}-{at}.csv");
            let chunk_keys = chunk(&stack, &key, &data).await?;
            let plan = FaultPlan::new();
            plan.arm(point, at);
            let detector = stack.faulty_detector(&with_source(&key), &plan).await?;
            let mut failures = 0;
            for k in &chunk_keys {
                if deliver(&detector, std::slice::from_ref(k)).await.is_err() {
                    failures += 1;
                }
            }
            assert_eq!(plan.fired(), vec![(point, at)], "{point:?} at {at}");
            assert_eq!(failures, 1, "{point:?} at {at}");
            // Redelivery: everything again, duplicated and shuffled, to a fresh container.
            let mut again: Vec<String> = chunk_keys.iter().chain(&chunk_keys).cloned().collect();
            again.shuffle(&mut rng);
            let fresh = stack.detector(&with_source(&key)).await?;
            for batch in again.chunks(3) {
                deliver(&fresh, batch).await?;
            }
            let got = outputs(&stack, &key).await?;
            assert_eq!(got.batches, clean.batches, "{point:?} at {at}");
            assert_eq!(got.detections, clean.detections, "{point:?} at {at}");
            assert_eq!(
                got.ledger
                    .iter()
                    .map(|l| (l.0, l.2, l.3, l.4))
                    .collect::<Vec<_>>(),
                clean
                    .ledger
                    .iter()
                    .map(|l| (l.0, l.2, l.3, l.4))
                    .collect::<Vec<_>>()
            );
            assert_eq!(got.rejected, clean.rejected);
            assert_eq!(got.transactions, clean.transactions);
            assert_eq!(got.stats, clean.stats);
        }
    }
    assert!(cases >= 15, "{cases}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_event_catches_up_and_cold_start_continues_identically() -> Result<()> {
    let stack = Stack::start(true).await?;
    let data = data()?;
    let mut keys = chunk_some(&stack, SOURCE_KEY, &data, Some(10)).await?;
    // A function of 128 MB, as Lambda would say in the environment.
    let mut small_function = SMALL.to_vec();
    small_function.push(("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"));
    let a = stack.detector(&small_function).await?;
    // An event for chunk 9 first: chunks 0..=9 are applied in order.
    let reply = deliver(&a, &keys[9..10]).await?;
    assert_eq!(reply.streams[0].applied, (0..10).collect::<Vec<u64>>());
    // Each applied chunk reports the state's size against the function's memory: the
    // baseline alone is 100 of 128 MiB.
    let last = &reply.applied[9];
    assert!(last.state_pairs > 0 && last.state_bytes > 0, "{last:?}");
    assert!(
        last.memory_percent.is_some_and(|p| p >= 78),
        "{:?}",
        last.memory_percent
    );
    keys.extend(chunk_some(&stack, SOURCE_KEY, &data, None).await?);
    // Duplicates are no-ops.
    let reply = deliver(&a, &keys[3..5]).await?;
    assert!(reply.streams[0].duplicate);
    let snapshot = head(&a, &stack.stream().await?)
        .await?
        .snapshot
        .ok_or_else(|| anyhow::anyhow!("no snapshot after 10 chunks"))?;
    assert!(snapshot.parts > 1, "{snapshot:?}");
    // A new process rebuilds from the snapshot's parts + deltas and finishes.
    let b = stack.detector(SMALL).await?;
    deliver(&b, &keys[keys.len() - 1..]).await?;
    let head = head(&b, &stack.stream().await?).await?;
    assert!(head.finished);
    assert_eq!(head.next_chunk, keys.len() as u64);

    // Same outputs as a clean run on another stream.
    let clean_key = "input/clean.csv";
    let clean_keys = chunk(&stack, clean_key, &data).await?;
    let c = stack.detector(&with_source(clean_key)).await?;
    for k in &clean_keys {
        deliver(&c, std::slice::from_ref(k)).await?;
    }
    let got = outputs(&stack, SOURCE_KEY).await?;
    let clean = outputs(&stack, clean_key).await?;
    assert_eq!(got.batches, clean.batches);
    assert_eq!(got.detections, clean.detections);
    assert_eq!(got.stats, clean.stats);

    // Other thresholds on the same stream are refused, not mixed in.
    let mut changed = SMALL.to_vec();
    changed.push(("TXPIPE_CHILD_MIN_TXNS", "81"));
    let other = stack.detector(&changed).await?;
    let err = other
        .detector()
        .await
        .catch_up(&stack.stream().await?, 0, far())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("was built with settings"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_fails_without_advancing_then_completes() -> Result<()> {
    let mut stack = Stack::start(true).await?;
    let data = data()?;
    let mut keys = chunk_some(&stack, SOURCE_KEY, &data, Some(3)).await?;
    let detector = stack.detector(SMALL).await?;
    deliver(&detector, &keys[0..3]).await?;
    keys.extend(chunk_some(&stack, SOURCE_KEY, &data, None).await?);
    stack.local.pg.as_mut().unwrap().pause()?;
    let stream = stack.stream().await?;
    for attempt in 1..=4 {
        assert!(deliver(&detector, &keys[3..4]).await.is_err());
        let h = head(&detector, &stream).await?;
        assert_eq!(h.next_chunk, 3);
        // A database that is away is a passing cause: counted, never parked.
        let failure = h.failure.expect("the failed attempt is recorded");
        assert_eq!((failure.attempts, failure.parked), (attempt, false));
        // Refused before the chunk touched the state: it stays warm, so an outage
        // does not cost a rebuild per event. (The first attempt may still find the
        // old connection looking alive and fail while writing.)
        if attempt > 1 {
            assert!(
                detector.detector().await.is_warm(&stream),
                "attempt {attempt}"
            );
        }
    }
    stack.local.pg.as_mut().unwrap().resume()?;
    deliver(&detector, &keys[keys.len() - 1..]).await?;
    let head = head(&detector, &stack.stream().await?).await?;
    assert!(head.finished);
    let ledger = outputs(&stack, SOURCE_KEY).await?.ledger;
    assert_eq!(ledger.len(), keys.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_bad_chunk_and_garbage_event_do_not_stop_the_stream() -> Result<()> {
    let stack = Stack::start(true).await?;
    let stream = txpipe::layout::StreamName::parse("input-handmade").unwrap();
    let header = "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n";
    let good = "0,'C1','2','F','28007','M1','28007','es_food',12.50,0\n";
    stack
        .put(IMPORTANCE_KEY, b"Source,Target,Weight,typeTrans,fraud\n'C1','M1',1.5,'es_food',0\n'C2','M1',abc,'es_food',0\n".to_vec())
        .await?;
    let objects = stack.local.objects();
    let chunk0 = format!(
        "{header}{good}1,'C2','2','M','28007','M1','28007','es_food',1.234,0\n2,'C3','2'\n{good}"
    );
    let chunk1 = "not,a,header\n1,2,3\n4,5,6\n".to_string();
    let chunk2 = format!("{header}{good}");
    for (k, body, first, rows, last) in [
        (0u64, chunk0, 1, 4, false),
        (1, chunk1, 5, 2, false),
        (2, chunk2, 7, 1, true),
    ] {
        objects
            .put(
                BUCKET,
                &stream.chunk_key(k),
                body.into_bytes(),
                &[
                    ("txpipe-first-row", first.to_string()),
                    ("txpipe-rows", rows.to_string()),
                    ("txpipe-last", last.to_string()),
                ],
            )
            .await?;
    }
    let detector = stack.detector(&[]).await?;
    assert_eq!(detector.detector().await.importance_rejected().len(), 1);
    let reply = detector
        .handle(&serde_json::json!({"hello": "world"}), far())
        .await?;
    assert_eq!(reply.status, "malformed");
    assert!(reply.error.unwrap().contains("not an S3 event"));
    // The first event with a chunk also stores the importance file's rejected rows.
    deliver(&detector, &[stream.chunk_key(2)]).await?;
    let head = head(&detector, &stream).await?;
    assert!(head.finished);
    assert_eq!((head.totals.rows, head.totals.rejected), (3, 4));
    let out = outputs_of(&stack, &stream).await?;
    assert_eq!(
        out.ledger.iter().map(|l| (l.2, l.3)).collect::<Vec<_>>(),
        vec![(2, 2), (0, 2), (1, 0)]
    );
    let reasons: Vec<&str> = out.rejected.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        out.rejected.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![2, 3, 5, 6]
    );
    assert!(reasons[0].contains("amount"), "{reasons:?}");
    assert!(reasons[1].contains("fields"), "{reasons:?}");
    assert!(reasons[2].contains("header is unusable"), "{reasons:?}");
    let pg = stack.pg_client().await?;
    let n: i64 = pg
        .query_one(
            "SELECT count(*) FROM rejected_rows WHERE file = 'importance'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(n, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_rolls_the_whole_chunk_back() -> Result<()> {
    let stack = Stack::start(true).await?;
    let data = data()?;
    let mut keys = chunk_some(&stack, SOURCE_KEY, &data, Some(1)).await?;
    let detector = stack.detector(SMALL).await?;
    deliver(&detector, &keys[0..1]).await?;
    keys.extend(chunk_some(&stack, SOURCE_KEY, &data, Some(1)).await?);
    // Make the last pipelined upsert fail for chunk 1: the COMMIT sent after it must
    // not keep the transactions copied before it.
    let pg = stack.pg_client().await?;
    pg.batch_execute("ALTER TABLE chunks ADD CONSTRAINT no_chunk_1 CHECK (chunk <> 1)")
        .await?;
    assert!(deliver(&detector, &keys[1..2]).await.is_err());
    let count = |sql: &'static str| {
        let pg = &pg;
        async move { pg.query_one(sql, &[]).await.map(|r| r.get::<_, i64>(0)) }
    };
    assert_eq!(
        count("SELECT count(*) FROM transactions WHERE chunk = 1").await?,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM detections WHERE chunk = 1").await?,
        0
    );
    assert_eq!(head(&detector, &stack.stream().await?).await?.next_chunk, 1);
    pg.batch_execute("ALTER TABLE chunks DROP CONSTRAINT no_chunk_1")
        .await?;
    deliver(&detector, &keys[1..2]).await?;
    assert_eq!(
        count("SELECT count(*) FROM transactions WHERE chunk = 1").await?,
        2000
    );
    assert_eq!(head(&detector, &stack.stream().await?).await?.next_chunk, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_quote_or_an_endless_line_rejects_only_itself() -> Result<()> {
    let stack = Stack::start(true).await?;
    let dir = temp_dir("stray-quote")?;
    let (transactions, importance) = generate(&dir, 5_000, 3, 400)?;
    let lines: Vec<&[u8]> = transactions.split_inclusive(|&b| b == b'\n').collect();
    let mut source = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match i {
            // Row 2,000: a stray `"` at the start of the customer field, which CSV
            // quoting alone would run to the end of the file.
            2_000 => {
                let comma = line.iter().position(|&b| b == b',').unwrap_or(0);
                source.extend_from_slice(&line[..=comma]);
                source.push(b'"');
                source.extend_from_slice(&line[comma + 1..]);
            }
            // After row 4,000: a line of 150,000 bytes (a file missing its line ends).
            4_001 => {
                source.extend(std::iter::repeat_n(b'x', 150_000));
                source.push(b'\n');
                source.extend_from_slice(line);
            }
            _ => source.extend_from_slice(line),
        }
    }
    stack.put(SOURCE_KEY, source).await?;
    stack.put(IMPORTANCE_KEY, importance).await?;
    // Small read windows: the chunker decides where the bounded records end from
    // ranges, as the detector does from the chunk.
    let extra = [("TXPIPE_ROWS_PER_CHUNK", "700")];
    let ctx = stack.chunker(&extra)?;
    let mut settings = ctx.settings().clone();
    settings.read_window = 20_000;
    let mut chunker = txpipe::chunker::Chunker::new(
        ctx.stores().objects.as_ref(),
        ctx.stores().cursors.as_ref(),
        settings,
    );
    assert!(chunker.run(far(), None, |_| {}).await?.finished);
    let stream = stack.stream().await?;
    let detector = stack.detector(&extra).await?;
    let last = stack.list(&stream.chunks_prefix()).await?;
    deliver(&detector, &last[last.len() - 1..]).await?;
    let h = head(&detector, &stream).await?;
    assert!(h.finished);
    // 5,000 rows, one of them with the stray quote, plus the long line's three pieces
    // (two of 65,536 bytes, and the 18,928 bytes left).
    assert_eq!((h.totals.rows, h.totals.rejected), (4_999, 4));
    let out = outputs_of(&stack, &stream).await?;
    let rejected: Vec<(i64, &str)> = out
        .rejected
        .iter()
        .map(|(r, why)| (*r, why.as_str()))
        .collect();
    assert_eq!(
        rejected.iter().map(|r| r.0).collect::<Vec<_>>(),
        [2_000, 4_001, 4_002, 4_003]
    );
    assert!(
        rejected[0]
            .1
            .contains("double quote opens a field that does not close"),
        "{rejected:?}"
    );
    assert!(
        rejected[1].1.contains("runs past 65536 bytes"),
        "{rejected:?}"
    );
    assert!(
        rejected[2].1.contains("runs past 65536 bytes"),
        "{rejected:?}"
    );
    assert!(rejected[3].1.contains("fields"), "{rejected:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_is_not_what_was_cut_is_recut_not_applied() -> Result<()> {
    let stack = Stack::start(true).await?;
    let data = data()?;
    let want = reference(&stack, &data)?;
    let keys = chunk(&stack, SOURCE_KEY, &data).await?;
    let stream = stack.stream().await?;
    let objects = stack.local.objects();
    let detector = stack.detector(SMALL).await?;
    let clock = txpipe_testkit::clock::TestClock::new();
    let config = stack.config(SMALL)?;
    let chunker = stack.chunker_over(SMALL, stack.stores(&config), clock.clone())?;
    let original = stack.get(&keys[1]).await?.unwrap_or_default();
    let meta = objects
        .get(BUCKET, &keys[1])
        .await?
        .map(|o| o.metadata)
        .unwrap_or_default();
    let metadata: Vec<(&str, String)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();

    // Written by hand with no metadata, then truncated under the whole chunk's.
    let cut_short = original[..original.len() / 2].to_vec();
    for (attempt, (bytes, metadata, why)) in [
        (
            original.clone(),
            Vec::new(),
            "metadata txpipe-first-row is missing",
        ),
        (cut_short.clone(), metadata.clone(), "when it was cut"),
        // A chunk cut before its hash was recorded: its row count still tells.
        (
            cut_short,
            metadata
                .iter()
                .filter(|(k, _)| *k != "txpipe-content-hash")
                .cloned()
                .collect(),
            "rows, but 2000 were cut",
        ),
        (
            original.clone(),
            metadata
                .iter()
                .map(|(k, v)| match *k {
                    "txpipe-source-etag" => (*k, "\"another-version\"".to_string()),
                    _ => (*k, v.clone()),
                })
                .collect(),
            "cut from source version \"\\\"another-version\\\"\"",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        objects.put(BUCKET, &keys[1], bytes, &metadata).await?;
        let reply = deliver(&detector, &keys[1..2]).await?;
        assert_eq!(reply.streams[0].missing, Some(1), "{why}");
        let h = head(&detector, &stream).await?;
        assert_eq!(h.next_chunk, 1, "{why}: nothing of chunk 1 applied");
        let failure = h.failure.expect("the refusal is recorded");
        assert!(failure.recut && !failure.parked, "{failure:?}");
        assert_eq!(failure.attempts, attempt as u64 + 1);
        assert!(failure.reason.contains(why), "{}", failure.reason);
    }
    // Refused four times: a tick writes it again from the source (at once when the
    // object is older than the first refusal; S3 dates objects to the second, so past
    // the back-off wait too, to be sure of the outcome either way).
    // (four failures: up to 16 stall periods of 90 s).
    clock.advance(chrono::Duration::seconds(16 * 90 + 60));
    assert_eq!(tick_kicked(&chunker).await?, Some(1));
    assert_eq!(stack.get(&keys[1]).await?, Some(original.clone()));
    deliver(&detector, &keys[1..2]).await?;
    let h = head(&detector, &stream).await?;
    assert!(h.finished && h.failure.is_none());
    let got = outputs(&stack, SOURCE_KEY).await?;
    assert_eq!(got.ledger.len(), want.chunks.len());
    assert_eq!(
        got.detections.len(),
        want.detections.len(),
        "the stream ends as the replay"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_from_another_source_is_never_mixed_into_the_stream() -> Result<()> {
    let stack = Stack::start(true).await?;
    let data = data()?;
    let (keys, detector) = first_chunk_applied(&stack, &data).await?;
    let stream = stack.stream().await?;
    let objects = stack.local.objects();
    // A chunk written under this stream's name by another source (a name collision).
    let stored = objects.get(BUCKET, &keys[1]).await?.expect("chunk 1");
    let metadata: Vec<(&str, String)> = stored
        .metadata
        .iter()
        .map(|(k, v)| match k.as_str() {
            "txpipe-source" => (k.as_str(), "s3://other-bucket/other.csv".to_string()),
            _ => (k.as_str(), v.clone()),
        })
        .collect();
    objects
        .put(BUCKET, &keys[1], stored.bytes.clone(), &metadata)
        .await?;
    assert!(deliver(&detector, &keys[1..2]).await.is_err());
    let h = head(&detector, &stream).await?;
    assert_eq!(h.next_chunk, 1, "nothing of chunk 1 applied");
    let failure = h.failure.expect("the refusal is recorded");
    assert!(
        !failure.recut && failure.reason.contains("two sources share one stream name"),
        "{failure:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_loaded_a_replaced_importance_file_takes_it_back() -> Result<()> {
    let stack = Stack::start(true).await?;
    let data = data()?;
    let (keys, _) = first_chunk_applied(&stack, &data).await?;
    // The importance file is replaced by mistake (one weight changed); a container
    // that starts now must refuse the stream.
    let text = String::from_utf8(data.importance.clone())?;
    let changed = text.replacen(
        text.lines().nth(1).unwrap_or_default(),
        &text
            .lines()
            .nth(1)
            .unwrap_or_default()
            .replacen(',', ",X", 2),
        1,
    );
    assert_ne!(changed, text);
    stack.put(IMPORTANCE_KEY, changed.into_bytes()).await?;
    let late = stack.detector(SMALL).await?;
    let refused = deliver(&late, &keys[1..2]).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("was built with settings")),
        "{refused:?}"
    );
    // Put back: the same container applies the stream (it used to refuse until the
    // container was recycled).
    stack.put(IMPORTANCE_KEY, data.importance.clone()).await?;
    let reply = deliver(&late, &keys[1..2]).await?;
    assert_eq!(reply.streams[0].next_chunk, keys.len() as u64, "{reply:?}");
    Ok(())
}

/// Cuts chunk 0, has a new container apply it, then cuts the rest (not applied):
/// every chunk's key, and the container.
async fn first_chunk_applied(stack: &Stack, data: &Data) -> Result<(Vec<String>, DetectorService)> {
    let mut keys = chunk_some(stack, SOURCE_KEY, data, Some(1)).await?;
    let detector = stack.detector(SMALL).await?;
    deliver(&detector, &keys[0..1]).await?;
    keys.extend(chunk(stack, SOURCE_KEY, data).await?);
    Ok((keys, detector))
}

async fn tick_kicked(chunker: &txpipe::chunker::ChunkerService) -> Result<Option<u64>> {
    Ok(chunker.handle(&serde_json::json!({}), far()).await?.sources[0].kicked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_alternating_never_change_a_published_fact() -> Result<()> {
    let stack = Stack::start(true).await?;
    let data = data()?;
    // Every version of every object is kept: a file written twice shows.
    stack
        .local
        .clients
        .s3
        .put_bucket_versioning()
        .bucket(BUCKET)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await?;
    // Small detection files, so most chunks complete one.
    let extra: Vec<(&str, &str)> = SMALL
        .iter()
        .copied()
        .chain([("TXPIPE_DETECTIONS_PER_FILE", "2")])
        .collect();
    stack.put(SOURCE_KEY, data.transactions.clone()).await?;
    stack.put(IMPORTANCE_KEY, data.importance.clone()).await?;
    let cut_one = || async {
        let run = stack.chunker(&extra)?.run(far(), Some(1)).await?;
        anyhow::Ok(run.written.into_iter().map(|c| c.key).collect::<Vec<_>>())
    };
    let mut keys = cut_one().await?;
    // The first container also loses some commits after its outputs are written: its
    // retry is a redo that must publish the same times.
    let plan = FaultPlan::new();
    for chunk in [2, 6, 10] {
        plan.arm(FaultPoint::Commit, chunk);
    }
    let containers = [
        stack.faulty_detector(&extra, &plan).await?,
        stack.detector(&extra).await?,
    ];
    // One chunk at a time, its event to the other container than the last one's: a
    // warm container's state is stale every time it is called.
    let mut k = 0;
    while !keys.is_empty() {
        let container = &containers[k % 2];
        if deliver(container, &keys).await.is_err() {
            deliver(container, &keys).await?; // Lambda's retry
        }
        k += 1;
        keys = cut_one().await?;
    }
    assert!(k > 10);
    assert_eq!(plan.fired().len(), 3);
    let stream = stack.stream().await?;
    assert!(head(&containers[0], &stream).await?.finished);

    // No object was written twice with different bytes.
    let versions = stack
        .local
        .clients
        .s3
        .list_object_versions()
        .bucket(BUCKET)
        .prefix("detections/")
        .send()
        .await?;
    let mut etags: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in versions.versions() {
        etags
            .entry(v.key().unwrap_or_default().to_string())
            .or_default()
            .push(v.e_tag().unwrap_or_default().to_string());
    }
    assert!(!etags.is_empty());
    for (key, tags) in &etags {
        assert_eq!(tags.len(), 1, "{key} written {} times", tags.len());
    }
    // Every detection's times are the same in S3 and Postgres (and its chunk's ledger).
    let disagree = txpipe_e2e::outputs::times_disagree(&stack, &stream).await?;
    assert_eq!(disagree, None);
    Ok(())
}

/// The snapshot part size is not pinned with a stream's settings: it only decides how a
/// snapshot is split into objects, and a reader takes the part count from the head. Two
/// containers with different part sizes taking turns leave exactly the replay's
/// outputs, and a cold rebuild holds exactly the replay's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_with_different_snapshot_part_sizes_share_a_stream() -> Result<()> {
    use txpipe_e2e::outputs::{first_difference, reference, stream_outputs};
    let stack = Stack::start(true).await?;
    let data = data()?;
    stack.put(SOURCE_KEY, data.transactions.clone()).await?;
    stack.put(IMPORTANCE_KEY, data.importance.clone()).await?;
    let with_parts = |bytes: &'static str| -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<(&str, &str)> = SMALL
            .iter()
            .copied()
            .filter(|(k, _)| *k != "TXPIPE_SNAPSHOT_PART_BYTES")
            .collect();
        v.push(("TXPIPE_SNAPSHOT_PART_BYTES", bytes));
        v.push(("TXPIPE_SNAPSHOT_MAX_DELTAS", "2"));
        v
    };
    let (small, large) = (with_parts("4096"), with_parts("262144"));
    let containers = [stack.detector(&small).await?, stack.detector(&large).await?];
    let chunker = stack.chunker(&small)?;
    let stream = stack.stream().await?;
    let mut k = 0;
    // The part counts of the snapshots the head named along the way.
    let mut part_counts = std::collections::BTreeSet::new();
    loop {
        let run = chunker.run(far(), Some(1)).await?;
        let keys: Vec<String> = run.written.into_iter().map(|c| c.key).collect();
        if keys.is_empty() {
            break;
        }
        deliver(&containers[k % 2], &keys).await?;
        k += 1;
        let head = containers[0].detector().await.head(&stream).await?;
        part_counts.extend(head.and_then(|h| h.snapshot).map(|s| s.parts));
    }
    assert!(
        part_counts.len() >= 2,
        "both part sizes wrote snapshots: {part_counts:?}"
    );
    let config = stack.config(&small)?;
    let want = reference(&stream, &data.transactions, &data.importance, &config, true)?;
    assert_eq!(k as u64, want.chunks);
    let got = stream_outputs(&stack, &stream, true).await?;
    if let Some(d) = first_difference(&got, &want.outputs) {
        panic!("outputs differ from the replay: {d}");
    }
    for extra in [&small, &large] {
        let cold = stack.detector(extra).await?;
        let mut detector = cold.detector().await;
        detector.load_stream(&stream).await?;
        let image = detector.state_image(&stream).map(|(_, bytes)| bytes);
        assert!(image == Some(want.state.clone()), "a cold rebuild differs");
    }
    Ok(())
}
