//! The Postgres output: connection settings (environment or Secrets Manager, TLS for
//! RDS), embedded migrations, and the [`ChunkSink`](crate::detector::ChunkSink) that
//! writes each chunk's rows in one transaction.

mod connect;
mod migrations;
mod sink;

pub use connect::{PgSettings, SslMode};
pub use migrations::{migrate, MIGRATIONS};
pub use sink::PgSink;

/// Postgres could not be reached or used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Settings are missing or invalid.
    #[error("Postgres settings: {0}")]
    Settings(String),
    /// The credentials secret could not be read.
    #[error("reading Postgres credentials from Secrets Manager secret {arn}: {why}")]
    Secret {
        /// Secret ARN.
        arn: String,
        /// What failed.
        why: String,
    },
    /// TLS setup failed.
    #[error("Postgres TLS: {0}")]
    Tls(String),
    /// The database returned an error (the message never includes the password).
    #[error("{op}: {source}")]
    Db {
        /// What was being done.
        op: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
}

impl PgError {
    pub(crate) fn db(op: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        let op = op.into();
        move |source| PgError::Db { op, source }
    }
}
