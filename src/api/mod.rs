//! The gRPC handlers: validate, dispatch both writes (or the one delete),
//! build the reply; page through a task's history or the tasks.
//!
//! - [`validate`]: id, timestamp and JSON rules.
//! - [`write_report`]: per-write statuses and the manifest-first outcome.
//! - [`error`]: API errors and the one mapping of errors to gRPC codes.
//! - [`page_token`]: the opaque tokens of GetTaskSnapshot and ListTasks and
//!   the WatchRuns cursor.
//! - [`watch`]: the WatchRuns stream.

pub mod error;
pub mod page_token;
pub mod validate;
pub mod watch;
pub mod write_report;

use std::{sync::Arc, time::Instant};

use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    proto::{
        CompleteRunRequest, CompleteRunResponse, DeleteRunRequest, DeleteRunResponse,
        GetManifestRequest, GetManifestResponse, GetTaskSnapshotRequest, GetTaskSnapshotResponse,
        ListTasksRequest, ListTasksResponse, RunEntry, TaskSummary, WatchRunsRequest, WriteStatus,
        WriteTarget, persistence_service_server::PersistenceService,
    },
    server::{
        admission::{Admission, AdmittedCall},
        auth::{self, Scope},
        deadline,
        metrics::Metrics,
    },
    storage::{
        self, EventHead, EventQuery, RunRecord, SnapshotQuery, Storage, StorageError, Target,
        TaskQuery,
    },
    telemetry::traces,
};
use error::ApiError;
use page_token::SnapshotToken;
use write_report::{complete_run_response, delete_run_response, write_status};

/// Runs (or tasks) per page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Most runs (or tasks) per page; larger requests are capped.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Default limit on `summary_json`: 4 MiB − 64 KiB, so that every accepted
/// manifest, and every page holding it, fits the default 4 MiB receive limit
/// of gRPC clients with room for the reply's other fields.
pub const DEFAULT_MAX_SUMMARY_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;
/// Summaries from this size on are validated and hashed on the blocking
/// pool: a 4 MiB summary takes milliseconds of CPU, which would stall every
/// other call on the async worker.
const OFFLOAD_SUMMARY_BYTES: usize = 64 * 1024;

/// How CompleteRun schedules its two writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WriteMode {
    /// Both writes at once: latency is max(snapshot, manifest).
    #[default]
    Concurrent,
    /// Manifest, then snapshot: the in-process baseline runstore replaces,
    /// kept only so benchmarks can measure the difference.
    Sequential,
}

/// Limits and behaviour of the API.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSettings {
    pub max_summary_bytes: usize,
    pub write_mode: WriteMode,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            max_summary_bytes: DEFAULT_MAX_SUMMARY_BYTES,
            write_mode: WriteMode::Concurrent,
        }
    }
}

/// The PersistenceService implementation.
pub struct PersistenceApi {
    storage: Arc<dyn Storage>,
    settings: ServiceSettings,
    admission: Admission,
    /// Every write task, so shutdown can wait for writes whose caller left.
    writes: TaskTracker,
    /// Cancelled when shutdown begins: watchers end with their cursor.
    stop: CancellationToken,
    /// The change feed, read once for all the watchers at one cursor.
    feed: Arc<watch::FeedReader>,
    metrics: Arc<Metrics>,
}

impl PersistenceApi {
    pub fn new(
        storage: Arc<dyn Storage>,
        settings: ServiceSettings,
        admission: Admission,
        writes: TaskTracker,
        stop: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            metrics,
            feed: Arc::new(watch::FeedReader::new(Arc::clone(&storage))),
            storage,
            settings,
            admission,
            writes,
            stop,
        }
    }

    async fn complete_run(
        &self,
        req: CompleteRunRequest,
        deadline: Option<std::time::Duration>,
    ) -> Result<CompleteRunResponse, ApiError> {
        // Shared with the write tasks: the call's in-flight slot is held
        // until its writes are done, even if the caller stops waiting.
        let call = Arc::new(self.admission.admit()?);
        let run = Arc::new(self.prepare_run(req).await?);
        let writes = async {
            match self.settings.write_mode {
                WriteMode::Concurrent => self.write_concurrently(run, &call).await,
                WriteMode::Sequential => self.write_sequentially(run, &call).await,
            }
        };
        // Dropping `writes` stops only the waiting: each write is its own
        // task and runs to completion.
        let (snapshot, manifest) = match deadline {
            Some(budget) => tokio::time::timeout(budget, writes)
                .await
                .map_err(|_| ApiError::DeadlineExceeded)?,
            None => writes.await,
        };
        let reply = complete_run_response(snapshot, manifest);
        if let Some(primary) = &reply.primary_error {
            tracing::warn!(outcome = ?reply.outcome(), code = %primary.code, error = %primary.message, "run not fully written");
        } else {
            tracing::debug!("run written");
        }
        Ok(reply)
    }

    /// Validates the request and computes everything both writes need,
    /// before either is dispatched.
    async fn prepare_run(&self, req: CompleteRunRequest) -> Result<RunRecord, ApiError> {
        let limit = self.settings.max_summary_bytes;
        let paired = self.settings.write_mode == WriteMode::Concurrent;
        // An oversized summary fails the size check at once: no pool hop.
        let size = req.summary_json.len();
        let offload = size >= OFFLOAD_SUMMARY_BYTES && size <= limit;
        let prepare = move || -> Result<RunRecord, ApiError> {
            let instant = validate::complete_run(&req, limit)?;
            Ok(RunRecord {
                sha256: sha256_hex(req.summary_json.as_bytes()),
                task_id: req.task_id,
                run_id: req.run_id,
                timestamp: req.timestamp,
                instant,
                summary_json: req.summary_json,
                paired,
            })
        };
        if !offload {
            return prepare();
        }
        tokio::task::spawn_blocking(prepare)
            .await
            .map_err(|err| ApiError::Storage(StorageError::Internal(err.to_string())))?
    }

    /// Each write is its own task, so it runs to completion even if the
    /// caller goes away, and a slow or failing write never holds up the
    /// other. `join!`, not `try_join!`: both outcomes are always reported.
    async fn write_concurrently(
        &self,
        run: Arc<RunRecord>,
        call: &Arc<AdmittedCall>,
    ) -> (WriteStatus, WriteStatus) {
        let snapshot = self.spawn_write(WriteTarget::Snapshot, Arc::clone(&run), Arc::clone(call));
        let manifest = self.spawn_write(WriteTarget::Manifest, Arc::clone(&run), Arc::clone(call));
        let (snapshot, manifest) = tokio::join!(snapshot, manifest);
        (
            self.joined(WriteTarget::Snapshot, &run, snapshot),
            self.joined(WriteTarget::Manifest, &run, manifest),
        )
    }

    /// The manifest, then the snapshot, in one task: what an orchestrator
    /// doing both writes in-process would do.
    async fn write_sequentially(
        &self,
        run: Arc<RunRecord>,
        call: &Arc<AdmittedCall>,
    ) -> (WriteStatus, WriteStatus) {
        let call = Arc::clone(call);
        let storage = Arc::clone(&self.storage);
        let task_run = Arc::clone(&run);
        let both = self.writes.spawn(
            async move {
                let _call = call;
                let manifest =
                    timed_write(WriteTarget::Manifest, &storage, Arc::clone(&task_run)).await;
                let snapshot = timed_write(WriteTarget::Snapshot, &storage, task_run).await;
                (snapshot, manifest)
            }
            .in_current_span(),
        );
        match both.await {
            Ok(statuses) => statuses,
            Err(err) => (
                self.lost_task(WriteTarget::Snapshot, &run, &err),
                self.lost_task(WriteTarget::Manifest, &run, &err),
            ),
        }
    }

    fn spawn_write(
        &self,
        target: WriteTarget,
        run: Arc<RunRecord>,
        call: Arc<AdmittedCall>,
    ) -> tokio::task::JoinHandle<WriteStatus> {
        let storage = Arc::clone(&self.storage);
        self.writes.spawn(
            async move {
                let _call = call;
                timed_write(target, &storage, run).await
            }
            .in_current_span(),
        )
    }

    fn joined(
        &self,
        target: WriteTarget,
        run: &RunRecord,
        joined: Result<WriteStatus, tokio::task::JoinError>,
    ) -> WriteStatus {
        joined.unwrap_or_else(|err| self.lost_task(target, run, &err))
    }

    /// The status of a write whose task panicked or was aborted.
    fn lost_task(
        &self,
        target: WriteTarget,
        run: &RunRecord,
        err: &tokio::task::JoinError,
    ) -> WriteStatus {
        tracing::error!(?target, error = %err, "write task did not finish");
        let location = location_of(target, run);
        let failure = Err(StorageError::Internal(format!("write task: {err}")));
        write_status(target, location, std::time::Duration::ZERO, &failure)
    }

    async fn get_manifest(&self, req: GetManifestRequest) -> Result<GetManifestResponse, ApiError> {
        let _call = self.admission.admit()?;
        validate::id("task_id", &req.task_id)?;
        validate::id("run_id", &req.run_id)?;
        validate::sha256_or_empty("if_none_match", &req.if_none_match)?;
        let manifest = self
            .storage
            .read_manifest(&req.task_id, &req.run_id)
            .await
            .map_err(|err| match err {
                StorageError::NotFound => ApiError::NotFound(format!(
                    "manifest of run {:?} of task {:?}",
                    req.run_id, req.task_id
                )),
                other => other.into(),
            })?;
        let written_at: chrono::DateTime<chrono::Utc> = manifest.written_at.into();
        let not_modified = req.if_none_match == manifest.sha256;
        Ok(GetManifestResponse {
            sha256: manifest.sha256,
            task_id: req.task_id,
            run_id: req.run_id,
            summary_json: if not_modified {
                String::new()
            } else {
                manifest.summary_json
            },
            written_at: written_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            not_modified,
        })
    }

    async fn get_task_snapshot(
        &self,
        req: GetTaskSnapshotRequest,
    ) -> Result<GetTaskSnapshotResponse, ApiError> {
        let _call = self.admission.admit()?;
        validate::id("task_id", &req.task_id)?;
        let after = match page_token::decode(&req.page_token) {
            _ if req.page_token.is_empty() => None,
            Some(token) if token.newest_first == req.newest_first => Some(token.after),
            Some(_) => {
                return Err(ApiError::InvalidArgument {
                    field: "page_token",
                    rule: "belongs to the other order: use it with the newest_first it came from"
                        .into(),
                });
            }
            None => {
                return Err(ApiError::InvalidArgument {
                    field: "page_token",
                    rule: "must be a next_page_token returned by GetTaskSnapshot".into(),
                });
            }
        };
        let query = SnapshotQuery {
            after,
            limit: page_size(req.page_size),
            newest_first: req.newest_first,
            omit_summaries: req.omit_summaries,
        };
        let page = self
            .storage
            .read_snapshot(&req.task_id, query)
            .await
            .map_err(|err| match err {
                StorageError::NotFound => {
                    ApiError::NotFound(format!("snapshot of task {:?}", req.task_id))
                }
                other => other.into(),
            })?;
        Ok(GetTaskSnapshotResponse {
            task_id: req.task_id,
            last_run_at: page.last_run_at,
            next_page_token: page
                .next
                .map(|after| {
                    page_token::encode(&SnapshotToken {
                        after,
                        newest_first: req.newest_first,
                    })
                })
                .unwrap_or_default(),
            runs: page
                .runs
                .into_iter()
                .map(|run| RunEntry {
                    run_id: run.run_id,
                    timestamp: run.timestamp,
                    summary_json: run.summary_json,
                })
                .collect(),
        })
    }

    /// Removes both records of a run in one storage transaction. Like a
    /// write, the delete is its own task: it completes even if the caller's
    /// deadline passes or the caller goes away.
    async fn delete_run(
        &self,
        req: DeleteRunRequest,
        deadline: Option<std::time::Duration>,
    ) -> Result<DeleteRunResponse, ApiError> {
        let call = self.admission.admit()?;
        validate::id("task_id", &req.task_id)?;
        validate::id("run_id", &req.run_id)?;
        let storage = Arc::clone(&self.storage);
        let delete = self.writes.spawn(
            async move {
                let _call = call;
                let started = Instant::now();
                let result = storage
                    .delete_run(&req.task_id, &req.run_id)
                    .instrument(tracing::debug_span!("delete"))
                    .await;
                if let Err(err) = &result {
                    tracing::warn!(error = %err, "delete failed");
                }
                delete_run_response(&req.task_id, &req.run_id, started.elapsed(), &result)
            }
            .in_current_span(),
        );
        let joined = match deadline {
            Some(budget) => tokio::time::timeout(budget, delete)
                .await
                .map_err(|_| ApiError::DeadlineExceeded)?,
            None => delete.await,
        };
        joined
            .map_err(|err| ApiError::Storage(StorageError::Internal(format!("delete task: {err}"))))
    }

    /// Starts a watcher. Its admission lasts only until the stream is set
    /// up: a watch is long-lived and must not hold an in-flight slot.
    async fn watch_runs(&self, req: WatchRunsRequest) -> Result<watch::WatchStream, ApiError> {
        let _call = self.admission.admit()?;
        validate::id_prefix("task_prefix", &req.task_prefix)?;
        let start = if req.after.is_empty() {
            self.storage.event_head().await?
        } else {
            EventHead {
                after: page_token::decode_event(&req.after).ok_or_else(|| {
                    ApiError::InvalidArgument {
                        field: "after",
                        rule: "must be a RunEvent.cursor returned by WatchRuns".into(),
                    }
                })?,
                committed: Vec::new(),
            }
        };
        // A pruned cursor is the call's status, not the stream's first message.
        let probe = EventQuery {
            after: start.after,
            limit: 1,
        };
        self.storage.read_events(&probe).await?;
        Ok(watch::spawn(
            Arc::clone(&self.feed),
            start,
            req.task_prefix,
            self.stop.clone(),
        ))
    }

    async fn list_tasks(&self, req: ListTasksRequest) -> Result<ListTasksResponse, ApiError> {
        let _call = self.admission.admit()?;
        validate::id_prefix("prefix", &req.prefix)?;
        let after = match page_token::decode_task(&req.page_token) {
            _ if req.page_token.is_empty() => None,
            Some(last) if last.starts_with(&req.prefix) => Some(last),
            Some(_) => {
                return Err(ApiError::InvalidArgument {
                    field: "page_token",
                    rule: "belongs to another prefix: use it with the prefix it came from".into(),
                });
            }
            None => {
                return Err(ApiError::InvalidArgument {
                    field: "page_token",
                    rule: "must be a next_page_token returned by ListTasks".into(),
                });
            }
        };
        let page = self
            .storage
            .list_tasks(TaskQuery {
                prefix: req.prefix,
                after,
                limit: page_size(req.page_size),
            })
            .await?;
        Ok(ListTasksResponse {
            next_page_token: page
                .next
                .as_deref()
                .map(page_token::encode_task)
                .unwrap_or_default(),
            tasks: page
                .tasks
                .into_iter()
                .map(|task| TaskSummary {
                    task_id: task.task_id,
                    run_count: task.run_count,
                    last_run_at: task.last_run_at,
                })
                .collect(),
        })
    }
}

/// One write, in its own span, a child of the RPC's: DEBUG, so that it is
/// traced but not logged at the default level (and, with traces off, not
/// even created).
async fn timed_write(
    target: WriteTarget,
    storage: &Arc<dyn Storage>,
    run: Arc<RunRecord>,
) -> WriteStatus {
    let location = location_of(target, &run);
    let started = Instant::now();
    let result = match target {
        WriteTarget::Manifest => {
            let span = tracing::debug_span!("write", target = "manifest");
            storage.write_manifest(run).instrument(span).await
        }
        _ => {
            let span = tracing::debug_span!("write", target = "snapshot");
            storage.write_snapshot(run).instrument(span).await
        }
    };
    if let Err(err) = &result {
        tracing::warn!(?target, error = %err, "write failed");
    }
    write_status(target, location, started.elapsed(), &result)
}

/// Refuses a call whose token lacks the scope its RPC needs; checked
/// before validation.
fn require(
    extensions: &tonic::Extensions,
    scope: Scope,
    rpc: &'static str,
) -> Result<(), ApiError> {
    if auth::permits(extensions, scope) {
        return Ok(());
    }
    Err(ApiError::PermissionDenied {
        rpc,
        scope: scope.name(),
    })
}

/// A page size as asked for: 0 is the default, and the maximum caps it.
fn page_size(asked: u32) -> usize {
    match asked as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

fn location_of(target: WriteTarget, run: &RunRecord) -> String {
    let target = match target {
        WriteTarget::Manifest => Target::Manifest,
        _ => Target::Snapshot,
    };
    storage::location(target, &run.task_id, &run.run_id)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl PersistenceApi {
    /// Runs a call in its span, and counts and times it by its method and
    /// the code it is answered with (a caller that leaves first is not
    /// counted).
    async fn answered<T>(
        &self,
        method: &'static str,
        span: tracing::Span,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = call.instrument(span.clone()).await;
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        traces::answered(&span, code);
        self.metrics
            .rpc_answered(method, code, started.elapsed(), &span);
        result
    }
}

/// The span of one RPC, `rpc_span!(metadata, "Method", fields…)`: named
/// after the method for trace viewers, continuing the caller's trace.
/// Ids go in with Debug formatting: they are untrusted and may hold
/// control characters.
macro_rules! rpc_span {
    ($metadata:expr, $rpc:literal, $($fields:tt)*) => {{
        let span = tracing::info_span!(
            "rpc",
            rpc = $rpc,
            otel.name = $rpc,
            otel.kind = "server",
            $($fields)*
        );
        traces::continue_trace(&span, $rpc, $metadata);
        span
    }};
}

#[tonic::async_trait]
impl PersistenceService for PersistenceApi {
    async fn complete_run(
        &self,
        request: Request<CompleteRunRequest>,
    ) -> Result<Response<CompleteRunResponse>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        let span =
            rpc_span!(&metadata, "CompleteRun", task_id = ?req.task_id, run_id = ?req.run_id);
        self.answered("CompleteRun", span, async {
            require(&extensions, Scope::Write, "CompleteRun")?;
            let deadline = deadline::budget(&metadata);
            Ok(Response::new(self.complete_run(req, deadline).await?))
        })
        .await
    }

    async fn get_manifest(
        &self,
        request: Request<GetManifestRequest>,
    ) -> Result<Response<GetManifestResponse>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        let span =
            rpc_span!(&metadata, "GetManifest", task_id = ?req.task_id, run_id = ?req.run_id);
        self.answered("GetManifest", span, async {
            require(&extensions, Scope::Read, "GetManifest")?;
            Ok(Response::new(self.get_manifest(req).await?))
        })
        .await
    }

    async fn get_task_snapshot(
        &self,
        request: Request<GetTaskSnapshotRequest>,
    ) -> Result<Response<GetTaskSnapshotResponse>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        let span = rpc_span!(&metadata, "GetTaskSnapshot", task_id = ?req.task_id);
        self.answered("GetTaskSnapshot", span, async {
            require(&extensions, Scope::Read, "GetTaskSnapshot")?;
            Ok(Response::new(self.get_task_snapshot(req).await?))
        })
        .await
    }

    async fn delete_run(
        &self,
        request: Request<DeleteRunRequest>,
    ) -> Result<Response<DeleteRunResponse>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        let span = rpc_span!(&metadata, "DeleteRun", task_id = ?req.task_id, run_id = ?req.run_id);
        self.answered("DeleteRun", span, async {
            require(&extensions, Scope::Delete, "DeleteRun")?;
            let deadline = deadline::budget(&metadata);
            Ok(Response::new(self.delete_run(req, deadline).await?))
        })
        .await
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        let span = rpc_span!(&metadata, "ListTasks", prefix = ?req.prefix);
        self.answered("ListTasks", span, async {
            require(&extensions, Scope::Read, "ListTasks")?;
            Ok(Response::new(self.list_tasks(req).await?))
        })
        .await
    }

    type WatchRunsStream = watch::WatchStream;

    async fn watch_runs(
        &self,
        request: Request<WatchRunsRequest>,
    ) -> Result<Response<Self::WatchRunsStream>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        let span = rpc_span!(&metadata, "WatchRuns", task_prefix = ?req.task_prefix);
        self.answered("WatchRuns", span, async {
            require(&extensions, Scope::Read, "WatchRuns")?;
            Ok(Response::new(self.watch_runs(req).await?))
        })
        .await
    }
}
