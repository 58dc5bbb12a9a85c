//! From an S3 event to the chunks it names.

use aws_lambda_events::s3::S3Event;
use std::collections::BTreeMap;
use txpipe_core::layout::{parse_chunk_key, StreamName};

/// The newest chunk an event names in one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkTarget {
    /// Bucket the event came from.
    pub bucket: String,
    /// The stream.
    pub stream: StreamName,
    /// Chunk number.
    pub chunk: u64,
}

/// What an event asks for, and what in it was not understood.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EventTargets {
    /// One target per stream: the highest chunk named (catch-up covers the rest).
    pub targets: Vec<ChunkTarget>,
    /// Records that name no chunk, each with the reason.
    pub ignored: Vec<String>,
}

/// The event is not an S3 notification at all.
#[derive(Debug, thiserror::Error)]
#[error("not an S3 event notification ({0}); expected {{\"Records\":[{{\"eventName\":\"ObjectCreated:Put\",\"s3\":{{\"bucket\":{{\"name\":…}},\"object\":{{\"key\":\"chunks/<stream>/<k>.csv\"}}}}}}]}}")]
pub struct EventError(String);

/// Reads an S3 event (several records, URL-encoded keys) into per-stream targets.
pub fn targets_from_event(event: &serde_json::Value) -> Result<EventTargets, EventError> {
    let event: S3Event =
        serde_json::from_value(event.clone()).map_err(|e| EventError(e.to_string()))?;
    if event.records.is_empty() {
        return Err(EventError("no records".into()));
    }
    let mut out = EventTargets::default();
    let mut newest: BTreeMap<StreamName, (String, u64)> = BTreeMap::new();
    for record in &event.records {
        let name = record.event_name.as_deref().unwrap_or("");
        if !name.starts_with("ObjectCreated") {
            out.ignored
                .push(format!("event {name:?} is not an object creation"));
            continue;
        }
        let (Some(bucket), Some(raw_key)) = (&record.s3.bucket.name, &record.s3.object.key) else {
            out.ignored.push("record without bucket or key".into());
            continue;
        };
        // S3 URL-encodes keys in notifications, with '+' for spaces.
        let key = match urlencoding::decode(&raw_key.replace('+', " ")) {
            Ok(key) => key.into_owned(),
            Err(e) => {
                out.ignored
                    .push(format!("key {raw_key:?} is not valid URL encoding: {e}"));
                continue;
            }
        };
        match parse_chunk_key(&key) {
            Some((stream, k)) => {
                let entry = newest.entry(stream).or_insert_with(|| (bucket.clone(), k));
                entry.1 = entry.1.max(k);
            }
            None => out.ignored.push(format!(
                "key {key:?} is not a chunk (expected chunks/<stream>/<digits>.csv)"
            )),
        }
    }
    out.targets = newest
        .into_iter()
        .map(|(stream, (bucket, chunk))| ChunkTarget {
            bucket,
            stream,
            chunk,
        })
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, key: &str) -> serde_json::Value {
        serde_json::json!({
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": "2026-01-01T00:00:00.000Z", "eventName": name,
            "userIdentity": {"principalId": "x"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
            "responseElements": {},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "c",
                   "bucket": {"name": "b", "ownerIdentity": {"principalId": "x"}, "arn": "arn:aws:s3:::b"},
                   "object": {"key": key, "size": 1, "eTag": "e", "sequencer": "0"}}
        })
    }

    #[test]
    fn several_records_decoded_and_reduced_to_the_newest() {
        let event = serde_json::json!({"Records": [
            record("ObjectCreated:Put", "chunks/my-data/00000003.csv"),
            record("ObjectCreated:Put", "chunks/my%2Ddata/00000001.csv"),
            record("ObjectCreated:Put", "chunks/my_data/00000001.csv"),
            record("ObjectCreated:Put", "chunks/my+data/00000001.csv"),
            record("ObjectRemoved:Delete", "chunks/x/00000009.csv"),
            record("ObjectCreated:Put", "detections/x/00000000.jsonl"),
        ]});
        let t = targets_from_event(&event).unwrap();
        assert_eq!(
            t.targets,
            vec![
                ChunkTarget {
                    bucket: "b".into(),
                    stream: StreamName::parse("my-data").unwrap(),
                    chunk: 3
                },
                ChunkTarget {
                    bucket: "b".into(),
                    stream: StreamName::parse("my_data").unwrap(),
                    chunk: 1
                },
            ]
        );
        // A space is not part of any stream name; deletions and detection files are
        // not chunks.
        assert_eq!(t.ignored.len(), 3, "{:?}", t.ignored);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = targets_from_event(&serde_json::json!({"hello": 1})).unwrap_err();
        assert!(err.to_string().contains("not an S3 event"));
        assert!(targets_from_event(&serde_json::json!({"Records": []})).is_err());
    }
}
