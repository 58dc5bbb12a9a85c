//! A clock tests move by hand, and an S3 stand-in that expires objects by it, as a
//! bucket lifecycle rule would (moto keeps everything for ever).

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use txpipe::clock::Clock;
use txpipe::store::{ObjectInfo, ObjectStore, StoreError, StoredObject};

/// A clock that stands still until moved.
#[derive(Debug)]
pub struct TestClock {
    now: Mutex<DateTime<Utc>>,
}

impl TestClock {
    /// A clock at the real current time.
    pub fn new() -> Arc<Self> {
        Arc::new(TestClock {
            now: Mutex::new(Utc::now()),
        })
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        if let Ok(mut now) = self.now.lock() {
            *now += by;
        }
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        self.now.lock().map(|n| *n).unwrap_or_else(|_| Utc::now())
    }
}

/// An [`ObjectStore`] whose objects under `prefix` expire `after` their last write, by
/// `clock`: an expired object is deleted on its next access, as S3 lifecycle rules
/// delete it some time after it is due.
pub struct Expiring {
    /// The real store.
    pub inner: Arc<dyn ObjectStore>,
    /// The clock deciding what is due.
    pub clock: Arc<dyn Clock>,
    /// Which keys expire.
    pub prefix: String,
    /// How long after its last write a key expires.
    pub after: Duration,
    /// When each key was last written (by this store).
    pub written: Mutex<HashMap<(String, String), DateTime<Utc>>>,
}

impl Expiring {
    /// Objects under `prefix` expire `after` their last write.
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        clock: Arc<dyn Clock>,
        prefix: &str,
        after: Duration,
    ) -> Self {
        Expiring {
            inner,
            clock,
            prefix: prefix.to_string(),
            after,
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Deletes every object under the prefix that is due, as a lifecycle run would.
    pub async fn expire_due(&self) -> Result<Vec<String>, StoreError> {
        let now = self.clock.now();
        let due: Vec<(String, String)> = self
            .written
            .lock()
            .map(|w| {
                w.iter()
                    .filter(|(_, at)| now - **at >= self.after)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut gone = Vec::new();
        for (bucket, key) in due {
            self.inner
                .delete(&bucket, std::slice::from_ref(&key))
                .await?;
            if let Ok(mut w) = self.written.lock() {
                w.remove(&(bucket, key.clone()));
            }
            gone.push(key);
        }
        Ok(gone)
    }
}

#[async_trait]
impl ObjectStore for Expiring {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, StoreError> {
        self.expire_due().await?;
        self.inner.get(bucket, key).await
    }
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.expire_due().await?;
        let written = self
            .written
            .lock()
            .ok()
            .and_then(|w| w.get(&(bucket.to_string(), key.to_string())).copied());
        // Dated by the test clock, as S3 dates an object by its own.
        Ok(self.inner.head(bucket, key).await?.map(|info| ObjectInfo {
            modified_ms: written.map_or(info.modified_ms, |t| t.timestamp_millis()),
            ..info
        }))
    }
    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        end: u64,
        etag: &str,
    ) -> Result<Vec<u8>, StoreError> {
        self.inner.get_range(bucket, key, start, end, etag).await
    }
    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        metadata: &[(&str, String)],
        create_only: bool,
    ) -> Result<bool, StoreError> {
        if create_only {
            self.expire_due().await?;
        }
        let written = self
            .inner
            .put_object(bucket, key, body, metadata, create_only)
            .await?;
        if written && key.starts_with(&self.prefix) {
            if let Ok(mut w) = self.written.lock() {
                w.insert((bucket.to_string(), key.to_string()), self.clock.now());
            }
        }
        Ok(written)
    }
    async fn delete(&self, bucket: &str, keys: &[String]) -> Result<(), StoreError> {
        self.inner.delete(bucket, keys).await
    }
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.expire_due().await?;
        self.inner.list(bucket, prefix).await
    }
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: &str,
        max_keys: u32,
    ) -> Result<txpipe::store::ListPage, txpipe::store::StoreError> {
        self.expire_due().await?;
        self.inner
            .list_page(bucket, prefix, start_after, max_keys)
            .await
    }
}
