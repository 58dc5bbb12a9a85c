//! What a stream left in S3 and Postgres, everything but wall-clock values, and the
//! same built from the offline replay (`txpipe replay`) of its source, with the first
//! difference between the two and an explicit lost / duplicated count.

use crate::Stack;
use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use txpipe::config::Config;
use txpipe::cutting::split_source;
use txpipe::engine::{Engine, Totals};
use txpipe::layout::StreamName;
use txpipe::parse::{ImportanceTable, TransactionReader};
use txpipe::replay::{replay, ReplayOutput};
use txpipe::weight::Weight;

/// A detection's identity: (patternId, MerchantId, customerName).
pub type Identity = (String, String, String);

/// One line of a detection file, timestamps aside: (patternId, ActionType, MerchantId,
/// customerName).
pub type BatchLine = (String, String, String, String);

/// One `detections` row: (chunk, seq_in_chunk, pattern_id, action_type, merchant_id,
/// customer_name, evidence as canonical JSON text).
pub type DetectionRow = (i64, i32, String, String, String, String, Option<String>);

/// One `chunks` (ledger) row: (chunk, key, rows, rejected, detections).
pub type LedgerRow = (i64, String, i64, i64, i64);

/// One `rejected_rows` row of the stream: (row_number, chunk, raw, reason).
pub type RejectedRowOut = (i64, Option<i64>, Vec<u8>, String);

/// One `transactions` row: (chunk, row_number, customer, merchant, gender, amount,
/// weight, raw).
pub type TransactionRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    Vec<u8>,
);

/// One `customer_stats` row: (merchant, customer, txns, amount, gender, weight,
/// last_chunk).
pub type StatsRow = (String, String, i64, String, String, Option<String>, i64);

/// What a run left in S3 and Postgres for one stream, wall-clock values aside.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamOutputs {
    /// Detection file name (`00000003.jsonl`) → its lines, in file order.
    pub batches: BTreeMap<String, Vec<BatchLine>>,
    /// Evidence file name → its lines, exactly as written.
    pub evidence: BTreeMap<String, Vec<String>>,
    /// Detections in global order (chunk, seq_in_chunk).
    pub detections: Vec<DetectionRow>,
    /// The ledger, by chunk.
    pub ledger: Vec<LedgerRow>,
    /// Rejected transaction rows, by row number.
    pub rejected: Vec<RejectedRowOut>,
    /// The per-transaction copy, by chunk and row (None when not compared).
    pub transactions: Option<Vec<TransactionRow>>,
    /// Customer stats, by merchant and customer (byte order).
    pub stats: Vec<StatsRow>,
}

/// Reads one stream's outputs; the `transactions` table only when `with_transactions`.
pub async fn stream_outputs(
    stack: &Stack,
    stream: &StreamName,
    with_transactions: bool,
) -> Result<StreamOutputs> {
    // Each file under a prefix by name, its lines read by `lines`.
    async fn files<T>(
        stack: &Stack,
        prefix: &str,
        lines: impl Fn(&str) -> Result<Vec<T>>,
    ) -> Result<BTreeMap<String, Vec<T>>> {
        let mut out = BTreeMap::new();
        for key in stack.list(prefix).await? {
            let bytes = stack.get(&key).await?.unwrap_or_default();
            let text = String::from_utf8(bytes).with_context(|| format!("{key} is not UTF-8"))?;
            let name = key.rsplit('/').next().unwrap_or_default().to_string();
            out.insert(name, lines(&text).with_context(|| key.clone())?);
        }
        Ok(out)
    }
    let batches = files(stack, &stream.detections_prefix(), batch_lines).await?;
    let evidence = files(stack, &stream.evidence_prefix(), |text| {
        Ok(text.lines().map(str::to_string).collect())
    })
    .await?;
    let pg = stack.pg_client().await?;
    let s = &stream.as_str();
    let detections = pg
        .query(
            "SELECT chunk, seq_in_chunk, pattern_id, action_type, merchant_id, customer_name,
                    evidence::text
             FROM detections WHERE stream = $1 ORDER BY chunk, seq_in_chunk",
            &[s],
        )
        .await?
        .iter()
        .map(|r| {
            // jsonb prints its own key order and spacing: compared as parsed JSON.
            let evidence: Option<String> = r.get(6);
            let evidence =
                evidence.map(|e| serde_json::from_str::<Value>(&e).map_or(e, |v| v.to_string()));
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                evidence,
            )
        })
        .collect();
    let ledger = pg
        .query(
            "SELECT chunk, key, rows, rejected, detections FROM chunks WHERE stream = $1
             ORDER BY chunk",
            &[s],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let rejected = pg
        .query(
            "SELECT row_number, chunk, raw, reason FROM rejected_rows
             WHERE file = 'transactions' AND source = $1 ORDER BY row_number",
            &[s],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let transactions = match with_transactions {
        false => None,
        true => Some(
            pg.query(
                "SELECT chunk, row_number, customer_name, merchant_id, gender, amount::text,
                        weight::text, raw
                 FROM transactions WHERE stream = $1 ORDER BY chunk, row_number",
                &[s],
            )
            .await?
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                    r.get(7),
                )
            })
            .collect(),
        ),
    };
    let stats = pg
        .query(
            "SELECT merchant_id, customer_name, txns, amount::text, gender, weight::text,
                    last_chunk
             FROM customer_stats WHERE stream = $1
             ORDER BY merchant_id COLLATE \"C\", customer_name COLLATE \"C\"",
            &[s],
        )
        .await?
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect();
    Ok(StreamOutputs {
        batches,
        evidence,
        detections,
        ledger,
        rejected,
        transactions,
        stats,
    })
}

/// Where a detection's times differ between its S3 file, its Postgres row and its
/// chunk's ledger row (`None`: they agree for every detection of the stream). A
/// published time never changes, so the three agree however often a chunk was redone.
pub async fn times_disagree(stack: &Stack, stream: &StreamName) -> Result<Option<String>> {
    let mut in_s3 = BTreeMap::new();
    for key in stack.list(&stream.detections_prefix()).await? {
        let text = String::from_utf8(stack.get(&key).await?.unwrap_or_default())?;
        for line in text.lines() {
            let d: txpipe::detection::DetectionJson = serde_json::from_str(line)?;
            in_s3.insert(
                (d.pattern_id, d.merchant_id, d.customer_name),
                (d.y_start_time, d.detection_time),
            );
        }
    }
    let pg = stack.pg_client().await?;
    let rows = pg
        .query(
            "SELECT d.pattern_id, d.merchant_id, d.customer_name, d.y_start_time,
                    d.detection_time, c.started_at
             FROM detections d JOIN chunks c USING (stream, chunk) WHERE d.stream = $1",
            &[&stream.as_str()],
        )
        .await?;
    if rows.len() != in_s3.len() {
        return Ok(Some(format!(
            "{} detections in Postgres (with a ledger row), {} in S3",
            rows.len(),
            in_s3.len()
        )));
    }
    let ist = txpipe::detection::format_ist;
    for r in rows {
        let id: (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let pg_times = (ist(r.get(3)), ist(r.get(4)));
        let ledger_start = ist(r.get(5));
        match in_s3.get(&id) {
            Some(s3) if *s3 == pg_times && pg_times.0 == ledger_start => {}
            s3 => {
                return Ok(Some(format!(
                    "{id:?}: S3 {s3:?}, Postgres {pg_times:?}, its chunk started {ledger_start}"
                )))
            }
        }
    }
    Ok(None)
}

/// The lines of a JSON Lines detection file, timestamps aside.
pub fn batch_lines(text: &str) -> Result<Vec<BatchLine>> {
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)?;
            let field = |f: &str| v[f].as_str().unwrap_or_default().to_string();
            Ok((
                field("patternId"),
                field("ActionType"),
                field("MerchantId"),
                field("customerName"),
            ))
        })
        .collect()
}

/// What a clean run over a source must leave, from the offline replay.
pub struct Reference {
    /// The outputs a clean run leaves.
    pub outputs: StreamOutputs,
    /// The replay itself.
    pub replay: ReplayOutput,
    /// The replay engine's totals at the end.
    pub totals: Totals,
    /// Chunks in the stream.
    pub chunks: u64,
    /// The replay engine's state at the end, encoded as a snapshot.
    pub state: Vec<u8>,
}

/// The reference outputs of `stream` over `transactions` and `importance` with the
/// thresholds and shape of `config` (the `transactions` table when
/// `with_transactions`).
pub fn reference(
    stream: &StreamName,
    transactions: &[u8],
    importance: &[u8],
    config: &Config,
    with_transactions: bool,
) -> Result<Reference> {
    let table = Arc::new(ImportanceTable::parse(importance)?.table);
    let mut engine = Engine::new(config.patterns.clone(), table.clone());
    let r = config.shape.rows_per_chunk;
    let out = replay(
        transactions,
        &mut engine,
        r,
        config.shape.detections_per_file,
        chrono::Utc::now,
    )?;
    let batches = out
        .batches
        .iter()
        .map(|b| {
            let lines = b
                .detections
                .iter()
                .map(|d| {
                    (
                        d.key.pattern.id().to_string(),
                        d.key.pattern.action().to_string(),
                        d.key.merchant.clone(),
                        d.key.customer.clone(),
                    )
                })
                .collect();
            (format!("{:08}.jsonl", b.number), lines)
        })
        .collect();
    let mut seq = BTreeMap::<u64, i32>::new();
    let detections = out
        .detections
        .iter()
        .map(|d| {
            let s = seq.entry(d.chunk).or_default();
            *s += 1;
            (
                d.chunk as i64,
                *s - 1,
                d.key.pattern.id().to_string(),
                d.key.pattern.action().to_string(),
                d.key.merchant.clone(),
                d.key.customer.clone(),
                d.evidence.as_ref().map(|e| e.to_json().to_string()),
            )
        })
        .collect();
    let evidence = out
        .batches
        .iter()
        .map(|b| {
            let text = String::from_utf8_lossy(&b.evidence_jsonl()).into_owned();
            let lines = text.lines().map(str::to_string).collect();
            (format!("{:08}.jsonl", b.number), lines)
        })
        .collect();
    let ledger = out
        .chunks
        .iter()
        .map(|c| {
            (
                c.chunk as i64,
                stream.chunk_key(c.chunk),
                c.rows as i64,
                c.rejected as i64,
                c.detections as i64,
            )
        })
        .collect();
    let rejected = out
        .rejected
        .iter()
        .map(|x| {
            (
                x.row as i64,
                Some(((x.row - 1) / r) as i64),
                x.raw.clone(),
                x.reason.to_string(),
            )
        })
        .collect();
    // Valid rows chunk by chunk, read as the detector reads them.
    let mut rows = Vec::new();
    let mut last_chunk = HashMap::<(String, String), i64>::new();
    for chunk in split_source(transactions, r)? {
        let reader = TransactionReader::new(&chunk.bytes, chunk.first_row)?;
        for tx in reader.filter_map(Result::ok) {
            let (customer, merchant) = (tx.customer.to_string(), tx.merchant.to_string());
            last_chunk.insert((merchant.clone(), customer.clone()), chunk.k as i64);
            rows.push((
                chunk.k as i64,
                tx.row as i64,
                customer.clone(),
                merchant.clone(),
                tx.gender.as_str().to_string(),
                cents_text(u128::from(tx.cents)),
                table.weight(&merchant, &customer).map(weight_text),
                tx.raw.to_vec(),
            ));
        }
    }
    let totals = engine.totals();
    anyhow::ensure!(
        rows.len() as u64 == totals.rows,
        "reference: the reader finds {} valid rows, the engine {}",
        rows.len(),
        totals.rows
    );
    anyhow::ensure!(
        last_chunk.len() == engine.sizes().2,
        "reference: {} pairs read, the engine has {}",
        last_chunk.len(),
        engine.sizes().2
    );
    let mut stats: Vec<StatsRow> = last_chunk
        .iter()
        .map(|((m, c), last)| {
            let p = engine
                .pair(m, c)
                .context("a pair the engine does not know")?;
            Ok((
                m.clone(),
                c.clone(),
                p.txns as i64,
                cents_text(p.cents),
                p.gender.as_str().to_string(),
                p.weight.map(weight_text),
                *last,
            ))
        })
        .collect::<Result<_>>()?;
    stats.sort_by(|a, b| (a.0.as_bytes(), a.1.as_bytes()).cmp(&(b.0.as_bytes(), b.1.as_bytes())));
    Ok(Reference {
        chunks: out.chunks.len() as u64,
        outputs: StreamOutputs {
            batches,
            evidence,
            detections,
            ledger,
            rejected,
            transactions: with_transactions.then_some(rows),
            stats,
        },
        replay: out,
        totals,
        state: engine.encode_snapshot(),
    })
}

/// Cents as Postgres prints an exact 2-decimal amount: `12345` → `123.45`.
pub fn cents_text(cents: u128) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// A weight as the sink stores it: rounded half away from zero to 9 decimals.
pub fn weight_text(w: Weight) -> String {
    let rows = i128::from(w.rows());
    let nanos = w.micros_sum() * 1000;
    let half = rows / 2;
    let q = if nanos >= 0 {
        (nanos + half) / rows
    } else {
        (nanos - half) / rows
    };
    let sign = if q < 0 { "-" } else { "" };
    let q = q.unsigned_abs();
    format!("{sign}{}.{:09}", q / 1_000_000_000, q % 1_000_000_000)
}

/// The first place where `got` differs from `want`, described for a reader: which
/// output, which item, and both values.
pub fn first_difference(got: &StreamOutputs, want: &StreamOutputs) -> Option<String> {
    fn list<T: PartialEq + std::fmt::Debug>(what: &str, got: &[T], want: &[T]) -> Option<String> {
        let i = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i))?;
        Some(format!(
            "{what}: first difference at item {i} (got {} items, want {}):\n  got  {:?}\n  want {:?}",
            got.len(),
            want.len(),
            got.get(i),
            want.get(i)
        ))
    }
    // The file names, then each file's lines.
    fn files<T: PartialEq + std::fmt::Debug>(
        what: &str,
        got: &BTreeMap<String, Vec<T>>,
        want: &BTreeMap<String, Vec<T>>,
    ) -> Option<String> {
        let names = |m: &BTreeMap<String, Vec<T>>| m.keys().cloned().collect::<Vec<_>>();
        list(&format!("S3 {what} file names"), &names(got), &names(want)).or_else(|| {
            want.iter().find_map(|(name, lines)| {
                list(&format!("S3 {what} file {name}"), &got[name], lines)
            })
        })
    }
    if let Some(d) = files("detection", &got.batches, &want.batches)
        .or_else(|| files("evidence", &got.evidence, &want.evidence))
    {
        return Some(d);
    }
    list("Postgres detections", &got.detections, &want.detections)
        .or_else(|| list("Postgres chunks (ledger)", &got.ledger, &want.ledger))
        .or_else(|| list("Postgres rejected_rows", &got.rejected, &want.rejected))
        .or_else(|| match (&got.transactions, &want.transactions) {
            (Some(g), Some(w)) => list("Postgres transactions", g, w),
            _ => None,
        })
        .or_else(|| list("Postgres customer_stats", &got.stats, &want.stats))
}

/// Detections lost and duplicated, counted explicitly in S3 and in Postgres: a
/// reference identity found nowhere is lost; each extra copy of one, or an identity the
/// reference does not have, is a duplicate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExactlyOnce {
    /// Reference detections (checked in each store).
    pub expected: u64,
    /// Missing from the S3 files.
    pub s3_lost: u64,
    /// Extra in the S3 files.
    pub s3_duplicated: u64,
    /// Missing from Postgres.
    pub pg_lost: u64,
    /// Extra in Postgres.
    pub pg_duplicated: u64,
}

impl ExactlyOnce {
    /// Lost in either store.
    pub fn lost(&self) -> u64 {
        self.s3_lost + self.pg_lost
    }
    /// Duplicated in either store.
    pub fn duplicated(&self) -> u64 {
        self.s3_duplicated + self.pg_duplicated
    }
}

/// Counts lost and duplicated detections of `got` against `want`.
pub fn exactly_once(got: &StreamOutputs, want: &StreamOutputs) -> ExactlyOnce {
    let expected: BTreeSet<Identity> = want
        .detections
        .iter()
        .map(|d| (d.2.clone(), d.4.clone(), d.5.clone()))
        .collect();
    let count = |ids: Vec<Identity>| {
        let mut seen = HashMap::<Identity, u64>::new();
        for id in ids {
            *seen.entry(id).or_default() += 1;
        }
        let lost = expected.iter().filter(|id| !seen.contains_key(*id)).count() as u64;
        let duplicated = seen
            .iter()
            .map(|(id, n)| if expected.contains(id) { n - 1 } else { *n })
            .sum();
        (lost, duplicated)
    };
    let s3 = got
        .batches
        .values()
        .flatten()
        .map(|l| (l.0.clone(), l.2.clone(), l.3.clone()))
        .collect();
    let pg = got
        .detections
        .iter()
        .map(|d| (d.2.clone(), d.4.clone(), d.5.clone()))
        .collect();
    let (s3_lost, s3_duplicated) = count(s3);
    let (pg_lost, pg_duplicated) = count(pg);
    ExactlyOnce {
        expected: expected.len() as u64,
        s3_lost,
        s3_duplicated,
        pg_lost,
        pg_duplicated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(rows: &[(i64, i32, &str)]) -> StreamOutputs {
        let detections: Vec<DetectionRow> = rows
            .iter()
            .map(|(chunk, seq, customer)| {
                (
                    *chunk,
                    *seq,
                    "PatId2".to_string(),
                    "CHILD".to_string(),
                    "M1".to_string(),
                    customer.to_string(),
                    None,
                )
            })
            .collect();
        let lines = detections
            .iter()
            .map(|d| (d.2.clone(), d.3.clone(), d.4.clone(), d.5.clone()))
            .collect();
        StreamOutputs {
            batches: BTreeMap::from([("00000000.jsonl".to_string(), lines)]),
            detections,
            ..StreamOutputs::default()
        }
    }

    #[test]
    fn lost_and_duplicated_are_counted_in_each_store() {
        let want = outputs(&[(0, 0, "C1"), (0, 1, "C2"), (1, 0, "C3")]);
        assert_eq!(exactly_once(&want, &want).lost(), 0);
        assert_eq!(first_difference(&want, &want), None);
        // C2 lost, C3 twice, C9 not in the reference at all.
        let got = outputs(&[(0, 0, "C1"), (1, 0, "C3"), (1, 1, "C3"), (1, 2, "C9")]);
        let once = exactly_once(&got, &want);
        assert_eq!((once.s3_lost, once.s3_duplicated), (1, 2));
        assert_eq!((once.pg_lost, once.pg_duplicated), (1, 2));
        let d = first_difference(&got, &want).unwrap();
        assert!(
            d.starts_with("S3 detection file 00000000.jsonl: first difference at item 1"),
            "{d}"
        );
        let mut other = want.clone();
        other.stats.push((
            "M1".into(),
            "C1".into(),
            1,
            "1.00".into(),
            "F".into(),
            None,
            0,
        ));
        let d = first_difference(&other, &want).unwrap();
        assert!(
            d.starts_with("Postgres customer_stats: first difference at item 0"),
            "{d}"
        );
    }
}
