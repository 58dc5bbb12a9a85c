//! The pattern engine: running stats and pattern detection (docs/behaviour.md).
//!
//! Pure and synchronous: bytes of a chunk in, detections and a compact [`ChunkDelta`]
//! out. The cost of a chunk is proportional to its rows and the merchants it touches:
//! per merchant it keeps a count histogram with order statistics and its weighted
//! customers in weight order, so the PatId1 thresholds are a logarithmic query and the
//! candidates a short run from the low-weight end, never a sort.
//!
//! State is laid out for millions of pairs (see `docs/capacity.md` for the figures):
//! ids are interned once in arenas ([`Names`]); each (merchant, customer) pair is one
//! 16-byte record in a flat array found through a sharded `u32` hash index
//! ([`pairs`]); a merchant's weight order is a bitset over the importance table's own
//! weight-sorted entries ([`weight_order`]), since weights never change during a
//! stream; "touched in this chunk" is one bit per pair plus a per-chunk list; what each
//! pattern emitted is a bitset of its own ([`emitted`]), so patterns come and go
//! without touching the pair record.

mod codec;
pub mod emitted;
mod explain;
mod histogram;
pub mod pairs;
mod snapshot;
#[cfg(test)]
mod tests;
pub mod weight_order;

pub use crate::names::Names;
pub use codec::{ChunkDelta, CodecError, PairDelta};
pub use explain::{verdict, MerchantExplain, PairExplain, UpgradeThresholdsView, Verdict};
pub use histogram::CountHistogram;

use crate::config::PatternConfig;
use crate::detection::{DetectionKey, PatternId, PerPattern};
use crate::evidence::Evidence;
use crate::index::{hash_bytes, hash_pair};
use crate::names::NONE;
use crate::parse::{Gender, HeaderError, ImportanceTable, RejectedRow, TransactionReader};
use crate::patterns::{Asks, MerchantFacts, PairFacts, Patterns};
use crate::weight::Weight;
use emitted::EmittedSet;
use pairs::PairTable;
use std::sync::Arc;
use weight_order::WeightOrder;

/// The rows under an unusable header line (the first non-blank line of `segment`):
/// every non-blank line after it, kept as a rejected row with `why`.
fn unreadable_rows(segment: &[u8], first_row: u64, why: &str) -> Vec<RejectedRow> {
    let mut rejected = Vec::new();
    let mut pos = 0;
    let mut header_seen = false;
    let mut scanner = crate::parse::csv_scan::Scanner::new();
    while let Some(span) = scanner.next_record(segment, pos, true) {
        pos = span.next;
        if span.is_blank() {
            continue;
        }
        if !header_seen {
            header_seen = true;
            continue;
        }
        rejected.push(RejectedRow {
            row: first_row + rejected.len() as u64,
            raw: segment[span.start..span.end].to_vec(),
            reason: crate::parse::RejectReason::UnreadableChunk { why: why.into() },
        });
    }
    rejected
}

/// A chunk could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The chunk's header is unusable; the whole chunk is rejected.
    #[error("chunk {chunk}: {source}")]
    Header {
        /// The chunk.
        chunk: u64,
        /// What is wrong with the header.
        source: HeaderError,
    },
    /// The chunk's metadata places its segments' headers outside it.
    #[error("chunk {chunk}: its segments are unusable: {why}")]
    BadSegments {
        /// The chunk.
        chunk: u64,
        /// What is wrong.
        why: String,
    },
    /// Chunks must be applied in order, each once.
    #[error("chunk {got} cannot be applied: the engine expects chunk {expected} next")]
    OutOfOrder {
        /// The next chunk the engine can take.
        expected: u64,
        /// The chunk offered.
        got: u64,
    },
    /// A stored delta does not fit the state it is applied to.
    #[error("corrupt or mismatched state delta for chunk {chunk}: {why}")]
    BadDelta {
        /// The delta's chunk.
        chunk: u64,
        /// What did not fit.
        why: String,
    },
    /// The state cannot index more ids or pairs (4 billion, or 4 GiB of id text). Checked
    /// before the chunk changes anything.
    #[error("chunk {chunk} cannot be applied: the state is full ({why})")]
    Capacity {
        /// The chunk.
        chunk: u64,
        /// What is full.
        why: String,
    },
}

/// Running totals across all applied chunks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Valid rows applied.
    pub rows: u64,
    /// Rows rejected.
    pub rejected: u64,
    /// Detections emitted, per pattern.
    pub detections: PerPattern,
}

/// Stats and order statistics of one merchant.
#[derive(Debug, Clone)]
struct MerchantStats {
    /// N(m).
    txns: u64,
    /// F(m), M(m).
    female: u64,
    male: u64,
    /// In the current chunk's list of touched merchants.
    touched: bool,
    /// The merchant's index in the importance table, or `NONE`.
    importance: u32,
    /// n(m,c) for every c in C(m): |C(m)| and the count percentile.
    by_count: CountHistogram,
    /// The customers of C(m) that have a weight, in weight order (`None` when the
    /// merchant has no importance entries).
    by_weight: Option<WeightOrder>,
}

impl MerchantStats {
    fn new(importance: u32, weights: &ImportanceTable) -> Self {
        let run = weights.merchant_entries(importance);
        MerchantStats {
            txns: 0,
            female: 0,
            male: 0,
            touched: false,
            importance,
            by_count: CountHistogram::default(),
            by_weight: (!run.is_empty()).then(|| WeightOrder::new(run.start, run.end - run.start)),
        }
    }
}

/// The result of applying one chunk.
#[derive(Debug)]
pub struct ChunkOutcome {
    /// The state change, for persistence.
    pub delta: ChunkDelta,
    /// New detections, in the order docs/behaviour.md gives.
    pub detections: Vec<DetectionKey>,
    /// Why each fired, in the same order.
    pub evidence: Vec<Evidence>,
    /// Rows rejected, with reasons.
    pub rejected: Vec<RejectedRow>,
}

/// One valid row of a chunk as the engine applied it, for callers that store processed
/// rows (the detector's `transactions` table) without parsing the chunk a second time.
/// See [`Engine::apply_chunk_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowView<'a> {
    /// 1-based row number in the source file.
    pub row: u64,
    /// Customer id (checked by the parser).
    pub customer: &'a str,
    /// Merchant id (checked by the parser).
    pub merchant: &'a str,
    /// Gender as written.
    pub gender: Gender,
    /// Amount in cents.
    pub cents: u64,
    /// w(m,c), if the pair has importance rows.
    pub weight: Option<Weight>,
    /// The row's original bytes (line terminator excluded).
    pub raw: &'a [u8],
}

/// Current stats of one (merchant, customer) pair, for reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairView<'a> {
    /// Merchant id.
    pub merchant: &'a str,
    /// Customer id.
    pub customer: &'a str,
    /// n(m,c).
    pub txns: u64,
    /// s(m,c) in cents.
    pub cents: u128,
    /// Gender at m.
    pub gender: Gender,
    /// w(m,c).
    pub weight: Option<Weight>,
}

/// Current stats of one merchant, for reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantView<'a> {
    /// Merchant id.
    pub merchant: &'a str,
    /// N(m).
    pub txns: u64,
    /// |C(m)|.
    pub customers: u64,
    /// F(m).
    pub female: u64,
    /// M(m).
    pub male: u64,
}

/// Heap bytes held by the engine's parts (see [`Engine::memory`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Merchant and customer ids with their indices.
    pub names: usize,
    /// Pair records, their index and the wide counters.
    pub pairs: usize,
    /// Per-merchant stats and order statistics, and the customer → importance map.
    pub merchants: usize,
    /// The importance table (shared; counted once).
    pub importance: usize,
}

impl Memory {
    /// All of it.
    pub fn total(&self) -> usize {
        self.names + self.pairs + self.merchants + self.importance
    }
}

/// The running state of mechanism Y.
#[derive(Debug, Clone)]
pub struct Engine {
    patterns: Patterns,
    /// What each pattern emitted, in the order of `patterns`.
    emitted: Vec<EmittedSet>,
    weights: Arc<ImportanceTable>,
    merchants: Names,
    customers: Names,
    merchant_stats: Vec<MerchantStats>,
    pairs: PairTable,
    next_chunk: u64,
    totals: Totals,
}

/// Rows applied per batch: large enough that a batch's cache misses overlap, small
/// enough that what a batch touches (about five cache lines a row) stays in L2.
const BATCH: usize = 1024;

/// A valid row on its way through [`Engine::apply_batch`].
struct Row<'a> {
    tx: crate::parse::Transaction<'a>,
    customer_hash: u64,
    merchant_hash: u64,
    /// Where the likely customer match's bytes start (cache warming only).
    hint: u32,
    merchant: u32,
    customer: u32,
    pair_hash: u64,
}

impl<'a> Row<'a> {
    fn new(tx: crate::parse::Transaction<'a>) -> Self {
        Row {
            customer_hash: hash_bytes(tx.customer.as_bytes()),
            merchant_hash: hash_bytes(tx.merchant.as_bytes()),
            tx,
            hint: NONE,
            merchant: NONE,
            customer: NONE,
            pair_hash: 0,
        }
    }
}

/// A pair touched by the current chunk, with its values before the chunk.
struct Touched {
    pair: u32,
    /// The importance entry of a pair new in this chunk, or `NONE`.
    entry: u32,
    txns_before: u64,
    cents_before: u128,
}

impl Engine {
    /// An empty engine running the registered patterns with `config`: no chunk
    /// applied yet.
    pub fn new(config: PatternConfig, weights: Arc<ImportanceTable>) -> Self {
        Engine::with_patterns(Patterns::registered(config), weights)
    }

    /// An empty engine running `patterns`.
    pub fn with_patterns(patterns: Patterns, weights: Arc<ImportanceTable>) -> Self {
        Engine {
            emitted: vec![EmittedSet::default(); patterns.len()],
            totals: Totals {
                detections: PerPattern::zeros(patterns.ids()),
                ..Totals::default()
            },
            patterns,
            weights,
            merchants: Names::default(),
            customers: Names::default(),
            merchant_stats: Vec::new(),
            pairs: PairTable::default(),
            next_chunk: 0,
        }
    }

    /// The pattern thresholds in use.
    pub fn config(&self) -> &PatternConfig {
        self.patterns.config()
    }

    /// The patterns it runs.
    pub fn patterns(&self) -> &Patterns {
        &self.patterns
    }

    /// The chunk the engine takes next (= number of chunks applied).
    pub fn next_chunk(&self) -> u64 {
        self.next_chunk
    }

    /// Totals so far.
    pub fn totals(&self) -> Totals {
        self.totals.clone()
    }

    /// Number of merchants, customers and (merchant, customer) pairs seen.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.merchants.len(), self.customers.len(), self.pairs.len())
    }

    /// Heap bytes held, by part.
    pub fn memory(&self) -> Memory {
        Memory {
            names: self.merchants.heap_bytes() + self.customers.heap_bytes(),
            pairs: self.pairs.heap_bytes()
                + self
                    .emitted
                    .iter()
                    .map(EmittedSet::heap_bytes)
                    .sum::<usize>(),
            merchants: self
                .merchant_stats
                .iter()
                .map(|s| {
                    std::mem::size_of::<MerchantStats>()
                        + s.by_count.heap_bytes()
                        + s.by_weight.as_ref().map_or(0, WeightOrder::heap_bytes)
                })
                .sum::<usize>(),
            importance: self.weights.heap_bytes(),
        }
    }

    /// Applies chunk `chunk` (its bytes, header first) and detects what became true.
    /// `first_row` is the 1-based source row number of the chunk's first data row.
    pub fn apply_chunk(
        &mut self,
        chunk: u64,
        data: &[u8],
        first_row: u64,
    ) -> Result<ChunkOutcome, ApplyError> {
        self.apply(chunk, data, &[], first_row, None, true)
    }

    /// [`Engine::apply_chunk`], also handing each valid row to `on_row` as it is
    /// applied (in row order), from the same parse: for callers that store processed
    /// rows, so the chunk is never parsed twice. [`Engine::apply_chunk`] does not build
    /// row views at all (nor look up their weights), so it pays nothing for this.
    pub fn apply_chunk_with(
        &mut self,
        chunk: u64,
        data: &[u8],
        first_row: u64,
        on_row: &mut dyn FnMut(RowView<'_>),
    ) -> Result<ChunkOutcome, ApplyError> {
        self.apply(chunk, data, &[], first_row, Some(on_row), true)
    }

    /// Applies chunk `chunk` whose bytes hold one or more segments, each a header line
    /// and the rows under it: `later_headers` are the byte offsets where the segments
    /// after the first start (a chunk of a prefix stream that spans files, each with
    /// its own header). A segment whose header is unusable has each of its rows
    /// rejected with the reason and the others apply, so one bad file never stops the
    /// stream. Row numbers run on across segments from `first_row`.
    pub fn apply_segments(
        &mut self,
        chunk: u64,
        data: &[u8],
        later_headers: &[usize],
        first_row: u64,
        on_row: Option<&mut dyn FnMut(RowView<'_>)>,
    ) -> Result<ChunkOutcome, ApplyError> {
        self.apply(chunk, data, later_headers, first_row, on_row, false)
    }

    /// `strict`: an unusable header is an error (one segment only) instead of rejected
    /// rows.
    fn apply(
        &mut self,
        chunk: u64,
        data: &[u8],
        later_headers: &[usize],
        first_row: u64,
        mut on_row: Option<&mut dyn FnMut(RowView<'_>)>,
        strict: bool,
    ) -> Result<ChunkOutcome, ApplyError> {
        if chunk != self.next_chunk {
            return Err(ApplyError::OutOfOrder {
                expected: self.next_chunk,
                got: chunk,
            });
        }
        // A chunk adds at most one name or pair per byte: checked up front, so a full
        // table refuses the chunk before anything changes.
        self.check_room(chunk, data.len(), data.len(), data.len())?;
        let mut bounds = Vec::with_capacity(later_headers.len() + 2);
        bounds.push(0);
        bounds.extend_from_slice(later_headers);
        bounds.push(data.len());
        let empty = bounds.len() == 2 && data.is_empty();
        if !(empty || bounds.windows(2).all(|w| w[0] < w[1])) {
            return Err(ApplyError::BadSegments {
                chunk,
                why: format!(
                    "header offsets {later_headers:?} are not increasing inside its {} bytes",
                    data.len()
                ),
            });
        }
        let (merchants_before, customers_before) = (self.merchants.len(), self.customers.len());
        let mut touched: Vec<Touched> = Vec::new();
        let mut rejected = Vec::new();
        let mut rows = 0u64;
        let mut batch: Vec<Row<'_>> = Vec::with_capacity(BATCH);
        let mut next_row = first_row;
        for w in bounds.windows(2) {
            let segment = &data[w[0]..w[1]];
            let mut reader = match TransactionReader::new(segment, next_row) {
                Ok(reader) => reader,
                Err(source) if strict => return Err(ApplyError::Header { chunk, source }),
                Err(source) => {
                    let unreadable = unreadable_rows(segment, next_row, &source.to_string());
                    next_row += unreadable.len() as u64;
                    rejected.extend(unreadable);
                    continue;
                }
            };
            for row in reader.by_ref() {
                match row {
                    Ok(tx) => {
                        batch.push(Row::new(tx));
                        if batch.len() == BATCH {
                            self.apply_batch(&mut batch, &mut touched, chunk, &mut on_row)?;
                            rows += batch.len() as u64;
                            batch.clear();
                        }
                    }
                    Err(rejection) => rejected.push(rejection),
                }
            }
            next_row = reader.next_row();
        }
        self.apply_batch(&mut batch, &mut touched, chunk, &mut on_row)?;
        rows += batch.len() as u64;
        let touched_merchants = self.reindex(&touched);
        let Detected(detections, evidence, detected) = self.detect(&touched, &touched_merchants);
        let delta = ChunkDelta {
            chunk,
            rows,
            rejected: rejected.len() as u64,
            merchants_before: merchants_before as u32,
            customers_before: customers_before as u32,
            new_merchants: self
                .merchants
                .since(merchants_before)
                .map(String::from)
                .collect(),
            new_customers: self
                .customers
                .since(customers_before)
                .map(String::from)
                .collect(),
            pairs: touched
                .iter()
                .map(|t| {
                    let pair = self.pairs.record(t.pair);
                    PairDelta {
                        merchant: pair.merchant,
                        customer: pair.customer,
                        txns: self.pairs.txns(t.pair) - t.txns_before,
                        cents: self.pairs.cents(t.pair) - t.cents_before,
                        gender: pair.gender(),
                    }
                })
                .collect(),
            detections: detected,
        };
        self.end_chunk(&touched, &touched_merchants);
        self.totals.rows += rows;
        self.totals.rejected += rejected.len() as u64;
        for d in &detections {
            self.totals.detections.add(d.pattern, 1);
        }
        self.next_chunk += 1;
        Ok(ChunkOutcome {
            delta,
            detections,
            evidence,
            rejected,
        })
    }

    /// Applies a batch of valid rows in order. Lookups run in passes that first only read
    /// the memory each row will need (hash buckets, then candidate keys), so the cache
    /// misses of the whole batch overlap instead of queueing one behind the other (see
    /// the `index` module); the last pass does the work, finding everything in cache.
    fn apply_batch(
        &mut self,
        batch: &mut [Row<'_>],
        touched: &mut Vec<Touched>,
        chunk: u64,
        on_row: &mut Option<&mut dyn FnMut(RowView<'_>)>,
    ) -> Result<(), ApplyError> {
        let mut warm = 0u32;
        for r in batch.iter() {
            warm ^= self.customers.touch_bucket(r.customer_hash);
            // New customers look themselves up in the importance table (same hash).
            warm ^= self.weights.touch_customer(r.customer_hash);
        }
        for r in batch.iter_mut() {
            r.hint = self.customers.touch_ends(r.customer_hash);
        }
        for r in batch.iter() {
            warm ^= self.customers.touch_bytes(r.hint);
        }
        for r in batch.iter_mut() {
            r.merchant = self.merchant(r.merchant_hash, &r.tx.merchant, chunk)?;
            r.customer = self.customer(r.customer_hash, &r.tx.customer, chunk)?;
        }
        for r in batch.iter_mut() {
            r.pair_hash = hash_pair(r.merchant, r.customer);
            warm ^= self.pairs.touch_bucket(r.pair_hash);
        }
        for r in batch.iter() {
            warm ^= self.pairs.touch_record(r.pair_hash);
        }
        std::hint::black_box(warm);
        for r in batch.iter() {
            let (p, entry) = self.pair_index(
                r.pair_hash,
                r.merchant,
                r.customer,
                r.tx.gender,
                r.customer_hash,
                &r.tx.customer,
            );
            if !self.pairs.touch(p) {
                touched.push(Touched {
                    pair: p,
                    entry,
                    txns_before: self.pairs.txns(p),
                    cents_before: self.pairs.cents(p),
                });
            }
            self.pairs.add(p, 1, u128::from(r.tx.cents));
            self.merchant_stats[r.merchant as usize].txns += 1;
            let Some(on_row) = on_row.as_mut() else {
                continue;
            };
            on_row(RowView {
                row: r.tx.row,
                customer: &r.tx.customer,
                merchant: &r.tx.merchant,
                gender: r.tx.gender,
                cents: r.tx.cents,
                weight: self.weight_of(p, r.customer_hash, &r.tx.customer),
                raw: r.tx.raw,
            });
        }
        Ok(())
    }

    fn check_room(
        &self,
        chunk: u64,
        names: usize,
        name_bytes: usize,
        pairs: usize,
    ) -> Result<(), ApplyError> {
        let full = |what: &str| ApplyError::Capacity {
            chunk,
            why: what.to_string(),
        };
        if !self.merchants.has_room(names, name_bytes) {
            return Err(full("merchant ids"));
        }
        if !self.customers.has_room(names, name_bytes) {
            return Err(full("customer ids"));
        }
        if !self.pairs.has_room(pairs) {
            return Err(full("pairs"));
        }
        Ok(())
    }

    /// The index of a merchant (`hash` is its [`hash_bytes`]), added with its stats if
    /// new.
    #[inline]
    fn merchant(&mut self, hash: u64, name: &str, chunk: u64) -> Result<u32, ApplyError> {
        let (m, new) =
            self.merchants
                .intern_hashed(hash, name)
                .map_err(|e| ApplyError::Capacity {
                    chunk,
                    why: e.to_string(),
                })?;
        if new {
            let importance = self.weights.merchant_index(name);
            self.merchant_stats
                .push(MerchantStats::new(importance, &self.weights));
        }
        Ok(m)
    }

    /// The index of a customer (`hash` is its [`hash_bytes`]), added if new.
    #[inline]
    fn customer(&mut self, hash: u64, name: &str, chunk: u64) -> Result<u32, ApplyError> {
        let (c, _) =
            self.customers
                .intern_hashed(hash, name)
                .map_err(|e| ApplyError::Capacity {
                    chunk,
                    why: e.to_string(),
                })?;
        Ok(c)
    }

    /// The pair (m, c) (`hash` is its [`hash_pair`]; the customer's id and its
    /// [`hash_bytes`] find its weight), created with its first-seen gender if new.
    /// Returns the pair and, for a new pair with a weight, its importance entry.
    #[inline]
    fn pair_index(
        &mut self,
        hash: u64,
        m: u32,
        c: u32,
        gender: Gender,
        customer_hash: u64,
        customer: &str,
    ) -> (u32, u32) {
        let mut entry = NONE;
        let (weights, stats) = (&self.weights, &self.merchant_stats);
        let (p, new) = self.pairs.find_or_insert_hashed(hash, m, c, gender, || {
            entry = importance_entry(
                weights,
                stats[m as usize].importance,
                customer_hash,
                customer,
            );
            entry != NONE
        });
        if new {
            let stats = &mut self.merchant_stats[m as usize];
            match gender {
                Gender::Female => stats.female += 1,
                Gender::Male => stats.male += 1,
                Gender::Other => {}
            }
        }
        (p, entry)
    }

    /// w(m,c) of pair `p`, whose customer id (with its hash) is given: looked up in the
    /// importance table, and only for pairs marked weighted.
    fn weight_of(&self, p: u32, customer_hash: u64, customer: &str) -> Option<Weight> {
        let pair = self.pairs.record(p);
        if !pair.weighted() {
            return None;
        }
        let merchant = self.merchant_stats[pair.merchant as usize].importance;
        match importance_entry(&self.weights, merchant, customer_hash, customer) {
            NONE => None,
            entry => self.weights.entry_weight(entry),
        }
    }

    /// Replays a stored delta: the same state change as the `apply_chunk` that made it,
    /// without parsing or detecting again. A delta that does not fit the state is
    /// refused before anything changes.
    pub fn apply_delta(&mut self, delta: &ChunkDelta) -> Result<(), ApplyError> {
        let bad = |why: String| ApplyError::BadDelta {
            chunk: delta.chunk,
            why,
        };
        if delta.chunk != self.next_chunk {
            return Err(ApplyError::OutOfOrder {
                expected: self.next_chunk,
                got: delta.chunk,
            });
        }
        if delta.merchants_before as usize != self.merchants.len()
            || delta.customers_before as usize != self.customers.len()
        {
            return Err(bad(format!(
                "delta expects {}/{} merchants/customers, state has {}/{}",
                delta.merchants_before,
                delta.customers_before,
                self.merchants.len(),
                self.customers.len()
            )));
        }
        self.validate_delta(delta).map_err(bad)?;
        let names = delta.new_merchants.len().max(delta.new_customers.len());
        let bytes = delta
            .new_merchants
            .iter()
            .chain(&delta.new_customers)
            .map(String::len)
            .sum();
        self.check_room(delta.chunk, names, bytes, delta.pairs.len())?;
        for name in &delta.new_merchants {
            self.merchant(hash_bytes(name.as_bytes()), name, delta.chunk)?;
        }
        for name in &delta.new_customers {
            self.customer(hash_bytes(name.as_bytes()), name, delta.chunk)?;
        }
        let mut touched = Vec::with_capacity(delta.pairs.len());
        for d in &delta.pairs {
            let customer = self.customers.name(d.customer).to_string();
            let (p, entry) = self.pair_index(
                hash_pair(d.merchant, d.customer),
                d.merchant,
                d.customer,
                d.gender,
                hash_bytes(customer.as_bytes()),
                &customer,
            );
            self.pairs.touch(p);
            touched.push(Touched {
                pair: p,
                entry,
                txns_before: self.pairs.txns(p),
                cents_before: 0,
            });
            self.pairs.add(p, d.txns, d.cents);
            let stats = &mut self.merchant_stats[d.merchant as usize];
            stats.txns = stats.txns.saturating_add(d.txns);
        }
        let merchants = self.reindex(&touched);
        self.end_chunk(&touched, &merchants);
        for &(number, m, c) in &delta.detections {
            // validate_delta found each pattern and pair.
            let Some((slot, pattern)) = self.patterns.by_number(u64::from(number)) else {
                continue;
            };
            let id = pattern.id();
            if !pattern.asks().per_pair() {
                self.emitted[slot].insert(m);
            } else if let Some(p) = self.pairs.find(m, c) {
                self.emitted[slot].insert(p);
            }
            self.totals.detections.add(id, 1);
        }
        self.totals.rows = self.totals.rows.saturating_add(delta.rows);
        self.totals.rejected = self.totals.rejected.saturating_add(delta.rejected);
        self.next_chunk += 1;
        Ok(())
    }

    /// Everything [`Engine::apply_delta`] needs to hold before it changes anything: new
    /// names are new and distinct, pairs name known indices once each with at least one
    /// transaction, detections name known merchants and pairs.
    fn validate_delta(&self, delta: &ChunkDelta) -> Result<(), String> {
        for (names, new, what) in [
            (&self.merchants, &delta.new_merchants, "merchant"),
            (&self.customers, &delta.new_customers, "customer"),
        ] {
            let mut seen = rustc_hash::FxHashSet::default();
            for name in new {
                if names.get(name).is_some() || !seen.insert(name.as_str()) {
                    return Err(format!("new {what} {name:?} is already known"));
                }
            }
        }
        let merchants = self.merchants.len() + delta.new_merchants.len();
        let customers = self.customers.len() + delta.new_customers.len();
        let mut keys: Vec<u64> = Vec::with_capacity(delta.pairs.len());
        for d in &delta.pairs {
            if d.merchant as usize >= merchants || d.customer as usize >= customers {
                return Err(format!(
                    "pair ({}, {}) names an unknown index",
                    d.merchant, d.customer
                ));
            }
            if d.txns == 0 {
                return Err(format!(
                    "pair ({}, {}) has no transactions",
                    d.merchant, d.customer
                ));
            }
            keys.push(u64::from(d.merchant) << 32 | u64::from(d.customer));
        }
        keys.sort_unstable();
        if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "pair ({}, {}) appears twice",
                w[0] >> 32,
                w[0] as u32
            ));
        }
        for &(number, m, c) in &delta.detections {
            let Some((_, pattern)) = self.patterns.by_number(u64::from(number)) else {
                return Err(format!(
                    "a detection of PatId{number}, a pattern not run here"
                ));
            };
            let known = if pattern.asks().per_pair() {
                self.pairs.find(m, c).is_some()
                    || keys
                        .binary_search(&(u64::from(m) << 32 | u64::from(c)))
                        .is_ok()
            } else {
                (m as usize) < merchants
            };
            if !known {
                return Err(format!(
                    "detection of PatId{number} names unknown merchant/customer {m}/{c}"
                ));
            }
        }
        Ok(())
    }

    /// Moves touched pairs to their new place in their merchant's order statistics and
    /// returns the touched merchants.
    fn reindex(&mut self, touched: &[Touched]) -> Vec<u32> {
        let mut merchants = Vec::new();
        for t in touched {
            let pair = *self.pairs.record(t.pair);
            let after = self.pairs.txns(t.pair);
            let stats = &mut self.merchant_stats[pair.merchant as usize];
            if t.txns_before == 0 && after > 0 && t.entry != NONE {
                if let Some(order) = &mut stats.by_weight {
                    order.insert(t.entry, t.pair);
                }
            }
            stats.by_count.move_customer(t.txns_before, after);
            if !stats.touched {
                stats.touched = true;
                merchants.push(pair.merchant);
            }
        }
        merchants
    }

    /// Clears the chunk's touched marks.
    fn end_chunk(&mut self, touched: &[Touched], merchants: &[u32]) {
        for t in touched {
            self.pairs.untouch(t.pair);
        }
        for &m in merchants {
            self.merchant_stats[m as usize].touched = false;
        }
    }

    /// Asks each pattern what holds after the chunk and marks what is new as emitted;
    /// returns the keys in order, why each fired, and the same detections as (pattern,
    /// merchant, customer or `NONE`) indices.
    fn detect(&mut self, touched: &[Touched], merchants: &[u32]) -> Detected {
        let mut found: Vec<(PatternId, u32, u32, Evidence)> = Vec::new();
        let mut candidates: Vec<(u32, Evidence)> = Vec::new();
        let (pairs, stats, weights) = (&self.pairs, &self.merchant_stats, &*self.weights);
        let facts = |m: u32| merchant_facts(&stats[m as usize], weights, pairs);
        for (pattern, emitted) in self.patterns.iter().zip(&mut self.emitted) {
            let id = pattern.id();
            match pattern.asks() {
                Asks::TouchedPairs => {
                    for t in touched {
                        let record = pairs.record(t.pair);
                        let pair = PairFacts {
                            txns: pairs.txns(t.pair),
                            cents: pairs.cents(t.pair),
                            gender: record.gender(),
                        };
                        if let Some(evidence) = pattern.pair(&pair) {
                            if !emitted.insert(t.pair) {
                                found.push((id, record.merchant, record.customer, evidence));
                            }
                        }
                    }
                }
                Asks::TouchedMerchants => {
                    for &m in merchants {
                        if emitted.contains(m) {
                            continue;
                        }
                        if let Some(evidence) = pattern.merchant(&facts(m)) {
                            emitted.insert(m);
                            found.push((id, m, NONE, evidence));
                        }
                    }
                }
                Asks::CustomersOfTouchedMerchants => {
                    for &m in merchants {
                        let done = &*emitted;
                        pattern.customers(&facts(m), &|p| done.contains(p), &mut candidates);
                        for (p, evidence) in candidates.drain(..) {
                            if !emitted.insert(p) {
                                found.push((id, m, pairs.record(p).customer, evidence));
                            }
                        }
                    }
                }
            }
        }
        let mut keyed: Vec<(DetectionKey, Evidence, (u8, u32, u32))> = found
            .into_iter()
            .map(|(pattern, m, c, evidence)| {
                let key = DetectionKey {
                    pattern,
                    merchant: self.merchants.name(m).to_string(),
                    customer: if c == NONE {
                        String::new()
                    } else {
                        self.customers.name(c).to_string()
                    },
                };
                (key, evidence, (pattern.number(), m, c))
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Detected::default();
        for (key, evidence, indices) in keyed {
            out.0.push(key);
            out.1.push(evidence);
            out.2.push(indices);
        }
        out
    }

    /// Stats of the pairs a delta touched, as they are now (for the analytics tables).
    pub fn pairs_of<'a>(
        &'a self,
        delta: &'a ChunkDelta,
    ) -> impl Iterator<Item = PairView<'a>> + 'a {
        delta
            .pairs
            .iter()
            .filter_map(move |d| self.pair_view(d.merchant, d.customer))
    }

    fn pair_view(&self, m: u32, c: u32) -> Option<PairView<'_>> {
        let p = self.pairs.find(m, c)?;
        let pair = self.pairs.record(p);
        let customer = self.customers.name(c);
        Some(PairView {
            merchant: self.merchants.name(m),
            customer,
            txns: self.pairs.txns(p),
            cents: self.pairs.cents(p),
            gender: pair.gender(),
            weight: self.weight_of(p, hash_bytes(customer.as_bytes()), customer),
        })
    }

    /// Stats of one pair by name.
    pub fn pair(&self, merchant: &str, customer: &str) -> Option<PairView<'_>> {
        self.pair_view(self.merchants.get(merchant)?, self.customers.get(customer)?)
    }

    /// Stats of every merchant, in first-seen order.
    pub fn merchants(&self) -> impl Iterator<Item = MerchantView<'_>> {
        self.merchant_stats
            .iter()
            .enumerate()
            .map(|(m, s)| MerchantView {
                merchant: self.merchants.name(m as u32),
                txns: s.txns,
                customers: s.by_count.len(),
                female: s.female,
                male: s.male,
            })
    }

    /// The (merchant, customer) indices of a detection's identity, as deltas store them
    /// (customer `u32::MAX` for merchant-only patterns); `None` if a name is unknown.
    pub fn detection_indices(&self, key: &DetectionKey) -> Option<(u32, u32)> {
        let m = self.merchants.get(&key.merchant)?;
        let (_, pattern) = self.patterns.by_number(u64::from(key.pattern.number()))?;
        let c = if pattern.asks().per_pair() {
            self.customers.get(&key.customer)?
        } else {
            u32::MAX
        };
        Some((m, c))
    }

    /// The detection identity for stored indices (the inverse of
    /// [`Engine::detection_indices`]); `None` if an index is unknown.
    pub fn detection_key(&self, pattern: PatternId, m: u32, c: u32) -> Option<DetectionKey> {
        let merchant = (m as usize) < self.merchants.len();
        let customer = c == u32::MAX || (c as usize) < self.customers.len();
        (merchant && customer).then(|| DetectionKey {
            pattern,
            merchant: self.merchants.name(m).to_string(),
            customer: if c == u32::MAX {
                String::new()
            } else {
                self.customers.name(c).to_string()
            },
        })
    }

    /// The weight table the engine reads.
    pub fn weights(&self) -> &Arc<ImportanceTable> {
        &self.weights
    }
}

/// A merchant's stats as patterns read them.
fn merchant_facts<'a>(
    s: &'a MerchantStats,
    weights: &'a ImportanceTable,
    pairs: &'a PairTable,
) -> MerchantFacts<'a> {
    MerchantFacts {
        txns: s.txns,
        female: s.female,
        male: s.male,
        by_count: &s.by_count,
        by_weight: s.by_weight.as_ref(),
        weights,
        importance: s.importance,
        pairs,
    }
}

/// The importance entry of (merchant, customer): the merchant's index in the table and
/// the customer's id with its [`hash_bytes`].
#[inline]
fn importance_entry(
    weights: &ImportanceTable,
    merchant: u32,
    customer_hash: u64,
    customer: &str,
) -> u32 {
    if merchant == NONE {
        return NONE;
    }
    let customer = weights.customer_index_hashed(customer_hash, customer);
    weights.entry(merchant, customer).unwrap_or(NONE)
}

/// A chunk's new detections: their keys in order, why each fired, and their indices.
#[derive(Default)]
struct Detected(Vec<DetectionKey>, Vec<Evidence>, Vec<(u8, u32, u32)>);
