//! `txpipe bench`: the pipeline's figures against local services (moto + Postgres):
//! chunker ms and requests per chunk over the whole file in burst mode, detector ms and
//! requests per chunk, cold-start reload time, and peak memory.

use crate::run::{LocalStack, BUCKET, TABLE};
use anyhow::Result;
use std::path::Path;
use std::time::{Duration, Instant};
use txpipe::config::Settings;
use txpipe::service::{detector_from_env, handle_detector_event, ChunkerContext};
use txpipe::store::clients::AwsClients;
use txpipe::store::ObjectStore;

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
    let stack = LocalStack::start(data).await?;
    let (moto, pg, clients) = (&stack.moto, &stack.pg, &stack.clients);
    let pg_url = pg.url();
    let settings = Settings::from_pairs([
        ("TXPIPE_BUCKET", BUCKET),
        ("TXPIPE_STATE_TABLE", TABLE),
        ("TXPIPE_PG_URL", pg_url.as_str()),
        ("TXPIPE_PG_SSLMODE", "disable"),
        ("TXPIPE_CHUNK_INTERVAL_MS", "0"),
        ("TXPIPE_CHUNKER_BUDGET_SECS", "900"),
    ]);

    // Mechanism X over the whole file, burst mode.
    let chunker = ChunkerContext::new(clients, &settings)?;
    let before = chunker.requests.get();
    let started = Instant::now();
    let run = chunker
        .invoke(Instant::now() + Duration::from_secs(900), None, |_| {})
        .await?;
    let chunk_wall = started.elapsed();
    let chunk_ms: Vec<f64> = run
        .written
        .iter()
        .map(|c| c.micros as f64 / 1000.0)
        .collect();
    let chunker_requests =
        (chunker.requests.get() - before) as f64 / run.written.len().max(1) as f64;
    println!(
        "chunker   {} chunks in {:.2} s: p50 {:.1} ms/chunk, p99 {:.1} ms, {:.2} remote requests/chunk (incl. cursor load)",
        run.written.len(),
        chunk_wall.as_secs_f64(),
        percentile(&chunk_ms, 0.5),
        percentile(&chunk_ms, 0.99),
        chunker_requests
    );

    // Mechanism Y in a child process, as a Lambda container would run it alone, so its
    // peak memory is the detector's own.
    let exe = std::env::current_exe()?;
    let status = std::process::Command::new(exe)
        .args(["bench", "--detector-phase"])
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("TXPIPE_BUCKET", BUCKET)
        .env("TXPIPE_STATE_TABLE", TABLE)
        .env("TXPIPE_PG_URL", pg.url())
        .env("TXPIPE_PG_SSLMODE", "disable")
        .status()?;
    anyhow::ensure!(status.success(), "detector phase failed: {status}");
    drop(stack);
    Ok(())
}

/// The detector phase of the benchmark, in its own process (settings from the
/// environment, chunks already in S3).
pub async fn detector_phase() -> Result<()> {
    let clients = AwsClients::from_env().await;
    let settings = Settings::from_env();
    let stream = txpipe::chunker::ChunkerSettings::from_settings(&settings)?.stream();
    let objects = txpipe::store::s3::S3Store::new(clients.s3.clone(), Default::default());
    let keys = objects.list(BUCKET, &stream).await?;
    let mut detector = detector_from_env(&clients, &settings).await?;
    let mut millis = Vec::new();
    let mut requests = Vec::new();
    let mut delta_kib = Vec::new();
    let started = Instant::now();
    let mut reload_mid = None;
    for (i, key) in keys.iter().enumerate() {
        if i + 1 == keys.len() {
            // Worst case for a cold start: the last snapshot plus every delta since.
            // Forgetting warm state makes the next call rebuild from storage, as a new
            // container would (without a second importance table inflating memory).
            detector.forget();
            let t = Instant::now();
            let report = detector.catch_up(&stream, 0).await?;
            reload_mid = Some((t.elapsed(), report.next_chunk));
        }
        let event = crate::run::s3_event(BUCKET, key);
        handle_detector_event(&mut detector, &event, |a| {
            millis.push(a.millis.total as f64);
            requests.push(a.requests as f64);
            delta_kib.push(a.delta_bytes as f64 / 1024.0);
        })
        .await?;
    }
    let detect_wall = started.elapsed();
    println!(
        "state     delta per chunk: p50 {:.1} KiB, max {:.1} KiB (DynamoDB item, LZ4)",
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
    if let Some((t, next)) = reload_mid {
        println!(
            "reload    cold start before the last chunk (snapshot + deltas up to chunk {next}): {:.0} ms",
            t.as_secs_f64() * 1000.0
        );
    }
    detector.forget();
    let t = Instant::now();
    detector.catch_up(&stream, 0).await?;
    println!(
        "reload    cold start after the full run: {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    if let Some(mib) = peak_rss_mib() {
        println!("memory    detector process peak RSS: {mib:.0} MiB");
    }
    Ok(())
}
