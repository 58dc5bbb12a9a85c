//! Failed attempts at a chunk, kept in the stream's head: a reason that repeats parks
//! the stream there, loudly, instead of retrying for ever; a passing one is only
//! counted, so status shows it.

use super::{Detector, StreamState};
use crate::metrics::{emit, Unit};
use crate::store::{ChunkFailure, Retry};

impl Detector {
    /// Records a failed attempt at chunk `j` in the head (without moving its version,
    /// so the next commit still succeeds). Parks the stream once a reason that repeats
    /// has failed `park_after_attempts` times. Best effort: the error that caused it
    /// is what the caller reports. Returns `false` when another writer had moved the
    /// head: this container's view is stale and must be rebuilt, not trusted.
    pub(super) async fn record_failure(
        &self,
        st: &mut StreamState,
        j: u64,
        reason: String,
        retry: Retry,
    ) -> bool {
        let now = self.clock.now_ms();
        let previous = st.head.failure.as_ref().filter(|f| f.chunk == j);
        let attempts = previous.map_or(0, |f| f.attempts) + 1;
        let parked = retry == Retry::Permanent && attempts >= self.settings.park_after_attempts;
        let mut head = st.head.clone();
        head.failure = Some(ChunkFailure {
            chunk: j,
            reason: reason.clone(),
            attempts,
            first_ms: previous.map_or(now, |f| f.first_ms),
            last_ms: now,
            parked,
        });
        match self
            .stores
            .state
            .put_head(&head, Some(st.head.version))
            .await
        {
            Ok(crate::store::Fenced::Written) => st.head = head,
            // Another writer moved the head: its view wins; nothing to record.
            Ok(crate::store::Fenced::Lost) => return false,
            Err(e) => {
                tracing::warn!(stream = %head.stream, chunk = j, error = %e, "could not record the failed attempt")
            }
        }
        if parked {
            tracing::error!(
                stream = %st.head.stream,
                chunk = j,
                attempts,
                %reason,
                resume = %format!("txpipe resume --stream {}", st.head.stream),
                "chunk parked: it failed {attempts} times for a reason that repeats; the stream waits until the cause is fixed and it is resumed"
            );
            emit("detector", &[("ChunksParked", 1.0, Unit::Count)]);
        }
        true
    }
}
