//! The chunker's cursor: where in which source file the next chunk starts.

/// Position of the chunker in one source object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkCursor {
    /// Bucket of the source.
    pub source_bucket: String,
    /// Key of the source.
    pub source_key: String,
    /// ETag of the source when the cursor was made; a different ETag is refused.
    pub etag: String,
    /// Size of the source in bytes.
    pub size: u64,
    /// The header line chunks repeat.
    pub header: Vec<u8>,
    /// Next chunk number.
    pub next_chunk: u64,
    /// Byte offset of the next chunk's first row.
    pub offset: u64,
    /// Data rows written to chunks so far.
    pub rows_emitted: u64,
    /// Whether the end-of-stream chunk has been written (or the source had no rows).
    pub finished: bool,
}

impl ChunkCursor {
    /// The id a cursor is stored under: `s3://bucket/key`.
    pub fn source_id(bucket: &str, key: &str) -> String {
        format!("s3://{bucket}/{key}")
    }

    /// This cursor's id.
    pub fn id(&self) -> String {
        Self::source_id(&self.source_bucket, &self.source_key)
    }
}
