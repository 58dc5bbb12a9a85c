//! Thresholds and per-stream settings, with their defaults in one place (see
//! `docs/behaviour.md#defaults`). Reading them from the environment is the edge's job
//! (the pipeline crate's `config` module); the core only holds the values.

use crate::patterns::{Patterns, Setting};
use std::collections::BTreeMap;

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

/// The patterns' settings by variable (docs/behaviour.md, patterns): each pattern's
/// file declares its own with defaults and ranges ([`crate::patterns::settings`]); a
/// setting never set here has its default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternConfig {
    values: BTreeMap<&'static str, u64>,
}

impl PatternConfig {
    /// The value of `setting`.
    pub fn get(&self, setting: &Setting) -> u64 {
        self.values
            .get(setting.var)
            .copied()
            .unwrap_or(setting.default)
    }

    /// Sets `setting` to `value`.
    pub fn set(&mut self, setting: &Setting, value: u64) {
        // A default is stored as unset, so equal settings compare equal.
        if value == setting.default {
            self.values.remove(setting.var);
        } else {
            self.values.insert(setting.var, value);
        }
    }

    /// These settings with `setting` set to `value`.
    pub fn with(mut self, setting: &Setting, value: u64) -> Self {
        self.set(setting, value);
        self
    }

    /// A short stable text of the registered patterns' settings, stored with the state
    /// so a restart with different thresholds is refused instead of mixing two
    /// definitions.
    pub fn fingerprint(&self) -> String {
        Patterns::registered(self.clone()).fingerprint()
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
        assert_eq!(
            c.fingerprint(),
            "upgrade>50000:top100bp:bottom100bp;child>=80:avg<2300;dei>100",
            "the fingerprint every running stream was pinned with"
        );
        let s = StreamShape::default();
        assert_eq!((s.rows_per_chunk, s.detections_per_file), (10_000, 50));
    }

    #[test]
    fn fingerprints_change_with_every_setting() {
        let base = PatternConfig::default().fingerprint();
        let other = PatternConfig::default().with(&crate::patterns::child::MIN_TXNS, 81);
        assert_ne!(base, other.fingerprint());
        let shape = StreamShape::default().fingerprint();
        let other = StreamShape {
            detections_per_file: 51,
            ..StreamShape::default()
        };
        assert_ne!(shape, other.fingerprint());
    }
}
