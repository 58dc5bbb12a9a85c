//! Rebuilding a stream's state from storage: the head, the snapshot it names, then the
//! deltas after that snapshot.

use super::{Detector, DetectorError, StreamState};
use crate::store::DetectorHead;
use txpipe_core::batch::DetectionBatcher;
use txpipe_core::engine::{ChunkDelta, CodecError, Engine};
use txpipe_core::layout::StreamName;

impl Detector {
    /// The state of `stream` as its head describes it (an empty stream if no head).
    pub(super) async fn rebuild(&self, stream: &StreamName) -> Result<StreamState, DetectorError> {
        let bad = |why: String| DetectorError::State {
            stream: stream.clone(),
            why,
        };
        let per_file = self.settings.shape.detections_per_file;
        let Some(head) = self.stores.state.load_head(stream).await? else {
            return Ok(StreamState {
                engine: self.new_engine(),
                head: DetectorHead::empty(stream, &self.fingerprint),
                batcher: DetectionBatcher::new(per_file),
            });
        };
        if head.fingerprint != self.fingerprint {
            return Err(DetectorError::SettingsChanged {
                stream: stream.clone(),
                stored: head.fingerprint,
                current: self.fingerprint.clone(),
            });
        }
        let mut engine = match head.snapshot_next {
            Some(s) => {
                let key = stream.snapshot_key(s);
                let object = self
                    .stores
                    .objects
                    .get(&self.settings.bucket, &key)
                    .await?
                    .ok_or_else(|| bad(format!("snapshot {key} named by the head is missing")))?;
                let engine = Engine::decode_snapshot(
                    &object.bytes,
                    self.settings.patterns.clone(),
                    self.importance.clone(),
                )
                .map_err(|e: CodecError| bad(format!("{key}: {e}")))?;
                if engine.next_chunk() != s {
                    return Err(bad(format!(
                        "{key} covers chunks 0..{}, not 0..{s}",
                        engine.next_chunk()
                    )));
                }
                engine
            }
            None => self.new_engine(),
        };
        for (k, bytes) in self
            .stores
            .state
            .load_deltas(stream, engine.next_chunk(), head.next_chunk)
            .await?
        {
            let delta = ChunkDelta::decode(&bytes).map_err(|e| bad(format!("delta {k}: {e}")))?;
            engine.apply_delta(&delta).map_err(|e| bad(e.to_string()))?;
        }
        let batcher = DetectionBatcher::restore(per_file, head.next_batch, &head.pending)
            .map_err(|e| bad(e.to_string()))?;
        Ok(StreamState {
            engine,
            head,
            batcher,
        })
    }

    pub(super) fn new_engine(&self) -> Engine {
        Engine::new(self.settings.patterns.clone(), self.importance.clone())
    }
}
