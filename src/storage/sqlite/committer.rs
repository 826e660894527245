//! Group commit: one thread owns the write connection and commits every
//! write waiting, across all calls and tasks, in one transaction and one WAL
//! fsync. Each write runs in its own savepoint, so a statement that fails
//! (a constraint, a trigger) fails that write alone; a commit that fails
//! fails every write of its batch, and nothing of it is visible. A caller is
//! answered only after the commit that covers its write.
//!
//! The two writes of a CompleteRun are dispatched as concurrent tasks and
//! arrive a few microseconds apart. A half whose partner has not arrived is
//! held back for the next batch, or, when there is nothing else to commit,
//! waited with briefly ([`PARTNER_WAIT`]), so that the pair shares one
//! commit: one fsync per call instead of two, which is what makes the
//! call's latency max(snapshot, manifest) rather than their sum.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use rusqlite::Connection;
use tokio::sync::{oneshot, watch};

use super::{
    connection::{LockWait, open_write_connection},
    errors::{classify, needs_reopen},
    writes,
};
use crate::storage::{
    GroupCommitStats, RunRecord, StorageError, Target, WriteReceipt,
    retention::{ExpireRule, ExpireStep},
};

/// Longest a batch waits for the other write of a pair it holds.
const PARTNER_WAIT: Duration = Duration::from_millis(2);
/// Most writes in one transaction, bounding its size and the time a write
/// queued behind it waits.
const MAX_BATCH: usize = 1024;

type Reply<T> = oneshot::Sender<Result<T, StorageError>>;

enum Job {
    Write {
        target: Target,
        run: Arc<RunRecord>,
        reply: Reply<WriteReceipt>,
    },
    /// DeleteRun: both records in one savepoint, so they share one fate.
    Delete {
        task_id: String,
        run_id: String,
        reply: Reply<bool>,
    },
    /// One step of event pruning: events recorded before `before`.
    Prune {
        before: String,
        reply: Reply<u64>,
    },
    /// One step of retention: the runs it removes, their EXPIRED events.
    Expire {
        rule: ExpireRule,
        reply: Reply<ExpireStep>,
    },
    /// One step of incremental vacuum.
    Reclaim {
        reply: Reply<u64>,
    },
    Probe {
        reply: Reply<()>,
    },
}

impl Job {
    /// Whether the job appends to the change feed when it succeeds.
    fn appends_events(&self) -> bool {
        matches!(
            self,
            Job::Write {
                target: Target::Manifest,
                ..
            } | Job::Delete { .. }
                | Job::Expire { .. }
        )
    }

    /// The pair a write belongs to: both writes of a call share their record.
    fn pair_key(&self) -> Option<usize> {
        match self {
            Job::Write { run, .. } if run.paired => Some(Arc::as_ptr(run) as usize),
            _ => None,
        }
    }
}

/// Counters of the committer, for benchmarks, logs and metrics.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub histograms: GroupCommitStats,
    pub commits: AtomicU64,
    pub writes: AtomicU64,
    /// Calls whose two writes landed in the same commit.
    pub pairs_together: AtomicU64,
    /// Writes of a pair committed without their partner.
    pub pair_writes_split: AtomicU64,
    pub commit_micros: AtomicU64,
}

impl CommitStats {
    /// Share of paired calls whose two writes shared a commit.
    pub fn pairs_together_share(&self) -> f64 {
        let together = self.pairs_together.load(Ordering::Relaxed) as f64;
        let split = self.pair_writes_split.load(Ordering::Relaxed) as f64 / 2.0;
        if together + split == 0.0 {
            return 1.0;
        }
        together / (together + split)
    }
}

/// The handle to the committer thread. Dropping it lets the thread finish
/// the queued writes and exit.
pub struct Committer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
    stats: Arc<CommitStats>,
}

impl Committer {
    /// `events` is bumped after every commit that appended events.
    pub fn start(
        path: PathBuf,
        conn: Connection,
        lock_wait: LockWait,
        events: watch::Sender<u64>,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel();
        let stats = Arc::new(CommitStats::default());
        let worker = Worker {
            path,
            conn: Some(conn),
            lock_wait,
            queue,
            stats: Arc::clone(&stats),
            events,
            held: Vec::new(),
        };
        let thread = thread::Builder::new()
            .name("sqlite-committer".into())
            .spawn(move || worker.run())?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
            stats,
        })
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    pub async fn write(
        &self,
        target: Target,
        run: Arc<RunRecord>,
    ) -> Result<WriteReceipt, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Write { target, run, reply })?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Deletes a run; `Ok(found)` once the commit that removed it is durable.
    pub async fn delete(&self, task_id: &str, run_id: &str) -> Result<bool, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Delete {
            task_id: task_id.to_owned(),
            run_id: run_id.to_owned(),
            reply,
        })?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// One pruning step; `Ok(removed)` once its commit is durable.
    pub async fn prune(&self, before: String) -> Result<u64, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Prune { before, reply })?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// One retention step; `Ok(step)` once its commit is durable.
    pub async fn expire(&self, rule: ExpireRule) -> Result<ExpireStep, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Expire { rule, reply })?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// One step of incremental vacuum; `Ok(pages)` once its commit is durable.
    pub async fn reclaim(&self) -> Result<u64, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Reclaim { reply })?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    pub async fn probe(&self) -> Result<(), StorageError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Probe { reply })?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    fn submit(&self, job: Job) -> Result<(), StorageError> {
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(job).map_err(|_| stopped())
    }
}

fn stopped() -> StorageError {
    StorageError::Internal("the SQLite committer thread stopped".into())
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it is empty; every caller
        // has been answered by then, so the join is short.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        tracing::info!(
            commits = self.stats.commits.load(Ordering::Relaxed),
            writes = self.stats.writes.load(Ordering::Relaxed),
            pairs_together_share = self.stats.pairs_together_share(),
            "sqlite group commit stopped"
        );
    }
}

struct Worker {
    path: PathBuf,
    /// `None` after an I/O error made the connection suspect, until reopened.
    conn: Option<Connection>,
    lock_wait: LockWait,
    queue: mpsc::Receiver<Job>,
    stats: Arc<CommitStats>,
    events: watch::Sender<u64>,
    /// Halves of pairs held back from the last batch for their partner.
    held: Vec<Job>,
}

impl Worker {
    fn run(mut self) {
        while let Some(batch) = self.next_batch() {
            self.commit(batch);
        }
    }

    /// Takes the halves held back last time, or blocks for the first job;
    /// then everything queued behind them. A half whose partner has not
    /// arrived is held back for the next batch (once), so the pair shares
    /// that commit; the caller waits for both writes anyway, so holding the
    /// half costs it nothing, where committing it alone would cost the
    /// pair two commits. Only a batch with nothing else to commit waits, up
    /// to [`PARTNER_WAIT`], for the missing halves.
    fn next_batch(&mut self) -> Option<Vec<Job>> {
        let mut batch = std::mem::take(&mut self.held);
        let held_before = batch.len();
        if batch.is_empty() {
            batch.push(self.queue.recv().ok()?);
        }
        while batch.len() < MAX_BATCH {
            match self.queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut halves = PairHalves::of(&batch);
        if halves.only_lone_halves(batch.len()) {
            let deadline = Instant::now() + PARTNER_WAIT;
            while halves.lone() > 0 && batch.len() < MAX_BATCH {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.queue.recv_timeout(left) {
                    Ok(job) => {
                        halves.add(&job);
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
        } else if halves.lone() > 0 {
            // Halves held once already are committed now, partner or not.
            let (mut keep, mut hold) = (Vec::with_capacity(batch.len()), Vec::new());
            for (index, job) in batch.into_iter().enumerate() {
                if index >= held_before && halves.is_lone(&job) {
                    halves.remove(&job);
                    hold.push(job);
                } else {
                    keep.push(job);
                }
            }
            batch = keep;
            self.held = hold;
        }
        self.stats
            .pairs_together
            .fetch_add(halves.together(), Ordering::Relaxed);
        self.stats
            .pair_writes_split
            .fetch_add(halves.lone() as u64, Ordering::Relaxed);
        Some(batch)
    }

    fn commit(&mut self, batch: Vec<Job>) {
        let started = Instant::now();
        let mut batch: Vec<Option<Job>> = batch.into_iter().map(Some).collect();
        // A record-level error that made SQLite roll back the whole
        // transaction (a trigger's RAISE(ROLLBACK), an ON CONFLICT ROLLBACK
        // constraint) fails that write alone: the rest of the batch is
        // committed again without it.
        let outcome = loop {
            let jobs: Vec<&Job> = batch.iter().flatten().collect();
            let outcome = match self.connection() {
                Ok(conn) => run_transaction(conn, &jobs),
                Err(err) => Err(BatchError::Open(err)),
            };
            let Err(BatchError::Refused { index, error }) = outcome else {
                break outcome;
            };
            let refused = batch
                .iter_mut()
                .filter(|slot| slot.is_some())
                .nth(index)
                .and_then(Option::take);
            if let Some(job) = refused {
                answer(job, Err(classify(&error)));
            }
        };
        let pending: Vec<Job> = batch.into_iter().flatten().collect();
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .writes
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        let took = started.elapsed();
        self.stats.commit_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.stats
            .histograms
            .batch_writes
            .observe(pending.len() as f64);
        self.stats
            .histograms
            .commit_seconds
            .observe(took.as_secs_f64());
        let failure = match outcome {
            Ok(results) => {
                // Watchers are woken before callers are answered: an event
                // is readable once its commit is.
                if pending.iter().any(Job::appends_events) {
                    self.events.send_modify(|n| *n = n.wrapping_add(1));
                }
                for (job, result) in pending.into_iter().zip(results) {
                    answer(job, result);
                }
                return;
            }
            Err(BatchError::Sqlite(e)) => {
                if needs_reopen(&e) {
                    // After an I/O error the connection's cache may hold
                    // pages the disk lost: start afresh.
                    tracing::warn!(error = %e, "reopening the SQLite write connection");
                    self.conn = None;
                }
                classify(&e)
            }
            Err(BatchError::Open(e)) => e,
            Err(BatchError::Refused { error, .. }) => classify(&error),
        };
        tracing::warn!(writes = pending.len(), error = %failure, "group commit failed");
        for job in pending {
            answer(job, Err(failure.clone()));
        }
    }

    fn connection(&mut self) -> Result<&Connection, StorageError> {
        if self.conn.is_none() {
            let conn = open_write_connection(&self.path, self.lock_wait)
                .map_err(|e| StorageError::Unavailable(e.to_string()))?;
            self.conn = Some(conn);
        }
        self.conn
            .as_ref()
            .ok_or_else(|| StorageError::Internal("no write connection".into()))
    }
}

/// How many halves of each pair a batch holds.
struct PairHalves {
    seen: HashMap<usize, u8>,
    lone: usize,
}

impl PairHalves {
    fn of(batch: &[Job]) -> Self {
        let mut halves = Self {
            seen: HashMap::new(),
            lone: 0,
        };
        for job in batch {
            halves.add(job);
        }
        halves
    }

    fn add(&mut self, job: &Job) {
        if let Some(key) = job.pair_key() {
            let seen = self.seen.entry(key).or_default();
            *seen += 1;
            if *seen == 1 {
                self.lone += 1;
            } else {
                self.lone -= 1;
            }
        }
    }

    /// Takes a lone half out of the batch.
    fn remove(&mut self, job: &Job) {
        if let Some(key) = job.pair_key()
            && self.seen.remove(&key) == Some(1)
        {
            self.lone -= 1;
        }
    }

    fn is_lone(&self, job: &Job) -> bool {
        job.pair_key()
            .is_some_and(|key| self.seen.get(&key) == Some(&1))
    }

    /// Halves whose partner is not in the batch.
    fn lone(&self) -> usize {
        self.lone
    }

    /// Pairs with both halves in the batch.
    fn together(&self) -> u64 {
        self.seen.values().filter(|&&n| n >= 2).count() as u64
    }

    fn only_lone_halves(&self, batch_len: usize) -> bool {
        self.lone() == batch_len
    }
}

enum BatchError {
    /// The transaction failed as a whole.
    Sqlite(rusqlite::Error),
    /// The write at `index` was refused, and SQLite rolled the whole
    /// transaction back with it.
    Refused {
        index: usize,
        error: rusqlite::Error,
    },
    Open(StorageError),
}

/// What one job produced inside a committed transaction.
enum Output {
    Written(WriteReceipt),
    Deleted { found: bool },
    Pruned(u64),
    Expired(ExpireStep),
    Reclaimed(u64),
    Probed,
}

type JobResult = Result<Output, StorageError>;

fn answer(job: Job, result: JobResult) {
    // A caller that went away no longer needs its answer; the write stands.
    let mismatch = || StorageError::Internal("a job produced another job's output".into());
    match job {
        Job::Write { reply, .. } => {
            let _ = reply.send(result.and_then(|out| match out {
                Output::Written(receipt) => Ok(receipt),
                _ => Err(mismatch()),
            }));
        }
        Job::Delete { reply, .. } => {
            let _ = reply.send(result.and_then(|out| match out {
                Output::Deleted { found } => Ok(found),
                _ => Err(mismatch()),
            }));
        }
        Job::Prune { reply, .. } => {
            let _ = reply.send(result.and_then(|out| match out {
                Output::Pruned(removed) => Ok(removed),
                _ => Err(mismatch()),
            }));
        }
        Job::Expire { reply, .. } => {
            let _ = reply.send(result.and_then(|out| match out {
                Output::Expired(step) => Ok(step),
                _ => Err(mismatch()),
            }));
        }
        Job::Reclaim { reply } => {
            let _ = reply.send(result.and_then(|out| match out {
                Output::Reclaimed(pages) => Ok(pages),
                _ => Err(mismatch()),
            }));
        }
        Job::Probe { reply } => {
            let _ = reply.send(result.map(|_| ()));
        }
    }
}

/// Runs a batch in one transaction; `Err` when the transaction as a whole
/// failed, in which case it has been rolled back.
fn run_transaction(conn: &Connection, batch: &[&Job]) -> Result<Vec<JobResult>, BatchError> {
    let result = try_transaction(conn, batch);
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

fn try_transaction(conn: &Connection, batch: &[&Job]) -> Result<Vec<JobResult>, BatchError> {
    let sqlite = BatchError::Sqlite;
    conn.execute_batch("BEGIN IMMEDIATE").map_err(sqlite)?;
    let mut results = Vec::with_capacity(batch.len());
    for (index, job) in batch.iter().enumerate() {
        conn.execute_batch("SAVEPOINT write").map_err(sqlite)?;
        let applied = match job {
            Job::Write { target, run, .. } => {
                writes::apply(conn, *target, run).map(Output::Written)
            }
            Job::Delete {
                task_id, run_id, ..
            } => writes::delete_run(conn, task_id, run_id).map(|found| Output::Deleted { found }),
            Job::Prune { before, .. } => writes::prune_events(conn, before).map(Output::Pruned),
            Job::Expire { rule, .. } => writes::expire(conn, rule).map(Output::Expired),
            Job::Reclaim { .. } => writes::reclaim(conn).map(Output::Reclaimed),
            Job::Probe { .. } => writes::probe(conn).map(|()| Output::Probed),
        };
        match applied {
            Ok(receipt) => {
                conn.execute_batch("RELEASE write").map_err(sqlite)?;
                results.push(Ok(receipt));
            }
            // An error about the database (disk full, I/O error, ...):
            // nothing of the batch stands.
            Err(err) if fails_the_batch(&err) => return Err(sqlite(err)),
            // A refused record that took the whole transaction with it.
            Err(error) if conn.is_autocommit() => return Err(BatchError::Refused { index, error }),
            Err(err) => {
                conn.execute_batch("ROLLBACK TO write; RELEASE write")
                    .map_err(sqlite)?;
                results.push(Err(classify(&err)));
            }
        }
    }
    conn.execute_batch("COMMIT").map_err(sqlite)?;
    Ok(results)
}

/// Errors that are about the database, not the record: the batch fails.
fn fails_the_batch(err: &rusqlite::Error) -> bool {
    !matches!(classify(err), StorageError::Invalid(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::RunInstant;

    fn run(run_id: &str, paired: bool) -> Arc<RunRecord> {
        Arc::new(RunRecord {
            task_id: "task".into(),
            run_id: run_id.into(),
            timestamp: "2026-12-04T00:00:00Z".into(),
            instant: RunInstant { secs: 0, nanos: 0 },
            summary_json: "{}".into(),
            sha256: String::new(),
            paired,
        })
    }

    fn write(target: Target, run: &Arc<RunRecord>) -> Job {
        let (reply, _) = oneshot::channel();
        Job::Write {
            target,
            run: Arc::clone(run),
            reply,
        }
    }

    /// A worker with no connection: `next_batch` never touches one.
    fn worker() -> (mpsc::Sender<Job>, Worker) {
        let (jobs, queue) = mpsc::channel();
        let worker = Worker {
            path: PathBuf::from("unused.db"),
            conn: None,
            lock_wait: LockWait::default(),
            queue,
            stats: Arc::default(),
            events: watch::channel(0).0,
            held: Vec::new(),
        };
        (jobs, worker)
    }

    fn run_ids(batch: &[Job]) -> Vec<(&str, bool)> {
        batch
            .iter()
            .map(|job| match job {
                Job::Write { target, run, .. } => {
                    (run.run_id.as_str(), *target == Target::Manifest)
                }
                _ => ("", false),
            })
            .collect()
    }

    #[test]
    fn a_lone_half_is_held_back_and_commits_with_its_partner() {
        let (jobs, mut worker) = worker();
        let (a, b) = (run("a", true), run("b", true));
        jobs.send(write(Target::Snapshot, &a)).unwrap();
        jobs.send(write(Target::Manifest, &a)).unwrap();
        jobs.send(write(Target::Snapshot, &b)).unwrap();
        let first = worker.next_batch().unwrap();
        assert_eq!(run_ids(&first), [("a", false), ("a", true)]);
        jobs.send(write(Target::Manifest, &b)).unwrap();
        let second = worker.next_batch().unwrap();
        assert_eq!(run_ids(&second), [("b", false), ("b", true)]);
        assert_eq!(worker.stats.pairs_together.load(Ordering::Relaxed), 2);
        assert_eq!(worker.stats.pair_writes_split.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_half_is_held_back_once_then_commits_alone() {
        let (jobs, mut worker) = worker();
        let (a, b, c) = (run("a", true), run("b", true), run("c", false));
        jobs.send(write(Target::Snapshot, &a)).unwrap();
        jobs.send(write(Target::Manifest, &a)).unwrap();
        jobs.send(write(Target::Snapshot, &b)).unwrap();
        assert_eq!(worker.next_batch().unwrap().len(), 2);
        jobs.send(write(Target::Snapshot, &c)).unwrap();
        let second = worker.next_batch().unwrap();
        assert_eq!(run_ids(&second), [("b", false), ("c", false)]);
        assert_eq!(worker.stats.pair_writes_split.load(Ordering::Relaxed), 1);
        assert!(worker.held.is_empty());
    }

    #[test]
    fn a_batch_of_lone_halves_waits_for_partners_then_commits_what_it_has() {
        let (jobs, mut worker) = worker();
        let a = run("a", true);
        jobs.send(write(Target::Snapshot, &a)).unwrap();
        let waiting = Instant::now();
        let batch = worker.next_batch().unwrap();
        assert!(waiting.elapsed() >= PARTNER_WAIT);
        assert_eq!(run_ids(&batch), [("a", false)]);
        assert!(worker.held.is_empty());
    }
}
