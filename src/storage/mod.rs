//! The storage seam: what the service needs from a backend, and the typed
//! errors a backend reports. Backends know nothing of gRPC; the service knows
//! nothing of SQL.
//!
//! - [`open`](open()): the factory that builds a backend from the storage setting.
//! - [`deferred`]: a store still opening at start-up (an outage, a full
//!   disk), so the server waits unready instead of exiting.
//! - [`backoff`]: jittered, growing delays between attempts to reach a store.
//! - [`history`]: the ordering key of a task's runs and the page types.
//! - [`events`]: the change feed's cursor and events.
//! - [`migrations`]: the versioned schema of both backends.
//! - [`retention`]: the bounded steps of `--retain-for` and `--retain-runs`.
//! - [`sqlite`]: the embedded default, group-committed SQLite.
//! - [`postgres`]: PostgreSQL, for stateless replicas sharing one database.

mod backoff;
pub mod deferred;
pub mod events;
pub mod history;
pub mod migrations;
mod open;
pub mod postgres;
pub mod retention;
pub mod sqlite;
pub mod stats;

use std::sync::Arc;

use async_trait::async_trait;

pub use events::{EventCursor, EventHead, EventKind, EventPage, EventQuery, RunEvent};
pub use history::{
    PAGE_BYTE_BUDGET, RunCursor, RunInstant, SnapshotPage, SnapshotQuery, StoredRun, TaskInfo,
    TaskPage, TaskQuery,
};
pub use open::{OpenError, StorageSetting, open};
pub use retention::{ExpireRule, ExpireStep};
pub use stats::{GroupCommitStats, PoolStats, StorageStats};

/// One completed run, validated and ready to be written by both writes.
/// Everything a write needs is computed before dispatch (the sha256
/// included), so the two writes reach storage at the same moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub task_id: String,
    pub run_id: String,
    /// The timestamp exactly as the caller sent it.
    pub timestamp: String,
    /// The instant `timestamp` names: the ordering key.
    pub instant: RunInstant,
    /// The summary exactly as the caller sent it.
    pub summary_json: String,
    /// Lowercase hex SHA-256 of `summary_json`.
    pub sha256: String,
    /// Whether the other write of this run is dispatched at the same time, so
    /// a group-committing backend can make both land in one commit.
    pub paired: bool,
}

/// What a successful write reports back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReceipt {
    /// Where the record lives: its table and key.
    pub location: String,
    /// Bytes of the record written.
    pub bytes: u64,
}

/// A stored manifest as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub summary_json: String,
    /// Lowercase hex SHA-256 of `summary_json`, computed when it was written.
    pub sha256: String,
    /// When the manifest was last written.
    pub written_at: std::time::SystemTime,
}

/// Why a storage operation failed, in terms of what a caller can do about
/// it. Backend-neutral: no paths, no SQL. The API maps each kind to a gRPC
/// code and a retry hint in one place (`api::error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("not found")]
    NotFound,
    /// The store cannot be reached or failed an I/O operation; retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Out of space (disk full, quota); retry once space is freed.
    #[error("storage is full: {0}")]
    Exhausted(String),
    /// Lost a race for a lock or a transaction; retry at once.
    #[error("storage write aborted: {0}")]
    Aborted(String),
    /// Events after the cursor have been pruned (`--event-retention`).
    #[error("events after this cursor have been pruned")]
    CursorPruned,
    /// Stored data failed an integrity check.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store refused this record (a constraint or trigger); the same
    /// request will fail again.
    #[error("storage refused the record: {0}")]
    Invalid(String),
    /// A bug or an unexpected state in the backend.
    #[error("storage internal error: {0}")]
    Internal(String),
}

/// The two records CompleteRun writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Snapshot,
    Manifest,
}

/// Where a record lives: `snapshot_entries/<task>/<run>` or
/// `manifests/<task>/<run>`, the table and its key.
pub fn location(target: Target, task_id: &str, run_id: &str) -> String {
    let table = match target {
        Target::Snapshot => "snapshot_entries",
        Target::Manifest => "manifests",
    };
    format!("{table}/{task_id}/{run_id}")
}

/// A durable store for snapshots and manifests.
///
/// A write that returns `Ok` is durable: it survives a process crash and
/// power loss. A failed write leaves nothing visible.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Records `run` in its task's history, replacing an entry with the same
    /// run id. Its cost does not grow with the history's length.
    async fn write_snapshot(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError>;

    /// Stores the run's summary as its manifest, replacing any previous one.
    async fn write_manifest(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError>;

    /// Reads a manifest back; `NotFound` when the run has none.
    async fn read_manifest(
        &self,
        task_id: &str,
        run_id: &str,
    ) -> Result<StoredManifest, StorageError>;

    /// Reads up to `query.limit` runs of a task's history that sort after
    /// `query.after` in the query's order, stopping early at
    /// [`PAGE_BYTE_BUDGET`] bytes of summaries (never before one run);
    /// `NotFound` when the task has no runs.
    async fn read_snapshot(
        &self,
        task_id: &str,
        query: SnapshotQuery,
    ) -> Result<SnapshotPage, StorageError>;

    /// Removes a run's snapshot entry and manifest in one transaction, and
    /// keeps its task's count and latest timestamp current. Returns whether
    /// either record existed.
    async fn delete_run(&self, task_id: &str, run_id: &str) -> Result<bool, StorageError>;

    /// Lists tasks that have runs, in task id order, from the counters the
    /// writes keep: a page costs the same however many tasks exist.
    async fn list_tasks(&self, query: TaskQuery) -> Result<TaskPage, StorageError>;

    /// Where a watch from now starts: every event committed before this
    /// call is at or before the head, or listed in it.
    async fn event_head(&self) -> Result<EventHead, StorageError>;

    /// Reads events after `query.after` in cursor order, never one whose
    /// transaction could still be followed by an earlier cursor's commit.
    /// `CursorPruned` when events after the cursor were pruned.
    async fn read_events(&self, query: &EventQuery) -> Result<EventPage, StorageError>;

    /// Changes whenever new events may be readable: at once for this
    /// process's commits (and, on PostgreSQL, other replicas' via
    /// LISTEN/NOTIFY). A watcher also polls slowly, for what it misses.
    fn event_signal(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Removes events recorded before `before`, a bounded batch at a time;
    /// returns how many it removed.
    async fn prune_events(&self, before: std::time::SystemTime) -> Result<u64, StorageError>;

    /// Runs one bounded step of retention, in one short transaction:
    /// removes both records of each expired run and appends its EXPIRED
    /// event.
    async fn expire(&self, rule: &ExpireRule) -> Result<ExpireStep, StorageError>;

    /// Hands free space inside the store back to the file system, a
    /// bounded amount per call; returns the bytes handed back.
    async fn reclaim_space(&self) -> Result<u64, StorageError>;

    /// Proves the backend can durably write right now, with room to spare.
    async fn check_health(&self) -> Result<(), StorageError>;

    /// What only the backend knows, for the metrics; cheap, called at each
    /// scrape.
    fn stats(&self) -> StorageStats;
}
