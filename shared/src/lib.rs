//! txpipe: real-time transaction pattern detection.
//!
//! The library holds everything the Lambdas and the CLI share: input parsing
//! ([`parse`]), the pure pattern engine ([`engine`]), detection records
//! ([`detection`]), configuration ([`config`]), and the adapters to S3, DynamoDB and
//! Postgres.

pub mod config;
pub mod detection;
pub mod engine;
pub mod parse;
pub mod percentile;
pub mod weight;

pub use config::PatternConfig;
pub use detection::{Detection, DetectionKey, PatternId};
pub use engine::{ChunkDelta, ChunkOutcome, Engine};
pub use parse::{ImportanceTable, RejectedRow};
pub mod batch;
pub mod chunk;
pub mod chunker;
pub mod detector;
pub mod local;
pub mod metrics;
pub mod postgres;
pub mod replay;
pub mod service;
pub mod store;
