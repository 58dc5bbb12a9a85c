//! A histogram of per-customer transaction counts with order statistics (a Fenwick
//! tree over count values): adding a customer or moving one to a higher count costs
//! O(log max count), and the k-th smallest count is found in O(log max count).
//! This keeps PatId1's `Tcount(m)` cheap even when a chunk touches thousands of
//! customers of one merchant.

/// Counts of customers per transaction count.
#[derive(Debug, Clone, Default)]
pub struct CountHistogram {
    /// Fenwick tree over count values `1..=tree.len()` (1-based, index 0 unused).
    tree: Vec<u32>,
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

    fn capacity(&self) -> u64 {
        self.tree.len().saturating_sub(1) as u64
    }

    /// Adds (`delta = 1`) or removes (`delta = -1`) one customer with count `value ≥ 1`.
    pub fn add(&mut self, value: u64, delta: i32) {
        debug_assert!(value >= 1);
        if value > self.capacity() {
            self.grow(value);
        }
        let mut i = value as usize;
        while i < self.tree.len() {
            self.tree[i] = self.tree[i].wrapping_add_signed(delta);
            i += i & i.wrapping_neg();
        }
        self.total = self.total.wrapping_add_signed(i64::from(delta));
    }

    /// Moves one customer from count `from` (0 = not yet present) to count `to`.
    pub fn move_customer(&mut self, from: u64, to: u64) {
        if from == to {
            return;
        }
        if from > 0 {
            self.add(from, -1);
        }
        self.add(to, 1);
    }

    /// Rebuilds with room for `value` (capacity a power of two, so the tree stays valid).
    fn grow(&mut self, value: u64) {
        let new_cap = value.next_power_of_two().max(64) as usize;
        let mut counts = vec![0u32; new_cap + 1];
        for (v, slot) in counts.iter_mut().enumerate().take(self.tree.len()).skip(1) {
            *slot = self.point(v as u64);
        }
        let mut tree = vec![0u32; new_cap + 1];
        for v in 1..=new_cap {
            tree[v] = tree[v].wrapping_add(counts[v]);
            let parent = v + (v & v.wrapping_neg());
            if parent <= new_cap {
                tree[parent] = tree[parent].wrapping_add(tree[v]);
            }
        }
        self.tree = tree;
    }

    fn prefix(&self, value: u64) -> u64 {
        let mut i = (value as usize).min(self.tree.len().saturating_sub(1));
        let mut sum = 0u64;
        while i > 0 {
            sum += u64::from(self.tree[i]);
            i -= i & i.wrapping_neg();
        }
        sum
    }

    fn point(&self, value: u64) -> u32 {
        (self.prefix(value) - self.prefix(value - 1)) as u32
    }

    /// The `rank`-th smallest count (1-based), or `None` if out of range.
    pub fn kth(&self, rank: u64) -> Option<u64> {
        if rank == 0 || rank > self.total {
            return None;
        }
        // Binary lifting: the largest position whose prefix sum is < rank, plus one.
        let mut pos = 0usize;
        let mut remaining = rank;
        let mut step = (self.tree.len() - 1).next_power_of_two();
        while step > 0 {
            let next = pos + step;
            if next < self.tree.len() && u64::from(self.tree[next]) < remaining {
                pos = next;
                remaining -= u64::from(self.tree[next]);
            }
            step >>= 1;
        }
        Some(pos as u64 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn kth_matches_sorting(moves in proptest::collection::vec((0usize..20, 1u64..5), 1..200)) {
            // Customers only ever move up, as transaction counts do.
            let mut counts = [0u64; 20];
            let mut h = CountHistogram::default();
            for (c, add) in moves {
                let from = counts[c];
                counts[c] += add * if c == 3 { 97 } else { 1 };
                h.move_customer(from, counts[c]);
                let mut sorted: Vec<u64> = counts.iter().copied().filter(|&v| v > 0).collect();
                sorted.sort();
                prop_assert_eq!(h.len(), sorted.len() as u64);
                for (i, v) in sorted.iter().enumerate() {
                    prop_assert_eq!(h.kth(i as u64 + 1), Some(*v));
                }
                prop_assert_eq!(h.kth(sorted.len() as u64 + 1), None);
            }
        }
    }
}
