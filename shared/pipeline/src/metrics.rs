//! CloudWatch Embedded Metric Format: one JSON line on stdout per event, which
//! CloudWatch Logs turns into metrics (namespace `txpipe`, dimension `FunctionName`).

use serde_json::{json, Map, Value};

/// Metric namespace.
pub const NAMESPACE: &str = "txpipe";

/// The one dimension every metric carries: the Lambda function's own name (set by
/// Lambda in `AWS_LAMBDA_FUNCTION_NAME`; the template names them `<stack>-chunker` and
/// `<stack>-detector`). It is unique in an account and region, so two stacks' metrics
/// never mix; the alarms and the dashboard select it. Built here only, so every metric,
/// old or new, carries it.
pub const DIMENSION: &str = "FunctionName";

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

/// The EMF document for `metrics` of the Lambda function `function_name` (the
/// dimension) at `timestamp_ms`. `function` (chunker, detector) is a plain field of
/// the log line, for log queries; it is not a dimension.
pub fn emf_line(
    function_name: &str,
    function: &str,
    timestamp_ms: i64,
    metrics: &[(&str, f64, Unit)],
) -> String {
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [[DIMENSION]],
                "Metrics": metrics
                    .iter()
                    .map(|(name, _, unit)| json!({"Name": name, "Unit": unit.name()}))
                    .collect::<Vec<_>>(),
            }],
        }),
    );
    doc.insert(DIMENSION.into(), Value::from(function_name));
    doc.insert("Function".into(), Value::from(function));
    for (name, value, _) in metrics {
        doc.insert((*name).into(), json!(value));
    }
    Value::Object(doc).to_string()
}

/// Prints an EMF line when running inside Lambda (elsewhere it would only be noise),
/// under the function's own name.
pub fn emit(function: &str, metrics: &[(&str, f64, Unit)]) {
    if let Ok(function_name) = std::env::var("AWS_LAMBDA_FUNCTION_NAME") {
        println!(
            "{}",
            emf_line(
                &function_name,
                function,
                chrono::Utc::now().timestamp_millis(),
                metrics
            )
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_document_names_every_metric() {
        let line = emf_line(
            "txpipe-prod-detector",
            "detector",
            1,
            &[("ChunksApplied", 1.0, Unit::Count)],
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ChunksApplied"], 1.0);
        assert_eq!(v["Function"], "detector");
        let directive = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "txpipe");
        assert_eq!(directive["Metrics"][0]["Name"], "ChunksApplied");
        // The only dimension is the function's own name, which names its stack.
        assert_eq!(directive["Dimensions"], json!([["FunctionName"]]));
        assert_eq!(v["FunctionName"], "txpipe-prod-detector");
    }
}
