//! CloudWatch Embedded Metric Format: one JSON line on stdout per event, which
//! CloudWatch Logs turns into metrics (namespace `txpipe`, dimension `Function`).

use serde_json::{json, Map, Value};

/// Metric namespace.
pub const NAMESPACE: &str = "txpipe";

/// A metric's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A count.
    Count,
    /// Milliseconds.
    Milliseconds,
    /// Bytes.
    Bytes,
    /// A percentage.
    Percent,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Bytes => "Bytes",
            Unit::Percent => "Percent",
        }
    }
}

/// The EMF document for `metrics` of `function` at `timestamp_ms`.
pub fn emf_line(function: &str, timestamp_ms: i64, metrics: &[(&str, f64, Unit)]) -> String {
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Function"]],
                "Metrics": metrics
                    .iter()
                    .map(|(name, _, unit)| json!({"Name": name, "Unit": unit.name()}))
                    .collect::<Vec<_>>(),
            }],
        }),
    );
    doc.insert("Function".into(), Value::from(function));
    for (name, value, _) in metrics {
        doc.insert((*name).into(), json!(value));
    }
    Value::Object(doc).to_string()
}

/// Prints an EMF line when running inside Lambda (elsewhere it would only be noise).
pub fn emit(function: &str, metrics: &[(&str, f64, Unit)]) {
    if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
        println!(
            "{}",
            emf_line(function, chrono::Utc::now().timestamp_millis(), metrics)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_document_names_every_metric() {
        let line = emf_line("detector", 1, &[("ChunksApplied", 1.0, Unit::Count)]);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["Function"], "detector");
        assert_eq!(v["ChunksApplied"], 1.0);
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "txpipe");
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
            "ChunksApplied"
        );
    }
}
