//! A whole local stack: moto (S3 + DynamoDB) and optionally a throwaway Postgres, the
//! pipeline bucket and state table created, and clients pointing at them.

use super::{LocalError, LocalPostgres, MotoServer};
use txpipe::aws::AwsClients;
use txpipe::config::EnvVars;
use txpipe::store::s3::S3Store;
use txpipe::store::{ObjectStore, RequestCounter};

/// The pipeline bucket of a local stack.
pub const BUCKET: &str = "txpipe-local";
/// The state table of a local stack.
pub const TABLE: &str = "txpipe-local-state";

/// Local services, provisioned, with clients. Dropping it stops them.
pub struct LocalStack {
    /// Clients for moto.
    pub clients: AwsClients,
    /// Postgres, if started (dropped after the clients that use it).
    pub pg: Option<LocalPostgres>,
    /// moto.
    pub moto: MotoServer,
}

impl LocalStack {
    /// Starts moto (and Postgres when `with_postgres`), creates the bucket and table.
    pub async fn start(with_postgres: bool) -> Result<Self, LocalError> {
        let moto = MotoServer::start()?;
        let pg = match with_postgres {
            true => Some(LocalPostgres::start()?),
            false => None,
        };
        let clients = AwsClients::local(&moto.endpoint()).await;
        provision(&clients, BUCKET, TABLE).await?;
        Ok(LocalStack { clients, pg, moto })
    }

    /// The environment a deployed function would see on this stack: bucket, table,
    /// Postgres (plain TCP on loopback). Thresholds and the rest keep their defaults.
    pub fn env(&self) -> EnvVars {
        let mut env = EnvVars::default();
        env.set("TXPIPE_BUCKET", BUCKET);
        env.set("TXPIPE_STATE_TABLE", TABLE);
        if let Some(pg) = &self.pg {
            env.set("TXPIPE_PG_URL", pg.url());
            env.set("TXPIPE_PG_SSLMODE", "disable");
        }
        env
    }

    /// The same as shell exports, with moto's endpoint and dummy credentials.
    pub fn exports(&self) -> Vec<String> {
        let mut lines = vec![
            format!("export AWS_ENDPOINT_URL={}", self.moto.endpoint()),
            "export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1".into(),
            format!("export TXPIPE_BUCKET={BUCKET} TXPIPE_STATE_TABLE={TABLE}"),
        ];
        if let Some(pg) = &self.pg {
            lines.push(format!(
                "export TXPIPE_PG_URL={} TXPIPE_PG_SSLMODE=disable",
                pg.url()
            ));
        }
        lines
    }

    /// S3 on this stack.
    pub fn objects(&self) -> S3Store {
        S3Store::new(self.clients.s3.clone(), RequestCounter::default())
    }

    /// Writes an object into the pipeline bucket.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), LocalError> {
        self.objects()
            .put(BUCKET, key, bytes, &[])
            .await
            .map_err(|e| LocalError::failed(format!("uploading {key}"), e))
    }
}

/// Creates the pipeline bucket and the state table if they do not exist.
pub async fn provision(clients: &AwsClients, bucket: &str, table: &str) -> Result<(), LocalError> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let fail = |what: &str, e: String| LocalError::failed(what, e);
    let exists = clients.s3.head_bucket().bucket(bucket).send().await.is_ok();
    if !exists {
        clients
            .s3
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| {
                fail(
                    "creating the bucket",
                    aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
                )
            })?;
    }
    let tables = clients.dynamodb.list_tables().send().await.map_err(|e| {
        fail(
            "listing tables",
            aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
        )
    })?;
    if !tables.table_names().iter().any(|t| t == table) {
        let attr = |name: &str, kind| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(kind)
                .build()
                .map_err(|e| fail("describing the table", e.to_string()))
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| fail("describing the table", e.to_string()))
        };
        clients
            .dynamodb
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk", ScalarAttributeType::S)?)
            .attribute_definitions(attr("sk", ScalarAttributeType::N)?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .send()
            .await
            .map_err(|e| {
                fail(
                    "creating the state table",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
                )
            })?;
    }
    Ok(())
}
