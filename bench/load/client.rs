//! The load client, as lean as pgbench: every request body is encoded once
//! up front (a `CompleteRun` template whose fixed-width ids and timestamp
//! are patched in place per call, or a `GetTaskSnapshot` request cloned by
//! reference count), sent by N tasks over a few HTTP/2 connections, and
//! bounded by a call count and a deadline.

use std::{
    marker::PhantomData,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use prost::{
    Message,
    bytes::{BufMut, Bytes, BytesMut},
};
use runstore::proto::{
    CompleteRunRequest, CompleteRunResponse, GetTaskSnapshotRequest, ListTasksRequest, Outcome,
    TaskSummary, persistence_service_client::PersistenceServiceClient,
};
use serde_json::Value;
use tonic::{
    Request, Status,
    client::Grpc,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint},
};

const COMPLETE_RUN: &str = "/orchestrator.persistence.v1.PersistenceService/CompleteRun";
const GET_TASK_SNAPSHOT: &str = "/orchestrator.persistence.v1.PersistenceService/GetTaskSnapshot";
const LIST_TASKS: &str = "/orchestrator.persistence.v1.PersistenceService/ListTasks";

/// Ids and timestamps have a fixed width, so a template's bytes (and the
/// protobuf lengths in them) never move: `bench-task-0000000042`,
/// `bench-run-000000001234`, `2026-01-05T00:00:01.234Z`.
const TASK_PREFIX: &str = "bench-task-";
const TASK_DIGITS: usize = 10;
const RUN_PREFIX: &str = "bench-run-";
const RUN_DIGITS: usize = 12;
/// Run `n`'s timestamp is `n` milliseconds after this midnight, so a task's
/// history order is run-number order.
const DAY: &str = "2026-01-05T";

pub fn task_id(task: u64) -> String {
    format!("{TASK_PREFIX}{task:0TASK_DIGITS$}")
}

pub fn run_id(run: u64) -> String {
    format!("{RUN_PREFIX}{run:0RUN_DIGITS$}")
}

/// The run number in a run id this client made.
pub fn run_number(run_id: &str) -> Option<u64> {
    run_id.strip_prefix(RUN_PREFIX)?.parse().ok()
}

fn placeholder(prefix: &str, digits: usize) -> String {
    format!("{prefix}{}", "#".repeat(digits))
}

fn time_placeholder() -> String {
    format!("{DAY}##:##:##.###Z")
}

/// Bytes with slots for a task number, a run number and a timestamp.
pub struct Template {
    bytes: Vec<u8>,
    task_at: Vec<usize>,
    run_at: Vec<usize>,
    time_at: Vec<usize>,
}

impl Template {
    fn new(bytes: Vec<u8>) -> anyhow::Result<Self> {
        let find = |needle: &str, skip: usize| -> Vec<usize> {
            let needle = needle.as_bytes();
            bytes
                .windows(needle.len())
                .enumerate()
                .filter(|(_, w)| *w == needle)
                .map(|(i, _)| i + skip)
                .collect()
        };
        let template = Self {
            task_at: find(&placeholder(TASK_PREFIX, TASK_DIGITS), TASK_PREFIX.len()),
            run_at: find(&placeholder(RUN_PREFIX, RUN_DIGITS), RUN_PREFIX.len()),
            time_at: find(&time_placeholder(), DAY.len()),
            bytes,
        };
        if template.task_at.is_empty() || template.run_at.is_empty() || template.time_at.is_empty()
        {
            bail!("template lacks a task, run or time slot");
        }
        Ok(template)
    }

    /// The bytes for run `run` of task `task`: one copy and a few digits.
    pub fn render(&self, task: u64, run: u64) -> BytesMut {
        let mut out = BytesMut::with_capacity(self.bytes.len());
        out.put_slice(&self.bytes);
        for &at in &self.task_at {
            digits(&mut out[at..at + TASK_DIGITS], task);
        }
        for &at in &self.run_at {
            digits(&mut out[at..at + RUN_DIGITS], run);
        }
        for &at in &self.time_at {
            clock(&mut out[at..at + 12], run);
        }
        out
    }
}

fn digits(slot: &mut [u8], mut value: u64) {
    for byte in slot.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// `HH:MM:SS.mmm` for `millis` after midnight (wrapping at a day).
fn clock(slot: &mut [u8], millis: u64) {
    let secs = millis / 1000;
    digits(&mut slot[0..2], (secs / 3600) % 24);
    slot[2] = b':';
    digits(&mut slot[3..5], (secs / 60) % 60);
    slot[5] = b':';
    digits(&mut slot[6..8], secs % 60);
    slot[8] = b'.';
    digits(&mut slot[9..12], millis % 1000);
}

/// The fixture summary with every id and timestamp as a slot, and the
/// encoded `CompleteRunRequest` built around it.
pub struct Fixture {
    /// The encoded request.
    pub request: Template,
    /// The summary alone, to check what a read returns.
    pub summary: Template,
    /// The fixture as sent (compact, its own ids), for pgbench: the same
    /// bytes as a CompleteRun summary.
    pub plain_summary: String,
}

impl Fixture {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading fixture {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("fixture {}", path.display()))
    }

    /// The smallest summary there is: the three fields a CompleteRun
    /// summary must agree on and nothing else (~100 bytes). For filling a
    /// store with many tasks, where the summary's size is not what is
    /// measured.
    pub fn minimal() -> anyhow::Result<Self> {
        Self::from_json(r#"{"taskId":"","runId":"","timestamp":""}"#)
    }

    /// A fixture from a summary's JSON text (its ids and timestamp are
    /// replaced by slots).
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let mut summary: Value = serde_json::from_str(text).context("parsing the summary")?;
        let plain_summary = serde_json::to_string(&summary)?;
        let (task, run, time) = (
            placeholder(TASK_PREFIX, TASK_DIGITS),
            placeholder(RUN_PREFIX, RUN_DIGITS),
            time_placeholder(),
        );
        summary["taskId"] = task.as_str().into();
        summary["runId"] = run.as_str().into();
        summary["timestamp"] = time.as_str().into();
        for section in ["build", "test"] {
            if summary[section].is_object() {
                summary[section]["runId"] = run.as_str().into();
            }
        }
        let summary = serde_json::to_string(&summary)?;
        let request = CompleteRunRequest {
            task_id: task,
            run_id: run,
            timestamp: time,
            summary_json: summary.clone(),
        };
        let fixture = Self {
            request: Template::new(request.encode_to_vec())?,
            summary: Template::new(summary.into_bytes())?,
            plain_summary,
        };
        fixture.self_check()?;
        Ok(fixture)
    }

    /// Renders one request and checks that it decodes with every id and
    /// the timestamp in place, in the summary too.
    fn self_check(&self) -> anyhow::Result<()> {
        let (task, run) = (42, 3_723_004);
        let request = CompleteRunRequest::decode(self.request.render(task, run))?;
        let summary: Value = serde_json::from_str(&request.summary_json)?;
        let expected = (task_id(task), run_id(run), "2026-01-05T01:02:03.004Z");
        let got = (
            request.task_id.as_str(),
            request.run_id.as_str(),
            request.timestamp.as_str(),
        );
        if got != (expected.0.as_str(), expected.1.as_str(), expected.2)
            || summary["taskId"] != expected.0.as_str()
            || summary["runId"] != expected.1.as_str()
            || summary["timestamp"] != expected.2
            || request.summary_json.as_bytes() != &self.summary.render(task, run)[..]
        {
            bail!("the request template does not render run {run} of task {task}: {got:?}");
        }
        Ok(())
    }

    pub fn summary_len(&self) -> usize {
        self.summary.bytes.len()
    }
}

/// Which task call `n` writes to.
#[derive(Debug, Clone, Copy)]
pub enum Keying {
    /// Task `n % k`.
    Tasks(u64),
    /// Always this task.
    One(u64),
    /// A new task per call: task `n`.
    PerCall,
}

impl Keying {
    pub fn task(self, n: u64) -> u64 {
        match self {
            Keying::Tasks(k) => n % k,
            Keying::One(task) => task,
            Keying::PerCall => n,
        }
    }
}

/// What every call of a load run does.
pub enum Op {
    /// `CompleteRun` of run `n` (run numbers start at `first_run`); OK only
    /// when the reply says ALL_WRITTEN.
    CompleteRun {
        fixture: Arc<Fixture>,
        keying: Keying,
        first_run: u64,
    },
    /// `GetTaskSnapshot` of a task's first page (default size); OK only
    /// when it holds `runs` runs of that task.
    FirstPage {
        request: Bytes,
        task_id: String,
        runs: usize,
    },
    /// `ListTasks` of one page; OK only when it holds `tasks` tasks, the
    /// first and last the ones expected, each with at least one run.
    ListTasks {
        request: Bytes,
        first: String,
        last: String,
        tasks: usize,
    },
}

impl Op {
    pub fn first_page(task: u64, runs: usize) -> Self {
        let task_id = task_id(task);
        let request = GetTaskSnapshotRequest {
            task_id: task_id.clone(),
            page_size: 0,
            page_token: String::new(),
            ..Default::default()
        };
        Op::FirstPage {
            request: request.encode_to_vec().into(),
            task_id,
            runs,
        }
    }

    /// The page of `page_size` tasks from task `first` on, asked for with
    /// `prefix` and `page_token` (both may be empty).
    pub fn list_tasks(prefix: &str, page_token: &str, first: u64, page_size: usize) -> Self {
        let request = ListTasksRequest {
            prefix: prefix.to_owned(),
            page_size: u32::try_from(page_size).unwrap_or(u32::MAX),
            page_token: page_token.to_owned(),
        };
        Op::ListTasks {
            request: request.encode_to_vec().into(),
            first: task_id(first),
            last: task_id(first + page_size as u64 - 1),
            tasks: page_size,
        }
    }
}

/// Sends pre-encoded bodies as they are; decodes replies with prost.
struct RawCodec<R>(PhantomData<R>);

impl<R> Default for RawCodec<R> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

struct ProstDecoder<R>(PhantomData<R>);

impl<R: Message + Default> Decoder for ProstDecoder<R> {
    type Item = R;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<R>, Status> {
        R::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl<R: Message + Default + Send + 'static> Codec for RawCodec<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = RawEncoder;
    type Decoder = ProstDecoder<R>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<R> {
        ProstDecoder(PhantomData)
    }
}

/// A `GetTaskSnapshotResponse` read without copying the runs apart: each
/// run stays one slice of the received buffer.
#[derive(Clone, PartialEq, Message)]
struct PageLite {
    #[prost(string, tag = "1")]
    task_id: String,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    runs: Vec<Bytes>,
}

/// A `ListTasksResponse` read without decoding every task: each stays one
/// slice of the received buffer.
#[derive(Clone, PartialEq, Message)]
struct TasksLite {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    tasks: Vec<Bytes>,
}

/// One call; for CompleteRun, the server-side time of its slower write
/// (`WriteStatus.duration_micros`: queueing for and waiting on the commit).
async fn call(grpc: &mut Grpc<Channel>, op: &Op, n: u64) -> Result<Option<u32>, String> {
    grpc.ready().await.map_err(|e| format!("channel: {e}"))?;
    match op {
        Op::CompleteRun {
            fixture,
            keying,
            first_run,
        } => {
            let run = first_run + n;
            let body = fixture.request.render(keying.task(n), run).freeze();
            let reply: CompleteRunResponse = grpc
                .unary(
                    Request::new(body),
                    PathAndQuery::from_static(COMPLETE_RUN),
                    RawCodec::<CompleteRunResponse>::default(),
                )
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            if reply.outcome() != Outcome::AllWritten {
                return Err(format!("outcome {:?}", reply.outcome()));
            }
            let micros = |status: &Option<runstore::proto::WriteStatus>| {
                status.as_ref().map_or(0, |s| s.duration_micros)
            };
            let slower = micros(&reply.snapshot).max(micros(&reply.manifest));
            return Ok(Some(u32::try_from(slower).unwrap_or(u32::MAX)));
        }
        Op::FirstPage {
            request,
            task_id,
            runs,
        } => {
            let page: PageLite = grpc
                .unary(
                    Request::new(request.clone()),
                    PathAndQuery::from_static(GET_TASK_SNAPSHOT),
                    RawCodec::<PageLite>::default(),
                )
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            if page.task_id != *task_id || page.runs.len() != *runs {
                return Err(format!(
                    "page of {:?} with {} runs, expected {task_id:?} with {runs}",
                    page.task_id,
                    page.runs.len()
                ));
            }
        }
        Op::ListTasks {
            request,
            first,
            last,
            tasks,
        } => {
            let page: TasksLite = grpc
                .unary(
                    Request::new(request.clone()),
                    PathAndQuery::from_static(LIST_TASKS),
                    RawCodec::<TasksLite>::default(),
                )
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            let decode = |bytes: Option<&Bytes>| {
                bytes
                    .and_then(|b| TaskSummary::decode(b.clone()).ok())
                    .unwrap_or_default()
            };
            let (head, tail) = (decode(page.tasks.first()), decode(page.tasks.last()));
            if page.tasks.len() != *tasks
                || head.task_id != *first
                || tail.task_id != *last
                || head.run_count == 0
                || tail.run_count == 0
            {
                return Err(format!(
                    "page of {} tasks from {:?} ({} runs) to {:?} ({} runs), expected {tasks} \
                     from {first:?} to {last:?}",
                    page.tasks.len(),
                    head.task_id,
                    head.run_count,
                    tail.task_id,
                    tail.run_count
                ));
            }
        }
    }
    Ok(None)
}

/// How a load run is bounded and spread.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    pub concurrency: usize,
    pub connections: usize,
    pub duration: Duration,
    pub max_calls: u64,
}

/// Longest one call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct LoadResult {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Latency of every OK call, in microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// Server-side time of each OK CompleteRun's slower write, sorted.
    pub write_us: Vec<u32>,
    /// Whether the count cap (rather than the deadline) ended the run.
    pub count_capped: bool,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile of OK calls' latency, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latencies_us, q)
    }

    /// The `q` quantile of the server-side write time, in milliseconds.
    pub fn write_quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.write_us, q)
    }

    /// Adds another run of the same load (used to interleave two loads).
    pub fn merge(&mut self, other: LoadResult) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.elapsed += other.elapsed;
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us.sort_unstable();
        self.write_us.extend(other.write_us);
        self.write_us.sort_unstable();
        self.count_capped |= other.count_capped;
    }
}

/// Nearest-rank quantile of sorted microsecond samples, in milliseconds.
pub fn quantile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

pub async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

/// Runs `op` from `spec.concurrency` tasks over `spec.connections`
/// connections (opened before the clock starts) until `spec.max_calls`
/// calls were started or `spec.duration` passed; calls in flight at the
/// deadline finish and count.
pub async fn run_load(addr: SocketAddr, op: Arc<Op>, spec: LoadSpec) -> anyhow::Result<LoadResult> {
    let mut channels = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections.max(1) {
        channels.push(connect(addr).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let capped = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + spec.duration;
    let per_task = (spec.max_calls / spec.concurrency.max(1) as u64).min(1 << 16) as usize;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..spec.concurrency {
        let mut grpc = Grpc::new(channels[worker % channels.len()].clone());
        let (op, next, capped) = (Arc::clone(&op), Arc::clone(&next), Arc::clone(&capped));
        workers.spawn(async move {
            let mut result = LoadResult {
                latencies_us: Vec::with_capacity(per_task + 1),
                write_us: Vec::with_capacity(per_task + 1),
                ..LoadResult::default()
            };
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= spec.max_calls {
                    capped.store(true, Ordering::Relaxed);
                    break;
                }
                let sent = Instant::now();
                let outcome = tokio::time::timeout(CALL_TIMEOUT, call(&mut grpc, &op, n)).await;
                let took = sent.elapsed();
                match outcome {
                    Ok(Ok(write)) => {
                        result.ok += 1;
                        result
                            .latencies_us
                            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                        result.write_us.extend(write);
                    }
                    Ok(Err(err)) => {
                        result.errors += 1;
                        result.first_error.get_or_insert(err);
                    }
                    Err(_) => {
                        result.errors += 1;
                        result
                            .first_error
                            .get_or_insert_with(|| format!("no reply within {CALL_TIMEOUT:?}"));
                    }
                }
            }
            result
        });
    }
    let mut total = LoadResult::default();
    while let Some(result) = workers.join_next().await {
        let result = result.context("load task panicked")?;
        total.ok += result.ok;
        total.errors += result.errors;
        total.first_error = total.first_error.or(result.first_error);
        total.latencies_us.extend(result.latencies_us);
        total.write_us.extend(result.write_us);
    }
    total.elapsed = started.elapsed();
    total.latencies_us.sort_unstable();
    total.write_us.sort_unstable();
    total.count_capped = capped.load(Ordering::Relaxed);
    Ok(total)
}

/// Reads every run of each task back through `GetTaskSnapshot` (pages of
/// 1000) and checks each against what run `n` sent: the summary byte for
/// byte, the timestamp, and history order. Returns the runs read.
pub async fn read_back(
    addr: SocketAddr,
    fixture: &Fixture,
    tasks: impl IntoIterator<Item = u64>,
) -> anyhow::Result<u64> {
    /// Bounds the pages read per task (10 million runs).
    const MAX_PAGES: usize = 10_000;
    let mut client = PersistenceServiceClient::new(connect(addr).await?)
        .max_decoding_message_size(16 * 1024 * 1024);
    let mut total = 0u64;
    for task in tasks {
        let id = task_id(task);
        let mut token = String::new();
        let mut last: Option<u64> = None;
        for page_number in 0.. {
            if page_number == MAX_PAGES {
                bail!("task {id}: more than {MAX_PAGES} pages");
            }
            let page = client
                .get_task_snapshot(GetTaskSnapshotRequest {
                    task_id: id.clone(),
                    page_size: 1000,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("GetTaskSnapshot {id}"))?
                .into_inner();
            for run in &page.runs {
                let n = run_number(&run.run_id)
                    .with_context(|| format!("task {id}: unexpected run id {:?}", run.run_id))?;
                if last.is_some_and(|last| last >= n) {
                    bail!("task {id}: run {n} listed after run {last:?}");
                }
                last = Some(n);
                let expected = fixture.summary.render(task, n);
                if run.summary_json.as_bytes() != &expected[..] {
                    bail!("task {id}, run {n}: the stored summary differs from the one sent");
                }
                let mut time = BytesMut::from(time_placeholder().as_bytes());
                clock(&mut time[DAY.len()..DAY.len() + 12], n);
                if run.timestamp.as_bytes() != &time[..] {
                    bail!("task {id}, run {n}: timestamp {:?}", run.timestamp);
                }
                total += 1;
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
    }
    Ok(total)
}
