//! Which detections were emitted: one set per pattern, of pair indices (per-pair
//! patterns) or merchant indices (per-merchant ones). A bitset: one bit per pair or
//! merchant up to the highest one emitted, so a pattern costs at most an eighth of a
//! byte per pair, and any number of patterns fit without touching the pair record.

/// A set of pair or merchant indices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmittedSet {
    words: Vec<u64>,
}

impl EmittedSet {
    /// Whether `i` is in the set.
    #[inline]
    pub fn contains(&self, i: u32) -> bool {
        self.words
            .get(i as usize / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Adds `i`; returns whether it was already there.
    #[inline]
    pub fn insert(&mut self, i: u32) -> bool {
        let word = i as usize / 64;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1 << (i % 64);
        let was = self.words[word] & bit != 0;
        self.words[word] |= bit;
        was
    }

    /// The indices, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = rest.trailing_zeros();
                    rest &= rest - 1;
                    (w * 64) as u32 + bit
                })
            })
        })
    }

    /// How many indices it holds.
    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_once_and_lists_in_order() {
        let mut s = EmittedSet::default();
        for i in [130, 0, 63, 64, 130] {
            s.insert(i);
        }
        assert!(s.insert(63), "already there");
        assert!(!s.insert(1));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 1, 63, 64, 130]);
        assert_eq!(s.len(), 5);
        assert!(s.contains(130) && !s.contains(129) && !s.contains(1 << 30));
    }
}
