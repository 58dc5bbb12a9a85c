//! End-to-end test support: a local stack (moto for S3 and DynamoDB, a throwaway
//! Postgres) started by each test itself, and helpers to drive the real chunker and
//! detector services against it.

use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use txpipe::chunker::{Chunker, ChunkerService};
use txpipe::clock::Clock;
use txpipe::config::{Config, EnvVars};
use txpipe::detector::{ChunkSink, DetectorResponse, DetectorService};
use txpipe::layout::StreamName;
use txpipe::setup::Stores;
use txpipe::store::{DetectorHead, ObjectStore};
use txpipe_testkit::faults::{FaultPlan, FaultyObjects, FaultySink, FaultyState};
use txpipe_testkit::LocalStack;

pub mod browser;
pub mod outputs;

pub use txpipe_testkit::events::object_created;
pub use txpipe_testkit::stack::{BUCKET, TABLE};

/// Source key.
pub const SOURCE_KEY: &str = "input/transactions.csv";
/// Importance key.
pub const IMPORTANCE_KEY: &str = "input/CustomerImportance.csv";

/// A deadline far enough away not to matter.
pub fn far() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

/// Local services plus helpers.
pub struct Stack {
    /// The services.
    pub local: LocalStack,
}

impl Stack {
    /// Starts moto (and Postgres when `with_pg`), creates the bucket and table.
    pub async fn start(with_pg: bool) -> Result<Stack> {
        let local = LocalStack::start(with_pg)
            .await
            .context("starting the local stack (run `make tools`)")?;
        Ok(Stack { local })
    }

    /// The pipeline's environment on this stack, burst mode, with overrides.
    pub fn env(&self, extra: &[(&str, &str)]) -> EnvVars {
        let mut env = self.local.env();
        env.set("TXPIPE_SOURCE_KEY", SOURCE_KEY);
        env.set("TXPIPE_IMPORTANCE_KEY", IMPORTANCE_KEY);
        env.set("TXPIPE_CHUNK_INTERVAL_MS", "0");
        for (k, v) in extra {
            env.set(k, *v);
        }
        env
    }

    /// The configuration of [`Stack::env`].
    pub fn config(&self, extra: &[(&str, &str)]) -> Result<Config> {
        Ok(Config::from_vars(&self.env(extra))?)
    }

    /// Stores on this stack for a configuration.
    pub fn stores(&self, config: &Config) -> Stores {
        Stores::aws(&self.local.clients, config)
    }

    /// A chunker service (a fresh "container") with overrides.
    pub fn chunker(&self, extra: &[(&str, &str)]) -> Result<ChunkerService> {
        let config = self.config(extra)?;
        Ok(ChunkerService::new(self.stores(&config), &config))
    }

    /// A detector service (a fresh "container") with overrides.
    pub async fn detector(&self, extra: &[(&str, &str)]) -> Result<DetectorService> {
        let config = self.config(extra)?;
        let stores = self.stores(&config);
        let sink = stores.postgres(&self.local.clients, &config)?;
        Ok(DetectorService::new(stores, sink, &config).await?)
    }

    /// A chunker over given stores (wrapped, say) and clock.
    pub fn chunker_over(
        &self,
        extra: &[(&str, &str)],
        stores: Stores,
        clock: Arc<dyn Clock>,
    ) -> Result<ChunkerService> {
        let config = self.config(extra)?;
        Ok(ChunkerService::new(stores, &config).with_clock(clock))
    }

    /// A detector over given stores, sink and clock.
    pub async fn detector_over(
        &self,
        extra: &[(&str, &str)],
        stores: Stores,
        sink: Arc<dyn ChunkSink>,
        clock: Arc<dyn Clock>,
    ) -> Result<DetectorService> {
        let config = self.config(extra)?;
        Ok(DetectorService::with_clock(stores, sink, &config, clock).await?)
    }

    /// The Postgres sink of this stack for a configuration.
    pub fn sink(&self, config: &Config) -> Result<Arc<dyn ChunkSink>> {
        Ok(self.stores(config).postgres(&self.local.clients, config)?)
    }

    /// A detector whose stores fail as `plan` says.
    pub async fn faulty_detector(
        &self,
        extra: &[(&str, &str)],
        plan: &Arc<FaultPlan>,
    ) -> Result<DetectorService> {
        let config = self.config(extra)?;
        let real = self.stores(&config);
        let sink = real.postgres(&self.local.clients, &config)?;
        let stores = Stores {
            objects: Arc::new(FaultyObjects {
                inner: real.objects.clone(),
                plan: plan.clone(),
            }),
            state: Arc::new(FaultyState {
                inner: real.state.clone(),
                plan: plan.clone(),
            }),
            ..real
        };
        let sink = Arc::new(FaultySink {
            inner: sink,
            plan: plan.clone(),
        });
        Ok(DetectorService::new(stores, sink, &config).await?)
    }

    /// The stream of the source object now at `source_key` (its name includes the
    /// object's version).
    pub async fn stream_of(&self, source_key: &str) -> Result<StreamName> {
        let info = self
            .local
            .objects()
            .head(BUCKET, source_key)
            .await?
            .with_context(|| format!("no source object {source_key}"))?;
        Ok(txpipe::layout::stream_for_source_version(
            BUCKET, source_key, &info.etag,
        ))
    }

    /// The stream of [`SOURCE_KEY`].
    pub async fn stream(&self) -> Result<StreamName> {
        self.stream_of(SOURCE_KEY).await
    }

    /// Uploads an object.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        Ok(self.local.put(key, bytes).await?)
    }

    /// Reads an object (None if missing).
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .local
            .objects()
            .get(BUCKET, key)
            .await?
            .map(|o| o.bytes))
    }

    /// Keys under a prefix, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.local.objects().list(BUCKET, prefix).await?)
    }

    /// The stream's state objects that `head` does not name (none once pruned).
    pub async fn unneeded_state(
        &self,
        stream: &StreamName,
        head: &DetectorHead,
    ) -> Result<Vec<String>> {
        let mut needed: Vec<String> = (head.snapshot.map_or(0, |s| s.next)..head.next_chunk)
            .map(|k| stream.delta_key(k))
            .collect();
        if let Some(s) = head.snapshot {
            needed.extend((0..s.parts).map(|i| stream.snapshot_part_key(s.next, i)));
        }
        let stored = self.list(&stream.state_prefix()).await?;
        Ok(stored.into_iter().filter(|k| !needed.contains(k)).collect())
    }

    /// A Postgres client.
    pub async fn pg_client(&self) -> Result<tokio_postgres::Client> {
        let pg = self
            .local
            .pg
            .as_ref()
            .context("no Postgres in this stack")?;
        let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

/// The chunker's inner engine over a service's stores and settings, for step-by-step
/// tests.
pub fn raw_chunker(service: &ChunkerService) -> Chunker<'_> {
    Chunker::new(
        service.stores().objects.as_ref(),
        service.stores().cursors.as_ref(),
        service.settings().clone(),
    )
}

/// Delivers an S3 event for `keys` to a detector, as S3 would.
pub async fn deliver(detector: &DetectorService, keys: &[String]) -> Result<DetectorResponse> {
    Ok(detector
        .handle(&object_created(BUCKET, keys), far())
        .await?)
}

/// Generates a BankSim-shaped data set with the project's generator into `dir` and
/// returns (transactions, importance) bytes.
pub fn generate(dir: &Path, rows: u64, seed: u64, customers: usize) -> Result<(Vec<u8>, Vec<u8>)> {
    txpipe_cli::generate::generate(
        &txpipe_cli::generate::GenerateOptions {
            rows,
            seed,
            customers,
        },
        dir,
    )?;
    Ok((
        std::fs::read(dir.join("transactions.csv"))?,
        std::fs::read(dir.join("CustomerImportance.csv"))?,
    ))
}

/// A fresh temp dir for a test.
///
/// Each call gets its own directory, even for the same name in one process: tests of
/// one binary run at once, and two of them writing one file would read each other's
/// half-written data.
pub fn temp_dir(name: &str) -> Result<std::path::PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("txpipe-test-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The identities (patternId, MerchantId, customerName) in a JSON Lines detection file.
pub fn batch_identities(text: &str) -> Result<Vec<(String, String, String)>> {
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)?;
            let field = |f: &str| v[f].as_str().unwrap_or_default().to_string();
            Ok((
                field("patternId"),
                field("MerchantId"),
                field("customerName"),
            ))
        })
        .collect()
}
