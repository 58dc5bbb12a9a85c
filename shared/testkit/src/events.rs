//! S3 event notifications as S3 sends them to the detector.

use serde_json::{json, Value};

/// An `ObjectCreated:Put` notification for `keys` in `bucket`, one record each, keys
/// URL-encoded as S3 encodes them (`+` for a space).
pub fn object_created(bucket: &str, keys: &[String]) -> Value {
    let records: Vec<Value> = keys
        .iter()
        .map(|key| {
            json!({
                "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
                "eventTime": "2026-11-24T00:00:00.000Z", "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "local"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {},
                "s3": {
                    "s3SchemaVersion": "1.0", "configurationId": "chunks",
                    "bucket": {"name": bucket, "ownerIdentity": {"principalId": "local"},
                               "arn": format!("arn:aws:s3:::{bucket}")},
                    "object": {"key": encode_key(key), "size": 1, "eTag": "0", "sequencer": "0"}
                }
            })
        })
        .collect();
    json!({ "Records": records })
}

/// S3's notification encoding of a key: each path segment URL-encoded, spaces as `+`.
pub fn encode_key(key: &str) -> String {
    key.split('/')
        .map(|part| {
            part.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    b' ' => "+".into(),
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// An [`ObjectStore`](txpipe::store::ObjectStore) that announces every chunk object
/// written through it, as S3's event notification would: the key is sent once the
/// PUT has succeeded.
pub struct Notifying {
    /// The real store.
    pub inner: std::sync::Arc<dyn txpipe::store::ObjectStore>,
    /// Where the keys of new chunk objects go.
    pub events: tokio::sync::mpsc::UnboundedSender<String>,
}

#[async_trait::async_trait]
impl txpipe::store::ObjectStore for Notifying {
    async fn get(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<txpipe::store::StoredObject>, txpipe::store::StoreError> {
        self.inner.get(bucket, key).await
    }
    async fn head(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<txpipe::store::ObjectInfo>, txpipe::store::StoreError> {
        self.inner.head(bucket, key).await
    }
    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        end: u64,
        etag: &str,
    ) -> Result<Vec<u8>, txpipe::store::StoreError> {
        self.inner.get_range(bucket, key, start, end, etag).await
    }
    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        metadata: &[(&str, String)],
        create_only: bool,
    ) -> Result<bool, txpipe::store::StoreError> {
        let written = self
            .inner
            .put_object(bucket, key, body, metadata, create_only)
            .await?;
        // S3 announces every write, and only writes.
        if written && txpipe::layout::parse_chunk_key(key).is_some() {
            // A closed receiver means nobody listens any more: nothing to announce.
            let _ = self.events.send(key.to_string());
        }
        Ok(written)
    }
    async fn delete(&self, bucket: &str, keys: &[String]) -> Result<(), txpipe::store::StoreError> {
        self.inner.delete(bucket, keys).await
    }
    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<String>, txpipe::store::StoreError> {
        self.inner.list(bucket, prefix).await
    }
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: &str,
        max_keys: u32,
    ) -> Result<txpipe::store::ListPage, txpipe::store::StoreError> {
        self.inner
            .list_page(bucket, prefix, start_after, max_keys)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_like_s3() {
        assert_eq!(
            encode_key("chunks/my data/00000001.csv"),
            "chunks/my+data/00000001.csv"
        );
        assert_eq!(encode_key("a+b/c"), "a%2Bb/c");
        let event = object_created("b", &["chunks/x/00000000.csv".into()]);
        assert_eq!(event["Records"][0]["s3"]["bucket"]["name"], "b");
    }
}
