//! The SQL of each write, run by the committer inside its batch's
//! transaction. Every write is a few index seeks and upserts: its cost does
//! not depend on the length of the task's history.

use rusqlite::{Connection, params};

use crate::storage::{RunRecord, Target, WriteReceipt, location};

/// Records one write of `run`; the caller wraps it in a savepoint.
pub fn apply(conn: &Connection, target: Target, run: &RunRecord) -> rusqlite::Result<WriteReceipt> {
    let bytes = match target {
        Target::Snapshot => write_snapshot(conn, run)?,
        Target::Manifest => write_manifest(conn, run)?,
    };
    Ok(WriteReceipt {
        location: location(target, &run.task_id, &run.run_id),
        bytes,
    })
}

/// Draws the task's next recording sequence number and upserts the entry
/// with it, so a rewritten run sorts as recorded last among equal instants.
fn write_snapshot(conn: &Connection, run: &RunRecord) -> rusqlite::Result<u64> {
    let seq: i64 = conn
        .prepare_cached(
            "INSERT INTO tasks (task_id, last_seq) VALUES (?1, 1)
             ON CONFLICT (task_id) DO UPDATE SET last_seq = last_seq + 1
             RETURNING last_seq",
        )?
        .query_row([&run.task_id], |row| row.get(0))?;
    conn.prepare_cached(
        "INSERT INTO snapshot_entries
             (task_id, run_id, timestamp, instant_secs, instant_nanos, seq, summary_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (task_id, run_id) DO UPDATE SET
             timestamp = excluded.timestamp,
             instant_secs = excluded.instant_secs,
             instant_nanos = excluded.instant_nanos,
             seq = excluded.seq,
             summary_json = excluded.summary_json",
    )?
    .execute(params![
        run.task_id,
        run.run_id,
        run.timestamp,
        run.instant.secs,
        run.instant.nanos,
        seq,
        run.summary_json,
    ])?;
    Ok((run.timestamp.len() + run.summary_json.len()) as u64)
}

fn write_manifest(conn: &Connection, run: &RunRecord) -> rusqlite::Result<u64> {
    let written_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    conn.prepare_cached(
        "INSERT INTO manifests
             (task_id, run_id, summary_json, timestamp, instant_secs, instant_nanos, sha256, written_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (task_id, run_id) DO UPDATE SET
             summary_json = excluded.summary_json,
             timestamp = excluded.timestamp,
             instant_secs = excluded.instant_secs,
             instant_nanos = excluded.instant_nanos,
             sha256 = excluded.sha256,
             written_at = excluded.written_at",
    )?
    .execute(params![
        run.task_id,
        run.run_id,
        run.summary_json,
        run.timestamp,
        run.instant.secs,
        run.instant.nanos,
        run.sha256,
        written_at,
    ])?;
    Ok(run.summary_json.len() as u64)
}

/// The readiness probe's durable write: it bumps the sequence of the task
/// with the empty id, which no valid request can name.
pub fn probe(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO tasks (task_id, last_seq) VALUES ('', 1)
         ON CONFLICT (task_id) DO UPDATE SET last_seq = last_seq + 1",
    )?
    .execute([])?;
    Ok(())
}
