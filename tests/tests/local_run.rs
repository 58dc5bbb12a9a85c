//! The `make run` path (txpipe run) in burst mode on small generated files, checked
//! against the offline replay: one stream, and two streams at once.

use anyhow::{Context, Result};
use std::sync::Arc;
use txpipe::config::PatternConfig;
use txpipe::engine::Engine;
use txpipe::parse::ImportanceTable;
use txpipe::replay::replay;
use txpipe_cli::run::{run, Rate, RunOptions, View};
use txpipe_e2e::{batch_identities, generate, temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_run_in_burst_mode_equals_replay() -> Result<()> {
    let dir = temp_dir("local-run")?;
    let (transactions, importance) = generate(&dir, 60_000, 11, 1200)?;
    let out = dir.join("out");
    let summary = run(RunOptions {
        data: vec![dir.clone()],
        rate: Rate::Max,
        out: out.clone(),
        keep: false,
        view: View::Quiet,
        backfill: false,
        settings: vec![
            ("TXPIPE_ROWS_PER_CHUNK".into(), "5000".into()),
            ("TXPIPE_UPGRADE_MIN_MERCHANT_TXNS".into(), "4000".into()),
            ("TXPIPE_DEI_MIN_FEMALE".into(), "30".into()),
        ],
    })
    .await?;

    let config = PatternConfig::default()
        .with(&txpipe::patterns::upgrade::MIN_MERCHANT_TXNS, 4000)
        .with(&txpipe::patterns::dei::MIN_FEMALE, 30);
    let table = ImportanceTable::parse(&importance)?.table;
    let mut engine = Engine::new(config, Arc::new(table));
    let want = replay(&transactions, &mut engine, 5000, 50, chrono::Utc::now)?;

    assert_eq!(summary.chunks_applied, 12);
    assert_eq!(summary.rows, 60_000);
    let per_pattern = txpipe::PerPattern::of(want.detections.iter().map(|d| &d.key));
    assert_eq!(summary.detections, per_pattern);
    assert!(per_pattern.iter().all(|(_, n)| n > 0), "{per_pattern}");

    // The exported S3 files hold exactly the replay's batches, and beside them their
    // evidence, byte for byte.
    assert_files_hold(&out.join("detections"), &want.batches)?;
    for batch in &want.batches {
        let path = out
            .join("evidence")
            .join(format!("{:08}.jsonl", batch.number));
        let got = std::fs::read(&path).with_context(|| path.display().to_string())?;
        assert_eq!(got, batch.evidence_jsonl(), "{}", path.display());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_at_once_each_equal_their_replay() -> Result<()> {
    let (a, b) = (temp_dir("local-run-a")?, temp_dir("local-run-b")?);
    let (ta, importance) = generate(&a, 30_000, 21, 900)?;
    let (tb, _) = generate(&b, 45_000, 22, 900)?;
    let out = a.join("out");
    let summary = run(RunOptions {
        data: vec![a.clone(), b.clone()],
        rate: Rate::Max,
        out: out.clone(),
        keep: false,
        view: View::Quiet,
        backfill: false,
        settings: vec![
            ("TXPIPE_ROWS_PER_CHUNK".into(), "5000".into()),
            ("TXPIPE_DEI_MIN_FEMALE".into(), "20".into()),
        ],
    })
    .await?;
    assert_eq!(summary.chunks_applied, 6 + 9);
    assert_eq!(summary.rows, 75_000);
    // Each stream's files equal its own replay, with the one shared importance file.
    let table = Arc::new(ImportanceTable::parse(&importance)?.table);
    let config = PatternConfig::default().with(&txpipe::patterns::dei::MIN_FEMALE, 20);
    let mut streams: Vec<_> = std::fs::read_dir(out.join("detections"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    streams.sort(); // input-transactions-2.… sorts before input-transactions.…
    assert_eq!(streams.len(), 2);
    for (dir, transactions) in [(&streams[1], &ta), (&streams[0], &tb)] {
        let mut engine = Engine::new(config.clone(), table.clone());
        let want = replay(transactions, &mut engine, 5000, 50, chrono::Utc::now)?;
        assert!(!want.detections.is_empty());
        let mut files: Vec<_> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        let mut got = Vec::new();
        for f in &files {
            got.extend(batch_identities(&std::fs::read_to_string(f)?)?);
        }
        let expect: Vec<(String, String, String)> = want
            .detections
            .iter()
            .map(|d| {
                (
                    d.key.pattern.id().to_string(),
                    d.key.merchant.clone(),
                    d.key.customer.clone(),
                )
            })
            .collect();
        assert_eq!(got, expect, "{}", dir.display());
        assert_eq!(files.len(), want.batches.len());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_run_over_parts_uploaded_mid_stream_equals_the_single_files_replay() -> Result<()> {
    let dir = temp_dir("local-run-parts")?;
    let (transactions, importance) = generate(&dir, 30_000, 13, 900)?;
    txpipe_cli::generate::write_parts(&dir, 6)?;
    assert!(!dir.join("transactions.csv").exists());
    let out = dir.join("out");
    let summary = run(RunOptions {
        data: vec![dir.clone()],
        rate: Rate::Max,
        out: out.clone(),
        keep: false,
        view: View::Quiet,
        backfill: false,
        settings: vec![
            ("TXPIPE_ROWS_PER_CHUNK".into(), "2400".into()),
            ("TXPIPE_UPGRADE_MIN_MERCHANT_TXNS".into(), "2000".into()),
            ("TXPIPE_DEI_MIN_FEMALE".into(), "30".into()),
        ],
    })
    .await?;
    let config = PatternConfig::default()
        .with(&txpipe::patterns::upgrade::MIN_MERCHANT_TXNS, 2000)
        .with(&txpipe::patterns::dei::MIN_FEMALE, 30);
    let table = ImportanceTable::parse(&importance)?.table;
    let mut engine = Engine::new(config, Arc::new(table));
    let want = replay(&transactions, &mut engine, 2400, 50, chrono::Utc::now)?;
    assert_eq!(summary.rows, 30_000);
    assert_eq!(summary.chunks_applied, 13);
    assert!(!want.batches.is_empty());
    assert_files_hold(&out.join("detections"), &want.batches)?;
    Ok(())
}

/// The exported detection files hold exactly `batches`, in order (identities, times aside).
fn assert_files_hold(
    dir: &std::path::Path,
    batches: &[txpipe::batch::DetectionBatch],
) -> Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    assert_eq!(files.len(), batches.len());
    for (path, batch) in files.iter().zip(batches) {
        let got = batch_identities(&std::fs::read_to_string(path)?)?;
        let expect: Vec<(String, String, String)> = batch
            .detections
            .iter()
            .map(|d| {
                (
                    d.key.pattern.id().to_string(),
                    d.key.merchant.clone(),
                    d.key.customer.clone(),
                )
            })
            .collect();
        assert_eq!(got, expect, "{}", path.display());
    }
    Ok(())
}
