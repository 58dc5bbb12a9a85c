//! txpipe-testkit: what the local pipeline (`txpipe run`, `txpipe bench`) and the
//! end-to-end tests need and the Lambdas must not carry.
//!
//! - [`moto`], [`postgres`]: moto's server for S3 and DynamoDB and a throwaway
//!   Postgres cluster, each started on a port the spawned process owns and stopped
//!   when dropped;
//! - [`stack`]: both, with the bucket and table provisioned and clients pointing at
//!   them;
//! - [`events`]: S3 notifications as S3 sends them;
//! - [`faults`]: stores that fail on command, to stop the detector at any step;
//! - [`clock`]: a clock tests move by hand, and S3 objects that expire by it;
//! - [`chaos`]: containers killed or held at their n-th remote call, and S3 events
//!   delivered late, twice, out of order or never.

#![warn(missing_docs)]

pub mod chaos;
pub mod clock;
pub mod events;
pub mod faults;
pub mod moto;
pub mod postgres;
pub mod stack;

pub use moto::MotoServer;
pub use postgres::LocalPostgres;
pub use stack::LocalStack;

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

impl LocalError {
    fn failed(what: impl Into<String>, why: impl std::fmt::Display) -> Self {
        LocalError::Failed {
            what: what.into(),
            why: why.to_string(),
        }
    }
}

/// The full path of a program on PATH.
pub(crate) fn which(program: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
}
