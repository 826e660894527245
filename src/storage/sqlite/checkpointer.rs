//! WAL checkpoints off the commit path. SQLite's automatic checkpoint runs
//! inside the COMMIT that crosses the WAL's size threshold, so that commit
//! (and every caller in its batch) waits while pages are copied into the
//! database and the database is fsynced. Here the committer's connection
//! has auto-checkpointing off and this thread checkpoints in PASSIVE mode,
//! which never takes the write lock: commits go on meanwhile.

use std::{
    path::PathBuf,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use rusqlite::Connection;

use super::connection::{LockWait, install_busy_handler, open_connection};

/// How often the WAL is checkpointed.
const INTERVAL: Duration = Duration::from_millis(250);
/// WAL frames (pages) past which the WAL is restarted: about 32 MiB.
const RESTART_FRAMES: i64 = 8192;
/// Longest a RESTART waits, for the write lock and then for readers. It
/// holds the write lock while it waits for readers, and one on an old
/// snapshot (`runstore backup`'s long read) never leaves in time: a full
/// lock timeout there would stall every commit that long, each round.
const RESTART_WAIT: Duration = Duration::from_millis(50);

/// Dropping it stops the thread after one last checkpoint.
pub struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub fn start(path: PathBuf, lock_wait: LockWait) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("sqlite-checkpointer".into())
            .spawn(move || run(&path, lock_wait, &stopped))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(path: &std::path::Path, lock_wait: LockWait, stopped: &mpsc::Receiver<()>) {
    let mut conn = match open_connection(path, lock_wait) {
        Ok(conn) => conn,
        Err(err) => {
            tracing::error!(error = %err, "WAL checkpointer cannot open the database; SQLite will not checkpoint");
            return;
        }
    };
    loop {
        let stopping = !matches!(
            stopped.recv_timeout(INTERVAL),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        let started = Instant::now();
        // (busy, WAL frames, frames checkpointed)
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        });
        // A writer that never pauses can keep the WAL from ever starting
        // over, so past a size a RESTART checkpoint takes the write lock
        // briefly (the PASSIVE pass above has copied almost everything) and
        // makes the next commits overwrite the file from its start. RESTART,
        // not TRUNCATE: overwriting blocks the file already has makes each
        // commit's fsync cheaper than growing it would (journal_size_limit
        // trims what is past 64 MiB).
        if matches!(result, Ok((_, frames, _)) if frames > RESTART_FRAMES)
            && let Err(err) = restart(&mut conn, lock_wait)
        {
            tracing::warn!(error = %err, "WAL restart failed");
        }
        match result {
            Ok((_, frames, done)) if frames > 0 => tracing::debug!(
                frames,
                done,
                micros = started.elapsed().as_micros() as u64,
                "WAL checkpoint"
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "WAL checkpoint failed"),
        }
        if stopping {
            return;
        }
    }
}

/// A RESTART checkpoint bounded by [`RESTART_WAIT`]; one that gives up is
/// tried again next round.
fn restart(conn: &mut Connection, lock_wait: LockWait) -> rusqlite::Result<()> {
    install_busy_handler(
        conn,
        LockWait {
            timeout: RESTART_WAIT,
        },
    )?;
    let result = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()));
    install_busy_handler(conn, lock_wait)?;
    result
}
