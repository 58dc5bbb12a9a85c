//! PatId2 CHILD: a customer with at least `child_min_txns` transactions at a merchant
//! whose average amount is below `child_avg_below_cents`. Exact: the average is never
//! divided out, `s < limit · n` in integer cents. Per pair; it depends only on the
//! pair's own stats, so only pairs a chunk touched can newly hold.

use super::Setting;
use crate::config::PatternConfig;
use crate::evidence::Evidence;

/// Its settings: the minimum transactions and the average's limit.
pub const SETTINGS: &[Setting] = &[
    Setting {
        var: "TXPIPE_CHILD_MIN_TXNS",
        default: 80,
        range: 0..=u64::MAX,
        expected: "a whole number",
        set: |c, v| c.child_min_txns = v,
    },
    Setting {
        var: "TXPIPE_CHILD_AVG_BELOW_CENTS",
        default: 2_300,
        range: 0..=u64::MAX,
        expected: "cents, e.g. 2300 for Rs 23.00",
        set: |c, v| c.child_avg_below_cents = v,
    },
];

/// Whether a pair with `txns` transactions totalling `cents` holds, and why.
#[inline]
pub fn holds(cfg: &PatternConfig, txns: u64, cents: u128) -> Option<Evidence> {
    let holds = txns >= cfg.child_min_txns
        && cents < u128::from(cfg.child_avg_below_cents) * u128::from(txns);
    holds.then_some(Evidence::Child { txns, cents })
}
