//! Snapshots: the whole engine state, as one blob or as several parts of bounded size
//! that decode in parallel into one engine.
//!
//! A part is `TXS2` then an LZ4 body: its place (index, count), the snapshot's id (every
//! part of one snapshot carries the same), the head (part 0 only: chunk, totals,
//! merchants and their DEI flags, how many customers and pairs there are), then a range
//! of customer ids and a range of pairs. Pairs are stored by column (merchants,
//! customers as differences from the previous pair's, counts, sums, flags), which LZ4
//! compresses far better than rows. Weights are not stored: they are looked up again in
//! the importance table, which the stored fingerprint pins.
//!
//! Decoding checks that the parts are one complete snapshot (same id, every index once,
//! ranges that tile the totals) and never trusts a stored length for an allocation.
//! The older single-blob `TXS1` form is still read.

use super::codec::{CodecError, Reader, Writer};
use super::pairs::{DecodedPair, PairTable};
use super::{Engine, MerchantStats, Names, Totals};
use crate::config::PatternConfig;
use crate::index::hash_bytes;
use crate::names::NONE;
use crate::parse::{Gender, ImportanceTable};
use std::ops::Range;
use std::sync::Arc;

const SNAPSHOT_MAGIC: &[u8; 4] = b"TXS2";
const SNAPSHOT_MAGIC_V1: &[u8; 4] = b"TXS1";
const WHAT: &str = "snapshot";

/// What one part holds: a range of customers and a range of pairs.
type PartPlan = (Range<usize>, Range<usize>);

/// The state every part shares, stored in part 0.
#[derive(Debug, Default)]
struct Head {
    next_chunk: u64,
    totals: Totals,
    merchants: Vec<String>,
    dei_emitted: Vec<bool>,
    customers: u64,
    pairs: u64,
}

/// One decoded part, before the parts are joined.
#[derive(Debug, Default)]
struct Part {
    index: u64,
    count: u64,
    id: u64,
    head: Option<Head>,
    customers_first: u64,
    /// Customer ids of the part, concatenated; `ends` relative to this arena.
    arena: String,
    ends: Vec<u32>,
    pairs_first: u64,
    pairs: Vec<DecodedPair>,
}

fn corrupt(why: impl Into<String>) -> CodecError {
    CodecError::Corrupt {
        what: WHAT,
        why: why.into(),
    }
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

impl Engine {
    /// Encodes the whole state as one blob (one part with no size bound). Weights are
    /// not stored: they come from the importance table.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        self.encode_snapshot_parts(usize::MAX)
            .pop()
            .unwrap_or_default()
    }

    /// Encodes the whole state as parts of at most `max_part_bytes` bytes each (a part
    /// may exceed it only to hold the head or a single id), encoded on several threads.
    /// [`Engine::decode_snapshot_parts`] joins them.
    pub fn encode_snapshot_parts(&self, max_part_bytes: usize) -> Vec<Vec<u8>> {
        let head = self.encode_head();
        let id = hash_bytes(&head);
        // LZ4 can expand incompressible input by 1/255 plus a little: leave room.
        let budget = (max_part_bytes / 256 * 255).saturating_sub(128).max(1);
        let plan = self.plan_parts(head.len(), budget);
        let count = plan.len() as u64;
        let encode = |(i, (customers, pairs)): (usize, &PartPlan)| {
            let mut w = Writer::default();
            w.u64(i as u64);
            w.u64(count);
            w.u64(id);
            if i == 0 {
                w.u64(1);
                w.0.extend_from_slice(&head);
            } else {
                w.u64(0);
            }
            self.encode_customers(&mut w, customers.clone());
            self.encode_pairs(&mut w, pairs.clone());
            w.finish(SNAPSHOT_MAGIC)
        };
        let threads = threads_for(plan.len());
        if threads == 1 {
            return plan.iter().enumerate().map(encode).collect();
        }
        let jobs: Vec<(usize, &PartPlan)> = plan.iter().enumerate().collect();
        parallel_map(&jobs, threads, |&job| encode(job))
    }

    fn encode_head(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.next_chunk);
        w.u64(self.totals.rows);
        w.u64(self.totals.rejected);
        self.totals.detections.iter().for_each(|&d| w.u64(d));
        w.u64(self.merchants.len() as u64);
        self.merchants.since(0).for_each(|n| w.str(n));
        for s in &self.merchant_stats {
            w.u64(u64::from(s.dei_emitted));
        }
        w.u64(self.customers.len() as u64);
        w.u64(self.pairs.len() as u64);
        w.0
    }

    /// Splits customers, then pairs, into consecutive parts of at most `budget`
    /// uncompressed bytes each (part 0 also holds the head; a part always takes at
    /// least one item, so progress is certain).
    fn plan_parts(&self, head: usize, budget: usize) -> Vec<PartPlan> {
        let (customers, pairs) = (self.customers.len(), self.pairs.len());
        if budget == usize::MAX {
            return vec![(0..customers, 0..pairs)];
        }
        let mut plan = Vec::new();
        let (mut c0, mut p0) = (0, 0);
        // Part 0's head counts as its first item.
        let (mut size, mut items) = (64 + head, 1);
        for (c, name) in self.customers.since(0).enumerate() {
            let item = varint_len(name.len() as u64) + name.len();
            if size + item > budget && items > 0 {
                plan.push((c0..c, 0..0));
                (c0, size, items) = (c, 64, 0);
            }
            size += item;
            items += 1;
        }
        let mut prev_c = 0u32;
        for (p, r) in self.pairs.records().iter().enumerate() {
            let item = varint_len(u64::from(r.merchant))
                + varint_len(zigzag(i64::from(r.customer) - i64::from(prev_c)))
                + varint_len(self.pairs.txns(p as u32))
                + varint_len(u64::try_from(self.pairs.cents(p as u32)).unwrap_or(u64::MAX))
                + 3;
            prev_c = r.customer;
            if size + item > budget && items > 0 {
                plan.push((c0..customers, p0..p));
                (c0, p0, size, items) = (customers, p, 64, 0);
            }
            size += item;
            items += 1;
        }
        plan.push((c0..customers, p0..pairs));
        plan
    }

    fn encode_customers(&self, w: &mut Writer, range: Range<usize>) {
        w.u64(range.start as u64);
        w.u64(range.len() as u64);
        for name in self.customers.since(range.start).take(range.len()) {
            w.str(name);
        }
    }

    fn encode_pairs(&self, w: &mut Writer, range: Range<usize>) {
        w.u64(range.start as u64);
        w.u64(range.len() as u64);
        let records = &self.pairs.records()[range.clone()];
        for r in records {
            w.u64(u64::from(r.merchant));
        }
        let mut prev = 0i64;
        for r in records {
            w.u64(zigzag(i64::from(r.customer) - prev));
            prev = i64::from(r.customer);
        }
        for p in range.clone() {
            w.u64(self.pairs.txns(p as u32));
        }
        for p in range.clone() {
            w.uint(self.pairs.cents(p as u32));
        }
        for (p, r) in range.zip(records) {
            w.0.push(r.gender().code() | self.pairs.emitted_bits(p as u32) << 2);
        }
    }

    /// Rebuilds an engine from [`Engine::encode_snapshot`] bytes (or a one-part
    /// snapshot, or the older `TXS1` form).
    pub fn decode_snapshot(
        bytes: &[u8],
        config: PatternConfig,
        weights: Arc<ImportanceTable>,
    ) -> Result<Self, CodecError> {
        Self::decode_snapshot_parts(&[bytes], config, weights)
    }

    /// Rebuilds one engine from all the parts of a snapshot (any order), decoding and
    /// indexing them on as many threads as the machine offers.
    pub fn decode_snapshot_parts(
        parts: &[&[u8]],
        config: PatternConfig,
        weights: Arc<ImportanceTable>,
    ) -> Result<Self, CodecError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::decode_snapshot_parts_on(parts, config, weights, threads)
    }

    /// [`Engine::decode_snapshot_parts`] on at most `threads` threads (1 decodes on
    /// the caller's thread).
    pub fn decode_snapshot_parts_on(
        parts: &[&[u8]],
        config: PatternConfig,
        weights: Arc<ImportanceTable>,
        threads: usize,
    ) -> Result<Self, CodecError> {
        let threads = threads.max(1);
        if parts.is_empty() {
            return Err(corrupt("no parts"));
        }
        if parts.len() == 1 && parts[0].starts_with(SNAPSHOT_MAGIC_V1) {
            let part = decode_v1(parts[0])?;
            return assemble(vec![part], config, weights, threads);
        }
        let decoded = parallel_map(parts, threads.min(parts.len()), |bytes| decode_part(bytes));
        let decoded = decoded
            .into_iter()
            .collect::<Result<Vec<Part>, CodecError>>()?;
        assemble(decoded, config, weights, threads)
    }
}

fn threads_for(jobs: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs)
        .max(1)
}

/// Maps `items` on up to `threads` scoped threads (contiguous slices each), in order.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    if threads <= 1 || items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let per = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|chunk| {
                let f = &f;
                scope.spawn(move || chunk.iter().map(f).collect::<Vec<R>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

fn decode_head(r: &mut Reader<'_>) -> Result<Head, CodecError> {
    let next_chunk = r.u64()?;
    let totals = Totals {
        rows: r.u64()?,
        rejected: r.u64()?,
        detections: [r.u64()?, r.u64()?, r.u64()?],
    };
    let n = r.len()?;
    let merchants = (0..n).map(|_| r.str()).collect::<Result<Vec<_>, _>>()?;
    let dei_emitted = (0..n)
        .map(|_| r.u64().map(|v| v != 0))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Head {
        next_chunk,
        totals,
        merchants,
        dei_emitted,
        customers: r.u64()?,
        pairs: r.u64()?,
    })
}

fn decode_part(bytes: &[u8]) -> Result<Part, CodecError> {
    let buf = Reader::open(bytes, SNAPSHOT_MAGIC, WHAT)?;
    let mut r = Reader {
        buf: &buf,
        pos: 0,
        what: WHAT,
    };
    let mut part = Part {
        index: r.u64()?,
        count: r.u64()?,
        id: r.u64()?,
        ..Part::default()
    };
    if r.u64()? == 1 {
        part.head = Some(decode_head(&mut r)?);
    }
    part.customers_first = r.u64()?;
    let n = r.len()?;
    part.ends.reserve(n);
    for _ in 0..n {
        let len = r.len()?;
        let name = r
            .buf
            .get(r.pos..r.pos + len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| r.corrupt("customer id is not UTF-8"))?;
        r.pos += len;
        part.arena.push_str(name);
        part.ends
            .push(u32::try_from(part.arena.len()).map_err(|_| r.corrupt("customer ids too long"))?);
    }
    part.pairs_first = r.u64()?;
    let n = r.len()?;
    let mut pairs = vec![
        DecodedPair {
            merchant: 0,
            customer: 0,
            txns: 0,
            cents: 0,
            gender: Gender::Other,
            emitted: 0,
            weight_entry: NONE,
        };
        n
    ];
    for p in pairs.iter_mut() {
        p.merchant = r.u32()?;
    }
    let mut prev = 0i64;
    for p in pairs.iter_mut() {
        prev += unzigzag(r.u64()?);
        p.customer = u32::try_from(prev).map_err(|_| r.corrupt("customer index out of range"))?;
    }
    for p in pairs.iter_mut() {
        p.txns = r.u64()?;
    }
    for p in pairs.iter_mut() {
        p.cents = r.uint()?;
    }
    for p in pairs.iter_mut() {
        let flags = *r
            .buf
            .get(r.pos)
            .ok_or_else(|| r.corrupt("unexpected end"))?;
        r.pos += 1;
        p.gender = Gender::from_code(flags & 0b11);
        p.emitted = (flags >> 2) & 0b11;
    }
    r.done()?;
    part.pairs = pairs;
    Ok(part)
}

/// The `TXS1` single-blob form, as one part.
fn decode_v1(bytes: &[u8]) -> Result<Part, CodecError> {
    let buf = Reader::open(bytes, SNAPSHOT_MAGIC_V1, WHAT)?;
    let mut r = Reader {
        buf: &buf,
        pos: 0,
        what: WHAT,
    };
    let next_chunk = r.u64()?;
    let totals = Totals {
        rows: r.u64()?,
        rejected: r.u64()?,
        detections: [r.u64()?, r.u64()?, r.u64()?],
    };
    let n = r.len()?;
    let merchants = (0..n).map(|_| r.str()).collect::<Result<Vec<_>, _>>()?;
    let mut part = Part {
        count: 1,
        ..Part::default()
    };
    let n = r.len()?;
    for _ in 0..n {
        part.arena.push_str(&r.str()?);
        part.ends
            .push(u32::try_from(part.arena.len()).map_err(|_| r.corrupt("customer ids too long"))?);
    }
    let dei_emitted = (0..merchants.len())
        .map(|_| r.u64().map(|v| v != 0))
        .collect::<Result<Vec<_>, _>>()?;
    let n = r.len()?;
    part.pairs.reserve(n);
    for _ in 0..n {
        part.pairs.push(DecodedPair {
            merchant: r.u32()?,
            customer: r.u32()?,
            txns: r.u64()?,
            cents: r.uint()?,
            gender: Gender::from_code(r.u64()? as u8),
            emitted: (r.u64()? as u8) & 0b11,
            weight_entry: NONE,
        });
    }
    r.done()?;
    part.head = Some(Head {
        next_chunk,
        totals,
        merchants,
        dei_emitted,
        customers: part.ends.len() as u64,
        pairs: part.pairs.len() as u64,
    });
    Ok(part)
}

/// Joins decoded parts into one engine.
fn assemble(
    mut parts: Vec<Part>,
    config: PatternConfig,
    weights: Arc<ImportanceTable>,
    threads: usize,
) -> Result<Engine, CodecError> {
    parts.sort_by_key(|p| p.index);
    let count = parts.len() as u64;
    for (i, p) in parts.iter().enumerate() {
        if p.index != i as u64 || p.count != count || p.id != parts[0].id {
            return Err(corrupt(format!(
                "part {} of {} (snapshot {:x}) does not belong with {count} parts of snapshot {:x}",
                p.index, p.count, p.id, parts[0].id
            )));
        }
        if (i == 0) != p.head.is_some() {
            return Err(corrupt("the head must be in part 0 only"));
        }
    }
    let head = parts[0].head.take().ok_or_else(|| corrupt("no head"))?;
    let (mut next_customer, mut next_pair) = (0u64, 0u64);
    for p in &parts {
        if p.customers_first != next_customer || p.pairs_first != next_pair {
            return Err(corrupt("parts leave a gap or overlap"));
        }
        next_customer += p.ends.len() as u64;
        next_pair += p.pairs.len() as u64;
    }
    if next_customer != head.customers || next_pair != head.pairs {
        return Err(corrupt(format!(
            "parts hold {next_customer} customers and {next_pair} pairs; the head says {} and {}",
            head.customers, head.pairs
        )));
    }

    let mut engine = Engine::new(config, weights);
    engine.next_chunk = head.next_chunk;
    engine.totals = head.totals;
    for (name, &dei) in head.merchants.iter().zip(&head.dei_emitted) {
        let (m, new) = engine
            .merchants
            .intern_new(name)
            .map_err(|e| corrupt(e.to_string()))?;
        if !new || m as usize != engine.merchant_stats.len() {
            return Err(corrupt("duplicate merchant"));
        }
        let mut stats = MerchantStats::new(engine.weights.merchant_index(name), &engine.weights);
        stats.dei_emitted = dei;
        engine.merchant_stats.push(stats);
    }

    // Customers: one arena, indexed on all threads.
    let total_bytes: usize = parts.iter().map(|p| p.arena.len()).sum();
    if total_bytes > u32::MAX as usize {
        return Err(corrupt("customer ids too long"));
    }
    let mut arena = String::with_capacity(total_bytes);
    let mut ends = Vec::with_capacity(next_customer as usize);
    let mut pairs: Vec<DecodedPair> = Vec::with_capacity(next_pair as usize);
    for p in &mut parts {
        let base = arena.len() as u32;
        arena.push_str(&p.arena);
        ends.extend(p.ends.iter().map(|e| e + base));
        p.arena = String::new();
        p.ends = Vec::new();
        pairs.append(&mut p.pairs);
    }
    drop(parts);
    engine.customers = Names::from_arena(arena, ends, threads).map_err(corrupt)?;
    // Each customer's index in the importance table, while the pairs need it.
    let customer_names: Vec<u32> = (0..engine.customers.len() as u32).collect();
    let weights = &engine.weights;
    let customers = &engine.customers;
    let customer_importance = parallel_chunks(&customer_names, threads, |c| {
        weights.customer_index(customers.name(c))
    });
    drop(customer_names);

    // Pairs: checked, their weights found, then indexed on all threads.
    let (merchants, customers) = (engine.merchants.len(), engine.customers.len());
    let stats = &engine.merchant_stats;
    let customer_importance = &customer_importance;
    let checked = parallel_chunks(&pairs, threads, |mut d| {
        if d.merchant as usize >= merchants || d.customer as usize >= customers || d.txns == 0 {
            return None;
        }
        d.weight_entry = weights
            .entry(
                stats[d.merchant as usize].importance,
                customer_importance[d.customer as usize],
            )
            .unwrap_or(NONE);
        Some(d)
    });
    drop(pairs);
    let pairs: Vec<DecodedPair> = checked
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| corrupt("a pair names an unknown index or has no transactions"))?;
    let mut table = PairTable::default();
    table
        .extend_decoded(pairs.iter().copied(), threads)
        .map_err(|p| corrupt(format!("pair {p} is a duplicate")))?;
    engine.pairs = table;

    // Merchant stats follow from the pairs.
    for (p, d) in pairs.iter().enumerate() {
        let stats = &mut engine.merchant_stats[d.merchant as usize];
        stats.txns = stats.txns.saturating_add(d.txns);
        match d.gender {
            Gender::Female => stats.female += 1,
            Gender::Male => stats.male += 1,
            Gender::Other => {}
        }
        stats.by_count.move_customer(0, d.txns);
        if let (Some(order), entry) = (&mut stats.by_weight, d.weight_entry) {
            if entry != NONE {
                order.insert(entry, p as u32);
            }
        }
    }
    Ok(engine)
}

/// Maps `items` in order on up to `threads` threads.
fn parallel_chunks<T: Copy + Sync, R: Send + Default + Clone>(
    items: &[T],
    threads: usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    if threads <= 1 || items.len() < 4096 {
        return items.iter().map(|&x| f(x)).collect();
    }
    let per = items.len().div_ceil(threads);
    let mut out = vec![R::default(); items.len()];
    std::thread::scope(|scope| {
        for (src, dst) in items.chunks(per).zip(out.chunks_mut(per)) {
            let f = &f;
            scope.spawn(move || {
                for (s, d) in src.iter().zip(dst.iter_mut()) {
                    *d = f(*s);
                }
            });
        }
    });
    out
}
