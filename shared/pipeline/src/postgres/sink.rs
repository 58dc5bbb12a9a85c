//! [`ChunkSink`] over Postgres: one transaction per chunk, every write keyed so a
//! retry leaves the same rows, sent as one pipeline (one round trip). The connection is
//! made lazily, migrated once, reused across warm invocations, and dropped on any error
//! so the next call reconnects.

use super::{migrate, partitions, PgError, PgSettings};
use crate::detector::{ChunkRecord, ChunkSink, SinkError};
use crate::store::RequestCounter;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::future::Either;
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};
use txpipe_core::parse::RejectedRow;
use txpipe_core::weight::Weight;

/// Writes chunks to Postgres.
pub struct PgSink {
    settings: PgSettings,
    secrets: aws_sdk_secretsmanager::Client,
    client: Mutex<Option<Connection>>,
    requests: RequestCounter,
}

/// A migrated connection with the per-chunk statements prepared, so each execution
/// is sent at once (no prepare round trip) and pipelined statements keep their order.
struct Connection {
    client: Client,
    clear: Statement,
    transactions: Statement,
    detections: Statement,
    rejected: Statement,
    stats: Statement,
    ledger: Statement,
    /// The day whose `transactions` partitions are known to exist.
    partitions_for: Option<NaiveDate>,
}

type Param<'a> = &'a (dyn ToSql + Sync);

const CLEAR_SQL: &str = "DELETE FROM transactions WHERE stream = $1 AND chunk = $2";

const TRANSACTIONS_SQL: &str =
    "INSERT INTO transactions (stream, chunk, row_number, customer_name, merchant_id, gender,
                               amount, weight, raw, loaded_on)
     SELECT $1, $2, n, c, m, g, a::numeric, w::numeric, r, $3
     FROM unnest($4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                 $10::bytea[]) AS t(n, c, m, g, a, w, r)";

// A chunk's detections and its ledger row are published facts: a redo of the chunk
// (the same times, the same values) inserts nothing and overwrites nothing.
const DETECTIONS_SQL: &str =
    "INSERT INTO detections (stream, pattern_id, merchant_id, customer_name, action_type,
                             chunk, seq_in_chunk, y_start_time, detection_time, evidence)
     SELECT $1, p, m, c, a, $2, s, ys, dt, e::jsonb
     FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::int[],
                 $8::timestamptz[], $9::timestamptz[], $10::text[])
          AS t(p, m, c, a, s, ys, dt, e)
     ON CONFLICT (stream, pattern_id, merchant_id, customer_name) DO NOTHING";

const REJECTED_SQL: &str =
    "INSERT INTO rejected_rows (file, source, row_number, chunk, raw, raw_text, reason)
     SELECT $1, $2, n, $3, r, t, why
     FROM unnest($4::bigint[], $5::bytea[], $6::text[], $7::text[]) AS x(n, r, t, why)
     ON CONFLICT (file, source, row_number)
     DO UPDATE SET chunk = EXCLUDED.chunk, raw = EXCLUDED.raw, raw_text = EXCLUDED.raw_text,
                   reason = EXCLUDED.reason";

const STATS_SQL: &str =
    "INSERT INTO customer_stats (stream, merchant_id, customer_name, txns, amount,
                                 avg_amount, gender, weight, last_chunk)
     SELECT $1, m, c, n, a::numeric, round(a::numeric / n, 6), g, w::numeric, $2
     FROM unnest($3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[])
          AS t(m, c, n, a, g, w)
     ON CONFLICT (stream, merchant_id, customer_name) DO UPDATE
     SET txns = EXCLUDED.txns, amount = EXCLUDED.amount, avg_amount = EXCLUDED.avg_amount,
         gender = EXCLUDED.gender, weight = EXCLUDED.weight, last_chunk = EXCLUDED.last_chunk
     WHERE customer_stats.last_chunk <= EXCLUDED.last_chunk";

const LEDGER_SQL: &str =
    "INSERT INTO chunks (stream, chunk, key, rows, rejected, detections, started_at, finished_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, now())
     ON CONFLICT (stream, chunk) DO NOTHING";

impl PgSink {
    /// A sink that connects on first use. `secrets` is used only if the settings name
    /// a secret.
    pub fn new(
        settings: PgSettings,
        secrets: aws_sdk_secretsmanager::Client,
        requests: RequestCounter,
    ) -> Self {
        PgSink {
            settings,
            secrets,
            client: Mutex::new(None),
            requests,
        }
    }

    /// Connects and migrates now (instead of on first write).
    pub async fn connect(&self) -> Result<(), PgError> {
        let mut guard = self.client.lock().await;
        self.ensure(&mut guard).await.map(|_| ())
    }

    async fn ensure<'g>(
        &self,
        slot: &'g mut Option<Connection>,
    ) -> Result<&'g mut Connection, PgError> {
        if slot.as_ref().is_some_and(|c| c.client.is_closed()) {
            *slot = None;
        }
        let connection = match slot {
            Some(connection) => connection,
            None => slot.insert(self.open().await?),
        };
        // Today's partitions, once per day per connection (a chunk's rows carry the
        // day they were loaded).
        let today = Utc::now().date_naive();
        if self.settings.transactions && connection.partitions_for != Some(today) {
            let dropped = partitions::maintain(
                &mut connection.client,
                today,
                self.settings.transactions_retention_days,
            )
            .await?;
            if !dropped.is_empty() {
                tracing::info!(
                    ?dropped,
                    "dropped transaction partitions past the retention"
                );
            }
            connection.partitions_for = Some(today);
        }
        Ok(connection)
    }

    async fn open(&self) -> Result<Connection, PgError> {
        let config = self.settings.resolve(&self.secrets).await?;
        let mut client = self.settings.connect(&config).await?;
        client
            .batch_execute(&format!(
                "SET statement_timeout = {}",
                self.settings.statement_timeout.as_millis()
            ))
            .await
            .map_err(PgError::db("setting the statement timeout"))?;
        let applied = migrate(&mut client).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "applied Postgres migrations");
        }
        let prepare = |sql: &'static str| {
            let client = &client;
            async move {
                client
                    .prepare(sql)
                    .await
                    .map_err(PgError::db("preparing statements"))
            }
        };
        let (clear, transactions, detections, rejected, stats, ledger) = futures_util::try_join!(
            prepare(CLEAR_SQL),
            prepare(TRANSACTIONS_SQL),
            prepare(DETECTIONS_SQL),
            prepare(REJECTED_SQL),
            prepare(STATS_SQL),
            prepare(LEDGER_SQL)
        )?;
        Ok(Connection {
            client,
            clear,
            transactions,
            detections,
            rejected,
            stats,
            ledger,
            partitions_for: None,
        })
    }
}

fn sink_error(e: PgError) -> SinkError {
    SinkError {
        retry: e.retry(),
        message: e.to_string(),
    }
}

#[async_trait]
impl ChunkSink for PgSink {
    fn wants_transactions(&self) -> bool {
        self.settings.transactions
    }

    async fn ready(&self) -> Result<(), SinkError> {
        let mut guard = self.client.lock().await;
        let result = self.ensure(&mut guard).await.map(|_| ());
        if result.is_err() {
            *guard = None;
        }
        result.map_err(sink_error)
    }

    async fn record_chunk(&self, record: &ChunkRecord<'_>) -> Result<(), SinkError> {
        let mut guard = self.client.lock().await;
        let result = async {
            let connection = self.ensure(&mut guard).await?;
            write_chunk(connection, record, self.settings.transactions).await
        }
        .await;
        self.requests.add(1);
        if result.is_err() {
            *guard = None; // reconnect next time
        }
        result.map_err(sink_error)
    }

    async fn record_importance_rejects(
        &self,
        file: &str,
        rows: &[RejectedRow],
    ) -> Result<(), SinkError> {
        let mut guard = self.client.lock().await;
        let result = async {
            let connection = self.ensure(&mut guard).await?;
            self.requests.add(1);
            let (numbers, raws, texts, reasons) = rejected_columns(rows);
            let chunk: Option<i64> = None;
            let params: &[Param] = &[
                &"importance",
                &file,
                &chunk,
                &numbers,
                &raws,
                &texts,
                &reasons,
            ];
            connection
                .client
                .execute(&connection.rejected, params)
                .await
                .map_err(PgError::db("recording rejected importance rows"))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            *guard = None;
        }
        result.map_err(sink_error)
    }
}

/// Rejected rows as the statement's columns: numbers, raw bytes, readable text,
/// reasons.
fn rejected_columns(rows: &[RejectedRow]) -> (Vec<i64>, Vec<Vec<u8>>, Vec<String>, Vec<String>) {
    (
        rows.iter().map(|r| r.row as i64).collect(),
        rows.iter().map(|r| r.raw.clone()).collect(),
        rows.iter().map(|r| r.raw_text().into_owned()).collect(),
        rows.iter().map(|r| r.reason.to_string()).collect(),
    )
}

async fn write_chunk(
    conn: &mut Connection,
    r: &ChunkRecord<'_>,
    with_transactions: bool,
) -> Result<(), PgError> {
    // The whole transaction is sent as one pipeline: BEGIN, every statement, COMMIT.
    // If any statement fails, Postgres turns the COMMIT into a rollback, and the caller
    // drops the connection, so nothing partial is ever kept.
    let client: &Client = &conn.client;
    let stream = r.stream.as_str();
    let chunk = r.chunk as i64;

    let begin = client.batch_execute("BEGIN");

    let clear_params: &[Param] = &[&stream, &chunk];
    let t = r.transactions;
    // The day the chunk was first applied (its fixed start), so two writers of one
    // chunk, even across midnight, key its rows alike.
    let loaded_on = r.started.date_naive();
    let numbers: Vec<i64> = t.iter().map(|t| t.row as i64).collect();
    let customers: Vec<&str> = t.iter().map(|t| t.customer.as_str()).collect();
    let merchants: Vec<&str> = t.iter().map(|t| t.merchant.as_str()).collect();
    let genders: Vec<&str> = t.iter().map(|t| t.gender.as_str()).collect();
    let amounts: Vec<String> = t.iter().map(|t| cents_text(u128::from(t.cents))).collect();
    let weights: Vec<Option<String>> = t.iter().map(|t| t.weight.map(weight_text)).collect();
    let raws: Vec<&[u8]> = t.iter().map(|t| t.raw.as_slice()).collect();
    let transaction_params: &[Param] = &[
        &stream, &chunk, &loaded_on, &numbers, &customers, &merchants, &genders, &amounts,
        &weights, &raws,
    ];
    // Each execution is sent when first polled, and `try_join!` polls in order: the
    // optional statements are futures of their own (not one async block that would
    // send its second statement only after the first one's answer, after COMMIT).
    let skipped = || Either::Right(std::future::ready(Ok(0)));
    let (clear, copy) = match with_transactions {
        true => (
            Either::Left(client.execute(&conn.clear, clear_params)),
            Either::Left(client.execute(&conn.transactions, transaction_params)),
        ),
        false => (skipped(), skipped()),
    };

    let d = r.detections;
    let pattern: Vec<&str> = d.iter().map(|d| d.key.pattern.id()).collect();
    let merchant: Vec<&str> = d.iter().map(|d| d.key.merchant.as_str()).collect();
    let customer: Vec<&str> = d.iter().map(|d| d.key.customer.as_str()).collect();
    let action: Vec<&str> = d.iter().map(|d| d.key.pattern.action()).collect();
    let seq: Vec<i32> = (0..d.len() as i32).collect();
    let y_start: Vec<DateTime<Utc>> = d.iter().map(|d| d.y_start).collect();
    let detected: Vec<DateTime<Utc>> = d.iter().map(|d| d.detected_at).collect();
    let evidence: Vec<Option<String>> = d
        .iter()
        .map(|d| d.evidence.as_ref().map(|e| e.to_json().to_string()))
        .collect();
    let detection_params: &[Param] = &[
        &stream, &chunk, &pattern, &merchant, &customer, &action, &seq, &y_start, &detected,
        &evidence,
    ];
    let detections = client.execute(&conn.detections, detection_params);

    let (numbers, raws, texts, reasons) = rejected_columns(r.rejected);
    let chunk_ref: Option<i64> = Some(chunk);
    let rejected_params: &[Param] = &[
        &"transactions",
        &stream,
        &chunk_ref,
        &numbers,
        &raws,
        &texts,
        &reasons,
    ];
    let rejected = client.execute(&conn.rejected, rejected_params);

    let p = r.pairs;
    let pm: Vec<&str> = p.iter().map(|p| p.merchant.as_str()).collect();
    let pc: Vec<&str> = p.iter().map(|p| p.customer.as_str()).collect();
    let txns: Vec<i64> = p.iter().map(|p| p.txns as i64).collect();
    let amount: Vec<String> = p.iter().map(|p| cents_text(p.cents)).collect();
    let gender: Vec<&str> = p.iter().map(|p| p.gender.as_str()).collect();
    let weight: Vec<Option<String>> = p.iter().map(|p| p.weight.map(weight_text)).collect();
    let stats_params: &[Param] = &[&stream, &chunk, &pm, &pc, &txns, &amount, &gender, &weight];
    let stats = client.execute(&conn.stats, stats_params);

    let detection_count = r.detections.len() as i64;
    let (rows, rejected_count) = (r.rows as i64, r.rejected_count as i64);
    let ledger_params: &[Param] = &[
        &stream,
        &chunk,
        &r.key,
        &rows,
        &rejected_count,
        &detection_count,
        &r.started,
    ];
    let ledger = client.execute(&conn.ledger, ledger_params);
    // Futures are polled in order, so the statements go out in this order, COMMIT last.
    let commit = client.batch_execute("COMMIT");
    futures_util::try_join!(begin, clear, copy, detections, rejected, stats, ledger, commit)
        .map_err(PgError::db(format!("writing chunk {chunk}")))?;
    Ok(())
}

/// Cents as an exact decimal: `12345` → `123.45`.
fn cents_text(cents: u128) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// A weight as a decimal rounded (half away from zero) to 9 places, for analytics; the
/// engine compares the exact fraction.
fn weight_text(w: Weight) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(cents_text(0), "0.00");
        assert_eq!(cents_text(12345), "123.45");
        assert_eq!(weight_text(Weight::new(1_000_000, 3)), "0.333333333");
        assert_eq!(weight_text(Weight::new(2_000_000, 3)), "0.666666667");
        assert_eq!(weight_text(Weight::new(-35_130_000, 1)), "-35.130000000");
    }
}
