//! Appending to one task's snapshot log on disk, crash-safely and under the
//! task's cross-process lock. A call appends a whole batch of runs with one
//! write and one fsync: group commit.
//!
//! ```text
//! <data-dir>/tasks/<task_id>/runs.log    the log (format: `snapshot_log`)
//! <data-dir>/tasks/<task_id>/runs.lock   writers of the log `flock` it
//! ```
//!
//! The lock is an advisory `flock`, which works across every process sharing
//! the data dir and is released by the kernel if a writer dies: a writer
//! waits for it; it never gives up and skips a run.

use std::{
    collections::HashSet,
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::Path,
};

use super::{
    RunRecord,
    durable_file::{FILE_MODE, ensure_dirs, replace_file, sync_dir},
    snapshot_log::{self, LogRecord, TRAILER_LEN},
};

pub const TASKS_DIR: &str = "tasks";
pub const LOG_FILE: &str = "runs.log";
const LOCK_FILE: &str = "runs.lock";
/// Logs shorter than this are never compacted: rereading them costs little.
const COMPACTION_MIN_FRAMES: u64 = 1024;

/// Where a task's log lives, relative to the data dir.
pub fn location(task_id: &str) -> String {
    format!("{TASKS_DIR}/{task_id}/{LOG_FILE}")
}

/// Appends `runs` (all of one task, in order) to the task's log and makes
/// them durable with a single fsync. Returns the bytes written per run.
/// Either every run of the batch is durable or the call fails.
/// `owner` tags the temp file of a compaction (see `durable_file`).
pub fn append_batch(
    root: &Path,
    owner: &str,
    task_id: &str,
    runs: &[&RunRecord],
) -> io::Result<Vec<u64>> {
    let dir = ensure_dirs(root, &[TASKS_DIR, task_id])?;
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(FILE_MODE)
        .open(dir.join(LOCK_FILE))?;
    // Blocks until every other writer of this task, in any process, is done.
    // The kernel releases it when `lock` is dropped or its process dies.
    lock.lock()?;

    // Opened only under the lock: compaction may have replaced the file.
    let (log, created) = open_log(&dir.join(LOG_FILE))?;
    let tail = read_tail(&log)?;
    let mut previous = tail.last;
    let records: Vec<LogRecord> = runs
        .iter()
        .map(|run| {
            let record = next_record(previous.as_ref(), run);
            previous = Some(record.clone());
            record
        })
        .collect();

    let sizes = match records.last() {
        Some(last) if compaction_due(last) => {
            compact_and_append(&dir, owner, &log, tail.valid_len, records)?
        }
        _ => append_frames(&log, tail.valid_len, &records)?,
    };
    if created {
        sync_dir(&dir)?;
    }
    Ok(sizes)
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

/// Payload fields are only kept as the frame's bytes; cloning the summary
/// into the record is the price of one encoder for appends and compaction.
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

/// Encodes records after one another; returns each one's frame size.
fn encode_frames<'a>(
    records: impl IntoIterator<Item = &'a LogRecord>,
    out: &mut Vec<u8>,
) -> io::Result<Vec<u64>> {
    records
        .into_iter()
        .map(|record| {
            let before = out.len();
            snapshot_log::encode(record, out)
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
            Ok((out.len() - before) as u64)
        })
        .collect()
}

/// Writes frames at the end of the valid data and makes them durable. On
/// failure the file is cut back so no partial frame is left behind.
fn append_frames(log: &File, at: u64, records: &[LogRecord]) -> io::Result<Vec<u64>> {
    let mut frames = Vec::new();
    let sizes = encode_frames(records, &mut frames)?;
    let result = log.write_all_at(&frames, at).and_then(|()| log.sync_data());
    if let Err(err) = result {
        // Best effort: readers already ignore a partial frame, and the next
        // writer cuts it if this fails too.
        let _ = log.set_len(at).and_then(|()| log.sync_data());
        return Err(err);
    }
    Ok(sizes)
}

/// The log is rechecked once it holds at least twice the frames it held at
/// the last check, so compaction costs O(1) per write amortised.
fn compaction_due(record: &LogRecord) -> bool {
    record.frame_index >= COMPACTION_MIN_FRAMES
        && record.frame_index >= record.compacted_frames.saturating_mul(2)
}

/// Drops entries replaced by a later write of the same run id, then appends
/// `new`. When nothing was replaced the log is left as it is and only the
/// check is recorded in the new frames.
fn compact_and_append(
    dir: &Path,
    owner: &str,
    log: &File,
    valid_len: u64,
    mut new: Vec<LogRecord>,
) -> io::Result<Vec<u64>> {
    let bytes = read_prefix(log, valid_len)?;
    let (old, _) = snapshot_log::decode_all(&bytes);

    let mut seen: HashSet<&str> = new.iter().map(|r| r.run_id.as_str()).collect();
    let mut live: Vec<&LogRecord> = old
        .iter()
        .rev()
        .filter(|r| seen.insert(r.run_id.as_str()))
        .collect();
    live.reverse();

    if live.len() == old.len() {
        let checked = new.last().map_or(0, |r| r.frame_index + 1);
        new.iter_mut().for_each(|r| r.compacted_frames = checked);
        return append_frames(log, valid_len, &new);
    }

    let kept = (live.len() + new.len()) as u64;
    let renumbered: Vec<LogRecord> = live
        .into_iter()
        .cloned()
        .chain(new.iter().cloned())
        .enumerate()
        .map(|(index, record)| LogRecord {
            frame_index: index as u64,
            compacted_frames: kept,
            ..record
        })
        .collect();
    let mut out = Vec::with_capacity(bytes.len());
    let sizes = encode_frames(&renumbered, &mut out)?;
    tracing::info!(
        frames_before = old.len(),
        frames_after = kept,
        "compacted snapshot log"
    );
    replace_file(dir, LOG_FILE, &out, owner)?;
    Ok(sizes[sizes.len() - new.len()..].to_vec())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::storage::RunInstant;

    fn run(run_id: &str, secs: i64) -> RunRecord {
        RunRecord {
            task_id: "t".into(),
            run_id: run_id.into(),
            timestamp: format!("ts-{secs}"),
            instant: RunInstant { secs, nanos: 0 },
            summary_json: format!(r#"{{"runId":"{run_id}"}}"#),
        }
    }

    fn log_records(root: &Path) -> Vec<LogRecord> {
        let bytes = fs::read(root.join(location("t"))).expect("read log");
        snapshot_log::decode_all(&bytes).0
    }

    #[test]
    fn a_batch_is_appended_in_order_with_consecutive_seqs() {
        let dir = tempfile::tempdir().expect("tempdir");
        append_batch(dir.path(), "test", "t", &[&run("a", 1)]).expect("first");
        let sizes =
            append_batch(dir.path(), "test", "t", &[&run("b", 2), &run("c", 3)]).expect("batch");
        assert_eq!(sizes.len(), 2);
        let records = log_records(dir.path());
        let got: Vec<_> = records.iter().map(|r| (r.run_id.as_str(), r.seq)).collect();
        assert_eq!(got, [("a", 0), ("b", 1), ("c", 2)]);
    }

    #[test]
    fn a_torn_tail_is_cut_before_the_next_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        append_batch(dir.path(), "test", "t", &[&run("a", 1)]).expect("append a");
        let log_path = dir.path().join(location("t"));
        let mut torn = fs::read(&log_path).expect("read");
        torn.extend_from_slice(b"RSL1\x10\x00\x00");
        fs::write(&log_path, &torn).expect("tear");

        append_batch(dir.path(), "test", "t", &[&run("b", 2)]).expect("append b");
        let ids: Vec<_> = log_records(dir.path())
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn compaction_drops_replaced_entries_and_keeps_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Rewrite the same 10 run ids over and over: the log must not keep
        // every version once it is due for compaction.
        for i in 0..(COMPACTION_MIN_FRAMES + 10) {
            let id = format!("r{}", i % 10);
            append_batch(dir.path(), "test", "t", &[&run(&id, i as i64)]).expect("append");
        }
        let records = log_records(dir.path());
        assert!(
            records.len() < 100,
            "log still holds {} frames",
            records.len()
        );
        let seqs: Vec<_> = records.iter().map(|r| r.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "compaction keeps recording order"
        );
        let ids: HashSet<_> = records.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids.len(), 10);
    }
}
