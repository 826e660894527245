//! The SQL of each write, run by the committer inside its batch's
//! transaction. Every write is a few index seeks and upserts: its cost does
//! not depend on the length of the task's history. A manifest write and a
//! delete append their event in the same savepoint.

use rusqlite::{Connection, OptionalExtension, params};

use crate::storage::{
    EventKind, RunInstant, RunRecord, Target, WriteReceipt, location,
    retention::{EXPIRE_BATCH, ExpireRule, ExpireStep, TASK_SCAN, task_after},
};

/// Most events one pruning step removes: each step is one short write.
pub const PRUNE_BATCH: usize = 1000;

/// Now, as `recorded_at` and `written_at` store it: fixed-width RFC 3339 in
/// UTC, so text order is time order.
pub fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn append_event(
    conn: &Connection,
    kind: EventKind,
    task_id: &str,
    run_id: &str,
    timestamp: &str,
    recorded_at: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO run_events (kind, task_id, run_id, timestamp, recorded_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        kind.as_str(),
        task_id,
        run_id,
        timestamp,
        recorded_at
    ])?;
    Ok(())
}

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
/// without runs. The subquery names `tasks.task_id`, not `?1`: with `?1`,
/// SQLite compiled the statement again on every run (its statement status
/// counted a reprepare per run, 11 % of the committer's time at c64).
fn update_task_counters(conn: &Connection, task_id: &str, added: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE tasks SET
             run_count = run_count + ?2,
             last_run_at = (SELECT e.timestamp FROM snapshot_entries e
                            WHERE e.task_id = tasks.task_id
                            ORDER BY e.instant_secs DESC, e.instant_nanos DESC, e.seq DESC
                            LIMIT 1)
         WHERE task_id = ?1",
    )?
    .execute(params![task_id, added])?;
    if added < 0 {
        conn.prepare_cached("DELETE FROM tasks WHERE task_id = ?1 AND run_count <= 0")?
            .execute([task_id])?;
    }
    Ok(())
}

/// Removes both records of a run and, when either existed, appends its
/// DELETED event; the caller wraps it in one savepoint, so all of it goes
/// or none does. Returns whether either existed.
pub fn delete_run(conn: &Connection, task_id: &str, run_id: &str) -> rusqlite::Result<bool> {
    remove_run(conn, EventKind::Deleted, task_id, run_id)
}

/// Removes both records of a run, keeps its task's counters, and appends
/// an event of `kind` when either record existed.
fn remove_run(
    conn: &Connection,
    kind: EventKind,
    task_id: &str,
    run_id: &str,
) -> rusqlite::Result<bool> {
    let entry: Option<String> = conn
        .prepare_cached(
            "DELETE FROM snapshot_entries WHERE task_id = ?1 AND run_id = ?2 RETURNING timestamp",
        )?
        .query_row([task_id, run_id], |row| row.get(0))
        .optional()?;
    let manifest: Option<String> = conn
        .prepare_cached(
            "DELETE FROM manifests WHERE task_id = ?1 AND run_id = ?2 RETURNING timestamp",
        )?
        .query_row([task_id, run_id], |row| row.get(0))
        .optional()?;
    if entry.is_some() {
        update_task_counters(conn, task_id, -1)?;
    }
    let Some(timestamp) = manifest.or(entry) else {
        return Ok(false);
    };
    append_event(conn, kind, task_id, run_id, &timestamp, &now_text())?;
    Ok(true)
}

/// One step of retention, in the caller's savepoint: victims are chosen
/// and removed under the one write lock, so nothing changes in between.
pub fn expire(conn: &Connection, rule: &ExpireRule) -> rusqlite::Result<ExpireStep> {
    match rule {
        ExpireRule::Before(cutoff) => expire_before(conn, *cutoff),
        ExpireRule::KeepNewest { keep, from } => expire_beyond(conn, *keep, from),
    }
}

/// Removes up to [`EXPIRE_BATCH`] runs whose entry or manifest names an
/// instant before `cutoff`: two seeks on the by-instant indexes.
fn expire_before(conn: &Connection, cutoff: RunInstant) -> rusqlite::Result<ExpireStep> {
    let victims: Vec<(String, String)> = conn
        .prepare_cached(
            "SELECT task_id, run_id FROM (
                 SELECT task_id, run_id FROM snapshot_entries
                 WHERE (instant_secs, instant_nanos) < (?1, ?2)
                 ORDER BY instant_secs, instant_nanos LIMIT ?3)
             UNION
             SELECT task_id, run_id FROM (
                 SELECT task_id, run_id FROM manifests
                 WHERE (instant_secs, instant_nanos) < (?1, ?2)
                 ORDER BY instant_secs, instant_nanos LIMIT ?3)
             LIMIT ?3",
        )?
        .query_map(
            params![cutoff.secs, cutoff.nanos, EXPIRE_BATCH as i64],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let mut expired = 0;
    for (task_id, run_id) in &victims {
        expired += u64::from(remove_run(conn, EventKind::Expired, task_id, run_id)?);
    }
    Ok(ExpireStep {
        expired,
        next: (victims.len() == EXPIRE_BATCH).then_some(ExpireRule::Before(cutoff)),
    })
}

/// Looks at up to [`TASK_SCAN`] tasks from `from` on, and in each removes
/// the oldest runs beyond the newest `keep` (oldest first in the task's
/// order), up to [`EXPIRE_BATCH`] runs in all.
fn expire_beyond(conn: &Connection, keep: u64, from: &str) -> rusqlite::Result<ExpireStep> {
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    let tasks: Vec<(String, i64)> = conn
        .prepare_cached(
            "SELECT task_id, run_count FROM tasks WHERE task_id >= ?1 ORDER BY task_id LIMIT ?2",
        )?
        .query_map(params![from, TASK_SCAN as i64], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut budget = EXPIRE_BATCH as i64;
    let mut expired = 0;
    for (task_id, run_count) in tasks.iter().filter(|(_, count)| *count > keep) {
        let excess = run_count - keep;
        let victims: Vec<String> = conn
            .prepare_cached(
                "SELECT run_id FROM snapshot_entries WHERE task_id = ?1
                 ORDER BY instant_secs, instant_nanos, seq LIMIT ?2",
            )?
            .query_map(params![task_id, excess.min(budget)], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for run_id in &victims {
            expired += u64::from(remove_run(conn, EventKind::Expired, task_id, run_id)?);
        }
        budget -= victims.len() as i64;
        if budget == 0 {
            // This task may still be over: the next step starts with it.
            let next = if excess > victims.len() as i64 {
                task_id.clone()
            } else {
                task_after(task_id)
            };
            return Ok(ExpireStep {
                expired,
                next: Some(ExpireRule::KeepNewest {
                    keep: keep as u64,
                    from: next,
                }),
            });
        }
    }
    Ok(ExpireStep {
        expired,
        next: (tasks.len() == TASK_SCAN).then(|| ExpireRule::KeepNewest {
            keep: keep as u64,
            from: task_after(&tasks[TASK_SCAN - 1].0),
        }),
    })
}

/// Removes the oldest events recorded before `before`, at most
/// [`PRUNE_BATCH`], in cursor order (stopping at the first younger one, so
/// what is left after the horizon is whole), and moves the horizon.
pub fn prune_events(conn: &Connection, before: &str) -> rusqlite::Result<u64> {
    let pruned: Vec<i64> = conn
        .prepare_cached(
            "WITH oldest AS (SELECT cursor, recorded_at FROM run_events ORDER BY cursor LIMIT ?2),
                  young AS (SELECT MIN(cursor) AS cursor FROM oldest WHERE recorded_at >= ?1)
             DELETE FROM run_events WHERE cursor IN (
                 SELECT oldest.cursor FROM oldest, young
                 WHERE young.cursor IS NULL OR oldest.cursor < young.cursor)
             RETURNING cursor",
        )?
        .query_map(params![before, PRUNE_BATCH as i64], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if let Some(up_to) = pruned.iter().max() {
        conn.prepare_cached("UPDATE run_events_pruned SET up_to = max(up_to, ?1)")?
            .execute([up_to])?;
    }
    Ok(pruned.len() as u64)
}

fn write_manifest(conn: &Connection, run: &RunRecord) -> rusqlite::Result<u64> {
    let written_at = now_text();
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
    append_event(
        conn,
        EventKind::Completed,
        &run.task_id,
        &run.run_id,
        &run.timestamp,
        &written_at,
    )?;
    Ok(run.summary_json.len() as u64)
}

/// Most free pages one reclaiming step hands back to the file system
/// (2 MiB of 4 KiB pages): the step moves pages, holding the write lock.
pub const RECLAIM_PAGES: i64 = 512;

/// Hands up to [`RECLAIM_PAGES`] free pages back to the file system
/// (incremental vacuum: the file shrinks at the next checkpoint); returns
/// how many it freed. A no-op on a database without incremental
/// auto-vacuum.
pub fn reclaim(conn: &Connection) -> rusqlite::Result<u64> {
    let free = |conn: &Connection| -> rusqlite::Result<i64> {
        conn.query_row("PRAGMA freelist_count", [], |row| row.get(0))
    };
    let before = free(conn)?;
    // Each step of the pragma frees one page: step it to its end.
    let mut vacuum = conn.prepare_cached(&format!("PRAGMA incremental_vacuum({RECLAIM_PAGES})"))?;
    let mut steps = vacuum.query([])?;
    while steps.next()?.is_some() {}
    Ok(u64::try_from(before - free(conn)?).unwrap_or_default())
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
