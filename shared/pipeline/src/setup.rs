//! Building a service at cold start: the configuration, the AWS clients and the stores
//! over them, made once per container and shared by both functions alike.

use crate::aws::AwsClients;
use crate::config::{Config, ConfigError};
use crate::detector::{ChunkSink, DetectorError};
use crate::postgres::{PgError, PgSink};
use crate::store::dynamo::DynamoTable;
use crate::store::s3::S3Store;
use crate::store::{CursorStore, ObjectStore, RequestCounter, StateStore};
use std::sync::Arc;

/// A service could not be built: a setting is missing or a dependency unusable.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Postgres settings.
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The detector could not start (e.g. the importance file is unusable).
    #[error(transparent)]
    Detector(#[from] DetectorError),
}

/// The remote stores a service works through, all counting into one request counter
/// so each unit of work can report its own remote calls.
#[derive(Clone)]
pub struct Stores {
    /// S3.
    pub objects: Arc<dyn ObjectStore>,
    /// The chunker's cursors (DynamoDB).
    pub cursors: Arc<dyn CursorStore>,
    /// The detector's heads and leases (DynamoDB; its deltas and snapshots are S3
    /// objects).
    pub state: Arc<dyn StateStore>,
    /// Requests made through the stores (and the sink, when it shares the counter).
    pub requests: RequestCounter,
}

impl Stores {
    /// S3 and the state table over real (or local) AWS clients.
    pub fn aws(clients: &AwsClients, config: &Config) -> Self {
        let requests = RequestCounter::default();
        let table = Arc::new(DynamoTable::new(
            clients.dynamodb.clone(),
            config.state_table.clone(),
            requests.clone(),
        ));
        Stores {
            objects: Arc::new(S3Store::new(clients.s3.clone(), requests.clone())),
            cursors: table.clone(),
            state: table,
            requests,
        }
    }

    /// The Postgres sink the configuration names, counting into the same counter.
    pub fn postgres(
        &self,
        clients: &AwsClients,
        config: &Config,
    ) -> Result<Arc<dyn ChunkSink>, SetupError> {
        let pg = config.postgres.clone().ok_or_else(|| {
            PgError::Settings(
                "set TXPIPE_PG_URL (postgres://user:password@host:port/db) or TXPIPE_PG_SECRET_ARN"
                    .into(),
            )
        })?;
        let secrets = aws_sdk_secretsmanager::Client::new(&clients.config);
        Ok(Arc::new(PgSink::new(pg, secrets, self.requests.clone())))
    }
}
