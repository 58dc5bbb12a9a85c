//! The engine's state as an analyst asks about it (`txpipe explain`): one merchant's
//! stats and PatId1 thresholds now, one pair's stats, and each pattern's verdict there —
//! asked exactly as after a chunk — with whether it was emitted. Read-only; the cost is
//! one merchant's order statistics.

use super::{merchant_facts, Engine, MerchantView, PairView};
use crate::detection::PatternId;
use crate::evidence::Evidence;
use crate::patterns::{upgrade::Upgrade, Asks, PairFacts};
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

/// One pattern's verdict now: whether it holds (and why), and whether it was emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The pattern.
    pub pattern: PatternId,
    /// Why it holds now, as its evidence would say; `None` when it does not hold.
    pub holds: Option<Evidence>,
    /// Whether its detection was emitted (at most once, whenever it first held).
    pub emitted: bool,
}

/// One merchant now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantExplain<'a> {
    /// Its stats.
    pub stats: MerchantView<'a>,
    /// PatId1's thresholds (`None` when no customer of it has a weight).
    pub upgrade: Option<UpgradeThresholdsView>,
    /// Each per-merchant pattern's verdict, asked as after a chunk.
    pub verdicts: Vec<Verdict>,
}

/// One (merchant, customer) pair now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairExplain<'a> {
    /// Its stats.
    pub stats: PairView<'a>,
    /// Each per-pair pattern's verdict, asked as after a chunk.
    pub verdicts: Vec<Verdict>,
}

/// The verdict of `pattern` among `verdicts`.
pub fn verdict(verdicts: &[Verdict], pattern: PatternId) -> Option<&Verdict> {
    verdicts.iter().find(|v| v.pattern == pattern)
}

impl Engine {
    /// A merchant's stats, PatId1 thresholds and the per-merchant patterns' verdicts;
    /// `None` if never seen.
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
        let verdicts = self
            .patterns
            .iter()
            .zip(&self.emitted)
            .filter(|(p, _)| !p.asks().per_pair())
            .map(|(p, emitted)| Verdict {
                pattern: p.id(),
                holds: p.merchant(&facts),
                emitted: emitted.contains(m),
            })
            .collect();
        Some(MerchantExplain {
            stats: MerchantView {
                merchant: self.merchants.name(m),
                txns: stats.txns,
                customers: stats.by_count.len(),
                female: stats.female,
                male: stats.male,
            },
            upgrade,
            verdicts,
        })
    }

    /// A pair's stats and the per-pair patterns' verdicts; `None` if the customer never
    /// bought there.
    pub fn explain_pair(&self, merchant: &str, customer: &str) -> Option<PairExplain<'_>> {
        let (m, c) = (self.merchants.get(merchant)?, self.customers.get(customer)?);
        let p = self.pairs.find(m, c)?;
        let facts = merchant_facts(&self.merchant_stats[m as usize], &self.weights, &self.pairs);
        let pair = PairFacts {
            txns: self.pairs.txns(p),
            cents: self.pairs.cents(p),
            gender: self.pairs.record(p).gender(),
        };
        let mut verdicts = Vec::new();
        for (pattern, emitted) in self.patterns.iter().zip(&self.emitted) {
            let holds = match pattern.asks() {
                Asks::TouchedMerchants => continue,
                Asks::TouchedPairs => pattern.pair(&pair),
                // Asked as `detect` asks it: is the pair among the merchant's customers
                // that hold now?
                Asks::CustomersOfTouchedMerchants => {
                    let mut holding = Vec::new();
                    pattern.customers(&facts, &|_| false, &mut holding);
                    holding
                        .into_iter()
                        .find(|&(q, _)| q == p)
                        .map(|(_, why)| why)
                }
            };
            verdicts.push(Verdict {
                pattern: pattern.id(),
                holds,
                emitted: emitted.contains(p),
            });
        }
        Some(PairExplain {
            stats: self.pair_view(m, c)?,
            verdicts,
        })
    }

    /// Whether `pattern` was emitted for pair or merchant `i`.
    #[cfg(test)]
    pub(super) fn was_emitted(&self, pattern: PatternId, i: u32) -> bool {
        self.patterns
            .by_number(u64::from(pattern.number()))
            .is_some_and(|(slot, _)| self.emitted[slot].contains(i))
    }
}
