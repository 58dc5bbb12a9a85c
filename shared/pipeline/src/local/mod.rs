//! Local stand-ins for the cloud, for `txpipe run` and the end-to-end tests: moto's
//! server for S3 and DynamoDB, and a throwaway Postgres cluster from the system's
//! binaries, each on a free loopback port and stopped when dropped.

mod moto;
mod postgres;

pub use moto::MotoServer;
pub use postgres::LocalPostgres;

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A local service could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A program is missing.
    #[error("{what} not found ({hint})")]
    Missing {
        /// What is missing.
        what: &'static str,
        /// How to get it.
        hint: String,
    },
    /// A program failed.
    #[error("{what} failed: {why}")]
    Failed {
        /// What was being done.
        what: String,
        /// Output or error.
        why: String,
    },
}

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> Result<u16, LocalError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| LocalError::Failed {
            what: "finding a free port".into(),
            why: e.to_string(),
        })
}

/// Waits until something accepts connections on `port`.
fn wait_for_port(port: u16, timeout: Duration, what: &str) -> Result<(), LocalError> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(LocalError::Failed {
        what: what.into(),
        why: format!("nothing listening on port {port} after {timeout:?}"),
    })
}

/// Creates the pipeline bucket and the state table if they do not exist (local runs).
pub async fn provision(
    clients: &crate::store::clients::AwsClients,
    bucket: &str,
    table: &str,
) -> Result<(), LocalError> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let fail = |what: &str, e: String| LocalError::Failed {
        what: what.into(),
        why: e,
    };
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
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
        };
        clients
            .dynamodb
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                attr("pk", ScalarAttributeType::S).map_err(|e| fail("table", e.to_string()))?,
            )
            .attribute_definitions(
                attr("sk", ScalarAttributeType::N).map_err(|e| fail("table", e.to_string()))?,
            )
            .key_schema(key("pk", KeyType::Hash).map_err(|e| fail("table", e.to_string()))?)
            .key_schema(key("sk", KeyType::Range).map_err(|e| fail("table", e.to_string()))?)
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
