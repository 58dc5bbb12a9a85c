//! Nearest-rank percentiles in integer arithmetic.

/// Basis points in a whole (100 % = 10,000 bp).
pub const BP_WHOLE: u64 = 10_000;

/// The 1-based rank of the nearest-rank percentile `q_bp` (0 < q ≤ 10,000) in a sorted
/// population of `n` values: `max(1, ceil(q·n / 10000))`.
///
/// Integer arithmetic on purpose: in floating point `0.07 × 100` is
/// `7.000000000000001`, whose ceiling is rank 8 instead of 7 (`q` = 700 bp, n = 100).
pub fn nearest_rank(q_bp: u64, n: u64) -> u64 {
    (q_bp * n).div_ceil(BP_WHOLE).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_at_the_edges() {
        assert_eq!(nearest_rank(100, 300), 3);
        assert_eq!(nearest_rank(700, 100), 7); // (0.07 * 100.0).ceil() is 8
        assert_eq!(nearest_rank(175, 400), 7); // (0.0175 * 400.0).ceil() is 8
        assert_eq!(nearest_rank(100, 301), 4);
        assert_eq!(nearest_rank(100, 1), 1);
        assert_eq!(nearest_rank(9_900, 1), 1);
        assert_eq!(nearest_rank(9_900, 100), 99);
        assert_eq!(nearest_rank(9_900, 101), 100);
        assert_eq!(nearest_rank(10_000, 7), 7);
        assert_eq!(nearest_rank(1, 5), 1);
        assert_eq!(nearest_rank(1_000, 10), 1);
        assert_eq!(nearest_rank(1_000, 11), 2);
    }
}
