//! Applying one chunk: the exactly-once protocol in seven steps, numbered as in
//! `docs/architecture.md#exactly-once`. Every output is written under a deterministic
//! key before the single conditional commit, so a crash anywhere leaves nothing the
//! next attempt would not write identically.

use super::sink::{ChunkRecord, PairRow, ProcessedRow};
use super::{AppliedChunk, ChunkTimes, Detector, DetectorError, StepMillis, StreamState};
use crate::chunker::ChunkBounds;
use crate::store::{DetectorHead, Fenced, SnapshotRef, StoredObject};
use crate::timing::Laps;
use chrono::{DateTime, SubsecRound, Utc};
use txpipe_core::batch::DetectionBatch;
use txpipe_core::cutting::{chunk_rows, content_hash};
use txpipe_core::detection::Detection;
use txpipe_core::engine::{ApplyError, ChunkOutcome};
use txpipe_core::layout::{
    StreamName, META_CONTENT_HASH, META_FIRST_ROW, META_LAST, META_ROWS, META_ROWS_PER_CHUNK,
    META_SOURCE, META_SOURCE_ETAG,
};
use txpipe_core::parse::RejectReason;
use txpipe_core::PerPattern;

/// A chunk object read from S3, with what its metadata says.
struct ChunkInput {
    number: u64,
    key: String,
    object: StoredObject,
    first_row: u64,
    /// Byte offsets of the header lines after the first (a chunk spanning files).
    later_headers: Vec<usize>,
    last: bool,
    /// The chunker's cursor the chunk came from.
    source: Option<String>,
}

/// A stream needs no snapshot before its deltas reach this many bytes (a small state
/// is rebuilt from its deltas faster than a snapshot is written).
const FIRST_SNAPSHOT_AFTER_BYTES: u64 = 4 << 20;

/// The chunk applied to the engine, not yet committed.
struct Applied {
    outcome: ChunkOutcome,
    detections: Vec<Detection>,
    /// The chunk's valid rows, from the engine's own parse, when the sink stores them.
    rows: Vec<ProcessedRow>,
    started: DateTime<Utc>,
    detected: DateTime<Utc>,
}

impl Detector {
    /// Applies the stream's next chunk: read, apply, write outputs, snapshot when due,
    /// commit. `None` when the chunk does not exist yet.
    pub(super) async fn apply_next(
        &self,
        st: &mut StreamState,
        stream: &StreamName,
        newest: u64,
        source_etag: Option<&str>,
    ) -> Result<Option<AppliedChunk>, DetectorError> {
        let j = st.head.next_chunk;
        let requests_before = self.stores.requests.get();
        let mut laps = Laps::start();
        let mut millis = StepMillis::default();
        // A redo of a chunk whose delta an earlier attempt wrote keeps that attempt's
        // times: its outputs may be published already.
        let pinned = st.pinned.filter(|t| t.chunk == j);
        // Milliseconds, as every output shows them (and as the delta's metadata keeps).
        let started = pinned.map_or_else(|| self.clock.now().trunc_subsecs(3), |t| t.started);

        let first_row = st.head.totals.rows + st.head.totals.rejected + 1;
        let Some(input) = self.read_chunk(stream, j, first_row, source_etag).await? else {
            return Ok(None);
        };
        // Stream names carry a 64-bit hash of the source: should two sources ever
        // share one, their chunks must not mix. A re-cut would not cure it: refused
        // as permanent, so the stream parks with the reason.
        if let (Some(got), Some(want)) = (&input.source, &st.head.source) {
            if got != want {
                return Err(DetectorError::State {
                    stream: stream.clone(),
                    why: format!("chunk {j} was cut from {got}, but the stream was built from {want}: two sources share one stream name; move one of them to another key"),
                });
            }
        }
        millis.read = laps.lap();
        self.sink
            .ready()
            .await
            .map_err(DetectorError::SinkUnreachable)?;
        let applied =
            self.apply_to_engine(st, stream, &input, started, pinned.map(|t| t.detected))?;
        millis.apply = laps.lap();
        // Step 3: the delta first, with the chunk's times: from here on a redo
        // repeats them.
        let delta = applied.outcome.delta.encode();
        let delta_bytes = delta.len() as u64;
        let times = ChunkTimes {
            chunk: j,
            started,
            detected: applied.detected,
        };
        // Written only if no attempt wrote it first (a conditional PUT): the first
        // attempt's times are the chunk's. Another attempt's, not ours: this one
        // computed its outputs with other times, so it starts over with theirs.
        if self.archive().put_delta(stream, j, delta, times).await? != times {
            return Err(DetectorError::Contended {
                stream: stream.clone(),
                chunk: j,
                attempts: 1,
            });
        }
        let batches = self
            .write_detection_files(st, stream, &applied, input.last)
            .await?;
        millis.s3 = laps.lap();
        self.write_sink(st, stream, &input, &applied).await?;
        millis.sink = laps.lap();
        let snapshot = self
            .write_snapshot_if_due(st, stream, j, delta_bytes, input.last)
            .await?;
        millis.snapshot = laps.lap();
        let previous_snapshot = st.head.snapshot;
        self.commit(st, stream, &applied, &input, snapshot, delta_bytes)
            .await?;
        st.pinned = None;
        millis.commit = laps.lap();
        let new_snapshot = snapshot.filter(|s| Some(*s) != previous_snapshot);
        if st.head.prune_pending {
            self.final_prune(st, stream).await;
        } else if let Some(snapshot) = new_snapshot {
            self.prune(stream, snapshot).await;
        }
        millis.total = laps.total();

        let state_bytes = st.engine.memory().total() as u64;
        Ok(Some(AppliedChunk {
            state_pairs: st.engine.sizes().2 as u64,
            state_bytes,
            memory_percent: self
                .settings
                .memory_limit_mb
                .map(|mb| super::projected_memory_percent(state_bytes, mb)),
            stream: stream.clone(),
            chunk: j,
            rows: applied.outcome.delta.rows,
            rejected: applied.outcome.delta.rejected,
            detections: PerPattern::of(applied.detections.iter().map(|d| &d.key)),
            batches: batches as u64,
            requests: self.stores.requests.get() - requests_before,
            delta_bytes,
            snapshot: new_snapshot.is_some(),
            last: input.last,
            behind: newest.saturating_sub(j),
            millis,
        }))
    }

    /// Step 1: GET chunk `j` (`None` if it does not exist yet), and check it is what
    /// the chunker cut: its metadata complete, its first row the one after the rows
    /// applied so far (`first_row`), its rows as many as the metadata says, and (a
    /// single file's stream) cut from the source version the cursor reads. A chunk
    /// overwritten, truncated or written by hand is refused, never applied as it is.
    async fn read_chunk(
        &self,
        stream: &StreamName,
        j: u64,
        first_row: u64,
        source_etag: Option<&str>,
    ) -> Result<Option<ChunkInput>, DetectorError> {
        let key = stream.chunk_key(j);
        let Some(object) = self.stores.objects.get(&self.settings.bucket, &key).await? else {
            return Ok(None);
        };
        let meta = |name: &str| object.metadata.get(name).map(String::as_str);
        let rows_per_chunk = self.settings.shape.rows_per_chunk;
        if let Some(r) = meta(META_ROWS_PER_CHUNK).and_then(|v| v.parse::<u64>().ok()) {
            if r != rows_per_chunk {
                return Err(DetectorError::SettingsChanged {
                    stream: stream.clone(),
                    stored: format!("rows_per_chunk={r} (chunk {key})"),
                    current: format!("rows_per_chunk={rows_per_chunk}"),
                });
            }
        }
        let source = meta(META_SOURCE).map(str::to_string);
        let damaged = |why: String| DetectorError::ChunkDamaged {
            key: key.clone(),
            why,
        };
        let number = |name: &str| {
            meta(name)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| damaged(format!("its metadata {name} is missing or not a number")))
        };
        let (stated_first, stated_rows) = (number(META_FIRST_ROW)?, number(META_ROWS)?);
        if !matches!(meta(META_LAST), Some("true" | "false")) {
            return Err(damaged(format!("its metadata {META_LAST} is missing")));
        }
        let bounds =
            ChunkBounds::from_metadata(&object.metadata, j, rows_per_chunk).map_err(&damaged)?;
        if stated_first != first_row {
            return Err(damaged(format!(
                "it starts at row {stated_first}, but the rows applied so far end at row {}",
                first_row - 1
            )));
        }
        if let Some(want) = source_etag {
            let got = meta(META_SOURCE_ETAG).unwrap_or_default();
            if got != want {
                return Err(damaged(format!(
                    "it was cut from source version {got:?}, but the stream reads version {want:?}"
                )));
            }
        }
        // The hash covers the bytes, so the rows too; chunks cut before it was
        // recorded carry none, and their rows are counted instead.
        match meta(META_CONTENT_HASH) {
            Some(want) => {
                let got = format!("{:016x}", content_hash(&object.bytes));
                if got != want {
                    return Err(damaged(format!(
                        "its bytes hash to {got}, but they hashed to {want} when it was cut"
                    )));
                }
            }
            None => {
                let rows = chunk_rows(&object.bytes, &bounds.later_headers);
                if rows != stated_rows {
                    return Err(damaged(format!(
                        "it holds {rows} rows, but {stated_rows} were cut"
                    )));
                }
            }
        }
        Ok(Some(ChunkInput {
            number: j,
            key,
            object,
            first_row: bounds.first_row,
            later_headers: bounds.later_headers,
            last: bounds.last,
            source,
        }))
    }

    /// Step 2: the engine applies the chunk and finds what became true. The rows under
    /// an unusable header are rejected with the reason; the stream goes on.
    fn apply_to_engine(
        &self,
        st: &mut StreamState,
        stream: &StreamName,
        input: &ChunkInput,
        started: DateTime<Utc>,
        detected: Option<DateTime<Utc>>,
    ) -> Result<Applied, DetectorError> {
        let bad = |e: ApplyError| DetectorError::State {
            stream: stream.clone(),
            why: e.to_string(),
        };
        let j = input.number;
        let bytes = &input.object.bytes;
        let mut rows = Vec::new();
        let mut keep_row = |r: txpipe_core::engine::RowView<'_>| rows.push(ProcessedRow::from(r));
        let on_row: Option<&mut dyn FnMut(txpipe_core::engine::RowView<'_>)> =
            match self.sink.wants_transactions() {
                true => Some(&mut keep_row),
                false => None,
            };
        let outcome = st
            .engine
            .apply_segments(j, bytes, &input.later_headers, input.first_row, on_row)
            .map_err(bad)?;
        if let Some(r) = outcome
            .rejected
            .iter()
            .find(|r| matches!(r.reason, RejectReason::UnreadableChunk { .. }))
        {
            tracing::error!(chunk = j, key = %input.key, error = %r.reason, "rows under an unusable header line are rejected");
        }
        let detected_at = detected.unwrap_or_else(|| self.clock.now().trunc_subsecs(3));
        let detections = outcome
            .detections
            .iter()
            .zip(&outcome.evidence)
            .map(|(key, evidence)| Detection {
                key: key.clone(),
                chunk: j,
                y_start: started,
                detected_at,
                evidence: Some(evidence.clone()),
            })
            .collect();
        Ok(Applied {
            outcome,
            detections,
            rows,
            started,
            detected: detected_at,
        })
    }

    /// Step 4: every detection file that is now full (and the short last one at the
    /// end of the stream), each under its batch number's key, its evidence file first
    /// (a consumer that sees a detection file finds its evidence).
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
        let bucket = &self.settings.bucket;
        let files = batches.iter().flat_map(|batch| {
            [
                (stream.evidence_key(batch.number), batch.evidence_jsonl()),
                (stream.detections_key(batch.number), batch.to_jsonl()),
            ]
        });
        for (key, bytes) in files {
            // A published file is never written again (each write would be a new
            // ObjectCreated for whoever consumes them): a redo finds its own bytes
            // there; other bytes mean another attempt published this batch first, so
            // this one is stale and stops before writing anything else.
            let objects = &self.stores.objects;
            if !objects.put_new(bucket, &key, bytes.clone(), &[]).await?
                && objects.get(bucket, &key).await?.map(|o| o.bytes) != Some(bytes)
            {
                return Err(DetectorError::Contended {
                    stream: stream.clone(),
                    chunk: applied.outcome.delta.chunk,
                    attempts: 1,
                });
            }
        }
        Ok(batches.len())
    }

    /// Step 5: the chunk's rows in Postgres, in one transaction keyed by the chunk.
    async fn write_sink(
        &self,
        st: &StreamState,
        stream: &StreamName,
        input: &ChunkInput,
        applied: &Applied,
    ) -> Result<(), DetectorError> {
        let delta = &applied.outcome.delta;
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
                transactions: &applied.rows,
                pairs: &pairs,
            })
            .await?;
        Ok(())
    }

    /// Step 6: the chunk's delta is in S3 (step 3); a snapshot of the
    /// whole state when one is due — at the end of the stream, once
    /// `snapshot_max_deltas` deltas follow the last one, or once their bytes reach the
    /// last snapshot's size (so a rebuild never reads much more than two snapshots'
    /// worth). Returns what the head's snapshot becomes.
    async fn write_snapshot_if_due(
        &self,
        st: &StreamState,
        stream: &StreamName,
        j: u64,
        delta_bytes: u64,
        last: bool,
    ) -> Result<Option<SnapshotRef>, DetectorError> {
        let since = st.head.snapshot.map_or(0, |s| s.next);
        let deltas = j + 1 - since;
        let bytes = st.head.delta_bytes_since_snapshot + delta_bytes;
        let enough_bytes = match st.head.snapshot {
            Some(s) => bytes >= s.bytes,
            None => bytes >= FIRST_SNAPSHOT_AFTER_BYTES,
        };
        if !(last || deltas >= self.settings.snapshot_max_deltas || enough_bytes) {
            return Ok(st.head.snapshot);
        }
        let part_bytes = usize::try_from(self.settings.snapshot_part_bytes).unwrap_or(usize::MAX);
        let parts = st.engine.encode_snapshot_parts(part_bytes);
        Ok(Some(
            self.archive().put_snapshot(stream, j + 1, parts).await?,
        ))
    }

    /// Step 7: the single commit point — the head moves from version v to v + 1,
    /// only if no other writer moved it first.
    async fn commit(
        &self,
        st: &mut StreamState,
        stream: &StreamName,
        applied: &Applied,
        input: &ChunkInput,
        snapshot: Option<SnapshotRef>,
        delta_bytes: u64,
    ) -> Result<(), DetectorError> {
        let j = applied.outcome.delta.chunk;
        let bad = |why: String| DetectorError::State {
            stream: stream.clone(),
            why,
        };
        let delta_bytes_since_snapshot = match snapshot {
            Some(s) if s.next == j + 1 => 0,
            _ => st.head.delta_bytes_since_snapshot + delta_bytes,
        };
        let head = DetectorHead {
            stream: stream.clone(),
            next_chunk: j + 1,
            version: st.head.version + 1,
            snapshot,
            delta_bytes_since_snapshot,
            next_batch: st.batcher.next_batch(),
            pending: st
                .batcher
                .encode_pending(&st.engine)
                .map_err(|e| bad(e.to_string()))?,
            finished: input.last,
            prune_pending: input.last,
            fingerprint: self.fingerprint.clone(),
            source: input.source.clone().or_else(|| st.head.source.clone()),
            totals: st.engine.totals(),
            updated_ms: self.clock.now_ms(),
            failure: None,
        };
        match self
            .stores
            .state
            .put_head(&head, Some(st.head.version))
            .await?
        {
            Fenced::Written => {
                st.head = head;
                Ok(())
            }
            Fenced::Lost => Err(DetectorError::Contended {
                stream: stream.clone(),
                chunk: j,
                attempts: 1,
            }),
        }
    }

    /// A finished stream keeps only its final snapshot: deletes everything older, then
    /// clears `prune_pending` in the head (same version, so it cannot undo a commit).
    /// Until that succeeds the chunker's watch wakes the detector to try again; a
    /// container whose late write lost to the finished stream tidies up the same way.
    pub(super) async fn final_prune(&self, st: &mut StreamState, stream: &StreamName) {
        if let Some(keep) = st.head.snapshot {
            match self.archive().prune(stream, keep).await {
                Ok(n) => tracing::info!(%stream, deleted = n, "finished stream: old state pruned"),
                Err(e) => {
                    tracing::warn!(%stream, error = %e, "could not prune the finished stream's old state; the chunker's watch wakes the detector to try again");
                    return;
                }
            }
        }
        if !st.head.prune_pending {
            return;
        }
        let mut head = st.head.clone();
        head.prune_pending = false;
        match self
            .stores
            .state
            .put_head(&head, Some(st.head.version))
            .await
        {
            Ok(Fenced::Written) => st.head = head,
            // Another container wrote the head meanwhile: the watch looks again.
            Ok(Fenced::Lost) => {}
            Err(e) => {
                tracing::warn!(%stream, error = %e, "could not record the finished stream's final prune; the chunker's watch wakes the detector to try again")
            }
        }
    }

    /// After a new snapshot is committed: deletes the snapshots and deltas it makes
    /// unnecessary. Best effort: what is left is caught by the next prune (or, once the
    /// stream is finished, by [`Detector::final_prune`]).
    async fn prune(&self, stream: &StreamName, keep: SnapshotRef) {
        match self.archive().prune(stream, keep).await {
            Ok(n) => tracing::info!(%stream, snapshot = keep.next, deleted = n, "old state pruned"),
            Err(e) => {
                tracing::warn!(%stream, error = %e, "could not prune old state; the next snapshot tries again")
            }
        }
    }
}
