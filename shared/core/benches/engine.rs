//! Engine throughput on one thread, measured on the detector's real per-chunk path:
//! apply the chunk (parse, stats, detect), encode its delta (what the detector commits),
//! and build the detection records and their JSON lines (what it writes to S3). Also
//! the state's size: delta bytes per chunk, snapshot size, snapshot encode and decode
//! time (one thread and all of them), engine heap per pair.
//!
//! `TXPIPE_BENCH_DATA=dir cargo bench -p txpipe-core --bench engine` (default `data`);
//! `TXPIPE_BENCH_RUNS` replays (default 7), `TXPIPE_BENCH_PARTS_MB` snapshot part size
//! (default 64). The last line is one machine-readable summary (`key=value`) that
//! `bench/run.sh` collects. Medians over the runs (shared machines are noisy).

use std::sync::Arc;
use std::time::Instant;
use txpipe_core::cutting::split_source;
use txpipe_core::detection::Detection;
use txpipe_core::{Engine, ImportanceTable, PatternConfig};

/// Nanoseconds this thread has run on a CPU (Linux schedstat), if known: on a shared
/// machine a thread that waits for the CPU would otherwise look slow.
fn cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::var("TXPIPE_BENCH_DATA").unwrap_or_else(|_| "data".into());
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runs = env("TXPIPE_BENCH_RUNS", 7).max(1);
    let part_bytes = env("TXPIPE_BENCH_PARTS_MB", 64) << 20;
    let read = |name: &str| {
        let path = format!("{dir}/{name}");
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{path}: {e} (run `make bench`, which generates it)"))
    };
    let source = read("transactions.csv");
    let importance = read("CustomerImportance.csv");
    let mut weights_ms = Vec::new();
    let mut weights = None;
    for _ in 0..runs.min(3) {
        let t = Instant::now();
        let table = ImportanceTable::parse(&importance)
            .expect("importance header")
            .table;
        weights_ms.push(t.elapsed().as_secs_f64() * 1e3);
        weights = Some(Arc::new(table));
    }
    let weights = weights.expect("at least one run");
    let chunks = split_source(&source, 10_000).expect("source header");
    drop(source);
    let rows: u64 = chunks.iter().map(|c| c.rows).sum();
    let now = chrono::Utc::now();

    let mut rates = Vec::new();
    let mut cpu_rates = Vec::new();
    let mut apply_rates = Vec::new();
    let mut chunk_ms = Vec::new();
    let mut delta_bytes = Vec::new();
    let mut engine = Engine::new(PatternConfig::default(), weights.clone());
    for run in 0..runs {
        engine = Engine::new(PatternConfig::default(), weights.clone());
        let (mut total, mut apply) = (0.0, 0.0);
        let cpu_start = cpu_ns();
        for c in &chunks {
            let t = Instant::now();
            let out = engine
                .apply_chunk(c.k, &c.bytes, c.first_row)
                .expect("chunk applies");
            let applied = t.elapsed().as_secs_f64();
            let delta = out.delta.encode();
            let lines: Vec<String> = out
                .detections
                .into_iter()
                .zip(out.evidence)
                .map(|(key, evidence)| {
                    Detection {
                        key,
                        chunk: c.k,
                        y_start: now,
                        detected_at: now,
                        evidence: Some(evidence),
                    }
                    .to_json_line()
                })
                .collect();
            let elapsed = t.elapsed().as_secs_f64();
            std::hint::black_box((&delta, &lines, &out.rejected));
            total += elapsed;
            apply += applied;
            chunk_ms.push(elapsed * 1e3);
            if run == 0 {
                delta_bytes.push(delta.len() as f64);
            }
        }
        rates.push(rows as f64 / total);
        apply_rates.push(rows as f64 / apply);
        if let (Some(a), Some(b)) = (cpu_start, cpu_ns()) {
            cpu_rates.push(rows as f64 / ((b - a) as f64 / 1e9));
        }
    }
    let (merchants, customers, pairs) = engine.sizes();
    let memory = engine.memory();
    let totals = engine.totals();

    let t = Instant::now();
    let snapshot = engine.encode_snapshot();
    let encode_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let parts = engine.encode_snapshot_parts(part_bytes);
    let encode_parts_ms = t.elapsed().as_secs_f64() * 1e3;
    let part_refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut decode_1 = Vec::new();
    let mut decode_n = Vec::new();
    for _ in 0..runs.min(5) {
        for (n, out) in [(1, &mut decode_1), (threads, &mut decode_n)] {
            let t = Instant::now();
            let back = Engine::decode_snapshot_parts_on(
                &part_refs,
                PatternConfig::default(),
                weights.clone(),
                n,
            )
            .expect("snapshot decodes");
            out.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(back.sizes(), engine.sizes());
        }
    }

    let rate = median(&mut rates) / 1e6;
    let cpu_rate = if cpu_rates.is_empty() {
        f64::NAN
    } else {
        median(&mut cpu_rates) / 1e6
    };
    let apply_rate = median(&mut apply_rates) / 1e6;
    let chunk = median(&mut chunk_ms);
    let delta = median(&mut delta_bytes);
    let (dec1, decn) = (median(&mut decode_1), median(&mut decode_n));
    let wms = median(&mut weights_ms);
    println!(
        "engine bench: {dir}: {rows} rows in {} chunks, {runs} runs, one thread",
        chunks.len()
    );
    println!("  per chunk, as the detector does it (apply + delta encode + detection records):");
    println!("    median {rate:.2} M rows/s by the clock, {cpu_rate:.2} M rows/s by CPU time; {chunk:.3} ms per chunk (apply alone {apply_rate:.2} M rows/s)");
    println!("  state: {merchants} merchants, {customers} customers, {pairs} pairs; engine heap {:.1} MB = {:.1} bytes/pair (ids {:.1}, pairs {:.1}, merchants {:.1}; importance table {:.1} MB)",
        memory.total() as f64 / 1e6,
        memory.total() as f64 / pairs.max(1) as f64,
        memory.names as f64 / pairs.max(1) as f64,
        memory.pairs as f64 / pairs.max(1) as f64,
        memory.merchants as f64 / pairs.max(1) as f64,
        memory.importance as f64 / 1e6);
    println!("  delta: median {delta:.0} bytes per chunk");
    println!(
        "  snapshot: {:.1} MB one blob (encode {encode_ms:.0} ms); {} parts of <= {} MB (encode {encode_parts_ms:.0} ms); decode {dec1:.0} ms on 1 thread, {decn:.0} ms on {threads}",
        snapshot.len() as f64 / 1e6,
        parts.len(),
        part_bytes >> 20
    );
    println!("  CustomerImportance load: {wms:.1} ms");
    println!("  detections: {}", totals.detections);
    // `a/b/c` in pattern order (bench/run.sh compares them with DuckDB's).
    let per_pattern: Vec<String> = totals
        .detections
        .iter()
        .map(|(_, n)| n.to_string())
        .collect();
    println!(
        "summary rows={rows} pairs={pairs} rows_per_s={:.0} cpu_rows_per_s={:.0} apply_rows_per_s={:.0} chunk_ms={chunk:.3} delta_bytes={delta:.0} snapshot_bytes={} parts={} decode_ms_1={dec1:.1} decode_ms_n={decn:.1} threads={threads} heap_bytes_per_pair={:.1} detections={}",
        rate * 1e6,
        cpu_rate * 1e6,
        apply_rate * 1e6,
        snapshot.len(),
        parts.len(),
        memory.total() as f64 / pairs.max(1) as f64,
        per_pattern.join("/")
    );
}
