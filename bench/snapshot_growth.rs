//! Snapshot growth benchmark: does recording run 10,000 of a task cost about
//! what recording run 1 costs?
//!
//! That is the acceptance figure for the snapshot write (DESIGN.md, Storage).
//! The old in-process coordinator rewrote a task's whole `runs.json` on every
//! run, so its cost grew with the history; runstore upserts one row with
//! index seeks instead. This benchmark measures it end to end, through the
//! real server and a real gRPC channel:
//!
//! 1. Starts `runstore::server::run` in-process on `127.0.0.1:0` with
//!    the SQLite storage on a fresh temporary data dir (under `$TMPDIR`, so point
//!    `TMPDIR` at the disk you care about), and waits for `grpc.health.v1`
//!    to report SERVING.
//! 2. Prefills task B with `BENCH_PRIOR_RUNS` runs (default 10,000) through
//!    the API, 32 calls in flight; every reply must be ALL_WRITTEN.
//! 3. Measures `BENCH_SAMPLES` (default 300) sequential `CompleteRun` calls on
//!    each of two tasks, interleaved one by one so drift (page cache, disk,
//!    CPU frequency) hits both alike; the order within each pair alternates
//!    so neither task always goes first:
//!    - A, the "empty" task: a fresh task, so its i-th sample is its run i.
//!      Its history grows to `BENCH_SAMPLES` runs, which is still empty next
//!      to B's.
//!    - B, the full task: its i-th sample is run `BENCH_PRIOR_RUNS + i`.
//! 4. Reads both snapshots back with `GetTaskSnapshot` (pages of 1000) and
//!    asserts they hold exactly the runs written, in timestamp order, which
//!    proves every measured call was a real write.
//! 5. Prints, per task: the client-observed latency of the call (p50, p99,
//!    mean, and calls/s over the time spent in that task's calls) and the
//!    server-side duration of the snapshot write alone
//!    (`WriteStatus.duration_micros`), which isolates the storage cost from
//!    RPC overhead and from the concurrent manifest write; then the B/A
//!    ratios and the size of the database. Ratios near 1.0 mean the
//!    snapshot cost does not grow with history.
//!
//! Summaries are the shared fixture `tests/fixtures/run-summary.json`
//! (about 2 KiB, the shape `make_summary.py` produces) with `taskId`,
//! `runId` and `timestamp` set per call, as the server requires.
//!
//! Run: `cargo bench --bench snapshot_growth`; quick version:
//! `BENCH_PRIOR_RUNS=1000 BENCH_SAMPLES=50 cargo bench --bench snapshot_growth`.

use std::{
    env,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use runstore::{
    proto::{
        CompleteRunRequest, CompleteRunResponse, GetTaskSnapshotRequest, Outcome,
        persistence_service_client::PersistenceServiceClient,
    },
    server::{ServeError, ServerSettings},
    storage::{
        self, StorageSetting,
        sqlite::{LockWait, SqliteSettings},
    },
};
use serde_json::Value;
use tokio::{net::TcpListener, sync::oneshot, task::JoinSet};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const DEFAULT_PRIOR_RUNS: usize = 10_000;
const DEFAULT_SAMPLES: usize = 300;
/// CompleteRun calls in flight while prefilling the full task.
const PREFILL_CONCURRENCY: usize = 32;
/// GetTaskSnapshot page size when reading a snapshot back (the maximum).
const READ_PAGE_SIZE: u32 = 1000;
/// How long the server may take to report SERVING.
const SERVING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to shut down once asked.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const EMPTY_TASK: &str = "bench-empty-task";
const FULL_TASK: &str = "bench-full-task";
/// Timestamps start here and advance one second per run index.
const EPOCH_SECS: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// What the benchmark is asked to do, from the environment.
#[derive(Debug, Clone, Copy)]
struct Config {
    prior_runs: usize,
    samples: usize,
}

impl Config {
    fn from_env() -> Self {
        let config = Self {
            prior_runs: env_usize("BENCH_PRIOR_RUNS", DEFAULT_PRIOR_RUNS),
            samples: env_usize("BENCH_SAMPLES", DEFAULT_SAMPLES),
        };
        assert!(config.samples > 0, "BENCH_SAMPLES must be at least 1");
        config
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    match env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|err| panic!("{name}={value:?} is not a count: {err}")),
        Err(env::VarError::NotPresent) => default,
        Err(err) => panic!("{name} is unreadable: {err}"),
    }
}

/// The summary template every request is built from.
struct Fixture {
    template: Value,
}

impl Fixture {
    fn load() -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run-summary.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("reading fixture {}: {err}", path.display()));
        let template: Value = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("parsing fixture {}: {err}", path.display()));
        assert!(
            template.is_object(),
            "fixture {} is not a JSON object",
            path.display()
        );
        Self { template }
    }

    /// The request recording run `index` of `task`: run ids and timestamps
    /// both increase with `index`, so snapshot order is index order.
    fn request(&self, task: &str, index: usize) -> CompleteRunRequest {
        let run_id = run_id(index);
        let timestamp = timestamp(index);
        let mut summary = self.template.clone();
        summary["taskId"] = task.into();
        summary["runId"] = run_id.as_str().into();
        summary["timestamp"] = timestamp.as_str().into();
        for section in ["build", "test"] {
            if summary[section].is_object() {
                summary[section]["runId"] = run_id.as_str().into();
            }
        }
        CompleteRunRequest {
            task_id: task.to_owned(),
            run_id,
            timestamp,
            summary_json: summary.to_string(),
        }
    }
}

fn run_id(index: usize) -> String {
    format!("run-{index:07}")
}

fn timestamp(index: usize) -> String {
    let offset = i64::try_from(index).expect("run index fits in i64");
    chrono::DateTime::from_timestamp(EPOCH_SECS + offset, 0)
        .expect("benchmark timestamps are in chrono's range")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The in-process server, its data dir and a client connected to it.
struct Harness {
    client: PersistenceServiceClient<Channel>,
    data_dir: tempfile::TempDir,
    shutdown: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Harness {
    async fn start() -> Self {
        let data_dir = tempfile::tempdir().expect("creating a temporary data dir");
        let setting = StorageSetting::Sqlite(SqliteSettings {
            data_dir: data_dir.path().to_path_buf(),
            max_summary_bytes: runstore::api::DEFAULT_MAX_SUMMARY_BYTES,
            lock_wait: LockWait::default(),
        });
        let storage = storage::open(&setting)
            .await
            .expect("opening SQLite storage on the data dir");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("listener has a local address");
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(runstore::server::run(
            listener,
            storage,
            ServerSettings::default(),
            shutdown_signal(stop),
        ));
        let channel = connect(addr).await;
        wait_until_serving(HealthClient::new(channel.clone())).await;
        Self {
            client: PersistenceServiceClient::new(channel),
            data_dir,
            shutdown,
            server,
        }
    }

    fn database_path(&self) -> PathBuf {
        self.data_dir.path().join(storage::sqlite::DATABASE_FILE)
    }

    /// Asks the server to stop, waits for it, then removes the data dir.
    async fn stop(self) {
        drop(self.client);
        // A send error means the server already stopped; awaiting it says why.
        let _ = self.shutdown.send(());
        tokio::time::timeout(SHUTDOWN_TIMEOUT, self.server)
            .await
            .expect("server shut down within the timeout")
            .expect("server task did not panic")
            .expect("server stopped cleanly");
        self.data_dir.close().expect("removing the data dir");
    }
}

async fn shutdown_signal(stop: oneshot::Receiver<()>) {
    // A message or the sender going away both mean stop.
    let _ = stop.await;
}

async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a valid endpoint URI")
        .connect()
        .await
        .expect("connecting to the in-process server")
}

/// Polls grpc.health.v1 Check until the server reports SERVING.
async fn wait_until_serving(mut health: HealthClient<Channel>) {
    let deadline = Instant::now() + SERVING_TIMEOUT;
    loop {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        if let Ok(reply) = health.check(request).await
            && reply.get_ref().status() == ServingStatus::Serving
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server did not report SERVING within {SERVING_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Panics unless both writes of the call succeeded; returns the server-side
/// duration of the snapshot write.
fn expect_all_written(request: &CompleteRunRequest, reply: &CompleteRunResponse) -> u64 {
    assert_eq!(
        reply.outcome(),
        Outcome::AllWritten,
        "run {} of task {} was not fully written: {:?}",
        request.run_id,
        request.task_id,
        reply.primary_error,
    );
    reply
        .snapshot
        .as_ref()
        .expect("an ALL_WRITTEN reply carries the snapshot status")
        .duration_micros
}

async fn complete_run(
    client: &mut PersistenceServiceClient<Channel>,
    request: CompleteRunRequest,
) -> CompleteRunResponse {
    let (task, run) = (request.task_id.clone(), request.run_id.clone());
    client
        .complete_run(request)
        .await
        .unwrap_or_else(|status| panic!("CompleteRun of run {run} of task {task} failed: {status}"))
        .into_inner()
}

/// Writes runs `0..count` of `task`, `PREFILL_CONCURRENCY` at a time.
async fn prefill(harness: &Harness, fixture: &Fixture, task: &str, count: usize) -> Duration {
    let started = Instant::now();
    let mut in_flight = JoinSet::new();
    let mut next = 0;
    while next < count || !in_flight.is_empty() {
        while next < count && in_flight.len() < PREFILL_CONCURRENCY {
            let request = fixture.request(task, next);
            let mut client = harness.client.clone();
            in_flight.spawn(async move {
                let reply = complete_run(&mut client, request.clone()).await;
                expect_all_written(&request, &reply);
            });
            next += 1;
        }
        if let Some(joined) = in_flight.join_next().await {
            joined.expect("a prefill call panicked");
        }
    }
    started.elapsed()
}

/// One measured call.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Client-observed latency of the whole CompleteRun call.
    latency: Duration,
    /// Server-side duration of the snapshot write alone.
    snapshot_micros: u64,
}

async fn measure_one(
    client: &mut PersistenceServiceClient<Channel>,
    fixture: &Fixture,
    task: &str,
    index: usize,
) -> Sample {
    let request = fixture.request(task, index);
    let sent = request.clone();
    let started = Instant::now();
    let reply = complete_run(client, sent).await;
    let latency = started.elapsed();
    let snapshot_micros = expect_all_written(&request, &reply);
    Sample {
        latency,
        snapshot_micros,
    }
}

/// Samples of the empty task (A) and the full task (B), taken alternately.
async fn measure_interleaved(
    harness: &mut Harness,
    fixture: &Fixture,
    config: Config,
) -> (Vec<Sample>, Vec<Sample>) {
    let mut empty = Vec::with_capacity(config.samples);
    let mut full = Vec::with_capacity(config.samples);
    let client = &mut harness.client;
    for i in 0..config.samples {
        let full_index = config.prior_runs + i;
        if i % 2 == 0 {
            empty.push(measure_one(client, fixture, EMPTY_TASK, i).await);
            full.push(measure_one(client, fixture, FULL_TASK, full_index).await);
        } else {
            full.push(measure_one(client, fixture, FULL_TASK, full_index).await);
            empty.push(measure_one(client, fixture, EMPTY_TASK, i).await);
        }
    }
    (empty, full)
}

/// Reads a task's whole snapshot back and asserts it holds exactly runs
/// `0..expected`, in timestamp order.
async fn verify_snapshot(harness: &Harness, task: &str, expected: usize) {
    let mut client = harness.client.clone();
    let mut run_ids = Vec::with_capacity(expected);
    let mut page_token = String::new();
    loop {
        let request = GetTaskSnapshotRequest {
            task_id: task.to_owned(),
            page_size: READ_PAGE_SIZE,
            page_token,
            ..Default::default()
        };
        let page = client
            .get_task_snapshot(request)
            .await
            .unwrap_or_else(|status| panic!("GetTaskSnapshot of {task} failed: {status}"))
            .into_inner();
        run_ids.extend(page.runs.into_iter().map(|run| run.run_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        run_ids.len(),
        expected,
        "snapshot of {task} holds {} runs, expected {expected}",
        run_ids.len()
    );
    if let Some(wrong) = (0..expected).find(|&i| run_ids[i] != run_id(i)) {
        panic!(
            "snapshot of {task} holds {} at position {wrong}, expected {}",
            run_ids[wrong],
            run_id(wrong)
        );
    }
}

/// Summary statistics of one set of values, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Stats {
    count: usize,
    p50: f64,
    p99: f64,
    mean: f64,
}

impl Stats {
    fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut sorted: Vec<f64> = values.into_iter().collect();
        assert!(!sorted.is_empty(), "statistics of no samples");
        sorted.sort_by(f64::total_cmp);
        let count = sorted.len();
        Self {
            count,
            p50: percentile(&sorted, 0.50),
            p99: percentile(&sorted, 0.99),
            mean: sorted.iter().sum::<f64>() / count as f64,
        }
    }

    /// Calls per second over the time spent in these (sequential) calls.
    fn throughput(&self) -> f64 {
        1e6 / self.mean
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency_stats(samples: &[Sample]) -> Stats {
    Stats::of(samples.iter().map(|s| s.latency.as_secs_f64() * 1e6))
}

fn snapshot_stats(samples: &[Sample]) -> Stats {
    Stats::of(samples.iter().map(|s| s.snapshot_micros as f64))
}

fn print_row(label: &str, latency: &Stats, snapshot: &Stats) {
    println!(
        "{label:<26} {:>6} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
        latency.count,
        latency.p50,
        latency.p99,
        latency.mean,
        latency.throughput(),
        snapshot.p50,
        snapshot.p99,
    );
}

fn print_report(config: Config, empty: &[Sample], full: &[Sample], db_bytes: u64) {
    let (empty_latency, full_latency) = (latency_stats(empty), latency_stats(full));
    let (empty_snapshot, full_snapshot) = (snapshot_stats(empty), snapshot_stats(full));
    println!();
    println!(
        "{:<26} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "phase", "count", "p50 us", "p99 us", "mean us", "calls/s", "snap p50", "snap p99"
    );
    let empty_label = format!("A empty (runs 1..{})", config.samples);
    let full_label = format!("B {} prior runs", config.prior_runs);
    print_row(&empty_label, &empty_latency, &empty_snapshot);
    print_row(&full_label, &full_latency, &full_snapshot);
    println!();
    println!(
        "ratio B/A  call p50            {:.3}",
        full_latency.p50 / empty_latency.p50
    );
    println!(
        "ratio B/A  call p99            {:.3}",
        full_latency.p99 / empty_latency.p99
    );
    println!(
        "ratio B/A  snapshot write p50  {:.3}",
        full_snapshot.p50 / empty_snapshot.p50
    );
    println!(
        "ratio B/A  snapshot write p99  {:.3}",
        full_snapshot.p99 / empty_snapshot.p99
    );
    let runs = config.prior_runs + 2 * config.samples;
    println!(
        "database: {db_bytes} bytes for {runs} runs, snapshot entry and manifest each ({} bytes/run)",
        db_bytes / runs as u64
    );
    println!("(us = microseconds; call = client-observed CompleteRun latency;");
    println!(" snap = server-side WriteStatus.duration_micros of the snapshot write)");
}

#[tokio::main]
async fn main() {
    let config = Config::from_env();
    let fixture = Fixture::load();
    let mut harness = Harness::start().await;
    println!(
        "snapshot_growth: prior runs {}, samples {} per task, data dir {}",
        config.prior_runs,
        config.samples,
        harness.data_dir.path().display()
    );

    let took = prefill(&harness, &fixture, FULL_TASK, config.prior_runs).await;
    println!(
        "prefill: {} runs in {:.2} s ({:.0} calls/s, {PREFILL_CONCURRENCY} in flight)",
        config.prior_runs,
        took.as_secs_f64(),
        config.prior_runs as f64 / took.as_secs_f64().max(f64::EPSILON),
    );

    let (empty, full) = measure_interleaved(&mut harness, &fixture, config).await;

    verify_snapshot(&harness, EMPTY_TASK, config.samples).await;
    verify_snapshot(&harness, FULL_TASK, config.prior_runs + config.samples).await;
    println!(
        "verified: GetTaskSnapshot returns {} runs of A and {} runs of B, in order",
        config.samples,
        config.prior_runs + config.samples
    );

    let db_path = harness.database_path();
    let db_bytes = std::fs::metadata(&db_path)
        .unwrap_or_else(|err| panic!("reading metadata of {}: {err}", db_path.display()))
        .len();
    print_report(config, &empty, &full, db_bytes);

    harness.stop().await;
}
