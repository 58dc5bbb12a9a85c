//! The Postgres output: connection settings (environment or Secrets Manager, TLS for
//! RDS), embedded migrations, and the [`ChunkSink`](crate::detector::ChunkSink) that
//! writes each chunk's rows in one transaction. The database's setup on AWS (the
//! detector's own role, made by a custom resource) is [`crate::db_setup`].

mod connect;
mod migrations;
mod partitions;
mod sink;

pub use connect::{rds_roots, read_secret, PgSettings, SecretCredentials, SslMode, RDS_CA_BUNDLE};
pub use migrations::{migrate, MIGRATIONS};
pub use sink::PgSink;

use crate::store::Retry;
use std::fmt;

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
    #[error("{op}: {}", Described(.source))]
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

    /// Whether trying again can help: the database unreachable, restarting, busy or
    /// out of resources can pass; a statement it refuses (bad data, a constraint, a
    /// missing privilege) fails the same way every time.
    pub fn retry(&self) -> Retry {
        match self {
            PgError::Secret { .. } => Retry::Transient,
            PgError::Settings(_) | PgError::Tls(_) => Retry::Permanent,
            PgError::Db { source, .. } => match source.code() {
                None => Retry::Transient,
                Some(state) => {
                    let code = state.code();
                    let transient = ["08", "40", "53", "57", "58", "XX"]
                        .iter()
                        .any(|class| code.starts_with(class))
                        || code == "55P03"
                        || code == "55006";
                    if transient {
                        Retry::Transient
                    } else {
                        Retry::Permanent
                    }
                }
            },
        }
    }
}

/// A driver error in full: the server's message, SQLSTATE, detail and hint when the
/// server answered; otherwise the error and its causes (never just "db error").
struct Described<'a>(&'a tokio_postgres::Error);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(db) = self.0.as_db_error() {
            write!(
                f,
                "{} {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            )?;
            if let Some(detail) = db.detail() {
                write!(f, "; detail: {detail}")?;
            }
            if let Some(hint) = db.hint() {
                write!(f, "; hint: {hint}")?;
            }
            if let Some(where_) = db.where_() {
                write!(f, "; where: {where_}")?;
            }
            return Ok(());
        }
        write!(f, "{}", self.0)?;
        let mut cause = std::error::Error::source(self.0);
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}
