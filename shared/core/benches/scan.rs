//! CSV scanning: the hand fast path (memchr) in front of csv-core against csv-core
//! alone, on a data set's transactions.csv, one thread. The figures back the choice
//! written in `parse/csv_scan.rs`.
//!
//! `TXPIPE_BENCH_DATA=dir cargo bench -p txpipe-core --bench scan` (default `data`;
//! `make bench` runs it on the BankSim-shaped set).

use csv_core::{ReadRecordResult, ReaderBuilder, Terminator};
use std::time::Instant;
use txpipe_core::parse::csv_scan::{strip_single_quotes, Scanner};
use txpipe_core::parse::decimal::parse_amount;
use txpipe_core::parse::header::ColumnMap;
use txpipe_core::parse::ids::{check_id, check_no_nul};
use txpipe_core::parse::transactions::TRANSACTION_COLUMNS;
use txpipe_core::parse::{Gender, TransactionReader};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `a` and `b` alternately `runs` times each; returns their median throughput in
/// GB/s and the median of the paired ratios a/b (pairing cancels the machine's drift).
fn compare(
    bytes: usize,
    runs: usize,
    mut a: impl FnMut() -> u64,
    mut b: impl FnMut() -> u64,
) -> (f64, f64, f64) {
    let (mut ra, mut rb, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let na = std::hint::black_box(a());
        let ta = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let nb = std::hint::black_box(b());
        let tb = t.elapsed().as_secs_f64();
        assert_eq!(na, nb, "both variants must see the same records");
        ra.push(bytes as f64 / ta / 1e9);
        rb.push(bytes as f64 / tb / 1e9);
        ratio.push(tb / ta);
    }
    (median(ra), median(rb), median(ratio))
}

fn core_reader() -> csv_core::Reader {
    ReaderBuilder::new()
        .terminator(Terminator::Any(b'\n'))
        .build()
}

/// The row checks of `TransactionReader::parse`, on fields however they were split.
fn check_row(raw: &[u8], fields: &[&[u8]], columns: &ColumnMap) -> bool {
    let [c, g, m, a] = [0, 1, 2, 3].map(|i| columns.positions[i]);
    if check_no_nul(raw).is_err() || fields.len() != columns.width {
        return false;
    }
    std::hint::black_box(Gender::from_field(strip_single_quotes(fields[g])));
    check_id(strip_single_quotes(fields[c]), "customer").is_ok()
        && check_id(strip_single_quotes(fields[m]), "merchant").is_ok()
        && parse_amount(strip_single_quotes(fields[a])).is_ok()
}

fn header_columns(source: &[u8]) -> (ColumnMap, usize) {
    let nl = memchr::memchr(b'\n', source).expect("a header line");
    let columns =
        ColumnMap::find("transactions", Some(&source[..nl]), &TRANSACTION_COLUMNS).expect("header");
    (columns, nl + 1)
}

/// Splitting by hand, as the reader's fast path does: one `memchr3` pass over `,` `\n`
/// `"` per line (the data has no double quotes; a line with one would go to csv-core).
fn hand_split_parse(source: &[u8]) -> u64 {
    let (columns, mut pos) = header_columns(source);
    let mut fields: Vec<&[u8]> = Vec::with_capacity(16);
    let mut valid = 0;
    while pos < source.len() {
        let rest = &source[pos..];
        fields.clear();
        let (mut start, mut end) = (0, rest.len());
        for i in memchr::memchr3_iter(b',', b'\n', b'"', rest) {
            match rest[i] {
                b',' => {
                    fields.push(&rest[start..i]);
                    start = i + 1;
                }
                b'\n' => {
                    end = i;
                    break;
                }
                _ => unreachable!("no double quotes in the bench data"),
            }
        }
        pos += (end + 1).min(rest.len());
        let text = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        if text.is_empty() {
            continue;
        }
        fields.push(&text[start.min(text.len())..]);
        valid += u64::from(check_row(text, &fields, &columns));
    }
    valid
}

/// Splitting with csv-core: one `read_record` per row, fields unescaped into a scratch
/// buffer, then the same checks.
fn csv_core_split_parse(source: &[u8]) -> u64 {
    let (columns, mut pos) = header_columns(source);
    let mut r = core_reader();
    let (mut out, mut ends) = (vec![0u8; 1 << 16], vec![0usize; 256]);
    let mut valid = 0;
    loop {
        let (res, nin, _, nend) = r.read_record(&source[pos..], &mut out, &mut ends);
        let raw = &source[pos..pos + nin];
        pos += nin;
        match res {
            ReadRecordResult::Record => {}
            ReadRecordResult::End => return valid,
            _ => continue,
        }
        let mut fields: [&[u8]; 64] = [&[]; 64];
        let mut start = 0;
        for (slot, &end) in fields.iter_mut().zip(&ends[..nend]) {
            *slot = &out[start..end];
            start = end;
        }
        valid += u64::from(check_row(raw, &fields[..nend.min(64)], &columns));
    }
}

fn main() {
    let dir = std::env::var("TXPIPE_BENCH_DATA").unwrap_or_else(|_| "data".into());
    let path = format!("{dir}/transactions.csv");
    let source = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let runs = 9;
    println!(
        "csv scan bench: {} ({} MB), {runs} paired runs, one thread",
        path,
        source.len() / 1_000_000
    );

    let (hand, core, ratio) = compare(
        source.len(),
        runs,
        || {
            let mut s = Scanner::new();
            let (mut pos, mut rows) = (0, 0);
            while let Some(span) = s.next_record(&source, pos, true) {
                pos = span.next;
                rows += u64::from(!span.is_blank());
            }
            rows
        },
        || {
            let mut r = core_reader();
            let (mut out, mut ends) = (vec![0u8; 4096], vec![0usize; 64]);
            let (mut pos, mut rows) = (0, 0);
            loop {
                let (res, nin, _, _) = r.read_record(&source[pos..], &mut out, &mut ends);
                pos += nin;
                match res {
                    ReadRecordResult::Record => rows += 1,
                    ReadRecordResult::End => return rows,
                    _ => {}
                }
            }
        },
    );
    println!("  record boundaries (chunk cutting): fast path + csv-core {hand:.2} GB/s, csv-core only {core:.2} GB/s, fast path {ratio:.2}x");

    let (hand, core, ratio) = compare(
        source.len(),
        runs,
        || hand_split_parse(&source),
        || csv_core_split_parse(&source),
    );
    let row_bytes = source.len() as f64 / source.iter().filter(|&&b| b == b'\n').count() as f64;
    println!(
        "  row split + checks:                fast path + csv-core {hand:.2} GB/s ({:.2} M rows/s), csv-core only {core:.2} GB/s ({:.2} M rows/s), fast path {ratio:.2}x",
        hand * 1e3 / row_bytes,
        core * 1e3 / row_bytes
    );
    let rates: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let reader = TransactionReader::new(&source, 1).expect("header");
            std::hint::black_box(reader.filter(|r| r.is_ok()).count());
            source.len() as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    let whole = median(rates);
    println!(
        "  TransactionReader (as shipped):    {whole:.2} GB/s ({:.2} M rows/s)",
        whole * 1e3 / row_bytes
    );
}
