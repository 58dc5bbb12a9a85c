//! I/O at the edges: small traits for what the chunker and detector need from S3,
//! DynamoDB and Postgres, with one adapter each. The services above them are plain
//! async code over these traits, so their logic is testable with an in-memory double.

pub mod cursor;
pub mod dynamo;
pub mod head;
pub mod memory;
pub mod postgres;
pub mod s3;

use async_trait::async_trait;
use std::collections::HashMap;

pub use cursor::ChunkCursor;
pub use head::DetectorHead;

/// A remote call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object changed since it was first read (its ETag no longer matches).
    #[error("s3://{bucket}/{key} changed while it was being read (expected ETag {expected}); refusing to mix two files")]
    SourceChanged {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// ETag the cursor was made from.
        expected: String,
    },
    /// Stored data could not be decoded.
    #[error("corrupt stored state: {0}")]
    Corrupt(String),
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
        StoreError::Remote { op: op.into(), message: err.to_string() }
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
    /// Bytes `start..end` (end exclusive) of an object, only if its ETag is still `etag`.
    async fn get_range(&self, bucket: &str, key: &str, start: u64, end: u64, etag: &str) -> Result<Vec<u8>, StoreError>;
    /// Writes (or overwrites) an object.
    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>, metadata: &[(&str, String)]) -> Result<(), StoreError>;
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
    async fn load(&self, source_id: &str) -> Result<Option<ChunkCursor>, StoreError>;
    /// Creates the cursor if none exists.
    async fn create(&self, cursor: &ChunkCursor) -> Result<Fenced, StoreError>;
    /// Replaces the cursor only if it still expects chunk `expected_next`.
    async fn advance(&self, cursor: &ChunkCursor, expected_next: u64) -> Result<Fenced, StoreError>;
}

/// Where the detector keeps its state (DynamoDB head + deltas).
#[async_trait]
pub trait DetectorStateStore: Send + Sync {
    /// The head item of a stream, read consistently.
    async fn load_head(&self, stream: &str) -> Result<Option<DetectorHead>, StoreError>;
    /// Deltas of chunks `from..to`, in order.
    async fn load_deltas(&self, stream: &str, from: u64, to: u64) -> Result<Vec<Vec<u8>>, StoreError>;
    /// The single commit point of a chunk: writes its delta and moves the head from
    /// `expected_version` (None: no head yet) to `head`, atomically and conditionally.
    async fn commit(&self, head: &DetectorHead, expected_version: Option<u64>, delta: &[u8]) -> Result<Fenced, StoreError>;
}
