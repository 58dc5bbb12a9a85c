//! Thresholds and per-stream settings, with their defaults in one place (see
//! `docs/behaviour.md#defaults`). Reading them from the environment is the edge's job
//! (the pipeline crate's `config` module); the core only holds the values.

/// R, data rows per chunk, by default.
pub const DEFAULT_ROWS_PER_CHUNK: u64 = 10_000;
/// The largest R a stream may use.
pub const MAX_ROWS_PER_CHUNK: u64 = 1_000_000;
/// Detections per S3 file, by default.
pub const DEFAULT_DETECTIONS_PER_FILE: u64 = 50;
/// The largest number of detections per S3 file. It bounds what the detector's head
/// carries between chunks (fewer than one file's worth of pending detections).
pub const MAX_DETECTIONS_PER_FILE: u64 = 4_000;

/// The settings that fix how a stream is cut and batched. They are pinned for the life
/// of a stream: changing them mid-stream would change which rows form a chunk or which
/// detections share a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamShape {
    /// R, data rows per chunk.
    pub rows_per_chunk: u64,
    /// Detections per S3 file.
    pub detections_per_file: u64,
}

impl Default for StreamShape {
    fn default() -> Self {
        StreamShape {
            rows_per_chunk: DEFAULT_ROWS_PER_CHUNK,
            detections_per_file: DEFAULT_DETECTIONS_PER_FILE,
        }
    }
}

/// The thresholds of the three patterns (docs/behaviour.md, patterns). Each pattern's
/// file declares its own, with defaults and ranges ([`crate::patterns::settings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternConfig {
    /// UPGRADE fires only once the merchant has strictly more transactions than this.
    pub upgrade_min_merchant_txns: u64,
    /// UPGRADE: top of the count distribution, in basis points (100 = top 1 %).
    pub upgrade_top_bp: u64,
    /// UPGRADE: bottom of the weight distribution, in basis points (100 = bottom 1 %).
    pub upgrade_bottom_bp: u64,
    /// CHILD: minimum transactions of the customer at the merchant.
    pub child_min_txns: u64,
    /// CHILD: the average must be strictly below this many cents.
    pub child_avg_below_cents: u64,
    /// DEI-NEEDED: strictly more female customers than this.
    pub dei_min_female: u64,
}

impl Default for PatternConfig {
    fn default() -> Self {
        let mut c = PatternConfig {
            upgrade_min_merchant_txns: 0,
            upgrade_top_bp: 0,
            upgrade_bottom_bp: 0,
            child_min_txns: 0,
            child_avg_below_cents: 0,
            dei_min_female: 0,
        };
        for s in crate::patterns::settings() {
            (s.set)(&mut c, s.default);
        }
        c
    }
}

impl PatternConfig {
    /// A short stable text of the thresholds, stored with the state so a restart with
    /// different thresholds is refused instead of mixing two definitions.
    pub fn fingerprint(&self) -> String {
        format!(
            "upgrade>{}:top{}bp:bottom{}bp;child>={}:avg<{};dei>{}",
            self.upgrade_min_merchant_txns,
            self.upgrade_top_bp,
            self.upgrade_bottom_bp,
            self.child_min_txns,
            self.child_avg_below_cents,
            self.dei_min_female
        )
    }
}

impl StreamShape {
    /// A short stable text of the shape, for the stream's settings fingerprint.
    pub fn fingerprint(&self) -> String {
        format!(
            "rows_per_chunk={};per_file={}",
            self.rows_per_chunk, self.detections_per_file
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = PatternConfig::default();
        assert_eq!(c.upgrade_min_merchant_txns, 50_000);
        assert_eq!((c.upgrade_top_bp, c.upgrade_bottom_bp), (100, 100));
        assert_eq!(
            (c.child_min_txns, c.child_avg_below_cents, c.dei_min_female),
            (80, 2300, 100)
        );
        let s = StreamShape::default();
        assert_eq!((s.rows_per_chunk, s.detections_per_file), (10_000, 50));
    }

    #[test]
    fn fingerprints_change_with_every_setting() {
        let base = PatternConfig::default().fingerprint();
        let other = PatternConfig {
            child_min_txns: 81,
            ..PatternConfig::default()
        };
        assert_ne!(base, other.fingerprint());
        let shape = StreamShape::default().fingerprint();
        let other = StreamShape {
            detections_per_file: 51,
            ..StreamShape::default()
        };
        assert_ne!(shape, other.fingerprint());
    }
}
