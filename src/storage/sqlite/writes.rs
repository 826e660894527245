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
/// with it, so a rewritten run sorts as recorded last among equal instants;
/// then brings the task's counters up to date. One writer owns the
/// connection, so nothing changes between these statements.
fn write_snapshot(conn: &Connection, run: &RunRecord) -> rusqlite::Result<u64> {
    let existed = entry_exists(conn, &run.task_id, &run.run_id)?;
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
    update_task_counters(conn, &run.task_id, if existed { 0 } else { 1 })?;
    Ok((run.timestamp.len() + run.summary_json.len()) as u64)
}

fn entry_exists(conn: &Connection, task_id: &str, run_id: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM snapshot_entries WHERE task_id = ?1 AND run_id = ?2)",
    )?
    .query_row([task_id, run_id], |row| row.get(0))
}

/// Adds `added` to the task's run count and takes its latest timestamp from
/// the top of the order index (one seek); drops the row of a task left
/// without runs.
fn update_task_counters(conn: &Connection, task_id: &str, added: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE tasks SET
             run_count = run_count + ?2,
             last_run_at = (SELECT timestamp FROM snapshot_entries WHERE task_id = ?1
                            ORDER BY instant_secs DESC, instant_nanos DESC, seq DESC LIMIT 1)
         WHERE task_id = ?1",
    )?
    .execute(params![task_id, added])?;
    if added < 0 {
        conn.prepare_cached("DELETE FROM tasks WHERE task_id = ?1 AND run_count <= 0")?
            .execute([task_id])?;
    }
    Ok(())
}

/// Removes both records of a run; the caller wraps it in one savepoint, so
/// both go or neither does. Returns whether either existed.
pub fn delete_run(conn: &Connection, task_id: &str, run_id: &str) -> rusqlite::Result<bool> {
    let entries = conn
        .prepare_cached("DELETE FROM snapshot_entries WHERE task_id = ?1 AND run_id = ?2")?
        .execute([task_id, run_id])?;
    let manifests = conn
        .prepare_cached("DELETE FROM manifests WHERE task_id = ?1 AND run_id = ?2")?
        .execute([task_id, run_id])?;
    if entries > 0 {
        update_task_counters(conn, task_id, -(entries as i64))?;
    }
    Ok(entries + manifests > 0)
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
