//! The three patterns, one file each: its condition over the engine's running stats and
//! the evidence it records when it fires (docs/behaviour.md#patterns). The engine keeps
//! the stats and decides whom to ask after a chunk — the touched pairs (CHILD), the
//! touched merchants (DEI-NEEDED), and every customer of a touched merchant at or below
//! its weight threshold (UPGRADE, whose thresholds move with any customer) — and emits
//! each detection once. Their settings are [`crate::config::PatternConfig`].

pub mod child;
pub mod dei;
pub mod upgrade;

use crate::config::PatternConfig;
use std::ops::RangeInclusive;

/// One setting of a pattern: the environment variable (and SAM parameter) that sets
/// it, its default and allowed range, and the field it sets.
pub struct Setting {
    /// The environment variable.
    pub var: &'static str,
    /// Its value when unset.
    pub default: u64,
    /// The values allowed.
    pub range: RangeInclusive<u64>,
    /// What a value must be, for the error that refuses another.
    pub expected: &'static str,
    /// Sets it in a configuration.
    pub set: fn(&mut PatternConfig, u64),
}

/// Every pattern's settings, pattern by pattern.
pub fn settings() -> impl Iterator<Item = &'static Setting> {
    [upgrade::SETTINGS, child::SETTINGS, dei::SETTINGS]
        .into_iter()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_its_own_variable_and_a_default_in_range() {
        let mut vars: Vec<&str> = settings().map(|s| s.var).collect();
        assert_eq!(vars.len(), 6);
        for s in settings() {
            assert!(s.range.contains(&s.default), "{}", s.var);
            // Each sets its own field: setting it to another value changes the config.
            let mut c = PatternConfig::default();
            (s.set)(&mut c, s.default + 1);
            assert_ne!(c, PatternConfig::default(), "{} sets nothing", s.var);
        }
        vars.sort_unstable();
        vars.dedup();
        assert_eq!(vars.len(), 6);
    }
}
