//! The hash index behind every interned table (names, pairs, importance entries): a
//! hash table of `u32` positions, the keys themselves living once in their owner's
//! arrays (no second copy of a key).
//!
//! Why not a library map: the engine is bound by memory latency, not by instructions
//! (on the machine measured, a dependent random read costs ~250 ns while independent
//! ones overlap to ~20 ns each). It looks up a chunk's rows in passes that only *touch*
//! memory — the home bucket of every row's key, then every candidate key — so the
//! cache misses of thousands of rows overlap, and the final, in-order pass finds
//! everything in cache. That needs the address of a key's bucket from its hash, which
//! this table gives: a bucket is one 64-byte cache line holding 12 one-byte tags and 12
//! positions, probed linearly bucket by bucket (a flag says a bucket overflowed), so a
//! lookup touches one line and then one key.
//!
//! The index is split into [`SHARDS`] independent tables chosen by hash bits that the
//! tables do not use themselves. A table grows by doubling, and while it rehashes the
//! old and the new table are both alive; one big table would briefly need 1.5 times its
//! size at the worst moment, whereas a shard only needs 1.5 times 1/256 of it. Shards
//! also let a snapshot's index be built by several threads at once.

use std::hash::BuildHasher;

/// Number of shards (a power of two).
pub const SHARDS: usize = 256;

const SEED: u64 = 0x5eed_7a1b_0fc0_de42;
const SLOTS: usize = 12;
/// Grow past this many entries per 100 slots.
const MAX_LOAD_PERCENT: usize = 85;

/// Hash of an id's bytes.
#[inline]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    foldhash::fast::FixedState::with_seed(SEED).hash_one(bytes)
}

/// Hash of a pair of indices: a folded 128-bit multiply, so every output bit depends on
/// every input bit (buckets use the low bits, shards bits 48..56, tags the top byte).
#[inline]
pub fn hash_pair(a: u32, b: u32) -> u64 {
    let key = (u64::from(a) << 32 | u64::from(b)) ^ SEED;
    let product = u128::from(key) * 0x9e37_79b9_7f4a_7c15_u128;
    (product as u64) ^ ((product >> 64) as u64)
}

/// The shard a hash goes to.
#[inline]
pub fn shard_of(hash: u64) -> usize {
    (hash >> 48) as usize & (SHARDS - 1)
}

/// A table with at most this many buckets only reads the hash bits [`pack`] keeps.
const PACKED_BUCKETS: usize = 1 << 24;

/// A position with the parts of its hash a table of up to [`PACKED_BUCKETS`] buckets
/// reads: the tag byte and the low 24 bits.
#[inline]
fn pack(hash: u64, position: u32) -> u64 {
    (hash & 0xff00_0000_0000_0000) | (hash & 0x00ff_ffff) << 32 | u64::from(position)
}

/// A hash that such a table treats exactly as the original, and the position.
#[inline]
fn unpack(packed: u64) -> (u64, u32) {
    (
        (packed & 0xff00_0000_0000_0000) | (packed >> 32) & 0x00ff_ffff,
        packed as u32,
    )
}

#[inline]
fn tag_of(hash: u64) -> u8 {
    ((hash >> 56) as u8).max(1)
}

/// One cache line: 12 tags (0 = empty), an overflow flag, 12 positions.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Bucket {
    tags: [u8; SLOTS],
    /// Non-zero when a key whose probe passed this bucket lives further on.
    overflow: u32,
    slots: [u32; SLOTS],
}

/// One shard: buckets (a power of two of them, or none) and the entry count.
#[derive(Clone, Default)]
struct Table {
    buckets: Vec<Bucket>,
    len: usize,
}

impl Table {
    fn with_entries(entries: usize) -> Self {
        if entries == 0 {
            return Table::default();
        }
        let needed = (entries * 100).div_ceil(MAX_LOAD_PERCENT * SLOTS).max(1);
        Table {
            buckets: vec![Bucket::default(); needed.next_power_of_two()],
            len: 0,
        }
    }

    #[inline]
    fn mask(&self) -> usize {
        self.buckets.len().wrapping_sub(1)
    }

    #[inline]
    fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.buckets.is_empty() {
            return None;
        }
        let tag = tag_of(hash);
        let mut b = hash as usize & self.mask();
        loop {
            let bucket = &self.buckets[b];
            for i in 0..SLOTS {
                if bucket.tags[i] == tag && eq(bucket.slots[i]) {
                    return Some(bucket.slots[i]);
                }
            }
            if bucket.overflow == 0 {
                return None;
            }
            b = (b + 1) & self.mask();
        }
    }

    /// Adds without growing (the caller made room).
    #[inline]
    fn put(&mut self, hash: u64, position: u32) {
        let tag = tag_of(hash);
        let mask = self.mask();
        let mut b = hash as usize & mask;
        loop {
            let bucket = &mut self.buckets[b];
            if let Some(i) = bucket.tags.iter().position(|&t| t == 0) {
                bucket.tags[i] = tag;
                bucket.slots[i] = position;
                self.len += 1;
                return;
            }
            bucket.overflow = 1;
            b = (b + 1) & mask;
        }
    }

    fn insert(&mut self, hash: u64, position: u32, rehash: impl FnOnce(&[u32], &mut Vec<u64>)) {
        if (self.len + 1) * 100 > self.buckets.len() * SLOTS * MAX_LOAD_PERCENT {
            let positions: Vec<u32> = self
                .buckets
                .iter()
                .flat_map(|b| (0..SLOTS).filter(|&i| b.tags[i] != 0).map(|i| b.slots[i]))
                .collect();
            let mut hashes = Vec::with_capacity(positions.len());
            rehash(&positions, &mut hashes);
            let mut grown = Table {
                buckets: vec![Bucket::default(); (self.buckets.len() * 2).max(1)],
                len: 0,
            };
            for (&p, &h) in positions.iter().zip(&hashes) {
                grown.put(h, p);
            }
            *self = grown;
        }
        self.put(hash, position);
    }

    #[inline]
    fn home(&self, hash: u64) -> Option<&Bucket> {
        self.buckets.get(hash as usize & self.mask())
    }
}

/// A sharded hash index of `u32` positions.
#[derive(Clone)]
pub struct ShardedIndex {
    shards: Box<[Table]>,
}

impl Default for ShardedIndex {
    fn default() -> Self {
        ShardedIndex {
            shards: (0..SHARDS).map(|_| Table::default()).collect(),
        }
    }
}

impl std::fmt::Debug for ShardedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardedIndex({} entries)", self.len())
    }
}

impl ShardedIndex {
    /// The position whose key has `hash` and satisfies `eq`.
    #[inline]
    pub fn find(&self, hash: u64, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        self.shards[shard_of(hash)].find(hash, eq)
    }

    /// Adds `position` (whose key must not be present yet) under `hash`. When its shard
    /// grows, `rehash(positions, hashes)` must push the hash of each stored position, in
    /// order: given all of them at once, the owner can read their keys in passes that
    /// overlap the cache misses (keys are scattered in memory).
    #[inline]
    pub fn insert(&mut self, hash: u64, position: u32, rehash: impl FnOnce(&[u32], &mut Vec<u64>)) {
        self.shards[shard_of(hash)].insert(hash, position, rehash);
    }

    /// Reads the home bucket of `hash`, so that a later lookup finds it in cache.
    /// Returns a value only to keep the read from being optimised away.
    #[inline]
    pub fn touch(&self, hash: u64) -> u32 {
        self.shards[shard_of(hash)]
            .home(hash)
            .map_or(0, |b| u32::from(b.tags[0]))
    }

    /// The first position in the home bucket of `hash` whose tag matches: most likely
    /// the key's, so touching its key warms the cache for the real lookup. Not a lookup:
    /// the key is not compared.
    #[inline]
    pub fn candidate(&self, hash: u64) -> Option<u32> {
        let bucket = self.shards[shard_of(hash)].home(hash)?;
        let tag = tag_of(hash);
        (0..SLOTS)
            .find(|&i| bucket.tags[i] == tag)
            .map(|i| bucket.slots[i])
    }

    /// Number of positions.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|t| t.len).sum()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes allocated by the tables.
    pub fn allocated_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|t| t.buckets.capacity() * std::mem::size_of::<Bucket>())
            .sum()
    }

    /// Builds the index of positions `0..n` (`hash(i)` is position `i`'s hash; called
    /// twice per position, so it should be cheap), shards split over `threads`
    /// threads. `eq(a, b)` says whether positions `a` and `b` have the same key; a
    /// repeated key is an error naming the later position.
    pub fn build(
        n: usize,
        hash: impl Fn(u32) -> u64 + Sync,
        threads: usize,
        eq: impl Fn(u32, u32) -> bool + Sync,
    ) -> Result<Self, u32> {
        let threads = threads.clamp(1, SHARDS);
        let n = n.min(u32::MAX as usize) as u32;
        let build_range = |shards: std::ops::Range<usize>| -> Result<Vec<Table>, u32> {
            // Entries are first sorted out by shard (sequential appends of the position
            // with the hash bits a table uses), then each shard's table is sized once
            // and filled while it is small enough to stay in cache; inserting straight
            // into the whole index, or reading keys again, would miss the cache on
            // every entry.
            let mut by_shard: Vec<Vec<u64>> = vec![Vec::new(); shards.len()];
            for i in 0..n {
                let h = hash(i);
                let s = shard_of(h);
                if shards.contains(&s) {
                    by_shard[s - shards.start].push(pack(h, i));
                }
            }
            by_shard
                .into_iter()
                .map(|entries| {
                    let mut table = Table::with_entries(entries.len());
                    if table.buckets.len() > PACKED_BUCKETS {
                        // Beyond what the packed bits address: use the keys' hashes.
                        for &e in &entries {
                            let i = e as u32;
                            let h = hash(i);
                            if table.find(h, |j| eq(i, j)).is_some() {
                                return Err(i);
                            }
                            table.put(h, i);
                        }
                        return Ok(table);
                    }
                    for e in entries {
                        let (h, i) = unpack(e);
                        if table.find(h, |j| eq(i, j)).is_some() {
                            return Err(i);
                        }
                        table.put(h, i);
                    }
                    Ok(table)
                })
                .collect()
        };
        let per_thread = SHARDS.div_ceil(threads);
        let ranges: Vec<std::ops::Range<usize>> = (0..threads)
            .map(|t| t * per_thread..((t + 1) * per_thread).min(SHARDS))
            .filter(|r| !r.is_empty())
            .collect();
        let built: Vec<Result<Vec<Table>, u32>> = if ranges.len() == 1 {
            vec![build_range(0..SHARDS)]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = ranges
                    .iter()
                    .map(|r| {
                        let r = r.clone();
                        let build_range = &build_range;
                        scope.spawn(move || build_range(r))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or(Err(u32::MAX)))
                    .collect()
            })
        };
        let mut shards = Vec::with_capacity(SHARDS);
        for part in built {
            shards.extend(part?);
        }
        Ok(ShardedIndex {
            shards: shards.into_boxed_slice(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
    }

    #[test]
    fn pair_hash_spreads_over_shards_and_tags() {
        let mut shards = vec![0u32; SHARDS];
        let mut tags = [0u32; 256];
        for m in 0..16u32 {
            for c in 0..4096u32 {
                let h = hash_pair(m, c);
                shards[shard_of(h)] += 1;
                tags[(h >> 56) as usize] += 1;
            }
        }
        // 65,536 keys: every shard and tag gets a fair share.
        assert!(
            shards.iter().all(|&n| (128..=384).contains(&n)),
            "{shards:?}"
        );
        assert!(tags.iter().all(|&n| (128..=384).contains(&n)), "{tags:?}");
    }

    #[test]
    fn inserts_grow_and_find_everything_even_with_clashing_hashes() {
        // Keys 0..n; hashes deliberately poor (many equal low bits) to force overflow.
        let n = 20_000u32;
        let hash =
            |k: u32| (u64::from(k % 97) << 56) | u64::from(k % 13) | (u64::from(k % 5) << 48);
        let mut index = ShardedIndex::default();
        for k in 0..n {
            assert_eq!(index.find(hash(k), |j| j == k), None);
            index.insert(hash(k), k, |ps, out| {
                out.extend(ps.iter().map(|&p| hash(p)))
            });
        }
        assert_eq!(index.len(), n as usize);
        for k in 0..n {
            assert_eq!(index.find(hash(k), |j| j == k), Some(k));
        }
        assert_eq!(index.find(hash(n), |j| j == n), None);
    }

    #[test]
    fn build_matches_inserts_and_finds_duplicates() {
        let keys: Vec<u32> = (0..10_000).map(|i| i * 7).collect();
        let hashes: Vec<u64> = keys.iter().map(|&k| hash_pair(k, 0)).collect();
        for threads in [1, 2, 3] {
            let index = ShardedIndex::build(
                hashes.len(),
                |i| hashes[i as usize],
                threads,
                |a, b| keys[a as usize] == keys[b as usize],
            )
            .unwrap();
            assert_eq!(index.len(), keys.len());
            let mut exact = 0;
            for (i, &k) in keys.iter().enumerate() {
                let h = hash_pair(k, 0);
                assert_eq!(index.find(h, |j| keys[j as usize] == k), Some(i as u32));
                exact += usize::from(index.candidate(h) == Some(i as u32));
            }
            // The candidate is a hint: almost always the key itself.
            assert!(exact * 10 > keys.len() * 9, "{exact}");
        }
        let mut dup = keys.clone();
        dup.push(70);
        let hashes: Vec<u64> = dup.iter().map(|&k| hash_pair(k, 0)).collect();
        assert_eq!(
            ShardedIndex::build(
                hashes.len(),
                |i| hashes[i as usize],
                2,
                |a, b| { dup[a as usize] == dup[b as usize] }
            )
            .err(),
            Some(10_000)
        );
    }
}
