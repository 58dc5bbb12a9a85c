//! The engine's state as an analyst asks about it (`txpipe explain`): one merchant's
//! stats and PatId1 thresholds now, one pair's stats, and which detections were
//! emitted. Read-only; the cost is one merchant's order statistics.

use super::{hash_bytes, importance_entry, NONE};
use super::{Engine, MerchantView, PairView, EMITTED_CHILD, EMITTED_UPGRADE};
use crate::patterns::{self, upgrade};
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
    /// A merchant's stats, PatId1 thresholds and PatId3 flag; `None` if never seen.
    pub fn explain_merchant(&self, merchant: &str) -> Option<MerchantExplain<'_>> {
        let m = self.merchants.get(merchant)?;
        let stats = &self.merchant_stats[m as usize];
        let entries = self.weights.merchant_entries(stats.importance);
        let order = stats.by_weight.as_ref();
        let t = upgrade::thresholds(&self.config, &stats.by_count, order, &self.weights, entries);
        let upgrade = t.and_then(|t| {
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
            dei_holds: patterns::dei::holds(&self.config, stats.female, stats.male).is_some(),
            dei_emitted: stats.dei_emitted,
        })
    }

    /// A pair's stats and emitted flags; `None` if the customer never bought there.
    pub fn explain_pair(&self, merchant: &str, customer: &str) -> Option<PairExplain<'_>> {
        let (m, c) = (self.merchants.get(merchant)?, self.customers.get(customer)?);
        let p = self.pairs.find(m, c)?;
        let record = self.pairs.record(p);
        let (txns, cents) = (self.pairs.txns(p), self.pairs.cents(p));
        let stats = &self.merchant_stats[m as usize];
        // PatId1 as `detect` asks it: a candidate is a weighted customer whose entry is
        // in the run at or below the weight threshold.
        let upgrade_holds = upgrade::merchant_qualifies(&self.config, stats.txns) && {
            let entries = self.weights.merchant_entries(stats.importance);
            let order = stats.by_weight.as_ref();
            let t =
                upgrade::thresholds(&self.config, &stats.by_count, order, &self.weights, entries);
            let entry = importance_entry(
                &self.weights,
                stats.importance,
                hash_bytes(customer.as_bytes()),
                customer,
            );
            t.is_some_and(|t| {
                record.weighted() && entry != NONE && entry < t.end && upgrade::holds(&t, txns)
            })
        };
        Some(PairExplain {
            stats: self.pair_view(m, c)?,
            upgrade_holds,
            upgrade_emitted: record.emitted(EMITTED_UPGRADE),
            child_holds: patterns::child::holds(&self.config, txns, cents).is_some(),
            child_emitted: record.emitted(EMITTED_CHILD),
        })
    }
}
