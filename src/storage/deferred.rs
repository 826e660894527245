//! A store that is still opening. A server that starts during a database
//! outage or on a full disk binds its ports and answers probes at once
//! (live, not ready), and keeps trying to open its backend in the
//! background, so Kubernetes waits for the pod instead of restarting it in
//! a loop. Until the backend opens, every call fails UNAVAILABLE with the
//! latest reason; from then on each call goes straight to the backend.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::SystemTime,
};

use async_trait::async_trait;
use tokio::sync::watch;

use super::{
    EventHead, EventPage, EventQuery, ExpireRule, ExpireStep, OpenError, RunRecord, SnapshotPage,
    SnapshotQuery, Storage, StorageError, StorageSetting, StorageStats, StoredManifest, TaskPage,
    TaskQuery, WriteReceipt, backoff, open,
};

pub struct DeferredStorage {
    backend: OnceLock<Arc<dyn Storage>>,
    /// Why the latest attempt to open failed.
    last_error: Mutex<String>,
    /// The backend's event signal, forwarded once it is open, so watchers
    /// that subscribed before stay subscribed.
    events: watch::Sender<u64>,
}

impl DeferredStorage {
    /// Starts opening `setting` in the background, after `first_error`
    /// from the attempt made at start-up, until it opens.
    pub fn open_in_background(setting: StorageSetting, first_error: &OpenError) -> Arc<Self> {
        let store = Arc::new(Self {
            backend: OnceLock::new(),
            last_error: Mutex::new(first_error.to_string()),
            events: watch::Sender::new(0),
        });
        tokio::spawn(keep_opening(Arc::clone(&store), setting));
        store
    }

    fn backend(&self) -> Result<&Arc<dyn Storage>, StorageError> {
        self.backend.get().ok_or_else(|| {
            let reason = self
                .last_error
                .lock()
                .map(|reason| reason.clone())
                .unwrap_or_default();
            StorageError::Unavailable(format!("storage is not open yet: {reason}"))
        })
    }
}

async fn keep_opening(store: Arc<DeferredStorage>, setting: StorageSetting) {
    let mut failures = 1;
    let backend = loop {
        tokio::time::sleep(backoff::delay_after(failures)).await;
        match open(&setting).await {
            Ok(backend) => break backend,
            Err(err) => {
                // Logged at every attempt, at most one per 5 s: the reason
                // may change (a full disk, then a lock), and it is what an
                // operator of an unready pod looks for.
                tracing::warn!(error = %err, transient = err.is_transient(), "storage still not open");
                if let Ok(mut reason) = store.last_error.lock() {
                    *reason = err.to_string();
                }
                failures = failures.saturating_add(1);
            }
        }
    };
    tracing::info!(attempts = failures + 1, "storage open");
    let mut signal = backend.event_signal();
    if store.backend.set(backend).is_err() {
        return;
    }
    loop {
        let version = *signal.borrow_and_update();
        store.events.send_replace(version);
        // `send_replace` wakes watchers even when the version is the same:
        // reads that failed while the store was opening are retried.
        if signal.changed().await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl Storage for DeferredStorage {
    async fn write_snapshot(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        self.backend()?.write_snapshot(run).await
    }

    async fn write_manifest(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        self.backend()?.write_manifest(run).await
    }

    async fn read_manifest(
        &self,
        task_id: &str,
        run_id: &str,
    ) -> Result<StoredManifest, StorageError> {
        self.backend()?.read_manifest(task_id, run_id).await
    }

    async fn read_snapshot(
        &self,
        task_id: &str,
        query: SnapshotQuery,
    ) -> Result<SnapshotPage, StorageError> {
        self.backend()?.read_snapshot(task_id, query).await
    }

    async fn delete_run(&self, task_id: &str, run_id: &str) -> Result<bool, StorageError> {
        self.backend()?.delete_run(task_id, run_id).await
    }

    async fn list_tasks(&self, query: TaskQuery) -> Result<TaskPage, StorageError> {
        self.backend()?.list_tasks(query).await
    }

    async fn event_head(&self) -> Result<EventHead, StorageError> {
        self.backend()?.event_head().await
    }

    async fn read_events(&self, query: &EventQuery) -> Result<EventPage, StorageError> {
        self.backend()?.read_events(query).await
    }

    fn event_signal(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }

    async fn prune_events(&self, before: SystemTime) -> Result<u64, StorageError> {
        self.backend()?.prune_events(before).await
    }

    async fn expire(&self, rule: &ExpireRule) -> Result<ExpireStep, StorageError> {
        self.backend()?.expire(rule).await
    }

    async fn reclaim_space(&self) -> Result<u64, StorageError> {
        self.backend()?.reclaim_space().await
    }

    async fn check_health(&self) -> Result<(), StorageError> {
        self.backend()?.check_health().await
    }

    fn stats(&self) -> StorageStats {
        self.backend
            .get()
            .map(|backend| backend.stats())
            .unwrap_or_default()
    }
}
