//! The real store of a backend (built through `storage::open`) with hooks
//! around its writes and health probe, for tests that must hold a call
//! mid-write, keep storage "not ready", or observe two writes in flight.

use std::{ops::Deref, sync::Arc};

use async_trait::async_trait;
use runstore::{
    proto::WriteTarget,
    storage::{
        EventHead, EventPage, EventQuery, ExpireRule, ExpireStep, RunRecord, SnapshotPage,
        SnapshotQuery, Storage, StorageError, StorageStats, StoredManifest, TaskPage, TaskQuery,
        WriteReceipt,
    },
};
use tokio::sync::{Semaphore, watch};

use crate::helpers::{StoreOptions, TestStore};

/// What a test runs around the real store's operations.
#[async_trait]
pub trait Hooks: Send + Sync + 'static {
    async fn before_write(&self, _target: WriteTarget) {}
    async fn after_write(&self, _target: WriteTarget) {}
    async fn before_health_check(&self) {}
}

/// A backend's store with `H` run around every write and health probe.
/// Derefs to the hooks so tests can steer them.
pub struct Hooked<H> {
    inner: Arc<dyn Storage>,
    hooks: H,
}

impl<H: Hooks> Hooked<H> {
    pub async fn with_hooks(store: &TestStore, hooks: H) -> Arc<Self> {
        Arc::new(Self {
            inner: store.open(&StoreOptions::default()).await,
            hooks,
        })
    }

    async fn write<F>(&self, target: WriteTarget, write: F) -> Result<WriteReceipt, StorageError>
    where
        F: Future<Output = Result<WriteReceipt, StorageError>>,
    {
        self.hooks.before_write(target).await;
        let result = write.await;
        self.hooks.after_write(target).await;
        result
    }
}

impl<H> Deref for Hooked<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.hooks
    }
}

#[async_trait]
impl<H: Hooks> Storage for Hooked<H> {
    async fn write_snapshot(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        self.write(WriteTarget::Snapshot, self.inner.write_snapshot(run))
            .await
    }
    async fn write_manifest(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        self.write(WriteTarget::Manifest, self.inner.write_manifest(run))
            .await
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
        query: SnapshotQuery,
    ) -> Result<SnapshotPage, StorageError> {
        self.inner.read_snapshot(task_id, query).await
    }
    async fn delete_run(&self, task_id: &str, run_id: &str) -> Result<bool, StorageError> {
        self.inner.delete_run(task_id, run_id).await
    }
    async fn list_tasks(&self, query: TaskQuery) -> Result<TaskPage, StorageError> {
        self.inner.list_tasks(query).await
    }
    async fn event_head(&self) -> Result<EventHead, StorageError> {
        self.inner.event_head().await
    }
    async fn read_events(&self, query: &EventQuery) -> Result<EventPage, StorageError> {
        self.inner.read_events(query).await
    }
    fn event_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.event_signal()
    }
    async fn prune_events(&self, before: std::time::SystemTime) -> Result<u64, StorageError> {
        self.inner.prune_events(before).await
    }
    async fn expire(&self, rule: &ExpireRule) -> Result<ExpireStep, StorageError> {
        self.inner.expire(rule).await
    }
    async fn reclaim_space(&self) -> Result<u64, StorageError> {
        self.inner.reclaim_space().await
    }
    async fn check_health(&self) -> Result<(), StorageError> {
        self.hooks.before_health_check().await;
        self.inner.check_health().await
    }
    fn stats(&self) -> StorageStats {
        self.inner.stats()
    }
}

/// Which writes a [`Held`] store holds until released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Nothing,
    Manifests,
    /// Snapshot and manifest writes.
    Everything,
}

/// Gates: the health probe waits until `ready`; held writes wait for
/// [`Held::release`].
pub struct Held {
    pub ready: watch::Sender<bool>,
    hold: Hold,
    /// Writes currently held.
    held: watch::Sender<usize>,
    release: Semaphore,
}

pub type HeldStorage = Hooked<Held>;

impl HeldStorage {
    pub async fn new(store: &TestStore, ready: bool, hold: Hold) -> Arc<Self> {
        Self::with_hooks(
            store,
            Held {
                ready: watch::Sender::new(ready),
                hold,
                held: watch::Sender::new(0),
                release: Semaphore::new(0),
            },
        )
        .await
    }
}

impl Held {
    /// Waits until `n` writes are held.
    pub async fn wait_held(&self, n: usize) {
        let mut held = self.held.subscribe();
        crate::helpers::within(
            &format!("{n} writes to be held"),
            held.wait_for(|held| *held >= n),
        )
        .await
        .expect("held counter");
    }

    /// Lets `n` held writes go on.
    pub fn release(&self, n: usize) {
        self.release.add_permits(n);
    }

    /// Lets every write go on, held now or later.
    pub fn open_gate(&self) {
        self.release.add_permits(1 << 30);
    }

    fn holds(&self, target: WriteTarget) -> bool {
        match self.hold {
            Hold::Nothing => false,
            Hold::Manifests => target == WriteTarget::Manifest,
            Hold::Everything => true,
        }
    }
}

#[async_trait]
impl Hooks for Held {
    async fn before_write(&self, target: WriteTarget) {
        if self.holds(target) {
            self.held.send_modify(|n| *n += 1);
            self.release.acquire().await.expect("gate").forget();
            self.held.send_modify(|n| *n -= 1);
        }
    }
    async fn before_health_check(&self) {
        self.ready
            .subscribe()
            .wait_for(|ready| *ready)
            .await
            .expect("ready gate");
    }
}
