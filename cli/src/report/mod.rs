//! `txpipe report`: one self-contained HTML page about a stream — its state, charts of
//! every applied chunk, the latest detections, rejected rows by reason, the top
//! merchants — read from what the pipeline stores (the head and cursor in DynamoDB,
//! chunk objects in S3, the ledger and outputs in Postgres). Works against local
//! services and a deployed stack alike, from the same environment as `txpipe status`.

mod charts;
mod page;

use crate::status::{read_status, Status};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use txpipe::aws::AwsClients;
use txpipe::config::Config;
use txpipe::detection::{PatternId, PerPattern};
use txpipe::layout::{parse_chunk_key, StreamName};
use txpipe::postgres::PgSettings;
use txpipe::setup::Stores;

pub use page::render;

/// The latest detections the page lists.
pub const LATEST_DETECTIONS: i64 = 500;
/// Merchants in the "top merchants" table.
pub const TOP_MERCHANTS: i64 = 15;
/// Example rows shown per rejection reason.
pub const REJECT_EXAMPLES: i64 = 3;

/// Everything the page shows, read at one moment.
#[derive(Debug, Default)]
pub struct ReportData {
    /// When the data was read.
    pub generated_at: DateTime<Utc>,
    /// The stream's state, as `txpipe status` shows it.
    pub status: Status,
    /// Why the Postgres sections are empty (not configured, unreachable), if they are.
    pub postgres_note: Option<String>,
    /// One row per applied chunk, in chunk order (the `chunks` ledger).
    pub ledger: Vec<LedgerRow>,
    /// When each chunk object was last written (its cut), by chunk number.
    pub cut_ms: HashMap<u64, i64>,
    /// Detections per chunk, by pattern.
    pub detections_per_chunk: Vec<(u64, PerPattern)>,
    /// The latest detections, newest first.
    pub latest: Vec<DetectionRow>,
    /// Rejected rows grouped by reason, most frequent first.
    pub rejects: Vec<RejectGroup>,
    /// Merchants with the most detections: (merchant, per pattern).
    pub top_merchants: Vec<(String, PerPattern)>,
}

/// One applied chunk, from the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRow {
    /// Chunk number.
    pub chunk: u64,
    /// Valid rows.
    pub rows: u64,
    /// Rejected rows.
    pub rejected: u64,
    /// New detections.
    pub detections: u64,
    /// When the detector started applying it.
    pub started: DateTime<Utc>,
    /// When its outputs were committed.
    pub finished: DateTime<Utc>,
}

impl LedgerRow {
    /// Detector time for the chunk, in ms.
    pub fn millis(&self) -> i64 {
        (self.finished - self.started).num_milliseconds().max(0)
    }
}

/// One detection, as stored in Postgres.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionRow {
    /// Chunk that produced it.
    pub chunk: u64,
    /// PatId1…
    pub pattern_id: String,
    /// UPGRADE…
    pub action_type: String,
    /// Customer (empty for merchant-wide patterns).
    pub customer: String,
    /// Merchant.
    pub merchant: String,
    /// The detector's start time for the chunk.
    pub y_start_time: DateTime<Utc>,
    /// When it was detected.
    pub detection_time: DateTime<Utc>,
}

/// Rejected rows whose reasons differ only in the values they quote.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectGroup {
    /// The reason with quoted values and numbers blanked.
    pub kind: String,
    /// Rows with it.
    pub count: u64,
    /// The first few: (source row number, reason, raw text).
    pub examples: Vec<(u64, String, String)>,
}

/// Reads the report of `stream`, or of the current stream of the source `source_key`.
pub async fn read_report(
    clients: &AwsClients,
    config: &Config,
    source_key: &str,
    stream: Option<StreamName>,
) -> Result<ReportData> {
    let status = read_status(clients, config, source_key, stream).await?;
    let mut data = ReportData {
        generated_at: Utc::now(),
        ..ReportData::default()
    };
    if let Some(stream) = status.stream.clone() {
        data.cut_ms = cut_times(&Stores::aws(clients, config), &config.bucket, &stream).await?;
        match &config.postgres {
            None => data.postgres_note = Some("Postgres is not configured".into()),
            Some(pg) => {
                let secrets = aws_sdk_secretsmanager::Client::new(&clients.config);
                if let Err(e) = read_postgres(pg, &secrets, stream.as_str(), &mut data).await {
                    data.postgres_note = Some(format!("Postgres is unreachable: {e:#}"));
                }
            }
        }
    }
    data.status = status;
    Ok(data)
}

/// Reads the report of `stream` or of the current stream of the source `source_key`
/// (default: the first configured), and writes the page to `out`.
pub async fn write_report(
    clients: &AwsClients,
    config: &Config,
    source_key: Option<&str>,
    stream: Option<StreamName>,
    out: &std::path::Path,
) -> Result<()> {
    let source_key = match source_key {
        Some(k) => k,
        None => config
            .source
            .transactions_keys
            .first()
            .context("no source configured (TXPIPE_SOURCE_KEY or TXPIPE_SOURCE_PREFIX)")?,
    };
    let data = read_report(clients, config, source_key, stream).await?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, render(&data)).with_context(|| format!("writing {}", out.display()))
}

/// When each chunk object of the stream was written, from one listing.
async fn cut_times(
    stores: &Stores,
    bucket: &str,
    stream: &StreamName,
) -> Result<HashMap<u64, i64>> {
    let prefix = stream.chunks_prefix();
    let mut after = String::new();
    let mut out = HashMap::new();
    loop {
        let page = stores
            .objects
            .list_page(bucket, &prefix, &after, 1000)
            .await
            .context("listing the chunk objects")?;
        for o in &page.objects {
            if let Some((_, k)) = parse_chunk_key(&o.key) {
                out.insert(k, o.modified_ms);
            }
        }
        match page.objects.last() {
            Some(last) if page.truncated => after = last.key.clone(),
            _ => break,
        }
    }
    Ok(out)
}

async fn read_postgres(
    pg: &PgSettings,
    secrets: &aws_sdk_secretsmanager::Client,
    stream: &str,
    data: &mut ReportData,
) -> Result<()> {
    let client = pg.connect(&pg.resolve(secrets).await?).await?;
    let query =
        |what: &'static str| move |e: tokio_postgres::Error| anyhow::Error::new(e).context(what);
    let n = |v: i64| v.max(0) as u64;

    for r in client
        .query(
            "SELECT chunk, rows, rejected, detections, started_at, finished_at
             FROM chunks WHERE stream = $1 ORDER BY chunk",
            &[&stream],
        )
        .await
        .map_err(query("reading the chunks ledger"))?
    {
        data.ledger.push(LedgerRow {
            chunk: n(r.get(0)),
            rows: n(r.get(1)),
            rejected: n(r.get(2)),
            detections: n(r.get(3)),
            started: r.get(4),
            finished: r.get(5),
        });
    }

    let mut per_chunk: Vec<(u64, PerPattern)> = Vec::new();
    for r in client
        .query(
            "SELECT chunk, pattern_id, count(*) FROM detections WHERE stream = $1
             GROUP BY 1, 2 ORDER BY 1",
            &[&stream],
        )
        .await
        .map_err(query("counting detections per chunk"))?
    {
        let chunk = n(r.get(0));
        let Some(pattern) = PatternId::from_id(r.get(1)) else {
            continue;
        };
        if per_chunk.last().map(|(c, _)| *c) != Some(chunk) {
            per_chunk.push((chunk, PerPattern::default()));
        }
        if let Some((_, counts)) = per_chunk.last_mut() {
            counts.add(pattern, n(r.get(2)));
        }
    }
    data.detections_per_chunk = per_chunk;

    for r in client
        .query(
            "SELECT chunk, pattern_id, action_type, customer_name, merchant_id, y_start_time,
                    detection_time
             FROM detections WHERE stream = $1
             ORDER BY chunk DESC, seq_in_chunk DESC LIMIT $2",
            &[&stream, &LATEST_DETECTIONS],
        )
        .await
        .map_err(query("reading the latest detections"))?
    {
        data.latest.push(DetectionRow {
            chunk: n(r.get(0)),
            pattern_id: r.get(1),
            action_type: r.get(2),
            customer: r.get(3),
            merchant: r.get(4),
            y_start_time: r.get(5),
            detection_time: r.get(6),
        });
    }

    // Reasons quote the offending value ("`amount` is \"abc\"…"); grouping by the
    // reason with quoted values and numbers blanked gives one line per kind of fault.
    for r in client
        .query(
            r#"WITH r AS (
                 SELECT regexp_replace(regexp_replace(reason, '"([^"\\]|\\.)*"', '"…"', 'g'),
                                       '[0-9]+', 'N', 'g') AS kind,
                        row_number AS row, reason, raw_text
                 FROM rejected_rows WHERE file = 'transactions' AND source = $1),
               k AS (SELECT kind, count(*) AS n FROM r GROUP BY kind),
               e AS (SELECT kind, row, reason, raw_text,
                            row_number() OVER (PARTITION BY kind ORDER BY row) AS i FROM r)
               SELECT k.kind, k.n, e.row, e.reason, left(e.raw_text, 300)
               FROM k JOIN e USING (kind) WHERE e.i <= $2
               ORDER BY k.n DESC, k.kind, e.row"#,
            &[&stream, &REJECT_EXAMPLES],
        )
        .await
        .map_err(query("grouping the rejected rows"))?
    {
        let kind: String = r.get(0);
        if data.rejects.last().map(|g| &g.kind) != Some(&kind) {
            data.rejects.push(RejectGroup {
                kind,
                count: n(r.get(1)),
                examples: Vec::new(),
            });
        }
        if let Some(group) = data.rejects.last_mut() {
            group.examples.push((n(r.get(2)), r.get(3), r.get(4)));
        }
    }

    let mut top: Vec<(String, PerPattern)> = Vec::new();
    for r in client
        .query(
            "WITH t AS (SELECT merchant_id, count(*) AS n FROM detections WHERE stream = $1
                        GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $2)
             SELECT d.merchant_id, d.pattern_id, count(*), t.n FROM detections d
             JOIN t USING (merchant_id) WHERE d.stream = $1
             GROUP BY 1, 2, 4 ORDER BY 4 DESC, 1",
            &[&stream, &TOP_MERCHANTS],
        )
        .await
        .map_err(query("finding the top merchants"))?
    {
        let merchant: String = r.get(0);
        if top.last().map(|(m, _)| m) != Some(&merchant) {
            top.push((merchant, PerPattern::default()));
        }
        if let (Some((_, counts)), Some(p)) = (top.last_mut(), PatternId::from_id(r.get(1))) {
            counts.add(p, n(r.get(2)));
        }
    }
    data.top_merchants = top;
    Ok(())
}
