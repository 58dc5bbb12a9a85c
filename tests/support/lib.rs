//! End-to-end test support: a local stack (moto for S3 and DynamoDB, a throwaway
//! Postgres) started by the tests themselves, and helpers to drive the real chunker and
//! detector against it.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use txpipe::config::Settings;
use txpipe::local::{provision, LocalPostgres, MotoServer};
use txpipe::service::{detector_from_env, ChunkerContext};
use txpipe::store::clients::AwsClients;
use txpipe::store::s3::S3Store;
use txpipe::store::{ObjectStore, RequestCounter};

/// Pipeline bucket used by the tests.
pub const BUCKET: &str = "txpipe-test";
/// State table used by the tests.
pub const TABLE: &str = "txpipe-test-state";
/// Source key.
pub const SOURCE_KEY: &str = "input/transactions.csv";
/// Importance key.
pub const IMPORTANCE_KEY: &str = "input/CustomerImportance.csv";
/// The stream prefix of [`SOURCE_KEY`].
pub const STREAM: &str = "chunks/input-transactions/";

/// Local services plus clients pointing at them.
pub struct Stack {
    /// moto (S3 + DynamoDB).
    pub moto: MotoServer,
    /// Postgres (None for chunker-only tests).
    pub pg: Option<LocalPostgres>,
    /// Clients for moto.
    pub clients: AwsClients,
}

impl Stack {
    /// Starts moto (and Postgres when `with_pg`), creates the bucket and table.
    pub async fn start(with_pg: bool) -> Result<Stack> {
        let moto = MotoServer::start().context("starting moto (run `make tools`)")?;
        let pg = match with_pg {
            true => Some(LocalPostgres::start().context("starting Postgres (run `make tools`)")?),
            false => None,
        };
        let clients = AwsClients::local(&moto.endpoint()).await;
        provision(&clients, BUCKET, TABLE).await?;
        Ok(Stack { moto, pg, clients })
    }

    /// The pipeline's settings for this stack, with overrides.
    pub fn settings(&self, extra: &[(&str, &str)]) -> Settings {
        let pg_url = self.pg.as_ref().map(|p| p.url()).unwrap_or_default();
        let mut pairs: Vec<(&str, &str)> = vec![
            ("TXPIPE_BUCKET", BUCKET),
            ("TXPIPE_STATE_TABLE", TABLE),
            ("TXPIPE_SOURCE_KEY", SOURCE_KEY),
            ("TXPIPE_IMPORTANCE_KEY", IMPORTANCE_KEY),
            ("TXPIPE_PG_URL", &pg_url),
            ("TXPIPE_PG_SSLMODE", "disable"),
            ("TXPIPE_CHUNK_INTERVAL_MS", "0"),
        ];
        pairs.extend_from_slice(extra);
        // Later pairs override earlier ones.
        let mut map = std::collections::BTreeMap::new();
        for (k, v) in pairs {
            map.insert(k, v);
        }
        Settings::from_pairs(map)
    }

    /// An S3 store on this stack.
    pub fn objects(&self) -> S3Store {
        S3Store::new(self.clients.s3.clone(), RequestCounter::default())
    }

    /// Uploads an object.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.objects().put(BUCKET, key, bytes, &[]).await?;
        Ok(())
    }

    /// Reads an object (None if missing).
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.objects().get(BUCKET, key).await?.map(|o| o.bytes))
    }

    /// Keys under a prefix, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.objects().list(BUCKET, prefix).await?)
    }

    /// A chunker context (a fresh "container") with overrides.
    pub fn chunker(&self, extra: &[(&str, &str)]) -> Result<ChunkerContext> {
        Ok(ChunkerContext::new(&self.clients, &self.settings(extra))?)
    }

    /// A detector (a fresh "container") with overrides.
    pub async fn detector(&self, extra: &[(&str, &str)]) -> Result<txpipe::detector::Detector> {
        Ok(detector_from_env(&self.clients, &self.settings(extra)).await?)
    }

    /// A Postgres client.
    pub async fn pg_client(&self) -> Result<tokio_postgres::Client> {
        let pg = self.pg.as_ref().context("no Postgres in this stack")?;
        let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

/// An S3 ObjectCreated event for `keys` (URL-encoded as S3 sends them).
pub fn s3_event(keys: &[String]) -> Value {
    let records: Vec<Value> = keys
        .iter()
        .map(|key| {
            json!({
                "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
                "eventTime": "2026-11-24T00:00:00.000Z", "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "local"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {},
                "s3": {
                    "s3SchemaVersion": "1.0", "configurationId": "chunks",
                    "bucket": {"name": BUCKET, "ownerIdentity": {"principalId": "local"},
                               "arn": format!("arn:aws:s3:::{BUCKET}")},
                    "object": {"key": urlencode_key(key), "size": 1, "eTag": "0", "sequencer": "0"}
                }
            })
        })
        .collect();
    json!({ "Records": records })
}

/// S3's notification encoding of a key.
pub fn urlencode_key(key: &str) -> String {
    key.split('/')
        .map(urlencoding_part)
        .collect::<Vec<_>>()
        .join("/")
}

fn urlencoding_part(part: &str) -> String {
    part.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
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
pub fn temp_dir(name: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("txpipe-test-{name}-{}", std::process::id()));
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
