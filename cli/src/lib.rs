//! The `txpipe` command's library: data generation, offline replay, the local pipeline
//! and the status view. The end-to-end tests drive the same code.

pub mod bench;
pub mod explain;
pub mod generate;
pub mod invoke;
pub mod operate;
pub mod patterns_cmd;
pub mod replay_cmd;
pub mod report;
pub mod run;
pub mod status;
