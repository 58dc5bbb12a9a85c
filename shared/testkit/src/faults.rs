//! Stores that fail on command, to stop the detector (or chunker) at any step of a
//! chunk as if its process died there. They wrap the real adapters, so everything not
//! failed goes to moto and Postgres as usual, and production code carries no test
//! seam.
//!
//! A [`FaultPlan`] holds armed faults: "the next call at this point while chunk k is
//! in hand fails". The chunk in hand is the last chunk object read.

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use txpipe::detector::{ChunkRecord, ChunkSink, SinkError};
use txpipe::layout::StreamName;
use txpipe::layout::{parse_chunk_key, DETECTIONS_PREFIX, EVIDENCE_PREFIX, STATE_PREFIX};
use txpipe::parse::RejectedRow;
use txpipe::store::{
    DetectorHead, Fenced, ObjectInfo, ObjectStore, StateStore, StoreError, StoredObject,
};

/// A call where a fault can strike, in the order the detector makes them for a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// Reading the chunk object.
    ReadChunk,
    /// Writing the chunk's state delta (with its times).
    WriteDelta,
    /// Writing a detection file or its evidence file (the first of them written).
    WriteDetections,
    /// Writing the chunk's rows to Postgres.
    WriteSink,
    /// Writing a snapshot.
    WriteSnapshot,
    /// The commit, before it is made.
    Commit,
    /// The commit is made, but its answer is lost (the caller sees an error).
    CommitAnswer,
    /// Reading a snapshot part or a delta (a rebuild).
    ReadState,
    /// Taking the stream's lease.
    Lease,
    /// Deleting old state (a prune).
    Prune,
}

impl FaultPoint {
    /// Every point, in processing order.
    pub const ALL: [FaultPoint; 10] = [
        FaultPoint::ReadState,
        FaultPoint::Lease,
        FaultPoint::ReadChunk,
        FaultPoint::WriteDelta,
        FaultPoint::WriteDetections,
        FaultPoint::WriteSink,
        FaultPoint::WriteSnapshot,
        FaultPoint::Commit,
        FaultPoint::CommitAnswer,
        FaultPoint::Prune,
    ];

    /// Whether the point is outside any one chunk's work (a rebuild, the lease, a
    /// prune): armed there, it strikes at the next such call, whatever the chunk.
    pub fn chunkless(self) -> bool {
        matches!(
            self,
            FaultPoint::ReadState | FaultPoint::Lease | FaultPoint::Prune
        )
    }
}

/// The chunk number under which chunkless faults are armed.
const ANY_CHUNK: u64 = u64::MAX;

/// Faults armed for the stores that share this plan.
#[derive(Debug, Default)]
pub struct FaultPlan {
    armed: Mutex<HashMap<(FaultPoint, u64), u32>>,
    fired: Mutex<Vec<(FaultPoint, u64)>>,
    in_hand: Mutex<Option<u64>>,
}

impl FaultPlan {
    /// A plan with nothing armed.
    pub fn new() -> Arc<Self> {
        Arc::new(FaultPlan::default())
    }

    /// Arms one failure at `point` while chunk `chunk` is in hand (at the next call,
    /// for a [chunkless](FaultPoint::chunkless) point).
    pub fn arm(&self, point: FaultPoint, chunk: u64) {
        let chunk = if point.chunkless() { ANY_CHUNK } else { chunk };
        if let Ok(mut armed) = self.armed.lock() {
            *armed.entry((point, chunk)).or_default() += 1;
        }
    }

    /// The faults that struck, in order.
    pub fn fired(&self) -> Vec<(FaultPoint, u64)> {
        self.fired.lock().map(|f| f.clone()).unwrap_or_default()
    }

    fn set_in_hand(&self, chunk: u64) {
        if let Ok(mut in_hand) = self.in_hand.lock() {
            *in_hand = Some(chunk);
        }
    }

    /// Fails if a fault is armed at `point` for `chunk` (or the chunk in hand).
    fn check(&self, point: FaultPoint, chunk: Option<u64>) -> Result<(), StoreError> {
        let chunk = if point.chunkless() {
            Some(ANY_CHUNK)
        } else {
            chunk
        };
        let Some(chunk) = chunk.or_else(|| self.in_hand.lock().ok().and_then(|c| *c)) else {
            return Ok(());
        };
        let Ok(mut armed) = self.armed.lock() else {
            return Ok(());
        };
        match armed.get_mut(&(point, chunk)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                if let Ok(mut fired) = self.fired.lock() {
                    fired.push((point, chunk));
                }
                let what = match point.chunkless() {
                    true => format!("{point:?}"),
                    false => format!("{point:?} of chunk {chunk}"),
                };
                Err(StoreError::remote(what, "injected fault"))
            }
            _ => Ok(()),
        }
    }
}

/// An [`ObjectStore`] that fails chunk reads, detection files and snapshots on command.
pub struct FaultyObjects {
    /// The real store.
    pub inner: Arc<dyn ObjectStore>,
    /// The plan.
    pub plan: Arc<FaultPlan>,
}

#[async_trait]
impl ObjectStore for FaultyObjects {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, StoreError> {
        if let Some((_, k)) = parse_chunk_key(key) {
            self.plan.set_in_hand(k);
            self.plan.check(FaultPoint::ReadChunk, Some(k))?;
        } else if key.starts_with(STATE_PREFIX) {
            self.plan.check(FaultPoint::ReadState, None)?;
        }
        self.inner.get(bucket, key).await
    }
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.inner.head(bucket, key).await
    }
    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        end: u64,
        etag: &str,
    ) -> Result<Vec<u8>, StoreError> {
        self.inner.get_range(bucket, key, start, end, etag).await
    }
    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        metadata: &[(&str, String)],
        create_only: bool,
    ) -> Result<bool, StoreError> {
        if key.starts_with(DETECTIONS_PREFIX) || key.starts_with(EVIDENCE_PREFIX) {
            self.plan.check(FaultPoint::WriteDetections, None)?;
        } else if key.starts_with(STATE_PREFIX) && key.contains("/delta-") {
            self.plan.check(FaultPoint::WriteDelta, None)?;
        } else if key.starts_with(STATE_PREFIX) {
            self.plan.check(FaultPoint::WriteSnapshot, None)?;
        }
        self.inner
            .put_object(bucket, key, body, metadata, create_only)
            .await
    }
    async fn delete(&self, bucket: &str, keys: &[String]) -> Result<(), StoreError> {
        if keys.iter().any(|k| k.starts_with(STATE_PREFIX)) {
            self.plan.check(FaultPoint::Prune, None)?;
        }
        self.inner.delete(bucket, keys).await
    }
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(bucket, prefix).await
    }
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: &str,
        max_keys: u32,
    ) -> Result<txpipe::store::ListPage, txpipe::store::StoreError> {
        self.inner
            .list_page(bucket, prefix, start_after, max_keys)
            .await
    }
}

/// A [`StateStore`] whose commit fails, or loses its answer, on command.
pub struct FaultyState {
    /// The real store.
    pub inner: Arc<dyn StateStore>,
    /// The plan.
    pub plan: Arc<FaultPlan>,
}

#[async_trait]
impl StateStore for FaultyState {
    async fn load_head(&self, stream: &StreamName) -> Result<Option<DetectorHead>, StoreError> {
        self.inner.load_head(stream).await
    }
    async fn put_head(
        &self,
        head: &DetectorHead,
        expected_version: Option<u64>,
    ) -> Result<Fenced, StoreError> {
        // A commit moves the version by one; recording a failed attempt does not.
        let commit = head.version == expected_version.unwrap_or(0) + 1;
        let chunk = head.next_chunk.checked_sub(1);
        if commit {
            self.plan.check(FaultPoint::Commit, chunk)?;
        }
        let written = self.inner.put_head(head, expected_version).await?;
        if commit {
            self.plan.check(FaultPoint::CommitAnswer, chunk)?;
        }
        Ok(written)
    }
    async fn acquire_lease(
        &self,
        stream: &StreamName,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Fenced, StoreError> {
        self.plan.check(FaultPoint::Lease, None)?;
        self.inner
            .acquire_lease(stream, owner, now_ms, until_ms)
            .await
    }
    async fn release_lease(&self, stream: &StreamName, owner: &str) -> Result<(), StoreError> {
        self.inner.release_lease(stream, owner).await
    }
}

/// A [`ChunkSink`] that fails a chunk's write on command.
pub struct FaultySink {
    /// The real sink.
    pub inner: Arc<dyn ChunkSink>,
    /// The plan.
    pub plan: Arc<FaultPlan>,
}

#[async_trait]
impl ChunkSink for FaultySink {
    fn wants_transactions(&self) -> bool {
        self.inner.wants_transactions()
    }

    async fn ready(&self) -> Result<(), SinkError> {
        self.inner.ready().await
    }

    async fn record_chunk(&self, record: &ChunkRecord<'_>) -> Result<(), SinkError> {
        self.plan
            .check(FaultPoint::WriteSink, Some(record.chunk))
            .map_err(|e| SinkError::transient(e.to_string()))?;
        self.inner.record_chunk(record).await
    }
    async fn record_importance_rejects(
        &self,
        file: &str,
        rows: &[RejectedRow],
    ) -> Result<(), SinkError> {
        self.inner.record_importance_rejects(file, rows).await
    }
}
