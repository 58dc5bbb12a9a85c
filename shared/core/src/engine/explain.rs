//! The engine's state as an analyst asks about it (`txpipe explain`): one merchant's
//! stats and PatId1 thresholds now, one pair's stats, and which detections were
//! emitted. Read-only; the cost is one merchant's order statistics.

use super::{merchant_facts, Engine, MerchantView, PairView};
use crate::detection::PatternId;
use crate::patterns::{child::Child, dei::Dei, upgrade::Upgrade, Pattern};
use crate::weight::Weight;

/// PatId1's thresholds at one merchant now (`None` fields: no customer has a weight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeThresholdsView {
    /// Customers of the merchant (the count distribution's size).
    pub customers: u64,
    /// The top percentile's nearest rank, counted from the lowest count.
    pub top_rank: u64,
    /// The count at that rank (a customer needs at least this many).
    pub count_at_top_rank: u64,
    /// Customers with a weight (the weight distribution's size).
    pub weighted_customers: u64,
    /// The bottom percentile's nearest rank, counted from the lowest weight.
    pub bottom_rank: u64,
    /// The weight at that rank (a customer's must be at most this).
    pub weight_at_bottom_rank: Weight,
}

/// One merchant now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantExplain<'a> {
    /// Its stats.
    pub stats: MerchantView<'a>,
    /// PatId1's thresholds (`None` when no customer of it has a weight).
    pub upgrade: Option<UpgradeThresholdsView>,
    /// Whether PatId3 holds now (its file's condition).
    pub dei_holds: bool,
    /// Whether PatId3 was emitted for it.
    pub dei_emitted: bool,
}

/// One (merchant, customer) pair now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairExplain<'a> {
    /// Its stats.
    pub stats: PairView<'a>,
    /// Whether PatId1 holds now: the merchant qualifies, the customer is in the run at
    /// or below the weight threshold and its count reaches the top rank's.
    pub upgrade_holds: bool,
    /// Whether PatId1 was emitted for it.
    pub upgrade_emitted: bool,
    /// Whether PatId2 holds now (its file's condition).
    pub child_holds: bool,
    /// Whether PatId2 was emitted for it.
    pub child_emitted: bool,
}

impl Engine {
    /// Whether `pattern` was emitted for pair or merchant `i`.
    pub(super) fn was_emitted(&self, pattern: PatternId, i: u32) -> bool {
        self.patterns
            .by_number(u64::from(pattern.number()))
            .is_some_and(|(slot, _)| self.emitted[slot].contains(i))
    }

    /// A merchant's stats, PatId1 thresholds and PatId3 flag; `None` if never seen.
    pub fn explain_merchant(&self, merchant: &str) -> Option<MerchantExplain<'_>> {
        let m = self.merchants.get(merchant)?;
        let stats = &self.merchant_stats[m as usize];
        let facts = merchant_facts(stats, &self.weights, &self.pairs);
        let upgrade = Upgrade::new(self.config())
            .thresholds(&facts)
            .and_then(|t| {
                Some(UpgradeThresholdsView {
                    customers: stats.by_count.len(),
                    top_rank: t.top_rank,
                    count_at_top_rank: t.count,
                    weighted_customers: stats.by_weight.as_ref()?.len(),
                    bottom_rank: t.bottom_rank,
                    weight_at_bottom_rank: self.weights.entry_weight(t.bottom_entry)?,
                })
            });
        Some(MerchantExplain {
            stats: MerchantView {
                merchant: self.merchants.name(m),
                txns: stats.txns,
                customers: stats.by_count.len(),
                female: stats.female,
                male: stats.male,
            },
            upgrade,
            dei_holds: Dei::new(self.config()).merchant(&facts).is_some(),
            dei_emitted: self.was_emitted(PatternId::DEI_NEEDED, m),
        })
    }

    /// A pair's stats and emitted flags; `None` if the customer never bought there.
    pub fn explain_pair(&self, merchant: &str, customer: &str) -> Option<PairExplain<'_>> {
        let (m, c) = (self.merchants.get(merchant)?, self.customers.get(customer)?);
        let p = self.pairs.find(m, c)?;
        let (txns, cents) = (self.pairs.txns(p), self.pairs.cents(p));
        let stats = &self.merchant_stats[m as usize];
        // PatId1 asked as `detect` asks it: is the pair among the merchant's customers
        // that hold now?
        let mut holding = Vec::new();
        let facts = merchant_facts(stats, &self.weights, &self.pairs);
        Upgrade::new(self.config()).customers(&facts, &|_| false, &mut holding);
        Some(PairExplain {
            stats: self.pair_view(m, c)?,
            upgrade_holds: holding.iter().any(|&(q, _)| q == p),
            upgrade_emitted: self.was_emitted(PatternId::UPGRADE, p),
            child_holds: Child::new(self.config()).holds(txns, cents).is_some(),
            child_emitted: self.was_emitted(PatternId::CHILD, p),
        })
    }
}
