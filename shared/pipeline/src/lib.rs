//! txpipe: the pipeline around the pure core ([`txpipe_core`]).
//!
//! - [`chunker`] and [`detector`]: the two services, each with a `…Service` that the
//!   Lambda `main`s and the CLI build from the environment and call once per event;
//! - [`store`]: the small traits they need from S3 and DynamoDB, and one adapter for
//!   each; [`postgres`]: the output database;
//! - [`config`]: the environment, read once at the edge into typed values;
//!   [`setup`]: clients and stores built at cold start; [`aws`]: AWS clients;
//! - [`metrics`]: CloudWatch Embedded Metric Format; [`timing`]: durations and
//!   deadlines.
//!
//! The core's modules are re-exported under their own names (`txpipe::engine`, …).

#![warn(missing_docs)]

pub mod aws;
pub mod chunker;
pub mod clock;
pub mod config;
pub mod db_setup;
pub mod detector;
pub mod metrics;
pub mod postgres;
pub mod setup;
pub mod store;
pub mod timing;

pub use txpipe_core::{
    batch, cutting, detection, engine, evidence, layout, parse, patterns, percentile, replay,
    weight,
};
pub use txpipe_core::{
    ChunkDelta, ChunkOutcome, Detection, DetectionKey, Engine, ImportanceTable, PatternConfig,
    PatternId, PerPattern, RejectedRow,
};
