//! Group commit for snapshot writes: concurrent writes of one task share one
//! append and one fsync instead of queueing for the task's lock one by one.
//!
//! The first writer of an idle task starts a flusher on a blocking thread;
//! writers arriving while it works join the next batch. Each writer is
//! answered only after the fsync covering its own frame, so nothing is
//! acknowledged before it is durable. Different tasks flush independently.

use std::{
    collections::HashMap,
    io, mem,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::sync::oneshot;

use super::{RunRecord, instance::Instance, snapshot_file};

/// Most runs one batch appends; bounds the size of one write.
const MAX_BATCH_RUNS: usize = 512;
/// Most summary bytes one batch appends (at least one run is always taken).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

struct Pending {
    run: Arc<RunRecord>,
    done: oneshot::Sender<io::Result<u64>>,
}

/// Writers waiting per task. A task has an entry exactly while a flusher
/// owns it. A std mutex, not a tokio one: it is held only to push or take a
/// batch, never across I/O or an await.
type Queues = Arc<Mutex<HashMap<String, Vec<Pending>>>>;

#[derive(Debug, Clone)]
pub struct GroupCommit {
    instance: Arc<Instance>,
    queues: Queues,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("run_id", &self.run.run_id)
            .finish()
    }
}

impl GroupCommit {
    pub fn new(instance: Arc<Instance>) -> Self {
        Self {
            instance,
            queues: Queues::default(),
        }
    }

    /// Appends `run` to its task's log; resolves once it is durable, with
    /// the bytes its frame took.
    pub async fn append(&self, run: Arc<RunRecord>) -> io::Result<u64> {
        let task_id = run.task_id.clone();
        let (done, result) = oneshot::channel();
        let start_flusher = {
            let mut queues = lock(&self.queues);
            match queues.get_mut(&task_id) {
                Some(waiting) => {
                    waiting.push(Pending { run, done });
                    false
                }
                None => {
                    queues.insert(task_id.clone(), vec![Pending { run, done }]);
                    true
                }
            }
        };
        if start_flusher {
            let (instance, queues) = (Arc::clone(&self.instance), Arc::clone(&self.queues));
            // Detached on purpose: the flusher answers every writer it took,
            // whether or not the first one is still waiting.
            tokio::task::spawn_blocking(move || flush(&instance, &queues, &task_id));
        }
        result
            .await
            .map_err(|_| io::Error::other("the snapshot writer stopped before answering"))?
    }
}

fn lock(queues: &Queues) -> MutexGuard<'_, HashMap<String, Vec<Pending>>> {
    // A panic elsewhere never leaves the map half-updated: every critical
    // section is a single push, insert, drain or remove.
    queues.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Appends batches for `task_id` until nobody is waiting, then retires.
fn flush(instance: &Instance, queues: &Queues, task_id: &str) {
    let _retire_on_panic = RetireOnPanic { queues, task_id };
    loop {
        let batch = {
            let mut all = lock(queues);
            let Some(waiting) = all.get_mut(task_id) else {
                return;
            };
            if waiting.is_empty() {
                all.remove(task_id);
                return;
            }
            take_batch(waiting)
        };
        let runs: Vec<&RunRecord> = batch.iter().map(|p| p.run.as_ref()).collect();
        let appended = instance
            .owner_tag()
            .and_then(|owner| snapshot_file::append_batch(instance.root(), owner, task_id, &runs));
        match appended {
            Ok(sizes) => {
                for (pending, size) in batch.into_iter().zip(sizes) {
                    // A writer that stopped waiting is fine: its run is durable.
                    let _ = pending.done.send(Ok(size));
                }
            }
            Err(err) => {
                for pending in batch {
                    let _ = pending.done.send(Err(copy_error(&err)));
                }
            }
        }
    }
}

fn take_batch(waiting: &mut Vec<Pending>) -> Vec<Pending> {
    let mut bytes = 0;
    let count = waiting
        .iter()
        .take(MAX_BATCH_RUNS)
        .take_while(|p| {
            bytes += p.run.summary_json.len();
            bytes <= MAX_BATCH_BYTES
        })
        .count()
        .max(1);
    if count == waiting.len() {
        mem::take(waiting)
    } else {
        waiting.drain(..count).collect()
    }
}

/// Every writer of a failed batch gets its own copy of the error.
fn copy_error(err: &io::Error) -> io::Error {
    match err.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(err.kind(), err.to_string()),
    }
}

/// If a flusher panics, its task's entry is removed so later writers start a
/// new flusher; the writers it held see their channel close and fail.
struct RetireOnPanic<'a> {
    queues: &'a Queues,
    task_id: &'a str,
}

impl Drop for RetireOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            lock(self.queues).remove(self.task_id);
        }
    }
}
