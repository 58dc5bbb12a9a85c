//! Bugs the chaos run found (docs/chaos.md#what-it-found), each as a minimal
//! reproduction that failed before its fix and guards it since.
//!
//! 1. `a_stale_warm_detector_reports_an_applied_chunk_missing_for_ever`
//!    (`make chaos SEED=4 ONLY=6`): a warm container whose stream another container has
//!    moved on, and whose old position's chunk object has expired, answers "chunk k is
//!    missing" on every event and never reloads: the stream stalls while it gets the
//!    events.
//! 2. `a_parked_warm_detector_moves_a_newer_head_back_after_resume`
//!    (`make chaos SEED=123 ONLY=17`): a container that answered "parked" keeps the
//!    stream warm; after `txpipe resume` another container applies the stream further;
//!    the parked container's next event copies the stored head's version into its old
//!    state and writes over the head — the head moves back and names state that was
//!    pruned, so no container can rebuild the stream any more.
//! 3. `a_late_prune_deletes_the_snapshot_a_newer_head_names`: a container held past
//!    its lease just before its prune lists the stream's state; another container
//!    commits a newer snapshot; the late prune deletes it ("every snapshot but mine").
//! 4. `a_finished_streams_failed_final_prune_leaves_its_state_for_ever`: the last
//!    chunk's prune fails (or the container dies after its commit); no later snapshot
//!    comes to prune again, so the stream's old deltas and snapshots stay for ever.
//! 5. `a_failed_rebuild_of_a_finished_stream_stays_in_its_head_for_ever`
//!    (`make chaos SEED=11 ONLY=17`): a failure recorded past a finished stream's end.
//! 6. `a_late_delta_after_the_final_prune_is_tidied_by_its_writer`: a container paused
//!    before the last chunk's delta writes it after another finished and pruned the
//!    stream; it loses, and its retry must delete what it left.

use anyhow::Result;
use std::sync::Arc;
use std::time::{Duration, Instant};
use txpipe::detector::DetectorService;
use txpipe::setup::Stores;
use txpipe::store::ObjectStore;
use txpipe_e2e::*;
use txpipe_testkit::chaos::{
    CrashMode, CrashSwitch, CrashingCursors, CrashingObjects, CrashingSink, CrashingState,
};
use txpipe_testkit::clock::TestClock;
use txpipe_testkit::faults::{FaultPlan, FaultPoint};

/// 5,000 rows in chunks of 1,000; a chunk is parked at its first permanent failure.
const SETTINGS: &[(&str, &str)] = &[
    ("TXPIPE_ROWS_PER_CHUNK", "1000"),
    ("TXPIPE_UPGRADE_MIN_MERCHANT_TXNS", "100"),
    ("TXPIPE_CHILD_MIN_TXNS", "6"),
    ("TXPIPE_DEI_MIN_FEMALE", "2"),
    ("TXPIPE_PARK_AFTER_ATTEMPTS", "1"),
];

async fn upload(stack: &Stack, name: &str) -> Result<()> {
    let dir = temp_dir(name)?;
    let (transactions, importance) = generate(&dir, 5_000, 3, 400)?;
    stack.put(SOURCE_KEY, transactions).await?;
    stack.put(IMPORTANCE_KEY, importance).await?;
    Ok(())
}

/// Cuts `n` more chunks (all when `None`); returns their keys.
async fn cut(stack: &Stack, settings: &[(&str, &str)], n: Option<u64>) -> Result<Vec<String>> {
    let run = stack.chunker(settings)?.run(far(), n).await?;
    Ok(run.written.into_iter().map(|c| c.key).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_warm_detector_reports_an_applied_chunk_missing_for_ever() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, "found-stale").await?;
    let first = cut(&stack, SETTINGS, Some(2)).await?;
    // Container A applies chunks 0 and 1 and stays warm at 2.
    let a = stack.detector(SETTINGS).await?;
    deliver(&a, &first[1..2]).await?;
    // Container B applies the rest.
    let rest = cut(&stack, SETTINGS, None).await?;
    let b = stack.detector(SETTINGS).await?;
    deliver(&b, &rest[rest.len() - 1..]).await?;
    let stream = stack.stream().await?;
    let head = b.detector().await.head(&stream).await?.unwrap();
    assert!(head.finished && head.next_chunk == 5);
    // Chunk 2's object expires (lifecycle rule): it is applied, nobody needs it.
    stack
        .local
        .objects()
        .delete(BUCKET, &[stream.chunk_key(2)])
        .await?;
    // The next event reaches A, which answers from its old memory.
    let reply = deliver(&a, &rest[rest.len() - 1..]).await?;
    let s = &reply.streams[0];
    assert_eq!(
        (s.missing, s.next_chunk),
        (None, 5),
        "a warm container behind the stored head must catch up to it, not report chunk 2 missing: {s:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_warm_detector_moves_a_newer_head_back_after_resume() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, "found-parked").await?;
    let first = cut(&stack, SETTINGS, Some(2)).await?;
    let plan = FaultPlan::new();
    // Container A applies chunks 0 and 1.
    let a = stack.faulty_detector(SETTINGS, &plan).await?;
    deliver(&a, &first[1..2]).await?;
    let rest = cut(&stack, SETTINGS, None).await?;
    // The sink refuses chunk 2: A parks it.
    let pg = stack.pg_client().await?;
    pg.batch_execute("ALTER TABLE chunks ADD CONSTRAINT no_2 CHECK (chunk <> 2) NOT VALID")
        .await?;
    assert!(deliver(&a, &rest[0..1]).await.is_err());
    let stream = stack.stream().await?;
    let parked = a.detector().await.head(&stream).await?.unwrap();
    assert_eq!(parked.parked().map(|p| p.chunk), Some(2));
    // Another event meanwhile: A answers "parked" and keeps the stream warm.
    let reply = deliver(&a, &rest[0..1]).await?;
    assert_eq!(reply.streams[0].parked, Some(2));
    // The operator fixes the cause and resumes. The rewritten chunk's event reaches
    // container B, which applies the stream to its end (a snapshot at the end, older
    // state pruned).
    pg.batch_execute("ALTER TABLE chunks DROP CONSTRAINT no_2")
        .await?;
    let config = stack.config(SETTINGS)?;
    txpipe_cli::operate::resume(&stack.local.clients, &config, Some(stream.clone()), false).await?;
    let b = stack.detector(SETTINGS).await?;
    deliver(&b, &rest[0..1]).await?;
    let done = b.detector().await.head(&stream).await?.unwrap();
    assert!(done.finished && done.next_chunk == 5);
    // A later event reaches A (its read of chunk 3 fails, so it stops after one chunk).
    plan.arm(FaultPoint::ReadChunk, 3);
    let _ = deliver(&a, &rest[rest.len() - 1..]).await;
    let after = a.detector().await.head(&stream).await?.unwrap();
    assert_eq!(
        (after.next_chunk, after.finished),
        (5, true),
        "the stored head moved back from 5 to {} (written from A's old state)",
        after.next_chunk
    );
    // Whatever A did, a fresh container must still rebuild the stream (with the bug:
    // "the delta of chunk 0 is missing, but the head needs every delta from 0 to 3").
    let c = stack.detector(SETTINGS).await?;
    deliver(&c, &rest[rest.len() - 1..]).await?;
    Ok(())
}

/// A container whose every remote call goes through `switch`, on `clock`.
async fn switched(
    stack: &Stack,
    switch: &Arc<CrashSwitch>,
    clock: &Arc<TestClock>,
    settings: &[(&str, &str)],
) -> Result<DetectorService> {
    let config = stack.config(settings)?;
    let plain = stack.stores(&config);
    let stores = Stores {
        objects: Arc::new(CrashingObjects {
            inner: plain.objects.clone(),
            switch: switch.clone(),
        }),
        state: Arc::new(CrashingState {
            inner: plain.state.clone(),
            switch: switch.clone(),
        }),
        cursors: Arc::new(CrashingCursors {
            inner: plain.cursors.clone(),
            switch: switch.clone(),
        }),
        requests: Default::default(),
    };
    let sink = Arc::new(CrashingSink {
        inner: stack.sink(&config)?,
        switch: switch.clone(),
    });
    stack
        .detector_over(settings, stores, sink, clock.clone())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_prune_deletes_the_snapshot_a_newer_head_names() -> Result<()> {
    // Chunks of 500 rows, a snapshot every 2 chunks.
    let settings: Vec<(&str, &str)> = SETTINGS
        .iter()
        .copied()
        .filter(|(k, _)| *k != "TXPIPE_ROWS_PER_CHUNK")
        .chain([
            ("TXPIPE_ROWS_PER_CHUNK", "500"),
            ("TXPIPE_SNAPSHOT_MAX_DELTAS", "2"),
        ])
        .collect();
    let stack = Stack::start(true).await?;
    upload(&stack, "found-prune").await?;
    let clock = TestClock::new();
    let first = cut(&stack, &settings, Some(2)).await?;
    // Container A applies chunks 0 and 1, commits the snapshot after them, and is
    // paused just before its prune lists the stream's state.
    let (sa, sb) = (CrashSwitch::new(), CrashSwitch::new());
    let a = switched(&stack, &sa, &clock, &settings).await?;
    let b = switched(&stack, &sb, &clock, &settings).await?;
    sa.arm_op("list snapshot", 0, CrashMode::Hold);
    let event = object_created(BUCKET, &first[1..2]);
    let fa = a.handle(&event, Instant::now() + Duration::from_secs(20));
    tokio::pin!(fa);
    tokio::select! {
        r = &mut fa => panic!("A was not held: {:?}", r.map(|r| r.streams)),
        trip = sa.tripped() => assert_eq!(trip.op, "list snapshot"),
    }
    // A stays paused past its lease; B applies chunks 2..=5 and commits the snapshot
    // after chunk 5 (pruning the one after chunk 1).
    clock.advance(chrono::Duration::seconds(60));
    let more = cut(&stack, &settings, Some(4)).await?;
    deliver(&b, &more[3..4]).await?;
    let stream = stack.stream().await?;
    let head = b.detector().await.head(&stream).await?.unwrap();
    assert_eq!(head.snapshot.map(|s| s.next), Some(6));
    // A goes on: its prune lists the state as it is now, and deletes what is not its
    // own snapshot.
    sa.release();
    let _ = fa.await;
    // A fresh container must rebuild the stream from what the head names (with the
    // bug: "a snapshot part named by the head is missing").
    let rest = cut(&stack, &settings, None).await?;
    let c = stack.detector(&settings).await?;
    deliver(&c, &rest[rest.len() - 1..]).await?;
    Ok(())
}

/// The stream's state objects that its stored head does not name.
async fn unneeded_state(stack: &Stack, stream: &txpipe::layout::StreamName) -> Result<Vec<String>> {
    let head = stack
        .stores(&stack.config(SETTINGS)?)
        .state
        .load_head(stream)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no head"))?;
    stack.unneeded_state(stream, &head).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_streams_failed_final_prune_leaves_its_state_for_ever() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, "found-final-prune").await?;
    let mut keys = cut(&stack, SETTINGS, Some(4)).await?;
    let plan = FaultPlan::new();
    let a = stack.faulty_detector(SETTINGS, &plan).await?;
    deliver(&a, &keys[3..4]).await?;
    // The last chunk's prune fails (a crash there would leave the same).
    plan.arm(FaultPoint::Prune, 0);
    keys.extend(cut(&stack, SETTINGS, None).await?);
    deliver(&a, &keys[4..5]).await?;
    assert_eq!(plan.fired().len(), 1);
    let stream = stack.stream().await?;
    let head = a.detector().await.head(&stream).await?.unwrap();
    assert!(head.finished && head.prune_pending, "{head:?}");
    assert!(!unneeded_state(&stack, &stream).await?.is_empty());
    let config = stack.config(SETTINGS)?;
    let status = txpipe_cli::status::read_status(&stack.local.clients, &config, SOURCE_KEY, None)
        .await?
        .render();
    assert!(status.contains("old state not pruned yet"), "{status}");
    // Nothing else happens to a finished stream but the chunker's tick: after the
    // stall period its watch wakes the detector with the last chunk.
    let clock = TestClock::new();
    clock.advance(chrono::Duration::seconds(600));
    let chunker = stack.chunker_over(SETTINGS, stack.stores(&config), clock.clone())?;
    let tick = serde_json::json!({"detail-type": "Scheduled Event"});
    let r = chunker.handle(&tick, far()).await?;
    assert_eq!(r.sources[0].kicked, Some(4), "{r:?}");
    deliver(&stack.detector(SETTINGS).await?, &keys[4..5]).await?;
    assert_eq!(
        unneeded_state(&stack, &stream).await?,
        Vec::<String>::new(),
        "state objects left after the finished stream's final prune"
    );
    let head = a.detector().await.head(&stream).await?.unwrap();
    assert!(!head.prune_pending && head.failure.is_none(), "{head:?}");
    // Then the watch is quiet.
    let r = chunker.handle(&tick, far()).await?;
    assert_eq!(r.sources[0].kicked, None, "{r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rebuild_of_a_finished_stream_stays_in_its_head_for_ever() -> Result<()> {
    // make chaos SEED=11 ONLY=17: a duplicate event for a finished stream reached a
    // cold container whose rebuild failed twice (transient): the failure was recorded
    // at chunk "next", which no commit will ever clear.
    let stack = Stack::start(true).await?;
    upload(&stack, "found-finished-rebuild").await?;
    let keys = cut(&stack, SETTINGS, None).await?;
    deliver(&stack.detector(SETTINGS).await?, &keys[4..5]).await?;
    let plan = FaultPlan::new();
    plan.arm(FaultPoint::ReadState, 0);
    plan.arm(FaultPoint::ReadState, 0);
    let b = stack.faulty_detector(SETTINGS, &plan).await?;
    assert!(deliver(&b, &keys[4..5]).await.is_err());
    assert_eq!(plan.fired().len(), 2);
    let stream = stack.stream().await?;
    let head = b.detector().await.head(&stream).await?.unwrap();
    assert!(
        head.finished && head.failure.is_none(),
        "{:?}",
        head.failure
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_delta_after_the_final_prune_is_tidied_by_its_writer() -> Result<()> {
    let stack = Stack::start(true).await?;
    upload(&stack, "found-late-delta").await?;
    let clock = TestClock::new();
    let keys = cut(&stack, SETTINGS, None).await?;
    // Container A applies chunks 0..=3, then is paused just before it writes the last
    // chunk's delta.
    let (sa, sb) = (CrashSwitch::new(), CrashSwitch::new());
    let a = switched(&stack, &sa, &clock, SETTINGS).await?;
    let b = switched(&stack, &sb, &clock, SETTINGS).await?;
    sa.arm_op("put delta", 4, CrashMode::Hold);
    let event = object_created(BUCKET, &keys[4..5]);
    let fa = a.handle(&event, Instant::now() + Duration::from_secs(20));
    tokio::pin!(fa);
    tokio::select! {
        r = &mut fa => panic!("A was not held: {:?}", r.map(|r| r.streams)),
        trip = sa.tripped() => assert_eq!(trip.op, "put delta"),
    }
    // Past A's lease, B finishes the stream and prunes everything but the final
    // snapshot (the last chunk's delta included).
    clock.advance(chrono::Duration::seconds(60));
    deliver(&b, &keys[4..5]).await?;
    let stream = stack.stream().await?;
    assert_eq!(unneeded_state(&stack, &stream).await?, Vec::<String>::new());
    // A goes on: its delta lands after the prune, its outputs lose to B's, and it
    // retries against the finished stream.
    sa.release();
    let _ = fa.await;
    assert_eq!(
        unneeded_state(&stack, &stream).await?,
        Vec::<String>::new(),
        "the late writer left its delta behind"
    );
    Ok(())
}
