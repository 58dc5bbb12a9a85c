//! Configuration: every threshold and setting of docs/behaviour.md, with its default, overridable
//! from the environment.

use std::collections::HashMap;

/// A setting in the environment could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The value does not parse as the setting's type.
    #[error("{var}={value:?} is not valid: expected {expected}")]
    Invalid {
        /// Environment variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What would be valid.
        expected: &'static str,
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

/// The thresholds of the three patterns (docs/behaviour.md, patterns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternConfig {
    /// UPGRADE fires only once the merchant has strictly more transactions than this.
    pub upgrade_min_merchant_txns: u64,
    /// UPGRADE: top of the count distribution, in basis points (100 = top 1 %).
    pub upgrade_top_bp: u64,
    /// UPGRADE: bottom of the weight distribution, in basis points (100 = bottom 1 %).
    pub upgrade_bottom_bp: u64,
    /// CHILD: minimum transactions of the customer at the merchant.
    pub child_min_txns: u64,
    /// CHILD: the average must be strictly below this many cents.
    pub child_avg_below_cents: u64,
    /// DEI-NEEDED: strictly more female customers than this.
    pub dei_min_female: u64,
}

impl Default for PatternConfig {
    fn default() -> Self {
        PatternConfig {
            upgrade_min_merchant_txns: 50_000,
            upgrade_top_bp: 100,
            upgrade_bottom_bp: 100,
            child_min_txns: 80,
            child_avg_below_cents: 2_300,
            dei_min_female: 100,
        }
    }
}

/// Reads settings from a map of variables (the process environment, or a test's map).
pub struct Settings {
    vars: HashMap<String, String>,
}

impl Settings {
    /// The process environment.
    pub fn from_env() -> Self {
        Settings {
            vars: std::env::vars().collect(),
        }
    }

    /// An explicit set of variables.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Settings {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
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
        range: std::ops::RangeInclusive<u64>,
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
                expected: "true or false",
            }),
        }
    }
}

impl PatternConfig {
    /// Reads the thresholds, each defaulting as docs/behaviour.md says.
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let d = PatternConfig::default();
        Ok(PatternConfig {
            upgrade_min_merchant_txns: s.number(
                "TXPIPE_UPGRADE_MIN_MERCHANT_TXNS",
                d.upgrade_min_merchant_txns,
                0..=u64::MAX,
                "a whole number",
            )?,
            upgrade_top_bp: s.number(
                "TXPIPE_UPGRADE_TOP_BP",
                d.upgrade_top_bp,
                0..=9_999,
                "basis points from 0 to 9999",
            )?,
            upgrade_bottom_bp: s.number(
                "TXPIPE_UPGRADE_BOTTOM_BP",
                d.upgrade_bottom_bp,
                1..=10_000,
                "basis points from 1 to 10000",
            )?,
            child_min_txns: s.number(
                "TXPIPE_CHILD_MIN_TXNS",
                d.child_min_txns,
                0..=u64::MAX,
                "a whole number",
            )?,
            child_avg_below_cents: s.number(
                "TXPIPE_CHILD_AVG_BELOW_CENTS",
                d.child_avg_below_cents,
                0..=u64::MAX,
                "cents, e.g. 2300 for Rs 23.00",
            )?,
            dei_min_female: s.number(
                "TXPIPE_DEI_MIN_FEMALE",
                d.dei_min_female,
                0..=u64::MAX,
                "a whole number",
            )?,
        })
    }

    /// A short stable text of the settings, stored with the state so a restart with
    /// different thresholds is refused instead of mixing two definitions.
    pub fn fingerprint(&self) -> String {
        format!(
            "upgrade>{}:top{}bp:bottom{}bp;child>={}:avg<{};dei>{}",
            self.upgrade_min_merchant_txns,
            self.upgrade_top_bp,
            self.upgrade_bottom_bp,
            self.child_min_txns,
            self.child_avg_below_cents,
            self.dei_min_female
        )
    }
}

/// Rows per chunk (docs/behaviour.md, chunks), `TXPIPE_ROWS_PER_CHUNK`.
pub fn rows_per_chunk(s: &Settings) -> Result<u64, ConfigError> {
    s.number(
        "TXPIPE_ROWS_PER_CHUNK",
        10_000,
        1..=1_000_000,
        "rows from 1 to 1000000",
    )
}

/// Detections per S3 file (docs/behaviour.md, outputs), `TXPIPE_DETECTIONS_PER_FILE`.
pub fn detections_per_file(s: &Settings) -> Result<u64, ConfigError> {
    s.number(
        "TXPIPE_DETECTIONS_PER_FILE",
        50,
        1..=100_000,
        "a count from 1 to 100000",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_spec() {
        let c = PatternConfig::from_settings(&Settings::from_pairs([])).unwrap();
        assert_eq!(c, PatternConfig::default());
        assert_eq!(c.upgrade_min_merchant_txns, 50_000);
        assert_eq!((c.upgrade_top_bp, c.upgrade_bottom_bp), (100, 100));
        assert_eq!(
            (c.child_min_txns, c.child_avg_below_cents, c.dei_min_female),
            (80, 2300, 100)
        );
        assert_eq!(rows_per_chunk(&Settings::from_pairs([])).unwrap(), 10_000);
        assert_eq!(detections_per_file(&Settings::from_pairs([])).unwrap(), 50);
    }

    #[test]
    fn overrides_and_errors() {
        let s = Settings::from_pairs([
            ("TXPIPE_UPGRADE_TOP_BP", "1000"),
            ("TXPIPE_CHILD_MIN_TXNS", "1_000"),
        ]);
        let c = PatternConfig::from_settings(&s).unwrap();
        assert_eq!((c.upgrade_top_bp, c.child_min_txns), (1000, 1000));
        let bad = Settings::from_pairs([("TXPIPE_UPGRADE_BOTTOM_BP", "0")]);
        let err = PatternConfig::from_settings(&bad).unwrap_err();
        assert!(err.to_string().contains("TXPIPE_UPGRADE_BOTTOM_BP"));
        assert!(Settings::from_pairs([("X", "maybe")])
            .flag("X", false)
            .is_err());
    }
}
