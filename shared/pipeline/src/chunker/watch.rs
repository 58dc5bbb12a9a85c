//! The chunker's tick watches its stream too, because it runs every minute whatever
//! happens: it measures the detector's lag (so the lag alarm fires when the detector
//! is stuck, not only while it is busy), reports a parked chunk, and — when the
//! detector lags and has made no progress for a while (a lost S3 event, a backlog left
//! at an invocation's deadline, a chunk object that expired) — writes the next chunks
//! again, exactly as they were cut, which also announces them to the detector.

use super::{Chunker, ChunkerError};
use crate::clock::Clock;
use crate::store::{ChunkCursor, ChunkFailure, DetectorHead, StateStore};
use std::time::Duration;
use txpipe_core::layout::StreamName;

/// What one tick saw of its stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watch {
    /// The stream (none while waiting for the source file).
    pub stream: Option<StreamName>,
    /// Chunks cut but not yet applied by the detector.
    pub lag: u64,
    /// The chunk the detector parked, if it did.
    pub parked: Option<ChunkFailure>,
    /// The first chunk written again to wake the detector, if any.
    pub kicked: Option<u64>,
    /// How many chunks were written again.
    pub rewritten: u64,
}

/// At most this many chunks are written again per tick when they are gone: enough to
/// restore a run of expired chunks quickly, few enough to keep a tick short. To wake a
/// detector, one chunk is enough (it catches up to the cursor from one event).
const REWRITE_PER_TICK: u64 = 16;

/// While the same chunk keeps failing, the wait between kicks doubles up to this many
/// times the stall period (24 minutes with the default 90 s).
const MAX_BACKOFF: u32 = 16;

/// Watches one stream from the chunker's side.
pub struct StreamWatch<'a> {
    /// The detector's heads.
    pub heads: &'a dyn StateStore,
    /// A lagging detector that made no progress for this long is woken.
    pub stall: Duration,
    /// Now.
    pub clock: &'a dyn Clock,
}

impl StreamWatch<'_> {
    /// Checks the stream after this tick's chunks: `cut_before` is the cursor's next
    /// chunk when the tick began (chunks from there on were just announced by their
    /// own write).
    pub async fn check(
        &self,
        chunker: &mut Chunker<'_>,
        cut_before: u64,
    ) -> Result<Watch, ChunkerError> {
        let id = chunker.settings().source_id();
        let Some(cursor) = chunker.cursors.load_cursor(&id).await? else {
            return Ok(Watch::default());
        };
        let head = self.heads.load_head(&cursor.stream).await?;
        let applied = head.as_ref().map_or(0, |h| h.next_chunk);
        let mut watch = Watch {
            stream: Some(cursor.stream.clone()),
            lag: cursor.next_chunk.saturating_sub(applied),
            parked: head.as_ref().and_then(|h| h.parked()).cloned(),
            kicked: None,
            rewritten: 0,
        };
        if let Some(h) = head.as_ref().filter(|h| h.finished && h.prune_pending) {
            return Ok(self.wake_for_prune(chunker, &cursor, h, watch).await);
        }
        if watch.lag == 0 || watch.parked.is_some() || applied >= cut_before {
            return Ok(watch);
        }
        let now = self.clock.now_ms();
        let idle_ms = now - head.as_ref().map_or(0, |h| h.updated_ms);
        let failure = head
            .as_ref()
            .and_then(|h| h.failure.as_ref())
            .filter(|f| f.chunk == applied);
        let attempts = failure.map_or(0, |f| f.attempts);
        let missing = failure.is_some_and(|f| f.recut);
        // A chunk the detector found gone or damaged is written again at once, unless
        // it was already written again since (then it is one the re-cut did not cure);
        // any other kick waits for the stall period since the detector last moved and
        // since the chunk was last written (its cut, or the last kick: the object's own
        // date keeps that across invocations), doubling while the same chunk keeps
        // failing, so an outage is not met with a storm of events and rebuilds.
        let written = chunker
            .objects
            .head(
                &chunker.settings().bucket,
                &cursor.stream.chunk_key(applied),
            )
            .await?
            .map(|info| info.modified_ms);
        let recut_since = match (failure, written) {
            (Some(f), Some(at)) => at > f.first_ms,
            _ => false,
        };
        if !missing || recut_since {
            let stall = self.stall.as_millis() as i64;
            let wait = stall * i64::from(MAX_BACKOFF.min(1 << attempts.min(4)));
            let written_ms = written.map_or(i64::MAX, |at| now - at);
            if idle_ms < stall || written_ms < wait {
                return Ok(watch);
            }
        }
        // Gone chunks: the next ones too, since after a long pause they may all have
        // expired. Writing an existing one again is harmless (same key, same bytes).
        let upto = match missing {
            true => cursor.next_chunk.min(applied + REWRITE_PER_TICK),
            false => applied + 1,
        };
        for k in applied..upto {
            rewrite(chunker, &cursor, k).await?;
            watch.rewritten += 1;
        }
        tracing::warn!(
            stream = %cursor.stream,
            from = applied,
            chunks = watch.rewritten,
            lag = watch.lag,
            idle_secs = idle_ms / 1000,
            missing,
            "the detector lags with no progress: chunks written again to wake it"
        );
        watch.kicked = Some(applied);
        Ok(watch)
    }

    /// A finished stream whose final prune has not succeeded: its last chunk is
    /// written again, once per stall period, so the detector gets an event (a
    /// duplicate it answers by pruning). Best effort: a failure is logged, and the next
    /// tick tries again.
    async fn wake_for_prune(
        &self,
        chunker: &mut Chunker<'_>,
        cursor: &ChunkCursor,
        head: &DetectorHead,
        mut watch: Watch,
    ) -> Watch {
        let Some(last) = head.next_chunk.checked_sub(1) else {
            return watch;
        };
        let now = self.clock.now_ms();
        let stall = self.stall.as_millis() as i64;
        if now - head.updated_ms < stall {
            return watch;
        }
        let key = cursor.stream.chunk_key(last);
        let written = match chunker.objects.head(&chunker.settings().bucket, &key).await {
            Ok(info) => info.map(|i| i.modified_ms),
            Err(e) => {
                tracing::warn!(stream = %cursor.stream, error = %e, "could not look at the finished stream's last chunk");
                return watch;
            }
        };
        if written.is_some_and(|at| now - at < stall) {
            return watch;
        }
        match rewrite(chunker, cursor, last).await {
            Ok(()) => {
                tracing::warn!(stream = %cursor.stream, chunk = last, "the finished stream's old state is not pruned yet: its last chunk written again to wake the detector");
                watch.kicked = Some(last);
                watch.rewritten = 1;
            }
            Err(e) => {
                tracing::warn!(stream = %cursor.stream, error = %e, "could not wake the detector to prune the finished stream's old state")
            }
        }
        watch
    }
}

/// Writes chunk `k` again, exactly as it was cut (which announces it).
async fn rewrite(
    chunker: &mut Chunker<'_>,
    cursor: &ChunkCursor,
    k: u64,
) -> Result<(), ChunkerError> {
    match chunker.recut(cursor, k).await {
        Ok(chunk) => chunker.put(&chunk).await,
        // The source was replaced after it was cut: the chunk object, if it is still
        // there, is written again as it is.
        Err(e) if e.source_is_gone() => chunker.rewrite_stored(cursor, k, e).await,
        Err(e) => Err(e),
    }
}
