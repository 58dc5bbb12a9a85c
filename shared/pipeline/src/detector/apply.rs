//! Applying one chunk: the exactly-once protocol, one named step each. Every output is
//! written under a deterministic key before the single conditional commit, so a crash
//! anywhere leaves nothing the next attempt would not overwrite with the same thing
//! (`docs/architecture.md#exactly-once`).

use super::sink::{ChunkRecord, PairRow, ProcessedRow};
use super::{AppliedChunk, Detector, DetectorError, StepMillis, StreamState};
use crate::chunker::{META_FIRST_ROW, META_LAST};
use crate::store::{DetectorHead, Fenced, StoredObject};
use crate::timing::Laps;
use chrono::{DateTime, Utc};
use txpipe_core::batch::DetectionBatch;
use txpipe_core::detection::Detection;
use txpipe_core::engine::{ApplyError, ChunkOutcome};
use txpipe_core::layout::StreamName;
use txpipe_core::parse::{ImportanceTable, TransactionReader};

/// A chunk object read from S3, with what its metadata says.
struct ChunkInput {
    number: u64,
    key: String,
    object: StoredObject,
    first_row: u64,
    last: bool,
}

/// The chunk applied to the engine, not yet committed.
struct Applied {
    outcome: ChunkOutcome,
    detections: Vec<Detection>,
    started: DateTime<Utc>,
}

impl Detector {
    /// Applies the stream's next chunk: read, apply, write outputs, snapshot when due,
    /// commit. `None` when the chunk does not exist yet.
    pub(super) async fn apply_next(
        &self,
        st: &mut StreamState,
        stream: &StreamName,
        newest: u64,
    ) -> Result<Option<AppliedChunk>, DetectorError> {
        let j = st.head.next_chunk;
        let requests_before = self.stores.requests.get();
        let mut laps = Laps::start();
        let mut millis = StepMillis::default();
        let started = Utc::now();

        let Some(input) = self.read_chunk(stream, j).await? else {
            return Ok(None);
        };
        millis.read = laps.lap();
        let applied = self.apply_to_engine(st, stream, &input, started)?;
        millis.apply = laps.lap();
        let batches = self
            .write_detection_files(st, stream, &applied, input.last)
            .await?;
        millis.s3 = laps.lap();
        self.write_sink(st, stream, &input, &applied).await?;
        millis.sink = laps.lap();
        let snapshot_next = self
            .write_snapshot_if_due(st, stream, j, input.last)
            .await?;
        millis.snapshot = laps.lap();
        let delta_bytes = self
            .commit(st, stream, &applied, snapshot_next, input.last)
            .await?;
        millis.commit = laps.lap();
        millis.total = laps.total();

        let mut per_pattern = [0u64; 3];
        for d in &applied.detections {
            per_pattern[d.key.pattern.index()] += 1;
        }
        Ok(Some(AppliedChunk {
            stream: stream.clone(),
            chunk: j,
            rows: applied.outcome.delta.rows,
            rejected: applied.outcome.delta.rejected,
            detections: per_pattern,
            batches: batches as u64,
            requests: self.stores.requests.get() - requests_before,
            delta_bytes,
            last: input.last,
            behind: newest.saturating_sub(j),
            millis,
        }))
    }

    /// Step 1: GET chunk `j` (`None` if it does not exist yet).
    async fn read_chunk(
        &self,
        stream: &StreamName,
        j: u64,
    ) -> Result<Option<ChunkInput>, DetectorError> {
        let key = stream.chunk_key(j);
        let Some(object) = self.stores.objects.get(&self.settings.bucket, &key).await? else {
            return Ok(None);
        };
        let meta = |name: &str| object.metadata.get(name).map(String::as_str);
        let first_row = meta(META_FIRST_ROW)
            .and_then(|v| v.parse().ok())
            .unwrap_or(j * self.settings.shape.rows_per_chunk + 1);
        let last = meta(META_LAST) == Some("true");
        Ok(Some(ChunkInput {
            number: j,
            key,
            object,
            first_row,
            last,
        }))
    }

    /// Step 2: the engine applies the chunk and finds what became true. A chunk whose
    /// header is unusable has every row rejected with the reason; the stream goes on.
    fn apply_to_engine(
        &self,
        st: &mut StreamState,
        stream: &StreamName,
        input: &ChunkInput,
        started: DateTime<Utc>,
    ) -> Result<Applied, DetectorError> {
        let bad = |e: ApplyError| DetectorError::State {
            stream: stream.clone(),
            why: e.to_string(),
        };
        let j = input.number;
        let bytes = &input.object.bytes;
        let outcome = match st.engine.apply_chunk(j, bytes, input.first_row) {
            Ok(outcome) => outcome,
            Err(ApplyError::Header { source, .. }) => {
                tracing::error!(chunk = j, key = %input.key, error = %source, "chunk header unusable; every row of the chunk is rejected");
                st.engine
                    .reject_chunk(j, bytes, input.first_row, &source.to_string())
                    .map_err(bad)?
            }
            Err(e) => return Err(bad(e)),
        };
        let detected_at = Utc::now();
        let detections = outcome
            .detections
            .iter()
            .map(|key| Detection {
                key: key.clone(),
                chunk: j,
                y_start: started,
                detected_at,
            })
            .collect();
        Ok(Applied {
            outcome,
            detections,
            started,
        })
    }

    /// Step 3: every detection file that is now full (and the short last one at the
    /// end of the stream), each under its batch number's key.
    async fn write_detection_files(
        &self,
        st: &mut StreamState,
        stream: &StreamName,
        applied: &Applied,
        last: bool,
    ) -> Result<usize, DetectorError> {
        let mut batches: Vec<DetectionBatch> = st.batcher.push(applied.detections.iter().cloned());
        if last {
            batches.extend(st.batcher.flush());
        }
        for batch in &batches {
            self.stores
                .objects
                .put(
                    &self.settings.bucket,
                    &stream.detections_key(batch.number),
                    batch.to_jsonl(),
                    &[],
                )
                .await?;
        }
        Ok(batches.len())
    }

    /// Step 4: the chunk's rows in Postgres, in one transaction keyed by the chunk.
    async fn write_sink(
        &self,
        st: &StreamState,
        stream: &StreamName,
        input: &ChunkInput,
        applied: &Applied,
    ) -> Result<(), DetectorError> {
        let delta = &applied.outcome.delta;
        let transactions = processed_rows(&input.object.bytes, input.first_row, &self.importance);
        let pairs: Vec<PairRow> = st
            .engine
            .pairs_of(delta)
            .map(|p| PairRow {
                merchant: p.merchant.to_string(),
                customer: p.customer.to_string(),
                txns: p.txns,
                cents: p.cents,
                gender: p.gender,
                weight: p.weight,
            })
            .collect();
        self.sink
            .record_chunk(&ChunkRecord {
                stream,
                key: &input.key,
                chunk: input.number,
                rows: delta.rows,
                rejected_count: delta.rejected,
                started: applied.started,
                detections: &applied.detections,
                rejected: &applied.outcome.rejected,
                transactions: &transactions,
                pairs: &pairs,
            })
            .await?;
        Ok(())
    }

    /// Step 5: a snapshot of the whole state when one is due (every `snapshot_every`
    /// chunks and at the end). Returns what the head's snapshot pointer becomes.
    async fn write_snapshot_if_due(
        &self,
        st: &StreamState,
        stream: &StreamName,
        j: u64,
        last: bool,
    ) -> Result<Option<u64>, DetectorError> {
        if !(last || (j + 1).is_multiple_of(self.settings.snapshot_every)) {
            return Ok(st.head.snapshot_next);
        }
        self.stores
            .objects
            .put(
                &self.settings.bucket,
                &stream.snapshot_key(j + 1),
                st.engine.encode_snapshot(),
                &[],
            )
            .await?;
        Ok(Some(j + 1))
    }

    /// Step 6: the single commit point — the head moves from version v to v + 1 with
    /// the chunk's delta, only if no other writer moved it first. Returns the delta's
    /// size.
    async fn commit(
        &self,
        st: &mut StreamState,
        stream: &StreamName,
        applied: &Applied,
        snapshot_next: Option<u64>,
        last: bool,
    ) -> Result<u64, DetectorError> {
        let j = applied.outcome.delta.chunk;
        let head = DetectorHead {
            stream: stream.clone(),
            next_chunk: j + 1,
            version: st.head.version + 1,
            snapshot_next,
            next_batch: st.batcher.next_batch(),
            pending: st.batcher.encode_pending(),
            finished: last,
            fingerprint: self.fingerprint.clone(),
            totals: st.engine.totals(),
            updated_ms: Utc::now().timestamp_millis(),
        };
        let expected = (st.head.version > 0).then_some(st.head.version);
        let delta = applied.outcome.delta.encode();
        match self.stores.state.commit(&head, expected, j, &delta).await? {
            Fenced::Written => {
                st.head = head;
                Ok(delta.len() as u64)
            }
            Fenced::Lost => Err(DetectorError::Contended {
                stream: stream.clone(),
                chunk: j,
                attempts: 1,
            }),
        }
    }
}

/// The valid rows of a chunk with their weights, for the processed-transactions table.
fn processed_rows(bytes: &[u8], first_row: u64, importance: &ImportanceTable) -> Vec<ProcessedRow> {
    let Ok(reader) = TransactionReader::new(bytes, first_row) else {
        return Vec::new();
    };
    reader
        .filter_map(Result::ok)
        .filter_map(|tx| {
            let (customer, merchant) = tx.ids().ok()?;
            Some(ProcessedRow {
                row: tx.row,
                weight: importance.weight(merchant, customer),
                customer: customer.to_string(),
                merchant: merchant.to_string(),
                gender: tx.gender,
                cents: tx.cents,
                raw: String::from_utf8_lossy(tx.raw).into_owned(),
            })
        })
        .collect()
}
