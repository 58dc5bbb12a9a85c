//! The (merchant, customer) pairs: one 16-byte record each in a flat array, found
//! through a sharded hash index of `u32` positions keyed by the packed pair (the key
//! lives in the record only).
//!
//! A record holds n(m,c) in 25 bits with the pair's flags in the other 7, and s(m,c) in
//! a `u32` of cents (Rs 42.9 million). A pair that outgrows either moves its counters to
//! a side table of exact `u64`/`u128` values, so sums never wrap and never lose
//! precision; ordinary pairs never get there, and a `u128` holds any sum of 2^64 amounts
//! of at most 12 integer digits. The pair's weight is not stored (weights never change
//! during a stream): a flag says whether it has one, and the importance table gives it
//! when a report asks.

use crate::index::{hash_pair, ShardedIndex};
use crate::names::NONE;
use crate::parse::Gender;
use rustc_hash::FxHashMap;

const TXNS_BITS: u32 = 25;
const TXNS_MAX: u32 = (1 << TXNS_BITS) - 1;
const GENDER_SHIFT: u32 = 25;
const GENDER_MASK: u32 = 0b11 << GENDER_SHIFT;
/// The pair has a weight (an importance entry).
const WEIGHTED: u32 = 1 << 27;
// Bits 28 and 29 are free (which detections were emitted lives in the engine's
// per-pattern sets).
const TOUCHED: u32 = 1 << 30;
const WIDE: u32 = 1 << 31;

/// One pair's record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairRecord {
    /// Merchant index.
    pub merchant: u32,
    /// Customer index.
    pub customer: u32,
    /// n(m,c) in the low 25 bits, then gender (2 bits), weighted, two free bits,
    /// touched, wide.
    meta: u32,
    /// s(m,c) in cents unless the pair is wide.
    cents: u32,
}

impl PairRecord {
    /// Gender of the pair's first valid transaction.
    pub fn gender(&self) -> Gender {
        Gender::from_code(((self.meta & GENDER_MASK) >> GENDER_SHIFT) as u8)
    }

    /// Whether the pair has a weight.
    pub fn weighted(&self) -> bool {
        self.meta & WEIGHTED != 0
    }

    /// Marks the pair as having a weight.
    pub fn set_weighted(&mut self) {
        self.meta |= WEIGHTED;
    }

    /// A record as a snapshot stores it, and its counters when they do not fit the
    /// record (they go to the wide table).
    pub fn decoded(
        merchant: u32,
        customer: u32,
        txns: u64,
        cents: u128,
        gender: Gender,
    ) -> (PairRecord, Option<(u64, u128)>) {
        let mut r = PairRecord {
            merchant,
            customer,
            meta: u32::from(gender.code()) << GENDER_SHIFT,
            cents: 0,
        };
        match (u32::try_from(txns), u32::try_from(cents)) {
            (Ok(n), Ok(c)) if n <= TXNS_MAX => {
                r.meta |= n;
                r.cents = c;
                (r, None)
            }
            _ => {
                r.meta |= WIDE;
                (r, Some((txns, cents)))
            }
        }
    }

    /// n(m,c) if the record holds it (it is not wide).
    pub fn narrow_txns(&self) -> Option<u64> {
        (self.meta & WIDE == 0).then_some(u64::from(self.meta & TXNS_MAX))
    }
}

/// The pair table.
#[derive(Debug, Default, Clone)]
pub struct PairTable {
    records: Vec<PairRecord>,
    index: ShardedIndex,
    /// Exact counters of pairs that outgrew their record: (n, s).
    wide: FxHashMap<u32, (u64, u128)>,
}

impl PairTable {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Whether `extra` more pairs fit.
    pub fn has_room(&self, extra: usize) -> bool {
        self.records.len().saturating_add(extra) < NONE as usize
    }

    /// The pair (m, c), if present.
    #[inline]
    pub fn find(&self, merchant: u32, customer: u32) -> Option<u32> {
        let records = &self.records;
        self.index.find(hash_pair(merchant, customer), |i| {
            let r = &records[i as usize];
            r.merchant == merchant && r.customer == customer
        })
    }

    /// Cache warming for a batch of lookups (see the `index` module): reads the home
    /// bucket of the pair's hash ([`hash_pair`]).
    #[inline]
    pub fn touch_bucket(&self, hash: u64) -> u32 {
        self.index.touch(hash)
    }

    /// Second step: reads the record of the likely match.
    #[inline]
    pub fn touch_record(&self, hash: u64) -> u32 {
        self.index
            .candidate(hash)
            .and_then(|p| self.records.get(p as usize))
            .map_or(0, |r| r.customer)
    }

    /// The pair (m, c) and whether it is new; a new pair gets `gender`, and is marked
    /// weighted if `weighted()` (asked only for new pairs) says so. The caller checks
    /// room first.
    #[inline]
    pub fn find_or_insert(
        &mut self,
        merchant: u32,
        customer: u32,
        gender: Gender,
        weighted: impl FnOnce() -> bool,
    ) -> (u32, bool) {
        self.find_or_insert_hashed(
            hash_pair(merchant, customer),
            merchant,
            customer,
            gender,
            weighted,
        )
    }

    /// [`PairTable::find_or_insert`] with [`hash_pair`] already computed.
    #[inline]
    pub fn find_or_insert_hashed(
        &mut self,
        hash: u64,
        merchant: u32,
        customer: u32,
        gender: Gender,
        weighted: impl FnOnce() -> bool,
    ) -> (u32, bool) {
        let records = &self.records;
        if let Some(p) = self.index.find(hash, |i| {
            let r = &records[i as usize];
            r.merchant == merchant && r.customer == customer
        }) {
            return (p, false);
        }
        let p = self.records.len() as u32;
        let weighted = if weighted() { WEIGHTED } else { 0 };
        self.records.push(PairRecord {
            merchant,
            customer,
            meta: u32::from(gender.code()) << GENDER_SHIFT | weighted,
            cents: 0,
        });
        let records = &self.records;
        self.index.insert(hash, p, |positions, hashes| {
            hashes.extend(positions.iter().map(|&i| {
                let r = &records[i as usize];
                hash_pair(r.merchant, r.customer)
            }))
        });
        (p, true)
    }

    /// The record of pair `p`.
    #[inline]
    pub fn record(&self, p: u32) -> &PairRecord {
        &self.records[p as usize]
    }

    /// All records, in creation order.
    pub fn records(&self) -> &[PairRecord] {
        &self.records
    }

    /// n(m,c).
    #[inline]
    pub fn txns(&self, p: u32) -> u64 {
        let r = &self.records[p as usize];
        if r.meta & WIDE != 0 {
            return self.wide.get(&p).map_or(0, |w| w.0);
        }
        u64::from(r.meta & TXNS_MAX)
    }

    /// s(m,c) in cents.
    #[inline]
    pub fn cents(&self, p: u32) -> u128 {
        let r = &self.records[p as usize];
        if r.meta & WIDE != 0 {
            return self.wide.get(&p).map_or(0, |w| w.1);
        }
        u128::from(r.cents)
    }

    /// Adds `txns` transactions worth `cents` to pair `p`, exactly.
    #[inline]
    pub fn add(&mut self, p: u32, txns: u64, cents: u128) {
        let r = &mut self.records[p as usize];
        if r.meta & WIDE == 0 {
            let n = u64::from(r.meta & TXNS_MAX).saturating_add(txns);
            if let (true, Some(sum)) = (
                n <= u64::from(TXNS_MAX),
                u32::try_from(cents)
                    .ok()
                    .and_then(|c| r.cents.checked_add(c)),
            ) {
                r.meta = (r.meta & !TXNS_MAX) | n as u32;
                r.cents = sum;
                return;
            }
            // Outgrown: the counters move to the side table, exactly.
            let before = (u64::from(r.meta & TXNS_MAX), u128::from(r.cents));
            r.meta = (r.meta & !TXNS_MAX) | WIDE;
            r.cents = 0;
            self.wide.insert(p, before);
        }
        // Real streams cannot reach these bounds (2^64 rows); saturating only keeps a
        // forged delta from panicking.
        let w = self.wide.entry(p).or_default();
        w.0 = w.0.saturating_add(txns);
        w.1 = w.1.saturating_add(cents);
    }

    /// Sets a flag; returns whether it was already set.
    #[inline]
    fn set_flag(&mut self, p: u32, flag: u32) -> bool {
        let r = &mut self.records[p as usize];
        let was = r.meta & flag != 0;
        r.meta |= flag;
        was
    }

    /// Marks pair `p` as having a weight.
    pub fn set_weighted(&mut self, p: u32) {
        self.set_flag(p, WEIGHTED);
    }

    /// Marks `p` touched by the current chunk; returns whether it already was.
    #[inline]
    pub fn touch(&mut self, p: u32) -> bool {
        self.set_flag(p, TOUCHED)
    }

    /// Clears the touched mark of `p`.
    #[inline]
    pub fn untouch(&mut self, p: u32) {
        self.records[p as usize].meta &= !TOUCHED;
    }

    /// A table from decoded records (in pair order) and the exact counters of the wide
    /// ones (position, n, s); the index is built by `threads` threads. Fails on a
    /// repeated pair, naming its position.
    pub fn from_records(
        records: Vec<PairRecord>,
        wide: Vec<(u32, u64, u128)>,
        threads: usize,
    ) -> Result<Self, u32> {
        let index = ShardedIndex::build(
            records.len(),
            |i| {
                let r = &records[i as usize];
                hash_pair(r.merchant, r.customer)
            },
            threads,
            |a, b| {
                let (a, b) = (&records[a as usize], &records[b as usize]);
                a.merchant == b.merchant && a.customer == b.customer
            },
        )?;
        Ok(PairTable {
            records,
            index,
            wide: wide.into_iter().map(|(p, n, s)| (p, (n, s))).collect(),
        })
    }

    /// Heap bytes held, for capacity figures.
    pub fn heap_bytes(&self) -> usize {
        self.records.capacity() * std::mem::size_of::<PairRecord>()
            + self.index.allocated_bytes()
            + self.wide.capacity() * 40
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_is_16_bytes() {
        assert_eq!(std::mem::size_of::<PairRecord>(), 16);
    }

    #[test]
    fn counters_move_to_the_wide_table_exactly() {
        let mut t = PairTable::default();
        let (p, new) = t.find_or_insert(1, 2, Gender::Female, || true);
        assert!(new);
        assert_eq!(t.find_or_insert(1, 2, Gender::Male, || false), (p, false));
        assert!(t.record(p).weighted());
        let max_row = 99_999_999_999_999u128; // 999999999999.99
        let rows = 200_000u64; // > u64::MAX / max_row
        for _ in 0..rows {
            t.add(p, 1, max_row);
        }
        assert_eq!(t.txns(p), rows);
        assert_eq!(t.cents(p), max_row * u128::from(rows));
        assert!(t.cents(p) > u128::from(u64::MAX));
        assert_eq!(t.record(p).gender(), Gender::Female);
        // Transaction counts past 26 bits.
        let (q, _) = t.find_or_insert(3, 4, Gender::Male, || false);
        t.add(q, u64::from(TXNS_MAX), 1);
        assert_eq!(t.txns(q), u64::from(TXNS_MAX));
        t.add(q, 2, 1);
        assert_eq!((t.txns(q), t.cents(q)), (u64::from(TXNS_MAX) + 2, 2));
        assert!(!t.touch(q));
        assert!(t.touch(q), "touched now");
        t.set_weighted(q);
        assert!(t.record(q).weighted());
        assert_eq!(
            t.txns(q),
            u64::from(TXNS_MAX) + 2,
            "flags do not disturb counts"
        );
        assert_eq!(t.record(q).gender(), Gender::Male);
    }
}
