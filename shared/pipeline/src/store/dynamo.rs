//! [`CursorStore`] and [`StateStore`] over one DynamoDB table (`pk` string, `sk`
//! number, always 0).
//!
//! Items: `cursor#s3://bucket/key` (the chunker's cursor), `head#<stream>` (the
//! detector's commit point) and `lease#<stream>` (which invocation applies the stream);
//! for a prefix stream, its file log: `files#<stream>` with `sk` the order in which
//! each file joined, and `file#<stream>#<key>` (sk 0) marking that key as joined.
//! Every item is small and bounded; the adapter refuses one over DynamoDB's 400 KB
//! limit before sending it.

use super::cursor::ChunkStart;
use super::head::{ChunkFailure, SnapshotRef};
use super::{
    ChunkCursor, CursorStore, DetectorHead, Fenced, RequestCounter, Retry, SourceFile, StateStore,
    StoreError,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;
use txpipe_core::engine::Totals;
use txpipe_core::layout::StreamName;
use txpipe_core::{PatternId, PerPattern};

/// DynamoDB's limit on one item, attribute names and values together.
pub const ITEM_LIMIT_BYTES: u64 = 400 * 1024;

type Item = HashMap<String, AttributeValue>;

/// One DynamoDB table holding cursors, heads and leases.
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
        self.get_item_at(pk, 0).await
    }

    async fn get_item_at(&self, pk: &str, sk: u64) -> Result<Option<Item>, StoreError> {
        self.requests.add(1);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", n(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| remote(format!("GetItem {pk}"), &e))?;
        Ok(out.item)
    }

    async fn put_if(
        &self,
        item: Item,
        condition: &str,
        values: Item,
    ) -> Result<Fenced, StoreError> {
        let pk = item
            .get("pk")
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default();
        let size = item_size(&item);
        if size > ITEM_LIMIT_BYTES {
            return Err(StoreError::Limit {
                what: format!("DynamoDB item {pk}"),
                size,
                limit: ITEM_LIMIT_BYTES,
            });
        }
        self.requests.add(1);
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition);
        if !values.is_empty() {
            req = req.set_expression_attribute_values(Some(values));
        }
        // Attribute names that are DynamoDB reserved words go through placeholders.
        for name in ["stream", "owner"] {
            if condition.contains(&format!("#{name}")) {
                req = req.expression_attribute_names(format!("#{name}"), name);
            }
        }
        match req.send().await {
            Ok(_) => Ok(Fenced::Written),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(Fenced::Lost)
            }
            Err(e) => Err(remote(format!("conditional PutItem {pk}"), &e)),
        }
    }
}

/// A failed call as a [`StoreError`]: the service's message and code, or the transport
/// error with its causes, and whether retrying can help.
fn remote<E, R>(op: String, err: &SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (message, retry) = match err {
        SdkError::ServiceError(e) => {
            let code = e.err().code().unwrap_or("no code");
            let retry = match code {
                "ValidationException"
                | "AccessDeniedException"
                | "ResourceNotFoundException"
                | "UnrecognizedClientException"
                | "ItemCollectionSizeLimitExceededException" => Retry::Permanent,
                _ => Retry::Transient,
            };
            (
                format!("{} ({code})", e.err().message().unwrap_or("no message")),
                retry,
            )
        }
        other => (DisplayErrorContext(other).to_string(), Retry::Transient),
    };
    StoreError::Remote { op, message, retry }
}

/// An item's size as DynamoDB counts it: attribute names plus values (strings and
/// binaries by their bytes, numbers by about one byte per two digits plus one).
pub fn item_size(item: &Item) -> u64 {
    item.iter()
        .map(|(name, value)| name.len() as u64 + value_size(value))
        .sum()
}

fn value_size(v: &AttributeValue) -> u64 {
    match v {
        AttributeValue::S(s) => s.len() as u64,
        AttributeValue::N(n) => (n.len() as u64).div_ceil(2) + 1,
        AttributeValue::B(b) => b.as_ref().len() as u64,
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::L(l) => 3 + l.iter().map(|v| 1 + value_size(v)).sum::<u64>(),
        AttributeValue::M(m) => 3 + item_size(m) + m.len() as u64,
        AttributeValue::Ss(v) => v.iter().map(|s| s.len() as u64).sum(),
        AttributeValue::Ns(v) => v.iter().map(|n| (n.len() as u64).div_ceil(2) + 1).sum(),
        AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len() as u64).sum(),
        _ => 0,
    }
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn b(v: Vec<u8>) -> AttributeValue {
    AttributeValue::B(Blob::new(v))
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

    fn has(&self, name: &str) -> bool {
        self.item.contains_key(name)
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

    fn stream(&self, name: &str) -> Result<StreamName, StoreError> {
        let text = self.string(name)?;
        StreamName::parse(&text).ok_or_else(|| self.missing(name, "a stream name"))
    }
}

fn cursor_pk(source_id: &str) -> String {
    format!("cursor#{source_id}")
}

fn head_pk(stream: &StreamName) -> String {
    format!("head#{stream}")
}

fn lease_pk(stream: &StreamName) -> String {
    format!("lease#{stream}")
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
        ("stream".into(), s(c.stream.as_str())),
        ("rows_per_chunk".into(), n(c.rows_per_chunk)),
        ("size".into(), n(c.size)),
        ("header".into(), b(c.header.clone())),
        ("next_chunk".into(), n(c.next_chunk)),
        ("offset".into(), n(c.offset)),
        ("rows_emitted".into(), n(c.rows_emitted)),
        ("finished".into(), AttributeValue::Bool(c.finished)),
        ("recent".into(), b(c.encode_recent())),
        ("updated_ms".into(), n(now_ms())),
        ("file_key".into(), s(&c.file_key)),
        ("file".into(), n(c.file)),
        ("version".into(), n(c.version)),
        ("files".into(), n(c.files)),
        ("newest_key".into(), s(&c.newest_key)),
        ("walk_after".into(), s(&c.walk_after)),
        ("closing".into(), AttributeValue::Bool(c.closing)),
        ("tail_ms".into(), n(c.tail_ms)),
        ("late_files".into(), n(c.late_files)),
        ("changed_files".into(), n(c.changed_files)),
        ("flagged".into(), s(c.flagged.join("\n"))),
        ("blocked".into(), s(&c.blocked)),
        ("columns".into(), b(c.columns.clone())),
    ])
}

/// The condition that the stored cursor is at the version before `c`'s (cursors
/// written before versions existed count as version 0).
fn version_condition(c: &ChunkCursor) -> (&'static str, Item) {
    let prev = c.version.saturating_sub(1);
    let cond = match prev {
        0 => "(attribute_not_exists(version) OR version = :prev)",
        _ => "version = :prev",
    };
    (cond, HashMap::from([(":prev".into(), n(prev))]))
}

/// Whether a transaction was cancelled because one of its conditions failed (and for
/// no other reason).
fn lost_a_condition<R>(
    e: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>,
) -> bool {
    let Some(aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c)) =
        e.as_service_error()
    else {
        return false;
    };
    let codes: Vec<&str> = c
        .cancellation_reasons()
        .iter()
        .filter_map(|r| r.code())
        .filter(|code| *code != "None")
        .collect();
    // moto (and old SDKs) may give no reasons: a cancellation there is a condition.
    codes.is_empty() || codes.iter().all(|code| *code == "ConditionalCheckFailed")
}

fn files_pk(stream: &StreamName) -> String {
    format!("files#{stream}")
}

fn file_pk(stream: &StreamName, key: &str) -> String {
    format!("file#{stream}#{key}")
}

fn file_items(stream: &StreamName, f: &SourceFile) -> [Item; 2] {
    let mut entry = HashMap::from([
        ("key".into(), s(&f.key)),
        ("index".into(), n(f.index)),
        ("etag".into(), s(&f.etag)),
        ("size".into(), n(f.size)),
        ("joined_ms".into(), n(f.joined_ms)),
        ("late".into(), AttributeValue::Bool(f.late)),
    ]);
    if let Some(change) = &f.changed {
        entry.insert("changed".into(), s(change));
    }
    let mut log = entry.clone();
    log.insert("pk".into(), s(files_pk(stream)));
    log.insert("sk".into(), n(f.index));
    entry.insert("pk".into(), s(file_pk(stream, &f.key)));
    entry.insert("sk".into(), n(0));
    [log, entry]
}

fn source_file(item: &Item, at: &str) -> Result<SourceFile, StoreError> {
    let f = Fields { item, at };
    Ok(SourceFile {
        index: f.number("index")?,
        key: f.string("key")?,
        etag: f.string("etag")?,
        size: f.number("size")?,
        joined_ms: f.number("joined_ms")?,
        late: f.flag("late")?,
        changed: match f.has("changed") {
            true => Some(f.string("changed")?),
            false => None,
        },
    })
}

/// The head's attribute counting a pattern's detections: `det1` for PatId1, …
fn detections_field(pattern: PatternId) -> String {
    format!("det{}", pattern.number())
}

fn head_item(h: &DetectorHead) -> Item {
    let mut item = HashMap::from([
        ("pk".into(), s(head_pk(&h.stream))),
        ("sk".into(), n(0)),
        ("stream".into(), s(h.stream.as_str())),
        ("next_chunk".into(), n(h.next_chunk)),
        ("version".into(), n(h.version)),
        ("delta_bytes".into(), n(h.delta_bytes_since_snapshot)),
        ("next_batch".into(), n(h.next_batch)),
        ("pending".into(), b(h.pending.clone())),
        ("finished".into(), AttributeValue::Bool(h.finished)),
        ("fingerprint".into(), s(&h.fingerprint)),
        ("rows".into(), n(h.totals.rows)),
        ("rejected".into(), n(h.totals.rejected)),
        ("updated_ms".into(), n(h.updated_ms)),
    ]);
    for (pattern, count) in h.totals.detections.iter() {
        item.insert(detections_field(pattern), n(count));
    }
    if let Some(snap) = h.snapshot {
        item.insert("snapshot_next".into(), n(snap.next));
        item.insert("snapshot_parts".into(), n(snap.parts));
        item.insert("snapshot_bytes".into(), n(snap.bytes));
    }
    if let Some(source) = &h.source {
        item.insert("source".into(), s(source));
    }
    if let Some(f) = &h.failure {
        item.insert("failed_chunk".into(), n(f.chunk));
        // A reason is an error message: bounded so the item stays small.
        item.insert("failed_reason".into(), s(truncate(&f.reason, 4096)));
        item.insert("failed_attempts".into(), n(f.attempts));
        item.insert("failed_first_ms".into(), n(f.first_ms));
        item.insert("failed_last_ms".into(), n(f.last_ms));
        item.insert("parked".into(), AttributeValue::Bool(f.parked));
        item.insert("failed_recut".into(), AttributeValue::Bool(f.recut));
    }
    if h.prune_pending {
        item.insert("prune_pending".into(), AttributeValue::Bool(true));
    }
    item
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
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
        let source_key = f.string("source_key")?;
        let recent: Vec<ChunkStart> =
            ChunkCursor::decode_recent(&f.bytes("recent")?, source_key.ends_with('/'))
                .ok_or_else(|| f.missing("recent", "a list of chunk starts"))?;
        // Cursors written before prefix streams lack the attributes after `recent`.
        let or = |name: &str, default: u64| match f.has(name) {
            true => f.number(name),
            false => Ok(default),
        };
        let text_or = |name: &str, default: &str| match f.has(name) {
            true => f.string(name),
            false => Ok(default.to_string()),
        };
        Ok(Some(ChunkCursor {
            source_bucket: f.string("source_bucket")?,
            file_key: text_or("file_key", &source_key)?,
            file: or("file", 0)?,
            version: or("version", 0)?,
            files: or("files", 0)?,
            newest_key: text_or("newest_key", "")?,
            walk_after: text_or("walk_after", "")?,
            closing: f.has("closing") && f.flag("closing")?,
            tail_ms: match f.has("tail_ms") {
                true => f.number("tail_ms")?,
                false => 0,
            },
            late_files: or("late_files", 0)?,
            changed_files: or("changed_files", 0)?,
            flagged: text_or("flagged", "")?
                .lines()
                .map(str::to_string)
                .collect(),
            blocked: text_or("blocked", "")?,
            columns: match f.has("columns") {
                true => f.bytes("columns")?,
                false => Vec::new(),
            },
            source_key,
            etag: f.string("etag")?,
            stream: f.stream("stream")?,
            rows_per_chunk: f.number("rows_per_chunk")?,
            size: f.number("size")?,
            header: f.bytes("header")?,
            next_chunk: f.number("next_chunk")?,
            offset: f.number("offset")?,
            rows_emitted: f.number("rows_emitted")?,
            finished: f.flag("finished")?,
            recent,
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
        let (version, mut values) = version_condition(cursor);
        values.insert(":expected".into(), n(expected_next));
        values.insert(":stream".into(), s(cursor.stream.as_str()));
        self.put_if(
            cursor_item(cursor),
            &format!("next_chunk = :expected AND #stream = :stream AND {version}"),
            values,
        )
        .await
    }

    async fn join_files(
        &self,
        cursor: &ChunkCursor,
        files: &[SourceFile],
    ) -> Result<Fenced, StoreError> {
        use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
        // DynamoDB takes at most 100 items per transaction: the cursor and 2 per file.
        if files.len() > 49 {
            return Err(StoreError::Limit {
                what: format!("a transaction joining {} files", files.len()),
                size: 1 + 2 * files.len() as u64,
                limit: 100,
            });
        }
        let item = cursor_item(cursor);
        let size = item_size(&item);
        if size > ITEM_LIMIT_BYTES {
            return Err(StoreError::Limit {
                what: format!("DynamoDB item {}", cursor_pk(&cursor.id())),
                size,
                limit: ITEM_LIMIT_BYTES,
            });
        }
        // The same stream at the version before: a cursor replaced meanwhile (a new
        // stream over the prefix) restarts its versions, so the version alone is not
        // enough.
        let (version, mut values) = version_condition(cursor);
        values.insert(":stream".into(), s(cursor.stream.as_str()));
        let cond = format!("#stream = :stream AND {version}");
        let put = |item: Item, cond: &str, values: Option<Item>| {
            let names = values
                .is_some()
                .then(|| HashMap::from([("#stream".to_string(), "stream".to_string())]));
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression(cond)
                .set_expression_attribute_values(values)
                .set_expression_attribute_names(names)
                .build()
                .map(|p| TransactWriteItem::builder().put(p).build())
                .map_err(|e| StoreError::remote("building TransactWriteItems", e))
        };
        let mut writes = vec![put(item, &cond, Some(values))?];
        for f in files {
            for item in file_items(&cursor.stream, f) {
                writes.push(put(item, "attribute_not_exists(pk)", None)?);
            }
        }
        self.requests.add(1);
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(writes))
            .send()
            .await
        {
            Ok(_) => Ok(Fenced::Written),
            // Lost only when a condition failed; a cancellation for another reason
            // (throttling, a conflicting transaction) is a passing failure, reported.
            Err(e) if lost_a_condition(&e) => Ok(Fenced::Lost),
            Err(e) => Err(remote(
                format!("TransactWriteItems joining {} files", files.len()),
                &e,
            )),
        }
    }

    async fn file_at(
        &self,
        stream: &StreamName,
        index: u64,
    ) -> Result<Option<SourceFile>, StoreError> {
        let pk = files_pk(stream);
        match self.get_item_at(&pk, index).await? {
            Some(item) => Ok(Some(source_file(&item, &format!("{pk} sk={index}"))?)),
            None => Ok(None),
        }
    }

    async fn files_by_key(
        &self,
        stream: &StreamName,
        keys: &[String],
    ) -> Result<HashMap<String, SourceFile>, StoreError> {
        use aws_sdk_dynamodb::types::KeysAndAttributes;
        let mut found = HashMap::new();
        if keys.is_empty() {
            return Ok(found);
        }
        let mut request = KeysAndAttributes::builder().consistent_read(true);
        for key in keys {
            request = request.keys(HashMap::from([
                ("pk".to_string(), s(file_pk(stream, key))),
                ("sk".to_string(), n(0)),
            ]));
        }
        let mut pending = Some(HashMap::from([(
            self.table.clone(),
            request
                .build()
                .map_err(|e| StoreError::remote("building BatchGetItem", e))?,
        )]));
        while let Some(items) = pending.take().filter(|m| !m.is_empty()) {
            self.requests.add(1);
            let out = self
                .client
                .batch_get_item()
                .set_request_items(Some(items))
                .send()
                .await
                .map_err(|e| remote(format!("BatchGetItem of {} file keys", keys.len()), &e))?;
            for item in out
                .responses()
                .and_then(|r| r.get(&self.table))
                .into_iter()
                .flatten()
            {
                let file = source_file(item, "file log entry")?;
                found.insert(file.key.clone(), file);
            }
            pending = out.unprocessed_keys().cloned();
            if pending.as_ref().is_some_and(|p| !p.is_empty()) {
                // Throttled: DynamoDB asks for a pause before the rest.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        Ok(found)
    }

    async fn mark_changed(
        &self,
        stream: &StreamName,
        file: &SourceFile,
        change: &str,
    ) -> Result<(), StoreError> {
        let changed = SourceFile {
            changed: Some(change.to_string()),
            ..file.clone()
        };
        for item in file_items(stream, &changed) {
            self.put_if(item, "attribute_exists(pk)", Item::new())
                .await?;
        }
        Ok(())
    }

    async fn replace_cursor(
        &self,
        cursor: &ChunkCursor,
        expected_stream: &StreamName,
    ) -> Result<Fenced, StoreError> {
        self.put_if(
            cursor_item(cursor),
            "#stream = :stream",
            HashMap::from([(":stream".into(), s(expected_stream.as_str()))]),
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
        Ok(Some(DetectorHead {
            stream: f.stream("stream")?,
            next_chunk: f.number("next_chunk")?,
            version: f.number("version")?,
            snapshot: match f.has("snapshot_next") {
                true => Some(SnapshotRef {
                    next: f.number("snapshot_next")?,
                    parts: f.number("snapshot_parts")?,
                    bytes: f.number("snapshot_bytes")?,
                }),
                false => None,
            },
            delta_bytes_since_snapshot: f.number("delta_bytes")?,
            next_batch: f.number("next_batch")?,
            pending: f.bytes("pending")?,
            finished: f.flag("finished")?,
            prune_pending: f.has("prune_pending") && f.flag("prune_pending")?,
            fingerprint: f.string("fingerprint")?,
            source: match f.has("source") {
                true => Some(f.string("source")?),
                false => None,
            },
            totals: Totals {
                rows: f.number("rows")?,
                rejected: f.number("rejected")?,
                detections: {
                    let mut d = PerPattern::default();
                    for p in txpipe_core::patterns::registered() {
                        // A pattern added after the head was written has none yet.
                        let field = detections_field(p);
                        d.add(p, if f.has(&field) { f.number(&field)? } else { 0 });
                    }
                    d
                },
            },
            updated_ms: f.number("updated_ms")?,
            failure: match f.has("failed_chunk") {
                true => Some(ChunkFailure {
                    chunk: f.number("failed_chunk")?,
                    reason: f.string("failed_reason")?,
                    attempts: f.number("failed_attempts")?,
                    first_ms: f.number("failed_first_ms")?,
                    last_ms: f.number("failed_last_ms")?,
                    parked: f.flag("parked")?,
                    // Absent in heads written before it existed.
                    recut: f.has("failed_recut") && f.flag("failed_recut")?,
                }),
                false => None,
            },
        }))
    }

    async fn put_head(
        &self,
        head: &DetectorHead,
        expected_version: Option<u64>,
    ) -> Result<Fenced, StoreError> {
        // Version 0 is a stream nothing was committed to: no item yet, or one that only
        // records failed attempts at chunk 0.
        let (condition, values) = match expected_version {
            None => ("attribute_not_exists(pk)", Item::new()),
            Some(0) => (
                "attribute_not_exists(pk) OR version = :v",
                HashMap::from([(":v".to_string(), n(0))]),
            ),
            Some(v) => ("version = :v", HashMap::from([(":v".to_string(), n(v))])),
        };
        self.put_if(head_item(head), condition, values).await
    }

    async fn acquire_lease(
        &self,
        stream: &StreamName,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Fenced, StoreError> {
        let item = HashMap::from([
            ("pk".into(), s(lease_pk(stream))),
            ("sk".into(), n(0)),
            ("owner".into(), s(owner)),
            ("until_ms".into(), n(until_ms)),
        ]);
        self.put_if(
            item,
            "attribute_not_exists(pk) OR until_ms < :now OR #owner = :owner",
            HashMap::from([(":now".into(), n(now_ms)), (":owner".into(), s(owner))]),
        )
        .await
    }

    async fn release_lease(&self, stream: &StreamName, owner: &str) -> Result<(), StoreError> {
        let pk = lease_pk(stream);
        self.requests.add(1);
        match self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", n(0))
            .condition_expression("#owner = :owner")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Someone else holds it now (ours expired): nothing of ours to give back.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(remote(format!("DeleteItem {pk}"), &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_size_counts_names_and_values() {
        let item = HashMap::from([
            ("pk".to_string(), s("head#x")),
            ("n".to_string(), n(12345)),
            ("b".to_string(), b(vec![0; 10])),
            ("f".to_string(), AttributeValue::Bool(true)),
        ]);
        assert_eq!(item_size(&item), (2 + 6) + (1 + 4) + (1 + 10) + (1 + 1));
    }

    #[test]
    fn failure_reasons_are_bounded() {
        let long = "é".repeat(5000);
        let short = truncate(&long, 4096);
        assert!(short.len() <= 4096 + "…".len());
        assert!(short.ends_with('…'));
    }
}
