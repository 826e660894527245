//! Test harness: the real server on 127.0.0.1:0 with its own temp data dir,
//! a real tonic channel, and typed helpers.

use std::{future::Future, path::Path, sync::Arc, time::Duration};

use runstore::{
    config::LogFormat,
    proto::{
        CompleteRunRequest, CompleteRunResponse, GetManifestRequest, GetManifestResponse,
        GetTaskSnapshotRequest, GetTaskSnapshotResponse,
        persistence_service_client::PersistenceServiceClient,
    },
    server::{self, ServerSettings},
    storage::{FsStorage, Storage},
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

/// Name the persistence service reports health under.
pub const SERVICE_NAME: &str = "orchestrator.persistence.v1.PersistenceService";

/// Logs are printed only when TEST_LOG is set.
fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        runstore::telemetry::init(LogFormat::Text, std::io::stdout);
    }
}

pub struct TestApp {
    pub port: u16,
    pub client: PersistenceServiceClient<Channel>,
    pub channel: Channel,
    pub data_dir: Arc<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), server::ServeError>>>,
}

/// Spawns a server on a fresh data dir and waits until it is SERVING.
pub async fn spawn_app() -> TestApp {
    let data_dir = Arc::new(tempfile::tempdir().expect("temp data dir"));
    spawn_app_on(data_dir).await
}

/// Spawns a server on an existing data dir (e.g. to restart on it).
pub async fn spawn_app_on(data_dir: Arc<TempDir>) -> TestApp {
    let storage = FsStorage::open(data_dir.path()).expect("open storage");
    let app = spawn_app_with(data_dir, Arc::new(storage), fast_settings()).await;
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

/// Spawns a server on any storage without waiting for it to be SERVING.
pub async fn spawn_app_with(
    data_dir: Arc<TempDir>,
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
        data_dir,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn data_path(&self) -> &Path {
        self.data_dir.path()
    }

    pub fn client(&self) -> PersistenceServiceClient<Channel> {
        self.client.clone()
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
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Every run of a task, following page tokens to the end.
    pub async fn all_runs(&self, task_id: &str) -> Vec<runstore::proto::RunEntry> {
        let mut runs = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .get_snapshot(task_id, 1000, &token)
                .await
                .expect("GetTaskSnapshot");
            runs.extend(page.runs);
            if page.next_page_token.is_empty() {
                return runs;
            }
            token = page.next_page_token;
        }
    }

    pub async fn health(&self, service: &str) -> ServingStatus {
        let reply = HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        reply.status()
    }

    /// Waits (via the Watch stream, no polling) until both the server and
    /// the persistence service report `wanted`.
    pub async fn wait_for_health(&self, wanted: ServingStatus) {
        for service in ["", SERVICE_NAME] {
            let mut updates = HealthClient::new(self.channel.clone())
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
        let reply = call
            .await
            .expect("client task")
            .expect("CompleteRun")
            .into_inner();
        assert_eq!(
            reply.outcome(),
            runstore::proto::Outcome::AllWritten,
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

/// Every file under `dir`, relative paths, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(
                    path.strip_prefix(dir)
                        .expect("prefix")
                        .display()
                        .to_string(),
                );
            }
        }
    }
    out.sort();
    out
}
