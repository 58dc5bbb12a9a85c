//! PatId3 DEI-NEEDED: a merchant with more than `dei_min_female` female customers and
//! fewer female than male customers (a customer's gender at a merchant is that of its
//! first valid transaction there). Per merchant.

use super::Setting;
use crate::config::PatternConfig;
use crate::evidence::Evidence;

/// Its setting: the female customers a merchant needs more than.
pub const SETTINGS: &[Setting] = &[Setting {
    var: "TXPIPE_DEI_MIN_FEMALE",
    default: 100,
    range: 0..=u64::MAX,
    expected: "a whole number",
    set: |c, v| c.dei_min_female = v,
}];

/// Whether a merchant with these customers holds, and why.
#[inline]
pub fn holds(cfg: &PatternConfig, female: u64, male: u64) -> Option<Evidence> {
    (female > cfg.dei_min_female && female < male).then_some(Evidence::Dei { female, male })
}
