//! Storage benchmark: every figure and ratio from one run on this machine,
//! printed as a Markdown table. runstore on SQLite, and on PostgreSQL,
//! against pgbench on the same PostgreSQL.
//!
//! - A lean gRPC load client (`client`): pre-encoded requests, N tasks over
//!   a few HTTP/2 connections, bounded by count and time, exact p50/p99.
//! - The real release server (`server`): `runstore serve` on 127.0.0.1:0,
//!   stopped with SIGTERM, on SQLite with a fresh temp data dir per round,
//!   or (the `pgstore*` scenarios) with `RUNSTORE_STORAGE=postgres://...`
//!   on the bench's own PostgreSQL, in a database dropped and re-created
//!   per round; its CPU time from /proc/<pid>/stat, its group-commit line
//!   (SQLite) from its JSON log.
//! - The anchor (`pg`): PostgreSQL 15 of our own, and pgbench running two
//!   autocommit upserts of the same summary per "run". Its CPU time (all
//!   its processes) is measured under pgbench and under runstore alike.
//!
//! Every acknowledged write is checked: read back through GetTaskSnapshot
//! (every run's summary byte for byte, in history order), then counted in
//! the database (SQLite's file, or PostgreSQL) after the server stopped.
//!
//! Run: `bench/sqlite` (installs PostgreSQL if missing, builds, runs this),
//! or `cargo bench --bench load`. `BENCH_QUICK=1`: ~1 s per scenario.
//! Other knobs: `BENCH_ONLY` (comma-separated scenario keys, see `--list`),
//! `BENCH_TMPDIR` (where data dirs go: its file system sets the fsync cost),
//! `BENCH_RESULTS` (bench/results), `BENCH_CONNECTIONS` (4),
//! `BENCH_PG_POOL_SIZE` (64: runstore's pool on PostgreSQL),
//! `RUNSTORE_BIN` (the server; default the one cargo built),
//! `BENCH_PG_BIN` (/usr/lib/postgresql/15/bin).

mod client;
mod lifecycle;
mod pg;
mod server;
mod watcher;

use std::{
    collections::BTreeMap,
    env,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use client::{Fixture, Keying, LoadResult, LoadSpec, Op, quantile_ms, read_back, run_load};
use server::{
    CommitReport, MachineTicks, Server, Storage, clock_ticks_per_sec, stored_rows,
    wal_checkpoint_seq,
};

/// Scenario keys, in the order they run (pairs that form a ratio run
/// next to each other, so drift on a shared machine hits both alike).
const SCENARIOS: &[(&str, &str)] = &[
    ("pg64", "pgbench -c 64 -j 2"),
    ("c64", "CompleteRun c64, 100 tasks (headline)"),
    (
        "pgstore64",
        "CompleteRun c64, 100 tasks, runstore on PostgreSQL",
    ),
    ("pg1", "pgbench -c 1"),
    ("c1", "CompleteRun c1, concurrent writes"),
    ("pgstore1", "CompleteRun c1, runstore on PostgreSQL"),
    ("c1seq", "CompleteRun c1, --write-mode sequential"),
    (
        "listtasks",
        "ListTasks pages (first, prefix, deep) c8, 100,000 tasks vs 100",
    ),
    (
        "pglisttasks",
        "the same ListTasks pages, runstore on PostgreSQL",
    ),
    (
        "fanout",
        "WatchRuns fan-out: CompleteRun c64 with 0, 1, 16, 64 watchers",
    ),
    (
        "pgfanout",
        "the same WatchRuns fan-out, runstore on PostgreSQL",
    ),
    ("hot", "CompleteRun c64, one hot task"),
    ("newtask", "CompleteRun c64, a new task per call"),
    ("sweep", "CompleteRun c8, c16, c32, c128 (for the peak)"),
    ("c256", "CompleteRun c256"),
    ("snapshot", "GetTaskSnapshot first page, 10,000 vs 100 runs"),
    ("wal", "CompleteRun c64 long enough for WAL checkpoints"),
];

const TASKS: u64 = 100;
const BIG_TASK: u64 = 1_000_000;
const SMALL_TASK: u64 = 1_000_001;
const PAGE_RUNS: usize = 100;
/// Default `--postgres-pool-size` of runstore on PostgreSQL
/// (`BENCH_PG_POOL_SIZE`): as many connections (backends) as pgbench -c 64
/// opens, so PostgreSQL serves both with the same concurrency. At c64 a
/// call has two writes in flight, so up to 128 want a connection: the pool
/// queues the rest, which costs less on two cores than twice the backends
/// contending for them.
const PG_POOL_SIZE: usize = 64;

/// A runstore variant of a scenario anchored by pgbench.
#[derive(Debug, Clone, Copy)]
struct Variant {
    key: &'static str,
    label: &'static str,
    mode: &'static str,
    /// On the bench's PostgreSQL rather than SQLite.
    postgres: bool,
}

impl Variant {
    const fn new(key: &'static str, label: &'static str, mode: &'static str) -> Self {
        Self {
            key,
            label,
            mode,
            postgres: false,
        }
    }

    const fn on_postgres(self) -> Self {
        Self {
            postgres: true,
            ..self
        }
    }

    /// Whether the server reports pairs sharing a SQLite commit.
    fn paired(&self) -> bool {
        self.mode == "concurrent" && !self.postgres
    }
}

/// The variants interleaved with pgbench -c 64, in this order per round.
const C64_VARIANTS: &[Variant] = &[
    Variant::new("c64", "CompleteRun c64, 100 tasks", "concurrent"),
    Variant::new(
        "pgstore64",
        "CompleteRun c64, 100 tasks, runstore on PostgreSQL",
        "concurrent",
    )
    .on_postgres(),
];

/// The variants interleaved with pgbench -c 1.
const C1_VARIANTS: &[Variant] = &[
    Variant::new("c1", "CompleteRun c1, concurrent", "concurrent"),
    Variant::new(
        "pgstore1",
        "CompleteRun c1, runstore on PostgreSQL",
        "concurrent",
    )
    .on_postgres(),
    Variant::new("c1seq", "CompleteRun c1, sequential", "sequential"),
];

/// Where a round's server keeps its data.
#[derive(Clone, Copy)]
enum Store<'a> {
    /// SQLite in a fresh temp data dir.
    Sqlite,
    /// This PostgreSQL, in [`pg::RUNSTORE_DB`] re-created empty.
    Postgres(&'a pg::Postgres),
}

/// One round's fresh storage, kept until its rows were counted.
enum Backing<'a> {
    Sqlite(tempfile::TempDir),
    Postgres {
        pg: &'a pg::Postgres,
        db: &'static str,
        url: String,
        pool_size: usize,
    },
}

impl<'a> Backing<'a> {
    fn storage(&self) -> Storage<'_> {
        match self {
            Backing::Sqlite(dir) => Storage::Sqlite(dir.path()),
            Backing::Postgres { url, pool_size, .. } => Storage::Postgres {
                url,
                pool_size: *pool_size,
            },
        }
    }

    fn postgres(&self) -> Option<&'a pg::Postgres> {
        match self {
            Backing::Sqlite(_) => None,
            Backing::Postgres { pg, .. } => Some(pg),
        }
    }

    /// Rows of snapshot_entries and manifests, once the server stopped.
    fn stored_rows(&self) -> anyhow::Result<(u64, u64)> {
        match self {
            Backing::Sqlite(dir) => stored_rows(dir.path()),
            Backing::Postgres { pg, db, .. } => pg.stored_rows(db),
        }
    }
}

/// CPU time in ticks: runstore's server, the load client (or pgbench),
/// PostgreSQL's processes (where it serves the load), and the machine.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    runstore: Option<u64>,
    postgres: Option<u64>,
    client: u64,
    machine: MachineTicks,
}

fn add_ticks(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

impl Cpu {
    /// The counters now.
    fn now(server: &Server, pg: Option<&pg::Postgres>) -> anyhow::Result<Self> {
        Ok(Self {
            runstore: Some(server.cpu_ticks()?),
            postgres: pg.map(pg::Postgres::cpu_ticks).transpose()?,
            client: own_ticks()?,
            machine: MachineTicks::now()?,
        })
    }

    /// The time spent from `earlier` to `self`.
    fn since(self, earlier: Self) -> Self {
        let diff = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        Self {
            runstore: diff(self.runstore, earlier.runstore),
            postgres: diff(self.postgres, earlier.postgres),
            client: self.client.saturating_sub(earlier.client),
            machine: self.machine.since(earlier.machine),
        }
    }

    fn add(&mut self, other: Self) {
        self.runstore = add_ticks(self.runstore, other.runstore);
        self.postgres = add_ticks(self.postgres, other.postgres);
        self.client += other.client;
        self.machine.add(other.machine);
    }
}

/// CPU µs per call, and the machine's busy share over the load.
#[derive(Debug, Clone, Copy)]
struct PerCall {
    runstore: Option<f64>,
    postgres: Option<f64>,
    client: f64,
    busy: f64,
}

impl PerCall {
    /// All the CPU one call took, on every process of the benchmark.
    fn total(&self) -> f64 {
        self.runstore.unwrap_or(0.0) + self.postgres.unwrap_or(0.0) + self.client
    }
}

struct Config {
    quick: bool,
    /// Seconds of a main scenario, a short one and the WAL one.
    secs: u64,
    short_secs: u64,
    long_secs: u64,
    max_calls: u64,
    connections: usize,
    pg_pool_size: usize,
    big_history: u64,
    /// Tasks of the large store of the ListTasks scenarios.
    many_tasks: u64,
    bin: PathBuf,
    pg_bin: PathBuf,
    tmp_root: PathBuf,
    results: PathBuf,
    only: Option<Vec<String>>,
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        let quick = env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let only = env::var("BENCH_ONLY")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .collect::<Vec<_>>()
            });
        if let Some(only) = &only {
            for key in only {
                if !SCENARIOS.iter().any(|(k, _)| k == key) {
                    bail!("BENCH_ONLY: unknown scenario {key:?} (run with --list)");
                }
            }
        }
        let connections = match env::var("BENCH_CONNECTIONS") {
            Ok(v) => v.parse().context("BENCH_CONNECTIONS")?,
            Err(_) => 4,
        };
        let pg_pool_size = match env::var("BENCH_PG_POOL_SIZE") {
            Ok(v) => v.parse().context("BENCH_PG_POOL_SIZE")?,
            Err(_) => PG_POOL_SIZE,
        };
        Ok(Self {
            quick,
            secs: if quick { 1 } else { 10 },
            short_secs: if quick { 1 } else { 5 },
            long_secs: if quick { 1 } else { 30 },
            max_calls: 2_000_000,
            connections,
            pg_pool_size,
            big_history: if quick { 1_000 } else { 10_000 },
            many_tasks: match env::var("BENCH_LIST_TASKS") {
                Ok(v) => {
                    let n: u64 = v.parse().context("BENCH_LIST_TASKS")?;
                    if n < 200 || !n.is_multiple_of(200) {
                        bail!("BENCH_LIST_TASKS: a multiple of 200, at least 200");
                    }
                    n
                }
                Err(_) if quick => 10_000,
                Err(_) => 100_000,
            },
            bin: env::var_os("RUNSTORE_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_runstore"))),
            pg_bin: env::var_os("BENCH_PG_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin")),
            tmp_root: env::var_os("BENCH_TMPDIR")
                .or_else(|| env::var_os("TMPDIR"))
                .map(PathBuf::from)
                .unwrap_or_else(env::temp_dir),
            results: env::var_os("BENCH_RESULTS")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("bench/results")),
            only,
        })
    }

    fn runs(&self, key: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|k| k == key))
    }

    fn spec(&self, concurrency: usize, secs: u64) -> LoadSpec {
        LoadSpec {
            concurrency,
            connections: self.connections,
            duration: Duration::from_secs(secs),
            max_calls: self.max_calls,
        }
    }
}

/// A ratio's target.
#[derive(Debug, Clone, Copy)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    fn met(self, value: f64) -> bool {
        match self {
            Target::AtLeast(t) => value >= t,
            Target::AtMost(t) => value <= t,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::AtLeast(t) => write!(f, "≥ {t}"),
            Target::AtMost(t) => write!(f, "≤ {t}"),
        }
    }
}

/// One line of the results table.
struct Row {
    scenario: String,
    concurrency: usize,
    calls: u64,
    errors: u64,
    ended: &'static str,
    rps: f64,
    p50: f64,
    p99: f64,
    /// Server-side p50 of the slower write (CompleteRun only).
    write_p50: Option<f64>,
    cpu: PerCall,
    per_commit: Option<f64>,
    pairs: Option<f64>,
    verified: String,
}

struct Bench {
    cfg: Config,
    fixture: Arc<Fixture>,
    ticks_per_sec: f64,
    rows: Vec<Row>,
    /// Figures the ratios are made of: a row's key (RPS), `<key>_p50`,
    /// `_p99`, `_cpu` (runstore), `_pg_cpu`, `_total_cpu`, `_pairs`; `peak`,
    /// `peak_c`.
    values: BTreeMap<String, f64>,
    notes: Vec<String>,
    /// Tables of their own (the fan-out's delivery), after the ratios.
    sections: Vec<String>,
    failures: Vec<String>,
}

/// What a runstore CompleteRun scenario measured, over one or more rounds
/// (each with a fresh server and data dir or database).
#[derive(Default)]
struct Measured {
    load: LoadResult,
    cpu: Cpu,
    commit: CommitReport,
    /// Σ pairs_together_share × calls, over the rounds.
    pairs_weighted: f64,
    read: u64,
    rows: u64,
    problems: Vec<String>,
    wal_max_bytes: u64,
    wal_restarts: u64,
    /// What the watchers received (fan-out scenarios).
    watch: watcher::Watched,
}

impl Measured {
    fn merge(&mut self, other: Measured) {
        self.load.merge(other.load);
        self.cpu.add(other.cpu);
        let (a, b) = (&mut self.commit, other.commit);
        a.commits += b.commits;
        a.writes += b.writes;
        a.partial_runs += b.partial_runs;
        a.checkpoints += b.checkpoints;
        a.checkpoints_complete += b.checkpoints_complete;
        a.checkpoint_max_frames = a.checkpoint_max_frames.max(b.checkpoint_max_frames);
        a.checkpoint_max_micros = a.checkpoint_max_micros.max(b.checkpoint_max_micros);
        self.pairs_weighted += other.pairs_weighted;
        self.read += other.read;
        self.rows += other.rows;
        self.problems.extend(other.problems);
        self.wal_max_bytes = self.wal_max_bytes.max(other.wal_max_bytes);
        self.wal_restarts += other.wal_restarts;
        self.watch.merge(other.watch);
        self.watch.sort();
    }

    fn pairs_share(&self) -> f64 {
        self.pairs_weighted / self.load.ok.max(1) as f64
    }
}

fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Flushes every dirty page on the machine (`sync`, at most 60 s) before
/// a load, so that write-back left by the previous scenario, or by other
/// jobs, weighs less on this one's fsyncs.
fn settle() {
    let Ok(mut child) = std::process::Command::new("sync").spawn() else {
        return;
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("sync took over 60 s; going on");
    let _ = child.kill();
    let _ = child.wait();
}

/// Samples the WAL file's size while a load runs.
struct WalWatch {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl WalWatch {
    fn start(path: PathBuf) -> Self {
        let max = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (max, stop) = (Arc::clone(&max), Arc::clone(&stop));
            tokio::spawn(async move {
                // Bounded by the flag, which the load's end sets.
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(meta) = tokio::fs::metadata(&path).await {
                        max.fetch_max(meta.len(), Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Self { max, stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.max.load(Ordering::Relaxed)
    }
}

impl Bench {
    fn data_dir(&self, name: &str) -> anyhow::Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new()
            .prefix(&format!("runstore-bench-{name}."))
            .tempdir_in(&self.cfg.tmp_root)?)
    }

    /// A round's fresh storage: a temp data dir, or the runstore database
    /// dropped and created again.
    fn backing<'a>(&self, store: Store<'a>) -> anyhow::Result<Backing<'a>> {
        self.backing_named(store, "complete-run", pg::RUNSTORE_DB)
    }

    /// A fresh data dir named after `name`, or the database `db` re-created.
    fn backing_named<'a>(
        &self,
        store: Store<'a>,
        name: &str,
        db: &'static str,
    ) -> anyhow::Result<Backing<'a>> {
        Ok(match store {
            Store::Sqlite => Backing::Sqlite(self.data_dir(name)?),
            Store::Postgres(pg) => {
                pg.recreate_database(db)?;
                Backing::Postgres {
                    pg,
                    db,
                    url: pg.url(db),
                    pool_size: self.cfg.pg_pool_size,
                }
            }
        })
    }

    fn cpu_us_per_call(&self, ticks: u64, calls: u64) -> f64 {
        ticks as f64 / self.ticks_per_sec * 1e6 / calls.max(1) as f64
    }

    fn per_call(&self, cpu: &Cpu, calls: u64) -> PerCall {
        PerCall {
            runstore: cpu.runstore.map(|t| self.cpu_us_per_call(t, calls)),
            postgres: cpu.postgres.map(|t| self.cpu_us_per_call(t, calls)),
            client: self.cpu_us_per_call(cpu.client, calls),
            busy: cpu.machine.busy_share(),
        }
    }

    fn fail(&mut self, what: String) {
        eprintln!("FAILED: {what}");
        self.failures.push(what);
    }

    /// One round: a fresh server and data dir (or database), one
    /// CompleteRun load (followed by `watchers` WatchRuns watchers from
    /// before it starts), then the checks: zero errors, every acknowledged
    /// run read back, every row stored, every watcher given every
    /// acknowledged run's event.
    #[allow(clippy::too_many_arguments)]
    async fn complete_run(
        &self,
        name: &str,
        store: Store<'_>,
        mode: &str,
        keying: Keying,
        concurrency: usize,
        secs: u64,
        watchers: usize,
    ) -> anyhow::Result<Measured> {
        eprintln!("==> {name}: {mode} writes, c{concurrency}, {secs} s");
        let backing = self.backing(store)?;
        let server = Server::start(&self.cfg.bin, backing.storage(), mode)?;
        let op = Arc::new(Op::CompleteRun {
            fixture: Arc::clone(&self.fixture),
            keying,
            first_run: 0,
        });
        let spec = self.cfg.spec(concurrency, secs);
        settle();
        let following = if watchers > 0 {
            let deadline = Instant::now() + spec.duration + lifecycle::WATCH_DRAIN * 2;
            Some(watcher::Watchers::start(server.addr, watchers, spec.max_calls, deadline).await?)
        } else {
            None
        };
        let wal = server.wal_path().map(WalWatch::start);
        let before = Cpu::now(&server, backing.postgres())?;
        let load = run_load(server.addr, op, spec).await?;
        // With watchers, the CPU counts their feed until each had every
        // event (the server's cost of sending what it still owed them).
        let watch = match following {
            Some(w) => {
                w.finish(load.ok, load.ok + load.errors, lifecycle::WATCH_DRAIN)
                    .await?
            }
            None => watcher::Watched::default(),
        };
        let cpu = Cpu::now(&server, backing.postgres())?.since(before);
        let wal_max_bytes = match wal {
            Some(wal) => wal.finish().await,
            None => 0,
        };
        let wal_restarts = server
            .wal_path()
            .and_then(|wal| wal_checkpoint_seq(&wal))
            .map_or(0, u64::from);
        let acked = load.ok;
        let mut problems = Vec::new();
        if load.errors > 0 {
            problems.push(format!(
                "{} failed calls (first: {})",
                load.errors,
                load.first_error.as_deref().unwrap_or("?")
            ));
        }
        let tasks: Vec<u64> = match keying {
            Keying::Tasks(k) => (0..k).collect(),
            Keying::One(task) => vec![task],
            // Every call its own task: read a spread of 200 of them.
            Keying::PerCall => (0..acked).step_by((acked / 200).max(1) as usize).collect(),
        };
        let expected_read = match keying {
            Keying::PerCall => tasks.len() as u64,
            _ => acked,
        };
        let read = read_back(server.addr, &self.fixture, tasks).await;
        let commit = server.stop()?;
        let read = match read {
            Ok(read) if read == expected_read => read,
            Ok(read) => {
                problems.push(format!("read back {read} runs, expected {expected_read}"));
                read
            }
            Err(err) => {
                problems.push(format!("read back: {err:#}"));
                0
            }
        };
        if commit.partial_runs > 0 {
            problems.push(format!("{} runs not fully written", commit.partial_runs));
        }
        let rows = backing.stored_rows()?;
        if rows != (acked, acked) {
            problems.push(format!(
                "database holds {} snapshot entries and {} manifests for {acked} acknowledged runs",
                rows.0, rows.1
            ));
        }
        problems.extend(watch.problems());
        Ok(Measured {
            watch,
            pairs_weighted: commit.pairs_together_share * acked as f64,
            load,
            cpu,
            commit,
            read,
            rows: rows.0,
            problems,
            wal_max_bytes,
            wal_restarts,
        })
    }

    /// Adds a row to the table and its figures, under `key`, to the values
    /// the ratios are made of.
    fn push_row(&mut self, key: Option<&str>, row: Row) {
        if let Some(key) = key {
            for (suffix, value) in [
                ("", Some(row.rps)),
                ("_p50", Some(row.p50)),
                ("_p99", Some(row.p99)),
                ("_cpu", row.cpu.runstore),
                ("_pg_cpu", row.cpu.postgres),
                ("_total_cpu", Some(row.cpu.total())),
                ("_pairs", row.pairs),
            ] {
                if let Some(value) = value {
                    self.values.insert(format!("{key}{suffix}"), value);
                }
            }
        }
        self.rows.push(row);
    }

    /// Adds the table row of a (merged) scenario; returns whether it passed
    /// its checks.
    fn push_run(
        &mut self,
        key: Option<&str>,
        name: &str,
        concurrency: usize,
        m: &Measured,
        paired: bool,
    ) -> bool {
        let verified = if m.problems.is_empty() {
            let watchers = match m.watch.watchers {
                0 => String::new(),
                n => format!(
                    "; each of {n} watcher(s) got every acknowledged run's event ({} in all)",
                    fmt_count(m.watch.events)
                ),
            };
            format!(
                "yes: {} read back, {} rows ×2{watchers}",
                fmt_count(m.read),
                fmt_count(m.rows)
            )
        } else {
            let what = m.problems.join("; ");
            self.fail(format!("{name}: {what}"));
            format!("**NO**: {what}")
        };
        let row = Row {
            scenario: name.to_owned(),
            concurrency,
            calls: m.load.ok + m.load.errors,
            errors: m.load.errors,
            ended: if m.load.count_capped { "count" } else { "time" },
            rps: m.load.rps(),
            p50: m.load.quantile_ms(0.50),
            p99: m.load.quantile_ms(0.99),
            write_p50: Some(m.load.write_quantile_ms(0.5)),
            cpu: self.per_call(&m.cpu, m.load.ok),
            per_commit: (m.commit.commits > 0)
                .then(|| m.commit.writes as f64 / m.commit.commits as f64),
            pairs: paired.then(|| m.pairs_share()),
            verified,
        };
        self.push_row(key, row);
        m.problems.is_empty()
    }

    /// A CompleteRun scenario on SQLite in one round, added to the table.
    async fn scenario(
        &mut self,
        key: Option<&str>,
        label: &str,
        keying: Keying,
        concurrency: usize,
        secs: u64,
    ) -> anyhow::Result<Measured> {
        let mode = "concurrent";
        let m = self
            .complete_run(label, Store::Sqlite, mode, keying, concurrency, secs, 0)
            .await?;
        self.push_run(key, label, concurrency, &m, true);
        Ok(m)
    }

    fn pgbench_round(
        &self,
        pg: &pg::Postgres,
        clients: usize,
        secs: u64,
    ) -> anyhow::Result<pg::PgbenchRun> {
        eprintln!(
            "==> pgbench -M prepared -c {clients} -j {}, {secs} s",
            clients.min(2)
        );
        settle();
        pg.pgbench(
            clients,
            secs,
            &self.fixture.plain_summary,
            &format!("c{clients}"),
        )
    }

    fn push_pgbench(&mut self, clients: usize, run: &pg::PgbenchRun) {
        let mut problems = Vec::new();
        if run.failed > 0 {
            problems.push(format!("{} failed transactions", run.failed));
        }
        if run.latencies_us.len() as u64 != run.transactions {
            problems.push(format!(
                "{} logged latencies for {} transactions",
                run.latencies_us.len(),
                run.transactions
            ));
        }
        // Random run ids: a collision (an update, not a new row) is possible
        // but vanishingly rare; more rows than transactions is not.
        if run.rows.0 != run.rows.1
            || run.rows.0 > run.transactions
            || run.rows.0 + 2 < run.transactions
        {
            problems.push(format!(
                "{} + {} rows for {} transactions",
                run.rows.0, run.rows.1, run.transactions
            ));
        }
        let verified = if problems.is_empty() {
            format!("yes: {} rows ×2", fmt_count(run.rows.0))
        } else {
            let what = problems.join("; ");
            self.fail(format!("pgbench c{clients}: {what}"));
            format!("**NO**: {what}")
        };
        let cpu = Cpu {
            runstore: None,
            postgres: Some(run.server_ticks),
            client: run.client_ticks,
            machine: run.machine,
        };
        let row = Row {
            scenario: format!("pgbench c{clients}: 2 autocommit upserts per run"),
            concurrency: clients,
            calls: run.transactions,
            errors: run.failed,
            ended: "time",
            rps: run.tps,
            p50: quantile_ms(&run.latencies_us, 0.5),
            p99: quantile_ms(&run.latencies_us, 0.99),
            write_p50: None,
            cpu: self.per_call(&cpu, run.transactions),
            per_commit: None,
            pairs: None,
            verified,
        };
        self.push_row(Some(&format!("pg{clients}")), row);
    }

    /// The pairs a target compares, interleaved round by round (pgbench,
    /// then each runstore variant), so drift on a shared machine hits both
    /// sides alike: rounds of `secs / rounds` each, merged. `pg` is the
    /// bench's PostgreSQL (needed by pgbench and the variants on it).
    async fn anchored(
        &mut self,
        pg: Option<&pg::Postgres>,
        with_pgbench: bool,
        clients: usize,
        variants: &[Variant],
    ) -> anyhow::Result<()> {
        let rounds = if self.cfg.quick { 1 } else { 2 };
        let secs = (self.cfg.secs / rounds).max(1);
        let mut pg_total: Option<pg::PgbenchRun> = None;
        let mut totals: Vec<Measured> = variants.iter().map(|_| Measured::default()).collect();
        for round in 0..rounds {
            if with_pgbench {
                let pg = pg.context("pgbench needs PostgreSQL")?;
                let run = self.pgbench_round(pg, clients, secs)?;
                match &mut pg_total {
                    Some(total) => total.merge(run),
                    None => pg_total = Some(run),
                }
            }
            for (v, total) in variants.iter().zip(&mut totals) {
                let store = if v.postgres {
                    Store::Postgres(pg.context("runstore on PostgreSQL needs PostgreSQL")?)
                } else {
                    Store::Sqlite
                };
                let label = format!("{} (round {}/{rounds})", v.label, round + 1);
                let m = self
                    .complete_run(
                        &label,
                        store,
                        v.mode,
                        Keying::Tasks(TASKS),
                        clients,
                        secs,
                        0,
                    )
                    .await?;
                total.merge(m);
            }
        }
        if let Some(run) = &pg_total {
            self.push_pgbench(clients, run);
        }
        for (v, m) in variants.iter().zip(&totals) {
            let label = if rounds > 1 {
                format!("{} ({rounds} × {secs} s, interleaved)", v.label)
            } else {
                v.label.to_owned()
            };
            self.push_run(Some(v.key), &label, clients, m, v.paired());
        }
        Ok(())
    }

    async fn snapshot_reads(&mut self) -> anyhow::Result<()> {
        let name = "snapshot";
        let big = self.cfg.big_history;
        eprintln!(
            "==> {name}: prefill {} + {PAGE_RUNS} runs, then first pages",
            fmt_count(big)
        );
        let dir = self.data_dir(name)?;
        let server = Server::start(&self.cfg.bin, Storage::Sqlite(dir.path()), "concurrent")?;
        let prefill = |count| LoadSpec {
            concurrency: 64,
            connections: self.cfg.connections,
            duration: Duration::from_secs(300),
            max_calls: count,
        };
        for (task, count) in [(BIG_TASK, big), (SMALL_TASK, PAGE_RUNS as u64)] {
            let op = Arc::new(Op::CompleteRun {
                fixture: Arc::clone(&self.fixture),
                keying: Keying::One(task),
                first_run: 0,
            });
            let load = run_load(server.addr, op, prefill(count)).await?;
            if load.ok != count {
                bail!(
                    "prefill of task {task}: {} of {count} runs written ({:?})",
                    load.ok,
                    load.first_error
                );
            }
        }
        let read = read_back(server.addr, &self.fixture, [BIG_TASK, SMALL_TASK]).await?;
        if read != big + PAGE_RUNS as u64 {
            bail!("prefill read back {read} runs");
        }
        settle();
        // Two rounds, alternating, so drift hits both tasks alike.
        let half = Duration::from_millis(self.cfg.secs * 1000 / 4).max(Duration::from_millis(500));
        let spec = LoadSpec {
            concurrency: 64,
            connections: self.cfg.connections,
            duration: half,
            max_calls: self.cfg.max_calls,
        };
        let mut results: [(LoadResult, Cpu); 2] = Default::default();
        for _round in 0..2 {
            for (i, task) in [BIG_TASK, SMALL_TASK].into_iter().enumerate() {
                let op = Arc::new(Op::first_page(task, PAGE_RUNS));
                let before = Cpu::now(&server, None)?;
                let load = run_load(server.addr, op, spec).await?;
                results[i].1.add(Cpu::now(&server, None)?.since(before));
                results[i].0.merge(load);
            }
        }
        server.stop()?;
        for (i, (label, key)) in [
            (
                format!(
                    "GetTaskSnapshot first page, task of {} runs",
                    fmt_count(big)
                ),
                "snap_big",
            ),
            (
                format!("GetTaskSnapshot first page, task of {PAGE_RUNS} runs"),
                "snap_small",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let (load, cpu) = &results[i];
            let verified = if load.errors == 0 {
                format!("yes: every page {PAGE_RUNS} runs of the task")
            } else {
                let what = format!(
                    "{} failed calls (first: {})",
                    load.errors,
                    load.first_error.as_deref().unwrap_or("?")
                );
                self.fail(format!("{label}: {what}"));
                format!("**NO**: {what}")
            };
            let row = Row {
                scenario: label,
                concurrency: 64,
                calls: load.ok + load.errors,
                errors: load.errors,
                ended: if load.count_capped { "count" } else { "time" },
                rps: load.rps(),
                p50: load.quantile_ms(0.5),
                p99: load.quantile_ms(0.99),
                write_p50: None,
                cpu: self.per_call(cpu, load.ok),
                per_commit: None,
                pairs: None,
                verified,
            };
            self.push_row(Some(key), row);
        }
        Ok(())
    }

    /// The scenarios pgbench anchors: its run and each selected variant,
    /// interleaved.
    async fn anchored_group(
        &mut self,
        pg: Option<&pg::Postgres>,
        clients: usize,
        variants: &[Variant],
    ) -> anyhow::Result<()> {
        let with_pgbench = self.cfg.runs(&format!("pg{clients}"));
        let variants: Vec<Variant> = variants
            .iter()
            .filter(|v| self.cfg.runs(v.key))
            .copied()
            .collect();
        if with_pgbench || !variants.is_empty() {
            self.anchored(pg, with_pgbench, clients, &variants).await?;
        }
        Ok(())
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let mut pg = None;
        if [
            "pg64",
            "pg1",
            "pgstore64",
            "pgstore1",
            "pglisttasks",
            "pgfanout",
        ]
        .iter()
        .any(|key| self.cfg.runs(key))
        {
            eprintln!("==> start PostgreSQL");
            pg = Some(pg::Postgres::start(&self.cfg.tmp_root, &self.cfg.pg_bin)?);
        }
        let short = self.cfg.short_secs;
        let tasks = Keying::Tasks(TASKS);
        let mut peak: Vec<(usize, f64)> = Vec::new();

        self.anchored_group(pg.as_ref(), 64, C64_VARIANTS).await?;
        if let Some(&rps) = self.values.get("c64") {
            peak.push((64, rps));
        }
        self.anchored_group(pg.as_ref(), 1, C1_VARIANTS).await?;
        self.lifecycle(pg.as_ref()).await?;
        if let Some(pg) = pg.take() {
            pg.stop()?;
        }
        if self.cfg.runs("hot") {
            self.scenario(
                Some("hot"),
                "CompleteRun c64, one hot task",
                Keying::One(0),
                64,
                short,
            )
            .await?;
        }
        if self.cfg.runs("newtask") {
            self.scenario(
                Some("newtask"),
                "CompleteRun c64, new task per call",
                Keying::PerCall,
                64,
                short,
            )
            .await?;
        }
        if self.cfg.runs("sweep") {
            for c in [8, 16, 32, 128] {
                let label = format!("CompleteRun c{c}, 100 tasks");
                let m = self.scenario(None, &label, tasks, c, short).await?;
                peak.push((c, m.load.rps()));
            }
        }
        if self.cfg.runs("c256") {
            // As long as every run it is compared with: a longer run grows
            // the database and pays more checkpoints, which is not overload.
            let label = "CompleteRun c256, 100 tasks";
            let m = self
                .scenario(Some("c256"), label, tasks, 256, short)
                .await?;
            peak.push((256, m.load.rps()));
        }
        if let Some(&(c, rps)) = peak.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
            self.values.insert("peak".into(), rps);
            self.values.insert("peak_c".into(), c as f64);
        }
        if self.cfg.runs("snapshot") {
            self.snapshot_reads().await?;
        }
        if self.cfg.runs("wal") {
            let long = self.cfg.long_secs;
            let label = format!("CompleteRun c64, 100 tasks, {long} s (WAL checkpoints)");
            let m = self.scenario(Some("wal"), &label, tasks, 64, long).await?;
            self.notes.push(wal_note(&m));
        }
        Ok(())
    }

    fn ratio(&self, a: &str, b: &str) -> Option<f64> {
        Some(self.values.get(a)? / self.values.get(b)?)
    }

    fn report(&self, elapsed: Duration, load_before: &str) -> String {
        let mut out = self.results_table();
        let _ = writeln!(out);
        out.push_str(&self.ratio_table());
        let _ = writeln!(out);
        for section in &self.sections {
            out.push_str(section);
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "Machine and run:");
        let _ = writeln!(out);
        let notes = self
            .machine_notes(elapsed, load_before)
            .into_iter()
            .chain(self.cpu_notes())
            .chain(self.notes.iter().cloned());
        for note in notes {
            let _ = writeln!(out, "- {note}");
        }
        out
    }

    fn results_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| scenario | conc | calls | errors | ended by | RPS | p50 ms | p99 ms | server write p50 ms | runstore CPU µs/call | PostgreSQL CPU µs/call | client CPU µs/call | machine CPU busy | writes/commit | pairs together | writes verified |"
        );
        let _ = writeln!(
            out,
            "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        );
        let or_dash =
            |v: Option<f64>, decimals: usize| v.map_or("–".into(), |v| format!("{v:.decimals$}"));
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {:.0} | {:.0} % | {} | {} | {} |",
                r.scenario,
                r.concurrency,
                fmt_count(r.calls),
                r.errors,
                r.ended,
                r.rps,
                r.p50,
                r.p99,
                or_dash(r.write_p50, 2),
                or_dash(r.cpu.runstore, 0),
                or_dash(r.cpu.postgres, 0),
                r.cpu.client,
                r.cpu.busy * 100.0,
                or_dash(r.per_commit, 1),
                r.pairs
                    .map_or("–".into(), |s| format!("{:.1} %", s * 100.0)),
                r.verified
            );
        }
        out
    }

    fn ratio_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| ratio (same run) | value | target | met |");
        let _ = writeln!(out, "| --- | ---: | ---: | --- |");
        let peak_c = self.values.get("peak_c").map_or(0, |c| *c as usize);
        let r = |a, b| self.ratio(a, b);
        let targets = vec![
            (
                "RPS c64 / pgbench c64 TPS".into(),
                r("c64", "pg64"),
                Target::AtLeast(1.2),
            ),
            (
                "RPS c64 runstore on PostgreSQL / pgbench c64 TPS".into(),
                r("pgstore64", "pg64"),
                Target::AtLeast(0.5),
            ),
            (
                "p50 c1 sequential / concurrent".into(),
                r("c1seq_p50", "c1_p50"),
                Target::AtLeast(1.5),
            ),
            (
                "p50 c1 / pgbench c1 p50".into(),
                r("c1_p50", "pg1_p50"),
                Target::AtMost(0.7),
            ),
            (
                format!(
                    "snapshot first-page RPS {} runs / {PAGE_RUNS} runs",
                    fmt_count(self.cfg.big_history)
                ),
                r("snap_big", "snap_small"),
                Target::AtLeast(0.8),
            ),
            (
                format!("RPS c256 / peak (c{peak_c})"),
                r("c256", "peak"),
                Target::AtLeast(0.9),
            ),
        ];
        let targets = targets.into_iter().chain(self.lifecycle_targets());
        for (name, value, target) in targets {
            let _ = writeln!(
                out,
                "| {name} | {} | {target} | {} |",
                value.map_or("not run".into(), |v| format!("{v:.2}")),
                match value.map(|v| target.met(v)) {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "–",
                }
            );
        }
        let info = [
            (
                "RPS c64 runstore on PostgreSQL / runstore on SQLite",
                r("pgstore64", "c64"),
            ),
            (
                "p50 c1 runstore on PostgreSQL / pgbench c1 p50",
                r("pgstore1_p50", "pg1_p50"),
            ),
            (
                "p50 c1 runstore on PostgreSQL / runstore on SQLite",
                r("pgstore1_p50", "c1_p50"),
            ),
            (
                "PostgreSQL CPU per call, runstore on PostgreSQL c64 / pgbench c64",
                r("pgstore64_pg_cpu", "pg64_pg_cpu"),
            ),
            (
                "CPU per call of all processes, runstore on PostgreSQL c64 / pgbench c64",
                r("pgstore64_total_cpu", "pg64_total_cpu"),
            ),
            ("RPS c64 hot task / 100 tasks", r("hot", "c64")),
            ("RPS c64 new task per call / 100 tasks", r("newtask", "c64")),
            (
                "p99 c64 long (WAL checkpoints) / p99 c64",
                r("wal_p99", "c64_p99"),
            ),
            (
                "server CPU per call, runstore on SQLite c64 / PostgreSQL under pgbench c64",
                r("c64_cpu", "pg64_pg_cpu"),
            ),
            (
                "pairs sharing a commit, c1",
                self.values.get("c1_pairs").copied(),
            ),
            (
                "pairs sharing a commit, c64",
                self.values.get("c64_pairs").copied(),
            ),
        ];
        for (name, value) in info {
            if let Some(v) = value {
                let _ = writeln!(out, "| {name} | {v:.2} | – | – |");
            }
        }
        out
    }

    /// For each row PostgreSQL served: the CPU a call took on every
    /// process, the throughput that allows on this machine's CPUs, and
    /// whether they were saturated.
    fn cpu_notes(&self) -> Vec<String> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.rows
            .iter()
            .filter(|r| r.cpu.postgres.is_some())
            .map(|r| {
                let c = &r.cpu;
                let total = c.total();
                let ceiling = cpus as f64 * 1e6 / total.max(1e-9);
                // The share of the machine's CPU time this benchmark's
                // processes took.
                let own = r.rps / ceiling;
                let bound = if c.busy < 0.9 {
                    "not CPU-bound: it waited (commits, locks, round trips) with CPU to spare"
                        .to_owned()
                } else if own >= 0.75 {
                    "CPU-bound: its own processes saturated the CPUs".to_owned()
                } else {
                    format!(
                        "the CPUs were saturated, {:.0} % of them by other work (kernel work \
                         charged to no process, other jobs): it was short of CPU that others took",
                        (c.busy - own).max(0.0) * 100.0
                    )
                };
                format!(
                    "{}: {} CPU µs per call (runstore {}, PostgreSQL {:.0}, client {:.0}); \
                     at that cost {cpus} CPUs serve at most {:.0} calls/s, it ran {:.0}, so its \
                     processes used {:.0} % of the CPUs; the machine's were {:.0} % busy: {bound}.",
                    r.scenario,
                    total.round(),
                    c.runstore.map_or("–".into(), |u| format!("{u:.0}")),
                    c.postgres.unwrap_or(0.0),
                    c.client,
                    ceiling,
                    r.rps,
                    own * 100.0,
                    c.busy * 100.0,
                )
            })
            .collect()
    }

    fn machine_notes(&self, elapsed: Duration, load_before: &str) -> Vec<String> {
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':').map(|(_, m)| m.trim().to_owned()))
            })
            .unwrap_or_else(|| "?".into());
        let fs = std::process::Command::new("findmnt")
            .args(["-n", "-o", "FSTYPE,SOURCE", "--target"])
            .arg(&self.cfg.tmp_root)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        vec![
            format!(
                "{cpus} CPUs ({model}); load average {load_before} before, {} after; {} in all{}.",
                loadavg(),
                humantime::format_duration(Duration::from_secs(elapsed.as_secs())),
                if self.cfg.quick { " (BENCH_QUICK: ~1 s per scenario, smoke figures only)" } else { "" }
            ),
            format!(
                "Data dirs in {} ({fs}); runstore: SQLite WAL, synchronous=FULL, one committer thread; \
                 PostgreSQL: fsync=on, synchronous_commit=on, shared_buffers=256MB, max_connections=300; \
                 runstore on PostgreSQL: that same server over TCP on 127.0.0.1 (no TLS), database {} \
                 dropped and re-created per round, --postgres-pool-size {}, each write \
                 one autocommit statement.",
                self.cfg.tmp_root.display(),
                pg::RUNSTORE_DB,
                self.cfg.pg_pool_size,
            ),
            format!(
                "Load client: {} HTTP/2 connections, 2 tokio workers, requests pre-encoded (the fixture summary, {} bytes, ids patched in place); \
                 pgbench: -M prepared, -j 2 (-j 1 at -c 1), one transaction = both upserts = one run. \
                 Client and server share the machine's CPUs, as do other users' jobs.",
                self.cfg.connections,
                self.fixture.summary_len()
            ),
            "RPS counts OK calls over the scenario's wall time; p50/p99 are exact (every call's latency); \
             server write p50 is the median of each call's slower WriteStatus.duration_micros (queueing for, and waiting on, the commit); \
             CPU is utime+stime from /proc over the load, divided by the calls: runstore's server process; \
             PostgreSQL's postmaster, its live children and its reaped backends (under pgbench and under runstore on PostgreSQL); \
             this load client or pgbench; machine CPU busy is the busy share of all CPUs from /proc/stat (other users' jobs included)."
                .into(),
        ]
    }
}

/// What the WAL did during the long scenario, and who checkpointed it.
fn wal_note(m: &Measured) -> String {
    // A WAL frame is a 24-byte header and a 4096-byte page.
    let frames = m.wal_max_bytes.saturating_sub(32) / (24 + 4096);
    let c = &m.commit;
    let who = if c.checkpoints > 0 {
        format!(
            "the committer's connection does not checkpoint; the server's checkpointer thread logged {} \
             PASSIVE checkpoints, {} of them complete (every frame copied), the WAL at up to {} frames, \
             the longest {:.1} ms",
            c.checkpoints,
            c.checkpoints_complete,
            fmt_count(c.checkpoint_max_frames),
            c.checkpoint_max_micros as f64 / 1000.0
        )
    } else {
        "the server logged no checkpoints of its own: SQLite's auto-checkpoint (on by default, \
         every 1000 pages) ran them inside the commit that passed the mark"
            .to_owned()
    };
    format!(
        "WAL scenario: {who}. The WAL file peaked at {:.1} MiB ({} frames, {} the 1000-page mark) \
         and was restarted from its start {} times (the WAL header's checkpoint sequence); \
         {} writes in {} commits. p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms over {} calls.",
        m.wal_max_bytes as f64 / (1 << 20) as f64,
        fmt_count(frames),
        if frames >= 1000 { "past" } else { "short of" },
        m.wal_restarts,
        fmt_count(c.writes),
        fmt_count(c.commits),
        m.load.quantile_ms(0.99),
        m.load.quantile_ms(0.999),
        m.load.quantile_ms(1.0),
        fmt_count(m.load.ok),
    )
}

/// This process's CPU time so far (the load client), in ticks.
fn own_ticks() -> anyhow::Result<u64> {
    Ok(server::proc_stat(std::process::id())?.own())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if env::args().any(|a| a == "--list") {
        for (key, what) in SCENARIOS {
            println!("{key:10} {what}");
        }
        return Ok(());
    }
    let cfg = Config::from_env()?;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run-summary.json");
    let fixture = Arc::new(Fixture::load(&fixture)?);
    eprintln!(
        "server {}; data dirs in {}; {}",
        cfg.bin.display(),
        cfg.tmp_root.display(),
        if cfg.quick { "quick mode" } else { "full run" }
    );
    let results = cfg.results.clone();
    let mut bench = Bench {
        cfg,
        fixture,
        ticks_per_sec: clock_ticks_per_sec(),
        rows: Vec::new(),
        values: BTreeMap::new(),
        notes: Vec::new(),
        sections: Vec::new(),
        failures: Vec::new(),
    };
    let started = Instant::now();
    let load_before = loadavg();
    let outcome = bench.run().await;
    let report = bench.report(started.elapsed(), &load_before);
    println!("\n{report}");
    std::fs::create_dir_all(&results)?;
    let path = results.join("sqlite.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("written to {}", path.display());
    outcome?;
    if !bench.failures.is_empty() {
        bail!(
            "{} check(s) failed: {}",
            bench.failures.len(),
            bench.failures.join("; ")
        );
    }
    Ok(())
}
