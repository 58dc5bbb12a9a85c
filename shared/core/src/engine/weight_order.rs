//! A merchant's customers that have a weight, in weight order, without storing weights
//! or keys again.
//!
//! The importance table never changes during a stream, so the order of a merchant's
//! weighted customers is known before any transaction: it is the run of the merchant's
//! importance entries (sorted by weight). Customers of C(m) are marked present in a
//! bitset over that run; a Fenwick tree over the bitset's 64-bit words counts them, so
//! the r-th smallest weight present (`Tweight`) is a logarithmic descent plus one word,
//! and the present customers at or below a weight are read word by word. Memory per
//! importance entry of a merchant seen in the stream: 1 bit, 1/16 of a `u32` counter
//! and the entry's pair (`u32`).

/// Presence of a merchant's weighted customers, in weight order.
#[derive(Debug, Clone, Default)]
pub struct WeightOrder {
    /// Position of the merchant's first importance entry.
    first: u32,
    /// Bit `i` set: the customer of entry `first + i` is in C(m).
    bits: Vec<u64>,
    /// Fenwick tree over the words' set bits (1-based).
    tree: Vec<u32>,
    /// Pair of each present entry.
    pair_of: Vec<u32>,
    present: u64,
}

impl WeightOrder {
    /// An empty order over entries `first..first + len`.
    pub fn new(first: u32, len: u32) -> Self {
        let words = (len as usize).div_ceil(64);
        WeightOrder {
            first,
            bits: vec![0; words],
            tree: vec![0; words + 1],
            pair_of: vec![0; len as usize],
            present: 0,
        }
    }

    /// Number of present customers.
    pub fn len(&self) -> u64 {
        self.present
    }

    /// Whether none is present.
    pub fn is_empty(&self) -> bool {
        self.present == 0
    }

    /// Marks entry `entry` (a global importance position) present, with its pair.
    /// Returns false (and changes nothing) if it is outside the merchant's run or
    /// already present.
    pub fn insert(&mut self, entry: u32, pair: u32) -> bool {
        let Some(i) = entry.checked_sub(self.first).map(|i| i as usize) else {
            return false;
        };
        if i >= self.pair_of.len() || self.bits[i / 64] & (1 << (i % 64)) != 0 {
            return false;
        }
        self.bits[i / 64] |= 1 << (i % 64);
        self.pair_of[i] = pair;
        let mut w = i / 64 + 1;
        while w < self.tree.len() {
            self.tree[w] += 1;
            w += w & w.wrapping_neg();
        }
        self.present += 1;
        true
    }

    /// The global entry of the `rank`-th present customer (1-based) in weight order.
    pub fn kth(&self, rank: u64) -> Option<u32> {
        if rank == 0 || rank > self.present {
            return None;
        }
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
        // Word `pos` (0-based) holds the answer; find its `remaining`-th set bit.
        let mut word = *self.bits.get(pos)?;
        for _ in 1..remaining {
            word &= word - 1;
        }
        (word != 0).then(|| self.first + (pos * 64) as u32 + word.trailing_zeros())
    }

    /// Present customers among entries `first..end` (global positions), in weight
    /// order: (entry, pair).
    pub fn present_below(&self, end: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        let len = end
            .saturating_sub(self.first)
            .min(self.pair_of.len() as u32) as usize;
        let words = len.div_ceil(64);
        self.bits[..words]
            .iter()
            .enumerate()
            .flat_map(move |(w, &bits)| {
                let mut bits = bits;
                let keep = len - w * 64;
                if keep < 64 {
                    bits &= (1u64 << keep) - 1;
                }
                std::iter::from_fn(move || {
                    (bits != 0).then(|| {
                        let i = w * 64 + bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        i
                    })
                })
            })
            .map(move |i| (self.first + i as u32, self.pair_of[i]))
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.bits.capacity() * 8 + self.tree.capacity() * 4 + self.pair_of.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn kth_and_prefix_match_a_sorted_list(
            len in 1u32..300,
            inserts in proptest::collection::vec(0u32..300, 0..200),
            end in 0u32..320,
        ) {
            let first = 1000;
            let mut order = WeightOrder::new(first, len);
            let mut present = std::collections::BTreeSet::new();
            for i in inserts {
                let inside = i < len;
                let fresh = !present.contains(&i);
                prop_assert_eq!(order.insert(first + i, i * 10), inside && fresh);
                if inside {
                    present.insert(i);
                }
            }
            prop_assert!(!order.insert(first - 1, 0));
            prop_assert_eq!(order.len(), present.len() as u64);
            for (r, &i) in present.iter().enumerate() {
                prop_assert_eq!(order.kth(r as u64 + 1), Some(first + i));
            }
            prop_assert_eq!(order.kth(present.len() as u64 + 1), None);
            let got: Vec<(u32, u32)> = order.present_below(first + end).collect();
            let want: Vec<(u32, u32)> = present.iter().filter(|&&i| i < end).map(|&i| (first + i, i * 10)).collect();
            prop_assert_eq!(got, want);
        }
    }
}
