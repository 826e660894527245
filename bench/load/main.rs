//! SQLite storage benchmark: every figure and ratio from one run on this
//! machine, printed as a Markdown table.
//!
//! - A lean gRPC load client (`client`): pre-encoded requests, N tasks over
//!   a few HTTP/2 connections, bounded by count and time, exact p50/p99.
//! - The real release server (`server`): `runstore serve` on 127.0.0.1:0
//!   with a fresh temp data dir per scenario, stopped with SIGTERM; its CPU
//!   time from /proc/<pid>/stat, its group-commit line from its JSON log.
//! - The anchor (`pg`): PostgreSQL 15 of our own, and pgbench running two
//!   autocommit upserts of the same summary per "run".
//!
//! Every acknowledged write is checked: read back through GetTaskSnapshot
//! (every run's summary byte for byte, in history order), then counted in
//! the database after the server stopped.
//!
//! Run: `bench/sqlite` (installs PostgreSQL if missing, builds, runs this),
//! or `cargo bench --bench load`. `BENCH_QUICK=1`: ~1 s per scenario.
//! Other knobs: `BENCH_ONLY` (comma-separated scenario keys, see `--list`),
//! `BENCH_TMPDIR` (where data dirs go: its file system sets the fsync cost),
//! `BENCH_RESULTS` (bench/results), `BENCH_CONNECTIONS` (4),
//! `RUNSTORE_BIN` (the server; default the one cargo built),
//! `BENCH_PG_BIN` (/usr/lib/postgresql/15/bin).

mod client;
mod pg;
mod server;

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
use server::{CommitReport, Server, clock_ticks_per_sec, stored_rows, wal_checkpoint_seq};

/// Scenario keys, in the order they run (pairs that form a ratio run
/// next to each other, so drift on a shared machine hits both alike).
const SCENARIOS: &[(&str, &str)] = &[
    ("pg64", "pgbench -c 64 -j 2"),
    ("c64", "CompleteRun c64, 100 tasks (headline)"),
    ("pg1", "pgbench -c 1"),
    ("c1", "CompleteRun c1, concurrent writes"),
    ("c1seq", "CompleteRun c1, --write-mode sequential"),
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

struct Config {
    quick: bool,
    /// Seconds of a main scenario, a short one and the WAL one.
    secs: u64,
    short_secs: u64,
    long_secs: u64,
    max_calls: u64,
    connections: usize,
    big_history: u64,
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
        Ok(Self {
            quick,
            secs: if quick { 1 } else { 10 },
            short_secs: if quick { 1 } else { 5 },
            long_secs: if quick { 1 } else { 30 },
            max_calls: 2_000_000,
            connections,
            big_history: if quick { 1_000 } else { 10_000 },
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
    cpu_us: f64,
    client_us: f64,
    per_commit: Option<f64>,
    pairs: Option<f64>,
    verified: String,
}

struct Bench {
    cfg: Config,
    fixture: Arc<Fixture>,
    ticks_per_sec: f64,
    rows: Vec<Row>,
    /// Figures the ratios are made of, by key.
    values: BTreeMap<&'static str, f64>,
    notes: Vec<String>,
    failures: Vec<String>,
}

/// What a runstore CompleteRun scenario measured, over one or more rounds
/// (each with a fresh server and data dir).
#[derive(Default)]
struct Measured {
    load: LoadResult,
    server_ticks: u64,
    client_ticks: u64,
    commit: CommitReport,
    /// Σ pairs_together_share × calls, over the rounds.
    pairs_weighted: f64,
    read: u64,
    rows: u64,
    problems: Vec<String>,
    wal_max_bytes: u64,
    wal_restarts: u64,
}

impl Measured {
    fn merge(&mut self, other: Measured) {
        self.load.merge(other.load);
        self.server_ticks += other.server_ticks;
        self.client_ticks += other.client_ticks;
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

    fn cpu_us_per_call(&self, ticks: u64, calls: u64) -> f64 {
        ticks as f64 / self.ticks_per_sec * 1e6 / calls.max(1) as f64
    }

    fn fail(&mut self, what: String) {
        eprintln!("FAILED: {what}");
        self.failures.push(what);
    }

    /// One round: a fresh server and data dir, one CompleteRun load, then
    /// the checks: zero errors, every acknowledged run read back, every row
    /// stored.
    async fn complete_run(
        &self,
        name: &str,
        mode: &str,
        keying: Keying,
        concurrency: usize,
        secs: u64,
    ) -> anyhow::Result<Measured> {
        eprintln!("==> {name}: {mode} writes, c{concurrency}, {secs} s");
        let dir = self.data_dir("complete-run")?;
        let server = Server::start(&self.cfg.bin, dir.path(), mode)?;
        let op = Arc::new(Op::CompleteRun {
            fixture: Arc::clone(&self.fixture),
            keying,
            first_run: 0,
        });
        settle();
        let wal = WalWatch::start(server.wal_path());
        let before = server.cpu_ticks()?;
        let client_before = own_ticks()?;
        let load = run_load(server.addr, op, self.cfg.spec(concurrency, secs)).await?;
        let client_ticks = own_ticks()? - client_before;
        let server_ticks = server.cpu_ticks()? - before;
        let wal_max_bytes = wal.finish().await;
        let wal_restarts = wal_checkpoint_seq(&server.wal_path()).map_or(0, u64::from);
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
        let rows = stored_rows(dir.path())?;
        if rows != (acked, acked) {
            problems.push(format!(
                "database holds {} snapshot entries and {} manifests for {acked} acknowledged runs",
                rows.0, rows.1
            ));
        }
        Ok(Measured {
            pairs_weighted: commit.pairs_together_share * acked as f64,
            load,
            server_ticks,
            client_ticks,
            commit,
            read,
            rows: rows.0,
            problems,
            wal_max_bytes,
            wal_restarts,
        })
    }

    /// Adds the table row of a (merged) scenario; returns whether it passed
    /// its checks.
    fn push_run(&mut self, name: &str, concurrency: usize, m: &Measured, paired: bool) -> bool {
        let verified = if m.problems.is_empty() {
            format!(
                "yes: {} read back, {} rows ×2",
                fmt_count(m.read),
                fmt_count(m.rows)
            )
        } else {
            let what = m.problems.join("; ");
            self.fail(format!("{name}: {what}"));
            format!("**NO**: {what}")
        };
        self.rows.push(Row {
            scenario: name.to_owned(),
            concurrency,
            calls: m.load.ok + m.load.errors,
            errors: m.load.errors,
            ended: if m.load.count_capped { "count" } else { "time" },
            rps: m.load.rps(),
            p50: m.load.quantile_ms(0.50),
            p99: m.load.quantile_ms(0.99),
            write_p50: Some(m.load.write_quantile_ms(0.5)),
            cpu_us: self.cpu_us_per_call(m.server_ticks, m.load.ok),
            client_us: self.cpu_us_per_call(m.client_ticks, m.load.ok),
            per_commit: (m.commit.commits > 0)
                .then(|| m.commit.writes as f64 / m.commit.commits as f64),
            pairs: paired.then(|| m.pairs_share()),
            verified,
        });
        m.problems.is_empty()
    }

    /// A CompleteRun scenario in one round, added to the table.
    async fn scenario(
        &mut self,
        label: &str,
        mode: &str,
        keying: Keying,
        concurrency: usize,
        secs: u64,
    ) -> anyhow::Result<Measured> {
        let m = self
            .complete_run(label, mode, keying, concurrency, secs)
            .await?;
        self.push_run(label, concurrency, &m, mode == "concurrent");
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
        let p50 = quantile_ms(&run.latencies_us, 0.5);
        let p99 = quantile_ms(&run.latencies_us, 0.99);
        let cpu_us = self.cpu_us_per_call(run.server_ticks, run.transactions);
        let client_us = self.cpu_us_per_call(run.client_ticks, run.transactions);
        self.rows.push(Row {
            scenario: format!("pgbench c{clients}: 2 autocommit upserts per run"),
            concurrency: clients,
            calls: run.transactions,
            errors: run.failed,
            ended: "time",
            rps: run.tps,
            p50,
            p99,
            write_p50: None,
            cpu_us,
            client_us,
            per_commit: None,
            pairs: None,
            verified,
        });
        let (tps, p50_key, cpu) = if clients == 1 {
            ("pg1", "pg1_p50", "pg1_cpu")
        } else {
            ("pg64", "pg64_p50", "pg64_cpu")
        };
        self.values.insert(tps, run.tps);
        self.values.insert(p50_key, p50);
        self.values.insert(cpu, cpu_us);
    }

    /// The pairs a target compares, interleaved round by round (pgbench,
    /// then each runstore variant), so drift on a shared machine hits both
    /// sides alike: rounds of `secs / rounds` each, merged.
    async fn anchored(
        &mut self,
        pg: Option<&pg::Postgres>,
        clients: usize,
        variants: &[(&str, &'static str, &'static str)],
    ) -> anyhow::Result<Vec<Measured>> {
        let rounds = if self.cfg.quick { 1 } else { 2 };
        let secs = (self.cfg.secs / rounds).max(1);
        let mut pg_total: Option<pg::PgbenchRun> = None;
        let mut totals: Vec<Measured> = variants.iter().map(|_| Measured::default()).collect();
        for round in 0..rounds {
            if let Some(pg) = pg {
                let run = self.pgbench_round(pg, clients, secs)?;
                match &mut pg_total {
                    Some(total) => total.merge(run),
                    None => pg_total = Some(run),
                }
            }
            for (i, (label, mode, _)) in variants.iter().enumerate() {
                let label = format!("{label} (round {}/{rounds})", round + 1);
                let m = self
                    .complete_run(&label, mode, Keying::Tasks(TASKS), clients, secs)
                    .await?;
                totals[i].merge(m);
            }
        }
        if let Some(run) = &pg_total {
            self.push_pgbench(clients, run);
        }
        for ((label, mode, _), m) in variants.iter().zip(&totals) {
            let label = if rounds > 1 {
                format!("{label} ({rounds} × {secs} s, interleaved)")
            } else {
                (*label).to_owned()
            };
            self.push_run(&label, clients, m, *mode == "concurrent");
        }
        Ok(totals)
    }

    async fn snapshot_reads(&mut self) -> anyhow::Result<()> {
        let name = "snapshot";
        let big = self.cfg.big_history;
        eprintln!(
            "==> {name}: prefill {} + {PAGE_RUNS} runs, then first pages",
            fmt_count(big)
        );
        let dir = self.data_dir(name)?;
        let server = Server::start(&self.cfg.bin, dir.path(), "concurrent")?;
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
        let mut results: [(LoadResult, u64, u64); 2] = Default::default();
        for _round in 0..2 {
            for (i, task) in [BIG_TASK, SMALL_TASK].into_iter().enumerate() {
                let op = Arc::new(Op::first_page(task, PAGE_RUNS));
                let before = server.cpu_ticks()?;
                let client_before = own_ticks()?;
                let load = run_load(server.addr, op, spec).await?;
                results[i].2 += own_ticks()? - client_before;
                results[i].1 += server.cpu_ticks()? - before;
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
            let (load, ticks, client_ticks) = &results[i];
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
            self.values.insert(key, load.rps());
            self.rows.push(Row {
                scenario: label,
                concurrency: 64,
                calls: load.ok + load.errors,
                errors: load.errors,
                ended: if load.count_capped { "count" } else { "time" },
                rps: load.rps(),
                p50: load.quantile_ms(0.5),
                p99: load.quantile_ms(0.99),
                write_p50: None,
                cpu_us: self.cpu_us_per_call(*ticks, load.ok),
                client_us: self.cpu_us_per_call(*client_ticks, load.ok),
                per_commit: None,
                pairs: None,
                verified,
            });
        }
        Ok(())
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let mut pg = None;
        if self.cfg.runs("pg64") || self.cfg.runs("pg1") {
            eprintln!("==> start PostgreSQL");
            pg = Some(pg::Postgres::start(&self.cfg.tmp_root, &self.cfg.pg_bin)?);
        }
        let short = self.cfg.short_secs;
        let tasks = Keying::Tasks(TASKS);
        let mut peak: Vec<(usize, f64)> = Vec::new();

        let (run_pg64, run_pg1) = (self.cfg.runs("pg64"), self.cfg.runs("pg1"));
        if self.cfg.runs("c64") || self.cfg.runs("pg64") {
            let variants: &[(&str, &str, &str)] = if self.cfg.runs("c64") {
                &[("CompleteRun c64, 100 tasks", "concurrent", "c64")]
            } else {
                &[]
            };
            let pg64 = pg.as_ref().filter(|_| run_pg64);
            let m = self.anchored(pg64, 64, variants).await?;
            if let Some(m) = m.first() {
                self.values.insert("c64", m.load.rps());
                self.values.insert("c64_p99", m.load.quantile_ms(0.99));
                self.values
                    .insert("c64_cpu", self.cpu_us_per_call(m.server_ticks, m.load.ok));
                self.values.insert("c64_pairs", m.pairs_share());
                peak.push((64, m.load.rps()));
            }
        }
        if self.cfg.runs("c1") || self.cfg.runs("c1seq") || self.cfg.runs("pg1") {
            let mut variants: Vec<(&str, &str, &str)> = Vec::new();
            if self.cfg.runs("c1") {
                variants.push(("CompleteRun c1, concurrent", "concurrent", "c1"));
            }
            if self.cfg.runs("c1seq") {
                variants.push(("CompleteRun c1, sequential", "sequential", "c1seq"));
            }
            let pg1 = pg.as_ref().filter(|_| run_pg1);
            let measured = self.anchored(pg1, 1, &variants).await?;
            for ((_, _, key), m) in variants.iter().zip(&measured) {
                let p50 = m.load.quantile_ms(0.5);
                match *key {
                    "c1" => {
                        self.values.insert("c1_p50", p50);
                        self.values.insert("c1_pairs", m.pairs_share());
                    }
                    _ => {
                        self.values.insert("c1seq_p50", p50);
                    }
                }
            }
        }
        if let Some(pg) = pg.take() {
            pg.stop()?;
        }
        if self.cfg.runs("hot") {
            let m = self
                .scenario(
                    "CompleteRun c64, one hot task",
                    "concurrent",
                    Keying::One(0),
                    64,
                    short,
                )
                .await?;
            self.values.insert("hot", m.load.rps());
        }
        if self.cfg.runs("newtask") {
            let m = self
                .scenario(
                    "CompleteRun c64, new task per call",
                    "concurrent",
                    Keying::PerCall,
                    64,
                    short,
                )
                .await?;
            self.values.insert("newtask", m.load.rps());
        }
        if self.cfg.runs("sweep") {
            for c in [8, 16, 32, 128] {
                let m = self
                    .scenario(
                        &format!("CompleteRun c{c}, 100 tasks"),
                        "concurrent",
                        tasks,
                        c,
                        short,
                    )
                    .await?;
                peak.push((c, m.load.rps()));
            }
        }
        if self.cfg.runs("c256") {
            let m = self
                .scenario(
                    "CompleteRun c256, 100 tasks",
                    "concurrent",
                    tasks,
                    256,
                    self.cfg.secs,
                )
                .await?;
            self.values.insert("c256", m.load.rps());
            peak.push((256, m.load.rps()));
        }
        if let Some(&(c, rps)) = peak.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
            self.values.insert("peak", rps);
            self.values.insert("peak_c", c as f64);
        }
        if self.cfg.runs("snapshot") {
            self.snapshot_reads().await?;
        }
        if self.cfg.runs("wal") {
            let long = self.cfg.long_secs;
            let m = self
                .scenario(
                    &format!("CompleteRun c64, 100 tasks, {long} s (WAL checkpoints)"),
                    "concurrent",
                    tasks,
                    64,
                    long,
                )
                .await?;
            self.values.insert("wal_p99", m.load.quantile_ms(0.99));
            self.notes.push(wal_note(&m));
        }
        Ok(())
    }

    fn ratio(&self, a: &str, b: &str) -> Option<f64> {
        Some(self.values.get(a)? / self.values.get(b)?)
    }

    fn report(&self, elapsed: Duration, load_before: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| scenario | conc | calls | errors | ended by | RPS | p50 ms | p99 ms | server write p50 ms | server CPU µs/call | client CPU µs/call | writes/commit | pairs together | writes verified |"
        );
        let _ = writeln!(
            out,
            "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.0} | {} | {} | {} |",
                r.scenario,
                r.concurrency,
                fmt_count(r.calls),
                r.errors,
                r.ended,
                r.rps,
                r.p50,
                r.p99,
                r.write_p50.map_or("–".into(), |w| format!("{w:.2}")),
                r.cpu_us,
                r.client_us,
                r.per_commit.map_or("–".into(), |w| format!("{w:.1}")),
                r.pairs
                    .map_or("–".into(), |s| format!("{:.1} %", s * 100.0)),
                r.verified
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "| ratio (same run) | value | target | met |");
        let _ = writeln!(out, "| --- | ---: | ---: | --- |");
        let peak_c = self.values.get("peak_c").map_or(0, |c| *c as usize);
        let targets: [(String, Option<f64>, &str, Option<bool>); 5] = {
            let r = |a, b| self.ratio(a, b);
            let c64 = r("c64", "pg64");
            let seq = r("c1seq_p50", "c1_p50");
            let lat = r("c1_p50", "pg1_p50");
            let snap = r("snap_big", "snap_small");
            let c256 = r("c256", "peak");
            [
                (
                    "RPS c64 / pgbench c64 TPS".into(),
                    c64,
                    "≥ 1.2",
                    c64.map(|v| v >= 1.2),
                ),
                (
                    "p50 c1 sequential / concurrent".into(),
                    seq,
                    "≥ 1.5",
                    seq.map(|v| v >= 1.5),
                ),
                (
                    "p50 c1 / pgbench c1 p50".into(),
                    lat,
                    "≤ 0.7",
                    lat.map(|v| v <= 0.7),
                ),
                (
                    format!(
                        "snapshot first-page RPS {} runs / {PAGE_RUNS} runs",
                        fmt_count(self.cfg.big_history)
                    ),
                    snap,
                    "≥ 0.8",
                    snap.map(|v| v >= 0.8),
                ),
                (
                    format!("RPS c256 / peak (c{peak_c})"),
                    c256,
                    "≥ 0.9",
                    c256.map(|v| v >= 0.9),
                ),
            ]
        };
        for (name, value, target, met) in &targets {
            let _ = writeln!(
                out,
                "| {name} | {} | {target} | {} |",
                value.map_or("not run".into(), |v| format!("{v:.2}")),
                match met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "–",
                }
            );
        }
        let info = [
            ("RPS c64 hot task / 100 tasks", self.ratio("hot", "c64")),
            (
                "RPS c64 new task per call / 100 tasks",
                self.ratio("newtask", "c64"),
            ),
            (
                "p99 c64 long (WAL checkpoints) / p99 c64",
                self.ratio("wal_p99", "c64_p99"),
            ),
            (
                "server CPU per call, runstore c64 / pgbench c64",
                self.ratio("c64_cpu", "pg64_cpu"),
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
        let _ = writeln!(out);
        let _ = writeln!(out, "Machine and run:");
        let _ = writeln!(out);
        for note in self.machine_notes(elapsed, load_before) {
            let _ = writeln!(out, "- {note}");
        }
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        out
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
                 PostgreSQL: fsync=on, synchronous_commit=on, shared_buffers=256MB, max_connections=300.",
                self.cfg.tmp_root.display()
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
             server CPU is utime+stime from /proc (for PostgreSQL: the postmaster, its live children and its reaped backends) \
             over the load, divided by the calls; client CPU likewise for this load client or pgbench."
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
