//! Schema migrations, embedded in the binary and applied in order, each once.

use super::PgError;
use tokio_postgres::Client;

/// (version, name, SQL) of every migration, in order.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "outputs",
        include_str!("../../migrations/0001_outputs.sql"),
    ),
    (
        2,
        "lossless rejects, bounded transactions",
        include_str!("../../migrations/0002_lossless_and_bounded.sql"),
    ),
    (
        3,
        "detection evidence",
        include_str!("../../migrations/0003_evidence.sql"),
    ),
];

/// Applies the migrations not applied yet. Safe to run from several processes at
/// once: an advisory lock serializes them.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, PgError> {
    let tx = client
        .transaction()
        .await
        .map_err(PgError::db("starting migration transaction"))?;
    // Arbitrary constant: "txpipe" in ASCII.
    tx.execute("SELECT pg_advisory_xact_lock(126943796586597)", &[])
        .await
        .map_err(PgError::db("taking the migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(PgError::db("creating schema_migrations"))?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .map_err(PgError::db("reading schema_migrations"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(PgError::db(format!("migration {version} ({name})")))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(PgError::db("recording a migration"))?;
        applied.push(*version);
    }
    tx.commit()
        .await
        .map_err(PgError::db("committing migrations"))?;
    Ok(applied)
}
