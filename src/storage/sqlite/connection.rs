//! Opening the database: the data dir and file with owner-only permissions
//! and durable directory entries, and every connection with the same
//! durability settings and lock-wait policy.

use std::{
    fs::{DirBuilder, File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rusqlite::{Connection, OpenFlags};

/// The database file inside the data dir.
pub const DATABASE_FILE: &str = "runstore.db";

/// Why the data dir or database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenDatabaseError {
    #[error("creating data dir {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("data dir {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("creating database file {path}: {source}")]
    CreateFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

/// Creates the data dir (0700) and the database file (0600) if missing, and
/// fsyncs every directory whose entries changed, so that a power cut cannot
/// take away a database that was already acknowledged writes. Returns the
/// database's path.
pub fn prepare_data_dir(data_dir: &Path) -> Result<PathBuf, OpenDatabaseError> {
    create_dir_durably(data_dir)?;
    let path = data_dir.join(DATABASE_FILE);
    // SQLite gives the -wal and -shm files the database file's mode, so
    // creating it 0600 keeps all three private.
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(file) => {
            let synced = file.sync_all().and_then(|()| sync_dir(data_dir));
            synced.map_err(|source| OpenDatabaseError::CreateFile {
                path: path.clone(),
                source,
            })?;
        }
        // Another process (or an earlier start) created it.
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(OpenDatabaseError::CreateFile { path, source }),
    }
    Ok(path)
}

/// `mkdir -p` with mode 0700 that fsyncs the parent of every directory it
/// creates. A directory created concurrently by another process is synced
/// too: its creator may not have got that far.
fn create_dir_durably(dir: &Path) -> Result<(), OpenDatabaseError> {
    let err = |source| OpenDatabaseError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    if dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        return Err(OpenDatabaseError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_dir_durably(parent)?;
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(err(e)),
    }
    sync_dir(parent).map_err(err)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How long a write waits for another process's lock before it fails with
/// ABORTED, and how often it looks. SQLite's own busy handler backs off up
/// to 100 ms between tries, so a waiting process loses almost every race to
/// one that commits in a loop; short, jittered sleeps keep two processes fair.
#[derive(Debug, Clone, Copy)]
pub struct LockWait {
    pub timeout: Duration,
}

impl Default for LockWait {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
        }
    }
}

/// Opens one connection with WAL, `synchronous=FULL` (every commit fsyncs
/// the WAL), foreign-key checks and the lock-wait policy.
pub fn open_connection(path: &Path, lock_wait: LockWait) -> Result<Connection, OpenDatabaseError> {
    let err = |source| OpenDatabaseError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    install_busy_handler(&mut conn, lock_wait).map_err(err)?;
    // Before WAL, whose switch writes the header of a fresh database: only
    // a fresh one takes it (an existing file keeps its mode until VACUUM).
    // Pages that deletes and retention free are reused first; incremental
    // vacuum (`writes::reclaim`) hands what is left back to the file system.
    conn.execute_batch("PRAGMA auto_vacuum=INCREMENTAL")
        .map_err(err)?;
    let mode = set_wal_mode(&conn, lock_wait).map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, WAL required"
        ))));
    }
    conn.execute_batch(
        "PRAGMA synchronous=FULL;
         PRAGMA foreign_keys=ON;
         PRAGMA journal_size_limit=67108864;",
    )
    .map_err(err)?;
    Ok(conn)
}

/// Switches a fresh database to WAL (a no-op on one that is already). The
/// switch upgrades a shared lock to an exclusive one, and SQLite answers
/// SQLITE_BUSY at once, without its busy handler, where an upgrade could
/// deadlock with another process's: so processes opening a fresh data dir
/// together retry here, within the lock timeout.
fn set_wal_mode(conn: &Connection, lock_wait: LockWait) -> rusqlite::Result<String> {
    let started = Instant::now();
    loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && started.elapsed() < lock_wait.timeout =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            result => return result,
        }
    }
}

/// The committer's connection: as [`open_connection`], with automatic
/// checkpoints off (the checkpointer thread does them, off the commit path)
/// and a page cache of 16 MiB instead of 2: a batch touches the last leaf of
/// every busy task in each index, and with 2 MiB those were read back from
/// the OS on every commit (9 % of the committer's time at c64).
pub fn open_write_connection(
    path: &Path,
    lock_wait: LockWait,
) -> Result<Connection, OpenDatabaseError> {
    let conn = open_connection(path, lock_wait)?;
    conn.execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=-16384")
        .map_err(|source| OpenDatabaseError::Sqlite {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(conn)
}

pub fn install_busy_handler(conn: &mut Connection, lock_wait: LockWait) -> rusqlite::Result<()> {
    let mut waiting_since: Option<Instant> = None;
    conn.busy_handler(Some(move |attempt: i32| {
        // `attempt` restarts at 0 for every new wait.
        if attempt == 0 {
            waiting_since = None;
        }
        let started = *waiting_since.get_or_insert_with(Instant::now);
        if started.elapsed() >= lock_wait.timeout {
            return false;
        }
        // 0.5–1.5 ms: short enough to catch the lock between another
        // process's commits, jittered so two waiters do not move in step.
        let jitter = u64::from(started.elapsed().subsec_nanos() % 1000);
        std::thread::sleep(Duration::from_micros(500 + jitter));
        true
    }))
}

/// Free bytes on the file system holding `dir`, for unprivileged users.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    let stats = rustix::fs::statvfs(dir)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}
