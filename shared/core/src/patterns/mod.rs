//! The patterns, one file each (docs/behaviour.md#patterns): its id and action type,
//! its settings with defaults and ranges, what it asks about after a chunk (which also
//! fixes whether it is emitted once per pair or once per merchant), its condition over
//! the engine's running stats, and the evidence it records when it fires.
//!
//! The engine keeps the shared stats fast (pair counts and sums, merchant gender
//! counts, the count histogram, the weight order) and the emitted sets; after each
//! chunk it asks every pattern of its [`Patterns`] about what the chunk touched and
//! emits each detection once. Adding a pattern is a new file here implementing
//! [`Pattern`] and one line in [`REGISTERED`] (docs/architecture.md, adding a pattern).

pub mod child;
pub mod dei;
pub mod upgrade;

use crate::config::PatternConfig;
use crate::detection::PatternId;
use crate::engine::pairs::PairTable;
use crate::engine::weight_order::WeightOrder;
use crate::engine::CountHistogram;
use crate::evidence::Evidence;
use crate::parse::{Gender, ImportanceTable};
use std::ops::{Range, RangeInclusive};
use std::sync::Arc;

/// The patterns this build runs, in output order: the only list to extend when adding
/// one.
pub const REGISTERED: &[Registration] = &[
    upgrade::REGISTRATION,
    child::REGISTRATION,
    dei::REGISTRATION,
];

/// A pattern as registered: its identity, its settings, and how to make it from a
/// stream's settings.
pub struct Registration {
    /// Its identity.
    pub id: PatternId,
    /// Its settings (each an environment variable and SAM parameter).
    pub settings: &'static [Setting],
    /// Makes the pattern with a stream's settings.
    pub build: fn(&PatternConfig) -> Arc<dyn Pattern>,
}

/// The registered patterns' identities, in output order.
pub fn registered() -> impl Iterator<Item = PatternId> {
    REGISTERED.iter().map(|r| r.id)
}

/// One setting of a pattern: the environment variable (and SAM parameter) that sets
/// it, its default and allowed range.
#[derive(Debug)]
pub struct Setting {
    /// The environment variable.
    pub var: &'static str,
    /// Its value when unset.
    pub default: u64,
    /// The values allowed.
    pub range: RangeInclusive<u64>,
    /// What a value must be, for the error that refuses another.
    pub expected: &'static str,
}

/// Every registered pattern's settings, pattern by pattern.
pub fn settings() -> impl Iterator<Item = &'static Setting> {
    REGISTERED.iter().flat_map(|r| r.settings)
}

/// What a pattern is asked about after a chunk; it also fixes the pattern's emit-once
/// scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asks {
    /// Each pair the chunk touched ([`Pattern::pair`]): a condition over the pair's own
    /// stats. Emitted once per pair.
    TouchedPairs,
    /// Each merchant the chunk touched ([`Pattern::merchant`]). Emitted once per
    /// merchant.
    TouchedMerchants,
    /// Each merchant the chunk touched, for the customers of it that hold
    /// ([`Pattern::customers`]): a per-pair condition whose thresholds move with the
    /// merchant's other customers. Emitted once per pair.
    CustomersOfTouchedMerchants,
}

impl Asks {
    /// Whether its detections are per (merchant, customer) pair, not per merchant.
    pub fn per_pair(self) -> bool {
        self != Asks::TouchedMerchants
    }
}

/// A pair's running stats, as a pattern reads them.
#[derive(Debug, Clone, Copy)]
pub struct PairFacts {
    /// n(m,c): the customer's valid transactions at the merchant.
    pub txns: u64,
    /// s(m,c): their total, in cents.
    pub cents: u128,
    /// The gender of the customer's first valid transaction there.
    pub gender: Gender,
}

/// A merchant's running stats, as a pattern reads them.
pub struct MerchantFacts<'a> {
    /// N(m): its valid transactions.
    pub txns: u64,
    /// F(m): female customers.
    pub female: u64,
    /// M(m): male customers.
    pub male: u64,
    /// n(m,c) of every customer: |C(m)| and order statistics of the counts.
    pub by_count: &'a CountHistogram,
    /// Its customers with a weight, in weight order (`None`: no importance entries).
    pub by_weight: Option<&'a WeightOrder>,
    /// The importance table (weights of entries).
    pub weights: &'a ImportanceTable,
    /// The merchant's index in the importance table (see [`MerchantFacts::entries`]).
    pub(crate) importance: u32,
    /// The pair table (a pair's counters by its index).
    pub pairs: &'a PairTable,
}

impl MerchantFacts<'_> {
    /// The merchant's entries in the importance table, in weight order. Looked up on
    /// demand: most merchants a chunk touches never need them.
    pub fn entries(&self) -> Range<u32> {
        self.weights.merchant_entries(self.importance)
    }
}

/// A pattern: asked after each chunk about what the chunk touched (see [`Asks`]),
/// answering with the evidence of what holds. The engine emits each detection once.
pub trait Pattern: Send + Sync + std::fmt::Debug {
    /// Its identity.
    fn id(&self) -> PatternId;

    /// What it is asked about (and so its emit-once scope).
    fn asks(&self) -> Asks;

    /// Its settings as a short stable text, pinned with a stream's state.
    fn fingerprint(&self) -> String;

    /// The names of its evidence's fields (camelCase), as its evidence's JSON has them:
    /// what the stack's Athena table must list.
    fn evidence_fields(&self) -> &'static [&'static str];

    /// [`Asks::TouchedPairs`]: whether the pair holds now, and why.
    fn pair(&self, _pair: &PairFacts) -> Option<Evidence> {
        None
    }

    /// [`Asks::TouchedMerchants`]: whether the merchant holds now, and why.
    fn merchant(&self, _merchant: &MerchantFacts<'_>) -> Option<Evidence> {
        None
    }

    /// [`Asks::CustomersOfTouchedMerchants`]: pushes each pair (by index) of the
    /// merchant that holds now with why, skipping those `emitted` says were already
    /// emitted (their evidence is never computed).
    fn customers(
        &self,
        _merchant: &MerchantFacts<'_>,
        _emitted: &dyn Fn(u32) -> bool,
        _found: &mut Vec<(u32, Evidence)>,
    ) {
    }
}

/// The patterns an engine runs, in output order, with the settings they were made
/// from.
#[derive(Debug, Clone)]
pub struct Patterns {
    config: PatternConfig,
    list: Vec<Arc<dyn Pattern>>,
}

impl Patterns {
    /// The registered patterns, made with `config`.
    pub fn registered(config: PatternConfig) -> Self {
        let list = REGISTERED.iter().map(|r| (r.build)(&config)).collect();
        Patterns { config, list }
    }

    /// These and `pattern` (one the registry does not list, e.g. in a test). A pattern
    /// of the same number replaces the one there.
    pub fn with(mut self, pattern: Arc<dyn Pattern>) -> Self {
        self.list
            .retain(|p| p.id().number() != pattern.id().number());
        self.list.push(pattern);
        self.list.sort_by_key(|p| p.id());
        self
    }

    /// Each pattern, in output order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Pattern>> {
        self.list.iter()
    }

    /// Their identities, in output order.
    pub fn ids(&self) -> impl Iterator<Item = PatternId> + '_ {
        self.list.iter().map(|p| p.id())
    }

    /// The position of pattern `number` in the list, and the pattern.
    pub fn by_number(&self, number: u64) -> Option<(usize, &Arc<dyn Pattern>)> {
        self.list
            .iter()
            .enumerate()
            .find(|(_, p)| u64::from(p.id().number()) == number)
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The settings the registered patterns were made from.
    pub fn config(&self) -> &PatternConfig {
        &self.config
    }

    /// Every pattern's settings as one stable text, stored with a stream's state so a
    /// restart with other settings (or other patterns) is refused instead of mixing
    /// two definitions.
    pub fn fingerprint(&self) -> String {
        let parts: Vec<String> = self.list.iter().map(|p| p.fingerprint()).collect();
        parts.join(";")
    }
}

impl From<PatternConfig> for Patterns {
    fn from(config: PatternConfig) -> Self {
        Patterns::registered(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_its_own_variable_and_a_default_in_range() {
        let mut vars: Vec<&str> = settings().map(|s| s.var).collect();
        let all = vars.len();
        assert!(all >= 6);
        for s in settings() {
            assert!(s.range.contains(&s.default), "{}", s.var);
            // Each changes its pattern: another value changes the fingerprint.
            let other = PatternConfig::default().with(s, s.default + 1);
            assert_ne!(
                other.fingerprint(),
                PatternConfig::default().fingerprint(),
                "{} sets nothing",
                s.var
            );
        }
        vars.sort_unstable();
        vars.dedup();
        assert_eq!(vars.len(), all, "a variable is used twice");
    }

    #[test]
    fn registered_patterns_have_distinct_numbers_in_order_and_match_their_builds() {
        let ids: Vec<PatternId> = registered().collect();
        assert!(ids.windows(2).all(|w| w[0].number() < w[1].number()));
        for (i, r) in REGISTERED.iter().enumerate() {
            assert_eq!(r.id.id(), format!("PatId{}", r.id.number()));
            assert_eq!((r.build)(&PatternConfig::default()).id(), ids[i]);
        }
    }
}
