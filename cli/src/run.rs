//! `txpipe run` (`make run`): the whole pipeline on one machine. Starts moto and a
//! throwaway Postgres, uploads the data, and runs the real chunker and detector code —
//! the same service functions the Lambdas call — with S3 events delivered to the
//! detector as S3 would, one per chunk.

use crate::status::read_status;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use txpipe::config::{rows_per_chunk, Settings};
use txpipe::cutting::split_source;
use txpipe::local::{provision, LocalPostgres, MotoServer};
use txpipe::service::{detector_from_env, handle_detector_event, ChunkerContext};
use txpipe::store::clients::AwsClients;
use txpipe::store::s3::S3Store;
use txpipe::store::ObjectStore;

/// Bucket of the local run.
pub const BUCKET: &str = "txpipe-local";
/// State table of the local run.
pub const TABLE: &str = "txpipe-local-state";

/// moto and Postgres on loopback, with the bucket, the table and the two input files
/// in place. Dropping it stops both.
pub struct LocalStack {
    /// Clients for moto.
    pub clients: AwsClients,
    /// S3 on moto.
    pub objects: S3Store,
    /// Postgres (dropped after the clients that use it).
    pub pg: LocalPostgres,
    /// moto.
    pub moto: MotoServer,
}

impl LocalStack {
    /// Starts the services and uploads `data/transactions.csv` and
    /// `data/CustomerImportance.csv` under `input/`.
    pub async fn start(data: &std::path::Path) -> Result<Self> {
        let moto = MotoServer::start()?;
        let pg = LocalPostgres::start()?;
        let clients = AwsClients::local(&moto.endpoint()).await;
        provision(&clients, BUCKET, TABLE).await?;
        let objects = S3Store::new(clients.s3.clone(), Default::default());
        for name in ["transactions.csv", "CustomerImportance.csv"] {
            let path = data.join(name);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            objects
                .put(BUCKET, &format!("input/{name}"), bytes, &[])
                .await?;
        }
        Ok(LocalStack {
            clients,
            objects,
            pg,
            moto,
        })
    }
}

/// How fast chunks are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// One chunk per interval, as in production.
    Paced(Duration),
    /// As fast as possible.
    Max,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Progress bar with ETA (a terminal).
    Bar,
    /// A plain line every few seconds (logs, CI).
    Lines,
    /// Nothing until the summary (tests).
    Quiet,
}

/// Options of a local run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Directory with transactions.csv and CustomerImportance.csv.
    pub data: PathBuf,
    /// Pacing.
    pub rate: Rate,
    /// Where to copy the outputs.
    pub out: PathBuf,
    /// Keep the services up after the run until Ctrl-C.
    pub keep: bool,
    /// Progress view.
    pub view: View,
    /// Extra settings (thresholds, rows per chunk) on top of the environment's.
    pub settings: Vec<(String, String)>,
}

/// What a local run did.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    /// Chunks cut.
    pub chunks_created: u64,
    /// Chunks applied.
    pub chunks_applied: u64,
    /// Valid rows.
    pub rows: u64,
    /// Rejected rows.
    pub rejected: u64,
    /// Detections per pattern.
    pub detections: [u64; 3],
    /// Wall time from first chunk to last applied.
    pub wall: Duration,
    /// Lag (chunks created − applied) seen at each chunk applied.
    pub lag_samples: Vec<u64>,
    /// Detector milliseconds per chunk.
    pub chunk_millis: Vec<u64>,
    /// Remote requests per chunk.
    pub chunk_requests: Vec<u64>,
    /// Where outputs were copied.
    pub out: PathBuf,
    /// Whether Ctrl-C stopped the run early.
    pub interrupted: bool,
}

#[derive(Default)]
struct Progress {
    created: AtomicU64,
    applied: AtomicU64,
    rows: AtomicU64,
    rejected: AtomicU64,
    detections: [AtomicU64; 3],
    done: AtomicBool,
}

impl Progress {
    fn line(&self) -> String {
        let created = self.created.load(Ordering::Relaxed);
        let applied = self.applied.load(Ordering::Relaxed);
        format!(
            "X {created} chunks | Y {applied} applied, lag {} | {} rows, {} rejected | PatId1 {} PatId2 {} PatId3 {}",
            created.saturating_sub(applied),
            self.rows.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
            self.detections[0].load(Ordering::Relaxed),
            self.detections[1].load(Ordering::Relaxed),
            self.detections[2].load(Ordering::Relaxed),
        )
    }
}

/// The settings of a local run: the environment's `TXPIPE_*` thresholds plus the
/// local stack's endpoints.
fn local_settings(opts: &RunOptions, pg_url: &str) -> Settings {
    let mut pairs: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("TXPIPE_"))
        .collect();
    pairs.extend(opts.settings.iter().cloned());
    let interval = match opts.rate {
        Rate::Paced(d) => d.as_millis().to_string(),
        Rate::Max => "0".into(),
    };
    for (k, v) in [
        ("TXPIPE_BUCKET", BUCKET.to_string()),
        ("TXPIPE_SOURCE_BUCKET", BUCKET.to_string()),
        ("TXPIPE_STATE_TABLE", TABLE.to_string()),
        ("TXPIPE_SOURCE_KEY", "input/transactions.csv".into()),
        (
            "TXPIPE_IMPORTANCE_KEY",
            "input/CustomerImportance.csv".into(),
        ),
        ("TXPIPE_PG_URL", pg_url.to_string()),
        ("TXPIPE_PG_SSLMODE", "disable".into()),
        ("TXPIPE_CHUNK_INTERVAL_MS", interval),
    ] {
        pairs.push((k.into(), v));
    }
    Settings::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// Runs the pipeline end to end on local services.
pub async fn run(opts: RunOptions) -> Result<RunSummary> {
    let say = |text: &str| {
        if opts.view != View::Quiet {
            eprintln!("{text}");
        }
    };
    let transactions_path = opts.data.join("transactions.csv");
    let transactions = std::fs::read(&transactions_path)
        .with_context(|| format!("reading {}", transactions_path.display()))?;

    say("starting moto (S3 + DynamoDB) and a throwaway Postgres on loopback…");
    let stack = LocalStack::start(&opts.data).await?;
    let settings = local_settings(&opts, &stack.pg.url());
    let expected_chunks = split_source(&transactions, rows_per_chunk(&settings)?)
        .map(|c| c.len() as u64)
        .unwrap_or(0);
    drop(transactions);
    say(&format!(
        "moto at {}, Postgres at {}; {} chunks to go ({})",
        stack.moto.endpoint(),
        stack.pg.url(),
        expected_chunks,
        match opts.rate {
            Rate::Paced(d) => format!("one every {d:?}"),
            Rate::Max => "as fast as possible".into(),
        }
    ));
    let clients = &stack.clients;

    let chunker = ChunkerContext::new(clients, &settings)?;
    let mut detector = detector_from_env(clients, &settings).await?;
    detector.record_importance_rejects().await?;
    let progress = Arc::new(Progress::default());
    let (events, mut incoming) = mpsc::unbounded_channel::<String>();
    let started = Instant::now();
    let mut summary = RunSummary {
        out: opts.out.clone(),
        ..RunSummary::default()
    };

    let chunk_task = {
        let progress = progress.clone();
        let chunker = &chunker;
        async move {
            loop {
                // One scheduled invocation: a minute's budget, as on AWS.
                let deadline = Instant::now() + Duration::from_secs(60);
                let run = chunker
                    .invoke(deadline, None, |c| {
                        progress.created.fetch_add(1, Ordering::Relaxed);
                        let _ = events.send(c.key.clone());
                    })
                    .await?;
                if run.finished {
                    break;
                }
            }
            drop(events);
            anyhow::Ok(())
        }
    };
    let detect_task = {
        let progress = progress.clone();
        let summary = &mut summary;
        let detector = &mut detector;
        async move {
            while let Some(key) = incoming.recv().await {
                let event = s3_event(BUCKET, &key);
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let result = handle_detector_event(detector, &event, |a| {
                        progress.applied.fetch_add(1, Ordering::Relaxed);
                        progress.rows.fetch_add(a.rows, Ordering::Relaxed);
                        progress.rejected.fetch_add(a.rejected, Ordering::Relaxed);
                        for (i, n) in a.detections.iter().enumerate() {
                            progress.detections[i].fetch_add(*n, Ordering::Relaxed);
                        }
                        let created = progress.created.load(Ordering::Relaxed);
                        summary
                            .lag_samples
                            .push(created.saturating_sub(a.chunk + 1));
                        summary.chunk_millis.push(a.millis.total);
                        summary.chunk_requests.push(a.requests);
                    })
                    .await;
                    match result {
                        Ok(_) => break,
                        // As Lambda's async retries would: try again, then move on (a
                        // later event catches up).
                        Err(e) if attempts < 3 => {
                            tracing::warn!(error = %e, attempts, "detector invocation failed; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Err(e) => {
                            return Err(anyhow::Error::from(e).context(format!("applying {key}")))
                        }
                    }
                }
            }
            progress.done.store(true, Ordering::Relaxed);
            anyhow::Ok(())
        }
    };
    let view_task = show_progress(progress.clone(), opts.view, expected_chunks);

    let pipeline = async { tokio::try_join!(chunk_task, detect_task) };
    tokio::select! {
        result = pipeline => { result?; }
        _ = tokio::signal::ctrl_c() => {
            summary.interrupted = true;
        }
    }
    progress.done.store(true, Ordering::Relaxed);
    summary.wall = started.elapsed();
    view_task.await.ok();

    summary.chunks_created = progress.created.load(Ordering::Relaxed);
    summary.chunks_applied = progress.applied.load(Ordering::Relaxed);
    summary.rows = progress.rows.load(Ordering::Relaxed);
    summary.rejected = progress.rejected.load(Ordering::Relaxed);
    for i in 0..3 {
        summary.detections[i] = progress.detections[i].load(Ordering::Relaxed);
    }
    export_outputs(&stack.objects, &opts.out).await?;
    if opts.view != View::Quiet {
        let status = read_status(clients, &settings).await?.render();
        print_summary(&summary, &status, &stack.moto, &stack.pg);
    }
    if opts.keep && !summary.interrupted {
        eprintln!("services kept running; press Ctrl-C to stop them");
        let _ = tokio::signal::ctrl_c().await;
    }
    say("stopping moto and Postgres");
    drop(detector); // closes its Postgres connection before the server goes away
    drop(stack);
    Ok(summary)
}

/// Copies the detection files out of moto into `out/detections/`.
async fn export_outputs(objects: &S3Store, out: &std::path::Path) -> Result<()> {
    let dir = out.join("detections");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for key in objects.list(BUCKET, "detections/").await? {
        if let Some(object) = objects.get(BUCKET, &key).await? {
            let name = key.rsplit('/').next().unwrap_or("batch.jsonl");
            std::fs::write(dir.join(name), object.bytes)?;
        }
    }
    Ok(())
}

fn print_summary(s: &RunSummary, status: &str, moto: &MotoServer, pg: &LocalPostgres) {
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    eprintln!();
    eprintln!(
        "{} in {:.1} s: {} chunks, {} rows, {} rejected; PatId1 {}, PatId2 {}, PatId3 {}",
        if s.interrupted { "interrupted" } else { "done" },
        s.wall.as_secs_f64(),
        s.chunks_applied,
        s.rows,
        s.rejected,
        s.detections[0],
        s.detections[1],
        s.detections[2]
    );
    eprintln!(
        "detector per chunk: median {} ms, median {} remote requests; lag median {} max {}",
        median(&s.chunk_millis),
        median(&s.chunk_requests),
        median(&s.lag_samples),
        s.lag_samples.iter().max().copied().unwrap_or(0)
    );
    eprintln!();
    eprint!("{status}");
    eprintln!();
    eprintln!("outputs");
    eprintln!(
        "  S3 detection files   s3://{BUCKET}/detections/…/NNNNNNNN.jsonl (copied to {}/detections/)",
        s.out.display()
    );
    eprintln!("  S3 chunks            s3://{BUCKET}/chunks/input-transactions/NNNNNNNN.csv");
    eprintln!(
        "  Postgres tables      detections, chunks, rejected_rows, transactions, customer_stats"
    );
    eprintln!("while the services run (KEEP=1 make run):");
    eprintln!(
        "  psql {} -c 'SELECT pattern_id, count(*) FROM detections GROUP BY 1'",
        pg.url()
    );
    let creds = "AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1";
    eprintln!(
        "  {creds} aws --endpoint-url {} s3 ls s3://{BUCKET}/detections/ --recursive",
        moto.endpoint()
    );
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "txpipe".into());
    eprintln!(
        "  {creds} AWS_ENDPOINT_URL={} TXPIPE_BUCKET={BUCKET} TXPIPE_STATE_TABLE={TABLE} TXPIPE_PG_URL={} TXPIPE_PG_SSLMODE=disable {me} status",
        moto.endpoint(),
        pg.url()
    );
}

fn show_progress(progress: Arc<Progress>, view: View, total: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        match view {
            View::Quiet => {}
            View::Bar => {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{elapsed_precise} [{bar:30}] {pos}/{len} chunks applied, ETA {eta}\n{msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                while !progress.done.load(Ordering::Relaxed) {
                    bar.set_position(progress.applied.load(Ordering::Relaxed));
                    bar.set_message(progress.line());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                bar.set_position(progress.applied.load(Ordering::Relaxed));
                bar.set_message(progress.line());
                bar.finish();
            }
            View::Lines => {
                let started = Instant::now();
                while !progress.done.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if started.elapsed().as_millis() % 5000 < 100 {
                        eprintln!(
                            "[{:>5.0}s] {}",
                            started.elapsed().as_secs_f64(),
                            progress.line()
                        );
                    }
                }
                eprintln!(
                    "[{:>5.0}s] {}",
                    started.elapsed().as_secs_f64(),
                    progress.line()
                );
            }
        }
    })
}

/// The S3 notification for one new chunk object.
pub fn s3_event(bucket: &str, key: &str) -> serde_json::Value {
    json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": chrono::Utc::now().to_rfc3339(), "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "local"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {
            "s3SchemaVersion": "1.0", "configurationId": "chunks",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "local"}, "arn": format!("arn:aws:s3:::{bucket}")},
            "object": {"key": key, "size": 0, "eTag": "", "sequencer": "0"}
        }
    }]})
}

/// The progress view that fits stderr: a bar on a terminal, lines otherwise.
pub fn default_view() -> View {
    if std::io::stderr().is_terminal() {
        View::Bar
    } else {
        View::Lines
    }
}

/// `txpipe run --services-only`: starts moto and Postgres, uploads the data, prints the
/// environment for `cargo lambda watch` / `txpipe status`, and waits for Ctrl-C.
pub async fn serve(data: &std::path::Path) -> Result<()> {
    let stack = LocalStack::start(data).await?;
    let (moto, pg) = (&stack.moto, &stack.pg);
    println!("export AWS_ENDPOINT_URL={}", moto.endpoint());
    println!("export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1");
    println!("export TXPIPE_BUCKET={BUCKET} TXPIPE_STATE_TABLE={TABLE}");
    println!(
        "export TXPIPE_PG_URL={} TXPIPE_PG_SSLMODE=disable",
        pg.url()
    );
    eprintln!("moto and Postgres are up with the data uploaded; Ctrl-C stops them");
    tokio::signal::ctrl_c().await?;
    eprintln!("stopping moto and Postgres");
    Ok(())
}
