//! PatId1 UPGRADE: at a merchant with more than `upgrade_min_merchant_txns`
//! transactions, a customer whose count is at or above the nearest-rank top percentile
//! (`upgrade_top_bp`) of the merchant's counts and whose weight is at or below the
//! nearest-rank bottom percentile (`upgrade_bottom_bp`) of its customers' weights. Per
//! pair, but the thresholds move when any customer of the merchant changes: every
//! customer at or below the weight threshold is a candidate after a chunk that touched
//! the merchant, found as a run of the importance table's weight-ordered entries.

use super::Setting;
use crate::config::PatternConfig;
use crate::engine::weight_order::WeightOrder;
use crate::engine::CountHistogram;
use crate::evidence::{Evidence, UpgradeEvidence};
use crate::parse::ImportanceTable;
use crate::percentile::{nearest_rank, BP_WHOLE};
use crate::weight::Weight;
use std::ops::Range;

/// Its settings: the merchant's minimum transactions and both percentiles.
pub const SETTINGS: &[Setting] = &[
    Setting {
        var: "TXPIPE_UPGRADE_MIN_MERCHANT_TXNS",
        default: 50_000,
        range: 0..=u64::MAX,
        expected: "a whole number",
        set: |c, v| c.upgrade_min_merchant_txns = v,
    },
    Setting {
        var: "TXPIPE_UPGRADE_TOP_BP",
        default: 100,
        range: 0..=9_999,
        expected: "basis points from 0 to 9999",
        set: |c, v| c.upgrade_top_bp = v,
    },
    Setting {
        var: "TXPIPE_UPGRADE_BOTTOM_BP",
        default: 100,
        range: 1..=10_000,
        expected: "basis points from 1 to 10000",
        set: |c, v| c.upgrade_bottom_bp = v,
    },
];

/// Whether a merchant with `txns` transactions is checked at all.
#[inline]
pub fn merchant_qualifies(cfg: &PatternConfig, txns: u64) -> bool {
    txns > cfg.upgrade_min_merchant_txns
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

/// The thresholds of a merchant whose counts are `by_count` and whose weighted
/// customers are `by_weight` (over `entries` of `weights`), or `None` when no customer
/// of it has a weight.
pub(crate) fn thresholds(
    cfg: &PatternConfig,
    by_count: &CountHistogram,
    by_weight: Option<&WeightOrder>,
    weights: &ImportanceTable,
    entries: Range<u32>,
) -> Option<Thresholds> {
    let top_rank = nearest_rank(BP_WHOLE.saturating_sub(cfg.upgrade_top_bp), by_count.len());
    let count = by_count.kth(top_rank)?;
    let order = by_weight.filter(|o| !o.is_empty())?;
    let bottom_rank = nearest_rank(cfg.upgrade_bottom_bp, order.len());
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
pub(crate) fn evidence(
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
