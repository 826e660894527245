//! PostgreSQL, for deployments that outgrow one machine: any number of
//! stateless replicas sharing one database. The two writes of a call are
//! two statements on two pooled connections, issued concurrently; each is
//! its own transaction, committed with `synchronous_commit` on.
//!
//! - [`url`]: the database URL, its password never shown.
//! - [`pool`]: the pool, TLS, and the reconnect gate (backoff with jitter).
//! - [`migrate`]: the versioned migrations under an advisory lock.
//! - [`queries`]: the SQL.
//! - [`notify`]: LISTEN/NOTIFY, which wakes the watchers of every replica.
//! - [`errors`]: SQLSTATEs as storage error kinds.

mod errors;
mod migrate;
mod notify;
mod pool;
mod queries;
pub mod url;

use std::{path::PathBuf, sync::Arc, time::Duration};

use async_trait::async_trait;

use pool::{Connections, PoolBuildError};
pub use url::DatabaseUrl;

use super::{
    EventHead, EventPage, EventQuery, ExpireRule, ExpireStep, RunRecord, SnapshotPage,
    SnapshotQuery, Storage, StorageError, StorageStats, StoredManifest, Target, TaskPage,
    TaskQuery, WriteReceipt, location,
};

/// How the PostgreSQL backend is set up.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    pub url: DatabaseUrl,
    /// Connections per replica; size it so that replicas × this stays
    /// under the server's `max_connections`.
    pub pool_size: usize,
    /// Bound on connecting, and on waiting for a pooled connection.
    pub connect_timeout: Duration,
    /// Extra CA certificates (PEM) trusted for the server's TLS certificate.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum PostgresOpenError {
    #[error(transparent)]
    Pool(#[from] PoolBuildError),
    #[error("connecting to {url}: {source}")]
    Connect { url: String, source: StorageError },
    #[error("migrating the schema: {0}")]
    Migrate(StorageError),
    #[error(
        "the server has {setting} = {value}: a committed write could be lost, so WRITTEN would not mean durable; turn it on"
    )]
    NotDurable {
        setting: &'static str,
        value: String,
    },
}

impl PostgresOpenError {
    /// Whether opening may succeed later without anyone changing the
    /// configuration: the database is down, starting, or out of
    /// connections. A bad URL, a refused login or a server that is not
    /// durable stops the server at start-up.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { source, .. } | Self::Migrate(source) => matches!(
                source,
                StorageError::Unavailable(_)
                    | StorageError::Exhausted(_)
                    | StorageError::Aborted(_)
            ),
            Self::Pool(_) | Self::NotDurable { .. } => false,
        }
    }
}

pub struct PostgresStorage {
    connections: Arc<Connections>,
    notifier: notify::EventNotifier,
}

/// Most events one pruning step removes.
const PRUNE_BATCH: usize = 1000;

impl PostgresStorage {
    /// Connects, refuses a server that does not make commits durable,
    /// and migrates the schema.
    pub async fn open(settings: &PostgresSettings) -> Result<Self, PostgresOpenError> {
        let connections = Connections::build(settings)?;
        let connect_error = |source| PostgresOpenError::Connect {
            url: settings.url.redacted(),
            source,
        };
        let mut conn = connections.get().await.map_err(connect_error)?;
        for setting in ["fsync", "synchronous_commit"] {
            let value: String = conn
                .query_one(&format!("SHOW {setting}"), &[])
                .await
                .map_err(|e| connect_error(errors::classify(&e)))?
                .get(0);
            if value.eq_ignore_ascii_case("off") {
                return Err(PostgresOpenError::NotDurable { setting, value });
            }
        }
        let applied = migrate::migrate(&mut conn)
            .await
            .map_err(|e| PostgresOpenError::Migrate(errors::classify(&e)))?;
        tracing::info!(
            database = %settings.url,
            schema_version = super::migrations::latest(super::migrations::POSTGRES),
            ?applied,
            pool_size = settings.pool_size,
            "postgres storage open"
        );
        let notifier = notify::EventNotifier::start(settings, Arc::clone(&connections))?;
        Ok(Self {
            connections,
            notifier,
        })
    }

    /// Runs `write` on a pooled connection and reports its outcome to the
    /// reconnect gate.
    async fn with_connection<T, F>(&self, write: F) -> Result<T, StorageError>
    where
        F: AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, StorageError>,
    {
        let mut conn = self.connections.get().await?;
        let result = write(&mut conn).await;
        self.connections.observe(&result);
        result
    }

    async fn write(&self, target: Target, run: &RunRecord) -> Result<WriteReceipt, StorageError> {
        let bytes = self
            .with_connection(async |conn| match target {
                Target::Snapshot => queries::write_snapshot(conn, run).await,
                Target::Manifest => queries::write_manifest(conn, run).await,
            })
            .await?;
        if target == Target::Manifest {
            self.notifier.committed();
        }
        Ok(WriteReceipt {
            location: location(target, &run.task_id, &run.run_id),
            bytes,
        })
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    async fn write_snapshot(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        self.write(Target::Snapshot, &run).await
    }

    async fn write_manifest(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        self.write(Target::Manifest, &run).await
    }

    async fn read_manifest(
        &self,
        task_id: &str,
        run_id: &str,
    ) -> Result<StoredManifest, StorageError> {
        self.with_connection(async |conn| queries::manifest(conn, task_id, run_id).await)
            .await
    }

    async fn read_snapshot(
        &self,
        task_id: &str,
        query: SnapshotQuery,
    ) -> Result<SnapshotPage, StorageError> {
        self.with_connection(async |conn| queries::snapshot_page(conn, task_id, query).await)
            .await
    }

    async fn delete_run(&self, task_id: &str, run_id: &str) -> Result<bool, StorageError> {
        let found = self
            .with_connection(async |conn| queries::delete_run(conn, task_id, run_id).await)
            .await?;
        if found {
            self.notifier.committed();
        }
        Ok(found)
    }

    async fn event_head(&self) -> Result<EventHead, StorageError> {
        self.with_connection(async |conn| queries::event_head(conn).await)
            .await
    }

    async fn read_events(&self, query: &EventQuery) -> Result<EventPage, StorageError> {
        self.with_connection(async |conn| queries::events(conn, query).await)
            .await
    }

    fn event_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notifier.subscribe()
    }

    async fn prune_events(&self, before: std::time::SystemTime) -> Result<u64, StorageError> {
        let mut removed = 0;
        loop {
            let step = self
                .with_connection(async |conn| {
                    queries::prune_events(conn, before, PRUNE_BATCH).await
                })
                .await?;
            removed += step;
            if step < PRUNE_BATCH as u64 {
                return Ok(removed);
            }
        }
    }

    async fn expire(&self, rule: &ExpireRule) -> Result<ExpireStep, StorageError> {
        let step = self
            .with_connection(async |conn| match rule {
                ExpireRule::Before(cutoff) => queries::expire_before(conn, *cutoff).await,
                ExpireRule::KeepNewest { keep, from } => {
                    queries::expire_beyond(conn, *keep, from).await
                }
            })
            .await?;
        if step.expired > 0 {
            self.notifier.committed();
        }
        Ok(step)
    }

    /// Nothing to do here: PostgreSQL's autovacuum makes the space of
    /// deleted rows reusable by later writes, and handing it back to the
    /// file system (VACUUM FULL) locks the tables, an operator's decision.
    async fn reclaim_space(&self) -> Result<u64, StorageError> {
        Ok(0)
    }

    async fn list_tasks(&self, query: TaskQuery) -> Result<TaskPage, StorageError> {
        self.with_connection(async |conn| queries::task_page(conn, &query).await)
            .await
    }

    async fn check_health(&self) -> Result<(), StorageError> {
        self.with_connection(async |conn| queries::probe(conn).await)
            .await
    }

    fn stats(&self) -> StorageStats {
        StorageStats {
            pool: Some(self.connections.stats()),
            ..StorageStats::default()
        }
    }
}
