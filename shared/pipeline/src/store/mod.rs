//! I/O at the edges: the small traits the chunker and detector need from S3 and
//! DynamoDB, and one adapter for each ([`s3`], [`dynamo`]). The services above them are
//! plain async code over these traits.
//!
//! The adapters enforce AWS's documented limits themselves (an item over 400 KB, an
//! object over 5 GB) and refuse before sending, with the figure, so a local stand-in
//! that does not enforce them (moto) still shows them.

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
pub use head::{ChunkFailure, DetectorHead, SnapshotRef};

/// Whether retrying the same call can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A passing condition: the network, throttling, a service briefly unavailable.
    Transient,
    /// The call itself is refused (bad request, too large, access denied): it fails the
    /// same way until something is fixed.
    Permanent,
}

/// A remote call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object changed since the cursor was made (its ETag no longer matches).
    #[error("s3://{bucket}/{key} changed under a running cursor (cursor was made from ETag {expected}); refusing to mix two files. Restore the original file, or start the new one as a new stream with `txpipe restart-source`")]
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
    /// A write would break one of AWS's documented limits; it was not sent.
    #[error("{what} is {size} bytes, over AWS's limit of {limit} bytes")]
    Limit {
        /// What would have been written.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Any other failure of a remote service, with its context.
    #[error("{op}: {message}")]
    Remote {
        /// What was being done.
        op: String,
        /// The service's error.
        message: String,
        /// Whether trying again can help.
        retry: Retry,
    },
}

impl StoreError {
    /// A transient remote failure with context.
    pub fn remote(op: impl Into<String>, err: impl std::fmt::Display) -> Self {
        StoreError::Remote {
            op: op.into(),
            message: err.to_string(),
            retry: Retry::Transient,
        }
    }

    /// Stored data that does not decode.
    pub fn corrupt(at: impl Into<String>, why: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            at: at.into(),
            why: why.to_string(),
        }
    }

    /// Whether trying again can help.
    pub fn retry(&self) -> Retry {
        match self {
            StoreError::Remote { retry, .. } => *retry,
            StoreError::SourceChanged { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Limit { .. } => Retry::Permanent,
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
    /// When it was last written, in ms since the epoch (0 if the store did not say).
    pub modified_ms: i64,
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
    /// Writes an object; with `create_only`, only if none has the key (S3's
    /// conditional write, `If-None-Match: *`). `false` when it wrote nothing.
    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        metadata: &[(&str, String)],
        create_only: bool,
    ) -> Result<bool, StoreError>;
    /// Writes (or overwrites) an object.
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        metadata: &[(&str, String)],
    ) -> Result<(), StoreError> {
        self.put_object(bucket, key, body, metadata, false)
            .await
            .map(|_| ())
    }
    /// Writes an object only if none has the key: `false`, writing nothing, when one
    /// exists.
    async fn put_new(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        metadata: &[(&str, String)],
    ) -> Result<bool, StoreError> {
        self.put_object(bucket, key, body, metadata, true).await
    }
    /// Deletes objects (missing ones are not an error).
    async fn delete(&self, bucket: &str, keys: &[String]) -> Result<(), StoreError>;
    /// Keys under a prefix, in key order (for status, pruning and tests).
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// One page (at most `max_keys`, at most 1,000) of the objects under `prefix` whose
    /// keys sort after `start_after`, in key order: one `ListObjectsV2` request.
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: &str,
        max_keys: u32,
    ) -> Result<ListPage, StoreError>;
}

/// An object found by listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key.
    pub key: String,
    /// Its ETag.
    pub etag: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, in ms since the epoch (0 if the store did not say).
    pub modified_ms: i64,
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// The objects, in key order.
    pub objects: Vec<Listed>,
    /// More keys follow.
    pub truncated: bool,
}

/// One file of a prefix stream, as it joined: the file log's entry, never changed but
/// for `changed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Its place in the order files joined (0, 1, …).
    pub index: u64,
    /// Its key.
    pub key: String,
    /// The ETag it joined with: its rows are read from this version only.
    pub etag: String,
    /// Its size when it joined.
    pub size: u64,
    /// When it joined (Unix ms).
    pub joined_ms: i64,
    /// It joined after files whose keys sort after it.
    pub late: bool,
    /// What happened to it after it joined, if anything (`overwritten: ETag …`).
    pub changed: Option<String>,
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
    /// Replaces the cursor only if it still expects chunk `expected_next` of the same
    /// stream.
    async fn advance_cursor(
        &self,
        cursor: &ChunkCursor,
        expected_next: u64,
    ) -> Result<Fenced, StoreError>;
    /// Replaces the cursor of a source with one for a new stream, only if the stored
    /// one is still of `expected_stream`.
    async fn replace_cursor(
        &self,
        cursor: &ChunkCursor,
        expected_stream: &StreamName,
    ) -> Result<Fenced, StoreError>;
    /// Prefix stream: records `files` (the last `files.len()` of `cursor.files`) in the
    /// file log and writes `cursor`, in one transaction, only if the stored cursor is
    /// still at `cursor.version - 1` and none of the keys joined before.
    async fn join_files(
        &self,
        cursor: &ChunkCursor,
        files: &[SourceFile],
    ) -> Result<Fenced, StoreError>;
    /// Prefix stream: the file that joined `index`-th.
    async fn file_at(
        &self,
        stream: &StreamName,
        index: u64,
    ) -> Result<Option<SourceFile>, StoreError>;
    /// Prefix stream: the files among `keys` (at most 100) that joined, by key.
    async fn files_by_key(
        &self,
        stream: &StreamName,
        keys: &[String],
    ) -> Result<HashMap<String, SourceFile>, StoreError>;
    /// Prefix stream: records what happened to a joined file after it joined (`file` as
    /// the log keeps it from now on: a skipped file's size is the bytes kept).
    async fn mark_changed(
        &self,
        stream: &StreamName,
        file: &SourceFile,
        change: &str,
    ) -> Result<(), StoreError>;
}

/// Where the detector keeps each stream's head (DynamoDB): the one small record whose
/// conditional update commits a chunk.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The head of a stream, read consistently.
    async fn load_head(&self, stream: &StreamName) -> Result<Option<DetectorHead>, StoreError>;
    /// Writes `head` only if the stored head is still at `expected_version` (`None`: no
    /// head yet; `Some(0)`: no head, or one with nothing committed). A commit moves the
    /// version by one; recording a failed attempt keeps it.
    async fn put_head(
        &self,
        head: &DetectorHead,
        expected_version: Option<u64>,
    ) -> Result<Fenced, StoreError>;
    /// Takes the stream's lease for `owner` until `until_ms` (Unix milliseconds) if it
    /// is free, expired at `now_ms`, or already `owner`'s: one invocation at a time
    /// applies a stream, whatever Lambda's concurrency.
    async fn acquire_lease(
        &self,
        stream: &StreamName,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Fenced, StoreError>;
    /// Gives the lease back if `owner` still holds it.
    async fn release_lease(&self, stream: &StreamName, owner: &str) -> Result<(), StoreError>;
}

/// Counts remote requests made through the adapters, so each chunk can report its own.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter(Arc<AtomicU64>);

impl RequestCounter {
    /// Counts `n` requests.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Requests counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
