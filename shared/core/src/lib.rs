//! txpipe-core: the pure, synchronous heart of txpipe. Bytes in, results out; no
//! network, no clock reads, no async.
//!
//! - [`parse`]: reading transactions.csv and CustomerImportance.csv, rejecting bad rows
//!   with reasons;
//! - [`cutting`]: cutting exactly R rows out of a source into chunks;
//! - [`layout`]: the keys chunks and outputs are stored under;
//! - [`engine`]: the running stats, asking each pattern what holds after a chunk and
//!   emitting it once, with its compact state codec (deltas and snapshots);
//! - [`patterns`]: one file per pattern, and the list of those this build runs;
//! - [`detection`], [`evidence`], [`batch`]: detection records, why each fired, and
//!   their grouping into S3 files;
//! - [`config`]: thresholds and settings with their defaults;
//! - [`replay`]: the whole logic over an in-memory source, the offline reference.

#![warn(missing_docs)]

pub mod batch;
pub mod config;
pub mod cutting;
pub mod detection;
pub mod engine;
pub mod evidence;
pub mod index;
pub mod layout;
pub mod names;
pub mod parse;
pub mod patterns;
pub mod percentile;
pub mod replay;
pub mod varint;
pub mod weight;

pub use config::PatternConfig;
pub use detection::{Detection, DetectionKey, PatternId, PerPattern};
pub use engine::{ChunkDelta, ChunkOutcome, Engine};
pub use parse::{ImportanceTable, RejectedRow};
