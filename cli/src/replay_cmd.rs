//! `txpipe replay`: the engine over a local file, chunk by chunk, no AWS at all; or, with
//! `--stream`, over a stream's stored chunk objects with the boundaries recorded on
//! them (a prefix stream's chunks may span files or end short), which reproduces the
//! stream's outputs.
//!
//! The file is read piece by piece and each chunk's outputs are written as soon as they
//! exist, so memory is the engine's state plus about one chunk, whatever the file's size
//! (the figures it prints end with the process's peak memory per pair of state).

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use txpipe::chunker::ChunkBounds;
use txpipe::config::{patterns, EnvVars};
use txpipe::engine::Engine;
use txpipe::layout::{parse_chunk_key, StreamName};
use txpipe::parse::ImportanceTable;
use txpipe::replay::{replay_from, ChunkReplay, ChunkToReplay, ReplayedChunk};
use txpipe::store::ObjectStore;

/// Arguments of `txpipe replay`.
pub struct ReplayArgs {
    /// transactions.csv.
    pub transactions: PathBuf,
    /// CustomerImportance.csv.
    pub importance: PathBuf,
    /// Rows per chunk.
    pub rows_per_chunk: u64,
    /// Detections per batch file.
    pub per_file: u64,
    /// Output directory.
    pub out: PathBuf,
    /// Replay this stream's chunk objects from the configured bucket instead of a file.
    pub stream: Option<StreamName>,
}

/// Applies `stream`'s chunk objects from `bucket`, in order, each with the boundaries
/// its metadata records; returns the chunks replayed.
pub async fn replay_stream(
    objects: &dyn ObjectStore,
    bucket: &str,
    stream: &StreamName,
    engine: &mut Engine,
    rows_per_chunk: u64,
    per_file: u64,
    mut on_chunk: impl FnMut(ReplayedChunk) -> std::io::Result<()>,
) -> Result<u64> {
    let mut keys: Vec<(u64, String)> = objects
        .list(bucket, &stream.chunks_prefix())
        .await?
        .into_iter()
        .filter_map(|key| parse_chunk_key(&key).map(|(_, k)| (k, key)))
        .collect();
    keys.sort();
    let mut replay = ChunkReplay::new(engine, per_file);
    for (n, (k, key)) in keys.iter().enumerate() {
        anyhow::ensure!(
            *k == n as u64,
            "chunk {n} of stream {stream} is missing (found {key})"
        );
        let object = objects
            .get(bucket, key)
            .await?
            .with_context(|| format!("{key} vanished while replaying"))?;
        let bounds = ChunkBounds::from_metadata(&object.metadata, *k, rows_per_chunk)
            .map_err(|why| anyhow::anyhow!("{key}: {why}"))?;
        let replayed = replay.apply(
            ChunkToReplay {
                k: *k,
                bytes: &object.bytes,
                later_headers: &bounds.later_headers,
                first_row: bounds.first_row,
                last: bounds.last,
            },
            chrono::Utc::now,
        )?;
        on_chunk(replayed)?;
    }
    Ok(keys.len() as u64)
}

/// Loads CustomerImportance.csv, reporting rejected rows on stderr.
pub fn load_importance(path: &Path) -> Result<Arc<ImportanceTable>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let load =
        ImportanceTable::parse(&bytes).with_context(|| format!("reading {}", path.display()))?;
    if !load.rejected.is_empty() {
        eprintln!(
            "{}: {} rows rejected (first: row {}: {})",
            path.display(),
            load.rejected.len(),
            load.rejected[0].row,
            load.rejected[0].reason
        );
    }
    Ok(Arc::new(load.table))
}

/// The process's peak resident memory in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs the replay and writes its outputs.
pub fn run(args: ReplayArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let config = patterns(&EnvVars::from_env())?;
    let weights = load_importance(&args.importance)?;
    let batches_dir = args.out.join("detections");
    for dir in [&batches_dir, &args.out.join("evidence")] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut all =
        std::io::BufWriter::new(std::fs::File::create(args.out.join("detections.jsonl"))?);
    let mut summary = csv::Writer::from_path(args.out.join("chunks.csv"))?;
    summary.write_record(["chunk", "rows", "rejected", "detections", "engine_micros"])?;
    let mut rejected = csv::Writer::from_path(args.out.join("rejected.csv"))?;
    rejected.write_record(["row", "reason", "raw"])?;

    let mut engine = Engine::new(config, weights);
    let mut files = 0u64;
    let mut chunks = 0u64;
    let mut engine_micros = 0u64;
    let mut write = |chunk: ReplayedChunk| -> std::io::Result<()> {
        for d in &chunk.detections {
            // The behaviour's fields in their order, then the chunk that produced it.
            let line = d.to_json_line();
            let body = line.strip_suffix('}').unwrap_or(&line);
            writeln!(all, "{body},\"chunk\":{}}}", d.chunk)?;
        }
        for batch in &chunk.batches {
            std::fs::write(args.out.join(batch.key("detections/")), batch.to_jsonl())?;
            std::fs::write(
                args.out.join(batch.key("evidence/")),
                batch.evidence_jsonl(),
            )?;
            files += 1;
        }
        let c = &chunk.summary;
        summary.write_record(
            [c.chunk, c.rows, c.rejected, c.detections, c.micros].map(|v| v.to_string()),
        )?;
        for r in &chunk.rejected {
            rejected.write_record([
                r.row.to_string(),
                r.reason.to_string(),
                r.raw_text().into_owned(),
            ])?;
        }
        chunks += 1;
        engine_micros += c.micros;
        Ok(())
    };
    match &args.stream {
        None => {
            let source = std::fs::File::open(&args.transactions)
                .with_context(|| format!("reading {}", args.transactions.display()))?;
            replay_from(
                std::io::BufReader::with_capacity(0, source),
                &mut engine,
                args.rows_per_chunk,
                args.per_file,
                chrono::Utc::now,
                &mut write,
            )
            .with_context(|| format!("replaying {}", args.transactions.display()))?;
        }
        Some(stream) => {
            let config = txpipe::config::Config::from_env()?;
            tokio::runtime::Runtime::new()?.block_on(async {
                let clients = txpipe::aws::AwsClients::from_env().await;
                let stores = txpipe::setup::Stores::aws(&clients, &config);
                replay_stream(
                    stores.objects.as_ref(),
                    &config.bucket,
                    stream,
                    &mut engine,
                    args.rows_per_chunk,
                    args.per_file,
                    &mut write,
                )
                .await
                .with_context(|| format!("replaying stream {stream}"))
            })?;
        }
    }
    all.flush()?;
    summary.flush()?;
    rejected.flush()?;

    let totals = engine.totals();
    println!(
        "replayed {chunks} chunks, {} rows ({} rejected) in {:.2} s ({:.2} s in the engine)",
        totals.rows + totals.rejected,
        totals.rejected,
        started.elapsed().as_secs_f64(),
        engine_micros as f64 / 1e6
    );
    for p in txpipe::patterns::registered() {
        println!(
            "  {} {:<10} {}",
            p.id(),
            p.action(),
            totals.detections.get(p)
        );
    }
    println!(
        "  {files} detection files in {}, their evidence beside them in evidence/",
        batches_dir.display()
    );
    let (merchants, customers, pairs) = engine.sizes();
    let heap = engine.memory();
    print!(
        "  state: {merchants} merchants, {customers} customers, {pairs} pairs; engine heap {:.1} MB",
        heap.total() as f64 / 1e6
    );
    match peak_rss_bytes() {
        Some(peak) => println!(
            "; process peak {:.1} MB = {:.1} bytes per pair",
            peak as f64 / 1e6,
            peak as f64 / pairs.max(1) as f64
        ),
        None => println!(),
    }
    Ok(())
}
