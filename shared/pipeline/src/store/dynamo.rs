//! [`CursorStore`] and [`StateStore`] over one DynamoDB table (`pk` string, `sk` number).
//!
//! Items: `cursor#s3://bucket/key` (the chunker's cursor), `head#<stream>` (the
//! detector's commit point) and `delta#<stream>` with `sk = chunk·64 + part` (one
//! chunk's state change, split into parts below the 400 KB item limit).

use super::{
    ChunkCursor, CursorStore, DetectorHead, Fenced, RequestCounter, StateStore, StoreError,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use std::collections::HashMap;
use txpipe_core::engine::Totals;
use txpipe_core::layout::StreamName;

/// Parts a delta may be split into; `sk = chunk * DELTA_PARTS + part`.
const DELTA_PARTS: u64 = 64;
/// Bytes per delta part, well under DynamoDB's 400 KB item limit.
const DELTA_PART_BYTES: usize = 350 * 1024;
/// Deltas are only needed until a later snapshot covers them; TTL removes them after.
const DELTA_TTL_SECS: i64 = 14 * 24 * 3600;

type Item = HashMap<String, AttributeValue>;

/// One DynamoDB table holding cursors, heads and deltas.
#[derive(Clone, Debug)]
pub struct DynamoTable {
    client: aws_sdk_dynamodb::Client,
    table: String,
    requests: RequestCounter,
}

impl DynamoTable {
    /// Wraps a client for `table`; `requests` is incremented once per call.
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        requests: RequestCounter,
    ) -> Self {
        DynamoTable {
            client,
            table: table.into(),
            requests,
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    async fn get_item(&self, pk: &str) -> Result<Option<Item>, StoreError> {
        self.requests.add(1);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk.into()))
            .key("sk", AttributeValue::N("0".into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::remote(format!("GetItem {pk}"), describe(&e)))?;
        Ok(out.item)
    }

    async fn put_if(
        &self,
        item: Item,
        condition: &str,
        values: Item,
    ) -> Result<Fenced, StoreError> {
        self.requests.add(1);
        let pk = item.get("pk").and_then(|v| v.as_s().ok()).cloned();
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition);
        if !values.is_empty() {
            req = req.set_expression_attribute_values(Some(values));
        }
        match req.send().await {
            Ok(_) => Ok(Fenced::Written),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(Fenced::Lost)
            }
            Err(e) => Err(StoreError::remote(
                format!("conditional PutItem {}", pk.unwrap_or_default()),
                describe(&e),
            )),
        }
    }
}

/// The service's message and code, or the transport error with its causes.
fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::ServiceError(e) => format!(
            "{} ({})",
            e.err().message().unwrap_or("no message"),
            e.err().code().unwrap_or("no code")
        ),
        other => DisplayErrorContext(other).to_string(),
    }
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// Typed reads of an item's attributes, each failing with the attribute's name.
struct Fields<'a> {
    item: &'a Item,
    at: &'a str,
}

impl Fields<'_> {
    fn missing(&self, name: &str, what: &str) -> StoreError {
        StoreError::corrupt(
            self.at,
            format!("attribute `{name}` is missing or not {what}"),
        )
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<T, StoreError> {
        self.item
            .get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| self.missing(name, "a number of the expected range"))
    }

    fn string(&self, name: &str) -> Result<String, StoreError> {
        self.item
            .get(name)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .ok_or_else(|| self.missing(name, "a string"))
    }

    fn bytes(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        self.item
            .get(name)
            .and_then(|v| v.as_b().ok())
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| self.missing(name, "binary"))
    }

    fn flag(&self, name: &str) -> Result<bool, StoreError> {
        self.item
            .get(name)
            .and_then(|v| v.as_bool().ok())
            .copied()
            .ok_or_else(|| self.missing(name, "a boolean"))
    }
}

fn cursor_pk(source_id: &str) -> String {
    format!("cursor#{source_id}")
}

fn head_pk(stream: &StreamName) -> String {
    format!("head#{stream}")
}

fn delta_pk(stream: &StreamName) -> String {
    format!("delta#{stream}")
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn cursor_item(c: &ChunkCursor) -> Item {
    HashMap::from([
        ("pk".into(), s(cursor_pk(&c.id()))),
        ("sk".into(), n(0)),
        ("source_bucket".into(), s(&c.source_bucket)),
        ("source_key".into(), s(&c.source_key)),
        ("etag".into(), s(&c.etag)),
        ("size".into(), n(c.size)),
        (
            "header".into(),
            AttributeValue::B(Blob::new(c.header.clone())),
        ),
        ("next_chunk".into(), n(c.next_chunk)),
        ("offset".into(), n(c.offset)),
        ("rows_emitted".into(), n(c.rows_emitted)),
        ("finished".into(), AttributeValue::Bool(c.finished)),
        ("updated_ms".into(), n(now_ms())),
    ])
}

fn head_item(h: &DetectorHead) -> Item {
    let mut item = HashMap::from([
        ("pk".into(), s(head_pk(&h.stream))),
        ("sk".into(), n(0)),
        ("stream".into(), s(h.stream.as_str())),
        ("next_chunk".into(), n(h.next_chunk)),
        ("version".into(), n(h.version)),
        ("next_batch".into(), n(h.next_batch)),
        ("pending".into(), s(&h.pending)),
        ("finished".into(), AttributeValue::Bool(h.finished)),
        ("fingerprint".into(), s(&h.fingerprint)),
        ("rows".into(), n(h.totals.rows)),
        ("rejected".into(), n(h.totals.rejected)),
        ("det1".into(), n(h.totals.detections[0])),
        ("det2".into(), n(h.totals.detections[1])),
        ("det3".into(), n(h.totals.detections[2])),
        ("updated_ms".into(), n(h.updated_ms)),
    ]);
    if let Some(snap) = h.snapshot_next {
        item.insert("snapshot_next".into(), n(snap));
    }
    item
}

#[async_trait]
impl CursorStore for DynamoTable {
    async fn load_cursor(&self, source_id: &str) -> Result<Option<ChunkCursor>, StoreError> {
        let at = cursor_pk(source_id);
        let Some(item) = self.get_item(&at).await? else {
            return Ok(None);
        };
        let f = Fields {
            item: &item,
            at: &at,
        };
        Ok(Some(ChunkCursor {
            source_bucket: f.string("source_bucket")?,
            source_key: f.string("source_key")?,
            etag: f.string("etag")?,
            size: f.number("size")?,
            header: f.bytes("header")?,
            next_chunk: f.number("next_chunk")?,
            offset: f.number("offset")?,
            rows_emitted: f.number("rows_emitted")?,
            finished: f.flag("finished")?,
        }))
    }

    async fn create_cursor(&self, cursor: &ChunkCursor) -> Result<Fenced, StoreError> {
        self.put_if(cursor_item(cursor), "attribute_not_exists(pk)", Item::new())
            .await
    }

    async fn advance_cursor(
        &self,
        cursor: &ChunkCursor,
        expected_next: u64,
    ) -> Result<Fenced, StoreError> {
        self.put_if(
            cursor_item(cursor),
            "next_chunk = :expected",
            HashMap::from([(":expected".into(), n(expected_next))]),
        )
        .await
    }
}

#[async_trait]
impl StateStore for DynamoTable {
    async fn load_head(&self, stream: &StreamName) -> Result<Option<DetectorHead>, StoreError> {
        let at = head_pk(stream);
        let Some(item) = self.get_item(&at).await? else {
            return Ok(None);
        };
        let f = Fields {
            item: &item,
            at: &at,
        };
        let stream_text = f.string("stream")?;
        Ok(Some(DetectorHead {
            stream: StreamName::parse(&stream_text).ok_or_else(|| {
                StoreError::corrupt(&at, format!("bad stream name {stream_text:?}"))
            })?,
            next_chunk: f.number("next_chunk")?,
            version: f.number("version")?,
            snapshot_next: match item.contains_key("snapshot_next") {
                true => Some(f.number("snapshot_next")?),
                false => None,
            },
            next_batch: f.number("next_batch")?,
            pending: f.string("pending")?,
            finished: f.flag("finished")?,
            fingerprint: f.string("fingerprint")?,
            totals: Totals {
                rows: f.number("rows")?,
                rejected: f.number("rejected")?,
                detections: [f.number("det1")?, f.number("det2")?, f.number("det3")?],
            },
            updated_ms: f.number("updated_ms")?,
        }))
    }

    async fn load_deltas(
        &self,
        stream: &StreamName,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut chunks: Vec<(u64, Vec<u8>)> = Vec::new();
        if to <= from {
            return Ok(chunks);
        }
        let pk = delta_pk(stream);
        let mut start_key = None;
        loop {
            self.requests.add(1);
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
                .expression_attribute_values(":pk", s(&pk))
                .expression_attribute_values(":lo", n(from * DELTA_PARTS))
                .expression_attribute_values(":hi", n(to * DELTA_PARTS - 1))
                .consistent_read(true)
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(|e| {
                    StoreError::remote(format!("Query {pk} chunks {from}..{to}"), describe(&e))
                })?;
            for item in out.items() {
                let f = Fields { item, at: &pk };
                let sk: u64 = f.number("sk")?;
                let body = f.bytes("body")?;
                let chunk = sk / DELTA_PARTS;
                match chunks.last_mut() {
                    Some((k, bytes)) if *k == chunk => bytes.extend_from_slice(&body),
                    _ => chunks.push((chunk, body)),
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start_key = Some(key),
                _ => break,
            }
        }
        // Every chunk of the range must be there, in order: a gap is lost state.
        for (i, (k, _)) in chunks.iter().enumerate() {
            if *k != from + i as u64 {
                return Err(StoreError::corrupt(
                    &pk,
                    format!("delta of chunk {} is missing", from + i as u64),
                ));
            }
        }
        if chunks.len() as u64 != to - from {
            return Err(StoreError::corrupt(
                &pk,
                format!("deltas {from}..{to} expected, {} found", chunks.len()),
            ));
        }
        Ok(chunks)
    }

    async fn commit(
        &self,
        head: &DetectorHead,
        expected_version: Option<u64>,
        chunk: u64,
        delta: &[u8],
    ) -> Result<Fenced, StoreError> {
        let parts: Vec<&[u8]> = if delta.is_empty() {
            vec![delta]
        } else {
            delta.chunks(DELTA_PART_BYTES).collect()
        };
        if parts.len() as u64 > DELTA_PARTS {
            return Err(StoreError::corrupt(
                delta_pk(&head.stream),
                format!(
                    "delta of chunk {chunk} is {} bytes, over the limit",
                    delta.len()
                ),
            ));
        }
        let (condition, values) = match expected_version {
            None => ("attribute_not_exists(pk)", None),
            Some(v) => (
                "version = :v",
                Some(HashMap::from([(":v".to_string(), n(v))])),
            ),
        };
        let build =
            |e: aws_sdk_dynamodb::error::BuildError| StoreError::remote("building commit", e);
        let mut items = vec![TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(head_item(head)))
                    .condition_expression(condition)
                    .set_expression_attribute_values(values)
                    .build()
                    .map_err(build)?,
            )
            .build()];
        let expires = chrono::Utc::now().timestamp() + DELTA_TTL_SECS;
        for (part, body) in parts.iter().enumerate() {
            let item = HashMap::from([
                ("pk".into(), s(delta_pk(&head.stream))),
                ("sk".into(), n(chunk * DELTA_PARTS + part as u64)),
                ("body".into(), AttributeValue::B(Blob::new(body.to_vec()))),
                ("expires_at".into(), n(expires)),
            ]);
            items.push(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(item))
                            .build()
                            .map_err(build)?,
                    )
                    .build(),
            );
        }
        self.requests.add(1);
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(Fenced::Written),
            Err(e) => {
                let lost = e
                    .as_service_error()
                    .and_then(|e| match e {
                        TransactWriteItemsError::TransactionCanceledException(c) => Some(c),
                        _ => None,
                    })
                    .is_some_and(|c| {
                        c.cancellation_reasons()
                            .iter()
                            .any(|r| r.code() == Some("ConditionalCheckFailed"))
                    });
                if lost {
                    Ok(Fenced::Lost)
                } else {
                    Err(StoreError::remote(
                        format!("commit of chunk {chunk} on {}", head_pk(&head.stream)),
                        describe(&e),
                    ))
                }
            }
        }
    }
}
