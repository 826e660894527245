//! Reads, on a small pool of connections of their own: in WAL mode readers
//! never wait for the committer, and each read sees one committed state.
//! Queries run on tokio's blocking pool, off the async workers.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Semaphore;

use super::{
    connection::{LockWait, OpenDatabaseError, open_connection},
    errors::classify,
};
use crate::storage::{
    EventCursor, EventKind, EventPage, EventQuery, PAGE_BYTE_BUDGET, RunCursor, RunEvent,
    RunInstant, SnapshotPage, SnapshotQuery, StorageError, StoredManifest, StoredRun, TaskInfo,
    TaskPage, TaskQuery,
};

/// Read connections kept open; more readers queue for one.
const READ_CONNECTIONS: usize = 4;

pub struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
    path: PathBuf,
    lock_wait: LockWait,
}

impl ReadPool {
    pub fn open(path: PathBuf, lock_wait: LockWait) -> Result<Arc<Self>, OpenDatabaseError> {
        let mut idle = Vec::with_capacity(READ_CONNECTIONS);
        for _ in 0..READ_CONNECTIONS {
            idle.push(open_reader(&path, lock_wait)?);
        }
        Ok(Arc::new(Self {
            idle: Mutex::new(idle),
            permits: Semaphore::new(READ_CONNECTIONS),
            path,
            lock_wait,
        }))
    }

    /// Runs `read` on an idle connection in a blocking task.
    pub async fn run<T, F>(self: &Arc<Self>, read: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StorageError::Internal("read pool closed".into()))?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            // A std Mutex: it is held only to take or return a connection.
            let taken = pool.idle.lock().map(|mut idle| idle.pop()).ok().flatten();
            let conn = match taken {
                Some(conn) => conn,
                None => open_reader(&pool.path, pool.lock_wait)
                    .map_err(|e| StorageError::Unavailable(e.to_string()))?,
            };
            let result = read(&conn);
            // A connection whose read hit an I/O error is dropped, not reused.
            if !matches!(
                result,
                Err(StorageError::Unavailable(_) | StorageError::Corrupt(_))
            ) && let Ok(mut idle) = pool.idle.lock()
            {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StorageError::Internal(format!("read task failed: {e}")))?
    }
}

fn open_reader(
    path: &std::path::Path,
    lock_wait: LockWait,
) -> Result<Connection, OpenDatabaseError> {
    let conn = open_connection(path, lock_wait)?;
    conn.execute_batch("PRAGMA query_only=ON")
        .map_err(|source| OpenDatabaseError::Sqlite {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(conn)
}

fn sql(err: rusqlite::Error) -> StorageError {
    classify(&err)
}

pub fn manifest(
    conn: &Connection,
    task_id: &str,
    run_id: &str,
) -> Result<StoredManifest, StorageError> {
    let row = conn
        .prepare_cached(
            "SELECT summary_json, sha256, written_at FROM manifests
             WHERE task_id = ?1 AND run_id = ?2",
        )
        .map_err(sql)?
        .query_row(params![task_id, run_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .optional()
        .map_err(sql)?;
    let (summary_json, sha256, written_at) = row.ok_or(StorageError::NotFound)?;
    let written_at = chrono::DateTime::parse_from_rfc3339(&written_at)
        .map_err(|e| StorageError::Corrupt(format!("manifests.written_at {written_at:?}: {e}")))?;
    Ok(StoredManifest {
        summary_json,
        sha256,
        written_at: written_at.into(),
    })
}

/// One page of a task's history: a keyset seek on the order index (read
/// forwards or backwards), so its cost does not depend on where in the
/// history it starts. Both statements run in one read transaction, so the
/// page and `last_run_at` agree.
pub fn snapshot_page(
    conn: &Connection,
    task_id: &str,
    query: SnapshotQuery,
) -> Result<SnapshotPage, StorageError> {
    let tx = conn.unchecked_transaction().map_err(sql)?;
    let last_run_at: Option<String> = tx
        .prepare_cached(
            "SELECT timestamp FROM snapshot_entries WHERE task_id = ?1
             ORDER BY instant_secs DESC, instant_nanos DESC, seq DESC LIMIT 1",
        )
        .map_err(sql)?
        .query_row([task_id], |row| row.get(0))
        .optional()
        .map_err(sql)?;
    let last_run_at = last_run_at.ok_or(StorageError::NotFound)?;

    let start = query.after.unwrap_or(if query.newest_first {
        RunCursor::LAST
    } else {
        RunCursor::FIRST
    });
    // The summary is read only when asked for: SQLite loads a column, and
    // the overflow pages of a large one, only when it is evaluated. No
    // LIMIT: the index gives the order, rows are produced as they are
    // stepped, and the loop stops at the page's end. (SQLite plans with the
    // value bound to a `LIMIT ?`, so such a statement is compiled again for
    // every page.)
    let mut statement = tx
        .prepare_cached(if query.newest_first {
            "SELECT run_id, timestamp, instant_secs, instant_nanos, seq,
                    CASE WHEN ?5 THEN '' ELSE summary_json END
             FROM snapshot_entries
             WHERE task_id = ?1 AND (instant_secs, instant_nanos, seq) < (?2, ?3, ?4)
             ORDER BY instant_secs DESC, instant_nanos DESC, seq DESC"
        } else {
            "SELECT run_id, timestamp, instant_secs, instant_nanos, seq,
                    CASE WHEN ?5 THEN '' ELSE summary_json END
             FROM snapshot_entries
             WHERE task_id = ?1 AND (instant_secs, instant_nanos, seq) > (?2, ?3, ?4)
             ORDER BY instant_secs, instant_nanos, seq"
        })
        .map_err(sql)?;
    let seq = i64::try_from(start.seq).unwrap_or(i64::MAX);
    // One row beyond the page says whether another page follows; its
    // summary is never read.
    let limit = query.limit;
    let mut rows = statement
        .query(params![
            task_id,
            start.instant.secs,
            start.instant.nanos,
            seq,
            query.omit_summaries,
        ])
        .map_err(sql)?;
    let mut runs = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    while let Some(row) = rows.next().map_err(sql)? {
        if runs.len() == limit {
            more = true;
            break;
        }
        let summary_json: String = row.get(5).map_err(sql)?;
        if !runs.is_empty() && bytes + summary_json.len() > PAGE_BYTE_BUDGET {
            more = true;
            break;
        }
        bytes += summary_json.len();
        let seq: i64 = row.get(4).map_err(sql)?;
        runs.push(StoredRun {
            run_id: row.get(0).map_err(sql)?,
            timestamp: row.get(1).map_err(sql)?,
            summary_json,
            cursor: RunCursor {
                instant: RunInstant {
                    secs: row.get(2).map_err(sql)?,
                    nanos: row.get(3).map_err(sql)?,
                },
                seq: u64::try_from(seq).unwrap_or_default(),
            },
        });
    }
    let next = more.then(|| runs.last().map(|run| run.cursor)).flatten();
    Ok(SnapshotPage {
        last_run_at,
        runs,
        next,
    })
}

/// One page of tasks: a range seek on the primary key of `tasks`, which
/// holds a row only for tasks with runs (and the probe's, with the empty id,
/// which is skipped). The seek starts at the previous page's last id, or at
/// the prefix, and ends with the prefix.
pub fn task_page(conn: &Connection, query: &TaskQuery) -> Result<TaskPage, StorageError> {
    let (from, skip) = query.range_start();
    let end = query.prefix_end();
    // Two statements, not `(?3 IS NULL OR task_id < ?3)`: only a plain
    // bound ends the range seek, so a prefix with few tasks does not scan
    // the rest of the table for one more row. No LIMIT, as in
    // `snapshot_page`: the loop stops one row past the page.
    let mut statement = conn
        .prepare_cached(if end.is_some() {
            "SELECT task_id, run_count, last_run_at FROM tasks
             WHERE task_id >= ?1 AND task_id <> ?2 AND task_id < ?3
             ORDER BY task_id"
        } else {
            "SELECT task_id, run_count, last_run_at FROM tasks
             WHERE task_id >= ?1 AND task_id <> ?2 AND ?3 IS NULL
             ORDER BY task_id"
        })
        .map_err(sql)?;
    let mut rows = statement.query(params![from, skip, end]).map_err(sql)?;
    let mut tasks = Vec::new();
    let mut more = false;
    while let Some(row) = rows.next().map_err(sql)? {
        if tasks.len() == query.limit {
            more = true;
            break;
        }
        let run_count: i64 = row.get(1).map_err(sql)?;
        let last_run_at: Option<String> = row.get(2).map_err(sql)?;
        tasks.push(TaskInfo {
            task_id: row.get(0).map_err(sql)?,
            run_count: u64::try_from(run_count).unwrap_or_default(),
            last_run_at: last_run_at.unwrap_or_default(),
        });
    }
    let next = more
        .then(|| tasks.last().map(|task| task.task_id.clone()))
        .flatten();
    Ok(TaskPage { tasks, next })
}

/// The newest cursor ever drawn (AUTOINCREMENT's counter survives pruning).
pub fn event_head(conn: &Connection) -> Result<EventCursor, StorageError> {
    let id: Option<i64> = conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'run_events'")
        .map_err(sql)?
        .query_row([], |row| row.get(0))
        .optional()
        .map_err(sql)?;
    Ok(EventCursor {
        tx: 0,
        id: u64::try_from(id.unwrap_or(0)).unwrap_or_default(),
    })
}

/// Events after the cursor, in one read transaction with the pruning
/// horizon, so a prune cannot slip between the check and the read; at most
/// `limit` events.
pub fn events(conn: &Connection, query: &EventQuery) -> Result<EventPage, StorageError> {
    let tx = conn.unchecked_transaction().map_err(sql)?;
    let pruned_up_to: i64 = tx
        .prepare_cached("SELECT up_to FROM run_events_pruned")
        .map_err(sql)?
        .query_row([], |row| row.get(0))
        .map_err(sql)?;
    let after = i64::try_from(query.after.id).unwrap_or(i64::MAX);
    if after < pruned_up_to {
        return Err(StorageError::CursorPruned);
    }
    let mut statement = tx
        .prepare_cached(
            "SELECT cursor, kind, task_id, run_id, timestamp, recorded_at FROM run_events
             WHERE cursor > ?1 ORDER BY cursor",
        )
        .map_err(sql)?;
    let mut rows = statement.query([after]).map_err(sql)?;
    let mut page = EventPage {
        events: Vec::new(),
        full: false,
    };
    // No LIMIT, as in `snapshot_page`: the loop stops at `limit`.
    while page.events.len() < query.limit
        && let Some(row) = rows.next().map_err(sql)?
    {
        let cursor = EventCursor {
            tx: 0,
            id: u64::try_from(row.get::<_, i64>(0).map_err(sql)?).unwrap_or_default(),
        };
        let task_id: String = row.get(2).map_err(sql)?;
        let kind: String = row.get(1).map_err(sql)?;
        let recorded_at: String = row.get(5).map_err(sql)?;
        page.events.push(RunEvent {
            cursor,
            kind: EventKind::parse(&kind)
                .ok_or_else(|| StorageError::Corrupt(format!("run_events.kind {kind:?}")))?,
            task_id,
            run_id: row.get(3).map_err(sql)?,
            timestamp: row.get(4).map_err(sql)?,
            recorded_at: chrono::DateTime::parse_from_rfc3339(&recorded_at)
                .map_err(|e| {
                    StorageError::Corrupt(format!("run_events.recorded_at {recorded_at:?}: {e}"))
                })?
                .into(),
        });
    }
    page.full = page.events.len() == query.limit;
    Ok(page)
}

/// Bytes free inside the database file: pages SQLite will reuse first.
pub fn free_pages_bytes(conn: &Connection) -> Result<u64, StorageError> {
    let pages: i64 = conn
        .query_row("PRAGMA freelist_count", [], |row| row.get(0))
        .map_err(sql)?;
    Ok(u64::try_from(pages).unwrap_or_default() * page_size(conn)?)
}

pub fn page_size(conn: &Connection) -> Result<u64, StorageError> {
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .map_err(sql)?;
    Ok(u64::try_from(page_size).unwrap_or_default())
}
