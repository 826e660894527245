//! The embedded default backend: everything under one data dir.
//!
//! ```text
//! <data-dir>/runs/<task_id>/<run_id>/manifest.json   the summary, byte for byte
//! <data-dir>/tasks/<task_id>/runs.log                the task's snapshot log
//! <data-dir>/tasks/<task_id>/runs.lock               serialises writers of that log
//! <data-dir>/.instances/<tag>.lock                   held by each live instance
//! ```
//!
//! Manifests are replaced atomically (temp file, fsync, rename, fsync dir).
//! A snapshot write appends a checksummed frame to the task's log
//! (`snapshot_file`), batched with concurrent writes of the same task under
//! one fsync (`group_commit`), so its cost does not grow with the history.

use std::{
    fs::{self, File},
    io::{self, Read},
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;

use super::{
    RunCursor, RunRecord, SnapshotPage, Storage, StorageError, StoredManifest, WriteReceipt,
    durable_file::{create_private_dir_all, ensure_dirs, replace_file},
    group_commit::GroupCommit,
    history::page_of,
    instance::{Instance, PROBE_PREFIX},
    snapshot_file::{self, TASKS_DIR},
    snapshot_log::{self, LogRecord},
};

const RUNS_DIR: &str = "runs";
const MANIFEST_FILE: &str = "manifest.json";

/// Filesystem storage rooted at a data dir.
#[derive(Debug, Clone)]
pub struct FsStorage {
    instance: Arc<Instance>,
    snapshots: GroupCommit,
}

impl FsStorage {
    /// Opens (creating if missing) a data dir.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let root: PathBuf = root.into();
        create_private_dir_all(&root).map_err(|err| StorageError::from_io(err, &root))?;
        for dir in [RUNS_DIR, TASKS_DIR] {
            ensure_dirs(&root, &[dir]).map_err(|err| StorageError::from_io(err, Path::new(dir)))?;
        }
        let instance = Arc::new(Instance::new(&root));
        Ok(Self {
            snapshots: GroupCommit::new(Arc::clone(&instance)),
            instance,
        })
    }

    pub fn root(&self) -> &Path {
        self.instance.root()
    }

    /// Runs blocking file I/O off the async workers.
    async fn blocking<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Instance) -> Result<T, StorageError> + Send + 'static,
    {
        let instance = Arc::clone(&self.instance);
        tokio::task::spawn_blocking(move || work(&instance))
            .await
            .map_err(|err| StorageError::TaskFailed(err.to_string()))?
    }
}

/// For reads, a path component that is not a directory means there is
/// nothing stored there.
fn read_error(err: io::Error, location: &str) -> StorageError {
    match err.kind() {
        io::ErrorKind::NotADirectory => StorageError::NotFound,
        _ => StorageError::from_io(err, Path::new(location)),
    }
}

fn snapshot_location(task_id: &str) -> String {
    snapshot_file::location(task_id)
}

fn manifest_location(task_id: &str, run_id: &str) -> String {
    format!("{RUNS_DIR}/{task_id}/{run_id}/{MANIFEST_FILE}")
}

#[async_trait]
impl Storage for FsStorage {
    async fn write_snapshot(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        let location = snapshot_location(&run.task_id);
        match self.snapshots.append(run).await {
            Ok(bytes) => Ok(WriteReceipt { location, bytes }),
            Err(err) => Err(StorageError::from_io(err, Path::new(&location))),
        }
    }

    async fn write_manifest(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        self.blocking(move |instance| {
            let location = manifest_location(&run.task_id, &run.run_id);
            let io_err = |err| StorageError::from_io(err, Path::new(&location));
            let dir = ensure_dirs(instance.root(), &[RUNS_DIR, &run.task_id, &run.run_id])
                .map_err(io_err)?;
            // A retry after a crash comes back to the same directory: clear
            // what the crashed attempt left. Best effort; the write matters.
            if let Err(err) = instance.sweep(&dir) {
                tracing::debug!(error = %err, "could not sweep for crash leftovers");
            }
            let owner = instance.owner_tag().map_err(io_err)?;
            replace_file(&dir, MANIFEST_FILE, run.summary_json.as_bytes(), owner)
                .map_err(io_err)?;
            Ok(WriteReceipt {
                location,
                bytes: run.summary_json.len() as u64,
            })
        })
        .await
    }

    async fn read_manifest(
        &self,
        task_id: &str,
        run_id: &str,
    ) -> Result<StoredManifest, StorageError> {
        let location = manifest_location(task_id, run_id);
        self.blocking(move |instance| {
            let io_err = |err| read_error(err, &location);
            let mut file = File::open(instance.root().join(&location)).map_err(io_err)?;
            let written_at = file.metadata().and_then(|m| m.modified()).map_err(io_err)?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(io_err)?;
            let summary_json = String::from_utf8(bytes)
                .map_err(|_| StorageError::Corrupt(format!("{location} is not UTF-8")))?;
            Ok(StoredManifest {
                summary_json,
                written_at,
            })
        })
        .await
    }

    async fn read_snapshot(
        &self,
        task_id: &str,
        after: Option<RunCursor>,
        limit: usize,
    ) -> Result<SnapshotPage, StorageError> {
        let location = snapshot_location(task_id);
        self.blocking(move |instance| {
            // No lock: the log only ever grows by whole frames or is replaced
            // by rename, and a frame still being appended fails its checks.
            let bytes = fs::read(instance.root().join(&location))
                .map_err(|err| read_error(err, &location))?;
            let (records, _) = snapshot_log::decode_all(&bytes);
            let runs = records
                .into_iter()
                .map(LogRecord::into_stored_run)
                .collect();
            page_of(runs, after, limit).ok_or(StorageError::NotFound)
        })
        .await
    }

    fn snapshot_location(&self, task_id: &str) -> String {
        snapshot_location(task_id)
    }

    fn manifest_location(&self, task_id: &str, run_id: &str) -> String {
        manifest_location(task_id, run_id)
    }

    async fn check_health(&self) -> Result<(), StorageError> {
        self.blocking(|instance| {
            let root = instance.root();
            let owner = instance
                .owner_tag()
                .map_err(|err| StorageError::from_io(err, root))?;
            let name = format!("{PROBE_PREFIX}{owner}");
            let io_err = |err| StorageError::from_io(err, Path::new(&name));
            let stamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
                .to_string();
            replace_file(root, &name, stamp.as_bytes(), owner).map_err(io_err)?;
            fs::remove_file(root.join(&name)).map_err(io_err)
        })
        .await
    }
}
