//! PatId3 DEI-NEEDED: a merchant with more than `dei_min_female` female customers and
//! fewer female than male customers (a customer's gender at a merchant is that of its
//! first valid transaction there). Per merchant.

use crate::config::PatternConfig;
use crate::evidence::Evidence;

/// Whether a merchant with these customers holds, and why.
#[inline]
pub fn holds(cfg: &PatternConfig, female: u64, male: u64) -> Option<Evidence> {
    (female > cfg.dei_min_female && female < male).then_some(Evidence::Dei { female, male })
}
