//! CustomerImportance.csv: the weight of each customer at each merchant.

use super::csv_scan::{strip_single_quotes, RowReader, Scanner};
use super::decimal::parse_micros;
use super::header::{ColumnMap, HeaderError};
use super::ids::check_no_nul;
use super::transactions::{take_id, RejectReason};
use super::RejectedRow;
use crate::index::{hash_bytes, hash_pair, ShardedIndex};
use crate::names::{Names, NONE};
use crate::weight::Weight;
use rustc_hash::FxHashMap;
use std::borrow::Cow;

/// The columns read from CustomerImportance.csv (`typeTrans` and `fraud` are ignored).
pub const IMPORTANCE_COLUMNS: [&str; 3] = ["Source", "Target", "Weight"];

/// `w(m,c)` for every (merchant, customer) pair that has importance rows.
///
/// Compact and ordered for the engine: ids are interned once; the entries (one per
/// pair, 12 bytes) are sorted by merchant, then weight, so each merchant's customers
/// form one run in weight order and an entry's position is its place in that order;
/// equal means share one stored [`Weight`], and a weight's position in the table
/// orders weights exactly within a merchant.
#[derive(Debug, Default, Clone)]
pub struct ImportanceTable {
    merchants: Names,
    customers: Names,
    /// Sorted by (merchant, weight, customer).
    entries: Vec<Entry>,
    /// Entries of importance merchant `m` are `merchant_start[m]..merchant_start[m + 1]`.
    merchant_start: Vec<u32>,
    /// Distinct (merchant, mean) weights, ascending within each merchant.
    weights: Weights,
    /// (merchant, customer) → entry.
    index: ShardedIndex,
    rows: u64,
}

/// Weights as 12 bytes each (a sum of micro-units that fits `i64` over at most `u32`
/// rows, as real files give) instead of [`Weight`]'s 32; any other goes to `wide`.
#[derive(Debug, Default, Clone)]
struct Weights {
    sums: Vec<i64>,
    /// Rows averaged; 0 means `sums[i]` is an index into `wide`.
    rows: Vec<u32>,
    wide: Vec<Weight>,
}

impl Weights {
    fn push(&mut self, w: Weight) {
        match (i64::try_from(w.micros_sum()), u32::try_from(w.rows())) {
            (Ok(sum), Ok(rows)) if rows > 0 => {
                self.sums.push(sum);
                self.rows.push(rows);
            }
            _ => {
                self.sums.push(self.wide.len() as i64);
                self.rows.push(0);
                self.wide.push(w);
            }
        }
    }

    fn get(&self, i: usize) -> Option<Weight> {
        match (self.sums.get(i), self.rows.get(i)) {
            (Some(&index), Some(0)) => self.wide.get(usize::try_from(index).ok()?).copied(),
            (Some(&sum), Some(&rows)) => Some(Weight::new(i128::from(sum), u64::from(rows))),
            _ => None,
        }
    }

    fn len(&self) -> usize {
        self.sums.len()
    }

    fn heap_bytes(&self) -> usize {
        self.sums.capacity() * 8
            + self.rows.capacity() * 4
            + self.wide.capacity() * std::mem::size_of::<Weight>()
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    merchant: u32,
    customer: u32,
    /// Into `weights`.
    weight: u32,
}

/// Below this many bytes per thread, a file is parsed on one thread.
const PARALLEL_MIN_BYTES: usize = 4 << 20;

/// Splits rows into about `n` pieces of similar size, each starting at a record
/// boundary (found by scanning, since a quoted field may hold line breaks).
fn split_at_records(body: &[u8], n: usize) -> Vec<&[u8]> {
    if n <= 1 {
        return vec![body];
    }
    let mut scanner = Scanner::new();
    let (mut pieces, mut start, mut pos) = (Vec::new(), 0, 0);
    let step = body.len() / n;
    while let Some(span) = scanner.next_record(body, pos, true) {
        pos = span.next;
        if pos >= start + step && pieces.len() + 1 < n {
            pieces.push(&body[start..pos]);
            start = pos;
        }
    }
    pieces.push(&body[start..]);
    pieces
}

/// One piece of the file, parsed on its own: ids in its own tables, sums by its own
/// indices, rejected rows numbered from 1 within the piece.
#[derive(Default)]
struct Part {
    merchants: Names,
    customers: Names,
    /// (merchant, customer) → (sum of micro-units, rows): 12 bytes of value while sums
    /// fit (the map stays in cache), exact in `wide` beyond.
    sums: FxHashMap<u64, (i64, u32)>,
    wide: FxHashMap<u64, (i128, u64)>,
    rejected: Vec<RejectedRow>,
    /// Data rows seen, and rows that contributed.
    rows: u64,
    accepted: u64,
}

impl Part {
    fn parse(buf: &[u8], columns: &ColumnMap) -> Part {
        let [source, target, weight] = [0, 1, 2].map(|i| columns.positions[i]);
        let mut part = Part::default();
        let mut rows = RowReader::body(buf);
        while let Some(raw) = rows.next_row() {
            part.rows += 1;
            let fields = &mut rows.fields;
            let fault = rows.fault;
            let parsed = (|| {
                if let Some(fault) = fault {
                    return Err(RejectReason::from(fault));
                }
                check_no_nul(raw)?;
                if fields.len() != columns.width {
                    return Err(RejectReason::FieldCount {
                        expected: columns.width,
                        found: fields.len(),
                    });
                }
                let customer = resolve(&part.customers, &mut fields[source], "Source")?;
                let merchant = resolve(&part.merchants, &mut fields[target], "Target")?;
                let text = strip_single_quotes(&fields[weight]);
                let micros = parse_micros(text).ok_or_else(|| RejectReason::BadWeight {
                    text: String::from_utf8_lossy(text).into_owned(),
                })?;
                let full = |_| RejectReason::TableFull;
                let m = merchant.intern(&mut part.merchants).map_err(full)?;
                let c = customer.intern(&mut part.customers).map_err(full)?;
                Ok((m, c, micros))
            })();
            match parsed {
                Ok((m, c, micros)) => {
                    part.accepted += 1;
                    let key = u64::from(m) << 32 | u64::from(c);
                    let entry = part.sums.entry(key).or_default();
                    match (entry.0.checked_add(micros), entry.1.checked_add(1)) {
                        (Some(sum), Some(n)) => *entry = (sum, n),
                        _ => {
                            let w = part.wide.entry(key).or_default();
                            w.0 += i128::from(micros);
                            w.1 += 1;
                        }
                    }
                }
                Err(reason) => part.rejected.push(RejectedRow {
                    row: part.rows,
                    raw: raw.to_vec(),
                    reason,
                }),
            }
        }
        part
    }
}

/// An id of a row: already in the table (so already checked), or new and checked now.
enum Id<'a> {
    Known(u32),
    New(Cow<'a, str>, u64),
}

impl Id<'_> {
    fn intern(self, names: &mut Names) -> Result<u32, crate::names::NamesFull> {
        match self {
            Id::Known(i) => Ok(i),
            Id::New(name, hash) => names.intern_hashed(hash, &name).map(|(i, _)| i),
        }
    }
}

/// Finds an id field among the names already seen (most rows repeat ids: no check, no
/// copy), or checks it against the id rule.
fn resolve<'a>(
    names: &Names,
    field: &mut Cow<'a, [u8]>,
    column: &'static str,
) -> Result<Id<'a>, RejectReason> {
    let hash = hash_bytes(strip_single_quotes(field));
    if let Some(i) = names.find_bytes(hash, strip_single_quotes(field)) {
        return Ok(Id::Known(i));
    }
    take_id(field, column).map(|name| Id::New(name, hash))
}

/// The table plus the rows that could not be used.
#[derive(Debug)]
pub struct ImportanceLoad {
    /// The weights.
    pub table: ImportanceTable,
    /// Rows rejected, with reasons.
    pub rejected: Vec<RejectedRow>,
}

impl ImportanceTable {
    /// Parses a whole CustomerImportance.csv. A large file is parsed in parts on
    /// several threads (split at record boundaries, merged in file order), with the
    /// same result as one pass.
    pub fn parse(buf: &[u8]) -> Result<ImportanceLoad, HeaderError> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(buf.len() / PARALLEL_MIN_BYTES)
            .clamp(1, 8);
        Self::parse_on(buf, threads)
    }

    /// [`ImportanceTable::parse`] in `threads` pieces.
    fn parse_on(buf: &[u8], threads: usize) -> Result<ImportanceLoad, HeaderError> {
        let rows = RowReader::new(buf);
        let columns = ColumnMap::find("CustomerImportance", rows.header(), &IMPORTANCE_COLUMNS)?;
        let body = rows.rest();
        let pieces = split_at_records(body, threads);
        let mut parts: Vec<Part> = if pieces.len() == 1 {
            vec![Part::parse(body, &columns)]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = pieces
                    .iter()
                    .map(|&piece| {
                        let columns = &columns;
                        scope.spawn(move || Part::parse(piece, columns))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        };
        let mut table = ImportanceTable::default();
        let mut sums: FxHashMap<u64, (i128, u64)> = FxHashMap::default();
        let mut rejected = Vec::new();
        let mut rows_before = 0u64;
        for part in parts.drain(..) {
            table.rows += part.accepted;
            // The part's own indices → the table's, in first-seen order.
            let remap = |from: &Names, to: &mut Names| -> Vec<u32> {
                from.since(0)
                    .map(|name| to.intern(name).unwrap_or(NONE))
                    .collect()
            };
            let merchants = remap(&part.merchants, &mut table.merchants);
            let customers = remap(&part.customers, &mut table.customers);
            let exact = part
                .sums
                .into_iter()
                .map(|(key, (sum, n))| (key, (i128::from(sum), u64::from(n))))
                .chain(part.wide);
            for (key, (sum, n)) in exact {
                let (m, c) = (
                    merchants[(key >> 32) as usize],
                    customers[key as u32 as usize],
                );
                if m == NONE || c == NONE {
                    continue; // the table is full; such rows were kept as rejected
                }
                let e = sums.entry(u64::from(m) << 32 | u64::from(c)).or_default();
                e.0 += sum;
                e.1 += n;
            }
            rejected.extend(part.rejected.into_iter().map(|mut r| {
                r.row += rows_before;
                r
            }));
            rows_before += part.rows;
        }
        table.build(sums);
        Ok(ImportanceLoad { table, rejected })
    }

    /// Sorts the pairs into entries and indexes them.
    fn build(&mut self, sums: FxHashMap<u64, (i128, u64)>) {
        let mut items: Vec<(u32, u32, Weight)> = sums
            .into_iter()
            .map(|(key, (sum, n))| ((key >> 32) as u32, key as u32, Weight::new(sum, n)))
            .collect();
        items.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)).then(a.1.cmp(&b.1)));
        self.entries = Vec::with_capacity(items.len());
        self.merchant_start = vec![0; self.merchants.len() + 1];
        for (i, &(m, c, w)) in items.iter().enumerate() {
            let same_weight = i > 0 && items[i - 1].0 == m && items[i - 1].2 == w;
            if !same_weight {
                self.weights.push(w);
            }
            self.entries.push(Entry {
                merchant: m,
                customer: c,
                weight: (self.weights.len() - 1) as u32,
            });
            self.merchant_start[m as usize + 1] = (i + 1) as u32;
        }
        // Merchants without entries start where the previous one ended.
        for m in 1..self.merchant_start.len() {
            self.merchant_start[m] = self.merchant_start[m].max(self.merchant_start[m - 1]);
        }
        let entries = &self.entries;
        let hash = |i: u32| {
            let e = &entries[i as usize];
            hash_pair(e.merchant, e.customer)
        };
        // Keys are distinct: they come from a map.
        self.index = ShardedIndex::build(entries.len(), hash, 1, |_, _| false).unwrap_or_default();
    }

    /// `w(m,c)`, if customer `c` has any importance row at merchant `m`.
    pub fn weight(&self, merchant: &str, customer: &str) -> Option<Weight> {
        let m = self.merchants.get(merchant)?;
        let c = self.customers.get(customer)?;
        self.entry(m, c).and_then(|e| self.entry_weight(e))
    }

    /// Number of rows that contributed to the table.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Number of (merchant, customer) pairs with a weight.
    pub fn pairs(&self) -> usize {
        self.entries.len()
    }

    /// Heap bytes held, for capacity figures.
    pub fn heap_bytes(&self) -> usize {
        self.merchants.heap_bytes()
            + self.customers.heap_bytes()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.merchant_start.capacity() * 4
            + self.weights.heap_bytes()
            + self.index.allocated_bytes()
    }

    /// The table's index of a merchant id, or [`NONE`].
    pub(crate) fn merchant_index(&self, merchant: &str) -> u32 {
        self.merchants.get(merchant).unwrap_or(NONE)
    }

    /// Reads the home bucket of a customer id's hash (cache warming, see the `index`
    /// module).
    #[inline]
    pub(crate) fn touch_customer(&self, hash: u64) -> u32 {
        self.customers.touch_bucket(hash)
    }

    /// The table's index of a customer id (with its hash), or [`NONE`].
    #[inline]
    pub(crate) fn customer_index_hashed(&self, hash: u64, customer: &str) -> u32 {
        self.customers.get_hashed(hash, customer).unwrap_or(NONE)
    }

    /// The entry of (merchant, customer) in the table's own indices.
    #[inline]
    pub(crate) fn entry(&self, merchant: u32, customer: u32) -> Option<u32> {
        if merchant == NONE || customer == NONE {
            return None;
        }
        let entries = &self.entries;
        self.index.find(hash_pair(merchant, customer), |i| {
            let e = &entries[i as usize];
            e.merchant == merchant && e.customer == customer
        })
    }

    /// Every entry: (the table's merchant index, the customer's id, entry position).
    pub(crate) fn entries(&self) -> impl Iterator<Item = (u32, &str, u32)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.merchant, self.customers.name(e.customer), i as u32))
    }

    /// Number of merchants the table knows.
    pub(crate) fn merchant_count(&self) -> usize {
        self.merchants.len()
    }

    /// The entries of a merchant (its customers in weight order), as a range of entry
    /// positions.
    pub(crate) fn merchant_entries(&self, merchant: u32) -> std::ops::Range<u32> {
        let m = merchant as usize;
        match (self.merchant_start.get(m), self.merchant_start.get(m + 1)) {
            (Some(&a), Some(&b)) => a..b,
            _ => 0..0,
        }
    }

    /// The weight of an entry, as a rank: within one merchant, ranks order weights
    /// exactly and equal ranks are equal weights.
    #[inline]
    pub(crate) fn entry_rank(&self, entry: u32) -> u32 {
        self.entries.get(entry as usize).map_or(NONE, |e| e.weight)
    }

    /// The weight of an entry.
    pub(crate) fn entry_weight(&self, entry: u32) -> Option<Weight> {
        self.weights.get(self.entry_rank(entry) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_is_mean_over_all_type_trans() {
        let text = "Source,Target,Weight,typeTrans,fraud\n'C1','M1',4.55,'es_food',0\n'C1','M1',1.00,'es_bar',0\n\"C2\",M1,3,x,1\n";
        let load = ImportanceTable::parse(text.as_bytes()).unwrap();
        assert!(load.rejected.is_empty());
        assert_eq!(
            load.table.weight("M1", "C1"),
            Some(Weight::new(5_550_000, 2))
        );
        assert_eq!(
            load.table.weight("M1", "C2"),
            Some(Weight::new(3_000_000, 1))
        );
        assert_eq!(load.table.weight("M2", "C1"), None);
        assert_eq!(load.table.rows(), 3);
    }

    #[test]
    fn bad_weight_rows_are_kept_with_reasons() {
        let text = "Source,Target,Weight,typeTrans,fraud\r\n'C1','M1',abc,'x',0\r\n'C1','M1',2,'x'\r\n'','M1',2,'x',0\r\n";
        let load = ImportanceTable::parse(text.as_bytes()).unwrap();
        let reasons: Vec<_> = load
            .rejected
            .iter()
            .map(|r| (r.row, r.reason.clone()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (1, RejectReason::BadWeight { text: "abc".into() }),
                (
                    2,
                    RejectReason::FieldCount {
                        expected: 5,
                        found: 4
                    }
                ),
                (3, RejectReason::EmptyField { column: "Source" }),
            ]
        );
        assert_eq!(load.table.pairs(), 0);
    }

    #[test]
    fn id_rules_and_nul_apply_to_importance_rows() {
        let long = "C".repeat(129);
        let mut text = b"Source,Target,Weight,typeTrans,fraud\n".to_vec();
        text.extend_from_slice(format!("'{long}','M1',1,'x',0\n").as_bytes());
        text.extend_from_slice(b"'C1','M\t1',1,'x',0\n");
        text.extend_from_slice(b"'C1','M1',1,'x\0',0\n");
        text.extend_from_slice(b"'C\xff','M1',1,'x',0\n");
        text.extend_from_slice(b"'C1','M1',1,'caf\xe9',0\n"); // unused column: fine
        text.extend_from_slice(format!("'{}','M1',2,'x',0\n", "C".repeat(128)).as_bytes());
        let load = ImportanceTable::parse(&text).unwrap();
        let reasons: Vec<_> = load
            .rejected
            .iter()
            .map(|r| (r.row, r.reason.clone()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (
                    1,
                    RejectReason::IdTooLong {
                        column: "Source",
                        len: 129,
                        limit: 128
                    }
                ),
                (
                    2,
                    RejectReason::ControlCharacter {
                        column: "Target",
                        code: 9
                    }
                ),
                (3, RejectReason::NulByte { offset: 14 }),
                (4, RejectReason::NotUtf8 { column: "Source" }),
            ]
        );
        assert_eq!(load.rejected[2].raw, b"'C1','M1',1,'x\0',0");
        assert_eq!(
            load.table.weight("M1", "C1"),
            Some(Weight::new(1_000_000, 1))
        );
        assert_eq!(
            load.table.weight("M1", &"C".repeat(128)),
            Some(Weight::new(2_000_000, 1))
        );
        assert_eq!(load.table.rows(), 2);
    }

    #[test]
    fn sums_past_i64_keep_their_exact_mean() {
        let text = "Source,Target,Weight,typeTrans,fraud\nC1,M1,9000000000000,x,0\nC1,M1,9000000000000,x,0\nC2,M1,1,x,0\n";
        let load = ImportanceTable::parse(text.as_bytes()).unwrap();
        let w = load.table.weight("M1", "C1").unwrap();
        assert_eq!(w.micros_sum(), 18_000_000_000_000_000_000);
        assert_eq!(w, Weight::new(9_000_000_000_000_000_000, 1));
        assert!(load.table.weight("M1", "C2").unwrap() < w);
    }

    #[test]
    fn parts_parsed_apart_merge_to_the_one_pass_result() {
        let mut text = String::from("Source,Target,Weight,typeTrans,fraud\n");
        for i in 0..3000 {
            let c = i % 97;
            let m = i % 7;
            match i % 500 {
                13 => text.push_str("bad,row\n"),
                14 => text.push_str(&format!("\"C{c}\n\",M{m},1,x,0\n")),
                _ => text.push_str(&format!("'C{c}','M{m}',{}.{},'x',0\n", i % 10, i % 7)),
            }
        }
        let (rows, columns) = {
            let r = RowReader::new(text.as_bytes());
            let columns = ColumnMap::find("t", r.header(), &IMPORTANCE_COLUMNS).unwrap();
            (r.rest(), columns)
        };
        let whole = ImportanceTable::parse_on(text.as_bytes(), 1).unwrap();
        // The quoted id holds a line break: a control character, so rejected too.
        assert_eq!(whole.rejected.len(), 12);
        assert_eq!(whole.rejected[0].row, 14);
        assert_eq!(whole.table.rows(), 2988);
        for n in [2, 3, 7] {
            let pieces = split_at_records(rows, n);
            assert_eq!(pieces.len(), n);
            assert_eq!(pieces.concat(), rows);
            // A piece never starts inside the quoted line break.
            assert!(pieces.iter().all(|p| !p.starts_with(b"\",M")));
            let seen: u64 = pieces.iter().map(|p| Part::parse(p, &columns).rows).sum();
            assert_eq!(seen, 3000);
            let split = ImportanceTable::parse_on(text.as_bytes(), n).unwrap();
            assert_eq!(split.rejected, whole.rejected);
            assert_eq!(split.table.rows(), whole.table.rows());
            assert_eq!(split.table.pairs(), whole.table.pairs());
            for c in 0..98 {
                for m in 0..8 {
                    let (c, m) = (format!("C{c}"), format!("M{m}"));
                    assert_eq!(split.table.weight(&m, &c), whole.table.weight(&m, &c));
                }
            }
        }
    }

    #[test]
    fn missing_weight_column_rejects_file() {
        let err = ImportanceTable::parse(b"Source,Target,typeTrans\n").unwrap_err();
        assert!(err.to_string().contains("`Weight`"));
    }
}
