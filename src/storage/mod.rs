//! The storage seam: what the service needs from a backend, and the typed
//! errors a backend reports. Backends know nothing of gRPC; the service knows
//! nothing of files.

mod durable_file;
pub mod fs;
mod group_commit;
pub mod history;
mod instance;
mod snapshot_file;
pub mod snapshot_log;

use std::{io, path::PathBuf, sync::Arc};

use async_trait::async_trait;

pub use fs::FsStorage;
pub use history::{RunCursor, RunInstant, SnapshotPage, StoredRun};

/// One completed run, validated and ready to be written by both writes.
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
}

/// What a successful write reports back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReceipt {
    /// Where the record lives, e.g. a path relative to the data dir.
    pub location: String,
    /// Bytes written to storage.
    pub bytes: u64,
}

/// A stored manifest as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub summary_json: String,
    /// When the manifest was last written.
    pub written_at: std::time::SystemTime,
}

/// Why a storage operation failed. Each variant says what a caller can do
/// about it; the service maps them to gRPC codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("not found")]
    NotFound,
    #[error("storage is full: {0}")]
    Full(#[source] io::Error),
    #[error("storage refuses writes (read-only or permission denied): {0}")]
    ReadOnly(#[source] io::Error),
    #[error("a path component is in the way at {path}: {source}")]
    PathConflict {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("storage I/O failed: {0}")]
    Io(#[source] io::Error),
    #[error("storage task failed: {0}")]
    TaskFailed(String),
}

impl StorageError {
    /// Classifies an I/O error by what it means for the caller.
    pub fn from_io(err: io::Error, path: &std::path::Path) -> Self {
        use io::ErrorKind as K;
        match err.kind() {
            K::NotFound => Self::NotFound,
            K::StorageFull | K::QuotaExceeded => Self::Full(err),
            K::ReadOnlyFilesystem | K::PermissionDenied => Self::ReadOnly(err),
            K::NotADirectory | K::IsADirectory | K::AlreadyExists => Self::PathConflict {
                path: path.to_path_buf(),
                source: err,
            },
            _ => Self::Io(err),
        }
    }
}

/// A durable store for snapshots and manifests.
///
/// Both writes must be durable when they return `Ok`: the record survives a
/// process crash and power loss. Failed writes leave nothing visible.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Records `run` in its task's history, replacing an entry with the same
    /// run id. Its cost must not grow with the history's length.
    async fn write_snapshot(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError>;

    /// Stores the run's summary as its manifest, replacing any previous one.
    async fn write_manifest(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError>;

    /// Reads a manifest back; `NotFound` when the run has none.
    async fn read_manifest(
        &self,
        task_id: &str,
        run_id: &str,
    ) -> Result<StoredManifest, StorageError>;

    /// Reads up to `limit` runs of a task's history that sort after `after`;
    /// `NotFound` when the task has no runs.
    async fn read_snapshot(
        &self,
        task_id: &str,
        after: Option<RunCursor>,
        limit: usize,
    ) -> Result<SnapshotPage, StorageError>;

    /// Where a task's snapshot is (or would be) stored.
    fn snapshot_location(&self, task_id: &str) -> String;

    /// Where a run's manifest is (or would be) stored.
    fn manifest_location(&self, task_id: &str, run_id: &str) -> String;

    /// Proves the backend can durably write right now.
    async fn check_health(&self) -> Result<(), StorageError>;
}
