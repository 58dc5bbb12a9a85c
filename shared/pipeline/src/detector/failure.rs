//! Failed attempts at a chunk, kept in the stream's head: a reason that repeats parks
//! the stream there, loudly, instead of retrying for ever; a passing one is only
//! counted, so status shows it.

use super::{CatchUp, Detector, DetectorError};
use crate::metrics::{emit, Unit};
use crate::store::{ChunkFailure, DetectorHead, Retry};
use txpipe_core::layout::StreamName;

impl Detector {
    /// Records a failed attempt at chunk `j` in the head (without moving its version,
    /// so the next commit still succeeds). Parks the stream once a reason that repeats
    /// has failed `park_after_attempts` times. Best effort: the error that caused it
    /// is what the caller reports. Returns `false` when another writer had moved the
    /// head: this container's view is stale and must be rebuilt, not trusted.
    pub(super) async fn record_failure(
        &self,
        stored: &mut DetectorHead,
        j: u64,
        reason: String,
        retry: Retry,
        recut: bool,
    ) -> bool {
        let now = self.clock.now_ms();
        let previous = stored.failure.as_ref().filter(|f| f.chunk == j);
        let attempts = previous.map_or(0, |f| f.attempts) + 1;
        let parked = retry == Retry::Permanent && attempts >= self.settings.park_after_attempts;
        let mut head = stored.clone();
        head.failure = Some(ChunkFailure {
            chunk: j,
            reason: reason.clone(),
            attempts,
            first_ms: previous.map_or(now, |f| f.first_ms),
            last_ms: now,
            parked,
            recut,
        });
        match self
            .stores
            .state
            .put_head(&head, Some(stored.version))
            .await
        {
            Ok(crate::store::Fenced::Written) => *stored = head,
            // Another writer moved the head: its view wins; nothing to record.
            Ok(crate::store::Fenced::Lost) => return false,
            Err(e) => {
                tracing::warn!(stream = %head.stream, chunk = j, error = %e, "could not record the failed attempt")
            }
        }
        if parked {
            tracing::error!(
                stream = %stored.stream,
                chunk = j,
                attempts,
                %reason,
                resume = %format!("txpipe resume --stream {}", stored.stream),
                "chunk parked: it failed {attempts} times for a reason that repeats; the stream waits until the cause is fixed and it is resumed"
            );
            emit("detector", &[("ChunksParked", 1.0, Unit::Count)]);
        }
        true
    }

    /// Rebuilding the stream's state failed (settings or the importance file changed,
    /// a snapshot part or delta missing, state that does not decode): recorded at the
    /// stream's next chunk like a failure to apply it, so it is counted, parks the
    /// stream when it repeats, and shows in `txpipe status` with the resume command. A
    /// stream already parked answers at once, without another attempt.
    pub(super) async fn rebuild_failed(
        &self,
        stream: &StreamName,
        e: DetectorError,
        report: &mut CatchUp,
    ) -> Result<(), DetectorError> {
        let Ok(Some(mut head)) = self.stores.state.load_head(stream).await else {
            return Err(e);
        };
        if let Some(parked) = head.parked() {
            report.parked = Some(parked.clone());
            report.next_chunk = head.next_chunk;
            return Ok(());
        }
        // Nothing is left to apply: a failure recorded past the end would stay in the
        // head for ever (no commit follows to clear it).
        if head.finished {
            tracing::warn!(%stream, error = %e, "cannot load the finished stream (the event is a duplicate)");
            return Err(e);
        }
        let j = head.next_chunk;
        let reason = format!("rebuilding the stream's state failed: {e}");
        tracing::error!(%stream, chunk = j, %reason, "cannot load the stream");
        self.record_failure(&mut head, j, reason, e.retry(), false)
            .await;
        Err(e)
    }
}
