//! [`ChunkSink`] over Postgres: one transaction per chunk, every write keyed so a
//! retry leaves the same rows. The connection is made lazily, migrated once, reused
//! across warm invocations, and dropped on any error so the next call reconnects.

use super::{migrate, PgError, PgSettings};
use crate::detector::{ChunkRecord, ChunkSink, SinkError};
use crate::parse::RejectedRow;
use crate::store::RequestCounter;
use crate::weight::Weight;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::SinkExt;
use tokio::sync::Mutex;
use tokio_postgres::{Client, Statement};

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
    copy: Statement,
    detections: Statement,
    rejected: Statement,
    stats: Statement,
    ledger: Statement,
}

const CLEAR_SQL: &str = "DELETE FROM transactions WHERE stream = $1 AND chunk = $2";

const COPY_SQL: &str = "COPY transactions (stream, chunk, row_number, customer_name, merchant_id,
                                           gender, amount, weight, raw) FROM STDIN";

const DETECTIONS_SQL: &str =
    "INSERT INTO detections (stream, pattern_id, merchant_id, customer_name, action_type,
                             chunk, seq_in_chunk, y_start_time, detection_time)
     SELECT $1, p, m, c, a, $2, s, ys, dt
     FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::int[],
                 $8::timestamptz[], $9::timestamptz[]) AS t(p, m, c, a, s, ys, dt)
     ON CONFLICT (stream, pattern_id, merchant_id, customer_name) DO UPDATE
     SET y_start_time = EXCLUDED.y_start_time, detection_time = EXCLUDED.detection_time,
         seq_in_chunk = EXCLUDED.seq_in_chunk
     WHERE detections.chunk = EXCLUDED.chunk";

const REJECTED_SQL: &str =
    "INSERT INTO rejected_rows (file, source, row_number, chunk, raw, reason)
     SELECT 'transactions', $1, n, $2, w, why
     FROM unnest($3::bigint[], $4::text[], $5::text[]) AS t(n, w, why)
     ON CONFLICT (file, source, row_number)
     DO UPDATE SET chunk = EXCLUDED.chunk, raw = EXCLUDED.raw, reason = EXCLUDED.reason";

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
     ON CONFLICT (stream, chunk) DO UPDATE
     SET key = EXCLUDED.key, rows = EXCLUDED.rows, rejected = EXCLUDED.rejected,
         detections = EXCLUDED.detections, started_at = EXCLUDED.started_at,
         finished_at = EXCLUDED.finished_at";

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
        if slot.is_none() {
            let config = self.settings.resolve(&self.secrets).await?;
            let mut client = self.settings.connect(&config).await?;
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
            let (clear, copy, detections, rejected, stats, ledger) = futures_util::try_join!(
                prepare(CLEAR_SQL),
                prepare(COPY_SQL),
                prepare(DETECTIONS_SQL),
                prepare(REJECTED_SQL),
                prepare(STATS_SQL),
                prepare(LEDGER_SQL)
            )?;
            *slot = Some(Connection {
                client,
                clear,
                copy,
                detections,
                rejected,
                stats,
                ledger,
            });
        }
        slot.as_mut()
            .ok_or_else(|| PgError::Settings("no connection".into()))
    }
}

#[async_trait]
impl ChunkSink for PgSink {
    async fn record_chunk(&self, record: &ChunkRecord<'_>) -> Result<(), SinkError> {
        let mut guard = self.client.lock().await;
        let result = async {
            let client = self.ensure(&mut guard).await?;
            write_chunk(client, record, &self.requests).await
        }
        .await;
        if result.is_err() {
            *guard = None; // reconnect next time
        }
        result.map_err(|e| SinkError(e.to_string()))
    }

    async fn record_importance_rejects(
        &self,
        file: &str,
        rows: &[RejectedRow],
    ) -> Result<(), SinkError> {
        let mut guard = self.client.lock().await;
        let result = async {
            let client = &self.ensure(&mut guard).await?.client;
            self.requests.add(1);
            let (numbers, raws, reasons) = rejected_columns(rows);
            client
                .execute(
                    "INSERT INTO rejected_rows (file, source, row_number, chunk, raw, reason)
                         SELECT 'importance', $1, r, NULL, w, why
                         FROM unnest($2::bigint[], $3::text[], $4::text[]) AS t(r, w, why)
                         ON CONFLICT (file, source, row_number)
                         DO UPDATE SET raw = EXCLUDED.raw, reason = EXCLUDED.reason",
                    &[&file, &numbers, &raws, &reasons],
                )
                .await
                .map_err(PgError::db("recording rejected importance rows"))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            *guard = None;
        }
        result.map_err(|e: PgError| SinkError(e.to_string()))
    }
}

fn rejected_columns(rows: &[RejectedRow]) -> (Vec<i64>, Vec<String>, Vec<String>) {
    (
        rows.iter().map(|r| r.row as i64).collect(),
        rows.iter().map(|r| r.raw_text().into_owned()).collect(),
        rows.iter().map(|r| r.reason.to_string()).collect(),
    )
}

async fn write_chunk(
    conn: &mut Connection,
    r: &ChunkRecord<'_>,
    requests: &RequestCounter,
) -> Result<(), PgError> {
    // The transaction is driven by hand so statements can be pipelined: BEGIN with the
    // DELETE, and COMMIT with the upserts (one round trip each). If any statement
    // fails, Postgres turns the COMMIT into a rollback, and the caller drops the
    // connection, so nothing partial is ever kept.
    let tx: &Client = &conn.client;
    let stream = r.stream;
    let chunk = r.chunk as i64;
    let clear_params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = &[&stream, &chunk];
    let clear = tx.execute(&conn.clear, clear_params);
    futures_util::try_join!(tx.batch_execute("BEGIN"), clear).map_err(PgError::db(format!(
        "clearing transactions of chunk {chunk}"
    )))?;
    requests.add(1);
    copy_transactions(tx, &conn.copy, r).await?;
    requests.add(2); // COPY → CopyInResponse, then data → CommandComplete

    // Independent statements, sent together: tokio-postgres pipelines them.
    let d = r.detections;
    let pattern: Vec<&str> = d.iter().map(|d| d.key.pattern.id()).collect();
    let merchant: Vec<&str> = d.iter().map(|d| d.key.merchant.as_str()).collect();
    let customer: Vec<&str> = d.iter().map(|d| d.key.customer.as_str()).collect();
    let action: Vec<&str> = d.iter().map(|d| d.key.pattern.action()).collect();
    let seq: Vec<i32> = (0..d.len() as i32).collect();
    let y_start: Vec<DateTime<Utc>> = d.iter().map(|d| d.y_start).collect();
    let detected: Vec<DateTime<Utc>> = d.iter().map(|d| d.detected_at).collect();
    let detection_params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = &[
        &stream, &chunk, &pattern, &merchant, &customer, &action, &seq, &y_start, &detected,
    ];
    let detections = tx.execute(&conn.detections, detection_params);
    let (numbers, raws, reasons) = rejected_columns(r.rejected);
    let rejected_params: &[&(dyn tokio_postgres::types::ToSql + Sync)] =
        &[&stream, &chunk, &numbers, &raws, &reasons];
    let rejected = tx.execute(&conn.rejected, rejected_params);
    let p = r.pairs;
    let pm: Vec<&str> = p.iter().map(|p| p.merchant.as_str()).collect();
    let pc: Vec<&str> = p.iter().map(|p| p.customer.as_str()).collect();
    let txns: Vec<i64> = p.iter().map(|p| p.txns as i64).collect();
    let amount: Vec<String> = p.iter().map(|p| cents_text(p.cents)).collect();
    let gender: Vec<&str> = p.iter().map(|p| p.gender.as_str()).collect();
    let weight: Vec<Option<String>> = p.iter().map(|p| p.weight.map(weight_text)).collect();
    let stats_params: &[&(dyn tokio_postgres::types::ToSql + Sync)] =
        &[&stream, &chunk, &pm, &pc, &txns, &amount, &gender, &weight];
    let stats = tx.execute(&conn.stats, stats_params);
    let detection_count = r.detections.len() as i64;
    let (rows, rejected_count) = (r.rows as i64, r.rejected_count as i64);
    let ledger_params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = &[
        &stream,
        &chunk,
        &r.key,
        &rows,
        &rejected_count,
        &detection_count,
        &r.started,
    ];
    let ledger = tx.execute(&conn.ledger, ledger_params);
    // Polled last, so sent after the four executions above.
    let commit = tx.batch_execute("COMMIT");
    futures_util::try_join!(detections, rejected, stats, ledger, commit)
        .map_err(PgError::db(format!("writing chunk {chunk}")))?;
    requests.add(1);
    Ok(())
}

/// Bulk-loads the chunk's valid rows with COPY (text format).
async fn copy_transactions(
    tx: &Client,
    copy: &Statement,
    r: &ChunkRecord<'_>,
) -> Result<(), PgError> {
    let mut buf = String::with_capacity(r.transactions.len() * 160);
    for t in r.transactions {
        let fields = [
            copy_escape(r.stream),
            r.chunk.to_string(),
            t.row.to_string(),
            copy_escape(&t.customer),
            copy_escape(&t.merchant),
            copy_escape(t.gender.as_str()),
            cents_text(u128::from(t.cents)),
            t.weight.map(weight_text).unwrap_or_else(|| "\\N".into()),
            copy_escape(&t.raw),
        ];
        buf.push_str(&fields.join("\t"));
        buf.push('\n');
    }
    let sink = tx
        .copy_in(copy)
        .await
        .map_err(PgError::db("starting COPY transactions"))?;
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from(buf))
        .await
        .map_err(PgError::db("sending COPY data"))?;
    sink.finish()
        .await
        .map_err(PgError::db("finishing COPY transactions"))?;
    Ok(())
}

/// Escapes a value for COPY's text format.
fn copy_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
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

    #[test]
    fn copy_text_is_escaped() {
        assert_eq!(copy_escape("a\tb\\c\nd\re"), "a\\tb\\\\c\\nd\\re");
    }
}
