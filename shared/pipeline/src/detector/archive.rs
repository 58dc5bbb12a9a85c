//! A stream's stored state in S3: one delta object per chunk and snapshots in parts.
//!
//! A delta's content is a function of the state before the chunk and the chunk's bytes
//! only (no clock), so two attempts at one chunk write the same object: writing it
//! before the head commit is idempotent. It is written before any output of its chunk,
//! with the chunk's times in its metadata: a redo after a lost commit finds them and
//! publishes the same times again. The head, a small DynamoDB item, names the
//! snapshot; rebuilding is that snapshot plus every delta after it, fetched in
//! parallel. What no head can name any more is deleted ([`StateArchive::prune`]).

use super::ChunkTimes;
use crate::store::head::SnapshotRef;
use crate::store::{ObjectStore, StoreError};
use futures_util::{StreamExt, TryStreamExt};
use txpipe_core::layout::StreamName;

/// Delta metadata: when the chunk's first attempt started, and found its detections
/// (ms since the epoch).
const META_STARTED_MS: &str = "txpipe-started-ms";
const META_DETECTED_MS: &str = "txpipe-detected-ms";

/// How many objects are read or written at once.
const PARALLEL: usize = 16;

/// The state objects of streams in one bucket.
pub struct StateArchive<'a> {
    /// S3.
    pub objects: &'a dyn ObjectStore,
    /// The pipeline bucket.
    pub bucket: &'a str,
}

impl StateArchive<'_> {
    /// Writes chunk `k`'s delta with the chunk's times, unless an attempt wrote it
    /// first: then the times that attempt fixed, which are the chunk's from now on.
    pub async fn put_delta(
        &self,
        stream: &StreamName,
        k: u64,
        delta: Vec<u8>,
        times: ChunkTimes,
    ) -> Result<ChunkTimes, StoreError> {
        let metadata = [
            (
                META_STARTED_MS,
                times.started.timestamp_millis().to_string(),
            ),
            (
                META_DETECTED_MS,
                times.detected.timestamp_millis().to_string(),
            ),
        ];
        let key = stream.delta_key(k);
        if self
            .objects
            .put_new(self.bucket, &key, delta.clone(), &metadata)
            .await?
        {
            return Ok(times);
        }
        match self.pinned_times(stream, k).await? {
            Some(fixed) => Ok(fixed),
            // Left by a version that wrote no times (or deleted as it was read): it
            // fixed none, so these are the chunk's.
            None => {
                self.objects
                    .put(self.bucket, &key, delta, &metadata)
                    .await?;
                Ok(times)
            }
        }
    }

    /// The times an attempt at chunk `k` fixed, if its delta was written (with or
    /// without a commit after it).
    pub async fn pinned_times(
        &self,
        stream: &StreamName,
        k: u64,
    ) -> Result<Option<ChunkTimes>, StoreError> {
        let Some(object) = self.objects.get(self.bucket, &stream.delta_key(k)).await? else {
            return Ok(None);
        };
        let at = |name: &str| {
            object
                .metadata
                .get(name)
                .and_then(|v| v.parse::<i64>().ok())
                .and_then(chrono::DateTime::from_timestamp_millis)
        };
        Ok(match (at(META_STARTED_MS), at(META_DETECTED_MS)) {
            (Some(started), Some(detected)) => Some(ChunkTimes {
                chunk: k,
                started,
                detected,
            }),
            _ => None,
        })
    }

    /// The deltas of chunks `from..to`, in order. A missing one is lost state: an
    /// error naming it.
    pub async fn deltas(
        &self,
        stream: &StreamName,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        futures_util::stream::iter(from..to)
            .map(|k| async move {
                let key = stream.delta_key(k);
                match self.objects.get(self.bucket, &key).await? {
                    Some(object) => Ok((k, object.bytes)),
                    None => Err(StoreError::corrupt(
                        key,
                        format!(
                            "the delta of chunk {k} is missing, but the head needs every delta from {from} to {to}"
                        ),
                    )),
                }
            })
            .buffered(PARALLEL)
            .try_collect()
            .await
    }

    /// Writes a snapshot of the state after chunks `0..next`, one object per part.
    pub async fn put_snapshot(
        &self,
        stream: &StreamName,
        next: u64,
        parts: Vec<Vec<u8>>,
    ) -> Result<SnapshotRef, StoreError> {
        let bytes = parts.iter().map(|p| p.len() as u64).sum();
        let count = u32::try_from(parts.len())
            .map_err(|_| StoreError::corrupt(stream.state_prefix(), "too many snapshot parts"))?;
        futures_util::stream::iter(parts.into_iter().enumerate())
            .map(|(i, part)| async move {
                self.objects
                    .put(
                        self.bucket,
                        &stream.snapshot_part_key(next, i as u32),
                        part,
                        &[],
                    )
                    .await
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(SnapshotRef {
            next,
            parts: count,
            bytes,
        })
    }

    /// The parts of a snapshot, in order.
    pub async fn snapshot(
        &self,
        stream: &StreamName,
        snapshot: SnapshotRef,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        futures_util::stream::iter(0..snapshot.parts)
            .map(|i| async move {
                let key = stream.snapshot_part_key(snapshot.next, i);
                self.objects
                    .get(self.bucket, &key)
                    .await?
                    .map(|o| o.bytes)
                    .ok_or_else(|| {
                        StoreError::corrupt(key, "a snapshot part named by the head is missing")
                    })
            })
            .buffered(PARALLEL)
            .try_collect()
            .await
    }

    /// Deletes what no longer serves recovery once `keep` is committed: the older
    /// snapshots and the deltas `keep` covers. Never anything newer than `keep`: a
    /// prune that runs late (a container paused past its lease) must not delete the
    /// snapshot a newer head names. Returns how many objects went.
    pub async fn prune(&self, stream: &StreamName, keep: SnapshotRef) -> Result<usize, StoreError> {
        let prefix = stream.state_prefix();
        let number = |rest: &str, head: &str, tail: char| -> Option<u64> {
            rest.strip_prefix(head)?.split(tail).next()?.parse().ok()
        };
        let garbage: Vec<String> = self
            .objects
            .list(self.bucket, &prefix)
            .await?
            .into_iter()
            .filter(|key| {
                key.strip_prefix(&prefix).is_some_and(|rest| {
                    number(rest, "delta-", '.')
                        .or_else(|| number(rest, "snapshot-", '/'))
                        .is_some_and(|k| k < keep.next)
                })
            })
            .collect();
        if !garbage.is_empty() {
            self.objects.delete(self.bucket, &garbage).await?;
        }
        Ok(garbage.len())
    }
}
