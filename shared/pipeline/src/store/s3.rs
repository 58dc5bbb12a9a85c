//! [`ObjectStore`] over Amazon S3.

use super::{
    ListPage, Listed, ObjectInfo, ObjectStore, RequestCounter, Retry, StoreError, StoredObject,
};
use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

/// S3 through the AWS SDK, counting requests.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    requests: RequestCounter,
}

impl S3Store {
    /// Wraps a client; `requests` is incremented once per call.
    pub fn new(client: aws_sdk_s3::Client, requests: RequestCounter) -> Self {
        S3Store { client, requests }
    }
}

/// The HTTP status of a failed call, when the service answered at all.
fn status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// S3's limit on one PUT.
pub const PUT_LIMIT_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// A failed call as a [`StoreError`]: the service's message and code (or the transport
/// error with its causes), and whether retrying can help — 5xx answers, throttling
/// and transport failures can; other 4xx answers cannot.
fn remote<E>(op: String, err: &SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (message, retry) = match err {
        SdkError::ServiceError(e) => {
            let status = e.raw().status().as_u16();
            let code = e.err().code().unwrap_or("no code");
            let transient = status >= 500
                || status == 429
                || matches!(code, "SlowDown" | "RequestTimeout" | "Throttling");
            (
                format!(
                    "{} ({code}, HTTP {status})",
                    e.err().message().unwrap_or("no message")
                ),
                if transient {
                    Retry::Transient
                } else {
                    Retry::Permanent
                },
            )
        }
        other => (DisplayErrorContext(other).to_string(), Retry::Transient),
    };
    StoreError::Remote { op, message, retry }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, StoreError> {
        self.requests.add(1);
        let out = match self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(remote(format!("GET s3://{bucket}/{key}"), &e)),
        };
        let metadata = out.metadata().cloned().unwrap_or_default();
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| StoreError::remote(format!("reading s3://{bucket}/{key}"), e))?
            .into_bytes()
            .to_vec();
        Ok(Some(StoredObject { bytes, metadata }))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.requests.add(1);
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectInfo {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: out.e_tag().unwrap_or_default().to_string(),
                modified_ms: out
                    .last_modified()
                    .and_then(|t| t.to_millis().ok())
                    .unwrap_or(0),
            })),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(remote(format!("HEAD s3://{bucket}/{key}"), &e)),
        }
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        end: u64,
        etag: &str,
    ) -> Result<Vec<u8>, StoreError> {
        if end <= start {
            return Ok(Vec::new());
        }
        self.requests.add(1);
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .range(format!("bytes={start}-{}", end - 1))
            .if_match(etag)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) if matches!(status(&e), Some(412) | Some(404)) => {
                return Err(StoreError::SourceChanged {
                    bucket: bucket.into(),
                    key: key.into(),
                    expected: etag.into(),
                })
            }
            // A range past the end of the object: nothing to read.
            Err(e) if status(&e) == Some(416) => return Ok(Vec::new()),
            Err(e) => {
                return Err(remote(
                    format!("ranged GET s3://{bucket}/{key} bytes {start}..{end}"),
                    &e,
                ))
            }
        };
        Ok(out
            .body
            .collect()
            .await
            .map_err(|e| StoreError::remote(format!("reading s3://{bucket}/{key}"), e))?
            .into_bytes()
            .to_vec())
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        metadata: &[(&str, String)],
        create_only: bool,
    ) -> Result<bool, StoreError> {
        if body.len() as u64 > PUT_LIMIT_BYTES {
            return Err(StoreError::Limit {
                what: format!("object s3://{bucket}/{key}"),
                size: body.len() as u64,
                limit: PUT_LIMIT_BYTES,
            });
        }
        self.requests.add(1);
        let mut req = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body));
        for (k, v) in metadata {
            req = req.metadata(*k, v);
        }
        if create_only {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => Ok(true),
            // 412: the key exists; 409: a conditional write to it is in flight.
            Err(e) if create_only && matches!(status(&e), Some(412) | Some(409)) => Ok(false),
            Err(e) => Err(remote(format!("PUT s3://{bucket}/{key}"), &e)),
        }
    }

    async fn delete(&self, bucket: &str, keys: &[String]) -> Result<(), StoreError> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        // DeleteObjects takes at most 1,000 keys a call.
        for batch in keys.chunks(1000) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::remote("building DeleteObjects", e))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StoreError::remote("building DeleteObjects", e))?;
            self.requests.add(1);
            let out = self
                .client
                .delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| remote(format!("DeleteObjects in s3://{bucket}"), &e))?;
            if let Some(err) = out.errors().first() {
                return Err(StoreError::remote(
                    format!(
                        "DeleteObjects s3://{bucket}/{}",
                        err.key().unwrap_or_default()
                    ),
                    err.message().unwrap_or("no message"),
                ));
            }
        }
        Ok(())
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            self.requests.add(1);
            let out = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| remote(format!("LIST s3://{bucket}/{prefix}"), &e))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: &str,
        max_keys: u32,
    ) -> Result<ListPage, StoreError> {
        self.requests.add(1);
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .start_after(start_after)
            .max_keys(max_keys.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| {
                remote(
                    format!("LIST s3://{bucket}/{prefix} after {start_after:?}"),
                    &e,
                )
            })?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(Listed {
                    key: o.key()?.to_string(),
                    etag: o.e_tag().unwrap_or_default().to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified_ms: o
                        .last_modified()
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or(0),
                })
            })
            .collect();
        Ok(ListPage {
            objects,
            truncated: out.is_truncated() == Some(true),
        })
    }
}
