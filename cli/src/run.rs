//! `txpipe run` (`make run`): the whole pipeline on one machine. Starts moto and a
//! throwaway Postgres, uploads the data, and runs the real chunker and detector code —
//! the same service functions the Lambdas call — with S3 events delivered to the
//! detector as S3 would, one per chunk. Several data sets run as several streams at
//! once, each with its own detector (as Lambda runs one container per concurrent
//! invocation).

use crate::status::read_status;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use txpipe::aws::AwsClients;
use txpipe::chunker::ChunkerService;
use txpipe::config::{stream_shape, Config, EnvVars};
use txpipe::detector::{AppliedChunk, DetectorService};
use txpipe::layout::{StreamName, DETECTIONS_PREFIX, EVIDENCE_PREFIX};
use txpipe::setup::Stores;
use txpipe::store::ObjectStore;
use txpipe::PerPattern;
use txpipe_testkit::events::{object_created, Notifying};
use txpipe_testkit::stack::{BUCKET, TABLE};
use txpipe_testkit::LocalStack;

/// Where the `n`-th data set's transactions go: `input/transactions.csv` for the first
/// (the stream the README and the sample events name), `input/transactions-<n>.csv`
/// for the others.
pub fn source_key(n: usize) -> String {
    match n {
        0 => "input/transactions.csv".into(),
        n => format!("input/transactions-{}.csv", n + 1),
    }
}

/// Where the `n`-th data set's parts go when it holds a `transactions/` folder: a
/// prefix stream over `input/transactions/` (`input/transactions-<n>/` for the others).
pub fn source_prefix(n: usize) -> String {
    match n {
        0 => "input/transactions/".into(),
        n => format!("input/transactions-{}/", n + 1),
    }
}

/// Whether a data set is a folder of parts (a prefix stream) rather than one file.
fn has_parts(dir: &Path) -> bool {
    dir.join(crate::generate::PARTS_DIR).is_dir()
}

/// The source key (or prefix) of each data set.
fn source_keys(data: &[PathBuf]) -> Vec<String> {
    data.iter()
        .enumerate()
        .map(|(n, dir)| match has_parts(dir) {
            true => source_prefix(n),
            false => source_key(n),
        })
        .collect()
}

/// Data rows of a data set (its file, or all its parts).
fn data_rows(dir: &Path) -> Result<u64> {
    let files: Vec<PathBuf> = match has_parts(dir) {
        true => crate::generate::list_parts(dir)?
            .into_iter()
            .map(|(_, p)| p)
            .collect(),
        false => vec![dir.join("transactions.csv")],
    };
    let mut rows = 0;
    for path in files {
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        rows += text
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(|b| b.is_ascii_whitespace()))
            .count()
            .saturating_sub(1) as u64;
    }
    Ok(rows)
}

/// Uploads a data set's parts one at a time while its prefix stream runs — the next
/// once the chunker has joined the last and cut all but less than a chunk of it — or,
/// for a `backfill`, all at once; then closes the stream once every part has joined.
async fn upload_parts(
    stack: &LocalStack,
    config: &Config,
    dir: &Path,
    prefix: &str,
    backfill: bool,
) -> Result<()> {
    let stores = Stores::aws(&stack.clients, config);
    let id = txpipe::store::ChunkCursor::source_id(&config.source.bucket, prefix);
    let r = config.shape.rows_per_chunk;
    let parts = crate::generate::list_parts(dir)?;
    let mut uploaded_rows = 0u64;
    for (i, (key, path)) in parts.iter().enumerate() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        uploaded_rows += bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
            .saturating_sub(1) as u64;
        if backfill {
            continue; // uploaded before the stream started
        }
        stack.put(&format!("{prefix}{key}"), bytes).await?;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Some(c) = stores.cursors.load_cursor(&id).await? else {
                continue;
            };
            if c.files > i as u64 && c.rows_emitted + r > uploaded_rows {
                break;
            }
        }
    }
    loop {
        // The chunker creates the cursor on its first tick.
        let Some(cursor) = stores.cursors.load_cursor(&id).await? else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if cursor.files >= parts.len() as u64
            && txpipe::chunker::close_stream(stores.cursors.as_ref(), &cursor)
                .await
                .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts moto and Postgres and uploads each data set's `transactions.csv` (see
/// [`source_key`]) and the first one's `CustomerImportance.csv` (the importance file is
/// one per deployment, shared by every stream).
pub async fn start_stack(data: &[PathBuf]) -> Result<LocalStack> {
    let stack = LocalStack::start(true).await?;
    let read =
        |path: PathBuf| std::fs::read(&path).with_context(|| format!("reading {}", path.display()));
    for (n, dir) in data.iter().enumerate() {
        // A folder of parts is uploaded while its stream runs.
        if !has_parts(dir) {
            stack
                .put(&source_key(n), read(dir.join("transactions.csv"))?)
                .await?;
        }
    }
    let first = data.first().context("no data set given")?;
    stack
        .put(
            "input/CustomerImportance.csv",
            read(first.join("CustomerImportance.csv"))?,
        )
        .await?;
    Ok(stack)
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
    /// Directories with transactions.csv (and, in the first, CustomerImportance.csv):
    /// one stream each.
    pub data: Vec<PathBuf>,
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
    /// A folder of parts is uploaded whole before the stream starts (a backfill), not
    /// one part at a time while it runs.
    pub backfill: bool,
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
    pub detections: PerPattern,
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
    /// The report pages written, one per stream.
    pub reports: Vec<PathBuf>,
}

/// What the view shows. The detector's figures are read from the streams' heads, which
/// move with every chunk committed (an invocation's reply only comes once it has caught
/// up, which would make the view jump).
#[derive(Default)]
struct Progress {
    created: AtomicU64,
    applied: AtomicU64,
    rows: AtomicU64,
    rejected: AtomicU64,
    /// The highest count seen per pattern.
    detections: std::sync::Mutex<PerPattern>,
    done: AtomicBool,
    streams: std::sync::Mutex<Vec<StreamName>>,
    /// Prefix streams: files joined.
    files: AtomicU64,
    /// Whether any stream is a prefix stream.
    prefix: AtomicBool,
}

impl Progress {
    /// Reads the chunker's figures from the cursors (after the heads, so X ≥ Y).
    async fn refresh_cursors(&self, stores: &Stores, ids: &[String]) -> Result<()> {
        let (mut created, mut files) = (0, 0);
        for id in ids {
            if let Some(c) = stores.cursors.load_cursor(id).await? {
                created += c.next_chunk;
                files += c.files;
                if c.is_prefix() {
                    self.prefix.store(true, Ordering::Relaxed);
                }
            }
        }
        self.created.fetch_max(created, Ordering::Relaxed);
        self.files.fetch_max(files, Ordering::Relaxed);
        Ok(())
    }

    /// Reads the detector's figures from the heads of the streams seen so far.
    async fn refresh(&self, state: &dyn txpipe::store::StateStore) -> Result<()> {
        let streams = match self.streams.lock() {
            Ok(streams) => streams.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let (mut applied, mut rows, mut rejected) = (0, 0, 0);
        let mut detections = PerPattern::default();
        for stream in &streams {
            if let Some(head) = state.load_head(stream).await? {
                applied += head.next_chunk;
                rows += head.totals.rows;
                rejected += head.totals.rejected;
                detections += &head.totals.detections;
            }
        }
        // Heads only move forward; an older read finishing late must not win.
        self.applied.fetch_max(applied, Ordering::Relaxed);
        self.rows.fetch_max(rows, Ordering::Relaxed);
        self.rejected.fetch_max(rejected, Ordering::Relaxed);
        let mut seen = self
            .detections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (pattern, n) in detections.iter() {
            let more = n.saturating_sub(seen.get(pattern));
            seen.add(pattern, more);
        }
        Ok(())
    }

    fn line(&self) -> String {
        let created = self.created.load(Ordering::Relaxed);
        let applied = self.applied.load(Ordering::Relaxed);
        let files = match self.prefix.load(Ordering::Relaxed) {
            true => format!(" ({} files joined)", self.files.load(Ordering::Relaxed)),
            false => String::new(),
        };
        format!(
            "X {created} chunks{files} | Y {applied} applied, lag {} | {} rows, {} rejected | {}",
            created.saturating_sub(applied),
            self.rows.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
            self.detections(),
        )
    }

    fn detections(&self) -> PerPattern {
        self.detections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The environment of a local run: the stack's, the `TXPIPE_*` thresholds of this
/// process's environment, the run's own overrides, and the pacing.
fn local_env(opts: &RunOptions, stack: &LocalStack) -> EnvVars {
    let mut env = EnvVars::from_pairs(std::env::vars().filter(|(k, _)| k.starts_with("TXPIPE_")));
    for line in [
        ("TXPIPE_BUCKET", BUCKET.to_string()),
        ("TXPIPE_STATE_TABLE", TABLE.to_string()),
    ] {
        env.set(line.0, line.1);
    }
    if let Some(pg) = &stack.pg {
        env.set("TXPIPE_PG_URL", pg.url());
        env.set("TXPIPE_PG_SSLMODE", "disable");
    }
    // The per-transaction copy is off on AWS by default (it is what fills a database);
    // a local run shows it.
    if env.string("TXPIPE_PG_TRANSACTIONS").is_none() {
        env.set("TXPIPE_PG_TRANSACTIONS", "on");
    }
    for (k, v) in &opts.settings {
        env.set(k, v.clone());
    }
    let interval = match opts.rate {
        Rate::Paced(d) => d.as_millis().to_string(),
        Rate::Max => "0".into(),
    };
    env.set("TXPIPE_CHUNK_INTERVAL_MS", interval);
    env.set("TXPIPE_SOURCE_KEYS", source_keys(&opts.data).join(","));
    // Parts are uploaded one after another: look for them often.
    if env.string("TXPIPE_POLL_MS").is_none() {
        env.set("TXPIPE_POLL_MS", "200");
    }
    env
}

/// Runs the pipeline end to end on local services.
pub async fn run(opts: RunOptions) -> Result<RunSummary> {
    let say = |text: &str| {
        if opts.view != View::Quiet {
            eprintln!("{text}");
        }
    };
    say("starting moto (S3 + DynamoDB) and a throwaway Postgres on loopback…");
    let stack = start_stack(&opts.data).await?;
    let env = local_env(&opts, &stack);
    let config = Config::from_vars(&env)?;
    let mut expected_chunks = 0;
    let r = stream_shape(&env)?.rows_per_chunk;
    for dir in &opts.data {
        expected_chunks += data_rows(dir)?.div_ceil(r);
    }
    let pg_url = stack.pg.as_ref().map(|p| p.url()).unwrap_or_default();
    say(&format!(
        "moto at {}, Postgres at {pg_url}; {} chunks to go in {} stream{} ({})",
        stack.moto.endpoint(),
        expected_chunks,
        opts.data.len(),
        if opts.data.len() == 1 { "" } else { "s" },
        match opts.rate {
            Rate::Paced(d) if opts.data.iter().all(|d| has_parts(d)) => format!(
                "parts uploaded while the stream runs, cut as they arrive (pacing {d:?} applies to single files only)"
            ),
            Rate::Paced(d) => format!("one every {d:?} per stream"),
            Rate::Max => "as fast as possible".into(),
        }
    ));
    let clients = &stack.clients;

    // The chunker writes through a store that announces each new chunk object, as S3's
    // event notification does; each announcement becomes one detector invocation.
    let (events, mut incoming) = mpsc::unbounded_channel::<String>();
    let stores = Stores::aws(clients, &config);
    let chunker_stores = Stores {
        objects: Arc::new(Notifying {
            inner: stores.objects.clone(),
            events,
        }),
        ..stores.clone()
    };
    let chunker = ChunkerService::new(chunker_stores, &config);
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let mut summary = RunSummary {
        out: opts.out.clone(),
        ..RunSummary::default()
    };

    let chunk_task = {
        let progress = progress.clone();
        async move {
            loop {
                // One scheduled invocation: a minute's budget, as on AWS.
                let deadline = Instant::now() + Duration::from_secs(60);
                let response = chunker.handle(&serde_json::json!({}), deadline).await?;
                let created = response.sources.iter().map(|s| s.next_chunk).sum();
                progress.created.fetch_max(created, Ordering::Relaxed);
                if response.finished() {
                    break;
                }
            }
            // Dropping the chunker's store closes the event channel: the detector tasks
            // end once they have handled every announced chunk.
            drop(chunker);
            anyhow::Ok(())
        }
    };
    // One detector per stream, each with its own queue of events, so streams proceed
    // side by side while each applies its chunks in order.
    let (applied_tx, mut applied_rx) = mpsc::unbounded_channel::<AppliedChunk>();
    let dispatch_task = {
        let config = config.clone();
        let progress = progress.clone();
        async move {
            let mut queues: HashMap<StreamName, mpsc::UnboundedSender<String>> = HashMap::new();
            let mut workers = Vec::new();
            while let Some(key) = incoming.recv().await {
                let Some((stream, _)) = txpipe::layout::parse_chunk_key(&key) else {
                    continue;
                };
                if !queues.contains_key(&stream) {
                    if let Ok(mut streams) = progress.streams.lock() {
                        streams.push(stream.clone());
                    }
                    let (tx, rx) = mpsc::unbounded_channel();
                    // Each stream's detector is its own container, with its own request
                    // count (the figures per chunk are then per stream).
                    let own = Stores::aws(clients, &config);
                    let detector =
                        DetectorService::new(own.clone(), own.postgres(clients, &config)?, &config)
                            .await?;
                    workers.push(tokio::spawn(detect_stream(
                        detector,
                        rx,
                        applied_tx.clone(),
                    )));
                    queues.insert(stream.clone(), tx);
                }
                if let Some(queue) = queues.get(&stream) {
                    let _ = queue.send(key);
                }
            }
            drop(queues);
            drop(applied_tx);
            for worker in workers {
                worker.await??;
            }
            anyhow::Ok(())
        }
    };
    let tally_task = {
        let summary = &mut summary;
        async move {
            while let Some(a) = applied_rx.recv().await {
                summary.lag_samples.push(a.behind);
                summary.chunk_millis.push(a.millis.total);
                summary.chunk_requests.push(a.requests);
            }
            anyhow::Ok(())
        }
    };
    let view_task = show_progress(progress.clone(), opts.view, expected_chunks);
    // The view reads heads through its own stores, so its reads do not count as the
    // detector's requests.
    let view_stores = Stores::aws(clients, &config);
    let view_state = view_stores.state.clone();
    let source_ids: Vec<String> = config
        .source
        .transactions_keys
        .iter()
        .map(|k| txpipe::store::ChunkCursor::source_id(&config.source.bucket, k))
        .collect();
    let refresh_task = {
        let progress = progress.clone();
        let state = view_state.clone();
        let ids = source_ids.clone();
        tokio::spawn(async move {
            while !progress.done.load(Ordering::Relaxed) {
                // A failed read only delays the view; the final refresh below reports.
                let _ = progress.refresh(state.as_ref()).await;
                let _ = progress.refresh_cursors(&view_stores, &ids).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    if opts.backfill {
        // A prefix that already holds its files when the stream starts.
        for (dir, prefix) in opts.data.iter().zip(&config.source.transactions_keys) {
            if has_parts(dir) {
                for (key, path) in crate::generate::list_parts(dir)? {
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    stack.put(&format!("{prefix}{key}"), bytes).await?;
                }
            }
        }
    }
    let upload_task = async {
        let uploads = opts
            .data
            .iter()
            .zip(&config.source.transactions_keys)
            .filter(|(dir, _)| has_parts(dir))
            .map(|(dir, prefix)| upload_parts(&stack, &config, dir, prefix, opts.backfill));
        futures_util::future::try_join_all(uploads).await?;
        anyhow::Ok(())
    };
    let pipeline = async { tokio::try_join!(chunk_task, dispatch_task, tally_task, upload_task) };
    tokio::select! {
        result = pipeline => { result?; }
        _ = tokio::signal::ctrl_c() => {
            summary.interrupted = true;
        }
    }
    summary.wall = started.elapsed();
    progress
        .refresh(view_state.as_ref())
        .await
        .context("reading the detector heads")?;
    progress.done.store(true, Ordering::Relaxed);
    refresh_task.await.ok();
    view_task.await.ok();

    summary.chunks_created = progress.created.load(Ordering::Relaxed);
    summary.chunks_applied = progress.applied.load(Ordering::Relaxed);
    summary.rows = progress.rows.load(Ordering::Relaxed);
    summary.rejected = progress.rejected.load(Ordering::Relaxed);
    summary.detections = progress.detections();
    export_outputs(stores.objects.as_ref(), &opts.out, opts.data.len()).await?;
    summary.reports = write_reports(clients, &config, &opts.out).await?;
    if opts.view != View::Quiet {
        let mut statuses = Vec::new();
        for key in &config.source.transactions_keys {
            statuses.push(read_status(clients, &config, key, None).await?);
        }
        print_summary(
            &summary,
            &statuses,
            &stack,
            &config.source.transactions_keys,
        );
    }
    if opts.keep && !summary.interrupted {
        eprintln!("services kept running; press Ctrl-C to stop them");
        let _ = tokio::signal::ctrl_c().await;
    }
    say("stopping moto and Postgres");
    drop(stores); // closes Postgres connections before the server goes away
    drop(stack);
    Ok(summary)
}

/// Applies one stream's announced chunks in order, retrying a failed invocation as
/// Lambda's asynchronous retries would, and reports each applied chunk.
async fn detect_stream(
    detector: DetectorService,
    mut events: mpsc::UnboundedReceiver<String>,
    applied: mpsc::UnboundedSender<AppliedChunk>,
) -> Result<()> {
    while let Some(key) = events.recv().await {
        let event = object_created(BUCKET, std::slice::from_ref(&key));
        let mut attempts = 0;
        loop {
            attempts += 1;
            let deadline = Instant::now() + Duration::from_secs(60);
            match detector.handle(&event, deadline).await {
                Ok(response) => {
                    for a in response.applied {
                        let _ = applied.send(a);
                    }
                    break;
                }
                Err(e) if attempts < 3 => {
                    tracing::warn!(error = %e, attempts, "detector invocation failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(anyhow::Error::from(e).context(format!("applying {key}"))),
            }
        }
    }
    Ok(())
}

/// Writes each stream's report page: `<out>/report.html`, or one
/// `<out>/report-<stream>.html` per stream when there are several.
async fn write_reports(clients: &AwsClients, config: &Config, out: &Path) -> Result<Vec<PathBuf>> {
    let keys = &config.source.transactions_keys;
    let mut written = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let path = match keys.len() {
            1 => out.join("report.html"),
            _ => out.join(format!("report-{}.html", i + 1)),
        };
        crate::report::write_report(clients, config, Some(key), None, &path).await?;
        written.push(path);
    }
    Ok(written)
}

/// Copies the detection files and their evidence out of moto into `out/detections/`
/// and `out/evidence/` (one folder per stream when there are several).
async fn export_outputs(objects: &dyn ObjectStore, out: &Path, streams: usize) -> Result<()> {
    for prefix in [DETECTIONS_PREFIX, EVIDENCE_PREFIX] {
        let dir = out.join(prefix.trim_end_matches('/'));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for key in objects.list(BUCKET, prefix).await? {
            if let Some(object) = objects.get(BUCKET, &key).await? {
                let relative = key.trim_start_matches(prefix);
                let name = match streams {
                    1 => relative.rsplit('/').next().unwrap_or(relative),
                    _ => relative,
                };
                let path = dir.join(name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(path, object.bytes)?;
            }
        }
    }
    Ok(())
}

fn print_summary(
    s: &RunSummary,
    statuses: &[crate::status::Status],
    stack: &LocalStack,
    source_keys: &[String],
) {
    let stream = statuses
        .first()
        .and_then(|s| s.stream.as_ref())
        .map_or("<stream>".to_string(), |s| s.to_string());
    let pg_url = stack.pg.as_ref().map(|p| p.url()).unwrap_or_default();
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    eprintln!();
    eprintln!(
        "{} in {:.1} s: {} chunks, {} rows, {} rejected; {}",
        if s.interrupted { "interrupted" } else { "done" },
        s.wall.as_secs_f64(),
        s.chunks_applied,
        s.rows,
        s.rejected,
        s.detections
    );
    eprintln!(
        "detector per chunk: median {} ms, median {} remote requests; lag median {} max {}",
        median(&s.chunk_millis),
        median(&s.chunk_requests),
        median(&s.lag_samples),
        s.lag_samples.iter().max().copied().unwrap_or(0)
    );
    eprintln!();
    for status in statuses {
        eprint!("{}", status.render());
        eprintln!();
    }
    eprintln!();
    eprintln!("outputs");
    eprintln!(
        "  S3 detection files   s3://{BUCKET}/detections/…/NNNNNNNN.jsonl (copied to {}/detections/)",
        s.out.display()
    );
    eprintln!(
        "  S3 evidence files    s3://{BUCKET}/evidence/…/NNNNNNNN.jsonl, why each fired (copied to {}/evidence/)",
        s.out.display()
    );
    eprintln!("  S3 chunks            s3://{BUCKET}/chunks/{stream}/NNNNNNNN.csv");
    eprintln!(
        "  Postgres tables      detections, chunks, rejected_rows, transactions, customer_stats"
    );
    for report in &s.reports {
        eprintln!(
            "  report page          {} (open it in a browser)",
            report.display()
        );
    }
    eprintln!("while the services run (KEEP=1 make run):");
    eprintln!("  psql {pg_url} -c 'SELECT pattern_id, count(*) FROM detections GROUP BY 1'");
    let creds = "AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1";
    eprintln!(
        "  {creds} aws --endpoint-url {} s3 ls s3://{BUCKET}/detections/ --recursive",
        stack.moto.endpoint()
    );
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "txpipe".into());
    let env = format!(
        "{creds} AWS_ENDPOINT_URL={} TXPIPE_BUCKET={BUCKET} TXPIPE_STATE_TABLE={TABLE} TXPIPE_SOURCE_KEYS={} TXPIPE_PG_URL={pg_url} TXPIPE_PG_SSLMODE=disable",
        stack.moto.endpoint(),
        source_keys.join(",")
    );
    eprintln!("  {env} {me} status");
    if let Some(report) = s.reports.first() {
        eprintln!("  {env} {me} report --out {}", report.display());
    }
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
pub async fn serve(data: &[PathBuf]) -> Result<()> {
    let stack = start_stack(data).await?;
    for line in stack.exports() {
        println!("{line}");
    }
    eprintln!("moto and Postgres are up with the data uploaded; Ctrl-C stops them");
    tokio::signal::ctrl_c().await?;
    eprintln!("stopping moto and Postgres");
    Ok(())
}
