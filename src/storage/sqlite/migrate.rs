//! Applies the SQLite migrations of [`crate::storage::migrations`]. All of
//! them run in one `BEGIN IMMEDIATE` transaction, which holds SQLite's write
//! lock: processes opening a fresh data dir together queue on it, and each
//! migration is applied exactly once.

use rusqlite::{Connection, params};

use crate::storage::migrations::SQLITE as MIGRATIONS;

/// Brings the schema up to date; returns the versions it applied.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<Vec<i64>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER NOT NULL PRIMARY KEY,
             name       TEXT    NOT NULL,
             applied_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
         )",
    )?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |row| row.get(0),
    )?;
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.execute_batch(migration.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (?1, ?2)",
            params![migration.version, migration.name],
        )?;
        applied.push(migration.version);
    }
    tx.commit()?;
    Ok(applied)
}
