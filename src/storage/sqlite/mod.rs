//! The embedded default backend: SQLite in `<data-dir>/runstore.db`, WAL
//! journal, `synchronous=FULL`, every write group-committed by one thread.
//!
//! - [`connection`]: files, permissions, pragmas, the lock-wait policy.
//! - [`migrate`]: applies the versioned schema migrations.
//! - [`committer`]: group commit, one savepoint per write.
//! - [`checkpointer`]: WAL checkpoints off the commit path.
//! - [`writes`] / [`reads`]: the SQL.
//! - [`errors`]: SQLite result codes as storage error kinds.
//! - [`backup`]: `runstore backup`, a consistent copy while serving.
//!
//! Several processes may share a data dir on a local file system: SQLite's
//! file locks serialise their commits. Network file systems are not
//! supported (their locking and fsync are not what SQLite needs).

pub mod backup;
mod checkpointer;
mod committer;
mod connection;
mod errors;
mod migrate;
mod reads;
mod writes;

use std::{path::PathBuf, sync::Arc};

use async_trait::async_trait;

use checkpointer::Checkpointer;
use committer::Committer;
pub use connection::{DATABASE_FILE, LockWait, OpenDatabaseError};
use reads::ReadPool;

use super::{
    EventHead, EventPage, EventQuery, ExpireRule, ExpireStep, RunRecord, SnapshotPage,
    SnapshotQuery, Storage, StorageError, StorageStats, StoredManifest, Target, TaskPage,
    TaskQuery, WriteReceipt,
};

/// Most incremental-vacuum steps per `reclaim_space` (each
/// `writes::RECLAIM_PAGES` pages): 8 MiB of 4 KiB pages per sweep.
const MAX_RECLAIM_STEPS: usize = 8;

/// How the SQLite backend is set up.
#[derive(Debug, Clone)]
pub struct SqliteSettings {
    pub data_dir: PathBuf,
    /// The summary size limit: readiness requires room for twice this plus
    /// 1 MiB, so that an accepted write never meets a full disk.
    pub max_summary_bytes: usize,
    pub lock_wait: LockWait,
}

pub struct SqliteStorage {
    committer: Committer,
    /// Bumped by the committer after commits that appended events.
    events: tokio::sync::watch::Receiver<u64>,
    _checkpointer: Checkpointer,
    reads: Arc<ReadPool>,
    data_dir: PathBuf,
    required_free_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SqliteOpenError {
    #[error(transparent)]
    Open(#[from] OpenDatabaseError),
    #[error("migrating the schema of {path}: {source}")]
    Migrate {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("starting the committer thread: {0}")]
    Thread(#[from] std::io::Error),
}

impl SqliteOpenError {
    /// Whether opening may succeed later without anyone changing the
    /// configuration: a full disk, an I/O error, another process holding the
    /// lock. A missing permission or a file where the data dir should be
    /// will not fix itself, and stops the server at start-up.
    pub fn is_transient(&self) -> bool {
        let sqlite_code = |err: &rusqlite::Error| {
            matches!(
                err.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::DiskFull
                        | rusqlite::ErrorCode::SystemIoFailure
                        | rusqlite::ErrorCode::DatabaseBusy
                        | rusqlite::ErrorCode::DatabaseLocked
                )
            )
        };
        let io = |err: &std::io::Error| {
            matches!(
                err.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) || err.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error())
        };
        match self {
            Self::Open(
                OpenDatabaseError::CreateDir { source, .. }
                | OpenDatabaseError::CreateFile { source, .. },
            ) => io(source),
            Self::Open(OpenDatabaseError::Sqlite { source, .. }) | Self::Migrate { source, .. } => {
                sqlite_code(source)
            }
            Self::Open(OpenDatabaseError::NotADirectory { .. }) | Self::Thread(_) => false,
        }
    }
}

impl SqliteStorage {
    /// Creates the data dir and database if missing, migrates the schema and
    /// starts the committer.
    pub fn open(settings: &SqliteSettings) -> Result<Self, SqliteOpenError> {
        let path = connection::prepare_data_dir(&settings.data_dir)?;
        let mut conn = connection::open_connection(&path, settings.lock_wait)?;
        let applied = migrate::migrate(&mut conn).map_err(|source| SqliteOpenError::Migrate {
            path: path.clone(),
            source,
        })?;
        tracing::info!(
            database = %path.display(),
            schema_version = super::migrations::latest(super::migrations::SQLITE),
            ?applied,
            "sqlite storage open"
        );
        drop(conn);
        let reads = ReadPool::open(path.clone(), settings.lock_wait)?;
        let writer = connection::open_write_connection(&path, settings.lock_wait)?;
        let checkpointer = Checkpointer::start(path.clone(), settings.lock_wait)?;
        let (events_tx, events) = tokio::sync::watch::channel(0);
        let committer = Committer::start(path, writer, settings.lock_wait, events_tx)?;
        let required_free_bytes = (settings.max_summary_bytes as u64)
            .saturating_mul(2)
            .saturating_add(1 << 20);
        Ok(Self {
            committer,
            events,
            _checkpointer: checkpointer,
            reads,
            data_dir: settings.data_dir.clone(),
            required_free_bytes,
        })
    }

    /// Room for the largest write: free space on the file system plus free
    /// pages inside the database.
    async fn check_room(&self) -> Result<(), StorageError> {
        let free_pages = self.reads.run(reads::free_pages_bytes).await?;
        let dir = self.data_dir.clone();
        let free_disk = tokio::task::spawn_blocking(move || connection::free_space(&dir))
            .await
            .map_err(|e| StorageError::Internal(e.to_string()))?
            .map_err(|e| StorageError::Unavailable(format!("statvfs: {e}")))?;
        let room = free_disk.saturating_add(free_pages);
        if room < self.required_free_bytes {
            return Err(StorageError::Exhausted(format!(
                "{room} bytes free (file system and database), {} required",
                self.required_free_bytes
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn write_snapshot(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        self.committer.write(Target::Snapshot, run).await
    }

    async fn write_manifest(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        self.committer.write(Target::Manifest, run).await
    }

    async fn read_manifest(
        &self,
        task_id: &str,
        run_id: &str,
    ) -> Result<StoredManifest, StorageError> {
        let (task_id, run_id) = (task_id.to_owned(), run_id.to_owned());
        self.reads
            .run(move |conn| reads::manifest(conn, &task_id, &run_id))
            .await
    }

    async fn read_snapshot(
        &self,
        task_id: &str,
        query: SnapshotQuery,
    ) -> Result<SnapshotPage, StorageError> {
        let task_id = task_id.to_owned();
        self.reads
            .run(move |conn| reads::snapshot_page(conn, &task_id, query))
            .await
    }

    async fn delete_run(&self, task_id: &str, run_id: &str) -> Result<bool, StorageError> {
        self.committer.delete(task_id, run_id).await
    }

    async fn expire(&self, rule: &ExpireRule) -> Result<ExpireStep, StorageError> {
        self.committer.expire(rule.clone()).await
    }

    /// Up to [`MAX_RECLAIM_STEPS`] steps of incremental vacuum, each its
    /// own short commit among the writes, while free pages are left.
    async fn reclaim_space(&self) -> Result<u64, StorageError> {
        let mut pages = 0;
        for _ in 0..MAX_RECLAIM_STEPS {
            if self.reads.run(reads::free_pages_bytes).await? == 0 {
                break;
            }
            let freed = self.committer.reclaim().await?;
            pages += freed;
            if freed < writes::RECLAIM_PAGES as u64 {
                break;
            }
        }
        let page_size = self.reads.run(reads::page_size).await?;
        Ok(pages * page_size)
    }

    async fn list_tasks(&self, query: TaskQuery) -> Result<TaskPage, StorageError> {
        self.reads
            .run(move |conn| reads::task_page(conn, &query))
            .await
    }

    async fn event_head(&self) -> Result<EventHead, StorageError> {
        let after = self.reads.run(reads::event_head).await?;
        // Cursors are drawn in commit order: nothing committed lies after.
        Ok(EventHead {
            after,
            committed: Vec::new(),
        })
    }

    async fn read_events(&self, query: &EventQuery) -> Result<EventPage, StorageError> {
        let query = query.clone();
        self.reads
            .run(move |conn| reads::events(conn, &query))
            .await
    }

    fn event_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.events.clone()
    }

    async fn prune_events(&self, before: std::time::SystemTime) -> Result<u64, StorageError> {
        let before: chrono::DateTime<chrono::Utc> = before.into();
        let before = before.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut removed = 0;
        // Bounded steps, each its own short commit among the writes.
        loop {
            let step = self.committer.prune(before.clone()).await?;
            removed += step;
            if step < writes::PRUNE_BATCH as u64 {
                return Ok(removed);
            }
        }
    }

    async fn check_health(&self) -> Result<(), StorageError> {
        self.committer.probe().await?;
        self.check_room().await
    }

    fn stats(&self) -> StorageStats {
        let wal = self
            .data_dir
            .join(format!("{}-wal", connection::DATABASE_FILE));
        StorageStats {
            group_commit: Some(self.committer.stats().histograms.clone()),
            // No WAL file yet (or a race with its removal) reads as empty.
            wal_bytes: Some(std::fs::metadata(wal).map_or(0, |m| m.len())),
            pool: None,
        }
    }
}
