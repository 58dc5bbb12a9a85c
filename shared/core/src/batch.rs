//! S3 output batching (docs/behaviour.md, outputs): detections in global order, exactly `per_file` to a
//! file, the remainder carried to the next chunk, a short final file only at the end.

use crate::detection::Detection;
use crate::engine::Engine;
use crate::evidence::Evidence;
use crate::varint;
use chrono::{DateTime, Utc};

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
        self.lines(Detection::to_json_line)
    }

    /// The evidence file beside it: line i says why detection i fired.
    pub fn evidence_jsonl(&self) -> Vec<u8> {
        self.lines(Detection::evidence_line)
    }

    fn lines(&self, line: impl Fn(&Detection) -> String) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.detections.len() * 200);
        for d in &self.detections {
            out.extend_from_slice(line(d).as_bytes());
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

/// The first varint of the stored pending detections since they carry their evidence
/// (an older stream's starts with the count, always below a file's 10,000).
const PENDING_WITH_EVIDENCE: u64 = 1 << 40;

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

    /// The pending detections in their compact stored form: identities as the engine's
    /// name indices (names are at most 128 bytes, indices a few), chunks and times as
    /// differences, evidence as varints — so a full file's worth stays below a DynamoDB
    /// item's limit.
    pub fn encode_pending(&self, engine: &Engine) -> Result<Vec<u8>, BatcherStateError> {
        let mut out = Vec::with_capacity(self.pending.len() * 24 + 8);
        if self.pending.is_empty() {
            // As before evidence: a head with nothing pending stays readable by the
            // previous version (a rollback).
            varint::put(&mut out, 0);
            return Ok(out);
        }
        varint::put(&mut out, PENDING_WITH_EVIDENCE);
        varint::put(&mut out, self.pending.len() as u64);
        let (mut chunk, mut ys, mut dt) = (0u64, 0i64, 0i64);
        for d in &self.pending {
            let (m, c) = engine.detection_indices(&d.key).ok_or_else(|| {
                BatcherStateError(format!("pending detection {:?} names no known id", d.key))
            })?;
            varint::put(&mut out, u64::from(d.key.pattern.number()) - 1);
            varint::put(&mut out, u64::from(m));
            varint::put(&mut out, u64::from(c));
            varint::put(&mut out, d.chunk.wrapping_sub(chunk));
            varint::put(
                &mut out,
                varint::zigzag(d.y_start.timestamp_millis().wrapping_sub(ys)),
            );
            varint::put(
                &mut out,
                varint::zigzag(d.detected_at.timestamp_millis().wrapping_sub(dt)),
            );
            chunk = d.chunk;
            ys = d.y_start.timestamp_millis();
            dt = d.detected_at.timestamp_millis();
            match &d.evidence {
                Some(e) => e.encode(&mut out),
                None => out.push(0),
            }
        }
        Ok(out)
    }

    /// Restores a batcher from its stored parts, resolving names through `engine`.
    pub fn restore(
        per_file: u64,
        next_batch: u64,
        pending: &[u8],
        engine: &Engine,
    ) -> Result<Self, BatcherStateError> {
        let bad = |why: &str| BatcherStateError(why.to_string());
        let mut pos = 0;
        let next = |pos: &mut usize| varint::read(pending, pos).ok_or_else(|| bad("truncated"));
        let mut restored = Vec::new();
        if !pending.is_empty() {
            // Streams written before detections kept evidence start with the count.
            let first = next(&mut pos)?;
            let with_evidence = first == PENDING_WITH_EVIDENCE;
            let n = if with_evidence {
                next(&mut pos)?
            } else {
                first
            };
            if n >= per_file.max(1) {
                return Err(bad("more pending detections than one file holds"));
            }
            let (mut chunk, mut ys, mut dt) = (0u64, 0i64, 0i64);
            for _ in 0..n {
                let number = next(&mut pos)?.saturating_add(1);
                let pattern = engine
                    .patterns()
                    .by_number(number)
                    .map(|(_, p)| p.id())
                    .ok_or_else(|| BatcherStateError(format!("PatId{number} is not run here")))?;
                let m =
                    u32::try_from(next(&mut pos)?).map_err(|_| bad("merchant index too large"))?;
                let c =
                    u32::try_from(next(&mut pos)?).map_err(|_| bad("customer index too large"))?;
                chunk = chunk.wrapping_add(next(&mut pos)?);
                ys = ys.wrapping_add(varint::unzigzag(next(&mut pos)?));
                dt = dt.wrapping_add(varint::unzigzag(next(&mut pos)?));
                let time = |ms: i64| {
                    DateTime::<Utc>::from_timestamp_millis(ms)
                        .ok_or_else(|| BatcherStateError(format!("bad time {ms}")))
                };
                let evidence = match with_evidence {
                    true => Evidence::decode(pending, &mut pos)
                        .ok_or_else(|| bad("truncated evidence"))?,
                    false => None,
                };
                restored.push(Detection {
                    key: engine
                        .detection_key(pattern, m, c)
                        .ok_or_else(|| bad("pending detection names an unknown index"))?,
                    chunk,
                    y_start: time(ys)?,
                    detected_at: time(dt)?,
                    evidence,
                });
            }
        }
        if pos != pending.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(DetectionBatcher {
            per_file: per_file.max(1) as usize,
            next_batch,
            pending: restored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::DetectionKey;
    use crate::detection::PatternId;

    fn d(i: u64) -> Detection {
        let t = DateTime::<Utc>::from_timestamp_millis(1_700_000_000_123).unwrap();
        Detection {
            key: DetectionKey {
                pattern: PatternId::CHILD,
                merchant: "M".into(),
                customer: format!("C{i}"),
            },
            chunk: i / 7,
            y_start: t,
            detected_at: t,
            evidence: Some(Evidence::Child {
                txns: 80 + i,
                cents: 1_000 * u128::from(i),
            }),
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

    /// An engine that knows merchant `M` and customers `C0…C{n-1}`.
    fn engine_knowing(n: u64) -> Engine {
        use std::fmt::Write as _;
        let mut text = String::from(
            "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n",
        );
        for i in 0..n {
            let _ = writeln!(text, "0,'C{i}','1','F','1','M','1','c',1.00,0");
        }
        let mut e = Engine::new(Default::default(), Default::default());
        e.apply_chunk(0, text.as_bytes(), 1).unwrap();
        e
    }

    /// With nothing pending, the head keeps the format from before evidence, so the
    /// previous version can still read it (a rollback).
    #[test]
    fn an_empty_pending_list_keeps_the_older_format() {
        let engine = engine_knowing(1);
        let b = DetectionBatcher::new(50);
        assert_eq!(b.encode_pending(&engine).unwrap(), vec![0]);
    }

    /// A head written before detections kept evidence: the count first, no evidence.
    #[test]
    fn pending_detections_of_an_older_head_load_without_evidence() {
        let engine = engine_knowing(3);
        let mut old = Vec::new();
        for v in [1, u64::from(PatternId::CHILD.number()) - 1, 0, 2, 7, 10, 12] {
            varint::put(&mut old, v);
        }
        let b = DetectionBatcher::restore(50, 4, &old, &engine).unwrap();
        let d = &b.pending()[0];
        assert_eq!(
            (d.key.customer.as_str(), d.chunk, d.evidence.clone()),
            ("C2", 7, None)
        );
    }

    #[test]
    fn pending_state_round_trips_compactly() {
        let engine = engine_knowing(120);
        let mut b = DetectionBatcher::new(50);
        b.push((0..99).map(d));
        let bytes = b.encode_pending(&engine).unwrap();
        assert!(bytes.len() < 49 * 16, "{}", bytes.len());
        let restored = DetectionBatcher::restore(50, b.next_batch(), &bytes, &engine).unwrap();
        assert_eq!(restored, b);
        assert!(DetectionBatcher::restore(50, 0, &[0xff], &engine).is_err());
        assert!(DetectionBatcher::restore(50, 0, &bytes[..bytes.len() - 1], &engine).is_err());
        // An empty store is an empty batcher.
        let empty = DetectionBatcher::restore(50, 3, &[], &engine).unwrap();
        assert_eq!((empty.next_batch(), empty.pending().len()), (3, 0));
        // A name the engine does not know cannot be stored.
        let mut unknown = DetectionBatcher::new(50);
        unknown.push([d(500)]);
        assert!(unknown.encode_pending(&engine).is_err());
    }

    /// The head carries at most one file's worth of pending detections less one: at the
    /// largest `per_file`, with 128-byte ids, times all different and PatId1's evidence
    /// with huge values on every one, it stays below DynamoDB's 400 KB item limit
    /// (241 KB; this bound is why a file holds at most 4,000).
    #[test]
    fn the_most_a_head_can_pend_is_small() {
        use crate::config::MAX_DETECTIONS_PER_FILE;
        use std::fmt::Write as _;
        let per_file = MAX_DETECTIONS_PER_FILE;
        let name = |i: u64| format!("C{i:0>127}");
        let mut text = String::from(
            "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n",
        );
        for i in 0..per_file {
            // Customer i at merchant 0, and merchant i, so every name is known.
            for (customer, merchant) in [(i, 0), (0, i)] {
                let row = format!("'{}','1','F','1','{}'", name(customer), name(merchant));
                let _ = writeln!(text, "0,{row},'1','c',1.00,0");
            }
        }
        let mut engine = Engine::new(Default::default(), Default::default());
        engine.apply_chunk(0, text.as_bytes(), 1).unwrap();
        let start = DateTime::<Utc>::from_timestamp_millis(1_700_000_000_123).unwrap();
        let pending: Vec<Detection> = (0..per_file - 1)
            .map(|i| Detection {
                key: match [PatternId::UPGRADE, PatternId::CHILD, PatternId::DEI_NEEDED]
                    [i as usize % 3]
                {
                    // A merchant-level detection names no customer.
                    PatternId::DEI_NEEDED => DetectionKey {
                        pattern: PatternId::DEI_NEEDED,
                        merchant: name(i),
                        customer: String::new(),
                    },
                    pattern => DetectionKey {
                        pattern,
                        merchant: name(0),
                        customer: name(i),
                    },
                },
                chunk: i * 1_000,
                y_start: start + chrono::Duration::milliseconds(i as i64 * 997_331),
                detected_at: start + chrono::Duration::milliseconds(i as i64 * 1_000_003),
                // The largest evidence, PatId1's, on every one.
                evidence: Some(large_evidence(PatternId::UPGRADE, i)),
            })
            .collect();
        let mut b = DetectionBatcher::new(per_file);
        assert!(b.push(pending).is_empty());
        let bytes = b.encode_pending(&engine).unwrap();
        assert!(bytes.len() < 300 * 1024, "{} bytes", bytes.len());
        let restored = DetectionBatcher::restore(per_file, 0, &bytes, &engine).unwrap();
        assert!(restored == b, "the pending detections did not round-trip");
    }

    /// Evidence with values far beyond the demo data's (a merchant with a billion
    /// transactions, weights averaged over thousands of rows).
    fn large_evidence(pattern: PatternId, i: u64) -> Evidence {
        let weight = |k: u64| crate::weight::Weight::new(999_999_999 * i128::from(k), k);
        match pattern {
            PatternId::UPGRADE => Evidence::Upgrade(crate::evidence::UpgradeEvidence {
                txns: 1_000_000 + i,
                merchant_txns: 1_000_000_000 + i,
                customers: 10_000_000,
                top_rank: 9_900_000,
                count_at_top_rank: 999_999,
                weight: weight(4_000),
                weighted_customers: 9_000_000,
                bottom_rank: 90_000,
                weight_at_bottom_rank: weight(4_001),
            }),
            PatternId::CHILD => Evidence::Child {
                txns: 1_000_000 + i,
                cents: 2_299_999_999 + u128::from(i),
            },
            _ => Evidence::Dei {
                female: 5_000_000,
                male: 5_000_001,
            },
        }
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
