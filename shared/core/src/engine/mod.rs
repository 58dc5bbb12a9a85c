//! The pattern engine: running stats (SPEC §3) and pattern detection (SPEC §4–§5).
//!
//! Pure and synchronous: bytes of a chunk in, detections and a compact [`ChunkDelta`]
//! out. The cost of a chunk is proportional to its rows and the merchants it touches:
//! per merchant it keeps a count histogram with order statistics and the customers
//! ordered by weight, so the PatId1 thresholds are a logarithmic query and the
//! candidates a short range from the low-weight end, never a sort.

mod codec;
mod histogram;
mod names;

pub use codec::{ChunkDelta, CodecError, PairDelta};
pub use histogram::CountHistogram;
pub use names::Names;

use crate::config::PatternConfig;
use crate::detection::{DetectionKey, PatternId};
use crate::parse::{Gender, HeaderError, ImportanceTable, RejectedRow, TransactionReader};
use crate::percentile::{nearest_rank, BP_WHOLE};
use crate::weight::Weight;
use rustc_hash::FxHashMap;
use std::collections::BTreeSet;
use std::sync::Arc;

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
}

/// Running totals across all applied chunks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Valid rows applied.
    pub rows: u64,
    /// Rows rejected.
    pub rejected: u64,
    /// Detections emitted, per pattern (index by [`PatternId::index`]).
    pub detections: [u64; 3],
}

/// Stats of one customer at one merchant.
#[derive(Debug, Clone)]
struct PairStats {
    merchant: u32,
    customer: u32,
    /// n(m,c).
    txns: u64,
    /// s(m,c) in cents.
    cents: u128,
    /// Gender of the first valid transaction at m.
    gender: Gender,
    /// w(m,c), looked up once when the pair first appears.
    weight: Option<Weight>,
    /// Bit per pattern already emitted for this pair (emit-once).
    emitted: u8,
    /// `chunk + 1` of the last chunk that touched the pair (0 = never).
    touched_in: u64,
}

/// Stats and order statistics of one merchant.
#[derive(Debug, Default, Clone)]
struct MerchantStats {
    /// N(m).
    txns: u64,
    /// F(m), M(m).
    female: u64,
    male: u64,
    dei_emitted: bool,
    /// n(m,c) for every c in C(m): |C(m)| and the count percentile.
    by_count: CountHistogram,
    /// (w(m,c), pair index) for every c in C(m) that has a weight. Changes only when a
    /// customer first appears at m, so it is cheap to keep sorted.
    by_weight: BTreeSet<(Weight, u32)>,
    touched_in: u64,
}

const EMITTED_UPGRADE: u8 = 1;
const EMITTED_CHILD: u8 = 2;

/// The result of applying one chunk.
#[derive(Debug)]
pub struct ChunkOutcome {
    /// The state change, for persistence.
    pub delta: ChunkDelta,
    /// New detections, in SPEC §5 order.
    pub detections: Vec<DetectionKey>,
    /// Rows rejected, with reasons.
    pub rejected: Vec<RejectedRow>,
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

/// The running state of mechanism Y.
#[derive(Debug, Clone)]
pub struct Engine {
    config: PatternConfig,
    weights: Arc<ImportanceTable>,
    merchants: Names,
    customers: Names,
    merchant_stats: Vec<MerchantStats>,
    pair_index: FxHashMap<(u32, u32), u32>,
    pairs: Vec<PairStats>,
    next_chunk: u64,
    totals: Totals,
}

/// A pair touched by the current chunk, with its values before the chunk.
struct Touched {
    pair: u32,
    txns_before: u64,
    cents_before: u128,
}

impl Engine {
    /// An empty engine: no chunk applied yet.
    pub fn new(config: PatternConfig, weights: Arc<ImportanceTable>) -> Self {
        Engine {
            config,
            weights,
            merchants: Names::default(),
            customers: Names::default(),
            merchant_stats: Vec::new(),
            pair_index: FxHashMap::default(),
            pairs: Vec::new(),
            next_chunk: 0,
            totals: Totals::default(),
        }
    }

    /// The pattern thresholds in use.
    pub fn config(&self) -> &PatternConfig {
        &self.config
    }

    /// The chunk the engine takes next (= number of chunks applied).
    pub fn next_chunk(&self) -> u64 {
        self.next_chunk
    }

    /// Totals so far.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Number of merchants, customers and (merchant, customer) pairs seen.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.merchants.len(), self.customers.len(), self.pairs.len())
    }

    /// Applies chunk `chunk` (its bytes, header first) and detects what became true.
    /// `first_row` is the 1-based source row number of the chunk's first data row.
    pub fn apply_chunk(
        &mut self,
        chunk: u64,
        data: &[u8],
        first_row: u64,
    ) -> Result<ChunkOutcome, ApplyError> {
        if chunk != self.next_chunk {
            return Err(ApplyError::OutOfOrder {
                expected: self.next_chunk,
                got: chunk,
            });
        }
        let reader = TransactionReader::new(data, first_row)
            .map_err(|source| ApplyError::Header { chunk, source })?;
        let mark = chunk + 1;
        let (merchants_before, customers_before) = (self.merchants.len(), self.customers.len());
        let mut touched: Vec<Touched> = Vec::new();
        let mut rejected = Vec::new();
        let mut rows = 0u64;
        for row in reader {
            let tx = match row {
                Ok(tx) => tx,
                Err(rejection) => {
                    rejected.push(rejection);
                    continue;
                }
            };
            let m = self.merchants.intern(&tx.merchant);
            let c = self.customers.intern(&tx.customer);
            rows += 1;
            let p = self.pair_for(m, c, tx.gender);
            let pair = &mut self.pairs[p as usize];
            if pair.touched_in != mark {
                pair.touched_in = mark;
                touched.push(Touched {
                    pair: p,
                    txns_before: pair.txns,
                    cents_before: pair.cents,
                });
            }
            pair.txns += 1;
            pair.cents += u128::from(tx.cents);
            self.merchant_stats[m as usize].txns += 1;
        }
        let touched_merchants = self.reindex(&touched, mark);
        let detections = self.detect(&touched, &touched_merchants);

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
                    let pair = &self.pairs[t.pair as usize];
                    PairDelta {
                        merchant: pair.merchant,
                        customer: pair.customer,
                        txns: pair.txns - t.txns_before,
                        cents: pair.cents - t.cents_before,
                        gender: pair.gender,
                    }
                })
                .collect(),
            detections: detections
                .iter()
                .map(|d| {
                    let m = self.merchants.get(&d.merchant).unwrap_or(u32::MAX);
                    let c = self.customers.get(&d.customer).unwrap_or(u32::MAX);
                    (d.pattern, m, c)
                })
                .collect(),
        };
        self.totals.rows += rows;
        self.totals.rejected += rejected.len() as u64;
        for d in &detections {
            self.totals.detections[d.pattern.index()] += 1;
        }
        self.next_chunk += 1;
        Ok(ChunkOutcome {
            delta,
            detections,
            rejected,
        })
    }

    /// Takes chunk `chunk` as wholly rejected because its header is unusable: every
    /// non-blank line after the first is kept as a rejected row with `why`, and the
    /// stream moves on, so one bad object never stops it.
    pub fn reject_chunk(
        &mut self,
        chunk: u64,
        data: &[u8],
        first_row: u64,
        why: &str,
    ) -> Result<ChunkOutcome, ApplyError> {
        let mut rejected = Vec::new();
        let mut pos = 0;
        let mut header_seen = false;
        let mut scanner = crate::parse::csv_scan::Scanner::new();
        while let Some(span) = scanner.next_record(data, pos, true) {
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
                raw: data[span.start..span.end].to_vec(),
                reason: crate::parse::RejectReason::UnreadableChunk { why: why.into() },
            });
        }
        let delta = ChunkDelta {
            chunk,
            rows: 0,
            rejected: rejected.len() as u64,
            merchants_before: self.merchants.len() as u32,
            customers_before: self.customers.len() as u32,
            new_merchants: Vec::new(),
            new_customers: Vec::new(),
            pairs: Vec::new(),
            detections: Vec::new(),
        };
        self.apply_delta(&delta)?;
        Ok(ChunkOutcome {
            delta,
            detections: Vec::new(),
            rejected,
        })
    }

    /// Replays a stored delta: the same state change as the `apply_chunk` that made it,
    /// without parsing or detecting again.
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
        for name in &delta.new_merchants {
            self.merchants.intern(name);
        }
        for name in &delta.new_customers {
            self.customers.intern(name);
        }
        let mark = delta.chunk + 1;
        let mut touched = Vec::with_capacity(delta.pairs.len());
        for d in &delta.pairs {
            if d.merchant as usize >= self.merchants.len()
                || d.customer as usize >= self.customers.len()
            {
                return Err(bad(format!(
                    "pair ({}, {}) names an unknown index",
                    d.merchant, d.customer
                )));
            }
            let p = self.pair_for(d.merchant, d.customer, d.gender);
            let pair = &mut self.pairs[p as usize];
            if pair.touched_in == mark {
                return Err(bad(format!(
                    "pair ({}, {}) appears twice",
                    d.merchant, d.customer
                )));
            }
            pair.touched_in = mark;
            touched.push(Touched {
                pair: p,
                txns_before: pair.txns,
                cents_before: pair.cents,
            });
            pair.txns += d.txns;
            pair.cents += d.cents;
            self.merchant_stats[d.merchant as usize].txns += d.txns;
        }
        self.reindex(&touched, mark);
        for &(pattern, m, c) in &delta.detections {
            self.mark_emitted(pattern, m, c).map_err(bad)?;
            self.totals.detections[pattern.index()] += 1;
        }
        self.totals.rows += delta.rows;
        self.totals.rejected += delta.rejected;
        self.next_chunk += 1;
        Ok(())
    }

    fn mark_emitted(&mut self, pattern: PatternId, m: u32, c: u32) -> Result<(), String> {
        let unknown = || format!("detection {pattern:?} names unknown merchant/customer {m}/{c}");
        match pattern {
            PatternId::DeiNeeded => {
                self.merchant_stats
                    .get_mut(m as usize)
                    .ok_or_else(unknown)?
                    .dei_emitted = true
            }
            PatternId::Upgrade | PatternId::Child => {
                let p = *self.pair_index.get(&(m, c)).ok_or_else(unknown)?;
                self.pairs[p as usize].emitted |= if pattern == PatternId::Upgrade {
                    EMITTED_UPGRADE
                } else {
                    EMITTED_CHILD
                };
            }
        }
        Ok(())
    }

    /// The pair (m, c), created (with its first-seen gender and its weight) if new.
    fn pair_for(&mut self, m: u32, c: u32, gender: Gender) -> u32 {
        if m as usize >= self.merchant_stats.len() {
            self.merchant_stats
                .resize_with(m as usize + 1, MerchantStats::default);
        }
        if let Some(&p) = self.pair_index.get(&(m, c)) {
            return p;
        }
        let p = self.pairs.len() as u32;
        let weight = self
            .weights
            .weight(self.merchants.name(m), self.customers.name(c));
        self.pairs.push(PairStats {
            merchant: m,
            customer: c,
            txns: 0,
            cents: 0,
            gender,
            weight,
            emitted: 0,
            touched_in: 0,
        });
        self.pair_index.insert((m, c), p);
        let stats = &mut self.merchant_stats[m as usize];
        match gender {
            Gender::Female => stats.female += 1,
            Gender::Male => stats.male += 1,
            Gender::Other => {}
        }
        p
    }

    /// Moves touched pairs to their new place in their merchant's order statistics and
    /// returns the touched merchants.
    fn reindex(&mut self, touched: &[Touched], mark: u64) -> Vec<u32> {
        let mut merchants = Vec::new();
        for t in touched {
            let pair = &self.pairs[t.pair as usize];
            let stats = &mut self.merchant_stats[pair.merchant as usize];
            if t.txns_before == 0 {
                if let Some(w) = pair.weight {
                    stats.by_weight.insert((w, t.pair));
                }
            }
            stats.by_count.move_customer(t.txns_before, pair.txns);
            if stats.touched_in != mark {
                stats.touched_in = mark;
                merchants.push(pair.merchant);
            }
        }
        merchants
    }

    /// Finds what newly holds after the chunk, marks it emitted, and returns it in order.
    fn detect(&mut self, touched: &[Touched], merchants: &[u32]) -> Vec<DetectionKey> {
        let cfg = &self.config;
        let mut found: Vec<(PatternId, u32, u32)> = Vec::new();
        // CHILD depends only on the pair's own stats: only touched pairs can change.
        for t in touched {
            let pair = &mut self.pairs[t.pair as usize];
            if pair.emitted & EMITTED_CHILD == 0
                && pair.txns >= cfg.child_min_txns
                && pair.cents < u128::from(cfg.child_avg_below_cents) * u128::from(pair.txns)
            {
                pair.emitted |= EMITTED_CHILD;
                found.push((PatternId::Child, pair.merchant, pair.customer));
            }
        }
        for &m in merchants {
            let stats = &mut self.merchant_stats[m as usize];
            if !stats.dei_emitted && stats.female > cfg.dei_min_female && stats.female < stats.male
            {
                stats.dei_emitted = true;
                found.push((PatternId::DeiNeeded, m, u32::MAX));
            }
            if stats.txns > cfg.upgrade_min_merchant_txns {
                // Thresholds move when any customer of m changes, so every customer of m
                // at or below the weight threshold is a candidate, not just touched ones.
                let Some((t_count, t_weight)) = upgrade_thresholds(stats, cfg) else {
                    continue;
                };
                for &(w, p) in &stats.by_weight {
                    if w > t_weight {
                        break;
                    }
                    let pair = &mut self.pairs[p as usize];
                    if pair.emitted & EMITTED_UPGRADE == 0 && pair.txns >= t_count {
                        pair.emitted |= EMITTED_UPGRADE;
                        found.push((PatternId::Upgrade, m, pair.customer));
                    }
                }
            }
        }
        let mut keys: Vec<DetectionKey> = found
            .into_iter()
            .map(|(pattern, m, c)| DetectionKey {
                pattern,
                merchant: self.merchants.name(m).to_string(),
                customer: if c == u32::MAX {
                    String::new()
                } else {
                    self.customers.name(c).to_string()
                },
            })
            .collect();
        keys.sort();
        keys
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
        let p = self.pair_index.get(&(m, c))?;
        let pair = &self.pairs[*p as usize];
        Some(PairView {
            merchant: self.merchants.name(m),
            customer: self.customers.name(c),
            txns: pair.txns,
            cents: pair.cents,
            gender: pair.gender,
            weight: pair.weight,
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
        let c = match key.pattern {
            PatternId::DeiNeeded => u32::MAX,
            _ => self.customers.get(&key.customer)?,
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

/// `Tcount(m)` and `Tweight(m)` (SPEC §4), or `None` when no customer of m has a weight.
fn upgrade_thresholds(stats: &MerchantStats, cfg: &PatternConfig) -> Option<(u64, Weight)> {
    let n = stats.by_count.len();
    let t_count = stats
        .by_count
        .kth(nearest_rank(BP_WHOLE - cfg.upgrade_top_bp, n))?;
    let nw = stats.by_weight.len() as u64;
    if nw == 0 {
        return None;
    }
    let rank_w = nearest_rank(cfg.upgrade_bottom_bp, nw);
    let t_weight = stats.by_weight.iter().nth((rank_w - 1) as usize)?.0;
    Some((t_count, t_weight))
}

#[cfg(test)]
mod tests;
