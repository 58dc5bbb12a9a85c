//! PatId1 UPGRADE: at a merchant with more than `TXPIPE_UPGRADE_MIN_MERCHANT_TXNS`
//! transactions, a customer whose count is at or above the nearest-rank top percentile
//! (`TXPIPE_UPGRADE_TOP_BP`) of the merchant's counts and whose weight is at or below
//! the nearest-rank bottom percentile (`TXPIPE_UPGRADE_BOTTOM_BP`) of its customers'
//! weights. Per
//! pair, but the thresholds move when any customer of the merchant changes: every
//! customer at or below the weight threshold is a candidate after a chunk that touched
//! the merchant, found as a run of the importance table's weight-ordered entries.

use super::{Asks, MerchantFacts, Pattern, Registration, Setting};
use crate::config::PatternConfig;
use crate::detection::PatternId;
use crate::engine::weight_order::WeightOrder;
use crate::engine::CountHistogram;
use crate::evidence::{Evidence, UpgradeEvidence};
use crate::parse::ImportanceTable;
use crate::percentile::{nearest_rank, BP_WHOLE};
use crate::weight::Weight;
use std::ops::Range;
use std::sync::Arc;

/// PatId1, UPGRADE.
pub const ID: PatternId = PatternId::new(1, "PatId1", "UPGRADE");

/// The merchant's transactions must be strictly more than this.
pub const MIN_MERCHANT_TXNS: Setting = Setting {
    var: "TXPIPE_UPGRADE_MIN_MERCHANT_TXNS",
    default: 50_000,
    range: 0..=u64::MAX,
    expected: "a whole number",
};

/// The top of the count distribution, in basis points (100 = top 1 %).
pub const TOP_BP: Setting = Setting {
    var: "TXPIPE_UPGRADE_TOP_BP",
    default: 100,
    range: 0..=9_999,
    expected: "basis points from 0 to 9999",
};

/// The bottom of the weight distribution, in basis points (100 = bottom 1 %).
pub const BOTTOM_BP: Setting = Setting {
    var: "TXPIPE_UPGRADE_BOTTOM_BP",
    default: 100,
    range: 1..=10_000,
    expected: "basis points from 1 to 10000",
};

/// Its entry in [`super::REGISTERED`].
pub const REGISTRATION: Registration = Registration {
    id: ID,
    settings: &[MIN_MERCHANT_TXNS, TOP_BP, BOTTOM_BP],
    build: |c| Arc::new(Upgrade::new(c)),
};

/// UPGRADE with its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgrade {
    /// The merchant's transactions must be strictly more than this.
    pub min_merchant_txns: u64,
    /// The top percentile of counts, in basis points.
    pub top_bp: u64,
    /// The bottom percentile of weights, in basis points.
    pub bottom_bp: u64,
}

/// The thresholds at one merchant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// The top percentile's rank in the count order (lowest first), and `Tcount(m)`.
    pub top_rank: u64,
    /// `Tcount(m)`: a customer needs at least this many transactions.
    pub count: u64,
    /// The bottom percentile's rank in the weight order (lowest first).
    pub bottom_rank: u64,
    /// The importance entry at that rank: `Tweight(m)`.
    pub bottom_entry: u32,
    /// The end of the run of the merchant's importance entries at or below
    /// `Tweight(m)` (ties with it all qualify).
    pub end: u32,
}

impl Upgrade {
    /// UPGRADE with a stream's settings.
    pub fn new(config: &PatternConfig) -> Self {
        Upgrade {
            min_merchant_txns: config.get(&MIN_MERCHANT_TXNS),
            top_bp: config.get(&TOP_BP),
            bottom_bp: config.get(&BOTTOM_BP),
        }
    }

    /// Whether a merchant with `txns` transactions is checked at all.
    #[inline]
    pub fn merchant_qualifies(&self, txns: u64) -> bool {
        txns > self.min_merchant_txns
    }

    /// The thresholds at a merchant, or `None` when no customer of it has a weight.
    pub fn thresholds(&self, m: &MerchantFacts<'_>) -> Option<Thresholds> {
        thresholds(self, m.by_count, m.by_weight, m.weights, m.entries())
    }
}

impl Pattern for Upgrade {
    fn id(&self) -> PatternId {
        ID
    }

    fn asks(&self) -> Asks {
        Asks::CustomersOfTouchedMerchants
    }

    fn fingerprint(&self) -> String {
        format!(
            "upgrade>{}:top{}bp:bottom{}bp",
            self.min_merchant_txns, self.top_bp, self.bottom_bp
        )
    }

    fn evidence_fields(&self) -> &'static [&'static str] {
        &[
            "customerTxns",
            "merchantTxns",
            "customers",
            "topRank",
            "countAtTopRank",
            "customerWeight",
            "weightedCustomers",
            "bottomRank",
            "weightAtBottomRank",
        ]
    }

    /// Every customer at or below the weight threshold is a candidate: a run of the
    /// merchant's weight-ordered entries, never a scan of all its customers.
    fn customers(
        &self,
        m: &MerchantFacts<'_>,
        emitted: &dyn Fn(u32) -> bool,
        found: &mut Vec<(u32, Evidence)>,
    ) {
        if !self.merchant_qualifies(m.txns) {
            return;
        }
        let (Some(t), Some(order)) = (self.thresholds(m), m.by_weight) else {
            return;
        };
        for (entry, p) in order.present_below(t.end) {
            let txns = m.pairs.txns(p);
            if holds(&t, txns) && !emitted(p) {
                let why = evidence(&t, txns, m.txns, m.by_count, order, m.weights, entry);
                found.push((p, why));
            }
        }
    }
}

/// The thresholds of a merchant whose counts are `by_count` and whose weighted
/// customers are `by_weight` (over `entries` of `weights`), or `None` when no customer
/// of it has a weight.
fn thresholds(
    cfg: &Upgrade,
    by_count: &CountHistogram,
    by_weight: Option<&WeightOrder>,
    weights: &ImportanceTable,
    entries: Range<u32>,
) -> Option<Thresholds> {
    let top_rank = nearest_rank(BP_WHOLE.saturating_sub(cfg.top_bp), by_count.len());
    let count = by_count.kth(top_rank)?;
    let order = by_weight.filter(|o| !o.is_empty())?;
    let bottom_rank = nearest_rank(cfg.bottom_bp, order.len());
    let bottom_entry = order.kth(bottom_rank)?;
    let t_rank = weights.entry_rank(bottom_entry);
    // Entries are in weight order: the run at or below Tweight ends at the first entry
    // after `bottom_entry` with a greater weight.
    let (mut lo, mut hi) = (bottom_entry, entries.end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if weights.entry_rank(mid) <= t_rank {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Some(Thresholds {
        top_rank,
        count,
        bottom_rank,
        bottom_entry,
        end: lo,
    })
}

/// Whether a candidate (a customer at or below the weight threshold) with `txns`
/// transactions holds.
#[inline]
pub fn holds(t: &Thresholds, txns: u64) -> bool {
    txns >= t.count
}

/// Why a candidate holds: its counts, both ranks and the values there. `entry` is the
/// customer's importance entry; looked up only when one fires.
fn evidence(
    t: &Thresholds,
    txns: u64,
    merchant_txns: u64,
    by_count: &CountHistogram,
    by_weight: &WeightOrder,
    weights: &ImportanceTable,
    entry: u32,
) -> Evidence {
    let weight = |e| weights.entry_weight(e).unwrap_or(Weight::new(0, 1));
    Evidence::Upgrade(UpgradeEvidence {
        txns,
        merchant_txns,
        customers: by_count.len(),
        top_rank: t.top_rank,
        count_at_top_rank: t.count,
        weight: weight(entry),
        weighted_customers: by_weight.len(),
        bottom_rank: t.bottom_rank,
        weight_at_bottom_rank: weight(t.bottom_entry),
    })
}
