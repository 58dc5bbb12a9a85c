//! S3 output batching (docs/behaviour.md, outputs): detections in global order, exactly `per_file` to a
//! file, the remainder carried to the next chunk, a short final file only at the end.

use crate::detection::{Detection, DetectionKey, PatternId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One output file's worth of detections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectionBatch {
    /// Batch number `b`: it holds detections `per_file·b …` of the global order.
    pub number: u64,
    /// The detections, in order.
    pub detections: Vec<Detection>,
}

impl DetectionBatch {
    /// The object key: `<prefix><b, 8 digits>.jsonl`, a function of the number only.
    pub fn key(&self, prefix: &str) -> String {
        batch_key(prefix, self.number)
    }

    /// JSON Lines: one detection per line.
    pub fn to_jsonl(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.detections.len() * 200);
        for d in &self.detections {
            out.extend_from_slice(d.to_json_line().as_bytes());
            out.push(b'\n');
        }
        out
    }
}

/// The key of batch `b` under `prefix`.
pub fn batch_key(prefix: &str, b: u64) -> String {
    format!("{prefix}{b:08}.jsonl")
}

/// Groups detections into fixed-size batches across chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectionBatcher {
    per_file: usize,
    next_batch: u64,
    pending: Vec<Detection>,
}

/// Stored form of a pending detection (times as Unix milliseconds).
#[derive(Serialize, Deserialize)]
struct PendingJson {
    p: String,
    m: String,
    c: String,
    k: u64,
    ys: i64,
    dt: i64,
}

/// Stored batcher state could not be read.
#[derive(Debug, thiserror::Error)]
#[error("corrupt pending-detections state: {0}")]
pub struct BatcherStateError(String);

impl DetectionBatcher {
    /// A batcher at the start of the stream.
    pub fn new(per_file: u64) -> Self {
        DetectionBatcher {
            per_file: per_file.max(1) as usize,
            next_batch: 0,
            pending: Vec::new(),
        }
    }

    /// Number of the next batch to be written.
    pub fn next_batch(&self) -> u64 {
        self.next_batch
    }

    /// Detections waiting for a full batch.
    pub fn pending(&self) -> &[Detection] {
        &self.pending
    }

    /// Adds a chunk's new detections and returns every batch that is now full.
    pub fn push(&mut self, detections: impl IntoIterator<Item = Detection>) -> Vec<DetectionBatch> {
        self.pending.extend(detections);
        let mut full = Vec::new();
        while self.pending.len() >= self.per_file {
            let rest = self.pending.split_off(self.per_file);
            let detections = std::mem::replace(&mut self.pending, rest);
            full.push(DetectionBatch {
                number: self.next_batch,
                detections,
            });
            self.next_batch += 1;
        }
        full
    }

    /// At end of stream: the final, possibly short, batch (none if nothing is pending).
    pub fn flush(&mut self) -> Option<DetectionBatch> {
        if self.pending.is_empty() {
            return None;
        }
        let detections = std::mem::take(&mut self.pending);
        let batch = DetectionBatch {
            number: self.next_batch,
            detections,
        };
        self.next_batch += 1;
        Some(batch)
    }

    /// Encodes the pending detections for the state store.
    pub fn encode_pending(&self) -> String {
        let items: Vec<PendingJson> = self
            .pending
            .iter()
            .map(|d| PendingJson {
                p: d.key.pattern.id().into(),
                m: d.key.merchant.clone(),
                c: d.key.customer.clone(),
                k: d.chunk,
                ys: d.y_start.timestamp_millis(),
                dt: d.detected_at.timestamp_millis(),
            })
            .collect();
        serde_json::to_string(&items).unwrap_or_else(|_| "[]".into())
    }

    /// Restores a batcher from its stored parts.
    pub fn restore(
        per_file: u64,
        next_batch: u64,
        pending: &str,
    ) -> Result<Self, BatcherStateError> {
        let items: Vec<PendingJson> =
            serde_json::from_str(pending).map_err(|e| BatcherStateError(e.to_string()))?;
        let time = |ms: i64| {
            DateTime::<Utc>::from_timestamp_millis(ms)
                .ok_or_else(|| BatcherStateError(format!("bad time {ms}")))
        };
        let pending = items
            .into_iter()
            .map(|j| {
                Ok(Detection {
                    key: DetectionKey {
                        pattern: PatternId::from_id(&j.p)
                            .ok_or_else(|| BatcherStateError(format!("bad pattern {}", j.p)))?,
                        merchant: j.m,
                        customer: j.c,
                    },
                    chunk: j.k,
                    y_start: time(j.ys)?,
                    detected_at: time(j.dt)?,
                })
            })
            .collect::<Result<_, BatcherStateError>>()?;
        Ok(DetectionBatcher {
            per_file: per_file.max(1) as usize,
            next_batch,
            pending,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: u64) -> Detection {
        let t = DateTime::<Utc>::from_timestamp_millis(1_700_000_000_123).unwrap();
        Detection {
            key: DetectionKey {
                pattern: PatternId::Child,
                merchant: "M".into(),
                customer: format!("C{i}"),
            },
            chunk: i / 7,
            y_start: t,
            detected_at: t,
        }
    }

    #[test]
    fn batches_are_exactly_per_file_and_carry_the_rest() {
        let mut b = DetectionBatcher::new(50);
        assert!(b.push((0..49).map(d)).is_empty());
        let full = b.push((49..120).map(d));
        assert_eq!(
            full.iter()
                .map(|x| (x.number, x.detections.len()))
                .collect::<Vec<_>>(),
            vec![(0, 50), (1, 50)]
        );
        assert_eq!(full[1].detections[0], d(50));
        assert_eq!(b.pending().len(), 20);
        let last = b.flush().unwrap();
        assert_eq!((last.number, last.detections.len()), (2, 20));
        assert_eq!(b.flush(), None);
    }

    #[test]
    fn pending_state_round_trips() {
        let mut b = DetectionBatcher::new(50);
        b.push((0..60).map(d));
        let restored = DetectionBatcher::restore(50, b.next_batch(), &b.encode_pending()).unwrap();
        assert_eq!(restored, b);
        assert!(DetectionBatcher::restore(50, 0, "{").is_err());
    }

    #[test]
    fn jsonl_and_keys() {
        let batch = DetectionBatch {
            number: 3,
            detections: vec![d(1), d(2)],
        };
        let text = String::from_utf8(batch.to_jsonl()).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert_eq!(batch.key("detections/s/"), "detections/s/00000003.jsonl");
    }
}
