//! PatId3 DEI-NEEDED: a merchant with more than `TXPIPE_DEI_MIN_FEMALE` female
//! customers and fewer female than male customers (a customer's gender at a merchant is
//! that of its first valid transaction there). Per merchant.

use super::{Asks, MerchantFacts, Pattern, Registration, Setting};
use crate::config::PatternConfig;
use crate::detection::PatternId;
use crate::evidence::Evidence;
use std::sync::Arc;

/// PatId3, DEI-NEEDED.
pub const ID: PatternId = PatternId::new(3, "PatId3", "DEI-NEEDED");

/// The female customers a merchant needs more than.
pub const MIN_FEMALE: Setting = Setting {
    var: "TXPIPE_DEI_MIN_FEMALE",
    default: 100,
    range: 0..=u64::MAX,
    expected: "a whole number",
};

/// Its entry in [`super::REGISTERED`].
pub const REGISTRATION: Registration = Registration {
    id: ID,
    settings: &[MIN_FEMALE],
    build: |c| Arc::new(Dei::new(c)),
};

/// DEI-NEEDED with its setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dei {
    /// Strictly more female customers than this.
    pub min_female: u64,
}

impl Dei {
    /// DEI-NEEDED with a stream's settings.
    pub fn new(config: &PatternConfig) -> Self {
        Dei {
            min_female: config.get(&MIN_FEMALE),
        }
    }

    /// Whether a merchant with these customers holds, and why.
    #[inline]
    pub fn holds(&self, female: u64, male: u64) -> Option<Evidence> {
        (female > self.min_female && female < male).then_some(Evidence::Dei { female, male })
    }
}

impl Pattern for Dei {
    fn id(&self) -> PatternId {
        ID
    }

    fn asks(&self) -> Asks {
        Asks::TouchedMerchants
    }

    fn fingerprint(&self) -> String {
        format!("dei>{}", self.min_female)
    }

    fn evidence_fields(&self) -> &'static [&'static str] {
        &["femaleCustomers", "maleCustomers"]
    }

    fn merchant(&self, merchant: &MerchantFacts<'_>) -> Option<Evidence> {
        self.holds(merchant.female, merchant.male)
    }
}
