//! The SQL of the PostgreSQL backend. Every write is one autocommit
//! statement, one round trip: the manifest's upserts it and appends its
//! event; a snapshot write and a delete call the functions of the
//! migrations, which lock their task's row first. Reads are keyset seeks on the order index or the
//! tasks' key. None depends on the length of the task's history.

use std::time::SystemTime;

use deadpool_postgres::{Object, Transaction};
use futures_util::TryStreamExt;
use tokio_postgres::IsolationLevel;

use super::errors::classify;
use crate::storage::{
    EventCursor, EventHead, EventKind, EventPage, EventQuery, PAGE_BYTE_BUDGET, RunCursor,
    RunEvent, RunInstant, RunRecord, SnapshotPage, SnapshotQuery, StorageError, StoredManifest,
    StoredRun, TaskInfo, TaskPage, TaskQuery,
    retention::{EXPIRE_BATCH, ExpireRule, ExpireStep, TASK_SCAN, task_after},
};

fn sql(err: tokio_postgres::Error) -> StorageError {
    classify(&err)
}

/// A read-only transaction whose statements all see one snapshot.
async fn one_snapshot(conn: &mut Object) -> Result<Transaction<'_>, StorageError> {
    conn.build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(sql)
}

/// Draws the task's next sequence number, upserts the entry with it and
/// keeps the task's counters, in one autocommit call of
/// `runstore_write_snapshot` (`0002_task_counters.sql` says why it is exact
/// and deadlock-free): one round trip.
pub async fn write_snapshot(conn: &Object, run: &RunRecord) -> Result<u64, StorageError> {
    let statement = conn
        .prepare_cached("SELECT runstore_write_snapshot($1, $2, $3, $4, $5, $6)")
        .await
        .map_err(sql)?;
    let nanos = nanos_i32(run.instant.nanos);
    conn.execute(
        &statement,
        &[
            &run.task_id,
            &run.run_id,
            &run.timestamp,
            &run.instant.secs,
            &nanos,
            &run.summary_json,
        ],
    )
    .await
    .map_err(sql)?;
    Ok((run.timestamp.len() + run.summary_json.len()) as u64)
}

/// Removes both records of a run, keeps the counters and appends the
/// DELETED event, in one autocommit call of `runstore_delete_run`. Returns
/// whether either record existed.
pub async fn delete_run(conn: &Object, task_id: &str, run_id: &str) -> Result<bool, StorageError> {
    let statement = conn
        .prepare_cached("SELECT runstore_delete_run($1, $2)")
        .await
        .map_err(sql)?;
    let row = conn
        .query_one(&statement, &[&task_id, &run_id])
        .await
        .map_err(sql)?;
    Ok(row.get(0))
}

/// Where a watch from now starts, from one snapshot: after its xmin (every
/// transaction below it has ended; everything from there on is to come or
/// in flight), leaving out the events of transactions above xmin that had
/// committed (bounded: they are the few since the oldest open transaction
/// began; past the bound a watcher may see a few of them).
pub async fn event_head(conn: &mut Object) -> Result<EventHead, StorageError> {
    const MOST_COMMITTED: i64 = 10_000;
    let tx = one_snapshot(conn).await?;
    let xmin: i64 = tx
        .query_one(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
            &[],
        )
        .await
        .map_err(sql)?
        .get(0);
    let committed = tx
        .query(
            "SELECT tx, id FROM run_events WHERE tx >= $1 ORDER BY tx, id LIMIT $2",
            &[&xmin, &MOST_COMMITTED],
        )
        .await
        .map_err(sql)?;
    tx.commit().await.map_err(sql)?;
    let cursor = |tx: i64, id: i64| EventCursor {
        tx: u64::try_from(tx).unwrap_or_default(),
        id: u64::try_from(id).unwrap_or_default(),
    };
    Ok(EventHead {
        after: cursor(xmin, 0),
        committed: committed
            .iter()
            .map(|r| cursor(r.get(0), r.get(1)))
            .collect(),
    })
}

/// Events after the cursor whose transaction is below the snapshot's xmin
/// (see `0003_run_events.sql`: such events are final, in cursor order), and
/// the pruning horizon, from one snapshot.
pub async fn events(conn: &mut Object, query: &EventQuery) -> Result<EventPage, StorageError> {
    let tx = one_snapshot(conn).await?;
    let horizon = tx
        .query_one("SELECT tx, up_to FROM run_events_pruned", &[])
        .await
        .map_err(sql)?;
    let (after_tx, after_id) = (as_i64(query.after.tx), as_i64(query.after.id));
    if (after_tx, after_id) < (horizon.get::<_, i64>(0), horizon.get::<_, i64>(1)) {
        return Err(StorageError::CursorPruned);
    }
    let statement = tx
        .prepare_cached(
            "SELECT tx, id, kind, task_id, run_id, timestamp, recorded_at FROM run_events
             WHERE (tx, id) > ($1, $2)
               AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
             ORDER BY tx, id LIMIT $3",
        )
        .await
        .map_err(sql)?;
    let limit = as_i64(query.limit as u64);
    let rows = tx
        .query(&statement, &[&after_tx, &after_id, &limit])
        .await
        .map_err(sql)?;
    tx.commit().await.map_err(sql)?;
    let mut page = EventPage {
        events: Vec::new(),
        full: rows.len() == query.limit,
    };
    for row in rows {
        let cursor = EventCursor {
            tx: u64::try_from(row.get::<_, i64>(0)).unwrap_or_default(),
            id: u64::try_from(row.get::<_, i64>(1)).unwrap_or_default(),
        };
        let task_id: String = row.get(3);
        let kind: String = row.get(2);
        page.events.push(RunEvent {
            cursor,
            kind: EventKind::parse(&kind)
                .ok_or_else(|| StorageError::Corrupt(format!("run_events.kind {kind:?}")))?,
            task_id,
            run_id: row.get(4),
            timestamp: row.get(5),
            recorded_at: row.get::<_, SystemTime>(6),
        });
    }
    Ok(page)
}

/// One pruning step: the oldest final events recorded before `before`, at
/// most `batch`, in cursor order up to the first younger one, and the
/// horizon moved past them, in one statement.
pub async fn prune_events(
    conn: &Object,
    before: SystemTime,
    batch: usize,
) -> Result<u64, StorageError> {
    let statement = conn
        .prepare_cached(
            "WITH oldest AS (
                 SELECT tx, id, recorded_at FROM run_events
                 WHERE tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                 ORDER BY tx, id LIMIT $2
             ), young AS (
                 SELECT tx, id FROM oldest WHERE recorded_at >= $1 ORDER BY tx, id LIMIT 1
             ), gone AS (
                 DELETE FROM run_events e USING oldest o
                 WHERE e.tx = o.tx AND e.id = o.id
                   AND NOT EXISTS (SELECT 1 FROM young y WHERE (o.tx, o.id) >= (y.tx, y.id))
                 RETURNING e.tx, e.id
             ), last AS (
                 SELECT tx, id FROM gone ORDER BY tx DESC, id DESC LIMIT 1
             ), moved AS (
                 UPDATE run_events_pruned p SET tx = last.tx, up_to = last.id FROM last
                 WHERE (last.tx, last.id) > (p.tx, p.up_to)
             )
             SELECT count(*) FROM gone",
        )
        .await
        .map_err(sql)?;
    let limit = as_i64(batch as u64);
    let removed: i64 = conn
        .query_one(&statement, &[&before, &limit])
        .await
        .map_err(sql)?
        .get(0);
    Ok(u64::try_from(removed).unwrap_or_default())
}

/// One step of `--retain-for`: one call of `runstore_expire_before`, its
/// own short transaction.
pub async fn expire_before(conn: &Object, cutoff: RunInstant) -> Result<ExpireStep, StorageError> {
    let statement = conn
        .prepare_cached("SELECT candidates, expired FROM runstore_expire_before($1, $2, $3)")
        .await
        .map_err(sql)?;
    let nanos = i32::try_from(cutoff.nanos).unwrap_or(i32::MAX);
    let limit = EXPIRE_BATCH as i32;
    let row = conn
        .query_one(&statement, &[&cutoff.secs, &nanos, &limit])
        .await
        .map_err(sql)?;
    let candidates: i32 = row.get(0);
    let expired: i32 = row.get(1);
    Ok(ExpireStep {
        expired: u64::try_from(expired).unwrap_or_default(),
        next: (candidates == limit).then_some(ExpireRule::Before(cutoff)),
    })
}

/// One step of `--retain-runs`: reads up to [`TASK_SCAN`] task rows from
/// `from` on, and for each over `keep` calls `runstore_expire_beyond`, a
/// short transaction per task, until [`EXPIRE_BATCH`] runs are removed.
pub async fn expire_beyond(
    conn: &Object,
    keep: u64,
    from: &str,
) -> Result<ExpireStep, StorageError> {
    let scan = conn
        .prepare_cached(
            "SELECT task_id, run_count FROM tasks WHERE task_id >= $1 ORDER BY task_id LIMIT $2",
        )
        .await
        .map_err(sql)?;
    let expire = conn
        .prepare_cached("SELECT runstore_expire_beyond($1, $2, $3)")
        .await
        .map_err(sql)?;
    let rows = conn
        .query(&scan, &[&from, &(TASK_SCAN as i64)])
        .await
        .map_err(sql)?;
    let keep_i64 = as_i64(keep);
    let mut budget = EXPIRE_BATCH as i32;
    let mut expired = 0;
    for row in &rows {
        let (task_id, run_count): (&str, i64) = (row.get(0), row.get(1));
        if run_count <= keep_i64 {
            continue;
        }
        let removed: i32 = conn
            .query_one(&expire, &[&task_id, &keep_i64, &budget])
            .await
            .map_err(sql)?
            .get(0);
        expired += u64::try_from(removed).unwrap_or_default();
        budget -= removed;
        if budget <= 0 {
            // This task may still be over: the next step starts with it.
            return Ok(ExpireStep {
                expired,
                next: Some(ExpireRule::KeepNewest {
                    keep,
                    from: task_id.to_owned(),
                }),
            });
        }
    }
    Ok(ExpireStep {
        expired,
        next: (rows.len() == TASK_SCAN).then(|| ExpireRule::KeepNewest {
            keep,
            from: task_after(rows[TASK_SCAN - 1].get(0)),
        }),
    })
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One page of tasks: a range seek on the primary key of `tasks` (see the
/// SQLite backend's `task_page`, which this mirrors).
pub async fn task_page(conn: &Object, query: &TaskQuery) -> Result<TaskPage, StorageError> {
    let (from, skip) = query.range_start();
    let end = query.prefix_end();
    let fetch = i64::try_from(query.limit.saturating_add(1)).unwrap_or(i64::MAX);
    // Two statements (see the SQLite backend's): only a plain bound ends
    // the index range.
    let statement = conn
        .prepare_cached(if end.is_some() {
            "SELECT task_id, run_count, last_run_at FROM tasks
             WHERE task_id >= $1 AND task_id <> $2 AND task_id < $3::text
             ORDER BY task_id LIMIT $4"
        } else {
            "SELECT task_id, run_count, last_run_at FROM tasks
             WHERE task_id >= $1 AND task_id <> $2 AND $3::text IS NULL
             ORDER BY task_id LIMIT $4"
        })
        .await
        .map_err(sql)?;
    let rows = conn
        .query(&statement, &[&from, &skip, &end, &fetch])
        .await
        .map_err(sql)?;
    let mut tasks: Vec<TaskInfo> = rows
        .iter()
        .map(|row| TaskInfo {
            task_id: row.get(0),
            run_count: u64::try_from(row.get::<_, i64>(1)).unwrap_or_default(),
            last_run_at: row.get::<_, Option<String>>(2).unwrap_or_default(),
        })
        .collect();
    let more = tasks.len() > query.limit;
    tasks.truncate(query.limit);
    let next = more
        .then(|| tasks.last().map(|task| task.task_id.clone()))
        .flatten();
    Ok(TaskPage { tasks, next })
}

/// Upserts the manifest and appends its COMPLETED event, in one statement
/// (one autocommit transaction).
pub async fn write_manifest(conn: &Object, run: &RunRecord) -> Result<u64, StorageError> {
    let statement = conn
        .prepare_cached(
            "WITH manifest AS (
                 INSERT INTO manifests
                     (task_id, run_id, summary_json, timestamp, instant_secs, instant_nanos, sha256, written_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp())
                 ON CONFLICT (task_id, run_id) DO UPDATE SET
                     summary_json = excluded.summary_json,
                     timestamp = excluded.timestamp,
                     instant_secs = excluded.instant_secs,
                     instant_nanos = excluded.instant_nanos,
                     sha256 = excluded.sha256,
                     written_at = excluded.written_at
                 RETURNING task_id, run_id, timestamp, written_at
             )
             INSERT INTO run_events (kind, task_id, run_id, timestamp, recorded_at)
             SELECT 'COMPLETED', task_id, run_id, timestamp, written_at FROM manifest",
        )
        .await
        .map_err(sql)?;
    let nanos = nanos_i32(run.instant.nanos);
    conn.execute(
        &statement,
        &[
            &run.task_id,
            &run.run_id,
            &run.summary_json,
            &run.timestamp,
            &run.instant.secs,
            &nanos,
            &run.sha256,
        ],
    )
    .await
    .map_err(sql)?;
    Ok(run.summary_json.len() as u64)
}

/// The readiness probe's durable write: the task with the empty id, which
/// no valid request can name.
pub async fn probe(conn: &Object) -> Result<(), StorageError> {
    let statement = conn
        .prepare_cached(
            "INSERT INTO tasks (task_id, last_seq) VALUES ('', 1)
             ON CONFLICT (task_id) DO UPDATE SET last_seq = tasks.last_seq + 1",
        )
        .await
        .map_err(sql)?;
    conn.execute(&statement, &[]).await.map_err(sql)?;
    Ok(())
}

pub async fn manifest(
    conn: &Object,
    task_id: &str,
    run_id: &str,
) -> Result<StoredManifest, StorageError> {
    let statement = conn
        .prepare_cached(
            "SELECT summary_json, sha256, written_at FROM manifests
             WHERE task_id = $1 AND run_id = $2",
        )
        .await
        .map_err(sql)?;
    let row = conn
        .query_opt(&statement, &[&task_id, &run_id])
        .await
        .map_err(sql)?
        .ok_or(StorageError::NotFound)?;
    Ok(StoredManifest {
        summary_json: row.get(0),
        sha256: row.get(1),
        written_at: row.get::<_, SystemTime>(2),
    })
}

/// One page of a task's history and its `last_run_at`, from one snapshot
/// of the database (a repeatable-read, read-only transaction).
pub async fn snapshot_page(
    conn: &mut Object,
    task_id: &str,
    query: SnapshotQuery,
) -> Result<SnapshotPage, StorageError> {
    let tx = one_snapshot(conn).await?;
    let last = tx
        .prepare_cached(
            "SELECT timestamp FROM snapshot_entries WHERE task_id = $1
             ORDER BY instant_secs DESC, instant_nanos DESC, seq DESC LIMIT 1",
        )
        .await
        .map_err(sql)?;
    let last_run_at: String = tx
        .query_opt(&last, &[&task_id])
        .await
        .map_err(sql)?
        .ok_or(StorageError::NotFound)?
        .get(0);
    let start = query.after.unwrap_or(if query.newest_first {
        RunCursor::LAST
    } else {
        RunCursor::FIRST
    });
    // A summary left out is never detoasted.
    let page = tx
        .prepare_cached(if query.newest_first {
            "SELECT run_id, timestamp, instant_secs, instant_nanos, seq,
                    CASE WHEN $6 THEN '' ELSE summary_json END
             FROM snapshot_entries
             WHERE task_id = $1 AND (instant_secs, instant_nanos, seq) < ($2, $3, $4)
             ORDER BY instant_secs DESC, instant_nanos DESC, seq DESC LIMIT $5"
        } else {
            "SELECT run_id, timestamp, instant_secs, instant_nanos, seq,
                    CASE WHEN $6 THEN '' ELSE summary_json END
             FROM snapshot_entries
             WHERE task_id = $1 AND (instant_secs, instant_nanos, seq) > ($2, $3, $4)
             ORDER BY instant_secs, instant_nanos, seq LIMIT $5"
        })
        .await
        .map_err(sql)?;
    let limit = query.limit;
    let seq = i64::try_from(start.seq).unwrap_or(i64::MAX);
    // One row beyond the page says whether another follows. Rows stream
    // in, so the byte budget bounds memory whatever the page size.
    let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    let nanos = nanos_i32(start.instant.nanos);
    let mut runs = Vec::new();
    let mut more = false;
    {
        let rows = tx
            .query_raw(
                &page,
                [
                    &task_id as &(dyn tokio_postgres::types::ToSql + Sync),
                    &start.instant.secs,
                    &nanos,
                    &seq,
                    &fetch,
                    &query.omit_summaries,
                ],
            )
            .await
            .map_err(sql)?;
        futures_util::pin_mut!(rows);
        let mut bytes = 0usize;
        while let Some(row) = rows.try_next().await.map_err(sql)? {
            if runs.len() == limit {
                more = true;
                break;
            }
            let summary_json: String = row.get(5);
            if !runs.is_empty() && bytes + summary_json.len() > PAGE_BYTE_BUDGET {
                more = true;
                break;
            }
            bytes += summary_json.len();
            let nanos: i32 = row.get(3);
            let seq: i64 = row.get(4);
            runs.push(StoredRun {
                run_id: row.get(0),
                timestamp: row.get(1),
                summary_json,
                cursor: RunCursor {
                    instant: RunInstant {
                        secs: row.get(2),
                        nanos: u32::try_from(nanos).unwrap_or_default(),
                    },
                    seq: u64::try_from(seq).unwrap_or_default(),
                },
            });
        }
    }
    tx.commit().await.map_err(sql)?;
    let next = more.then(|| runs.last().map(|run| run.cursor)).flatten();
    Ok(SnapshotPage {
        last_run_at,
        runs,
        next,
    })
}

/// Nanoseconds within a second always fit an INTEGER.
fn nanos_i32(nanos: u32) -> i32 {
    i32::try_from(nanos).unwrap_or(i32::MAX)
}
