//! Detection records (docs/behaviour.md, detections): identity, ordering and the exact JSON form.

use crate::evidence::Evidence;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Time zone of every output time.
pub const OUTPUT_TZ: chrono_tz::Tz = chrono_tz::Asia::Kolkata;

/// A pattern's identity: its number (`PatId<n>`, the output order) and its action type.
/// Each pattern's file declares its own (`patterns::child::ID`); the registered ones
/// are listed in [`crate::patterns::REGISTERED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PatternId {
    number: u8,
    id: &'static str,
    action: &'static str,
}

impl PatternId {
    /// PatId1, UPGRADE.
    pub const UPGRADE: PatternId = crate::patterns::upgrade::ID;
    /// PatId2, CHILD.
    pub const CHILD: PatternId = crate::patterns::child::ID;
    /// PatId3, DEI-NEEDED.
    pub const DEI_NEEDED: PatternId = crate::patterns::dei::ID;

    /// Pattern `number` (from 1), written `id` (`PatId<number>`) with action type
    /// `action`. Checked at compile time where it is a constant.
    pub const fn new(number: u8, id: &'static str, action: &'static str) -> Self {
        assert!(number >= 1, "pattern numbers start at 1");
        PatternId { number, id, action }
    }

    /// `PatId1`, `PatId2`, …
    pub fn id(self) -> &'static str {
        self.id
    }

    /// `UPGRADE`, `CHILD`, `DEI-NEEDED`, …
    pub fn action(self) -> &'static str {
        self.action
    }

    /// Its number: 1 for `PatId1`. State and head fields name a pattern by it.
    pub fn number(self) -> u8 {
        self.number
    }

    /// A registered pattern by its `PatId<n>` text.
    pub fn from_id(id: &str) -> Option<Self> {
        crate::patterns::registered().find(|p| p.id() == id)
    }

    /// A registered pattern by its number.
    pub fn from_number(number: u64) -> Option<Self> {
        crate::patterns::registered().find(|p| u64::from(p.number()) == number)
    }
}

/// One count per pattern, kept and written out by pattern (never indexed by hand):
/// totals, metrics, log fields and status lines all come from it. It starts with a
/// zero for every registered pattern, so each is reported even before it fires.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PerPattern(Vec<(PatternId, u64)>);

impl Default for PerPattern {
    fn default() -> Self {
        PerPattern::zeros(crate::patterns::registered())
    }
}

impl PerPattern {
    /// A zero for each of `patterns`.
    pub fn zeros(patterns: impl IntoIterator<Item = PatternId>) -> Self {
        let mut out = PerPattern(Vec::new());
        for p in patterns {
            out.add(p, 0);
        }
        out
    }

    /// The count of `pattern`.
    pub fn get(&self, pattern: PatternId) -> u64 {
        self.0
            .iter()
            .find(|(p, _)| *p == pattern)
            .map_or(0, |&(_, n)| n)
    }

    /// Adds `n` to `pattern`'s count.
    pub fn add(&mut self, pattern: PatternId, n: u64) {
        match self.0.binary_search_by(|(p, _)| p.cmp(&pattern)) {
            Ok(i) => self.0[i].1 = self.0[i].1.saturating_add(n),
            Err(i) => self.0.insert(i, (pattern, n)),
        }
    }

    /// Each pattern with its count, in output order.
    pub fn iter(&self) -> impl Iterator<Item = (PatternId, u64)> + '_ {
        self.0.iter().copied()
    }

    /// Counts of the registered patterns from a function of the pattern.
    pub fn from_fn(mut count: impl FnMut(PatternId) -> u64) -> Self {
        let mut out = PerPattern::default();
        for p in crate::patterns::registered() {
            out.add(p, count(p));
        }
        out
    }

    /// Counts of `detections` by pattern.
    pub fn of<'a>(detections: impl IntoIterator<Item = &'a DetectionKey>) -> Self {
        let mut out = PerPattern::default();
        for d in detections {
            out.add(d.pattern, 1);
        }
        out
    }

    /// All patterns together.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|&(_, n)| n).sum()
    }
}

impl std::ops::AddAssign<&PerPattern> for PerPattern {
    fn add_assign(&mut self, other: &PerPattern) {
        for (p, n) in other.iter() {
            self.add(p, n);
        }
    }
}

/// `PatId1 34, PatId2 749, PatId3 15`.
impl std::fmt::Display for PerPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (p, n)) in self.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} {n}", p.id())?;
        }
        Ok(())
    }
}

/// What the engine found: a detection's identity. Ordered as docs/behaviour.md orders new
/// detections within a chunk: pattern, then merchant, then customer (byte order).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DetectionKey {
    /// Which pattern.
    pub pattern: PatternId,
    /// Merchant id, unquoted.
    pub merchant: String,
    /// Customer id, unquoted; empty for PatId3.
    pub customer: String,
}

/// A detection as written to S3 and Postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// Its identity.
    pub key: DetectionKey,
    /// The chunk whose processing produced it.
    pub chunk: u64,
    /// When mechanism Y began processing that chunk.
    pub y_start: DateTime<Utc>,
    /// When the detection was made.
    pub detected_at: DateTime<Utc>,
    /// Why it fired (`None` only for a detection carried over from a stream written
    /// before detections kept their evidence).
    pub evidence: Option<Evidence>,
}

/// The JSON form, fields in the order docs/behaviour.md gives.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct DetectionJson {
    /// IST start time of the chunk's processing.
    #[serde(rename = "YStartTime")]
    pub y_start_time: String,
    /// IST detection time.
    #[serde(rename = "detectionTime")]
    pub detection_time: String,
    /// `PatId1`…
    #[serde(rename = "patternId")]
    pub pattern_id: String,
    /// `UPGRADE`…
    #[serde(rename = "ActionType")]
    pub action_type: String,
    /// Customer id, or `""`.
    #[serde(rename = "customerName")]
    pub customer_name: String,
    /// Merchant id.
    #[serde(rename = "MerchantId")]
    pub merchant_id: String,
}

/// Formats a time as IST ISO 8601 with milliseconds and offset:
/// `2025-06-03T14:30:45.123+05:30`.
pub fn format_ist(t: DateTime<Utc>) -> String {
    t.with_timezone(&OUTPUT_TZ)
        .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
        .to_string()
}

impl Detection {
    /// The JSON object docs/behaviour.md defines.
    pub fn to_json(&self) -> DetectionJson {
        DetectionJson {
            y_start_time: format_ist(self.y_start),
            detection_time: format_ist(self.detected_at),
            pattern_id: self.key.pattern.id().to_string(),
            action_type: self.key.pattern.action().to_string(),
            customer_name: self.key.customer.clone(),
            merchant_id: self.key.merchant.clone(),
        }
    }

    /// One JSON Lines line (without the newline).
    pub fn to_json_line(&self) -> String {
        // Serializing a struct of strings cannot fail.
        serde_json::to_string(&self.to_json()).unwrap_or_default()
    }

    /// Its evidence as one JSON Lines line (without the newline): the identity, the
    /// chunk and the values (`null` for a detection carried over from a stream
    /// written before detections kept evidence).
    pub fn evidence_line(&self) -> String {
        let line = serde_json::json!({
            "patternId": self.key.pattern.id(),
            "MerchantId": self.key.merchant,
            "customerName": self.key.customer,
            "chunk": self.chunk,
            "evidence": self.evidence.as_ref().map(Evidence::to_json),
        });
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn json_has_exact_fields_and_order() {
        let start = Utc.with_ymd_and_hms(2025, 6, 3, 9, 0, 45).unwrap()
            + chrono::Duration::milliseconds(123);
        let d = Detection {
            key: DetectionKey {
                pattern: PatternId::UPGRADE,
                merchant: "M348934600".into(),
                customer: "C1093826151".into(),
            },
            chunk: 0,
            y_start: start,
            detected_at: start + chrono::Duration::milliseconds(64),
            evidence: None,
        };
        assert_eq!(
            d.to_json_line(),
            r#"{"YStartTime":"2025-06-03T14:30:45.123+05:30","detectionTime":"2025-06-03T14:30:45.187+05:30","patternId":"PatId1","ActionType":"UPGRADE","customerName":"C1093826151","MerchantId":"M348934600"}"#
        );
    }

    #[test]
    fn dei_has_empty_customer_and_whole_seconds_keep_millis() {
        let t = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let d = Detection {
            key: DetectionKey {
                pattern: PatternId::DEI_NEEDED,
                merchant: "M1".into(),
                customer: String::new(),
            },
            chunk: 3,
            y_start: t,
            detected_at: t,
            evidence: None,
        };
        let json = d.to_json();
        assert_eq!(json.customer_name, "");
        assert_eq!(json.action_type, "DEI-NEEDED");
        assert_eq!(json.y_start_time, "2025-01-01T05:30:00.000+05:30");
    }

    #[test]
    fn keys_order_by_pattern_merchant_customer() {
        let k = |p, m: &str, c: &str| DetectionKey {
            pattern: p,
            merchant: m.into(),
            customer: c.into(),
        };
        let mut v = vec![
            k(PatternId::CHILD, "M1", "C2"),
            k(PatternId::UPGRADE, "M2", "C1"),
            k(PatternId::CHILD, "M1", "C1"),
        ];
        v.sort();
        assert_eq!(
            v,
            vec![
                k(PatternId::UPGRADE, "M2", "C1"),
                k(PatternId::CHILD, "M1", "C1"),
                k(PatternId::CHILD, "M1", "C2")
            ]
        );
        assert_eq!(PatternId::from_id("PatId3"), Some(PatternId::DEI_NEEDED));
    }
}
