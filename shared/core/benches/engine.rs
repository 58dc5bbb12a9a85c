//! Engine throughput: parse + apply + detect over a whole data set, one thread.
//!
//! `make bench` generates the default data set first. Run directly with
//! `TXPIPE_BENCH_DATA=dir cargo bench -p txpipe-core --bench engine`.
//! Reports medians over several full replays (shared machines are noisy).

use std::sync::Arc;
use std::time::Instant;
use txpipe_core::cutting::split_source;
use txpipe_core::{Engine, ImportanceTable, PatternConfig};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::var("TXPIPE_BENCH_DATA").unwrap_or_else(|_| "data".into());
    let runs: usize = std::env::var("TXPIPE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let read = |name: &str| {
        let path = format!("{dir}/{name}");
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{path}: {e} (run `make bench`, which generates it)"))
    };
    let source = read("transactions.csv");
    let importance = read("CustomerImportance.csv");
    let weights = Arc::new(
        ImportanceTable::parse(&importance)
            .expect("importance header")
            .table,
    );
    let chunks = split_source(&source, 10_000).expect("source header");
    let rows: u64 = chunks.iter().map(|c| c.rows).sum();

    let mut rates = Vec::new();
    let mut chunk_ms = Vec::new();
    let mut detections = [0u64; 3];
    for _ in 0..runs {
        let mut engine = Engine::new(PatternConfig::default(), weights.clone());
        let started = Instant::now();
        for c in &chunks {
            let t = Instant::now();
            let out = engine
                .apply_chunk(c.k, &c.bytes, c.first_row)
                .expect("chunk applies");
            chunk_ms.push(t.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(out);
        }
        rates.push(rows as f64 / started.elapsed().as_secs_f64());
        detections = engine.totals().detections;
    }
    let weights_started = Instant::now();
    let _ = std::hint::black_box(ImportanceTable::parse(&importance));
    let weights_ms = weights_started.elapsed().as_secs_f64() * 1e3;

    println!(
        "engine bench: {} rows in {} chunks, {} runs, one thread",
        rows,
        chunks.len(),
        runs
    );
    println!(
        "  parse+apply+detect: median {:.2} M rows/s (target >= 5)",
        median(&mut rates) / 1e6
    );
    println!(
        "  per 10k-row chunk:  median {:.3} ms (target <= 2)",
        median(&mut chunk_ms)
    );
    println!("  CustomerImportance load: {:.1} ms", weights_ms);
    println!(
        "  detections: PatId1 {} / PatId2 {} / PatId3 {}",
        detections[0], detections[1], detections[2]
    );
}
