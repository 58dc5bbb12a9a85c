//! txpipe: real-time transaction pattern detection.
//!
//! The library holds everything the Lambdas and the CLI share:
//! - the pure, synchronous core: input parsing ([`parse`]), the pattern engine
//!   ([`engine`]), chunk cutting and naming ([`chunk`]), detection records and S3
//!   batching ([`detection`], [`batch`]), settings ([`config`]), offline [`replay`];
//! - the two mechanisms as services over small I/O traits: [`chunker`] and
//!   [`detector`];
//! - the edges: S3 and DynamoDB adapters ([`store`]), the Postgres sink ([`postgres`]),
//!   metrics ([`metrics`]), the Lambda/CLI wiring ([`service`]) and local stand-ins for
//!   the cloud ([`local`]).

#![warn(missing_docs)]

pub mod chunker;
pub mod detector;
pub mod local;
pub mod metrics;
pub mod postgres;
pub mod service;
pub mod store;

pub use txpipe_core::{
    batch, config, cutting, detection, engine, layout, parse, percentile, replay, weight,
};

pub use config::PatternConfig;
pub use detection::{Detection, DetectionKey, PatternId};
pub use engine::{ChunkDelta, ChunkOutcome, Engine};
pub use parse::{ImportanceTable, RejectedRow};
