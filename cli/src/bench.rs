//! `txpipe bench`: the pipeline's figures against local services (moto + Postgres):
//! chunker ms and requests per chunk over the whole file in burst mode, detector ms and
//! requests per chunk, cold-start reload time, and peak memory.

use crate::run::start_stack;
use anyhow::Result;
use std::path::Path;
use std::time::{Duration, Instant};
use txpipe::aws::AwsClients;
use txpipe::chunker::ChunkerService;
use txpipe::config::{Config, EnvVars};
use txpipe::detector::DetectorService;
use txpipe::setup::Stores;
use txpipe_testkit::events::object_created;
use txpipe_testkit::stack::BUCKET;

fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Peak resident memory of this process, from /proc (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Runs the benchmark and prints its figures.
pub async fn run(data: &Path) -> Result<()> {
    let stack = start_stack(&[data.to_path_buf()]).await?;
    let mut env = stack.env();
    env.set("TXPIPE_CHUNK_INTERVAL_MS", "0");
    env.set("TXPIPE_CHUNKER_BUDGET_SECS", "900");
    // The chunker runs alone first here, so backpressure must not stop it part way.
    env.set("TXPIPE_MAX_LAG_CHUNKS", "10176");
    let config = Config::from_vars(&env)?;

    // The chunker over the whole file, burst mode.
    let stores = Stores::aws(&stack.clients, &config);
    let chunker = ChunkerService::new(stores.clone(), &config);
    let before = stores.requests.get();
    let started = Instant::now();
    let run = chunker
        .run(Instant::now() + Duration::from_secs(900), None)
        .await?;
    let chunk_wall = started.elapsed();
    let chunk_ms: Vec<f64> = run
        .written
        .iter()
        .map(|c| c.micros as f64 / 1000.0)
        .collect();
    let chunker_requests =
        (stores.requests.get() - before) as f64 / run.written.len().max(1) as f64;
    println!(
        "chunker   {} chunks in {:.2} s: p50 {:.1} ms/chunk, p99 {:.1} ms, {:.2} remote requests/chunk (incl. cursor load)",
        run.written.len(),
        chunk_wall.as_secs_f64(),
        percentile(&chunk_ms, 0.5),
        percentile(&chunk_ms, 0.99),
        chunker_requests
    );

    // The detector in a child process, as a Lambda container would run it alone, so
    // its peak memory is the detector's own.
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe);
    child.args(["bench", "--detector-phase"]);
    for line in stack.exports() {
        for pair in line.trim_start_matches("export ").split(' ') {
            if let Some((k, v)) = pair.split_once('=') {
                child.env(k, v);
            }
        }
    }
    let status = child.status()?;
    anyhow::ensure!(status.success(), "detector phase failed: {status}");
    drop(stores);
    drop(chunker);
    drop(stack);
    Ok(())
}

/// The detector phase of the benchmark, in its own process (settings from the
/// environment, chunks already in S3).
pub async fn detector_phase() -> Result<()> {
    let clients = AwsClients::from_env().await;
    let config = Config::from_vars(&EnvVars::from_env())?;
    let stores = Stores::aws(&clients, &config);
    let stream = stores
        .cursors
        .load_cursor(&txpipe::chunker::ChunkerSettings::from_config(&config).source_id())
        .await?
        .map(|c| c.stream)
        .ok_or_else(|| anyhow::anyhow!("no cursor: the chunker phase did not run"))?;
    let keys = stores.objects.list(BUCKET, &stream.chunks_prefix()).await?;
    let service =
        DetectorService::new(stores.clone(), stores.postgres(&clients, &config)?, &config).await?;
    let mut millis = Vec::new();
    let mut requests = Vec::new();
    let mut delta_kib = Vec::new();
    // The slowest chunk, step by step: a p99 over a few dozen chunks is that one chunk.
    let mut slowest: Option<(u64, txpipe::detector::StepMillis)> = None;
    let started = Instant::now();
    let mut reload_mid = None;
    for (i, key) in keys.iter().enumerate() {
        if i + 1 == keys.len() {
            // Worst case for a cold start: the last snapshot plus every delta since.
            // Forgetting warm state makes the next call rebuild from storage, as a new
            // container would (without a second importance table inflating memory).
            let mut detector = service.detector().await;
            detector.forget();
            let t = Instant::now();
            let next = detector.load_stream(&stream).await?;
            reload_mid = Some((t.elapsed(), next));
        }
        let event = object_created(BUCKET, std::slice::from_ref(key));
        let response = service
            .handle(&event, Instant::now() + Duration::from_secs(60))
            .await?;
        for a in &response.applied {
            millis.push(a.millis.total as f64);
            requests.push(a.requests as f64);
            delta_kib.push(a.delta_bytes as f64 / 1024.0);
            if slowest.is_none_or(|(_, m)| a.millis.total > m.total) {
                slowest = Some((a.chunk, a.millis));
            }
        }
    }
    let detect_wall = started.elapsed();
    println!(
        "state     delta per chunk: p50 {:.1} KiB, max {:.1} KiB (an S3 object under state/)",
        percentile(&delta_kib, 0.5),
        percentile(&delta_kib, 1.0)
    );
    println!(
        "detector  {} chunks in {:.2} s: p50 {:.0} ms/chunk, p99 {:.0} ms, remote requests/chunk p50 {:.0} max {:.0}",
        millis.len(),
        detect_wall.as_secs_f64(),
        percentile(&millis, 0.5),
        percentile(&millis, 0.99),
        percentile(&requests, 0.5),
        percentile(&requests, 1.0),
    );
    if let Some((k, m)) = slowest {
        println!(
            "slowest   chunk {k}: {} ms = read {} + apply {} + detection files {} + Postgres {} + snapshot {} + commit {} (+ {} prune and the rest)",
            m.total,
            m.read,
            m.apply,
            m.s3,
            m.sink,
            m.snapshot,
            m.commit,
            m.total.saturating_sub(m.read + m.apply + m.s3 + m.sink + m.snapshot + m.commit)
        );
    }
    if let Some((t, next)) = reload_mid {
        println!(
            "reload    cold start before the last chunk (snapshot + deltas up to chunk {next}): {:.0} ms",
            t.as_secs_f64() * 1000.0
        );
    }
    // A container's cold start at the end: the last snapshot's parts fetched and decoded
    // on every core, then the deltas after it. Median of five (moto is one local process).
    let mut detector = service.detector().await;
    let mut reload_ms = Vec::new();
    for _ in 0..5 {
        detector.forget();
        let t = Instant::now();
        detector.load_stream(&stream).await?;
        reload_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let head = detector.head(&stream).await?;
    let stored = match head.as_ref().and_then(|h| h.snapshot.map(|s| (h, s))) {
        Some((h, s)) => format!(
            "snapshot of {:.1} MiB in {} parts + {} deltas",
            s.bytes as f64 / (1u64 << 20) as f64,
            s.parts,
            h.next_chunk - s.next
        ),
        None => "no snapshot".into(),
    };
    println!(
        "reload    cold start after the full run ({stored}): median {:.0} ms of 5 (min {:.0}, max {:.0})",
        percentile(&reload_ms, 0.5),
        percentile(&reload_ms, 0.0),
        percentile(&reload_ms, 1.0)
    );
    if let Some(mib) = peak_rss_mib() {
        println!("memory    detector process peak RSS: {mib:.0} MiB");
    }
    Ok(())
}
