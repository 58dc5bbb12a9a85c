//! Chaos for end-to-end runs of the real services:
//!
//! - [`CrashSwitch`] and the `Crashing*` wrappers: every remote call a "container"
//!   makes (S3, DynamoDB, Postgres) goes through its switch, which can kill the
//!   container at its n-th call — before the call is sent, or after it took effect but
//!   before its answer is seen — or hold it there until released (a paused process
//!   whose lease may run out meanwhile). Counting calls instead of timing makes a crash
//!   point a function of the seed, not of the machine's speed.
//! - [`EventBus`]: S3's announcements of new chunk objects (from
//!   [`Notifying`](crate::events::Notifying)) delivered as S3 may: late, twice, out of
//!   order, several per event, or never.

use async_trait::async_trait;
use rand::Rng;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{watch, Semaphore};
use txpipe::detector::{ChunkRecord, ChunkSink, SinkError};
use txpipe::layout::{
    parse_chunk_key, StreamName, DETECTIONS_PREFIX, EVIDENCE_PREFIX, STATE_PREFIX,
};
use txpipe::parse::RejectedRow;
use txpipe::store::{
    ChunkCursor, CursorStore, DetectorHead, Fenced, ObjectInfo, ObjectStore, StateStore,
    StoreError, StoredObject,
};

/// How a container stops at the call its switch is armed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CrashMode {
    /// The process dies before the call is sent.
    Before,
    /// The call takes effect, then the process dies before it sees the answer.
    After,
    /// The call waits, unsent, until [`CrashSwitch::release`]: a paused process.
    Hold,
}

/// Where a switch struck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    /// The call's number since the switch was made (1-based).
    pub call: u64,
    /// How it struck.
    pub mode: CrashMode,
    /// The call, e.g. `put detections` or `commit`.
    pub op: String,
}

/// Which call a switch strikes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// The call with this number.
    Call(u64),
    /// The `skip + 1`-th call from now whose name starts with this.
    Op(String, u64),
}

#[derive(Debug, Default)]
struct SwitchState {
    calls: u64,
    armed: Option<(Target, CrashMode)>,
}

/// Kills or holds one container at a chosen remote call.
#[derive(Debug)]
pub struct CrashSwitch {
    state: Mutex<SwitchState>,
    trips: watch::Sender<Option<Trip>>,
    gate: Semaphore,
}

impl CrashSwitch {
    /// A switch with nothing armed.
    pub fn new() -> Arc<Self> {
        Arc::new(CrashSwitch {
            state: Mutex::new(SwitchState::default()),
            trips: watch::channel(None).0,
            gate: Semaphore::new(0),
        })
    }

    /// Arms the switch for the `nth` call from now (1 = the next call), forgetting an
    /// earlier trip.
    pub fn arm(&self, nth: u64, mode: CrashMode) {
        if let Ok(mut s) = self.state.lock() {
            s.armed = Some((Target::Call(s.calls + nth.max(1)), mode));
        }
        self.trips.send_replace(None);
    }

    /// Arms the switch for the `(skip + 1)`-th call from now whose name starts with
    /// `op` (`commit`, `put detections`, `write sink`, `list snapshot`, …): a crash at
    /// a chosen step boundary.
    pub fn arm_op(&self, op: &str, skip: u64, mode: CrashMode) {
        if let Ok(mut s) = self.state.lock() {
            s.armed = Some((Target::Op(op.to_string(), skip), mode));
        }
        self.trips.send_replace(None);
    }

    /// Disarms the switch and forgets its last trip (the container goes on, or a new
    /// one takes its place).
    pub fn disarm(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.armed = None;
        }
        self.trips.send_replace(None);
    }

    /// Calls made through the switch so far.
    pub fn calls(&self) -> u64 {
        self.state.lock().map(|s| s.calls).unwrap_or_default()
    }

    /// The trip since the last arming, if the switch struck.
    pub fn trip(&self) -> Option<Trip> {
        self.trips.borrow().clone()
    }

    /// Waits until the switch strikes.
    pub async fn tripped(&self) -> Trip {
        let mut rx = self.trips.subscribe();
        loop {
            if let Some(trip) = rx.borrow_and_update().clone() {
                return trip;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Lets a held call go on.
    pub fn release(&self) {
        self.gate.add_permits(1);
    }

    /// Runs one remote call `f`, named `op`, through the switch.
    pub async fn call<T>(&self, op: impl Fn() -> String, f: impl Future<Output = T>) -> T {
        let strike = match self.state.lock() {
            Ok(mut s) => {
                s.calls += 1;
                let calls = s.calls;
                let mut name = None;
                let hit = match &mut s.armed {
                    Some((Target::Call(at), mode)) if *at == calls => Some(*mode),
                    Some((Target::Op(prefix, skip), mode)) => {
                        let n = op();
                        let hit = match n.starts_with(prefix.as_str()) {
                            true if *skip == 0 => Some(*mode),
                            true => {
                                *skip -= 1;
                                None
                            }
                            false => None,
                        };
                        name = Some(n);
                        hit
                    }
                    _ => None,
                };
                hit.map(|mode| {
                    s.armed = None;
                    Trip {
                        call: calls,
                        mode,
                        op: name.unwrap_or_else(&op),
                    }
                })
            }
            Err(_) => None,
        };
        let Some(trip) = strike else {
            return f.await;
        };
        match trip.mode {
            CrashMode::Before => {
                self.trips.send_replace(Some(trip));
                std::future::pending().await
            }
            CrashMode::Hold => {
                self.trips.send_replace(Some(trip));
                if let Ok(permit) = self.gate.acquire().await {
                    permit.forget();
                }
                f.await
            }
            CrashMode::After => {
                let _ = f.await;
                self.trips.send_replace(Some(trip));
                std::future::pending().await
            }
        }
    }
}

/// What kind of object a key names, for naming calls.
pub fn object_kind(key: &str) -> &'static str {
    if parse_chunk_key(key).is_some() {
        "chunk"
    } else if key.starts_with(DETECTIONS_PREFIX) {
        "detections"
    } else if key.starts_with(EVIDENCE_PREFIX) {
        "evidence"
    } else if key.starts_with(STATE_PREFIX) && key.contains("/delta-") {
        "delta"
    } else if key.starts_with(STATE_PREFIX) {
        "snapshot"
    } else {
        "input"
    }
}

/// An [`ObjectStore`] whose calls go through a [`CrashSwitch`].
pub struct CrashingObjects {
    /// The real store.
    pub inner: Arc<dyn ObjectStore>,
    /// The switch.
    pub switch: Arc<CrashSwitch>,
}

#[async_trait]
impl ObjectStore for CrashingObjects {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, StoreError> {
        let op = || format!("get {}", object_kind(key));
        self.switch.call(op, self.inner.get(bucket, key)).await
    }
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let op = || format!("head {}", object_kind(key));
        self.switch.call(op, self.inner.head(bucket, key)).await
    }
    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        end: u64,
        etag: &str,
    ) -> Result<Vec<u8>, StoreError> {
        let op = || format!("get range {}", object_kind(key));
        let call = self.inner.get_range(bucket, key, start, end, etag);
        self.switch.call(op, call).await
    }
    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        metadata: &[(&str, String)],
        create_only: bool,
    ) -> Result<bool, StoreError> {
        let op = || format!("put {}", object_kind(key));
        let call = self
            .inner
            .put_object(bucket, key, body, metadata, create_only);
        self.switch.call(op, call).await
    }
    async fn delete(&self, bucket: &str, keys: &[String]) -> Result<(), StoreError> {
        let op = || {
            format!(
                "delete {}",
                keys.first().map_or("nothing", |k| object_kind(k))
            )
        };
        self.switch.call(op, self.inner.delete(bucket, keys)).await
    }
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        let op = || format!("list {}", object_kind(prefix));
        self.switch.call(op, self.inner.list(bucket, prefix)).await
    }
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: &str,
        max_keys: u32,
    ) -> Result<txpipe::store::ListPage, txpipe::store::StoreError> {
        let op = || format!("list a page of {prefix}");
        let call = self.inner.list_page(bucket, prefix, start_after, max_keys);
        self.switch.call(op, call).await
    }
}

/// A [`StateStore`] whose calls go through a [`CrashSwitch`].
pub struct CrashingState {
    /// The real store.
    pub inner: Arc<dyn StateStore>,
    /// The switch.
    pub switch: Arc<CrashSwitch>,
}

#[async_trait]
impl StateStore for CrashingState {
    async fn load_head(&self, stream: &StreamName) -> Result<Option<DetectorHead>, StoreError> {
        let op = || "load head".to_string();
        self.switch.call(op, self.inner.load_head(stream)).await
    }
    async fn put_head(
        &self,
        head: &DetectorHead,
        expected_version: Option<u64>,
    ) -> Result<Fenced, StoreError> {
        let commit = head.version == expected_version.unwrap_or(0) + 1;
        let op = || match commit {
            true => "commit".to_string(),
            false => "record failure".to_string(),
        };
        let call = self.inner.put_head(head, expected_version);
        self.switch.call(op, call).await
    }
    async fn acquire_lease(
        &self,
        stream: &StreamName,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Fenced, StoreError> {
        let op = || "acquire lease".to_string();
        let call = self.inner.acquire_lease(stream, owner, now_ms, until_ms);
        self.switch.call(op, call).await
    }
    async fn release_lease(&self, stream: &StreamName, owner: &str) -> Result<(), StoreError> {
        let op = || "release lease".to_string();
        self.switch
            .call(op, self.inner.release_lease(stream, owner))
            .await
    }
}

/// A [`CursorStore`] whose calls go through a [`CrashSwitch`].
pub struct CrashingCursors {
    /// The real store.
    pub inner: Arc<dyn CursorStore>,
    /// The switch.
    pub switch: Arc<CrashSwitch>,
}

#[async_trait]
impl CursorStore for CrashingCursors {
    async fn load_cursor(&self, source_id: &str) -> Result<Option<ChunkCursor>, StoreError> {
        let op = || "load cursor".to_string();
        self.switch
            .call(op, self.inner.load_cursor(source_id))
            .await
    }
    async fn create_cursor(&self, cursor: &ChunkCursor) -> Result<Fenced, StoreError> {
        let op = || "create cursor".to_string();
        self.switch.call(op, self.inner.create_cursor(cursor)).await
    }
    async fn advance_cursor(
        &self,
        cursor: &ChunkCursor,
        expected_next: u64,
    ) -> Result<Fenced, StoreError> {
        let op = || "advance cursor".to_string();
        let call = self.inner.advance_cursor(cursor, expected_next);
        self.switch.call(op, call).await
    }
    async fn replace_cursor(
        &self,
        cursor: &ChunkCursor,
        expected_stream: &StreamName,
    ) -> Result<Fenced, StoreError> {
        let op = || "replace cursor".to_string();
        let call = self.inner.replace_cursor(cursor, expected_stream);
        self.switch.call(op, call).await
    }

    async fn join_files(
        &self,
        cursor: &ChunkCursor,
        files: &[txpipe::store::SourceFile],
    ) -> Result<Fenced, StoreError> {
        let op = || format!("join {} files", files.len());
        self.switch
            .call(op, self.inner.join_files(cursor, files))
            .await
    }

    async fn file_at(
        &self,
        stream: &StreamName,
        index: u64,
    ) -> Result<Option<txpipe::store::SourceFile>, StoreError> {
        let op = || format!("read file log entry {index}");
        self.switch
            .call(op, self.inner.file_at(stream, index))
            .await
    }

    async fn files_by_key(
        &self,
        stream: &StreamName,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, txpipe::store::SourceFile>, StoreError> {
        let op = || format!("read {} file log entries", keys.len());
        self.switch
            .call(op, self.inner.files_by_key(stream, keys))
            .await
    }

    async fn mark_changed(
        &self,
        stream: &StreamName,
        file: &txpipe::store::SourceFile,
        change: &str,
    ) -> Result<(), StoreError> {
        let op = || "mark a file changed".to_string();
        self.switch
            .call(op, self.inner.mark_changed(stream, file, change))
            .await
    }
}

/// A [`ChunkSink`] whose calls go through a [`CrashSwitch`].
pub struct CrashingSink {
    /// The real sink.
    pub inner: Arc<dyn ChunkSink>,
    /// The switch.
    pub switch: Arc<CrashSwitch>,
}

#[async_trait]
impl ChunkSink for CrashingSink {
    fn wants_transactions(&self) -> bool {
        self.inner.wants_transactions()
    }
    async fn ready(&self) -> Result<(), SinkError> {
        self.inner.ready().await
    }
    async fn record_chunk(&self, record: &ChunkRecord<'_>) -> Result<(), SinkError> {
        let op = || "write sink".to_string();
        self.switch.call(op, self.inner.record_chunk(record)).await
    }
    async fn record_importance_rejects(
        &self,
        file: &str,
        rows: &[RejectedRow],
    ) -> Result<(), SinkError> {
        let op = || "write importance rejects".to_string();
        let call = self.inner.record_importance_rejects(file, rows);
        self.switch.call(op, call).await
    }
}

/// How unreliable the event bus is.
#[derive(Debug, Clone, PartialEq)]
pub struct EventChaos {
    /// Chance an announcement is never delivered.
    pub drop: f64,
    /// Chance an announcement is delivered twice (each copy on its own delay).
    pub duplicate: f64,
    /// Chance a copy waits some deliveries before it is ready.
    pub delay: f64,
    /// The longest wait, in deliveries.
    pub max_delay: u32,
    /// Chance a delivery picks a ready record other than the oldest.
    pub reorder: f64,
    /// Most records in one event.
    pub max_batch: usize,
}

impl EventChaos {
    /// A bus that delivers everything once, in order, one record per event.
    pub fn reliable() -> Self {
        EventChaos {
            drop: 0.0,
            duplicate: 0.0,
            delay: 0.0,
            max_delay: 0,
            reorder: 0.0,
            max_batch: 1,
        }
    }
}

/// What the bus did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusCounts {
    /// Announcements received (chunk objects written).
    pub announced: u64,
    /// Events handed out.
    pub events: u64,
    /// Records in those events.
    pub records: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Announcements never delivered.
    pub dropped: u64,
    /// Copies held back.
    pub delayed: u64,
    /// Records delivered ahead of an older ready one.
    pub reordered: u64,
    /// Records queued again after a failed invocation (Lambda's retries).
    pub retried: u64,
}

impl BusCounts {
    /// Adds another bus's counts.
    pub fn add(&mut self, o: &BusCounts) {
        self.announced += o.announced;
        self.events += o.events;
        self.records += o.records;
        self.duplicated += o.duplicated;
        self.dropped += o.dropped;
        self.delayed += o.delayed;
        self.reordered += o.reordered;
        self.retried += o.retried;
    }
}

/// S3 event delivery between the chunk objects' writers and the detector.
pub struct EventBus {
    rx: UnboundedReceiver<String>,
    /// (key, deliveries to wait), oldest first.
    queue: Vec<(String, u32)>,
    /// What the bus did so far.
    pub counts: BusCounts,
}

impl EventBus {
    /// A bus fed by a [`Notifying`](crate::events::Notifying) store's channel.
    pub fn new(rx: UnboundedReceiver<String>) -> Self {
        EventBus {
            rx,
            queue: Vec::new(),
            counts: BusCounts::default(),
        }
    }

    /// Takes the announcements made since the last call; each is dropped, duplicated
    /// or delayed as `chaos` says.
    pub fn collect(&mut self, rng: &mut impl Rng, chaos: &EventChaos) {
        while let Ok(key) = self.rx.try_recv() {
            self.announce(key, rng, chaos);
        }
    }

    /// One announcement from elsewhere (an object written around the wrapped store,
    /// which S3 announces all the same).
    pub fn announce(&mut self, key: String, rng: &mut impl Rng, chaos: &EventChaos) {
        self.counts.announced += 1;
        if rng.gen_bool(chaos.drop) {
            self.counts.dropped += 1;
            return;
        }
        let copies = if rng.gen_bool(chaos.duplicate) {
            self.counts.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let hold = match chaos.max_delay > 0 && rng.gen_bool(chaos.delay) {
                true => {
                    self.counts.delayed += 1;
                    rng.gen_range(1..=chaos.max_delay)
                }
                false => 0,
            };
            self.queue.push((key.clone(), hold));
        }
    }

    /// Puts records of a failed invocation back, to be delivered again after `hold`
    /// deliveries (Lambda retries a failed asynchronous invocation).
    pub fn retry(&mut self, keys: &[String], hold: u32) {
        for key in keys {
            self.counts.retried += 1;
            self.queue.push((key.clone(), hold));
        }
    }

    /// The next event's records: up to `max_batch` ready ones, not always the oldest.
    /// Empty when nothing is ready. Every held record comes one delivery closer.
    pub fn next_event(&mut self, rng: &mut impl Rng, chaos: &EventChaos) -> Vec<String> {
        let mut ready: Vec<usize> = (0..self.queue.len())
            .filter(|&i| self.queue[i].1 == 0)
            .collect();
        for entry in &mut self.queue {
            entry.1 = entry.1.saturating_sub(1);
        }
        if ready.is_empty() {
            return Vec::new();
        }
        let n = rng.gen_range(1..=chaos.max_batch.max(1)).min(ready.len());
        let mut picked = Vec::with_capacity(n);
        for _ in 0..n {
            let at = match rng.gen_bool(chaos.reorder) {
                true => rng.gen_range(0..ready.len()),
                false => 0,
            };
            if at > 0 {
                self.counts.reordered += 1;
            }
            picked.push(ready.remove(at));
        }
        let keys: Vec<String> = picked.iter().map(|&i| self.queue[i].0.clone()).collect();
        picked.sort_unstable();
        for i in picked.into_iter().rev() {
            self.queue.remove(i);
        }
        self.counts.events += 1;
        self.counts.records += keys.len() as u64;
        keys
    }

    /// Everything queued, oldest first, whatever its delay (for draining).
    pub fn take_all(&mut self) -> Vec<String> {
        let keys: Vec<String> = self.queue.drain(..).map(|(k, _)| k).collect();
        if !keys.is_empty() {
            self.counts.events += 1;
            self.counts.records += keys.len() as u64;
        }
        keys
    }

    /// Records waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[tokio::test]
    async fn switch_kills_before_or_after_and_holds_until_released() {
        let switch = CrashSwitch::new();
        let effects = Arc::new(Mutex::new(0));
        let effect = |e: Arc<Mutex<i32>>| async move {
            *e.lock().unwrap() += 1;
        };
        switch.arm(2, CrashMode::After);
        switch.call(|| "one".into(), effect(effects.clone())).await;
        let second = switch.call(|| "two".into(), effect(effects.clone()));
        tokio::select! {
            _ = second => panic!("the armed call must not return"),
            trip = switch.tripped() => assert_eq!((trip.call, trip.op.as_str()), (2, "two")),
        }
        assert_eq!(*effects.lock().unwrap(), 2, "After: the call took effect");

        switch.arm(1, CrashMode::Before);
        let third = switch.call(|| "three".into(), effect(effects.clone()));
        tokio::select! {
            _ = third => panic!("the armed call must not return"),
            trip = switch.tripped() => assert_eq!(trip.mode, CrashMode::Before),
        }
        assert_eq!(*effects.lock().unwrap(), 2, "Before: nothing happened");

        switch.arm(1, CrashMode::Hold);
        let held = switch.call(|| "four".into(), effect(effects.clone()));
        tokio::pin!(held);
        tokio::select! {
            _ = &mut held => panic!("a held call waits"),
            trip = switch.tripped() => assert_eq!(trip.mode, CrashMode::Hold),
        }
        switch.release();
        held.await;
        assert_eq!(*effects.lock().unwrap(), 3);
        assert_eq!(switch.calls(), 4);

        switch.disarm();
        switch.arm_op("commit", 1, CrashMode::Before);
        switch
            .call(|| "commit".into(), effect(effects.clone()))
            .await;
        switch
            .call(|| "put delta".into(), effect(effects.clone()))
            .await;
        let second_commit = switch.call(|| "commit".into(), effect(effects.clone()));
        tokio::select! {
            _ = second_commit => panic!("the second commit is the armed call"),
            trip = switch.tripped() => assert_eq!((trip.call, trip.op.as_str()), (7, "commit")),
        }
    }

    #[test]
    fn bus_drops_duplicates_delays_and_reorders_but_never_invents() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut bus = EventBus::new(rx);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let chaos = EventChaos {
            drop: 0.2,
            duplicate: 0.3,
            delay: 0.3,
            max_delay: 3,
            reorder: 0.5,
            max_batch: 3,
        };
        for k in 0..200 {
            tx.send(format!("chunks/s/{k:08}.csv")).unwrap();
        }
        bus.collect(&mut rng, &chaos);
        let mut delivered = Vec::new();
        for _ in 0..1000 {
            delivered.extend(bus.next_event(&mut rng, &chaos));
        }
        delivered.extend(bus.take_all());
        let c = &bus.counts;
        assert_eq!(c.announced, 200);
        assert_eq!(delivered.len() as u64, 200 - c.dropped + c.duplicated);
        assert!(c.dropped > 0 && c.duplicated > 0 && c.delayed > 0 && c.reordered > 0);
        assert!(delivered.iter().all(|k| parse_chunk_key(k).is_some()));
    }
}
