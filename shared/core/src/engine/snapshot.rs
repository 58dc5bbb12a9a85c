//! Snapshots: the whole engine state, as one blob or as several parts of bounded size
//! that decode in parallel into one engine.
//!
//! A part is `TXS3`, a small uncompressed header of varints (its place: index, count,
//! the snapshot's id that every part of one snapshot shares, whether it holds the head,
//! its range of customers and their id bytes, its range of pairs), then an LZ4 body: the
//! head (part 0 only: chunk, totals by pattern number, merchants, and each pattern's
//! emitted set as increasing pair or merchant indices), the customer ids, and the pairs
//! stored by column (merchants, customers as differences from the previous pair's,
//! counts, sums, genders), which LZ4 compresses far better than rows. Patterns are named
//! by number. The emitted sets are in part 0 (a varint per emitted detection), so part 0
//! may exceed the part size by about one byte per detection the stream has emitted. Weights are
//! not stored: they are looked up again in the importance table, which the stored
//! fingerprint pins.
//!
//! Because every header says where its part's data goes, decoding allocates the whole
//! state once and each thread decodes its parts straight into their own slices: no
//! intermediate copies, and peak memory is the state plus the parts' bytes. The indexes
//! and per-merchant statistics are then built on all threads. Decoding checks that the
//! parts are one complete snapshot (same id, every index once, ranges that tile the
//! totals) and never trusts a stored length for an allocation before checking it
//! against the bytes at hand. The older forms are still read: `TXS2` (three pattern
//! totals, DEI flags per merchant, and the two per-pair emitted flags in the gender
//! byte) and the single-blob `TXS1`.

use super::codec::{CodecError, Reader, Writer};
use super::pairs::{PairRecord, PairTable};
use super::{Engine, MerchantStats, Names};
use crate::index::hash_bytes;
use crate::names::NONE;
use crate::parse::{Gender, ImportanceTable};
use crate::patterns::Patterns;
use crate::varint;
use std::ops::Range;
use std::sync::Arc;

const SNAPSHOT_MAGIC: &[u8; 4] = b"TXS3";
const SNAPSHOT_MAGIC_V2: &[u8; 4] = b"TXS2";
const SNAPSHOT_MAGIC_V1: &[u8; 4] = b"TXS1";
/// The patterns `TXS1` and `TXS2` knew, by number: their totals in this order; the
/// per-pair emitted bits 1 and 2 are the first two, the merchant flag the third.
const LEGACY_PATTERNS: [u8; 3] = [1, 2, 3];
const WHAT: &str = "snapshot";

/// What one part holds: a range of customers and a range of pairs.
type PartPlan = (Range<usize>, Range<usize>);

/// The state every part shares, stored in part 0.
#[derive(Debug, Default)]
struct Head {
    next_chunk: u64,
    rows: u64,
    rejected: u64,
    /// Detections by pattern number.
    detections: Vec<(u8, u64)>,
    merchants: Vec<String>,
    /// Each pattern's emitted pair or merchant indices, by pattern number.
    emitted: Vec<(u8, Vec<u32>)>,
}

/// A part's uncompressed header, and its compressed body.
struct PartHeader<'a> {
    /// 2 for `TXS2`, 3 for `TXS3`.
    version: u8,
    index: u64,
    count: u64,
    id: u64,
    has_head: bool,
    customers: Range<usize>,
    name_bytes: usize,
    pairs: Range<usize>,
    body: &'a [u8],
}

/// What decoding one part gives besides what it wrote into the shared state.
#[derive(Default)]
struct PartOut {
    head: Option<Head>,
    /// Pairs whose counters do not fit a record: (position, n, s).
    wide: Vec<(u32, u64, u128)>,
    /// `TXS2`: pairs with emitted bits (1 PatId1, 2 PatId2): (position, bits).
    legacy_emitted: Vec<(u32, u8)>,
}

fn corrupt(why: impl Into<String>) -> CodecError {
    CodecError::Corrupt {
        what: WHAT,
        why: why.into(),
    }
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
        // LZ4 can expand incompressible input by 1/255 plus a little; the header
        // takes at most 64 bytes: leave room for both.
        let budget = if max_part_bytes == usize::MAX {
            usize::MAX
        } else {
            (max_part_bytes / 256 * 255).saturating_sub(128).max(1)
        };
        let plan = self.plan_parts(head.len(), budget);
        let count = plan.len() as u64;
        let encode = |(i, (customers, pairs)): (usize, &PartPlan)| {
            let names = self.customers.bytes_since(customers.start)
                - self.customers.bytes_since(customers.end);
            let mut w = Writer::default();
            for v in [
                i as u64,
                count,
                id,
                u64::from(i == 0),
                customers.start as u64,
                customers.len() as u64,
                names as u64,
                pairs.start as u64,
                pairs.len() as u64,
            ] {
                w.u64(v);
            }
            let mut body = Writer::default();
            if i == 0 {
                body.0.extend_from_slice(&head);
            }
            for name in self.customers.since(customers.start).take(customers.len()) {
                body.str(name);
            }
            self.encode_pairs(&mut body, pairs.clone());
            let mut out = SNAPSHOT_MAGIC.to_vec();
            out.extend_from_slice(&w.0);
            out.extend_from_slice(&lz4_flex::compress_prepend_size(&body.0));
            out
        };
        let jobs: Vec<(usize, &PartPlan)> = plan.iter().enumerate().collect();
        parallel_map(&jobs, threads_for(jobs.len()), |&job| encode(job))
    }

    fn encode_head(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.next_chunk);
        w.u64(self.totals.rows);
        w.u64(self.totals.rejected);
        let totals: Vec<_> = self.totals.detections.iter().collect();
        w.u64(totals.len() as u64);
        for (pattern, n) in totals {
            w.u64(u64::from(pattern.number()) - 1);
            w.u64(n);
        }
        w.u64(self.merchants.len() as u64);
        self.merchants.since(0).for_each(|n| w.str(n));
        w.u64(self.emitted.len() as u64);
        for (pattern, set) in self.patterns.iter().zip(&self.emitted) {
            w.u64(u64::from(pattern.id().number()) - 1);
            w.u64(set.len());
            let mut prev = 0;
            for i in set.iter() {
                w.u64(u64::from(i - prev));
                prev = i;
            }
        }
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
        let (mut size, mut items) = (head, 1);
        for (c, name) in self.customers.since(0).enumerate() {
            let item = varint::len(name.len() as u64) + name.len();
            if size + item > budget && items > 0 {
                plan.push((c0..c, 0..0));
                (c0, size, items) = (c, 0, 0);
            }
            size += item;
            items += 1;
        }
        let mut prev_c = 0u32;
        for (p, r) in self.pairs.records().iter().enumerate() {
            let item = varint::len(u64::from(r.merchant))
                + varint::len(varint::zigzag(i64::from(r.customer) - i64::from(prev_c)))
                + varint::len(self.pairs.txns(p as u32))
                + varint::len(u64::try_from(self.pairs.cents(p as u32)).unwrap_or(u64::MAX))
                + 3;
            prev_c = r.customer;
            if size + item > budget && items > 0 {
                plan.push((c0..customers, p0..p));
                (c0, p0, size, items) = (customers, p, 0, 0);
            }
            size += item;
            items += 1;
        }
        plan.push((c0..customers, p0..pairs));
        plan
    }

    /// Pairs by column, each column preceded by its length so a decoder reads all
    /// five side by side in one pass.
    fn encode_pairs(&self, w: &mut Writer, range: Range<usize>) {
        let records = &self.pairs.records()[range.clone()];
        let mut columns: [Writer; 5] = Default::default();
        // Customers as differences from the previous pair's: small, and repetitive
        // where pairs were made in bursts.
        let mut prev = 0i64;
        for (p, r) in range.zip(records) {
            columns[0].u64(u64::from(r.merchant));
            columns[1].u64(varint::zigzag(i64::from(r.customer) - prev));
            prev = i64::from(r.customer);
            columns[2].u64(self.pairs.txns(p as u32));
            columns[3].uint(self.pairs.cents(p as u32));
            columns[4].0.push(r.gender().code());
        }
        for column in &columns {
            w.u64(column.0.len() as u64);
        }
        for column in columns {
            w.0.extend_from_slice(&column.0);
        }
    }

    /// Rebuilds an engine from [`Engine::encode_snapshot`] bytes (or a one-part
    /// snapshot, or the older `TXS1` form).
    pub fn decode_snapshot(
        bytes: &[u8],
        patterns: impl Into<Patterns>,
        weights: Arc<ImportanceTable>,
    ) -> Result<Self, CodecError> {
        Self::decode_snapshot_parts(&[bytes], patterns, weights)
    }

    /// Rebuilds one engine from all the parts of a snapshot (any order), decoding and
    /// indexing them on as many threads as the machine offers.
    pub fn decode_snapshot_parts(
        parts: &[&[u8]],
        patterns: impl Into<Patterns>,
        weights: Arc<ImportanceTable>,
    ) -> Result<Self, CodecError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::decode_snapshot_parts_on(parts, patterns, weights, threads)
    }

    /// [`Engine::decode_snapshot_parts`] on at most `threads` threads (1 decodes on
    /// the caller's thread).
    pub fn decode_snapshot_parts_on(
        parts: &[&[u8]],
        patterns: impl Into<Patterns>,
        weights: Arc<ImportanceTable>,
        threads: usize,
    ) -> Result<Self, CodecError> {
        let (threads, patterns) = (threads.max(1), patterns.into());
        match parts {
            [] => Err(corrupt("no parts")),
            [one] if one.starts_with(SNAPSHOT_MAGIC_V1) => decode_v1(one, patterns, weights),
            _ => decode_parts(parts, patterns, weights, threads),
        }
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

fn read_header(bytes: &[u8]) -> Result<PartHeader<'_>, CodecError> {
    let (version, rest) = if let Some(rest) = bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()) {
        (3, rest)
    } else {
        let rest = bytes
            .strip_prefix(SNAPSHOT_MAGIC_V2.as_slice())
            .ok_or(CodecError::BadMagic { what: WHAT })?;
        (2, rest)
    };
    let mut r = Reader {
        buf: rest,
        pos: 0,
        what: WHAT,
    };
    let mut next = || r.u64();
    let (index, count, id, has_head) = (next()?, next()?, next()?, next()? == 1);
    let range = |first: u64, len: u64| -> Result<Range<usize>, CodecError> {
        let first = usize::try_from(first).map_err(|_| corrupt("range out of bounds"))?;
        let len = usize::try_from(len).map_err(|_| corrupt("range out of bounds"))?;
        Ok(first
            ..first
                .checked_add(len)
                .ok_or_else(|| corrupt("range out of bounds"))?)
    };
    let customers = range(next()?, next()?)?;
    let name_bytes = usize::try_from(next()?).map_err(|_| corrupt("too many id bytes"))?;
    let pairs = range(next()?, next()?)?;
    let body = &rest[r.pos..];
    // The body says how large it is uncompressed (refused beyond LZ4's 255-fold
    // expansion); every id takes at least one byte of it plus its bytes, every pair at
    // least five (one per column). So nothing is allocated for counts the part cannot
    // hold.
    let size = body
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| corrupt("no body"))?;
    let needed = customers
        .len()
        .saturating_add(name_bytes)
        .saturating_add(pairs.len().saturating_mul(5));
    if size > body.len().saturating_mul(255).saturating_add(64) || needed > size {
        return Err(corrupt("counts larger than the part"));
    }
    Ok(PartHeader {
        version,
        index,
        count,
        id,
        has_head,
        customers,
        name_bytes,
        pairs,
        body,
    })
}

fn decode_head(r: &mut Reader<'_>, version: u8) -> Result<Head, CodecError> {
    let next_chunk = r.u64()?;
    let (rows, rejected) = (r.u64()?, r.u64()?);
    let detections = if version >= 3 {
        let n = r.len()?;
        (0..n)
            .map(|_| Ok((r.pattern()?, r.u64()?)))
            .collect::<Result<Vec<_>, CodecError>>()?
    } else {
        legacy_totals(r)?
    };
    let n = r.len()?;
    let merchants = (0..n).map(|_| r.str()).collect::<Result<Vec<_>, _>>()?;
    let emitted = if version >= 3 {
        let sets = r.len()?;
        let mut emitted = Vec::with_capacity(sets);
        for _ in 0..sets {
            let pattern = r.pattern()?;
            let n = r.len()?;
            let mut at = 0u64;
            let mut set = Vec::with_capacity(n);
            for i in 0..n {
                let step = r.u64()?;
                if i > 0 && step == 0 {
                    return Err(corrupt("an emitted set repeats an index"));
                }
                at = at.saturating_add(step);
                set.push(u32::try_from(at).map_err(|_| corrupt("emitted index out of range"))?);
            }
            emitted.push((pattern, set));
        }
        emitted
    } else {
        vec![(
            LEGACY_PATTERNS[2],
            legacy_merchant_flags(r, merchants.len())?,
        )]
    };
    Ok(Head {
        next_chunk,
        rows,
        rejected,
        detections,
        merchants,
        emitted,
    })
}

/// `TXS1`/`TXS2`: the three totals in order.
fn legacy_totals(r: &mut Reader<'_>) -> Result<Vec<(u8, u64)>, CodecError> {
    LEGACY_PATTERNS.iter().map(|&p| Ok((p, r.u64()?))).collect()
}

/// `TXS1`/`TXS2`: a DEI flag per merchant, as the merchants flagged.
fn legacy_merchant_flags(r: &mut Reader<'_>, merchants: usize) -> Result<Vec<u32>, CodecError> {
    let mut flagged = Vec::new();
    for m in 0..merchants {
        if r.u64()? != 0 {
            flagged.push(m as u32);
        }
    }
    Ok(flagged)
}

/// `TXS1`/`TXS2`: per-pair emitted bits as (pattern number, pairs) sets.
fn legacy_pair_flags(mut bits: Vec<(u32, u8)>) -> Vec<(u8, Vec<u32>)> {
    bits.sort_unstable();
    [(LEGACY_PATTERNS[0], 1), (LEGACY_PATTERNS[1], 2)]
        .into_iter()
        .map(|(pattern, bit)| {
            let pairs = bits.iter().filter(|&&(_, b)| b & bit != 0).map(|&(p, _)| p);
            (pattern, pairs.collect())
        })
        .collect()
}

/// One part's share of the state, to be filled by its decoder.
struct PartSlices<'a> {
    header: PartHeader<'a>,
    /// Where the part's id bytes start in the whole arena.
    arena_base: usize,
    arena: &'a mut [u8],
    ends: &'a mut [u32],
    records: &'a mut [PairRecord],
}

/// Decodes one part into its slices.
fn decode_part(s: PartSlices<'_>) -> Result<PartOut, CodecError> {
    let buf = Reader::open_body(s.header.body, WHAT)?;
    let mut r = Reader {
        buf: &buf,
        pos: 0,
        what: WHAT,
    };
    let mut out = PartOut::default();
    if s.header.has_head {
        out.head = Some(decode_head(&mut r, s.header.version)?);
    }
    let mut at = 0usize;
    for end in s.ends.iter_mut() {
        let len = r.len()?;
        let name = &r.buf[r.pos..r.pos + len];
        r.pos += len;
        std::str::from_utf8(name).map_err(|_| r.corrupt("customer id is not UTF-8"))?;
        s.arena
            .get_mut(at..at + len)
            .ok_or_else(|| r.corrupt("more id bytes than the header says"))?
            .copy_from_slice(name);
        at += len;
        *end = u32::try_from(s.arena_base + at).map_err(|_| r.corrupt("customer ids too long"))?;
    }
    if at != s.arena.len() {
        return Err(r.corrupt("fewer id bytes than the header says"));
    }
    // Five columns, read side by side: merchants, customers, counts, sums, flags.
    let mut lens = [0usize; 5];
    for len in lens.iter_mut() {
        *len = r.len()?;
    }
    if lens.iter().sum::<usize>() != r.buf.len() - r.pos {
        return Err(r.corrupt("column lengths do not add up"));
    }
    let mut columns = lens.map(|len| {
        let column = Reader {
            buf: &r.buf[r.pos..r.pos + len],
            pos: 0,
            what: WHAT,
        };
        r.pos += len;
        column
    });
    let first = s.header.pairs.start;
    let mut prev = 0i64;
    for (i, rec) in s.records.iter_mut().enumerate() {
        let merchant = columns[0].u32()?;
        prev = prev.wrapping_add(varint::unzigzag(columns[1].u64()?));
        let customer = u32::try_from(prev).map_err(|_| corrupt("customer index out of range"))?;
        let (txns, cents) = (columns[2].u64()?, columns[3].uint()?);
        let flags = *columns[4]
            .buf
            .get(columns[4].pos)
            .ok_or_else(|| corrupt("unexpected end of flags"))?;
        columns[4].pos += 1;
        if txns == 0 {
            return Err(corrupt("a pair has no transactions"));
        }
        let (decoded, wide) = PairRecord::decoded(
            merchant,
            customer,
            txns,
            cents,
            Gender::from_code(flags & 0b11),
        );
        *rec = decoded;
        if s.header.version >= 3 && flags >> 2 != 0 {
            return Err(corrupt("a pair's gender byte has other bits set"));
        }
        let legacy = (flags >> 2) & 0b11;
        if s.header.version == 2 && legacy != 0 {
            out.legacy_emitted.push(((first + i) as u32, legacy));
        }
        if let Some((n, c)) = wide {
            out.wide.push(((first + i) as u32, n, c));
        }
    }
    for column in &columns {
        column.done()?;
    }
    Ok(out)
}

/// Checks that the headers are one complete snapshot; returns them in index order.
fn check_headers(mut headers: Vec<PartHeader<'_>>) -> Result<Vec<PartHeader<'_>>, CodecError> {
    headers.sort_by_key(|h| h.index);
    let count = headers.len() as u64;
    let id = headers[0].id;
    let (mut customers, mut pairs, mut bytes) = (0usize, 0usize, 0usize);
    for (i, h) in headers.iter().enumerate() {
        if h.index != i as u64 || h.count != count || h.id != id || h.version != headers[0].version
        {
            return Err(corrupt(format!(
                "part {} of {} (snapshot {:x}) does not belong with {count} parts of snapshot {id:x}",
                h.index, h.count, h.id
            )));
        }
        if (i == 0) != h.has_head {
            return Err(corrupt("the head must be in part 0 only"));
        }
        if h.customers.start != customers || h.pairs.start != pairs {
            return Err(corrupt("parts leave a gap or overlap"));
        }
        (customers, pairs) = (h.customers.end, h.pairs.end);
        bytes = bytes.saturating_add(h.name_bytes);
    }
    if customers >= NONE as usize || pairs >= NONE as usize || bytes > u32::MAX as usize {
        return Err(corrupt("more ids or pairs than a state can hold"));
    }
    Ok(headers)
}

fn decode_parts(
    parts: &[&[u8]],
    patterns: Patterns,
    weights: Arc<ImportanceTable>,
    threads: usize,
) -> Result<Engine, CodecError> {
    let headers = check_headers(
        parts
            .iter()
            .map(|p| read_header(p))
            .collect::<Result<Vec<_>, _>>()?,
    )?;
    let last = &headers[headers.len() - 1];
    let (customers, pairs) = (last.customers.end, last.pairs.end);
    let name_bytes: usize = headers.iter().map(|h| h.name_bytes).sum();

    // The whole state, allocated once; each part gets its own slices of it.
    let mut arena = vec![0u8; name_bytes];
    let mut ends = vec![0u32; customers];
    let mut records = vec![PairRecord::default(); pairs];
    let mut jobs = Vec::with_capacity(headers.len());
    {
        let (mut arena_rest, mut ends_rest, mut records_rest) =
            (&mut arena[..], &mut ends[..], &mut records[..]);
        let mut arena_base = 0;
        for header in headers {
            let (a, ar) = arena_rest.split_at_mut(header.name_bytes);
            let (e, er) = ends_rest.split_at_mut(header.customers.len());
            let (r, rr) = records_rest.split_at_mut(header.pairs.len());
            (arena_rest, ends_rest, records_rest) = (ar, er, rr);
            arena_base += header.name_bytes;
            jobs.push(PartSlices {
                arena_base: arena_base - header.name_bytes,
                header,
                arena: a,
                ends: e,
                records: r,
            });
        }
        let outs: Vec<Result<PartOut, CodecError>> = if threads <= 1 || jobs.len() == 1 {
            jobs.into_iter().map(decode_part).collect()
        } else {
            // Parts are handed out round-robin, so threads get similar shares.
            let mut queues: Vec<Vec<PartSlices<'_>>> =
                (0..threads.min(jobs.len())).map(|_| Vec::new()).collect();
            let n = queues.len();
            for (i, job) in jobs.into_iter().enumerate() {
                queues[i % n].push(job);
            }
            std::thread::scope(|scope| {
                let handles: Vec<_> = queues
                    .into_iter()
                    .map(|queue| {
                        scope.spawn(move || queue.into_iter().map(decode_part).collect::<Vec<_>>())
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| {
                        h.join()
                            .unwrap_or_else(|_| vec![Err(corrupt("a decoding thread failed"))])
                    })
                    .collect()
            })
        };
        let mut head = None;
        let (mut wide, mut legacy) = (Vec::new(), Vec::new());
        for out in outs {
            let out = out?;
            head = head.or(out.head);
            wide.extend(out.wide);
            legacy.extend(out.legacy_emitted);
        }
        let mut head: Head = head.ok_or_else(|| corrupt("no head"))?;
        if !legacy.is_empty() {
            head.emitted.extend(legacy_pair_flags(legacy));
        }
        let arena = String::from_utf8(std::mem::take(&mut arena))
            .map_err(|_| corrupt("customer ids are not UTF-8"))?;
        assemble(head, arena, ends, records, wide, patterns, weights, threads)
    }
}

/// The `TXS1` single-blob form.
fn decode_v1(
    bytes: &[u8],
    patterns: Patterns,
    weights: Arc<ImportanceTable>,
) -> Result<Engine, CodecError> {
    let buf = Reader::open(bytes, SNAPSHOT_MAGIC_V1, WHAT)?;
    let mut r = Reader {
        buf: &buf,
        pos: 0,
        what: WHAT,
    };
    let next_chunk = r.u64()?;
    let (rows, rejected) = (r.u64()?, r.u64()?);
    let detections = legacy_totals(&mut r)?;
    let n = r.len()?;
    let merchants = (0..n).map(|_| r.str()).collect::<Result<Vec<_>, _>>()?;
    let (mut arena, mut ends) = (String::new(), Vec::new());
    let n = r.len()?;
    for _ in 0..n {
        arena.push_str(&r.str()?);
        ends.push(u32::try_from(arena.len()).map_err(|_| r.corrupt("customer ids too long"))?);
    }
    let dei_emitted = legacy_merchant_flags(&mut r, merchants.len())?;
    let n = r.len()?;
    let (mut records, mut wide, mut legacy) = (Vec::with_capacity(n), Vec::new(), Vec::new());
    for p in 0..n {
        let (m, c, txns, cents) = (r.u32()?, r.u32()?, r.u64()?, r.uint()?);
        let (gender, emitted) = (Gender::from_code(r.u64()? as u8), (r.u64()? as u8) & 0b11);
        if txns == 0 {
            return Err(r.corrupt("a pair has no transactions"));
        }
        let (record, w) = PairRecord::decoded(m, c, txns, cents, gender);
        records.push(record);
        if emitted != 0 {
            legacy.push((p as u32, emitted));
        }
        if let Some((n, s)) = w {
            wide.push((p as u32, n, s));
        }
    }
    r.done()?;
    let mut emitted = vec![(LEGACY_PATTERNS[2], dei_emitted)];
    emitted.extend(legacy_pair_flags(legacy));
    let head = Head {
        next_chunk,
        rows,
        rejected,
        detections,
        merchants,
        emitted,
    };
    assemble(head, arena, ends, records, wide, patterns, weights, 1)
}

/// Builds the engine from decoded state: indexes, weights and per-merchant stats.
#[allow(clippy::too_many_arguments)]
fn assemble(
    head: Head,
    arena: String,
    ends: Vec<u32>,
    records: Vec<PairRecord>,
    wide: Vec<(u32, u64, u128)>,
    patterns: Patterns,
    weights: Arc<ImportanceTable>,
    threads: usize,
) -> Result<Engine, CodecError> {
    let mut engine = Engine::with_patterns(patterns, weights);
    engine.next_chunk = head.next_chunk;
    engine.totals.rows = head.rows;
    engine.totals.rejected = head.rejected;
    for name in &head.merchants {
        let (m, new) = engine
            .merchants
            .intern_new(name)
            .map_err(|e| corrupt(e.to_string()))?;
        if !new || m as usize != engine.merchant_stats.len() {
            return Err(corrupt("duplicate merchant"));
        }
        let stats = MerchantStats::new(engine.weights.merchant_index(name), &engine.weights);
        engine.merchant_stats.push(stats);
    }
    engine.customers = Names::from_arena(arena, ends, threads).map_err(corrupt)?;
    let (merchants, customers) = (engine.merchants.len(), engine.customers.len());
    if records
        .iter()
        .any(|r| r.merchant as usize >= merchants || r.customer as usize >= customers)
    {
        return Err(corrupt("a pair names an unknown merchant or customer"));
    }

    engine.pairs = PairTable::from_records(records, wide, threads)
        .map_err(|p| corrupt(format!("pair {p} is a duplicate")))?;
    // Weights: from the importance table's side (usually far fewer entries than pairs),
    // each entry whose merchant and customer are known finds its pair.
    let mut engine_merchant = vec![NONE; engine.weights.merchant_count()];
    for (m, stats) in engine.merchant_stats.iter().enumerate() {
        if let Some(slot) = engine_merchant.get_mut(stats.importance as usize) {
            *slot = m as u32;
        }
    }
    let entries: Vec<(u32, &str, u32)> = engine.weights.entries().collect();
    let (names, pair_table) = (&engine.customers, &engine.pairs);
    let weighted: Vec<(u32, u32)> = parallel_map(
        &entries.chunks(4096).collect::<Vec<_>>(),
        threads,
        |chunk| {
            chunk
                .iter()
                .filter_map(|&(merchant, customer, entry)| {
                    let m = *engine_merchant.get(merchant as usize)?;
                    let c = names.get(customer)?;
                    Some((pair_table.find(m, c)?, entry))
                })
                .collect::<Vec<_>>()
        },
    )
    .into_iter()
    .flatten()
    .collect();
    drop(entries);
    for &(p, _) in &weighted {
        engine.pairs.set_weighted(p);
    }
    // Merchant stats follow from the pairs: each thread takes a range of merchants and
    // reads every pair.
    let pairs = &engine.pairs;
    let per = engine.merchant_stats.len().div_ceil(threads).max(1);
    let count = |first: usize, stats: &mut [MerchantStats]| {
        let range = first..first + stats.len();
        for (p, r) in pairs.records().iter().enumerate() {
            if !range.contains(&(r.merchant as usize)) {
                continue;
            }
            let stats = &mut stats[r.merchant as usize - first];
            let txns = r.narrow_txns().unwrap_or_else(|| pairs.txns(p as u32));
            stats.txns = stats.txns.saturating_add(txns);
            match r.gender() {
                Gender::Female => stats.female += 1,
                Gender::Male => stats.male += 1,
                Gender::Other => {}
            }
            stats.by_count.move_customer(0, txns);
        }
    };
    if threads <= 1 {
        count(0, &mut engine.merchant_stats);
    } else {
        std::thread::scope(|scope| {
            for (k, stats) in engine.merchant_stats.chunks_mut(per).enumerate() {
                let count = &count;
                scope.spawn(move || count(k * per, stats));
            }
        });
    }
    for (p, entry) in weighted {
        let m = engine.pairs.record(p).merchant;
        if let Some(order) = &mut engine.merchant_stats[m as usize].by_weight {
            order.insert(entry, p);
        }
    }
    restore_detections(&mut engine, head.detections, head.emitted)?;
    Ok(engine)
}

/// Puts the stored totals and emitted sets back on the engine's patterns. A pattern the
/// snapshot names but the engine does not run is refused if it ever fired (its
/// detections would be emitted again otherwise).
fn restore_detections(
    engine: &mut Engine,
    totals: Vec<(u8, u64)>,
    emitted: Vec<(u8, Vec<u32>)>,
) -> Result<(), CodecError> {
    let missing = |number: u8| {
        corrupt(format!(
            "it holds detections of PatId{number}, a pattern this build does not run"
        ))
    };
    for (number, n) in totals {
        match engine.patterns.by_number(u64::from(number)) {
            Some((_, pattern)) => engine.totals.detections.add(pattern.id(), n),
            None if n == 0 => {}
            None => return Err(missing(number)),
        }
    }
    let (pairs, merchants) = (engine.pairs.len(), engine.merchant_stats.len());
    for (number, set) in emitted {
        let Some((slot, pattern)) = engine.patterns.by_number(u64::from(number)) else {
            if set.is_empty() {
                continue;
            }
            return Err(missing(number));
        };
        let bound = if pattern.asks().per_pair() {
            pairs
        } else {
            merchants
        };
        for i in set {
            if i as usize >= bound {
                return Err(corrupt(format!(
                    "PatId{number} was emitted for an unknown index {i}"
                )));
            }
            engine.emitted[slot].insert(i);
        }
    }
    Ok(())
}
