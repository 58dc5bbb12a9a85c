//! `txpipe replay`: the engine over a local file, chunk by chunk, no AWS at all.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use txpipe::config::{patterns, EnvVars};
use txpipe::detection::PatternId;
use txpipe::engine::Engine;
use txpipe::parse::ImportanceTable;
use txpipe::replay::replay;

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

/// Runs the replay and writes its outputs.
pub fn run(args: ReplayArgs) -> Result<()> {
    let config = patterns(&EnvVars::from_env())?;
    let weights = load_importance(&args.importance)?;
    let source = std::fs::read(&args.transactions)
        .with_context(|| format!("reading {}", args.transactions.display()))?;
    let mut engine = Engine::new(config, weights);
    let started = std::time::Instant::now();
    let out = replay(
        &source,
        &mut engine,
        args.rows_per_chunk,
        args.per_file,
        chrono::Utc::now,
    )
    .with_context(|| format!("replaying {}", args.transactions.display()))?;
    let elapsed = started.elapsed();

    let batches_dir = args.out.join("detections");
    std::fs::create_dir_all(&batches_dir)
        .with_context(|| format!("creating {}", batches_dir.display()))?;
    let mut all =
        std::io::BufWriter::new(std::fs::File::create(args.out.join("detections.jsonl"))?);
    for d in &out.detections {
        // SPEC §5's fields in their order, then the chunk that produced the detection.
        let line = d.to_json_line();
        let body = line.strip_suffix('}').unwrap_or(&line);
        writeln!(all, "{body},\"chunk\":{}}}", d.chunk)?;
    }
    all.flush()?;
    for batch in &out.batches {
        std::fs::write(args.out.join(batch.key("detections/")), batch.to_jsonl())?;
    }
    let mut summary = csv::Writer::from_path(args.out.join("chunks.csv"))?;
    summary.write_record(["chunk", "rows", "rejected", "detections", "engine_micros"])?;
    for c in &out.chunks {
        summary.write_record(
            [c.chunk, c.rows, c.rejected, c.detections, c.micros].map(|v| v.to_string()),
        )?;
    }
    summary.flush()?;
    let mut rejected = csv::Writer::from_path(args.out.join("rejected.csv"))?;
    rejected.write_record(["row", "reason", "raw"])?;
    for r in &out.rejected {
        rejected.write_record([
            r.row.to_string(),
            r.reason.to_string(),
            r.raw_text().into_owned(),
        ])?;
    }
    rejected.flush()?;

    let totals = engine.totals();
    println!(
        "replayed {} chunks, {} rows ({} rejected) in {:.2} s",
        out.chunks.len(),
        totals.rows + totals.rejected,
        totals.rejected,
        elapsed.as_secs_f64()
    );
    for p in PatternId::ALL {
        println!(
            "  {} {:<10} {}",
            p.id(),
            p.action(),
            totals.detections[p.index()]
        );
    }
    println!(
        "  {} detection files in {}",
        out.batches.len(),
        batches_dir.display()
    );
    Ok(())
}
