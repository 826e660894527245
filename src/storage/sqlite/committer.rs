//! Group commit: one thread owns the write connection and commits every
//! write waiting, across all calls and tasks, in one transaction and one WAL
//! fsync. Each write runs in its own savepoint, so a statement that fails
//! (a constraint, a trigger) fails that write alone; a commit that fails
//! fails every write of its batch, and nothing of it is visible. A caller is
//! answered only after the commit that covers its write.
//!
//! The two writes of a CompleteRun are dispatched as concurrent tasks and
//! arrive a few microseconds apart. A batch that holds one of a pair waits
//! briefly ([`PARTNER_WAIT`]) for the other, so that the pair shares one
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
}

impl Worker {
    fn run(mut self) {
        while let Some(batch) = self.next_batch() {
            self.commit(batch);
        }
    }

    /// Blocks for the first job, then takes everything queued behind it,
    /// then waits up to [`PARTNER_WAIT`] for the missing half of any pair.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let first = self.queue.recv().ok()?;
        let mut batch = Vec::new();
        let mut pairs: HashMap<usize, u8> = HashMap::new();
        let mut unpaired = 0usize;
        let mut add = |job: Job, batch: &mut Vec<Job>, unpaired: &mut usize| {
            if let Some(key) = job.pair_key() {
                let seen = pairs.entry(key).or_default();
                *seen += 1;
                if *seen == 1 {
                    *unpaired += 1;
                } else {
                    *unpaired -= 1;
                }
            }
            batch.push(job);
        };
        add(first, &mut batch, &mut unpaired);
        while batch.len() < MAX_BATCH {
            match self.queue.try_recv() {
                Ok(job) => add(job, &mut batch, &mut unpaired),
                Err(_) => break,
            }
        }
        let deadline = Instant::now() + PARTNER_WAIT;
        while unpaired > 0 && batch.len() < MAX_BATCH {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.queue.recv_timeout(left) {
                Ok(job) => add(job, &mut batch, &mut unpaired),
                Err(_) => break,
            }
        }
        let together = pairs.values().filter(|&&n| n >= 2).count() as u64;
        self.stats
            .pairs_together
            .fetch_add(together, Ordering::Relaxed);
        self.stats
            .pair_writes_split
            .fetch_add(unpaired as u64, Ordering::Relaxed);
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
