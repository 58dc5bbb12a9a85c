//! PatId2 CHILD: a customer with at least `TXPIPE_CHILD_MIN_TXNS` transactions at a
//! merchant whose average amount is below `TXPIPE_CHILD_AVG_BELOW_CENTS`. Exact: the
//! average is never divided out, `s < limit · n` in integer cents. Per pair; it depends
//! only on the pair's own stats, so only pairs a chunk touched can newly hold.

use super::{Asks, PairFacts, Pattern, Registration, Setting};
use crate::config::PatternConfig;
use crate::detection::PatternId;
use crate::evidence::Evidence;
use std::sync::Arc;

/// PatId2, CHILD.
pub const ID: PatternId = PatternId::new(2, "PatId2", "CHILD");

/// The customer's minimum transactions at the merchant.
pub const MIN_TXNS: Setting = Setting {
    var: "TXPIPE_CHILD_MIN_TXNS",
    default: 80,
    range: 0..=u64::MAX,
    expected: "a whole number",
};

/// The average must be strictly below this many cents.
pub const AVG_BELOW_CENTS: Setting = Setting {
    var: "TXPIPE_CHILD_AVG_BELOW_CENTS",
    default: 2_300,
    range: 0..=u64::MAX,
    expected: "cents, e.g. 2300 for Rs 23.00",
};

/// Its entry in [`super::REGISTERED`].
pub const REGISTRATION: Registration = Registration {
    id: ID,
    settings: &[MIN_TXNS, AVG_BELOW_CENTS],
    build: |c| Arc::new(Child::new(c)),
};

/// CHILD with its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Child {
    /// The customer's minimum transactions.
    pub min_txns: u64,
    /// The average's exclusive limit, in cents.
    pub avg_below_cents: u64,
}

impl Child {
    /// CHILD with a stream's settings.
    pub fn new(config: &PatternConfig) -> Self {
        Child {
            min_txns: config.get(&MIN_TXNS),
            avg_below_cents: config.get(&AVG_BELOW_CENTS),
        }
    }

    /// Whether a pair with `txns` transactions totalling `cents` holds, and why.
    #[inline]
    pub fn holds(&self, txns: u64, cents: u128) -> Option<Evidence> {
        let holds =
            txns >= self.min_txns && cents < u128::from(self.avg_below_cents) * u128::from(txns);
        holds.then_some(Evidence::Child { txns, cents })
    }
}

impl Pattern for Child {
    fn id(&self) -> PatternId {
        ID
    }

    fn asks(&self) -> Asks {
        Asks::TouchedPairs
    }

    fn fingerprint(&self) -> String {
        format!("child>={}:avg<{}", self.min_txns, self.avg_below_cents)
    }

    fn evidence_fields(&self) -> &'static [&'static str] {
        &["txns", "amountCents", "averageRupees"]
    }

    fn pair(&self, pair: &PairFacts) -> Option<Evidence> {
        self.holds(pair.txns, pair.cents)
    }
}
