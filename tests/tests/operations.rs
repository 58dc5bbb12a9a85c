//! What keeps a stream going for months, against moto and a real Postgres: a chunk the
//! database refuses is parked loudly and resumed; the chunker's tick wakes a detector
//! that lost its events; backpressure; a pause longer than every retention; deadlines;
//! two detectors at once; limits no chunk can hit; settings pinned per stream; a blocked
//! statement cut short by the statement timeout
//! (`docs/architecture.md#keeping-a-stream-alive`).

use anyhow::Result;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use txpipe::chunker::ChunkerService;
use txpipe::detector::DetectorService;
use txpipe::layout::StreamName;
use txpipe::setup::Stores;
use txpipe::store::{DetectorHead, StoreError};
use txpipe_e2e::*;
use txpipe_testkit::clock::{Expiring, TestClock};
use txpipe_testkit::events::Notifying;

/// Small chunks, low thresholds, frequent snapshots, a short stall.
const SMALL: &[(&str, &str)] = &[
    ("TXPIPE_ROWS_PER_CHUNK", "2000"),
    ("TXPIPE_UPGRADE_MIN_MERCHANT_TXNS", "3000"),
    ("TXPIPE_DEI_MIN_FEMALE", "20"),
    ("TXPIPE_SNAPSHOT_MAX_DELTAS", "4"),
    ("TXPIPE_DETECTOR_STALL_SECS", "60"),
    ("TXPIPE_CHUNKER_BUDGET_SECS", "30"),
];

fn settings(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    SMALL.iter().chain(extra).copied().collect()
}

async fn upload(stack: &Stack, rows: u64) -> Result<()> {
    let dir = temp_dir(&format!("operations-{rows}"))?;
    let (transactions, importance) = generate(&dir, rows, 5, 700)?;
    stack.put(SOURCE_KEY, transactions).await?;
    stack.put(IMPORTANCE_KEY, importance).await?;
    Ok(())
}

/// Rows of the chunk ledger for `stream`.
async fn ledger_rows(pg: &tokio_postgres::Client, stream: &StreamName) -> Result<i64> {
    Ok(pg
        .query_one(
            "SELECT count(*) FROM chunks WHERE stream = $1",
            &[&stream.as_str()],
        )
        .await?
        .get(0))
}

async fn head(detector: &DetectorService, stream: &StreamName) -> Result<DetectorHead> {
    detector
        .detector()
        .await
        .head(stream)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no head for {stream}"))
}

/// The chunker's stores with every chunk write announced on a channel (S3's events),
/// so a test decides which announcements reach the detector.
fn announcing(
    stack: &Stack,
    extra: &[(&str, &str)],
) -> Result<(Stores, mpsc::UnboundedReceiver<String>)> {
    let stores = stack.stores(&stack.config(extra)?);
    let (events, incoming) = mpsc::unbounded_channel();
    let objects = Arc::new(Notifying {
        inner: stores.objects.clone(),
        events,
    });
    Ok((Stores { objects, ..stores }, incoming))
}

fn drain(incoming: &mut mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut keys = Vec::new();
    while let Ok(key) = incoming.try_recv() {
        keys.push(key);
    }
    keys
}

/// One schedule tick; what it did for the (only) source.
async fn tick(chunker: &ChunkerService) -> Result<txpipe::chunker::SourceTick> {
    let mut response = chunker.handle(&serde_json::json!({}), far()).await?;
    Ok(response.sources.remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_the_database_refuses_is_parked_shown_and_resumed() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, 12_000).await?;
    let extra = settings(&[("TXPIPE_PARK_AFTER_ATTEMPTS", "3")]);
    stack.chunker(&extra)?.run(far(), Some(2)).await?;
    let stream = stack.stream().await?;
    let detector = stack.detector(&extra).await?;
    deliver(&detector, &[stream.chunk_key(1)]).await?;
    let run = stack.chunker(&extra)?.run(far(), None).await?;
    assert_eq!(run.next_chunk, 6);
    let pg = stack.pg_client().await?;
    // The database refuses chunk 2's ledger row: a deterministic failure.
    pg.batch_execute("ALTER TABLE chunks ADD CONSTRAINT refuse_2 CHECK (chunk <> 2)")
        .await?;
    let last = stream.chunk_key(5);
    for attempt in 1..=3 {
        let err = deliver(&detector, std::slice::from_ref(&last))
            .await
            .unwrap_err()
            .to_string();
        // The server's own words and SQLSTATE, never a bare "db error".
        assert!(err.contains("refuse_2"), "{err}");
        assert!(err.contains("SQLSTATE 23514"), "{err}");
        let h = head(&detector, &stream).await?;
        assert_eq!(h.next_chunk, 2);
        let failure = h.failure.expect("the failed attempt is recorded");
        assert_eq!((failure.chunk, failure.attempts), (2, attempt));
        assert_eq!(failure.parked, attempt == 3, "attempt {attempt}");
    }
    // Parked: the stream waits visibly; events are answered, not retried for ever.
    let reply = deliver(&detector, std::slice::from_ref(&last)).await?;
    assert_eq!(reply.streams[0].parked, Some(2));
    assert!(reply.applied.is_empty());
    let config = stack.config(&extra)?;
    let status = txpipe_cli::status::read_status(&stack.local.clients, &config, SOURCE_KEY, None)
        .await?
        .render();
    assert!(status.contains("PARKED"), "{status}");
    assert!(status.contains("chunk 2 after 3 attempts"), "{status}");
    assert!(status.contains("SQLSTATE 23514"), "{status}");
    assert!(
        status.contains(&format!("txpipe resume --stream {stream}")),
        "{status}"
    );
    // The chunker's tick reports it every minute (the parked alarm's metric).
    assert_eq!(tick(&stack.chunker(&extra)?).await?.parked, Some(2));

    // The cause is fixed; `txpipe resume` clears the park and writes chunk 2 again,
    // whose event (delivered here as S3 would) completes the stream.
    pg.batch_execute("ALTER TABLE chunks DROP CONSTRAINT refuse_2")
        .await?;
    let said = txpipe_cli::operate::resume(&stack.local.clients, &config, None, false).await?;
    assert!(said.contains("chunk 2 unparked"), "{said}");
    assert!(said.contains(&stream.chunk_key(2)), "{said}");
    let reply = deliver(&detector, &[stream.chunk_key(2)]).await?;
    assert_eq!(reply.streams[0].applied, vec![2, 3, 4, 5]);
    let h = head(&detector, &stream).await?;
    assert!(h.finished && h.failure.is_none());
    let ledger = ledger_rows(&pg, &stream).await?;
    assert_eq!(ledger, 6);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chunkers_tick_wakes_a_detector_that_lost_its_events() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, 16_000).await?;
    let clock = TestClock::new();
    let (stores, mut incoming) = announcing(&stack, SMALL)?;
    let chunker = stack.chunker_over(SMALL, stores, clock.clone())?;
    let config = stack.config(SMALL)?;
    let detector = stack
        .detector_over(
            SMALL,
            stack.stores(&config),
            stack.sink(&config)?,
            clock.clone(),
        )
        .await?;
    // Four chunks cut; their events reach the detector.
    chunker.run(far(), Some(4)).await?;
    let stream = stack.stream().await?;
    deliver(&detector, &drain(&mut incoming)).await?;
    assert_eq!(head(&detector, &stream).await?.next_chunk, 4);
    // The next tick cuts the rest, but every one of its events is lost.
    let response = tick(&chunker).await?;
    assert_eq!((response.next_chunk, response.lag), (8, 4));
    assert_eq!(response.kicked, None, "those chunks were just announced");
    drain(&mut incoming);
    // A minute later nothing moved, but the detector is not idle long enough yet.
    clock.advance(chrono::Duration::seconds(30));
    let response = tick(&chunker).await?;
    assert_eq!((response.lag, response.kicked), (4, None));
    assert!(drain(&mut incoming).is_empty());
    // Past the stall: the tick writes the next chunks again, which announces them.
    clock.advance(chrono::Duration::seconds(60));
    let response = tick(&chunker).await?;
    assert_eq!((response.lag, response.kicked), (4, Some(4)));
    let again = drain(&mut incoming);
    assert_eq!(again.first(), Some(&stream.chunk_key(4)));
    deliver(&detector, &again[..1]).await?;
    let h = head(&detector, &stream).await?;
    assert!(h.finished, "caught up to the cursor from one event");
    assert_eq!(tick(&chunker).await?.lag, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_holds_the_chunker_while_the_detector_is_far_behind() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, 20_000).await?;
    let extra = settings(&[("TXPIPE_MAX_LAG_CHUNKS", "3")]);
    let chunker = stack.chunker(&extra)?;
    let response = tick(&chunker).await?;
    assert_eq!(response.chunks, vec![0, 1, 2]);
    assert!(response.backpressure_waits >= 1);
    assert!(!response.finished);
    let stream = stack.stream().await?;
    // Nothing more while nothing is applied, and `txpipe status` says why.
    assert!(tick(&chunker).await?.chunks.is_empty());
    let config = stack.config(&extra)?;
    let status = txpipe_cli::status::read_status(&stack.local.clients, &config, SOURCE_KEY, None)
        .await?
        .render();
    assert!(
        status.contains("backpressure      the chunker waits: the detector is 3 chunks behind"),
        "{status}"
    );
    let detector = stack.detector(&extra).await?;
    deliver(&detector, &[stream.chunk_key(2)]).await?;
    let status = txpipe_cli::status::read_status(&stack.local.clients, &config, SOURCE_KEY, None)
        .await?
        .render();
    assert!(!status.contains("backpressure"), "{status}");
    assert_eq!(tick(&chunker).await?.chunks, vec![3, 4, 5]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_paused_past_every_retention_completes_when_resumed() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, 20_000).await?;
    let clock = TestClock::new();
    let config = stack.config(SMALL)?;
    // Chunks expire 7 days after they are written, as the bucket's lifecycle rule
    // would do if it were set that short; nothing else in the pipeline expires.
    let real = stack.stores(&config);
    let expiring: Arc<Expiring> = Arc::new(Expiring::new(
        real.objects.clone(),
        clock.clone(),
        "chunks/",
        chrono::Duration::days(7),
    ));
    let (events, mut incoming) = mpsc::unbounded_channel();
    let objects = Arc::new(Notifying {
        inner: expiring.clone(),
        events,
    });
    let stores = Stores {
        objects,
        ..real.clone()
    };
    let chunker = stack.chunker_over(SMALL, stores.clone(), clock.clone())?;
    let detector = stack
        .detector_over(SMALL, stores, stack.sink(&config)?, clock.clone())
        .await?;
    chunker.run(far(), Some(3)).await?;
    deliver(&detector, &drain(&mut incoming)).await?;
    chunker.run(far(), None).await?;
    drain(&mut incoming); // lost: the stream pauses with 7 chunks unapplied
    let stream = stack.stream().await?;
    assert_eq!(head(&detector, &stream).await?.next_chunk, 3);

    // A year passes. Every chunk expires, applied or not.
    clock.advance(chrono::Duration::days(400));
    let gone = expiring.expire_due().await?;
    assert_eq!(gone.len(), 10);
    assert!(stack.list(&stream.chunks_prefix()).await?.is_empty());
    // An event for a chunk that is gone says so (and alarms) instead of waiting.
    let reply = deliver(&detector, &[stream.chunk_key(9)]).await?;
    assert_eq!(reply.streams[0].missing, Some(3));
    let status = txpipe_cli::status::read_status(&stack.local.clients, &config, SOURCE_KEY, None)
        .await?
        .render();
    assert!(status.contains("is missing"), "{status}");
    // The chunker's next tick re-cuts what the detector needs, exactly as first cut.
    let response = tick(&chunker).await?;
    assert_eq!((response.kicked, response.lag), (Some(3), 7));
    let announced = drain(&mut incoming);
    assert_eq!(announced.len(), 7);
    deliver(&detector, &announced[..1]).await?;
    let h = head(&detector, &stream).await?;
    assert!(h.finished && h.failure.is_none(), "{h:?}");

    // The same outputs as a stream that never paused.
    let clean = stack.chunker(&settings(&[("TXPIPE_SOURCE_KEY", "input/clean.csv")]))?;
    stack
        .put(
            "input/clean.csv",
            stack.get(SOURCE_KEY).await?.unwrap_or_default(),
        )
        .await?;
    clean.run(far(), None).await?;
    let clean_stream = stack.stream_of("input/clean.csv").await?;
    let clean_detector = stack.detector(SMALL).await?;
    deliver(&clean_detector, &[clean_stream.chunk_key(9)]).await?;
    let pg = stack.pg_client().await?;
    let detections = |s: StreamName| {
        let pg = &pg;
        async move {
            pg.query(
                "SELECT chunk, seq_in_chunk, pattern_id, merchant_id, customer_name
                 FROM detections WHERE stream = $1 ORDER BY chunk, seq_in_chunk",
                &[&s.as_str()],
            )
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        let t: (i64, i32, String, String, String) =
                            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
                        t
                    })
                    .collect::<Vec<_>>()
            })
        }
    };
    let (got, want) = (detections(stream).await?, detections(clean_stream).await?);
    assert!(!want.is_empty());
    assert_eq!(got, want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detector_stops_before_its_deadline_and_the_next_one_goes_on() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, 20_000).await?;
    stack.chunker(SMALL)?.run(far(), None).await?;
    let stream = stack.stream().await?;
    let detector = stack.detector(SMALL).await?;
    // Almost no time left: nothing is started that could not finish.
    let event = object_created(BUCKET, &[stream.chunk_key(9)]);
    let reply = detector
        .handle(&event, Instant::now() + Duration::from_millis(100))
        .await?;
    assert!(reply.streams[0].deferred);
    assert!(reply.applied.len() < 10);
    let reply = deliver(&detector, &[stream.chunk_key(9)]).await?;
    assert!(!reply.streams[0].deferred);
    assert!(head(&detector, &stream).await?.finished);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_detectors_at_once_apply_each_chunk_once() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, 20_000).await?;
    stack.chunker(SMALL)?.run(far(), None).await?;
    let stream = stack.stream().await?;
    let (a, b) = (stack.detector(SMALL).await?, stack.detector(SMALL).await?);
    let keys: Vec<String> = (0..10).map(|k| stream.chunk_key(k)).collect();
    let (ra, rb) = tokio::join!(deliver(&a, &keys[9..]), deliver(&b, &keys[9..]));
    let (ra, rb) = (ra?, rb?);
    let mut applied: Vec<u64> = ra
        .applied
        .iter()
        .chain(&rb.applied)
        .map(|c| c.chunk)
        .collect();
    applied.sort();
    // One of them held the stream's lease; between them every chunk exactly once.
    assert_eq!(applied, (0..10).collect::<Vec<_>>());
    assert!(
        ra.streams[0].busy || rb.streams[0].busy || ra.applied.is_empty() || rb.applied.is_empty()
    );
    let pg = stack.pg_client().await?;
    let ledger = ledger_rows(&pg, &stream).await?;
    assert_eq!(ledger, 10);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_setting_that_shapes_a_stream_is_pinned() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, 8_000).await?;
    stack.chunker(SMALL)?.run(far(), None).await?;
    let stream = stack.stream().await?;
    deliver(&stack.detector(SMALL).await?, &[stream.chunk_key(1)]).await?;
    // Detections per file: part of the stored fingerprint.
    let other = stack
        .detector(&settings(&[("TXPIPE_DETECTIONS_PER_FILE", "51")]))
        .await?;
    let err = deliver(&other, &[stream.chunk_key(3)]).await.unwrap_err();
    assert!(err.to_string().contains("was built with settings"), "{err}");
    // R: the chunks say how they were cut; a detector configured otherwise refuses.
    let config = stack.config(&settings(&[("TXPIPE_ROWS_PER_CHUNK", "1000")]))?;
    let detector = stack
        .detector_over(
            &settings(&[("TXPIPE_ROWS_PER_CHUNK", "1000")]),
            stack.stores(&config),
            stack.sink(&config)?,
            txpipe::clock::system(),
        )
        .await?;
    let err = deliver(&detector, &[stream.chunk_key(3)])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rows_per_chunk"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_s_settings_are_fixed_before_its_first_output() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, 8_000).await?;
    let stream = stack.stream().await?;
    // The first container takes the stream up (an early event: chunk 0 is not cut
    // yet, so nothing is applied and nothing written): the settings are fixed there.
    let first = stack.detector(SMALL).await?;
    let reply = deliver(&first, &[stream.chunk_key(0)]).await?;
    assert_eq!(reply.streams[0].waiting_for, Some(0));
    let h = head(&first, &stream).await?;
    assert_eq!(
        (h.version, h.fingerprint.as_str()),
        (0, first.detector().await.fingerprint())
    );
    // A container with another setting is refused before it writes anything, even
    // though nothing was committed yet (it used to apply chunk 0 with its own).
    stack.chunker(SMALL)?.run(far(), None).await?;
    let other = stack
        .detector(&settings(&[("TXPIPE_DEI_MIN_FEMALE", "21")]))
        .await?;
    let err = deliver(&other, &[stream.chunk_key(0)]).await.unwrap_err();
    assert!(err.to_string().contains("was built with settings"), "{err}");
    let pg = stack.pg_client().await?;
    assert_eq!(ledger_rows(&pg, &stream).await?, 0);
    // The first one completes the stream with its settings.
    deliver(&first, &[stream.chunk_key(3)]).await?;
    assert!(head(&first, &stream).await?.finished);
    assert_eq!(ledger_rows(&pg, &stream).await?, 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_chunk_can_hit_a_storage_limit() -> Result<()> {
    let stack = Stack::start(true).await?;
    // R = 100,000 rows, every one a new 128-byte customer: every pair is new.
    let mut text = String::from(
        "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n",
    );
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..100_000u32 {
        // Random-looking ids, so compression cannot hide their size.
        let customer: String = std::iter::once('C')
            .chain((0..127).map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                char::from(b"0123456789abcdefghijklmnopqrstuvwxyz"[(state >> 58) as usize % 36])
            }))
            .collect();
        let merchant = format!("M{}", i % 97);
        let gender = if i % 3 == 0 { "F" } else { "M" };
        text.push_str(&format!(
            "0,'{customer}','2','{gender}','28007','{merchant}','28007','es_food',{}.{:02},0\n",
            i % 500,
            i % 100
        ));
    }
    stack.put(SOURCE_KEY, text.into_bytes()).await?;
    stack
        .put(
            IMPORTANCE_KEY,
            b"Source,Target,Weight,typeTrans,fraud\n".to_vec(),
        )
        .await?;
    let extra = [("TXPIPE_ROWS_PER_CHUNK", "100000")];
    let run = stack.chunker(&extra)?.run(far(), None).await?;
    assert_eq!(run.next_chunk, 1);
    let stream = stack.stream().await?;
    let detector = stack.detector(&extra).await?;
    let reply = deliver(&detector, &[stream.chunk_key(0)]).await?;
    let applied = &reply.applied[0];
    assert_eq!(applied.rows, 100_000);
    // The delta is far over a DynamoDB item's 400 KB and a transaction's 4 MB: it is an
    // S3 object, and the head stays small.
    assert!(applied.delta_bytes > 4 << 20, "{}", applied.delta_bytes);
    let h = head(&detector, &stream).await?;
    assert!(h.finished);
    assert!(h.pending.len() < 64 * 1024);
    // The adapter refuses an item over DynamoDB's limit before sending it, with the
    // figure, though moto would take it.
    let mut huge = h.clone();
    huge.pending = vec![7; 500 * 1024];
    let config = stack.config(&extra)?;
    let err = stack
        .stores(&config)
        .state
        .put_head(&huge, Some(h.version))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Limit { limit: 409_600, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("409600 bytes"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_rows_are_stored_byte_for_byte() -> Result<()> {
    let stack = Stack::start(true).await?;
    let header = "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n";
    let mut source = header.as_bytes().to_vec();
    let good = b"0,'C1','2','F','28007','M1','28007','es_food',12.50,0\n";
    // A NUL in an unused column, and invalid UTF-8 in an id: both rejected.
    let nul = b"1,'C2','2','F','28007','M1','28007','es_f\x00od',1.00,0\n";
    let bad_utf8 = b"2,'C\xff3','2','F','28007','M1','28007','es_food',1.00,0\n";
    // Invalid UTF-8 in an unused column: accepted, and copied losslessly.
    let odd_category = b"3,'C4','2','F','28007','M1','28007','es_\xfefood',1.00,0\n";
    for row in [&good[..], nul, bad_utf8, odd_category] {
        source.extend_from_slice(row);
    }
    stack.put(SOURCE_KEY, source).await?;
    stack
        .put(
            IMPORTANCE_KEY,
            b"Source,Target,Weight,typeTrans,fraud\n'C\x001','M1',1.0,'x',0\n".to_vec(),
        )
        .await?;
    let extra = [("TXPIPE_PG_TRANSACTIONS", "on")];
    stack.chunker(&extra)?.run(far(), None).await?;
    let stream = stack.stream().await?;
    let detector = stack.detector(&extra).await?;
    deliver(&detector, &[stream.chunk_key(0)]).await?;
    assert!(head(&detector, &stream).await?.finished);
    let pg = stack.pg_client().await?;
    let rows = pg
        .query(
            "SELECT file, row_number, raw, raw_text, reason FROM rejected_rows ORDER BY file, row_number",
            &[],
        )
        .await?;
    let got: Vec<(String, i64, Vec<u8>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("importance".into(), 1, b"'C\x001','M1',1.0,'x',0".to_vec()),
            ("transactions".into(), 2, nul[..nul.len() - 1].to_vec()),
            (
                "transactions".into(),
                3,
                bad_utf8[..bad_utf8.len() - 1].to_vec()
            ),
        ]
    );
    let reasons: Vec<String> = rows.iter().map(|r| r.get(4)).collect();
    assert!(reasons.iter().all(|r| !r.is_empty()), "{reasons:?}");
    let raw: Vec<u8> = pg
        .query_one("SELECT raw FROM transactions WHERE row_number = 4", &[])
        .await?
        .get(0);
    assert_eq!(raw, odd_category[..odd_category.len() - 1].to_vec());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_transaction_partitions_are_dropped() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, 4_000).await?;
    let extra = settings(&[
        ("TXPIPE_PG_TRANSACTIONS", "on"),
        ("TXPIPE_PG_TRANSACTIONS_RETENTION_DAYS", "7"),
    ]);
    stack.chunker(&extra)?.run(far(), None).await?;
    let stream = stack.stream().await?;
    deliver(&stack.detector(&extra).await?, &[stream.chunk_key(1)]).await?;
    let pg = stack.pg_client().await?;
    let today = chrono::Utc::now().date_naive().format("%Y%m%d").to_string();
    let n: i64 = pg
        .query_one(&format!("SELECT count(*) FROM transactions_{today}"), &[])
        .await?
        .get(0);
    assert_eq!(n, 4_000, "today's rows are in today's partition");
    pg.batch_execute(
        "CREATE TABLE transactions_20000101 PARTITION OF transactions
         FOR VALUES FROM ('2000-01-01') TO ('2000-01-02')",
    )
    .await?;
    // A new container's first connection maintains the partitions.
    deliver(&stack.detector(&extra).await?, &[stream.chunk_key(1)]).await?;
    let left: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'transactions_20000101'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(left, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_input_is_not_an_error() -> Result<()> {
    let stack = Stack::start(false).await?;
    let response = tick(&stack.chunker(SMALL)?).await?;
    assert!(response.waiting_for_input);
    assert!(response.chunks.is_empty());
    Ok(())
}

/// The lease is the stream's, not the function's: another stream goes on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lease_answers_busy_and_blocks_nothing_else() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, 4_000).await?;
    stack.chunker(SMALL)?.run(far(), None).await?;
    let stream = stack.stream().await?;
    let config = stack.config(SMALL)?;
    let state = stack.stores(&config).state;
    let now = chrono::Utc::now().timestamp_millis();
    assert_eq!(
        state
            .acquire_lease(&stream, "someone-else", now, now + 60_000)
            .await?,
        txpipe::store::Fenced::Written
    );
    let detector = stack.detector(SMALL).await?;
    let reply = deliver(&detector, &[stream.chunk_key(1)]).await?;
    assert!(reply.streams[0].busy);
    assert!(reply.applied.is_empty());
    state.release_lease(&stream, "someone-else").await?;
    let reply = deliver(&detector, &[stream.chunk_key(1)]).await?;
    assert_eq!(reply.streams[0].applied, vec![0, 1]);
    Ok(())
}

/// A statement that cannot finish (here: it waits on a lock another session holds) is
/// cancelled by the statement timeout instead of holding the detector until Lambda kills
/// it; the failure is counted as a passing one, and the chunk applies once the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_statement_times_out_and_the_chunk_applies_after() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, 6_000).await?;
    // One chunk at a time (backpressure at a lag of 1), a short statement timeout.
    let extra = settings(&[
        ("TXPIPE_PG_STATEMENT_TIMEOUT_MS", "300"),
        ("TXPIPE_MAX_LAG_CHUNKS", "1"),
    ]);
    let chunker = stack.chunker(&extra)?;
    assert_eq!(tick(&chunker).await?.chunks, vec![0]);
    let stream = stack.stream().await?;
    let detector = stack.detector(&extra).await?;
    // The first chunk opens the detector's session while nothing blocks.
    deliver(&detector, &[stream.chunk_key(0)]).await?;
    assert_eq!(tick(&chunker).await?.chunks, vec![1]);

    // Another session holds the chunk ledger.
    let mut blocker = stack.pg_client().await?;
    let lock = blocker.transaction().await?;
    lock.batch_execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
        .await?;
    // Without the timeout the detector would wait on the lock for ever.
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        deliver(&detector, &[stream.chunk_key(1)]),
    )
    .await
    .expect("the detector gives up on the blocked statement by itself")
    .expect_err("the chunk cannot be written while the ledger is locked");
    let text = format!("{err:#}");
    assert!(
        text.contains("statement timeout") && text.contains("57014"),
        "{text}"
    );
    let failure = head(&detector, &stream)
        .await?
        .failure
        .expect("the failed attempt is recorded");
    assert_eq!(
        (failure.chunk, failure.attempts, failure.parked),
        (1, 1, false)
    );

    lock.rollback().await?;
    deliver(&detector, &[stream.chunk_key(1)]).await?;
    let h = head(&detector, &stream).await?;
    assert_eq!(h.next_chunk, 2);
    assert!(h.failure.is_none());
    Ok(())
}

/// The largest amount the parser accepts (12 integer digits) goes through to Postgres
/// exactly, as a transaction and summed per pair; one more digit is a rejected row, not
/// a chunk the database refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_amounts_are_stored_exactly() -> Result<()> {
    let stack = Stack::start(true).await?;
    let mut text = String::from(
        "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n",
    );
    for _ in 0..2_000 {
        text.push_str("0,'C1','2','F','28007','M1','28007','es_food',999999999999.99,0\n");
    }
    text.push_str("0,'C1','2','F','28007','M1','28007','es_food',1000000000000.00,0\n");
    stack.put(SOURCE_KEY, text.into_bytes()).await?;
    stack
        .put(
            IMPORTANCE_KEY,
            b"Source,Target,Weight,typeTrans,fraud\n".to_vec(),
        )
        .await?;
    let extra = [
        ("TXPIPE_ROWS_PER_CHUNK", "5000"),
        ("TXPIPE_PG_TRANSACTIONS", "on"),
    ];
    stack.chunker(&extra)?.run(far(), None).await?;
    let stream = stack.stream().await?;
    let detector = stack.detector(&extra).await?;
    let reply = deliver(&detector, &[stream.chunk_key(0)]).await?;
    assert_eq!(
        (reply.applied[0].rows, reply.applied[0].rejected),
        (2_000, 1)
    );

    let pg = stack.pg_client().await?;
    let stats = pg
        .query_one(
            "SELECT txns, amount::text, avg_amount::text FROM customer_stats WHERE stream = $1",
            &[&stream.as_str()],
        )
        .await?;
    let got: (i64, String, String) = (stats.get(0), stats.get(1), stats.get(2));
    assert_eq!(
        got,
        (
            2_000,
            "1999999999999980.00".to_string(),
            "999999999999.990000".to_string()
        )
    );
    let sum: String = pg
        .query_one(
            "SELECT sum(amount)::text FROM transactions WHERE stream = $1",
            &[&stream.as_str()],
        )
        .await?
        .get(0);
    assert_eq!(sum, "1999999999999980.00");
    let reason: String = pg
        .query_one(
            "SELECT reason FROM rejected_rows WHERE source = $1",
            &[&stream.as_str()],
        )
        .await?
        .get(0);
    assert!(reason.contains("amount"), "{reason}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_before_its_stream_is_applied_finishes_the_old_stream_first() -> Result<()>
{
    let stack = Stack::start(true).await?;
    upload(&stack, 8_000).await?;
    let clock = TestClock::new();
    let (stores, mut incoming) = announcing(&stack, SMALL)?;
    let chunker = stack.chunker_over(SMALL, stores, clock.clone())?;
    let config = stack.config(SMALL)?;
    let detector = stack
        .detector_over(
            SMALL,
            stack.stores(&config),
            stack.sink(&config)?,
            clock.clone(),
        )
        .await?;
    let old = stack.stream().await?;
    // Three chunks cut and applied; the last one is cut, but its event is lost (the
    // detector stays one behind).
    chunker.run(far(), Some(3)).await?;
    deliver(&detector, &drain(&mut incoming)).await?;
    let response = tick(&chunker).await?;
    assert!(response.finished);
    assert_eq!(drain(&mut incoming).len(), 1);
    assert_eq!(head(&detector, &old).await?.next_chunk, 3);
    // The daily extract replaces the file at the same key.
    let dir = temp_dir("operations-replaced")?;
    let (replacement, _) = generate(&dir, 4_000, 6, 700)?;
    stack.put(SOURCE_KEY, replacement).await?;
    let new = stack.stream().await?;
    // The old stream is kept until every chunk of it is applied: its cursor stays, so
    // the lag shows and the watch announces its last chunk again after the stall.
    let response = tick(&chunker).await?;
    assert_eq!(response.stream.as_deref(), Some(old.as_str()));
    assert_eq!(response.lag, 1);
    clock.advance(chrono::Duration::seconds(90));
    let response = tick(&chunker).await?;
    assert_eq!(response.kicked, Some(3));
    deliver(&detector, &drain(&mut incoming)).await?;
    let h = head(&detector, &old).await?;
    assert!(h.finished && h.next_chunk == 4, "{h:?}");
    let files = stack.list(&old.detections_prefix()).await?;
    assert!(
        !files.is_empty(),
        "the old stream's detection files are written"
    );
    // Only then does the new file start, as a new stream.
    let response = tick(&chunker).await?;
    assert_eq!(response.stream.as_deref(), Some(new.as_str()));
    assert_eq!(response.next_chunk, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_cannot_be_rebuilt_is_parked_shown_and_resumed() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, 8_000).await?;
    stack.chunker(SMALL)?.run(far(), Some(2)).await?;
    let stream = stack.stream().await?;
    deliver(&stack.detector(SMALL).await?, &[stream.chunk_key(1)]).await?;
    stack.chunker(SMALL)?.run(far(), None).await?;
    // A redeploy changed a threshold: the stored state was built with other settings,
    // so every cold container fails to rebuild it, before any chunk is tried.
    let changed = settings(&[("TXPIPE_CHILD_MIN_TXNS", "81")]);
    for attempt in 1..=3 {
        let detector = stack.detector(&changed).await?;
        let err = deliver(&detector, &[stream.chunk_key(2)])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("was built with settings"), "{err}");
        let h = head(&detector, &stream).await?;
        assert_eq!(h.next_chunk, 2);
        let failure = h
            .failure
            .expect("the failed rebuild is recorded in the head");
        assert_eq!((failure.chunk, failure.attempts), (2, attempt));
        assert_eq!(failure.parked, attempt == 3, "attempt {attempt}");
        assert!(failure
            .reason
            .contains("rebuilding the stream's state failed"));
    }
    // Parked: answered without another attempt, shown with its reason and the command,
    // reported by the chunker's tick (the parked alarm), and the watch stops kicking.
    let reply = deliver(&stack.detector(&changed).await?, &[stream.chunk_key(3)]).await?;
    assert_eq!(reply.streams[0].parked, Some(2));
    let config = stack.config(&changed)?;
    let status = txpipe_cli::status::read_status(&stack.local.clients, &config, SOURCE_KEY, None)
        .await?
        .render();
    assert!(status.contains("PARKED"), "{status}");
    assert!(status.contains("was built with settings"), "{status}");
    assert!(
        status.contains(&format!("txpipe resume --stream {stream}")),
        "{status}"
    );
    let t = tick(&stack.chunker(SMALL)?).await?;
    assert_eq!((t.parked, t.kicked), (Some(2), None));
    // The settings are restored; `txpipe resume` and the stream completes.
    let config = stack.config(SMALL)?;
    txpipe_cli::operate::resume(&stack.local.clients, &config, None, false).await?;
    let reply = deliver(&stack.detector(SMALL).await?, &[stream.chunk_key(2)]).await?;
    assert_eq!(reply.streams[0].applied, vec![2, 3]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicks_back_off_while_the_same_chunk_keeps_failing() -> Result<()> {
    let mut stack = Stack::start(true).await?;
    upload(&stack, 16_000).await?;
    let clock = TestClock::new();
    let (stores, mut incoming) = announcing(&stack, SMALL)?;
    // Chunk objects dated by the test clock (nothing expires here).
    let stores = Stores {
        objects: Arc::new(Expiring::new(
            stores.objects.clone(),
            clock.clone(),
            "chunks/",
            chrono::Duration::days(3650),
        )),
        ..stores
    };
    let chunker = stack.chunker_over(SMALL, stores, clock.clone())?;
    let config = stack.config(SMALL)?;
    let detector = stack
        .detector_over(
            SMALL,
            stack.stores(&config),
            stack.sink(&config)?,
            clock.clone(),
        )
        .await?;
    chunker.run(far(), Some(4)).await?;
    let stream = stack.stream().await?;
    deliver(&detector, &drain(&mut incoming)).await?;
    // The database goes away; the rest is cut, and those events are lost.
    stack.local.pg.as_mut().unwrap().pause()?;
    assert_eq!(tick(&chunker).await?.next_chunk, 8);
    drain(&mut incoming);
    // 25 minutes of ticks every 30 s. Each kick writes one chunk (one event, one
    // failed attempt); the waits double from the stall (60 s here): 60, 120, 240,
    // 480, then 960 at most.
    let mut kicks = Vec::new();
    for step in 1..=50 {
        clock.advance(chrono::Duration::seconds(30));
        let t = tick(&chunker).await?;
        let announced = drain(&mut incoming);
        if t.kicked.is_some() {
            assert_eq!(announced, vec![stream.chunk_key(4)], "one chunk per kick");
            assert!(deliver(&detector, &announced).await.is_err());
            kicks.push(step * 30);
        } else {
            assert!(announced.is_empty());
        }
    }
    // (Before the back-off: a kick of all 4 chunks at every tick after the first.)
    assert_eq!(kicks, [60, 180, 420, 900], "seconds after the cut");
    let h = head(&detector, &stream).await?;
    assert_eq!(h.failure.map(|f| (f.chunk, f.parked)), Some((4, false)));
    // Back: the next kick (within the longest wait) applies the rest.
    stack.local.pg.as_mut().unwrap().resume()?;
    for _ in 0..60 {
        clock.advance(chrono::Duration::seconds(30));
        if tick(&chunker).await?.kicked.is_some() {
            break;
        }
    }
    deliver(&detector, &drain(&mut incoming)).await?;
    assert!(head(&detector, &stream).await?.finished);
    Ok(())
}

/// An analyst asks why: `txpipe explain` rebuilds the stream as a cold detector does
/// and shows each pattern's numbers against its thresholds, and an emitted detection
/// with the evidence it was published with (the replay's, exactly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_evidence_of_each_detection_and_why_others_do_not_hold() -> Result<()> {
    use txpipe_cli::explain::{explain, Question};
    use txpipe_e2e::outputs::reference;
    let stack = Stack::start(true).await?;
    let dir = temp_dir("explain")?;
    let (transactions, importance) = generate(&dir, 20_000, 5, 700)?;
    stack.put(SOURCE_KEY, transactions.clone()).await?;
    stack.put(IMPORTANCE_KEY, importance.clone()).await?;
    let s = settings(&[("TXPIPE_DETECTIONS_PER_FILE", "7")]);
    stack.chunker(&s)?.run(far(), None).await?;
    let stream = stack.stream().await?;
    deliver(&stack.detector(&s).await?, &[stream.chunk_key(9)]).await?;
    let config = &stack.config(&s)?;
    let want = reference(&stream, &transactions, &importance, config, false)?;
    let clients = &stack.local.clients;
    let ask = |merchant: String, customer: Option<String>| async move {
        let question = Question {
            stream: None,
            merchant: &merchant,
            customer: customer.as_deref(),
        };
        explain(clients, config, question).await
    };
    for pattern in txpipe::patterns::registered() {
        let d = want
            .replay
            .detections
            .iter()
            .find(|d| d.key.pattern == pattern)
            .ok_or_else(|| anyhow::anyhow!("no {pattern:?} detection in the data"))?;
        let customer = (!d.key.customer.is_empty()).then(|| d.key.customer.clone());
        let text = ask(d.key.merchant.clone(), customer).await?;
        let evidence = d.evidence.as_ref().map(|e| e.to_json().to_string());
        let evidence = evidence.unwrap_or_default();
        // The pattern's own paragraph.
        let shown = text
            .split("\n\n")
            .find(|part| {
                part.starts_with(pattern.id())
                    && !part.starts_with(&format!("{} thresholds", pattern.id()))
            })
            .unwrap_or_default();
        let at = format!("\n  emitted at chunk {} (evidence/{stream}/", d.chunk);
        assert!(
            shown.contains(&at)
                && shown
                    .lines()
                    .any(|l| l.ends_with(&format!("evidence then: {evidence}"))),
            "{pattern:?} {d:?}:\n{text}"
        );
    }
    // A customer with too few transactions for PatId2 at its merchant: why not.
    let (m, c, n) = want
        .outputs
        .stats
        .iter()
        .find(|s| s.2 < 80)
        .map(|s| (s.0.clone(), s.1.clone(), s.2))
        .ok_or_else(|| anyhow::anyhow!("every pair has 80 transactions"))?;
    let text = ask(m.clone(), Some(c.clone())).await?;
    assert!(
        text.contains(&format!(
            "PatId2 does not hold now: transactions {n} >= 80: no"
        )) && text.contains(&format!("customer {c} at {m}: {n} transactions")),
        "{text}"
    );
    let unknown = ask("M-nobody".into(), None).await?;
    assert!(
        unknown.contains("merchant M-nobody: no transaction in this stream"),
        "{unknown}"
    );
    Ok(())
}
