//! The pipeline's configuration, read once from the environment at the edge (a Lambda's
//! cold start, a CLI command) into plain typed values. Every part below the edge gets
//! only the values it needs. One variable is read elsewhere: Lambda's own
//! `AWS_LAMBDA_FUNCTION_NAME`, the metrics' dimension (`metrics.rs`); the database
//! set-up custom resource reads its own few (`db_setup`).
//!
//! Every variable, its default and its range is listed in the README's configuration
//! table; the defaults are the constants below and in [`txpipe_core::config`].

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::time::Duration;
pub use txpipe_core::config::{
    PatternConfig, StreamShape, DEFAULT_DETECTIONS_PER_FILE, DEFAULT_ROWS_PER_CHUNK,
    MAX_DETECTIONS_PER_FILE, MAX_ROWS_PER_CHUNK,
};

use crate::postgres::PgSettings;

/// Default key of transactions.csv in the source bucket.
pub const DEFAULT_SOURCE_KEY: &str = "input/transactions.csv";
/// Default key of CustomerImportance.csv in the source bucket.
pub const DEFAULT_IMPORTANCE_KEY: &str = "input/CustomerImportance.csv";
/// Default time between chunks inside one chunker invocation.
pub const DEFAULT_CHUNK_INTERVAL_MS: u64 = 1_000;
/// Default time one chunker invocation keeps emitting.
pub const DEFAULT_CHUNKER_BUDGET_SECS: u64 = 55;
/// Default backpressure: the chunker stops cutting while the detector is this many
/// chunks behind.
pub const DEFAULT_MAX_LAG_CHUNKS: u64 = 600;
/// Default time without detector progress (while it lags) after which the chunker's
/// tick writes the next unapplied chunk again, so that S3 announces it to the detector
/// once more (the watch).
pub const DEFAULT_DETECTOR_STALL_SECS: u64 = 90;
/// Default quiet time after which a prefix stream's rows that do not fill a chunk are
/// cut as a short one.
pub const DEFAULT_FLUSH_AFTER_SECS: u64 = 60;
/// Default time between looks for new files while a prefix stream is out of rows.
pub const DEFAULT_POLL_MS: u64 = 5_000;
/// Default number of failed attempts at a chunk, for a reason that repeats, before the
/// detector parks it.
pub const DEFAULT_PARK_AFTER_ATTEMPTS: u64 = 3;
/// Default number of deltas after which the detector writes a snapshot (sooner when
/// their bytes reach the last snapshot's size).
pub const DEFAULT_SNAPSHOT_MAX_DELTAS: u64 = 200;
/// Default bytes of state in one snapshot part object (before compression). Parts are written and read 16 at a time
/// and decoded on every core, so a reload's time follows the largest part, not the
/// whole state; 16 MiB is where S3's per-request throughput levels off.
pub const DEFAULT_SNAPSHOT_PART_BYTES: u64 = 16 << 20;

/// A setting in the environment could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The value does not parse as the setting's type or is out of range.
    #[error("{var}={value:?} is not valid: expected {expected}")]
    Invalid {
        /// Environment variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What would be valid.
        expected: &'static str,
    },
    /// The value is well-formed but cannot be used, for the reason given.
    #[error("{var} cannot be used: {why}")]
    Unusable {
        /// Environment variable.
        var: &'static str,
        /// Why.
        why: String,
    },
    /// A required setting is missing.
    #[error("{var} is not set: {what}")]
    Missing {
        /// Environment variable.
        var: &'static str,
        /// What it names.
        what: &'static str,
    },
}

/// A snapshot of environment variables, read through typed accessors that name the
/// variable in every error.
#[derive(Debug, Clone, Default)]
pub struct EnvVars {
    vars: HashMap<String, String>,
}

impl EnvVars {
    /// The process environment.
    pub fn from_env() -> Self {
        EnvVars {
            vars: std::env::vars().collect(),
        }
    }

    /// An explicit set of variables (later pairs override earlier ones).
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        EnvVars {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
                .collect(),
        }
    }

    /// Sets one variable (tests and local runs).
    pub fn set(&mut self, var: &str, value: impl Into<String>) {
        self.vars.insert(var.to_string(), value.into());
    }

    /// A string setting, if set and non-empty.
    pub fn string(&self, var: &'static str) -> Option<String> {
        self.vars
            .get(var)
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().to_string())
    }

    /// A required string setting.
    pub fn required(&self, var: &'static str, what: &'static str) -> Result<String, ConfigError> {
        self.string(var).ok_or(ConfigError::Missing { var, what })
    }

    /// An unsigned integer setting within `range`, or its default.
    pub fn number(
        &self,
        var: &'static str,
        default: u64,
        range: RangeInclusive<u64>,
        expected: &'static str,
    ) -> Result<u64, ConfigError> {
        let Some(value) = self.string(var) else {
            return Ok(default);
        };
        value
            .replace('_', "")
            .parse::<u64>()
            .ok()
            .filter(|v| range.contains(v))
            .ok_or(ConfigError::Invalid {
                var,
                value,
                expected,
            })
    }

    /// A boolean setting (`1/true/yes/on` or `0/false/no/off`), or its default.
    pub fn flag(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        let Some(value) = self.string(var) else {
            return Ok(default);
        };
        match value.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::Invalid {
                var,
                value,
                expected: "on or off",
            }),
        }
    }
}

/// Where the input files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// Bucket of the input files.
    pub bucket: String,
    /// Keys of the transactions files, each its own stream (most deployments have
    /// one); the first is the one status and operator commands default to. A key
    /// ending in `/` is a prefix: every `.csv` file under it joins one stream.
    pub transactions_keys: Vec<String>,
    /// The header line for a prefix stream's files written without one.
    pub columns: Option<String>,
    /// Key of CustomerImportance.csv, shared by every stream.
    pub importance_key: String,
}

impl SourceConfig {
    /// The first (usually the only) transactions file.
    pub fn transactions_key(&self) -> &str {
        self.transactions_keys
            .first()
            .map_or(DEFAULT_SOURCE_KEY, String::as_str)
    }
}

/// How the chunker paces itself and watches the detector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkerConfig {
    /// Time between chunks; `None` is burst mode (no pacing).
    pub interval: Option<Duration>,
    /// How long one invocation keeps emitting.
    pub budget: Duration,
    /// Bytes fetched per ranged GET (grows when a chunk needs more).
    pub read_window: u64,
    /// Backpressure: no chunk is cut while the detector is this many chunks behind.
    pub max_lag_chunks: u64,
    /// A lagging detector that made no progress for this long gets its next chunk
    /// written again by the tick (S3 announces it: the watch).
    pub detector_stall: Duration,
    /// A prefix stream's rows that do not fill a chunk are cut once no new file has
    /// joined for this long.
    pub flush_after: Duration,
    /// A prefix stream out of rows looks for new files this often within an
    /// invocation.
    pub poll: Duration,
}

/// How the detector keeps its state and when it gives up on a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorConfig {
    /// A snapshot once this many deltas follow the last one (or their bytes reach its
    /// size, or the stream ends).
    pub snapshot_max_deltas: u64,
    /// The largest snapshot part object, in bytes.
    pub snapshot_part_bytes: u64,
    /// Failed attempts at one chunk, for a reason that repeats, before it is parked.
    pub park_after_attempts: u64,
    /// The function's memory in MB (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, set by Lambda),
    /// against which the state's projected peak is reported.
    pub memory_limit_mb: Option<u64>,
}

/// Everything the pipeline reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// The pipeline bucket: chunks, detections, state.
    pub bucket: String,
    /// The DynamoDB table of cursors and detector heads.
    pub state_table: String,
    /// The input files.
    pub source: SourceConfig,
    /// R and detections per file.
    pub shape: StreamShape,
    /// Pattern thresholds.
    pub patterns: PatternConfig,
    /// The chunker's pacing and watch.
    pub chunker: ChunkerConfig,
    /// The detector's state and parking.
    pub detector: DetectorConfig,
    /// The output database, if configured.
    pub postgres: Option<PgSettings>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&EnvVars::from_env())
    }

    /// Reads a set of variables.
    pub fn from_vars(env: &EnvVars) -> Result<Self, ConfigError> {
        let bucket = env.required(
            "TXPIPE_BUCKET",
            "the pipeline bucket (chunks, detections, state)",
        )?;
        let interval_ms = env.number(
            "TXPIPE_CHUNK_INTERVAL_MS",
            DEFAULT_CHUNK_INTERVAL_MS,
            0..=600_000,
            "milliseconds from 0 (burst) to 600000",
        )?;
        Ok(Config {
            state_table: env.required(
                "TXPIPE_STATE_TABLE",
                "the DynamoDB table for cursors and detector state",
            )?,
            source: SourceConfig {
                bucket: env
                    .string("TXPIPE_SOURCE_BUCKET")
                    .unwrap_or_else(|| bucket.clone()),
                transactions_keys: source_keys(env)?,
                columns: source_columns(env)?,
                importance_key: env
                    .string("TXPIPE_IMPORTANCE_KEY")
                    .unwrap_or_else(|| DEFAULT_IMPORTANCE_KEY.into()),
            },
            bucket,
            shape: stream_shape(env)?,
            patterns: patterns(env)?,
            chunker: ChunkerConfig {
                interval: (interval_ms > 0).then(|| Duration::from_millis(interval_ms)),
                budget: Duration::from_secs(env.number(
                    "TXPIPE_CHUNKER_BUDGET_SECS",
                    DEFAULT_CHUNKER_BUDGET_SECS,
                    1..=900,
                    "seconds from 1 to 900",
                )?),
                read_window: 4 << 20,
                max_lag_chunks: env.number(
                    "TXPIPE_MAX_LAG_CHUNKS",
                    DEFAULT_MAX_LAG_CHUNKS,
                    1..=crate::store::cursor::RECENT_CHUNK_STARTS as u64 - 64,
                    "chunks from 1 to 10176",
                )?,
                detector_stall: Duration::from_secs(env.number(
                    "TXPIPE_DETECTOR_STALL_SECS",
                    DEFAULT_DETECTOR_STALL_SECS,
                    1..=86_400,
                    "seconds from 1 to 86400",
                )?),
                flush_after: Duration::from_secs(env.number(
                    "TXPIPE_FLUSH_AFTER_SECS",
                    DEFAULT_FLUSH_AFTER_SECS,
                    1..=86_400,
                    "seconds from 1 to 86400",
                )?),
                poll: Duration::from_millis(env.number(
                    "TXPIPE_POLL_MS",
                    DEFAULT_POLL_MS,
                    100..=60_000,
                    "milliseconds from 100 to 60000",
                )?),
            },
            detector: DetectorConfig {
                snapshot_max_deltas: env.number(
                    "TXPIPE_SNAPSHOT_MAX_DELTAS",
                    DEFAULT_SNAPSHOT_MAX_DELTAS,
                    1..=100_000,
                    "deltas from 1 to 100000",
                )?,
                snapshot_part_bytes: env.number(
                    "TXPIPE_SNAPSHOT_PART_BYTES",
                    DEFAULT_SNAPSHOT_PART_BYTES,
                    1024..=(1 << 30),
                    "bytes from 1024 to 1073741824",
                )?,
                park_after_attempts: env.number(
                    "TXPIPE_PARK_AFTER_ATTEMPTS",
                    DEFAULT_PARK_AFTER_ATTEMPTS,
                    1..=100,
                    "attempts from 1 to 100",
                )?,
                memory_limit_mb: match env.string("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") {
                    Some(_) => Some(env.number(
                        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                        0,
                        1..=1_048_576,
                        "megabytes",
                    )?),
                    None => None,
                },
            },
            postgres: PgSettings::from_vars(env)?,
        })
    }
}

/// `TXPIPE_SOURCE_COLUMNS`: a header line that names every needed column.
fn source_columns(env: &EnvVars) -> Result<Option<String>, ConfigError> {
    let Some(line) = env.string("TXPIPE_SOURCE_COLUMNS") else {
        return Ok(None);
    };
    use txpipe_core::parse::header::ColumnMap;
    use txpipe_core::parse::transactions::TRANSACTION_COLUMNS;
    match ColumnMap::find(
        "transactions",
        Some(line.trim().as_bytes()),
        &TRANSACTION_COLUMNS,
    ) {
        Ok(_) => Ok(Some(line.trim().to_string())),
        Err(e) => Err(ConfigError::Unusable {
            var: "TXPIPE_SOURCE_COLUMNS",
            why: e.to_string(),
        }),
    }
}

/// The transactions files: `TXPIPE_SOURCE_PREFIX` (one stream over every file under
/// it), `TXPIPE_SOURCE_KEYS` (comma-separated, several streams at once) or
/// `TXPIPE_SOURCE_KEY` (one).
fn source_keys(env: &EnvVars) -> Result<Vec<String>, ConfigError> {
    if let Some(prefix) = env.string("TXPIPE_SOURCE_PREFIX") {
        let trimmed = prefix.trim().trim_matches('/');
        if trimmed.is_empty() || env.string("TXPIPE_SOURCE_KEYS").is_some() {
            return Err(ConfigError::Invalid {
                var: "TXPIPE_SOURCE_PREFIX",
                value: prefix,
                expected: "a non-empty key prefix such as `transactions/` (and no TXPIPE_SOURCE_KEYS beside it)",
            });
        }
        return Ok(vec![format!("{trimmed}/")]);
    }
    let Some(list) = env.string("TXPIPE_SOURCE_KEYS") else {
        return Ok(vec![env
            .string("TXPIPE_SOURCE_KEY")
            .unwrap_or_else(|| DEFAULT_SOURCE_KEY.into())]);
    };
    let keys: Vec<String> = list
        .split(',')
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    if keys.is_empty() || unique.len() != keys.len() {
        return Err(ConfigError::Invalid {
            var: "TXPIPE_SOURCE_KEYS",
            value: list,
            expected: "distinct object keys separated by commas",
        });
    }
    Ok(keys)
}

/// R and detections per file (`TXPIPE_ROWS_PER_CHUNK`, `TXPIPE_DETECTIONS_PER_FILE`).
pub fn stream_shape(env: &EnvVars) -> Result<StreamShape, ConfigError> {
    Ok(StreamShape {
        rows_per_chunk: env.number(
            "TXPIPE_ROWS_PER_CHUNK",
            DEFAULT_ROWS_PER_CHUNK,
            1..=MAX_ROWS_PER_CHUNK,
            "rows from 1 to 1000000",
        )?,
        detections_per_file: env.number(
            "TXPIPE_DETECTIONS_PER_FILE",
            DEFAULT_DETECTIONS_PER_FILE,
            1..=MAX_DETECTIONS_PER_FILE,
            "a count from 1 to 4000",
        )?,
    })
}

/// The pattern thresholds, each as its pattern's file declares it
/// (`txpipe_core::patterns`: `TXPIPE_UPGRADE_*`, `TXPIPE_CHILD_*`, `TXPIPE_DEI_*`).
pub fn patterns(env: &EnvVars) -> Result<PatternConfig, ConfigError> {
    let mut config = PatternConfig::default();
    for s in txpipe_core::patterns::settings() {
        let value = env.number(s.var, s.default, s.range.clone(), s.expected)?;
        config.set(s, value);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> EnvVars {
        EnvVars::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn defaults_and_required_settings() {
        let err = Config::from_vars(&vars(&[])).unwrap_err();
        assert!(err.to_string().contains("TXPIPE_BUCKET"), "{err}");
        let err = Config::from_vars(&vars(&[("TXPIPE_BUCKET", "b")])).unwrap_err();
        assert!(err.to_string().contains("TXPIPE_STATE_TABLE"), "{err}");
        let c = Config::from_vars(&vars(&[
            ("TXPIPE_BUCKET", "b"),
            ("TXPIPE_STATE_TABLE", "t"),
        ]))
        .unwrap();
        assert_eq!(c.source.bucket, "b");
        assert_eq!(c.source.transactions_keys, vec![DEFAULT_SOURCE_KEY]);
        assert_eq!(c.source.importance_key, DEFAULT_IMPORTANCE_KEY);
        assert_eq!(c.shape, StreamShape::default());
        assert_eq!(c.patterns, PatternConfig::default());
        assert_eq!(c.chunker.interval, Some(Duration::from_secs(1)));
        assert_eq!(c.chunker.budget, Duration::from_secs(55));
        assert_eq!(c.chunker.max_lag_chunks, DEFAULT_MAX_LAG_CHUNKS);
        assert_eq!(c.detector.snapshot_max_deltas, DEFAULT_SNAPSHOT_MAX_DELTAS);
        assert_eq!(c.detector.snapshot_part_bytes, DEFAULT_SNAPSHOT_PART_BYTES);
        assert_eq!(c.detector.memory_limit_mb, None);
        assert!(c.postgres.is_none());
    }

    #[test]
    fn the_functions_memory_comes_from_lambda() {
        let base = [("TXPIPE_BUCKET", "b"), ("TXPIPE_STATE_TABLE", "t")];
        let with = |mb: &'static str| {
            let mut v = base.to_vec();
            v.push(("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", mb));
            Config::from_vars(&vars(&v))
        };
        assert_eq!(with("1769").unwrap().detector.memory_limit_mb, Some(1769));
        let err = with("lots").unwrap_err();
        assert!(
            err.to_string().contains("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
            "{err}"
        );
    }

    #[test]
    fn overrides_ranges_and_burst_mode() {
        let c = Config::from_vars(&vars(&[
            ("TXPIPE_BUCKET", "b"),
            ("TXPIPE_STATE_TABLE", "t"),
            ("TXPIPE_SOURCE_BUCKET", "src"),
            ("TXPIPE_CHUNK_INTERVAL_MS", "0"),
            ("TXPIPE_UPGRADE_TOP_BP", "1000"),
            ("TXPIPE_CHILD_MIN_TXNS", "1_000"),
            ("TXPIPE_ROWS_PER_CHUNK", "2000"),
        ]))
        .unwrap();
        assert_eq!(c.source.bucket, "src");
        assert_eq!(c.chunker.interval, None);
        use txpipe_core::patterns::{child, upgrade};
        assert_eq!(
            (
                c.patterns.get(&upgrade::TOP_BP),
                c.patterns.get(&child::MIN_TXNS)
            ),
            (1000, 1000)
        );
        assert_eq!(c.shape.rows_per_chunk, 2000);
        for (var, value) in [
            ("TXPIPE_UPGRADE_BOTTOM_BP", "0"),
            ("TXPIPE_ROWS_PER_CHUNK", "1000001"),
            ("TXPIPE_DETECTIONS_PER_FILE", "4001"),
            ("TXPIPE_CHUNK_INTERVAL_MS", "soon"),
        ] {
            let err = Config::from_vars(&vars(&[
                ("TXPIPE_BUCKET", "b"),
                ("TXPIPE_STATE_TABLE", "t"),
                (var, value),
            ]))
            .unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
        assert!(vars(&[("X", "maybe")]).flag("X", false).is_err());
        let two = Config::from_vars(&vars(&[
            ("TXPIPE_BUCKET", "b"),
            ("TXPIPE_STATE_TABLE", "t"),
            ("TXPIPE_SOURCE_KEYS", "in/a.csv, in/b.csv"),
        ]))
        .unwrap();
        assert_eq!(two.source.transactions_keys, vec!["in/a.csv", "in/b.csv"]);
        let err = Config::from_vars(&vars(&[
            ("TXPIPE_BUCKET", "b"),
            ("TXPIPE_STATE_TABLE", "t"),
            ("TXPIPE_SOURCE_KEYS", "in/a.csv,in/a.csv"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("TXPIPE_SOURCE_KEYS"), "{err}");
        let prefix = Config::from_vars(&vars(&[
            ("TXPIPE_BUCKET", "b"),
            ("TXPIPE_STATE_TABLE", "t"),
            ("TXPIPE_SOURCE_PREFIX", "/feed/transactions"),
            (
                "TXPIPE_SOURCE_COLUMNS",
                "step,customer,gender,merchant,amount",
            ),
            ("TXPIPE_FLUSH_AFTER_SECS", "5"),
        ]))
        .unwrap();
        assert_eq!(prefix.source.transactions_keys, vec!["feed/transactions/"]);
        assert_eq!(
            prefix.source.columns.as_deref(),
            Some("step,customer,gender,merchant,amount")
        );
        let err = Config::from_vars(&vars(&[
            ("TXPIPE_BUCKET", "b"),
            ("TXPIPE_STATE_TABLE", "t"),
            ("TXPIPE_SOURCE_COLUMNS", "step,customer"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("no `gender` column"), "{err}");
        assert_eq!(prefix.chunker.flush_after, Duration::from_secs(5));
    }
}
