//! Rebuilding a stream's state from storage: the head, the snapshot it names, then the
//! deltas after that snapshot.

use super::archive::StateArchive;
use super::{Detector, DetectorError, StreamState};
use crate::store::{DetectorHead, Fenced};
use txpipe_core::batch::DetectionBatcher;
use txpipe_core::engine::{ChunkDelta, CodecError, Engine};
use txpipe_core::layout::StreamName;

impl Detector {
    /// [`Detector::rebuild`], once more if it fails: another container may have moved
    /// the head and pruned what this one was reading (a state object "missing" only
    /// because the head read first is no longer the head). A failure that repeats
    /// on a fresh read is the stream's.
    ///
    /// A stream built with another importance file is tried again once this container
    /// has read the file again, if it changed since the container loaded it: a file
    /// replaced by mistake and then restored must not leave the containers started in
    /// between refusing for ever.
    pub(super) async fn rebuild_settled(
        &mut self,
        stream: &StreamName,
    ) -> Result<StreamState, DetectorError> {
        match self.rebuild(stream).await {
            Err(e @ DetectorError::SettingsChanged { .. }) => {
                match self.reload_importance().await {
                    true => self.rebuild(stream).await,
                    false => Err(e),
                }
            }
            Err(e) => {
                tracing::warn!(%stream, error = %e, "rebuilding failed; reading the head again");
                self.rebuild(stream).await
            }
            ok => ok,
        }
    }

    /// The state of `stream` as its head describes it (an empty stream if no head).
    pub(super) async fn rebuild(&self, stream: &StreamName) -> Result<StreamState, DetectorError> {
        let bad = |why: String| DetectorError::State {
            stream: stream.clone(),
            why,
        };
        let per_file = self.settings.shape.detections_per_file;
        let head = match self.stores.state.load_head(stream).await? {
            Some(head) => head,
            None => {
                // A new stream: its settings are fixed now, before any output, so a
                // container with other settings or another importance file is refused
                // before it writes anything, not after (when its commit would lose).
                let head = DetectorHead::empty(stream, &self.fingerprint);
                match self.stores.state.put_head(&head, None).await? {
                    Fenced::Written => head,
                    Fenced::Lost => {
                        self.stores.state.load_head(stream).await?.ok_or_else(|| {
                            bad("the head vanished after another container created it".into())
                        })?
                    }
                }
            }
        };

        if head.fingerprint != self.fingerprint {
            return Err(DetectorError::SettingsChanged {
                stream: stream.clone(),
                stored: head.fingerprint,
                current: self.fingerprint.clone(),
            });
        }
        let archive = self.archive();
        let mut engine = match head.snapshot {
            Some(snapshot) => {
                let parts = archive.snapshot(stream, snapshot).await?;
                let engine = decode_parts(&parts, self)
                    .map_err(|e| bad(format!("snapshot {}: {e}", snapshot.next)))?;
                if engine.next_chunk() != snapshot.next {
                    return Err(bad(format!(
                        "snapshot {} covers chunks 0..{}",
                        snapshot.next,
                        engine.next_chunk()
                    )));
                }
                engine
            }
            None => self.new_engine(),
        };
        for (k, bytes) in archive
            .deltas(stream, engine.next_chunk(), head.next_chunk)
            .await?
        {
            let delta = ChunkDelta::decode(&bytes).map_err(|e| bad(format!("delta {k}: {e}")))?;
            engine.apply_delta(&delta).map_err(|e| bad(e.to_string()))?;
        }
        let batcher = DetectionBatcher::restore(per_file, head.next_batch, &head.pending, &engine)
            .map_err(|e| bad(e.to_string()))?;
        // An attempt at the next chunk that wrote its delta but lost its commit may have
        // published outputs: its times are the chunk's.
        let pinned = archive.pinned_times(stream, head.next_chunk).await?;
        Ok(StreamState {
            engine,
            head,
            batcher,
            pinned,
        })
    }

    /// Reads the importance file again; when its bytes changed, this container takes
    /// it (and forgets every warm stream, built with the old one). Whether it changed.
    async fn reload_importance(&mut self) -> bool {
        let fresh = Detector::load(
            self.stores.clone(),
            self.sink.clone(),
            self.settings.clone(),
            self.clock.clone(),
        )
        .await;
        match fresh {
            Ok(fresh) if fresh.fingerprint != self.fingerprint => {
                tracing::warn!(was = %self.fingerprint, now = %fresh.fingerprint, "the importance file changed since this container loaded it: loaded again");
                self.importance = fresh.importance;
                self.importance_rejected = fresh.importance_rejected;
                self.fingerprint = fresh.fingerprint;
                self.warm.clear();
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the importance file again");
                false
            }
        }
    }

    pub(super) fn new_engine(&self) -> Engine {
        Engine::new(self.settings.patterns.clone(), self.importance.clone())
    }

    pub(super) fn archive(&self) -> StateArchive<'_> {
        StateArchive {
            objects: self.stores.objects.as_ref(),
            bucket: &self.settings.bucket,
        }
    }
}

/// An engine from a snapshot's parts, decoded on every core.
fn decode_parts(parts: &[Vec<u8>], detector: &Detector) -> Result<Engine, CodecError> {
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    Engine::decode_snapshot_parts(
        &parts,
        detector.settings.patterns.clone(),
        detector.importance.clone(),
    )
}
