//! A real filesystem store with two gates, for tests that need a call held
//! mid-write or storage that is not ready yet.

use std::sync::Arc;

use async_trait::async_trait;
use runstore::storage::{
    FsStorage, RunCursor, RunRecord, SnapshotPage, Storage, StorageError, StoredManifest,
    WriteReceipt,
};
use tokio::sync::{Semaphore, watch};

pub struct HeldStorage {
    inner: FsStorage,
    /// The health probe waits until this is true.
    pub ready: watch::Sender<bool>,
    hold_manifests: bool,
    /// Manifest writes currently held.
    held: watch::Sender<usize>,
    release: Semaphore,
}

impl HeldStorage {
    /// `hold_manifests`: every manifest write waits for [`Self::release`].
    pub fn new(data_dir: &std::path::Path, ready: bool, hold_manifests: bool) -> Arc<Self> {
        Arc::new(Self {
            inner: FsStorage::open(data_dir).expect("open storage"),
            ready: watch::Sender::new(ready),
            hold_manifests,
            held: watch::Sender::new(0),
            release: Semaphore::new(0),
        })
    }

    /// Waits until `n` manifest writes are held.
    pub async fn wait_held(&self, n: usize) {
        self.held
            .subscribe()
            .wait_for(|held| *held >= n)
            .await
            .expect("held counter");
    }

    /// Lets `n` held manifest writes go on.
    pub fn release(&self, n: usize) {
        self.release.add_permits(n);
    }
}

#[async_trait]
impl Storage for HeldStorage {
    async fn write_snapshot(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        self.inner.write_snapshot(run).await
    }
    async fn write_manifest(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        if self.hold_manifests {
            self.held.send_modify(|n| *n += 1);
            self.release.acquire().await.expect("gate").forget();
            self.held.send_modify(|n| *n -= 1);
        }
        self.inner.write_manifest(run).await
    }
    async fn read_manifest(
        &self,
        task_id: &str,
        run_id: &str,
    ) -> Result<StoredManifest, StorageError> {
        self.inner.read_manifest(task_id, run_id).await
    }
    async fn read_snapshot(
        &self,
        task_id: &str,
        after: Option<RunCursor>,
        limit: usize,
    ) -> Result<SnapshotPage, StorageError> {
        self.inner.read_snapshot(task_id, after, limit).await
    }
    fn snapshot_location(&self, task_id: &str) -> String {
        self.inner.snapshot_location(task_id)
    }
    fn manifest_location(&self, task_id: &str, run_id: &str) -> String {
        self.inner.manifest_location(task_id, run_id)
    }
    async fn check_health(&self) -> Result<(), StorageError> {
        self.ready
            .subscribe()
            .wait_for(|ready| *ready)
            .await
            .expect("ready gate");
        self.inner.check_health().await
    }
}
