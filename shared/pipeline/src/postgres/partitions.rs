//! Daily partitions of the `transactions` table: the day's partitions exist before a
//! row of that day is written, and days older than the retention are dropped, so the
//! per-transaction copy never fills the database.

use super::PgError;
use chrono::{Days, NaiveDate};
use tokio_postgres::Client;

/// The partition of `day`: `transactions_YYYYMMDD`.
fn partition_name(day: NaiveDate) -> String {
    format!("transactions_{}", day.format("%Y%m%d"))
}

/// Makes sure `today` and tomorrow have partitions and drops the days before
/// `today − retention_days`. Serialized across connections by an advisory lock.
/// Returns the partitions dropped.
pub async fn maintain(
    client: &mut Client,
    today: NaiveDate,
    retention_days: u32,
) -> Result<Vec<String>, PgError> {
    let tx = client
        .transaction()
        .await
        .map_err(PgError::db("starting partition maintenance"))?;
    // Arbitrary constant, distinct from the migration lock.
    tx.execute("SELECT pg_advisory_xact_lock(126943796586598)", &[])
        .await
        .map_err(PgError::db("taking the partition lock"))?;
    for day in [today, today + Days::new(1)] {
        let next = day + Days::new(1);
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF transactions FOR VALUES FROM ('{day}') TO ('{next}')",
            partition_name(day)
        ))
        .await
        .map_err(PgError::db(format!("creating the partition of {day}")))?;
    }
    let oldest_kept = today - Days::new(u64::from(retention_days));
    let children: Vec<String> = tx
        .query(
            "SELECT c.relname FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent
             WHERE p.relname = 'transactions'",
            &[],
        )
        .await
        .map_err(PgError::db("listing transaction partitions"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut dropped = Vec::new();
    for name in children {
        let Some(day) = name
            .strip_prefix("transactions_")
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
        else {
            continue; // the default partition
        };
        if day < oldest_kept {
            tx.batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                .await
                .map_err(PgError::db(format!("dropping the partition {name}")))?;
            dropped.push(name);
        }
    }
    tx.commit()
        .await
        .map_err(PgError::db("committing partition maintenance"))?;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_by_day() {
        let day = NaiveDate::from_ymd_opt(2026, 1, 31).unwrap();
        assert_eq!(partition_name(day), "transactions_20260131");
    }
}
