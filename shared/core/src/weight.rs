//! Importance weights as exact fractions.
//!
//! `w(m,c)` is the mean of several decimal weights. Kept as (sum of micro-units, row
//! count) and compared by exact rational comparison, so a tie at the percentile
//! threshold is a tie in every implementation.

use std::cmp::Ordering;

/// An exact mean weight: `micros_sum / rows` micro-units.
#[derive(Debug, Clone, Copy)]
pub struct Weight {
    micros_sum: i128,
    rows: u64,
}

impl Weight {
    /// A mean of `rows` weights summing to `micros_sum` micro-units. `rows` must be ≥ 1.
    pub fn new(micros_sum: i128, rows: u64) -> Self {
        debug_assert!(rows > 0);
        Weight {
            micros_sum,
            rows: rows.max(1),
        }
    }

    /// Sum of the weights, in micro-units.
    pub fn micros_sum(&self) -> i128 {
        self.micros_sum
    }

    /// Number of rows averaged.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The mean as a float, for display only.
    pub fn approx(&self) -> f64 {
        self.micros_sum as f64 / self.rows as f64 / 1e6
    }
}

impl PartialEq for Weight {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Weight {}

impl PartialOrd for Weight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Weight {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_fractions(
            self.micros_sum,
            self.rows as i128,
            other.micros_sum,
            other.rows as i128,
        )
    }
}

/// Compares `a/b` with `c/d` exactly (`b, d > 0`) without overflow: cross-multiplication
/// when it fits, otherwise a continued-fraction comparison of quotients and remainders.
fn compare_fractions(a: i128, b: i128, c: i128, d: i128) -> Ordering {
    if let (Some(ad), Some(cb)) = (a.checked_mul(d), c.checked_mul(b)) {
        return ad.cmp(&cb);
    }
    compare_by_quotients(a, b, c, d)
}

/// The overflow-free path of [`compare_fractions`]: integer parts first, then the
/// fractional parts by their reciprocals.
fn compare_by_quotients(a: i128, b: i128, c: i128, d: i128) -> Ordering {
    let (qa, ra) = (a.div_euclid(b), a.rem_euclid(b));
    let (qc, rc) = (c.div_euclid(d), c.rem_euclid(d));
    match qa.cmp(&qc) {
        Ordering::Equal => match (ra == 0, rc == 0) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            // ra/b vs rc/d, both in (0,1): compare the reciprocals, reversed.
            (false, false) => compare_fractions(d, rc, b, ra),
        },
        unequal => unequal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn equal_means_compare_equal() {
        assert_eq!(Weight::new(2, 2), Weight::new(1, 1));
        assert!(Weight::new(1, 3) < Weight::new(1, 2));
        assert!(Weight::new(-1, 3) < Weight::new(0, 1));
    }

    #[test]
    fn huge_values_compare_exactly() {
        let big = i128::MAX / 3;
        assert_eq!(
            Weight::new(big, 7).cmp(&Weight::new(big, 7)),
            Ordering::Equal
        );
        assert!(Weight::new(big - 1, u64::MAX) < Weight::new(big, u64::MAX));
    }

    proptest! {
        #[test]
        fn matches_cross_multiplication(a in -1_000_000_000i128..1_000_000_000, b in 1u64..1_000_000,
                                        c in -1_000_000_000i128..1_000_000_000, d in 1u64..1_000_000) {
            let expected = (a * d as i128).cmp(&(c * b as i128));
            prop_assert_eq!(Weight::new(a, b).cmp(&Weight::new(c, d)), expected);
            // The overflow-safe path must agree too.
            prop_assert_eq!(compare_by_quotients(a, b as i128, c, d as i128), expected);
        }
    }
}
