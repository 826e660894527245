//! Applies the PostgreSQL migrations of [`crate::storage::migrations`] in
//! one transaction that first takes a transaction-scoped advisory lock:
//! replicas starting together queue on it, and each migration is applied
//! exactly once. A transaction-scoped lock is also what PgBouncer's
//! transaction pooling allows.

use tokio_postgres::Client;

use crate::storage::migrations::POSTGRES as MIGRATIONS;

/// The advisory lock key of runstore's migrations ("runstore" in ASCII).
const MIGRATION_LOCK: i64 = 0x72_75_6e_73_74_6f_72_65;

/// Brings the schema up to date; returns the versions it applied.
pub async fn migrate(client: &mut Client) -> Result<Vec<i64>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT      NOT NULL PRIMARY KEY,
             name       TEXT        NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await?;
        applied.push(migration.version);
    }
    tx.commit().await?;
    Ok(applied)
}
