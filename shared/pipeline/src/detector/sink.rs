//! What the detector hands to the output database for each chunk, and the trait the
//! database adapter implements.

use crate::store::Retry;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use txpipe_core::detection::Detection;
use txpipe_core::engine::RowView;
use txpipe_core::layout::StreamName;
use txpipe_core::parse::{Gender, RejectedRow};
use txpipe_core::weight::Weight;

/// The output database failed; the chunk is not committed.
#[derive(Debug, thiserror::Error)]
#[error("output database: {message}")]
pub struct SinkError {
    /// What failed, with the server's own words and SQLSTATE when it answered.
    pub message: String,
    /// Whether trying again can help (the database down or busy) or not (it refuses
    /// this chunk's data).
    pub retry: Retry,
}

impl SinkError {
    /// A failure that trying again can cure.
    pub fn transient(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            retry: Retry::Transient,
        }
    }
}

/// The sink of a detector that only reads streams' state (`txpipe explain`): it has
/// no output database, so a chunk handed to it is refused, never dropped.
pub struct NoOutputs;

#[async_trait]
impl ChunkSink for NoOutputs {
    fn wants_transactions(&self) -> bool {
        false
    }

    async fn ready(&self) -> Result<(), SinkError> {
        Err(NoOutputs::refused())
    }

    async fn record_chunk(&self, _: &ChunkRecord<'_>) -> Result<(), SinkError> {
        Err(NoOutputs::refused())
    }

    async fn record_importance_rejects(&self, _: &str, _: &[RejectedRow]) -> Result<(), SinkError> {
        Err(NoOutputs::refused())
    }
}

impl NoOutputs {
    fn refused() -> SinkError {
        SinkError {
            message: "this detector only reads state (txpipe explain): it writes no outputs".into(),
            retry: Retry::Permanent,
        }
    }
}

/// One valid transaction row with its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessedRow {
    /// Source row number.
    pub row: u64,
    /// Customer id.
    pub customer: String,
    /// Merchant id.
    pub merchant: String,
    /// Gender as written.
    pub gender: Gender,
    /// Amount in cents.
    pub cents: u64,
    /// w(m,c), if the pair has importance rows.
    pub weight: Option<Weight>,
    /// The original line, byte for byte.
    pub raw: Vec<u8>,
}

impl From<RowView<'_>> for ProcessedRow {
    fn from(r: RowView<'_>) -> Self {
        ProcessedRow {
            row: r.row,
            customer: r.customer.to_string(),
            merchant: r.merchant.to_string(),
            gender: r.gender,
            cents: r.cents,
            weight: r.weight,
            raw: r.raw.to_vec(),
        }
    }
}

/// Current stats of a (merchant, customer) pair the chunk touched.
#[derive(Debug, Clone)]
pub struct PairRow {
    /// Merchant id.
    pub merchant: String,
    /// Customer id.
    pub customer: String,
    /// n(m,c).
    pub txns: u64,
    /// s(m,c) in cents.
    pub cents: u128,
    /// Gender at the merchant.
    pub gender: Gender,
    /// w(m,c).
    pub weight: Option<Weight>,
}

/// Everything one chunk writes to the database, in one transaction.
#[derive(Debug)]
pub struct ChunkRecord<'a> {
    /// The stream.
    pub stream: &'a StreamName,
    /// Chunk object key.
    pub key: &'a str,
    /// Chunk number.
    pub chunk: u64,
    /// Valid rows.
    pub rows: u64,
    /// Rejected rows.
    pub rejected_count: u64,
    /// When processing began (YStartTime).
    pub started: DateTime<Utc>,
    /// New detections, in order.
    pub detections: &'a [Detection],
    /// Rejected rows with reasons.
    pub rejected: &'a [RejectedRow],
    /// Valid rows with weights.
    pub transactions: &'a [ProcessedRow],
    /// Pairs the chunk touched, with their stats after it.
    pub pairs: &'a [PairRow],
}

/// The output database (Postgres), written idempotently per chunk.
#[async_trait]
pub trait ChunkSink: Send + Sync {
    /// Whether the sink stores every valid transaction (then the detector hands them
    /// over in [`ChunkRecord::transactions`]; otherwise that list stays empty).
    fn wants_transactions(&self) -> bool;
    /// Whether the sink can take a chunk now (connected, or connecting succeeds).
    /// Asked before a chunk touches the engine, so an unreachable database leaves the
    /// warm state valid: the next attempt goes on from memory instead of rebuilding.
    async fn ready(&self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Writes one chunk's rows, all or nothing; writing the same chunk again leaves
    /// the same rows.
    async fn record_chunk(&self, record: &ChunkRecord<'_>) -> Result<(), SinkError>;
    /// Writes the importance file's rejected rows (idempotent).
    async fn record_importance_rejects(
        &self,
        file: &str,
        rows: &[RejectedRow],
    ) -> Result<(), SinkError>;
}
