//! Choosing the SQLite crate by measuring: rusqlite against sqlx on exactly
//! what runstore's SQLite writer and first-page read do.
//!
//! Both crates run the server's SQL (src/storage/sqlite/writes.rs and
//! reads.rs) on the server's schema (src/storage/migrations/sqlite/0001_init.sql)
//! with the writer's pragmas (connection.rs: WAL, synchronous=FULL,
//! foreign_keys=ON, journal_size_limit=64 MiB, wal_autocheckpoint=0), each
//! write's summary being tests/fixtures/run-summary.json. A write transaction
//! is the committer's (committer.rs): BEGIN IMMEDIATE, each write in its own
//! `SAVEPOINT write` ... `RELEASE write`, one COMMIT. rusqlite is driven as
//! the server drives it: a dedicated thread, `execute_batch` for the
//! transaction statements, `prepare_cached` for the writes. sqlx runs every
//! statement through `sqlx::query` (prepared and cached per connection) on
//! one `SqliteConnection`, awaited in turn, from a task on a two-worker
//! multi-thread tokio runtime ("sqlx") and from a dedicated thread running a
//! current_thread runtime ("sqlx (current_thread rt)"). Either way sqlx's
//! driver executes on its own worker thread, each statement sent over a
//! channel and its result sent back.
//!
//! Scenarios, each on a fresh database per crate and round, in a directory
//! under $BENCH_TMPDIR (default /work/tmp) that is removed afterwards, each
//! bounded by a count and by RUN_LIMIT of wall time:
//! 1. c1 commit: one call's pair (snapshot write: tasks upsert RETURNING
//!    last_seq, then the snapshot_entries upsert; then the manifest upsert)
//!    per transaction, 2,000 calls over 100 tasks: p50/p99 per commit, CPU
//!    per commit.
//! 2. group commit: 64 pairs (128 savepoints) per transaction, 300 batches:
//!    writes/s, p50/p99 per batch, CPU per write.
//! 3. as 2 with synchronous=OFF (no fsync): the crates' per-statement cost.
//! 4. reads: a task with 10,000 runs (loaded untimed, then checkpointed), the
//!    first page of 100 runs 2,000 times as reads.rs does it (a read
//!    transaction, the last_run_at query, the keyset page query fetching
//!    101 rows): p50/p99 and CPU per page. rusqlite also runs it through
//!    `spawn_blocking`, the hop the server's read pool adds.
//!
//! wal_autocheckpoint=0 is set for BOTH crates (the server's writer setting;
//! its checkpointer thread is not modelled): every database starts fresh,
//! so the WAL grows from empty in every run alike.
//!
//! CPU is the process's user+system time (getrusage), so it includes sqlx's
//! worker thread and tokio's workers; wall time under synchronous=FULL is
//! mostly fsync. "others' CPU" is the share of the machine's CPUs that other
//! processes used during a run (/proc/stat less this process). Variants
//! alternate within each round (rusqlite, sqlx, ..., then again) so drift
//! on a shared machine hits all of them.
//!
//! Run: cargo run --release --manifest-path bench/crate-choice/Cargo.toml
//! (nice -n -5 if possible; the Markdown table goes to stdout, progress to
//! stderr). BENCH_ONLY=c1,group-full,group-off,reads picks scenarios;
//! BENCH_THREADS=1 prints each run's CPU by thread. sqlx's figures swing
//! with where the scheduler puts its two threads (each statement is a
//! wake-up across them); `taskset -c 0` before the command shows the
//! one-CPU case.

use std::{
    hint::black_box,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rusqlite::{Connection, OpenFlags, params};
use sha2::{Digest, Sha256};
use sqlx::{
    ConnectOptions, Row,
    sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous},
};

const SUMMARY: &str = include_str!("../../../tests/fixtures/run-summary.json");
const SCHEMA: &str = include_str!("../../../src/storage/migrations/sqlite/0001_init.sql");

/// Longest any one measured run goes on, whatever its count.
const RUN_LIMIT: Duration = Duration::from_secs(15);
const TASKS: usize = 100;
const C1_CALLS: usize = 2_000;
const BATCH_PAIRS: usize = 64;
const BATCHES: usize = 300;
const READ_HISTORY: usize = 10_000;
const PAGE: usize = 100;
const PAGES: usize = 2_000;
const ROUNDS: usize = 2;

// The server's SQL, verbatim (writes.rs, reads.rs).
const SQL_SEQ: &str = "INSERT INTO tasks (task_id, last_seq) VALUES (?1, 1)
             ON CONFLICT (task_id) DO UPDATE SET last_seq = last_seq + 1
             RETURNING last_seq";
const SQL_SNAPSHOT: &str = "INSERT INTO snapshot_entries
             (task_id, run_id, timestamp, instant_secs, instant_nanos, seq, summary_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (task_id, run_id) DO UPDATE SET
             timestamp = excluded.timestamp,
             instant_secs = excluded.instant_secs,
             instant_nanos = excluded.instant_nanos,
             seq = excluded.seq,
             summary_json = excluded.summary_json";
const SQL_MANIFEST: &str = "INSERT INTO manifests
             (task_id, run_id, summary_json, timestamp, instant_secs, instant_nanos, sha256, written_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (task_id, run_id) DO UPDATE SET
             summary_json = excluded.summary_json,
             timestamp = excluded.timestamp,
             instant_secs = excluded.instant_secs,
             instant_nanos = excluded.instant_nanos,
             sha256 = excluded.sha256,
             written_at = excluded.written_at";
const SQL_LAST_RUN_AT: &str = "SELECT timestamp FROM snapshot_entries WHERE task_id = ?1
             ORDER BY instant_secs DESC, instant_nanos DESC, seq DESC LIMIT 1";
const SQL_PAGE: &str = "SELECT run_id, timestamp, instant_secs, instant_nanos, seq, summary_json
             FROM snapshot_entries
             WHERE task_id = ?1 AND (instant_secs, instant_nanos, seq) > (?2, ?3, ?4)
             ORDER BY instant_secs, instant_nanos, seq LIMIT ?5";

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What a write needs, computed before dispatch as in the server.
struct Record {
    task_id: String,
    run_id: String,
    timestamp: String,
    secs: i64,
    nanos: i64,
    sha256: String,
}

fn records(n: usize, tasks: usize) -> Vec<Record> {
    let sha256: String = Sha256::digest(SUMMARY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let base = 1_767_641_197i64; // 2026-01-05T19:26:37Z
    (0..n)
        .map(|i| {
            let millis = i as i64 * 7;
            let secs = base + millis / 1000;
            let nanos = (millis % 1000) * 1_000_000;
            let timestamp = chrono::DateTime::from_timestamp(secs, nanos as u32)
                .expect("valid instant")
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            Record {
                task_id: format!("bench-task-{:03}", i % tasks),
                run_id: format!("run-{i:06}"),
                timestamp,
                secs,
                nanos,
                sha256: sha256.clone(),
            }
        })
        .collect()
}

fn written_at() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Process CPU (user + system, all threads) in microseconds.
fn cpu_micros() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time all processes have used since boot (/proc/stat, all but idle
/// and iowait), in microseconds, and the number of CPUs.
fn machine_busy_micros() -> (f64, usize) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut busy = 0.0;
    let mut cpus = 0;
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => {
                let ticks: Vec<f64> = fields.filter_map(|f| f.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal (guest is in user)
                busy = ticks.iter().take(8).sum::<f64>()
                    - ticks.get(3).copied().unwrap_or(0.0)
                    - ticks.get(4).copied().unwrap_or(0.0);
            }
            Some(name) if name.starts_with("cpu") => cpus += 1,
            _ => {}
        }
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (busy / hz * 1e6, cpus.max(1))
}

/// CPU time (µs) of each live thread of this process, by thread id, with its
/// name (/proc/self/task). A thread that exited is missing.
fn thread_cpu() -> std::collections::HashMap<u64, (String, f64)> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut out = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        // After "(comm) ": state is field 3; utime and stime are 14 and 15.
        let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = |i: usize| {
            rest.get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let tid = task.file_name().to_string_lossy().parse().unwrap_or(0);
        out.insert(tid, (name, (ticks(11) + ticks(12)) / hz * 1e6));
    }
    out
}

/// BENCH_THREADS=1: samples every thread's CPU every 20 ms during a run, so
/// threads that exit before its end (the rusqlite thread, sqlx's worker)
/// are counted too.
struct ThreadSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<std::collections::HashMap<u64, (String, f64, f64)>>,
}

impl ThreadSampler {
    fn start() -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut seen: std::collections::HashMap<u64, (String, f64, f64)> =
                std::collections::HashMap::new();
            let first = thread_cpu();
            loop {
                for (tid, (name, t)) in thread_cpu() {
                    let t0 = first.get(&tid).map_or(0.0, |(_, t0)| *t0);
                    // The name too: a thread names itself just after it starts.
                    let entry = seen.entry(tid).or_insert((String::new(), t0, t0));
                    entry.0 = name;
                    entry.2 = t;
                }
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { stop, handle }
    }

    fn finish(self) -> String {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = self.handle.join().unwrap_or_default();
        let mut spent: Vec<(String, f64)> = seen
            .into_iter()
            .map(|(tid, (name, t0, t1))| (format!("{name}[{tid}]"), t1 - t0))
            .filter(|(_, t)| *t > 0.0)
            .collect();
        spent.sort_by(|a, b| b.1.total_cmp(&a.1));
        spent
            .iter()
            .map(|(n, t)| format!("{n} {:.2} s", t / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One measured run.
struct Measured {
    /// Latency of each measured item (commit, batch or page), µs.
    latencies: Vec<f64>,
    /// Operations done (commits, writes or pages).
    ops: usize,
    wall: Duration,
    cpu_us: f64,
    /// Share of the machine's CPUs that other processes used during the run
    /// (setup included): the interference this run met.
    others: f64,
}

impl Measured {
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64()
    }
    fn cpu_per_op(&self) -> f64 {
        self.cpu_us / self.ops as f64
    }
}

/// Times `items` calls of `step` (each doing `ops_per_item` operations),
/// stopping early at RUN_LIMIT.
fn measure_sync(
    items: usize,
    ops_per_item: usize,
    mut step: impl FnMut(usize) -> AnyResult<()>,
) -> AnyResult<Measured> {
    let mut latencies = Vec::with_capacity(items);
    let cpu0 = cpu_micros();
    let start = Instant::now();
    for i in 0..items {
        let t = Instant::now();
        step(i)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
        if start.elapsed() >= RUN_LIMIT {
            break;
        }
    }
    let wall = start.elapsed();
    let cpu_us = cpu_micros() - cpu0;
    Ok(Measured {
        ops: latencies.len() * ops_per_item,
        latencies,
        wall,
        cpu_us,
        others: f64::NAN,
    })
}

// ---------------------------------------------------------------- setup

/// A fresh database directory for one run; removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(label: &str) -> AnyResult<Self> {
        let root = std::env::var_os("BENCH_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/work/tmp"));
        let dir = root.join(format!("crate-choice-{}-{label}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }
    fn db(&self) -> PathBuf {
        self.dir.join("runstore.db")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates the database with the server's schema, and for the read scenario
/// a task with READ_HISTORY runs, checkpointed into the main file. The same
/// (rusqlite) code prepares the file for both crates; it is not timed.
fn prepare(path: &Path, history: usize) -> AnyResult<()> {
    let conn = Connection::open(path)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    assert!(mode.eq_ignore_ascii_case("wal"));
    conn.execute_batch(SCHEMA)?;
    if history > 0 {
        let recs = records(history, 1);
        conn.execute_batch("PRAGMA synchronous=OFF")?;
        for chunk in recs.chunks(1000) {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            for r in chunk {
                rq::write_snapshot(&conn, r)?;
            }
            conn.execute_batch("COMMIT")?;
        }
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

// ---------------------------------------------------------------- rusqlite

mod rq {
    use super::*;

    /// connection.rs's open_write_connection (without the busy handler:
    /// nothing contends here), with `synchronous` as given.
    pub fn open_writer(path: &Path, synchronous: &str) -> rusqlite::Result<Connection> {
        let conn = open(path, synchronous)?;
        conn.execute_batch("PRAGMA wal_autocheckpoint=0")?;
        Ok(conn)
    }

    fn open(path: &Path, synchronous: &str) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        assert!(mode.eq_ignore_ascii_case("wal"));
        conn.execute_batch(&format!(
            "PRAGMA synchronous={synchronous};
             PRAGMA foreign_keys=ON;
             PRAGMA journal_size_limit=67108864;"
        ))?;
        Ok(conn)
    }

    /// reads.rs's open_reader.
    pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
        let conn = open(path, "FULL")?;
        conn.execute_batch("PRAGMA query_only=ON")?;
        Ok(conn)
    }

    pub fn write_snapshot(conn: &Connection, run: &Record) -> rusqlite::Result<()> {
        let seq: i64 = conn
            .prepare_cached(SQL_SEQ)?
            .query_row([&run.task_id], |row| row.get(0))?;
        conn.prepare_cached(SQL_SNAPSHOT)?.execute(params![
            run.task_id,
            run.run_id,
            run.timestamp,
            run.secs,
            run.nanos,
            seq,
            SUMMARY,
        ])?;
        Ok(())
    }

    fn write_manifest(conn: &Connection, run: &Record) -> rusqlite::Result<()> {
        let written_at = written_at();
        conn.prepare_cached(SQL_MANIFEST)?.execute(params![
            run.task_id,
            run.run_id,
            SUMMARY,
            run.timestamp,
            run.secs,
            run.nanos,
            run.sha256,
            written_at,
        ])?;
        Ok(())
    }

    /// committer.rs's try_transaction over the pairs of `calls`.
    pub fn commit(conn: &Connection, calls: &[Record]) -> rusqlite::Result<()> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for run in calls {
            conn.execute_batch("SAVEPOINT write")?;
            write_snapshot(conn, run)?;
            conn.execute_batch("RELEASE write")?;
            conn.execute_batch("SAVEPOINT write")?;
            write_manifest(conn, run)?;
            conn.execute_batch("RELEASE write")?;
        }
        conn.execute_batch("COMMIT")
    }

    /// reads.rs's snapshot_page for the first page.
    pub fn first_page(conn: &Connection, task_id: &str, limit: usize) -> rusqlite::Result<Page> {
        let tx = conn.unchecked_transaction()?;
        let last_run_at: String = tx
            .prepare_cached(SQL_LAST_RUN_AT)?
            .query_row([task_id], |row| row.get(0))?;
        let mut statement = tx.prepare_cached(SQL_PAGE)?;
        let mut rows = statement.query(params![task_id, i64::MIN, 0i64, 0i64, limit as i64 + 1])?;
        let mut runs = Vec::new();
        let mut more = false;
        while let Some(row) = rows.next()? {
            if runs.len() == limit {
                more = true;
                break;
            }
            let summary_json: String = row.get(5)?;
            runs.push(StoredRun {
                run_id: row.get(0)?,
                timestamp: row.get(1)?,
                summary_json,
                secs: row.get(2)?,
                nanos: row.get(3)?,
                seq: row.get(4)?,
            });
        }
        Ok(Page {
            last_run_at,
            runs,
            more,
        })
    }
}

/// What a page read produces (reads.rs's SnapshotPage, flattened).
#[allow(dead_code)] // read only through black_box
struct StoredRun {
    run_id: String,
    timestamp: String,
    summary_json: String,
    secs: i64,
    nanos: i64,
    seq: i64,
}

#[allow(dead_code)] // read only through black_box
struct Page {
    last_run_at: String,
    runs: Vec<StoredRun>,
    more: bool,
}

// ---------------------------------------------------------------- sqlx

mod sx {
    use super::*;

    pub async fn open_writer(
        path: &Path,
        sync: SqliteSynchronous,
    ) -> sqlx::Result<SqliteConnection> {
        SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .foreign_keys(true)
            .pragma("journal_size_limit", "67108864")
            .pragma("wal_autocheckpoint", "0")
            .connect()
            .await
    }

    pub async fn open_reader(path: &Path) -> sqlx::Result<SqliteConnection> {
        SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .pragma("journal_size_limit", "67108864")
            .pragma("query_only", "ON")
            .connect()
            .await
    }

    async fn exec(conn: &mut SqliteConnection, sql: &'static str) -> sqlx::Result<()> {
        sqlx::query(sql).execute(&mut *conn).await.map(drop)
    }

    async fn write_snapshot(conn: &mut SqliteConnection, run: &Record) -> sqlx::Result<()> {
        let seq: i64 = sqlx::query_scalar(SQL_SEQ)
            .bind(run.task_id.as_str())
            .fetch_one(&mut *conn)
            .await?;
        sqlx::query(SQL_SNAPSHOT)
            .bind(run.task_id.as_str())
            .bind(run.run_id.as_str())
            .bind(run.timestamp.as_str())
            .bind(run.secs)
            .bind(run.nanos)
            .bind(seq)
            .bind(SUMMARY)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn write_manifest(conn: &mut SqliteConnection, run: &Record) -> sqlx::Result<()> {
        let written_at = written_at();
        sqlx::query(SQL_MANIFEST)
            .bind(run.task_id.as_str())
            .bind(run.run_id.as_str())
            .bind(SUMMARY)
            .bind(run.timestamp.as_str())
            .bind(run.secs)
            .bind(run.nanos)
            .bind(run.sha256.as_str())
            .bind(written_at)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    pub async fn commit(conn: &mut SqliteConnection, calls: &[Record]) -> sqlx::Result<()> {
        exec(conn, "BEGIN IMMEDIATE").await?;
        for run in calls {
            exec(conn, "SAVEPOINT write").await?;
            write_snapshot(conn, run).await?;
            exec(conn, "RELEASE write").await?;
            exec(conn, "SAVEPOINT write").await?;
            write_manifest(conn, run).await?;
            exec(conn, "RELEASE write").await?;
        }
        exec(conn, "COMMIT").await
    }

    pub async fn first_page(
        conn: &mut SqliteConnection,
        task_id: &str,
        limit: usize,
    ) -> sqlx::Result<Page> {
        exec(conn, "BEGIN DEFERRED").await?;
        let last_run_at: String = sqlx::query_scalar(SQL_LAST_RUN_AT)
            .bind(task_id)
            .fetch_one(&mut *conn)
            .await?;
        let rows = sqlx::query(SQL_PAGE)
            .bind(task_id)
            .bind(i64::MIN)
            .bind(0i64)
            .bind(0i64)
            .bind(limit as i64 + 1)
            .fetch_all(&mut *conn)
            .await?;
        let mut runs = Vec::new();
        let mut more = false;
        for row in &rows {
            if runs.len() == limit {
                more = true;
                break;
            }
            runs.push(StoredRun {
                run_id: row.try_get(0)?,
                timestamp: row.try_get(1)?,
                summary_json: row.try_get(5)?,
                secs: row.try_get(2)?,
                nanos: row.try_get(3)?,
                seq: row.try_get(4)?,
            });
        }
        exec(conn, "ROLLBACK").await?;
        Ok(Page {
            last_run_at,
            runs,
            more,
        })
    }

    /// As measure_sync, for an async step.
    pub async fn measure<F>(
        items: usize,
        ops_per_item: usize,
        conn: &mut SqliteConnection,
        mut step: F,
    ) -> AnyResult<Measured>
    where
        F: for<'c> FnMut(
            &'c mut SqliteConnection,
            usize,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = sqlx::Result<()>> + Send + 'c>,
        >,
    {
        let mut latencies = Vec::with_capacity(items);
        let cpu0 = cpu_micros();
        let start = Instant::now();
        for i in 0..items {
            let t = Instant::now();
            step(conn, i).await?;
            latencies.push(t.elapsed().as_secs_f64() * 1e6);
            if start.elapsed() >= RUN_LIMIT {
                break;
            }
        }
        let wall = start.elapsed();
        let cpu_us = cpu_micros() - cpu0;
        Ok(Measured {
            ops: latencies.len() * ops_per_item,
            latencies,
            wall,
            cpu_us,
            others: f64::NAN,
        })
    }
}

// ---------------------------------------------------------------- scenarios

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    C1,
    Group { sync_off: bool },
    Reads,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::C1 => "1. c1 commit (1 pair/txn, sync=FULL)",
            Scenario::Group { sync_off: false } => "2. group commit (64 pairs/txn, sync=FULL)",
            Scenario::Group { sync_off: true } => "3. group commit (64 pairs/txn, sync=OFF)",
            Scenario::Reads => "4. first page (100 of 10,000 runs)",
        }
    }
    fn slug(self) -> &'static str {
        match self {
            Scenario::C1 => "c1",
            Scenario::Group { sync_off: false } => "group-full",
            Scenario::Group { sync_off: true } => "group-off",
            Scenario::Reads => "reads",
        }
    }
    /// (items, calls per item)
    fn shape(self) -> (usize, usize) {
        match self {
            Scenario::C1 => (C1_CALLS, 1),
            Scenario::Group { .. } => (BATCHES, BATCH_PAIRS),
            Scenario::Reads => (PAGES, 0),
        }
    }
    fn sync(self) -> &'static str {
        match self {
            Scenario::Group { sync_off: true } => "OFF",
            _ => "FULL",
        }
    }
    fn ops_per_item(self) -> usize {
        match self {
            Scenario::C1 => 1,                         // commits
            Scenario::Group { .. } => BATCH_PAIRS * 2, // writes
            Scenario::Reads => 1,                      // pages
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Rusqlite,
    RusqliteSpawnBlocking,
    Sqlx,
    SqlxCurrentThread,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Rusqlite => "rusqlite",
            Variant::RusqliteSpawnBlocking => "rusqlite+spawn_blocking",
            Variant::Sqlx => "sqlx",
            Variant::SqlxCurrentThread => "sqlx (current_thread rt)",
        }
    }
    fn slug(self) -> &'static str {
        match self {
            Variant::Rusqlite => "rusqlite",
            Variant::RusqliteSpawnBlocking => "rusqlite-sb",
            Variant::Sqlx => "sqlx",
            Variant::SqlxCurrentThread => "sqlx-ct",
        }
    }
}

fn run_one(
    rt: &tokio::runtime::Runtime,
    scenario: Scenario,
    variant: Variant,
    round: usize,
) -> AnyResult<Measured> {
    let scratch = Scratch::new(&format!("{}-{}-{round}", scenario.slug(), variant.slug()))?;
    let path = scratch.db();
    let history = if scenario == Scenario::Reads {
        READ_HISTORY
    } else {
        0
    };
    prepare(&path, history)?;
    let (items, calls_per_item) = scenario.shape();
    let recs = Arc::new(records(items * calls_per_item, TASKS));
    let ops = scenario.ops_per_item();
    let task_id = records(1, 1).remove(0).task_id;

    let (busy0, cpus) = machine_busy_micros();
    let own0 = cpu_micros();
    let began = Instant::now();
    let mut measured = match (scenario, variant) {
        (Scenario::Reads, Variant::Rusqlite) => std::thread::Builder::new()
            .name("rusqlite-reader".into())
            .spawn(move || {
                let conn = rq::open_reader(&path)?;
                measure_sync(items, ops, |_| {
                    black_box(rq::first_page(&conn, &task_id, PAGE)?);
                    Ok(())
                })
            })?
            .join()
            .expect("rusqlite thread")?,
        (Scenario::Reads, Variant::RusqliteSpawnBlocking) => {
            // The server's read pool: a connection behind a std Mutex, the
            // query on tokio's blocking pool, awaited from a runtime task.
            let conn = Arc::new(Mutex::new(rq::open_reader(&path)?));
            let task_id: Arc<str> = task_id.into();
            rt.block_on(rt.spawn(async move {
                let mut latencies = Vec::with_capacity(items);
                let cpu0 = cpu_micros();
                let start = Instant::now();
                for _ in 0..items {
                    let t = Instant::now();
                    let (conn, task_id) = (Arc::clone(&conn), Arc::clone(&task_id));
                    let page = tokio::task::spawn_blocking(move || {
                        let conn = conn.lock().expect("reader lock");
                        rq::first_page(&conn, &task_id, PAGE)
                    })
                    .await??;
                    black_box(page);
                    latencies.push(t.elapsed().as_secs_f64() * 1e6);
                    if start.elapsed() >= RUN_LIMIT {
                        break;
                    }
                }
                let wall = start.elapsed();
                let cpu_us = cpu_micros() - cpu0;
                AnyResult::Ok(Measured {
                    ops: latencies.len() * ops,
                    latencies,
                    wall,
                    cpu_us,
                    others: f64::NAN,
                })
            }))??
        }
        (_, Variant::Rusqlite) => std::thread::Builder::new()
            .name("rusqlite-writer".into())
            .spawn(move || {
                let conn = rq::open_writer(&path, scenario.sync())?;
                measure_sync(items, ops, |i| {
                    let calls = &recs[i * calls_per_item..(i + 1) * calls_per_item];
                    rq::commit(&conn, calls)?;
                    Ok(())
                })
            })?
            .join()
            .expect("rusqlite thread")?,
        (_, Variant::Sqlx) => rt.block_on(rt.spawn(sqlx_run(scenario, path, recs, task_id)))??,
        (_, Variant::SqlxCurrentThread) => std::thread::Builder::new()
            .name("sqlx-committer".into())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(sqlx_run(scenario, path, recs, task_id))
            })?
            .join()
            .expect("sqlx thread")?,
        (_, Variant::RusqliteSpawnBlocking) => unreachable!("reads only"),
    };
    let (busy1, _) = machine_busy_micros();
    let others_us = (busy1 - busy0) - (cpu_micros() - own0);
    measured.others = (others_us / (began.elapsed().as_secs_f64() * 1e6 * cpus as f64)).max(0.0);
    drop(scratch);
    Ok(measured)
}

/// The sqlx side of a run: one connection, every statement awaited in turn.
async fn sqlx_run(
    scenario: Scenario,
    path: PathBuf,
    recs: Arc<Vec<Record>>,
    task_id: String,
) -> AnyResult<Measured> {
    let (items, calls_per_item) = scenario.shape();
    let ops = scenario.ops_per_item();
    let (conn, m) = if scenario == Scenario::Reads {
        let mut conn = sx::open_reader(&path).await?;
        let task_id: Arc<str> = task_id.into();
        let m = sx::measure(items, ops, &mut conn, |conn, _| {
            let task_id = Arc::clone(&task_id);
            Box::pin(async move {
                black_box(sx::first_page(conn, &task_id, PAGE).await?);
                Ok(())
            })
        })
        .await?;
        (conn, m)
    } else {
        let sync = if scenario.sync() == "OFF" {
            SqliteSynchronous::Off
        } else {
            SqliteSynchronous::Full
        };
        let mut conn = sx::open_writer(&path, sync).await?;
        let m = sx::measure(items, ops, &mut conn, |conn, i| {
            let recs = Arc::clone(&recs);
            Box::pin(async move {
                let calls = &recs[i * calls_per_item..(i + 1) * calls_per_item];
                sx::commit(conn, calls).await
            })
        })
        .await?;
        (conn, m)
    };
    sqlx::Connection::close(conn).await?;
    Ok(m)
}

fn fmt(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 1000.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn main() -> AnyResult<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sqlx_sqlite_version: String = rt.block_on(async {
        let mut conn = SqliteConnectOptions::new()
            .in_memory(true)
            .connect()
            .await?;
        let v: String = sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(&mut conn)
            .await?;
        AnyResult::Ok(v)
    })?;
    eprintln!(
        "SQLite {} (rusqlite::version), {} (sqlx: SELECT sqlite_version())",
        rusqlite::version(),
        sqlx_sqlite_version
    );

    let scenarios = [
        Scenario::C1,
        Scenario::Group { sync_off: false },
        Scenario::Group { sync_off: true },
        Scenario::Reads,
    ];
    // BENCH_ONLY=c1,group-full,group-off,reads picks scenarios (all by default).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let threads = std::env::var_os("BENCH_THREADS").is_some();
    let mut table = Vec::new();
    let started = Instant::now();
    for scenario in scenarios {
        if !only.is_empty() && !only.split(',').any(|s| s == scenario.slug()) {
            continue;
        }
        for round in 1..=ROUNDS {
            let variants: &[Variant] = if scenario == Scenario::Reads {
                &[
                    Variant::Rusqlite,
                    Variant::Sqlx,
                    Variant::RusqliteSpawnBlocking,
                    Variant::SqlxCurrentThread,
                ]
            } else {
                &[Variant::Rusqlite, Variant::Sqlx, Variant::SqlxCurrentThread]
            };
            let mut results = Vec::new();
            for &variant in variants {
                let sampler = threads.then(ThreadSampler::start);
                let m = run_one(&rt, scenario, variant, round)?;
                if let Some(sampler) = sampler {
                    eprintln!("    CPU by thread: {}", sampler.finish());
                }
                eprintln!(
                    "[{:>5.1}s] {} round {round} {}: {} items, p50 {} µs, CPU {} µs/op, others {:.0}%",
                    started.elapsed().as_secs_f64(),
                    scenario.label(),
                    variant.name(),
                    m.latencies.len(),
                    fmt(m.percentile(0.50)),
                    fmt(m.cpu_per_op()),
                    m.others * 100.0
                );
                results.push((variant, m));
            }
            table.push((scenario, round, results));
        }
    }

    println!(
        "SQLite {} via libsqlite3-sys (bundled), same library for both crates\n",
        rusqlite::version()
    );
    println!(
        "| scenario | round | crate | items done | p50 µs | p99 µs | ops/s | CPU µs/op | others' CPU |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    for (scenario, round, results) in &table {
        let (_, base) = &results[0];
        for (variant, m) in results {
            println!(
                "| {} | {round} | {} | {} | {} | {} | {} | {} | {:.0}% |",
                scenario.label(),
                variant.name(),
                m.latencies.len(),
                fmt(m.percentile(0.50)),
                fmt(m.percentile(0.99)),
                fmt(m.ops_per_s()),
                fmt(m.cpu_per_op()),
                m.others * 100.0
            );
        }
        for (variant, m) in results.iter().skip(1) {
            println!(
                "| {} | {round} | **{}/rusqlite** | | {:.2} | {:.2} | {:.2} | {:.2} | |",
                scenario.label(),
                variant.name(),
                m.percentile(0.50) / base.percentile(0.50),
                m.percentile(0.99) / base.percentile(0.99),
                m.ops_per_s() / base.ops_per_s(),
                m.cpu_per_op() / base.cpu_per_op()
            );
        }
    }
    println!(
        "\nLatency is per commit (1), per batch of 64 pairs = 128 writes (2, 3), per page (4).\n\
         ops = commits (1), writes (2, 3; a pair is 2 writes), pages (4). CPU is the process's\n\
         user+system time over the run divided by ops. others' CPU: share of the machine's CPUs\n\
         used by other processes during the run (/proc/stat less this process), i.e. interference.\n\
         Each run stops at its count or after {} s.",
        RUN_LIMIT.as_secs()
    );
    Ok(())
}
