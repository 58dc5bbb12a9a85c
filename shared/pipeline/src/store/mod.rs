//! I/O at the edges: the small traits the chunker and detector need from S3 and
//! DynamoDB, and one adapter for each ([`s3`], [`dynamo`]). The services above them are
//! plain async code over these traits.

pub mod cursor;
pub mod dynamo;
pub mod head;
pub mod s3;

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use txpipe_core::layout::StreamName;

pub use cursor::ChunkCursor;
pub use head::DetectorHead;

/// A remote call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object changed since the cursor was made (its ETag no longer matches).
    #[error("s3://{bucket}/{key} changed under a running cursor (cursor was made from ETag {expected}); refusing to mix two files. Delete the cursor item to start the new file from chunk 0")]
    SourceChanged {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// ETag the cursor was made from.
        expected: String,
    },
    /// Stored data could not be decoded.
    #[error("corrupt stored state at {at}: {why}")]
    Corrupt {
        /// Which item or object.
        at: String,
        /// What is wrong.
        why: String,
    },
    /// Any other failure of a remote service, with its context.
    #[error("{op}: {message}")]
    Remote {
        /// What was being done.
        op: String,
        /// The service's error.
        message: String,
    },
}

impl StoreError {
    /// A remote failure with context.
    pub fn remote(op: impl Into<String>, err: impl std::fmt::Display) -> Self {
        StoreError::Remote {
            op: op.into(),
            message: err.to_string(),
        }
    }

    /// Stored data that does not decode.
    pub fn corrupt(at: impl Into<String>, why: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            at: at.into(),
            why: why.to_string(),
        }
    }
}

/// An object read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// User metadata (`x-amz-meta-*`), keys lower-case.
    pub metadata: HashMap<String, String>,
}

/// Size and version of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Size in bytes.
    pub size: u64,
    /// ETag as S3 returns it.
    pub etag: String,
}

/// Blob storage (S3).
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// The whole object, or `None` if there is no such key.
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, StoreError>;
    /// Size and ETag, or `None` if there is no such key.
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StoreError>;
    /// Bytes `start..end` (end exclusive, clamped to the object) of an object, only if
    /// its ETag is still `etag`.
    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        end: u64,
        etag: &str,
    ) -> Result<Vec<u8>, StoreError>;
    /// Writes (or overwrites) an object.
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        metadata: &[(&str, String)],
    ) -> Result<(), StoreError>;
    /// Keys under a prefix, in key order (for status and tests).
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StoreError>;
}

/// Result of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// The write happened.
    Written,
    /// Another writer got there first; nothing was written.
    Lost,
}

/// Where the chunker keeps its cursor (DynamoDB).
#[async_trait]
pub trait CursorStore: Send + Sync {
    /// The cursor for a source, if one exists.
    async fn load_cursor(&self, source_id: &str) -> Result<Option<ChunkCursor>, StoreError>;
    /// Creates the cursor if none exists.
    async fn create_cursor(&self, cursor: &ChunkCursor) -> Result<Fenced, StoreError>;
    /// Replaces the cursor only if it still expects chunk `expected_next`.
    async fn advance_cursor(
        &self,
        cursor: &ChunkCursor,
        expected_next: u64,
    ) -> Result<Fenced, StoreError>;
}

/// Where the detector keeps its state (DynamoDB head + deltas).
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The head item of a stream, read consistently.
    async fn load_head(&self, stream: &StreamName) -> Result<Option<DetectorHead>, StoreError>;
    /// Encoded deltas of chunks `from..to`, in chunk order.
    async fn load_deltas(
        &self,
        stream: &StreamName,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// The single commit point of a chunk: writes its delta and moves the head from
    /// `expected_version` (None: no head yet) to `head`, atomically and conditionally.
    async fn commit(
        &self,
        head: &DetectorHead,
        expected_version: Option<u64>,
        chunk: u64,
        delta: &[u8],
    ) -> Result<Fenced, StoreError>;
}

/// Counts remote requests made through the adapters, so each chunk can report its own.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter(Arc<AtomicU64>);

impl RequestCounter {
    /// Counts one request.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Requests counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
