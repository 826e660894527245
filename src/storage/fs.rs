//! The embedded default backend: everything under one data dir.
//!
//! ```text
//! <data-dir>/runs/<task_id>/<run_id>/manifest.json   the summary, byte for byte
//! <data-dir>/tasks/<task_id>/runs.log                the task's snapshot log
//! <data-dir>/tasks/<task_id>/runs.lock               serialises writers of that log
//! ```
//!
//! Manifests are replaced atomically (temp file, fsync, rename, fsync dir).
//! A snapshot write appends one checksummed frame to the task's log and
//! fsyncs it, so its cost does not grow with the history; the log is
//! compacted (rewritten atomically) only when it has doubled since the last
//! check and holds replaced entries. Writers of one task serialise on an
//! advisory `flock` of `runs.lock`, which works across every process sharing
//! the data dir and is released by the kernel if a writer dies: a writer
//! waits for it, it never gives up and skips the run.

use std::{
    collections::HashSet,
    fs::{self, File, OpenOptions},
    io::{self, Read},
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;

use super::{
    RunCursor, RunRecord, SnapshotPage, Storage, StorageError, StoredManifest, WriteReceipt,
    durable_file::{FILE_MODE, ensure_dirs, replace_file, sync_dir},
    history::page_of,
    snapshot_log::{self, LogRecord, TRAILER_LEN},
};

const RUNS_DIR: &str = "runs";
const TASKS_DIR: &str = "tasks";
const MANIFEST_FILE: &str = "manifest.json";
const LOG_FILE: &str = "runs.log";
const LOCK_FILE: &str = "runs.lock";
/// Logs shorter than this are never compacted: rereading them costs little.
const COMPACTION_MIN_FRAMES: u64 = 1024;

/// In-process writer slots: writers of one task queue here, on the async
/// side, so at most one blocking thread per slot waits on a task's `flock`.
/// Without them a burst on one hot task would park every blocking thread on
/// the lock and starve the manifest writes queued behind them.
const WRITER_SLOTS: usize = 64;

/// Filesystem storage rooted at a data dir.
#[derive(Debug, Clone)]
pub struct FsStorage {
    root: Arc<PathBuf>,
    writer_slots: Arc<[tokio::sync::Mutex<()>]>,
}

impl FsStorage {
    /// Opens (creating if missing) a data dir.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let root: PathBuf = root.into();
        fs::create_dir_all(&root).map_err(|err| StorageError::from_io(err, &root))?;
        for dir in [RUNS_DIR, TASKS_DIR] {
            ensure_dirs(&root, &[dir]).map_err(|err| StorageError::from_io(err, Path::new(dir)))?;
        }
        Ok(Self {
            root: Arc::new(root),
            writer_slots: (0..WRITER_SLOTS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs blocking file I/O off the async workers.
    async fn blocking<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Path) -> Result<T, StorageError> + Send + 'static,
    {
        let root = Arc::clone(&self.root);
        tokio::task::spawn_blocking(move || work(&root))
            .await
            .map_err(|err| StorageError::TaskFailed(err.to_string()))?
    }
}

/// For reads, a path component that is not a directory means there is
/// nothing stored there.
fn read_error(err: io::Error, location: &str) -> StorageError {
    match err.kind() {
        io::ErrorKind::NotADirectory => StorageError::NotFound,
        _ => StorageError::from_io(err, Path::new(location)),
    }
}

fn slot_of(task_id: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(task_id) as usize % WRITER_SLOTS
}

fn snapshot_location(task_id: &str) -> String {
    format!("{TASKS_DIR}/{task_id}/{LOG_FILE}")
}

fn manifest_location(task_id: &str, run_id: &str) -> String {
    format!("{RUNS_DIR}/{task_id}/{run_id}/{MANIFEST_FILE}")
}

#[async_trait]
impl Storage for FsStorage {
    async fn write_snapshot(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        let slot = &self.writer_slots[slot_of(&run.task_id)];
        let _queued = slot.lock().await;
        self.blocking(move |root| append_snapshot(root, &run)).await
    }

    async fn write_manifest(&self, run: Arc<RunRecord>) -> Result<WriteReceipt, StorageError> {
        self.blocking(move |root| {
            let location = manifest_location(&run.task_id, &run.run_id);
            let io_err = |err| StorageError::from_io(err, Path::new(&location));
            let dir = ensure_dirs(root, &[RUNS_DIR, &run.task_id, &run.run_id]).map_err(io_err)?;
            replace_file(&dir, MANIFEST_FILE, run.summary_json.as_bytes()).map_err(io_err)?;
            Ok(WriteReceipt {
                location,
                bytes: run.summary_json.len() as u64,
            })
        })
        .await
    }

    async fn read_manifest(
        &self,
        task_id: &str,
        run_id: &str,
    ) -> Result<StoredManifest, StorageError> {
        let location = manifest_location(task_id, run_id);
        self.blocking(move |root| {
            let io_err = |err| read_error(err, &location);
            let mut file = File::open(root.join(&location)).map_err(io_err)?;
            let written_at = file.metadata().and_then(|m| m.modified()).map_err(io_err)?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(io_err)?;
            let summary_json = String::from_utf8(bytes)
                .map_err(|_| StorageError::Corrupt(format!("{location} is not UTF-8")))?;
            Ok(StoredManifest {
                summary_json,
                written_at,
            })
        })
        .await
    }

    async fn read_snapshot(
        &self,
        task_id: &str,
        after: Option<RunCursor>,
        limit: usize,
    ) -> Result<SnapshotPage, StorageError> {
        let location = snapshot_location(task_id);
        self.blocking(move |root| {
            // No lock: the log only ever grows by whole frames or is replaced
            // by rename, and a frame still being appended fails its checks.
            let bytes = fs::read(root.join(&location)).map_err(|err| read_error(err, &location))?;
            let (records, _) = snapshot_log::decode_all(&bytes);
            let runs = records
                .into_iter()
                .map(LogRecord::into_stored_run)
                .collect();
            page_of(runs, after, limit).ok_or(StorageError::NotFound)
        })
        .await
    }

    fn snapshot_location(&self, task_id: &str) -> String {
        snapshot_location(task_id)
    }

    fn manifest_location(&self, task_id: &str, run_id: &str) -> String {
        manifest_location(task_id, run_id)
    }

    async fn check_health(&self) -> Result<(), StorageError> {
        self.blocking(|root| {
            let name = format!(".health-probe-{}", std::process::id());
            let io_err = |err| StorageError::from_io(err, Path::new(&name));
            let stamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
                .to_string();
            replace_file(root, &name, stamp.as_bytes()).map_err(io_err)?;
            fs::remove_file(root.join(&name)).map_err(io_err)
        })
        .await
    }
}

/// Appends `run` to its task's log under the task's exclusive lock.
fn append_snapshot(root: &Path, run: &RunRecord) -> Result<WriteReceipt, StorageError> {
    let location = snapshot_location(&run.task_id);
    let io_err = |err| StorageError::from_io(err, Path::new(&location));

    let dir = ensure_dirs(root, &[TASKS_DIR, &run.task_id]).map_err(io_err)?;
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(FILE_MODE)
        .open(dir.join(LOCK_FILE))
        .map_err(io_err)?;
    // Blocks until every other writer of this task, in any process, is done.
    // The kernel releases it when `lock` is dropped or its process dies.
    lock.lock().map_err(io_err)?;

    // Opened only under the lock: compaction may have replaced the file.
    let (log, created) = open_log(&dir.join(LOG_FILE)).map_err(io_err)?;
    let tail = read_tail(&log).map_err(io_err)?;
    let record = next_record(tail.last.as_ref(), run);

    let bytes = if compaction_due(&record) {
        compact_and_append(&dir, &log, tail.valid_len, record).map_err(io_err)?
    } else {
        append_frame(&log, tail.valid_len, &record).map_err(io_err)?
    };
    if created {
        sync_dir(&dir).map_err(io_err)?;
    }
    Ok(WriteReceipt { location, bytes })
}

fn open_log(path: &Path) -> io::Result<(File, bool)> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => Ok((file, false)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(FILE_MODE)
                .open(path)?;
            Ok((file, true))
        }
        Err(err) => Err(err),
    }
}

fn next_record(previous: Option<&LogRecord>, run: &RunRecord) -> LogRecord {
    LogRecord {
        seq: previous.map_or(0, |p| p.seq + 1),
        frame_index: previous.map_or(0, |p| p.frame_index + 1),
        compacted_frames: previous.map_or(0, |p| p.compacted_frames),
        instant: run.instant,
        run_id: run.run_id.clone(),
        timestamp: run.timestamp.clone(),
        summary_json: run.summary_json.clone(),
    }
}

/// The end of a log as a writer needs it: the last whole record and where
/// the valid data ends.
struct Tail {
    last: Option<LogRecord>,
    valid_len: u64,
}

/// Reads the last frame from the end of the file, O(one frame). Only if that
/// frame is torn (a writer died mid-append) does it scan the whole log, cut
/// the torn tail and make the cut durable.
fn read_tail(log: &File) -> io::Result<Tail> {
    let len = log.metadata()?.len();
    if len == 0 {
        return Ok(Tail {
            last: None,
            valid_len: 0,
        });
    }
    if let Some(last) = read_last_frame(log, len)? {
        return Ok(Tail {
            last: Some(last),
            valid_len: len,
        });
    }
    let bytes = read_prefix(log, len)?;
    let (mut records, valid_len) = snapshot_log::decode_all(&bytes);
    tracing::warn!(
        file_len = len,
        valid_len,
        "snapshot log has a torn tail; cutting it"
    );
    log.set_len(valid_len as u64)?;
    log.sync_data()?;
    Ok(Tail {
        last: records.pop(),
        valid_len: valid_len as u64,
    })
}

fn read_last_frame(log: &File, len: u64) -> io::Result<Option<LogRecord>> {
    if len < TRAILER_LEN as u64 {
        return Ok(None);
    }
    let mut trailer = [0u8; TRAILER_LEN];
    log.read_exact_at(&mut trailer, len - TRAILER_LEN as u64)?;
    let Some(frame_len) = snapshot_log::last_frame_len(&trailer) else {
        return Ok(None);
    };
    if frame_len as u64 > len {
        return Ok(None);
    }
    let mut frame = vec![0u8; frame_len];
    log.read_exact_at(&mut frame, len - frame_len as u64)?;
    Ok(snapshot_log::decode_last_frame(&frame).map(|(record, _)| record))
}

/// Reads the first `len` bytes of a file.
fn read_prefix(file: &File, len: u64) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

fn encode_frame(record: &LogRecord, out: &mut Vec<u8>) -> io::Result<()> {
    snapshot_log::encode(record, out)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))
}

/// Writes one frame at the end of the valid data and makes it durable. On
/// failure the file is cut back so no partial frame is left behind.
fn append_frame(log: &File, at: u64, record: &LogRecord) -> io::Result<u64> {
    let mut frame = Vec::new();
    encode_frame(record, &mut frame)?;
    let result = log.write_all_at(&frame, at).and_then(|()| log.sync_data());
    if let Err(err) = result {
        // Best effort: readers already ignore a partial frame, and the next
        // writer cuts it if this fails too.
        let _ = log.set_len(at).and_then(|()| log.sync_data());
        return Err(err);
    }
    Ok(frame.len() as u64)
}

/// The log is rechecked once it holds at least twice the frames it held at
/// the last check, so compaction costs O(1) per write amortised.
fn compaction_due(record: &LogRecord) -> bool {
    record.frame_index >= COMPACTION_MIN_FRAMES
        && record.frame_index >= record.compacted_frames.saturating_mul(2)
}

/// Drops entries replaced by a later write of the same run id. When there
/// are none the log is left as it is and only the check is recorded.
fn compact_and_append(
    dir: &Path,
    log: &File,
    valid_len: u64,
    mut record: LogRecord,
) -> io::Result<u64> {
    let bytes = read_prefix(log, valid_len)?;
    let (records, _) = snapshot_log::decode_all(&bytes);

    let mut seen = HashSet::from([record.run_id.as_str()]);
    let mut live: Vec<&LogRecord> = records
        .iter()
        .rev()
        .filter(|r| seen.insert(r.run_id.as_str()))
        .collect();
    live.reverse();

    if live.len() == records.len() {
        record.compacted_frames = record.frame_index + 1;
        return append_frame(log, valid_len, &record);
    }

    let kept = live.len() as u64 + 1;
    let mut out = Vec::with_capacity(bytes.len());
    for (index, old) in live.into_iter().enumerate() {
        let renumbered = LogRecord {
            frame_index: index as u64,
            compacted_frames: kept,
            ..old.clone()
        };
        encode_frame(&renumbered, &mut out)?;
    }
    record.frame_index = kept - 1;
    record.compacted_frames = kept;
    let before = out.len();
    encode_frame(&record, &mut out)?;
    tracing::info!(
        frames_before = records.len(),
        frames_after = kept,
        "compacted snapshot log"
    );
    replace_file(dir, LOG_FILE, &out)?;
    Ok((out.len() - before) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::RunInstant;

    fn run(task: &str, run_id: &str, secs: i64) -> RunRecord {
        RunRecord {
            task_id: task.into(),
            run_id: run_id.into(),
            timestamp: format!("ts-{secs}"),
            instant: RunInstant { secs, nanos: 0 },
            summary_json: format!(r#"{{"runId":"{run_id}"}}"#),
        }
    }

    fn log_records(root: &Path, task: &str) -> Vec<LogRecord> {
        let bytes = fs::read(root.join(snapshot_location(task))).expect("read log");
        snapshot_log::decode_all(&bytes).0
    }

    #[test]
    fn a_torn_tail_is_cut_before_the_next_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FsStorage::open(dir.path()).expect("open");
        append_snapshot(storage.root(), &run("t", "a", 1)).expect("append a");
        let log_path = dir.path().join(snapshot_location("t"));
        let mut torn = fs::read(&log_path).expect("read");
        torn.extend_from_slice(b"RSL1\x10\x00\x00");
        fs::write(&log_path, &torn).expect("tear");

        append_snapshot(storage.root(), &run("t", "b", 2)).expect("append b");
        let ids: Vec<_> = log_records(dir.path(), "t")
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn compaction_drops_replaced_entries_and_keeps_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FsStorage::open(dir.path()).expect("open");
        // Rewrite the same 10 run ids over and over: the log must not keep
        // every version once it is due for compaction.
        for i in 0..(COMPACTION_MIN_FRAMES + 10) {
            let id = format!("r{}", i % 10);
            append_snapshot(storage.root(), &run("t", &id, i as i64)).expect("append");
        }
        let records = log_records(dir.path(), "t");
        assert!(
            records.len() < 100,
            "log still holds {} frames",
            records.len()
        );
        let seqs: Vec<_> = records.iter().map(|r| r.seq).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "compaction must keep recording order");
        let mut ids: Vec<_> = records.iter().map(|r| r.run_id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 10);
    }
}
