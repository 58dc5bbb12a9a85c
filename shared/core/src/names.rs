//! Interned ids: each distinct merchant or customer id is stored once, in one arena, and
//! known by a dense `u32` index in first-seen order. The hot path hashes an id once per
//! row and then works with indices.
//!
//! Memory per name: its bytes, a 4-byte end offset, and about 7 bytes of hash index (a
//! 4-byte position and a 1-byte tag per slot at 1/2 to 7/8 load) — no per-name
//! allocation and no second copy of the key.

use crate::index::{hash_bytes, ShardedIndex};

/// The table is full: more than `u32::MAX - 1` names or 4 GiB of name bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the id table is full ({names} names, {bytes} bytes): more than it can index")]
pub struct NamesFull {
    /// Names held.
    pub names: usize,
    /// Bytes held.
    pub bytes: usize,
}

/// A table of distinct names, each with a dense index in first-seen order.
#[derive(Debug, Default, Clone)]
pub struct Names {
    arena: String,
    /// `ends[i]` is where name `i` ends in the arena (it starts where `i - 1` ends).
    ends: Vec<u32>,
    index: ShardedIndex,
}

/// Index value meaning "none" wherever a name index is optional.
pub const NONE: u32 = u32::MAX;

impl Names {
    /// Whether `extra_names` more names holding `extra_bytes` bytes in all would fit.
    pub fn has_room(&self, extra_names: usize, extra_bytes: usize) -> bool {
        self.ends.len().saturating_add(extra_names) < NONE as usize
            && self.arena.len().saturating_add(extra_bytes) <= u32::MAX as usize
    }

    /// The index of `name`, adding it if new.
    pub fn intern(&mut self, name: &str) -> Result<u32, NamesFull> {
        let hash = hash_bytes(name.as_bytes());
        if let Some(i) = self.find(hash, name) {
            return Ok(i);
        }
        self.push(hash, name)
    }

    /// Like [`Names::intern`], also saying whether the name is new.
    #[inline]
    pub fn intern_new(&mut self, name: &str) -> Result<(u32, bool), NamesFull> {
        self.intern_hashed(hash_bytes(name.as_bytes()), name)
    }

    /// [`Names::intern_new`] with the name's [`hash_bytes`] already computed.
    #[inline]
    pub fn intern_hashed(&mut self, hash: u64, name: &str) -> Result<(u32, bool), NamesFull> {
        if let Some(i) = self.find(hash, name) {
            return Ok((i, false));
        }
        Ok((self.push(hash, name)?, true))
    }

    /// First of the three cache-warming steps for a batch of lookups (see the `index`
    /// module): reads the home bucket of `hash`.
    #[inline]
    pub fn touch_bucket(&self, hash: u64) -> u32 {
        self.index.touch(hash)
    }

    /// Second step: reads the end offsets of the likely match and returns where its
    /// bytes start (or [`NONE`]).
    #[inline]
    pub fn touch_ends(&self, hash: u64) -> u32 {
        match self.index.candidate(hash) {
            Some(0) => 0,
            Some(i) => self.ends.get(i as usize - 1).copied().unwrap_or(NONE),
            None => NONE,
        }
    }

    /// Third step: reads the first byte of a name whose bytes start at `start`.
    #[inline]
    pub fn touch_bytes(&self, start: u32) -> u32 {
        self.arena
            .as_bytes()
            .get(start as usize)
            .map_or(0, |&b| u32::from(b))
    }

    #[inline]
    fn find(&self, hash: u64, name: &str) -> Option<u32> {
        self.find_bytes(hash, name.as_bytes())
    }

    /// The index of the name whose bytes are `name` (with its [`hash_bytes`]), if known:
    /// a known name was checked when it was added, so a caller can skip checking it again.
    #[inline]
    pub fn find_bytes(&self, hash: u64, name: &[u8]) -> Option<u32> {
        let (arena, ends) = (self.arena.as_bytes(), &self.ends);
        self.index.find(hash, |i| {
            let i = i as usize;
            let start = if i == 0 { 0 } else { ends[i - 1] as usize };
            let end = ends[i] as usize;
            end - start == name.len() && arena.get(start..end).is_some_and(|b| same(b, name))
        })
    }

    fn push(&mut self, hash: u64, name: &str) -> Result<u32, NamesFull> {
        if !self.has_room(1, name.len()) {
            return Err(NamesFull {
                names: self.ends.len(),
                bytes: self.arena.len(),
            });
        }
        let i = self.ends.len() as u32;
        self.arena.push_str(name);
        self.ends.push(self.arena.len() as u32);
        let (arena, ends) = (&self.arena, &self.ends);
        self.index.insert(hash, i, |positions, hashes| {
            // Names are scattered: read every end offset, then every name's first byte,
            // then hash, so each pass's cache misses overlap.
            let starts: Vec<u32> = positions
                .iter()
                .map(|&p| match p {
                    0 => 0,
                    p => ends[p as usize - 1],
                })
                .collect();
            let warm = starts.iter().fold(0u8, |w, &s| {
                w ^ arena.as_bytes().get(s as usize).copied().unwrap_or(0)
            });
            std::hint::black_box(warm);
            hashes.extend(
                positions
                    .iter()
                    .map(|&p| hash_bytes(slice(arena, ends, p).as_bytes())),
            );
        });
        Ok(i)
    }

    /// The index of `name`, if known.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.find(hash_bytes(name.as_bytes()), name)
    }

    /// [`Names::get`] with the name's [`hash_bytes`] already computed.
    #[inline]
    pub fn get_hashed(&self, hash: u64, name: &str) -> Option<u32> {
        self.find(hash, name)
    }

    /// The name at `index` (empty if out of range).
    pub fn name(&self, index: u32) -> &str {
        if index as usize >= self.ends.len() {
            return "";
        }
        slice(&self.arena, &self.ends, index)
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Names from index `from` on, in index order.
    pub fn since(&self, from: usize) -> impl Iterator<Item = &str> {
        (from.min(self.len())..self.len()).map(move |i| slice(&self.arena, &self.ends, i as u32))
    }

    /// Bytes of names from index `from` on.
    pub fn bytes_since(&self, from: usize) -> usize {
        let start = match from {
            0 => 0,
            f if f <= self.ends.len() => self.ends[f - 1] as usize,
            _ => self.arena.len(),
        };
        self.arena.len() - start
    }

    /// Heap bytes held (arena, offsets, index), for capacity figures.
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity() + self.ends.capacity() * 4 + self.index.allocated_bytes()
    }

    /// A table from names already known to be in index order: the arena and the end of
    /// each name. The hash index is built by `threads` threads. Fails if the ends are
    /// not increasing, do not fall on character boundaries, or repeat a name.
    pub fn from_arena(arena: String, ends: Vec<u32>, threads: usize) -> Result<Self, String> {
        let mut start = 0usize;
        for &end in &ends {
            let end = end as usize;
            if end < start || end > arena.len() || !arena.is_char_boundary(end) {
                return Err(format!(
                    "name ends at {end}, out of order or inside a character"
                ));
            }
            start = end;
        }
        if start != arena.len() {
            return Err("name bytes past the last name".into());
        }
        if ends.len() >= NONE as usize {
            return Err("too many names".into());
        }
        let mut hashes = vec![0u64; ends.len()];
        let per = ends.len().div_ceil(threads.max(1)).max(1);
        std::thread::scope(|scope| {
            for (k, out) in hashes.chunks_mut(per).enumerate() {
                let (arena, ends) = (&arena, &ends);
                scope.spawn(move || {
                    for (j, h) in out.iter_mut().enumerate() {
                        *h = hash_bytes(slice(arena, ends, (k * per + j) as u32).as_bytes());
                    }
                });
            }
        });
        let index = ShardedIndex::build(
            hashes.len(),
            |i| hashes[i as usize],
            threads,
            |a, b| slice(&arena, &ends, a) == slice(&arena, &ends, b),
        )
        .map_err(|i| format!("name {i} repeats an earlier one"))?;
        Ok(Names { arena, ends, index })
    }

    /// The arena and end offsets (for the snapshot codec).
    pub fn raw(&self) -> (&str, &[u32]) {
        (&self.arena, &self.ends)
    }
}

/// Equality of two byte strings of the same length, without a `memcmp` call for the
/// short ids that are the common case (two overlapping 8-byte words).
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if !(8..=16).contains(&n) {
        return a == b;
    }
    let word = |s: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8)
}

#[inline]
fn slice<'a>(arena: &'a str, ends: &[u32], i: u32) -> &'a str {
    let i = i as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    arena.get(start..ends[i] as usize).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_dense_and_stable() {
        let mut n = Names::default();
        assert_eq!(n.intern("b"), Ok(0));
        assert_eq!(n.intern("ä"), Ok(1));
        assert_eq!(n.intern_new("b"), Ok((0, false)));
        assert_eq!(n.intern_new("c"), Ok((2, true)));
        assert_eq!((n.name(1), n.name(9)), ("ä", ""));
        assert_eq!(n.get("c"), Some(2));
        assert_eq!(n.get("d"), None);
        assert_eq!(n.since(1).collect::<Vec<_>>(), vec!["ä", "c"]);
        assert_eq!(n.bytes_since(1), 3);
        let (arena, ends) = n.raw();
        let back = Names::from_arena(arena.to_string(), ends.to_vec(), 2).unwrap();
        assert_eq!(back.get("ä"), Some(1));
        assert!(Names::from_arena("bb".into(), vec![1, 2], 1).is_err());
        assert!(Names::from_arena("ä".into(), vec![1, 2], 1).is_err());
    }

    #[test]
    fn short_equality_checks_every_byte() {
        for n in 0..20 {
            let a: Vec<u8> = (0..n as u8).collect();
            assert!(same(&a, &a.clone()));
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 1;
                assert!(!same(&a, &b), "{n} {i}");
            }
        }
        assert!(!same(b"abc", b"abcd"));
    }

    #[test]
    fn many_names_round_trip() {
        let mut n = Names::default();
        for i in 0..50_000 {
            assert_eq!(n.intern(&format!("C{i}")), Ok(i));
        }
        for i in (0..50_000).step_by(997) {
            assert_eq!(n.get(&format!("C{i}")), Some(i));
            assert_eq!(n.name(i), format!("C{i}"));
        }
    }
}
