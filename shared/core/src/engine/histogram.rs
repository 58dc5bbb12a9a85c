//! A histogram of per-customer transaction counts with order statistics, for PatId1's
//! `Tcount(m)`.
//!
//! Updates are what every touched pair pays, queries only merchants past the UPGRADE
//! minimum, so updates are O(1): counts of small values (below [`DENSE`]) sit in an
//! array with a sum per block of 64 values, larger values (rare: a customer with
//! thousands of transactions at one merchant) in an ordered map. The k-th smallest count
//! scans block sums, then one block: at most 64 + 64 steps below [`DENSE`], plus the
//! distinct large values. Memory is bounded by [`DENSE`] per merchant, whatever the
//! counts (a Fenwick tree over count values would grow with the largest count).

use std::collections::BTreeMap;

/// Counts below this are kept densely.
pub const DENSE: u64 = 4096;
const BLOCK: usize = 64;

/// Counts of customers per transaction count.
#[derive(Debug, Clone, Default)]
pub struct CountHistogram {
    /// The sum of each block of 64 counts, then customers per count `v < DENSE` (index
    /// 0 unused), grown in powers of two as larger counts appear: one allocation, so a
    /// small count and its block sum share a cache line.
    counts: Vec<u32>,
    /// Number of block sums at the front of `counts`.
    blocks: usize,
    /// Customers per count, for counts of at least `DENSE`.
    sparse: BTreeMap<u64, u32>,
    /// Customers with a count below `DENSE`.
    dense_total: u64,
    total: u64,
}

impl CountHistogram {
    /// Number of customers in the histogram.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.counts.capacity() * 4 + self.sparse.len() * 48
    }

    /// Adds (`delta = 1`) or removes (`delta = -1`) one customer with count `value ≥ 1`.
    #[inline]
    pub fn add(&mut self, value: u64, delta: i32) {
        debug_assert!(value >= 1);
        if value < DENSE {
            let v = value as usize;
            if v >= self.counts.len() - self.blocks {
                self.grow(v);
            }
            let at = self.blocks + v;
            self.counts[at] = self.counts[at].wrapping_add_signed(delta);
            self.counts[v / BLOCK] = self.counts[v / BLOCK].wrapping_add_signed(delta);
            self.dense_total = self.dense_total.wrapping_add_signed(i64::from(delta));
        } else {
            let slot = self.sparse.entry(value).or_insert(0);
            *slot = slot.wrapping_add_signed(delta);
            if *slot == 0 {
                self.sparse.remove(&value);
            }
        }
        self.total = self.total.wrapping_add_signed(i64::from(delta));
    }

    /// Makes room for count `v` (below `DENSE`).
    fn grow(&mut self, v: usize) {
        let dense = (v + 1).next_power_of_two().max(BLOCK);
        let blocks = dense / BLOCK;
        let mut counts = vec![0; blocks + dense];
        counts[..self.blocks].copy_from_slice(&self.counts[..self.blocks]);
        counts[blocks..blocks + self.counts.len() - self.blocks]
            .copy_from_slice(&self.counts[self.blocks..]);
        self.counts = counts;
        self.blocks = blocks;
    }

    /// Moves one customer from count `from` (0 = not yet present) to count `to`.
    #[inline]
    pub fn move_customer(&mut self, from: u64, to: u64) {
        if from == to {
            return;
        }
        if from > 0 {
            self.add(from, -1);
        }
        self.add(to, 1);
    }

    /// The `rank`-th smallest count (1-based), or `None` if out of range.
    pub fn kth(&self, rank: u64) -> Option<u64> {
        if rank == 0 || rank > self.total {
            return None;
        }
        if rank > self.dense_total {
            // Among the large counts: scan them from the top.
            let mut above = self.total - rank;
            for (&value, &n) in self.sparse.iter().rev() {
                let n = u64::from(n);
                if n > above {
                    return Some(value);
                }
                above -= n;
            }
            return None;
        }
        let mut remaining = rank;
        let (sums, dense) = self.counts.split_at(self.blocks);
        for (b, &sum) in sums.iter().enumerate() {
            let sum = u64::from(sum);
            if sum < remaining {
                remaining -= sum;
                continue;
            }
            let start = b * BLOCK;
            for (v, &n) in dense[start..start + BLOCK].iter().enumerate() {
                let n = u64::from(n);
                if n >= remaining {
                    return Some((start + v) as u64);
                }
                remaining -= n;
            }
        }
        None
    }

    /// Customers per count, ascending (for rebuilding from a snapshot).
    pub fn from_counts(counts: impl IntoIterator<Item = u64>) -> Self {
        let mut h = CountHistogram::default();
        for c in counts {
            h.add(c, 1);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn kth_matches_sorting(moves in proptest::collection::vec((0usize..20, 1u64..5), 1..200)) {
            // Customers only ever move up, as transaction counts do; customer 3 jumps
            // past the dense range.
            let mut counts = [0u64; 20];
            let mut h = CountHistogram::default();
            for (c, add) in moves {
                let from = counts[c];
                counts[c] += add * if c == 3 { 1500 } else { 1 };
                h.move_customer(from, counts[c]);
                let mut sorted: Vec<u64> = counts.iter().copied().filter(|&v| v > 0).collect();
                sorted.sort();
                prop_assert_eq!(h.len(), sorted.len() as u64);
                for (i, v) in sorted.iter().enumerate() {
                    prop_assert_eq!(h.kth(i as u64 + 1), Some(*v));
                }
                prop_assert_eq!(h.kth(sorted.len() as u64 + 1), None);
                prop_assert_eq!(h.kth(0), None);
            }
        }
    }

    #[test]
    fn dense_and_sparse_meet_at_the_boundary() {
        let h = CountHistogram::from_counts([DENSE - 1, DENSE, 1, DENSE + 7]);
        assert_eq!(
            (1..=4).map(|r| h.kth(r)).collect::<Vec<_>>(),
            vec![Some(1), Some(DENSE - 1), Some(DENSE), Some(DENSE + 7)]
        );
        assert!(h.heap_bytes() <= (DENSE as usize) * 5 + 200);
    }
}
