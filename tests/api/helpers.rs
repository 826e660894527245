//! Test harness: the real server on 127.0.0.1:0 on a fresh store of one
//! backend, a real tonic channel, typed helpers, and a look at what the
//! backend stored (for SQLite, the test's own connection to runstore.db).
//!
//! Every contract test is written once, as `async fn name(backend: Backend)`,
//! and instantiated per backend by `contract_test!` (see main.rs).

use std::{
    ffi::OsString,
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use runstore::{
    api::DEFAULT_MAX_SUMMARY_BYTES,
    config::LogFormat,
    proto::{
        CompleteRunRequest, CompleteRunResponse, GetManifestRequest, GetManifestResponse,
        GetTaskSnapshotRequest, GetTaskSnapshotResponse, Outcome,
        persistence_service_client::PersistenceServiceClient,
    },
    server::{self, ServerSettings},
    storage::{
        self, Storage, StorageSetting,
        sqlite::{DATABASE_FILE, LockWait, SqliteSettings},
    },
};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Longest a whole black-box test may run before it fails.
pub const TEST_LIMIT: Duration = Duration::from_secs(240);
/// Longest any single wait inside a test may take.
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Runs a test body, failing it (instead of hanging) past [`TEST_LIMIT`].
pub async fn within_test_limit(test: &str, body: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_LIMIT, body).await.is_err() {
        panic!("test {test} ran past its limit of {TEST_LIMIT:?}");
    }
}

/// Awaits `wait`, failing with a message naming `what` past [`WAIT_LIMIT`].
pub async fn within<T>(what: &str, wait: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT_LIMIT, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT_LIMIT:?} waiting for {what}"))
}

/// Name the persistence service reports readiness under.
pub const SERVICE_NAME: &str = "orchestrator.persistence.v1.PersistenceService";
/// Name of the server's liveness status.
pub const LIVENESS: &str = "";

/// Logs are printed only when TEST_LOG is set.
fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        // Never shut down: a test process has no spans worth waiting for.
        let _ = runstore::telemetry::init(LogFormat::Text, std::io::stdout);
    }
}

/// Prints why a test did not run its checks, so a skip is never silent.
pub fn skipped(test: &str, reason: &str) {
    println!("SKIPPED: {test}: {reason}");
}

// ---------------------------------------------------------------------------
// Backends and their stores
// ---------------------------------------------------------------------------

/// A storage backend the contract suite runs against. Adding one means a
/// variant here, its arms in [`TestStore`] and [`Db`], and a line in
/// `contract_test!`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Whether everything the backend stores lives in files under the data
    /// dir (so file modes and a full file system under it can be tested).
    pub fn stores_in_data_dir(self) -> bool {
        match self {
            Backend::Sqlite => true,
            Backend::Postgres => false,
        }
    }
}

/// Settings the store and the server must agree on.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    pub max_summary_bytes: usize,
    pub lock_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_summary_bytes: DEFAULT_MAX_SUMMARY_BYTES,
            lock_timeout: LockWait::default().timeout,
        }
    }
}

/// A store of one backend, private to one test. Clones share it.
#[derive(Clone)]
pub struct TestStore {
    pub backend: Backend,
    /// Owns every file the test keeps; removed when the last clone goes.
    root: Arc<TempDir>,
    data_dir: PathBuf,
    /// The test's own database, for PostgreSQL.
    postgres: Option<crate::postgres_server::TestDatabase>,
}

impl TestStore {
    /// A fresh, empty store. Its data dir does not exist yet: the backend
    /// creates it.
    pub fn fresh(backend: Backend) -> Self {
        let root = Arc::new(tempfile::tempdir().expect("temp dir"));
        let data_dir = root.path().join("data");
        Self::at(backend, root, data_dir)
    }

    /// A store whose data dir is `data_dir` (e.g. on a test's own mount).
    pub fn at(backend: Backend, root: Arc<TempDir>, data_dir: PathBuf) -> Self {
        let postgres =
            (backend == Backend::Postgres).then(crate::postgres_server::fresh_database_blocking);
        Self {
            backend,
            root,
            data_dir,
            postgres,
        }
    }

    /// A PostgreSQL store on `database`, e.g. on a cluster of a test's own.
    pub fn on_database(database: crate::postgres_server::TestDatabase) -> Self {
        let root = Arc::new(tempfile::tempdir().expect("temp dir"));
        let data_dir = root.path().join("data");
        Self {
            backend: Backend::Postgres,
            root,
            data_dir,
            postgres: Some(database),
        }
    }

    /// The temp dir that holds the data dir; tests may keep files here.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn postgres(&self) -> &crate::postgres_server::TestDatabase {
        self.postgres
            .as_ref()
            .expect("a PostgreSQL store has a database")
    }

    pub fn setting(&self, options: &StoreOptions) -> StorageSetting {
        match self.backend {
            Backend::Postgres => StorageSetting::Postgres(self.postgres().settings()),
            Backend::Sqlite => StorageSetting::Sqlite(SqliteSettings {
                data_dir: self.data_dir.clone(),
                max_summary_bytes: options.max_summary_bytes,
                lock_wait: LockWait {
                    timeout: options.lock_timeout,
                },
            }),
        }
    }

    /// Opens the backend through the factory, as the binary does.
    pub async fn open(&self, options: &StoreOptions) -> Arc<dyn Storage> {
        within("the store to open", storage::open(&self.setting(options)))
            .await
            .expect("open storage")
    }

    /// The flags that point `runstore serve` at this store.
    pub fn server_args(&self) -> Vec<OsString> {
        match self.backend {
            Backend::Sqlite => vec!["--data-dir".into(), self.data_dir.clone().into()],
            Backend::Postgres => self.postgres().server_args(),
        }
    }

    /// The backend's files, for checks of their modes; they exist once a
    /// server has opened the store.
    pub fn files(&self) -> Vec<PathBuf> {
        match self.backend {
            Backend::Postgres => Vec::new(),
            Backend::Sqlite => ["", "-wal", "-shm"]
                .iter()
                .map(|suffix| self.data_dir.join(format!("{DATABASE_FILE}{suffix}")))
                .collect(),
        }
    }

    /// A connection of the test's own to the store (it must exist).
    pub fn db(&self) -> Db {
        match self.backend {
            Backend::Postgres => Db::Postgres(self.postgres().db()),
            Backend::Sqlite => {
                let path = self.data_dir.join(DATABASE_FILE);
                assert!(path.is_file(), "{} does not exist", path.display());
                let conn = rusqlite::Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
                )
                .expect("open the test's connection to runstore.db");
                conn.busy_timeout(Duration::from_secs(10))
                    .expect("busy timeout");
                Db::Sqlite(conn)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Looking into the store
// ---------------------------------------------------------------------------

/// The tables of the schema; their names are part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Tasks,
    SnapshotEntries,
    Manifests,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Tasks => "tasks",
            Table::SnapshotEntries => "snapshot_entries",
            Table::Manifests => "manifests",
        }
    }
}

/// Row counts of every table, without the readiness probe's row (the task
/// with the empty id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowCounts {
    pub tasks: i64,
    pub snapshot_entries: i64,
    pub manifests: i64,
}

/// What [`Db::runs_at_once`] reads: (task id, run id) pairs.
#[derive(Debug, Default)]
pub struct RunsAtOnce {
    pub entries: Vec<(String, String)>,
    pub manifests: Vec<(String, String)>,
    pub expired: Vec<(String, String)>,
}

/// A stored row of `snapshot_entries` or `manifests`, as raw as the backend
/// keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    pub timestamp: String,
    /// The summary's bytes as stored (read as a blob, not re-encoded).
    pub summary: Vec<u8>,
    /// `manifests.sha256`; empty for snapshot entries.
    pub sha256: String,
}

/// Which statements of a table an injected fault refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    Insert,
    Update,
    Delete,
}

impl On {
    pub fn sql(self) -> &'static str {
        match self {
            On::Insert => "INSERT",
            On::Update => "UPDATE",
            On::Delete => "DELETE",
        }
    }

    /// The row a trigger on this statement sees.
    pub fn row(self) -> &'static str {
        match self {
            On::Insert | On::Update => "NEW",
            On::Delete => "OLD",
        }
    }
}

/// The test's own connection to the store.
pub enum Db {
    Sqlite(rusqlite::Connection),
    Postgres(crate::postgres_server::PgDb),
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl Db {
    fn sqlite(&self) -> &rusqlite::Connection {
        match self {
            Db::Sqlite(conn) => conn,
            Db::Postgres(_) => panic!("this look into the store is SQLite's own"),
        }
    }

    pub fn row_counts(&self) -> RowCounts {
        if let Db::Postgres(pg) = self {
            return pg.row_counts();
        }
        let count = |table: Table| -> i64 {
            self.sqlite()
                .query_row(
                    &format!("SELECT COUNT(*) FROM {} WHERE task_id <> ''", table.name()),
                    [],
                    |row| row.get(0),
                )
                .unwrap_or_else(|err| panic!("counting {}: {err}", table.name()))
        };
        RowCounts {
            tasks: count(Table::Tasks),
            snapshot_entries: count(Table::SnapshotEntries),
            manifests: count(Table::Manifests),
        }
    }

    /// Rows of `table` that belong to `task_id`.
    pub fn count(&self, table: Table, task_id: &str) -> i64 {
        if let Db::Postgres(pg) = self {
            return pg.count(table, task_id);
        }
        self.sqlite()
            .query_row(
                &format!("SELECT COUNT(*) FROM {} WHERE task_id = ?1", table.name()),
                [task_id],
                |row| row.get(0),
            )
            .unwrap_or_else(|err| panic!("counting {}: {err}", table.name()))
    }

    /// The distinct task ids of `table`, sorted.
    pub fn task_ids(&self, table: Table) -> Vec<String> {
        if let Db::Postgres(pg) = self {
            return pg.task_ids(table);
        }
        let conn = self.sqlite();
        let mut statement = conn
            .prepare(&format!(
                "SELECT DISTINCT task_id FROM {} WHERE task_id <> '' ORDER BY task_id",
                table.name()
            ))
            .expect("prepare");
        statement
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// One run's row in `table` (`snapshot_entries` or `manifests`).
    pub fn row(&self, table: Table, task_id: &str, run_id: &str) -> Option<StoredRow> {
        if let Db::Postgres(pg) = self {
            return pg.row(table, task_id, run_id);
        }
        let sha256 = match table {
            Table::Manifests => "sha256",
            _ => "''",
        };
        let sql = format!(
            "SELECT timestamp, CAST(summary_json AS BLOB), {sha256} FROM {}
             WHERE task_id = ?1 AND run_id = ?2",
            table.name()
        );
        let result = self.sqlite().query_row(&sql, [task_id, run_id], |row| {
            Ok(StoredRow {
                timestamp: row.get(0)?,
                summary: row.get(1)?,
                sha256: row.get(2)?,
            })
        });
        match result {
            Ok(row) => Some(row),
            Err(rusqlite::Error::QueryReturnedNoRows) => None,
            Err(err) => panic!("reading {}: {err}", table.name()),
        }
    }

    /// Every row of `table` (`snapshot_entries` or `manifests`) as
    /// (task id, run id, row).
    pub fn all_rows(&self, table: Table) -> Vec<(String, String, StoredRow)> {
        if let Db::Postgres(pg) = self {
            return pg.all_rows(table);
        }
        let sha256 = match table {
            Table::Manifests => "sha256",
            _ => "''",
        };
        let conn = self.sqlite();
        let mut statement = conn
            .prepare(&format!(
                "SELECT task_id, run_id, timestamp, CAST(summary_json AS BLOB), {sha256}
                 FROM {} WHERE task_id <> ''",
                table.name()
            ))
            .expect("prepare");
        statement
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    StoredRow {
                        timestamp: row.get(2)?,
                        summary: row.get(3)?,
                        sha256: row.get(4)?,
                    },
                ))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .unwrap_or_else(|err| panic!("reading {}: {err}", table.name()))
    }

    /// The runs of every snapshot entry, every manifest and every EXPIRED
    /// event, read in one statement, so from one snapshot: a transaction
    /// that commits meanwhile (a killed server's last one, which PostgreSQL
    /// may still finish) is in all three or in none.
    pub fn runs_at_once(&self) -> RunsAtOnce {
        const SQL: &str =
            "SELECT 'entry', task_id, run_id FROM snapshot_entries WHERE task_id <> ''
             UNION ALL SELECT 'manifest', task_id, run_id FROM manifests WHERE task_id <> ''
             UNION ALL SELECT 'expired', task_id, run_id FROM run_events WHERE kind = 'EXPIRED'";
        let rows: Vec<(String, String, String)> = match self {
            Db::Postgres(pg) => pg.rows3(SQL),
            Db::Sqlite(conn) => conn
                .prepare(SQL)
                .expect("prepare")
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows"),
        };
        let mut runs = RunsAtOnce::default();
        for (what, task, run) in rows {
            match what.as_str() {
                "entry" => runs.entries.push((task, run)),
                "manifest" => runs.manifests.push((task, run)),
                _ => runs.expired.push((task, run)),
            }
        }
        runs
    }

    /// (task id, run id) of every event of `kind` ("COMPLETED", "DELETED",
    /// "EXPIRED") in `run_events`, in cursor order.
    pub fn events(&self, kind: &str) -> Vec<(String, String)> {
        if let Db::Postgres(pg) = self {
            return pg.events(kind);
        }
        let conn = self.sqlite();
        let mut statement = conn
            .prepare("SELECT task_id, run_id FROM run_events WHERE kind = ?1 ORDER BY cursor")
            .expect("prepare");
        statement
            .query_map([kind], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("reading run_events")
    }

    /// Deletes one run's row from `table` behind the server's back (for
    /// negative controls of checks that must notice a lost row).
    pub fn delete_row(&self, table: Table, task_id: &str, run_id: &str) {
        if let Db::Postgres(pg) = self {
            return pg.delete_row(table, task_id, run_id);
        }
        let deleted = self
            .sqlite()
            .execute(
                &format!(
                    "DELETE FROM {} WHERE task_id = ?1 AND run_id = ?2",
                    table.name()
                ),
                [task_id, run_id],
            )
            .unwrap_or_else(|err| panic!("deleting from {}: {err}", table.name()));
        assert_eq!(deleted, 1, "{task_id}/{run_id} in {}", table.name());
    }

    /// The store's own consistency check: "ok" when it is consistent.
    pub fn integrity_check(&self) -> String {
        if let Db::Postgres(pg) = self {
            return pg.integrity_check();
        }
        let conn = self.sqlite();
        let mut statement = conn.prepare("PRAGMA integrity_check").expect("prepare");
        let lines: Vec<String> = statement
            .query_map([], |row| row.get(0))
            .expect("integrity_check")
            .collect::<Result<_, _>>()
            .expect("rows");
        lines.join("\n")
    }

    /// Makes the store refuse `on` statements on `table` for `task_id`, as a
    /// constraint or trigger would: a trigger that raises "injected".
    pub fn inject_fault(&self, table: Table, task_id: &str, on: &[On]) -> Fault {
        if let Db::Postgres(pg) = self {
            return Fault {
                names: pg.inject_fault(table, task_id, on),
            };
        }
        let mut names = Vec::new();
        for op in on {
            let name = format!(
                "injected_fault_{}_{}_{}",
                table.name(),
                op.sql().to_lowercase(),
                names.len()
            );
            self.sqlite()
                .execute_batch(&format!(
                    "CREATE TRIGGER {name} BEFORE {} ON {} WHEN {}.task_id = {}
                     BEGIN SELECT RAISE(ABORT, 'injected'); END",
                    op.sql(),
                    table.name(),
                    op.row(),
                    quote(task_id)
                ))
                .unwrap_or_else(|err| panic!("creating trigger {name}: {err}"));
            names.push(name);
        }
        Fault { names }
    }

    /// Removes an injected fault.
    pub fn remove_fault(&self, fault: Fault) {
        if let Db::Postgres(pg) = self {
            return pg.remove_fault(fault.names);
        }
        for name in fault.names {
            self.sqlite()
                .execute_batch(&format!("DROP TRIGGER {name}"))
                .unwrap_or_else(|err| panic!("dropping trigger {name}: {err}"));
        }
    }

    /// Takes the store's write lock and holds it until the guard is dropped
    /// (or released): every write of every process waits for it.
    pub fn hold_write_lock(self) -> WriteLock {
        self.sqlite()
            .execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        WriteLock { db: Some(self) }
    }
}

/// Triggers a test created; remove them with [`Db::remove_fault`].
#[must_use = "remove the fault with Db::remove_fault"]
pub struct Fault {
    names: Vec<String>,
}

/// The store's write lock, held by the test.
pub struct WriteLock {
    db: Option<Db>,
}

impl WriteLock {
    /// Ends the transaction that holds the lock.
    pub fn release(mut self) {
        if let Some(db) = self.db.take() {
            db.sqlite()
                .execute_batch("ROLLBACK")
                .expect("release the write lock");
        }
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        // Closing the connection ends its transaction too.
        if let Some(db) = self.db.take() {
            let _ = db.sqlite().execute_batch("ROLLBACK");
        }
    }
}

// ---------------------------------------------------------------------------
// The server in-process
// ---------------------------------------------------------------------------

pub struct TestApp {
    pub port: u16,
    pub client: PersistenceServiceClient<Channel>,
    pub channel: Channel,
    pub store: TestStore,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), server::ServeError>>>,
}

/// Spawns a server on a fresh store and waits until it is SERVING.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_on(TestStore::fresh(backend)).await
}

/// Spawns a server on an existing store (e.g. to restart on it).
pub async fn spawn_app_on(store: TestStore) -> TestApp {
    let storage = store.open(&StoreOptions::default()).await;
    let app = spawn_app_with(store, storage, fast_settings()).await;
    app.wait_for_health(ServingStatus::Serving).await;
    app
}

/// Settings with a quick health probe, so health changes show promptly.
pub fn fast_settings() -> ServerSettings {
    ServerSettings {
        health_interval: Duration::from_millis(50),
        ..ServerSettings::default()
    }
}

/// Store options and server settings that agree on a summary limit.
pub fn with_summary_limit(max_summary_bytes: usize) -> (StoreOptions, ServerSettings) {
    let mut settings = fast_settings();
    settings.service.max_summary_bytes = max_summary_bytes;
    let options = StoreOptions {
        max_summary_bytes,
        ..StoreOptions::default()
    };
    (options, settings)
}

/// Spawns a server on any storage without waiting for it to be SERVING.
pub async fn spawn_app_with(
    store: TestStore,
    storage: Arc<dyn Storage>,
    settings: ServerSettings,
) -> TestApp {
    init_logs();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let tls = settings.tls.is_some();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, storage, settings, async move {
        let _ = rx.await;
    }));
    // A TLS server gets a lazy plaintext channel that tests do not use;
    // they build their own TLS channels.
    let endpoint = Channel::from_shared(format!("http://{addr}")).expect("uri");
    let channel = if tls {
        endpoint.connect_lazy()
    } else {
        endpoint.connect().await.expect("connect")
    };
    TestApp {
        port: addr.port(),
        client: PersistenceServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
        channel,
        store,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn client(&self) -> PersistenceServiceClient<Channel> {
        self.client.clone()
    }

    /// A client on a connection of its own.
    pub async fn connect_client(&self) -> PersistenceServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{}", self.port))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        PersistenceServiceClient::new(channel).max_decoding_message_size(64 << 20)
    }

    pub fn db(&self) -> Db {
        self.store.db()
    }

    pub async fn complete_run(
        &self,
        task_id: &str,
        run_id: &str,
        timestamp: &str,
    ) -> CompleteRunResponse {
        self.try_complete_run(complete_request(task_id, run_id, timestamp))
            .await
            .expect("CompleteRun")
    }

    pub async fn try_complete_run(
        &self,
        request: CompleteRunRequest,
    ) -> Result<CompleteRunResponse, tonic::Status> {
        self.client()
            .complete_run(request)
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn get_manifest(
        &self,
        task_id: &str,
        run_id: &str,
    ) -> Result<GetManifestResponse, tonic::Status> {
        self.client()
            .get_manifest(GetManifestRequest {
                task_id: task_id.into(),
                run_id: run_id.into(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn get_snapshot(
        &self,
        task_id: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<GetTaskSnapshotResponse, tonic::Status> {
        self.client()
            .get_task_snapshot(GetTaskSnapshotRequest {
                task_id: task_id.into(),
                page_size,
                page_token: page_token.into(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Every run of a task, following page tokens to the end.
    pub async fn all_runs(&self, task_id: &str) -> Vec<runstore::proto::RunEntry> {
        all_runs(&mut self.client(), task_id, 1000)
            .await
            .expect("GetTaskSnapshot")
    }

    /// The run ids of a task, in snapshot order.
    /// The task's entry in ListTasks (a prefix page of up to 1,000).
    pub async fn listed_task(&self, task_id: &str) -> Option<runstore::proto::TaskSummary> {
        self.client()
            .list_tasks(runstore::proto::ListTasksRequest {
                prefix: task_id.into(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("ListTasks")
            .into_inner()
            .tasks
            .into_iter()
            .find(|t| t.task_id == task_id)
    }

    pub async fn run_ids(&self, task_id: &str) -> Vec<String> {
        self.all_runs(task_id)
            .await
            .into_iter()
            .map(|r| r.run_id)
            .collect()
    }

    pub async fn health(&self, service: &str) -> ServingStatus {
        health(&self.channel, service).await
    }

    /// Waits (via the Watch stream, no polling) until both liveness and
    /// readiness report `wanted`.
    pub async fn wait_for_health(&self, wanted: ServingStatus) {
        for service in [LIVENESS, SERVICE_NAME] {
            wait_for_service(&self.channel, service, wanted).await;
        }
    }

    /// Starts graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down gracefully and waits for the server to return.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        if let Some(server) = self.server.take() {
            within("the server to stop", server)
                .await
                .expect("server task")
                .expect("server result");
        }
    }
}

/// Every run of a task through `client`, following page tokens (bounded).
pub async fn all_runs(
    client: &mut PersistenceServiceClient<Channel>,
    task_id: &str,
    page_size: u32,
) -> Result<Vec<runstore::proto::RunEntry>, tonic::Status> {
    let mut runs = Vec::new();
    let mut token = String::new();
    for _ in 0..100_000 {
        let page = client
            .get_task_snapshot(GetTaskSnapshotRequest {
                task_id: task_id.into(),
                page_size,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        runs.extend(page.runs);
        if page.next_page_token.is_empty() {
            return Ok(runs);
        }
        token = page.next_page_token;
    }
    panic!("GetTaskSnapshot {task_id}: too many pages");
}

/// One health check of `service` (LIVENESS or SERVICE_NAME).
pub async fn health(channel: &Channel, service: &str) -> ServingStatus {
    let reply = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner();
    reply.status()
}

/// Waits (via the Watch stream) until `service` reports `wanted`.
pub async fn wait_for_service(channel: &Channel, service: &str, wanted: ServingStatus) {
    let mut updates = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let wait = async {
        while let Some(update) = updates.next().await {
            if update.expect("health update").status() == wanted {
                return;
            }
        }
        panic!("health stream ended before {wanted:?}");
    };
    within(&format!("health of {service:?} to become {wanted:?}"), wait).await;
}

/// Sends runs `run-000`.. of `task_id` all at once, one client task each,
/// spread over `clients`, with the timestamp `ts(timestamp_of(i))`; asserts
/// every one was fully written.
pub async fn write_all_at_once(
    clients: &[PersistenceServiceClient<Channel>],
    task_id: &str,
    count: u32,
    timestamp_of: impl Fn(u32) -> u32,
) {
    let calls: Vec<_> = (0..count)
        .map(|i| {
            let mut client = clients[i as usize % clients.len()].clone();
            let request = complete_request(task_id, &format!("run-{i:03}"), &ts(timestamp_of(i)));
            tokio::spawn(async move { client.complete_run(request).await })
        })
        .collect();
    for call in calls {
        let reply = within("a CompleteRun", call)
            .await
            .expect("client task")
            .expect("CompleteRun")
            .into_inner();
        assert_eq!(
            reply.outcome(),
            Outcome::AllWritten,
            "{:?}",
            reply.primary_error
        );
    }
}

/// The shared fixture: a realistic run summary, as bytes on disk.
pub fn fixture_summary() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run-summary.json");
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

/// A summary in the fixture's shape carrying the given ids.
pub fn summary_for(task_id: &str, run_id: &str, timestamp: &str) -> String {
    let mut doc: serde_json::Value =
        serde_json::from_str(&fixture_summary()).expect("fixture JSON");
    doc["taskId"] = task_id.into();
    doc["runId"] = run_id.into();
    doc["timestamp"] = timestamp.into();
    doc.to_string()
}

pub fn complete_request(task_id: &str, run_id: &str, timestamp: &str) -> CompleteRunRequest {
    CompleteRunRequest {
        task_id: task_id.into(),
        run_id: run_id.into(),
        timestamp: timestamp.into(),
        summary_json: summary_for(task_id, run_id, timestamp),
    }
}

/// The RFC 3339 timestamp `secs` seconds after a fixed base.
pub fn ts(secs: u32) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-05T00:00:00Z").expect("base");
    (base + chrono::Duration::seconds(secs.into()))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Lowercase hex SHA-256, as the contract spells it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}
