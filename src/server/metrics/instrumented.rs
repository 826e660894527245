//! Per-write metrics around any `Storage`: the backends stay free of them,
//! and both measure alike. Everything else is passed through.

use std::{sync::Arc, time::Instant};

use async_trait::async_trait;

use super::Metrics;
use crate::{
    api::error::storage_failure,
    storage::{
        EventHead, EventPage, EventQuery, ExpireRule, ExpireStep, RunRecord, SnapshotPage,
        SnapshotQuery, Storage, StorageError, StorageStats, StoredManifest, TaskPage, TaskQuery,
        WriteReceipt,
    },
};

pub struct InstrumentedStorage {
    inner: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
}

impl InstrumentedStorage {
    pub fn new(inner: Arc<dyn Storage>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    fn record<T>(&self, target: &'static str, started: Instant, result: &Result<T, StorageError>) {
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            Err(err) => storage_failure(err).code,
        };
        self.metrics.write_answered(target, code, started.elapsed());
    }
}

#[async_trait]
impl Storage for InstrumentedStorage {
    async fn write_snapshot(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        let started = Instant::now();
        let result = self.inner.write_snapshot(run).await;
        self.record("snapshot", started, &result);
        result
    }

    async fn write_manifest(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        let started = Instant::now();
        let result = self.inner.write_manifest(run).await;
        self.record("manifest", started, &result);
        result
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
        self.inner.check_health().await
    }

    fn stats(&self) -> StorageStats {
        self.inner.stats()
    }
}
