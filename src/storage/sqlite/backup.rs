//! `runstore backup`: a consistent copy of the live database.
//!
//! `VACUUM INTO` reads the whole database in one read transaction. In WAL
//! mode that is a snapshot as of the last commit before it began, and it
//! never takes the write lock, so the server keeps committing meanwhile. The
//! copy is written to a temporary file next to the target, checked, fsynced
//! and only then linked into place, so the target is either absent or a
//! whole, checked database, also after a crash.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rusqlite::{Connection, OpenFlags};

use super::connection::{DATABASE_FILE, LockWait};
use crate::storage::migrations::{self, SQLITE as MIGRATIONS};

/// What a backup wrote.
#[derive(Debug)]
pub struct BackupReport {
    pub source: PathBuf,
    pub target: PathBuf,
    pub bytes: u64,
    pub schema_version: i64,
    /// Manifests in the copy.
    pub runs: i64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path} exists already; a backup never overwrites a file")]
    TargetExists { path: PathBuf },
    #[error("no database at {path}")]
    NoDatabase { path: PathBuf },
    #[error("{path} holds no runstore schema (no schema_migrations)")]
    NoSchema { path: PathBuf },
    #[error(
        "{path} has schema version {found}, newer than this binary's {known}: back it up with the newer release"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("{action} {path}: {source}")]
    Sqlite {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the copy {path} failed PRAGMA quick_check: {report}")]
    CheckFailed { path: PathBuf, report: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Copies `<data_dir>/runstore.db` to `target`, which must not exist. Never
/// creates the data dir or the database, never migrates.
pub fn backup(
    data_dir: &Path,
    target: &Path,
    lock_wait: LockWait,
) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let source = data_dir.join(DATABASE_FILE);
    if !source.is_file() {
        return Err(BackupError::NoDatabase { path: source });
    }
    if target.symlink_metadata().is_ok() {
        return Err(BackupError::TargetExists {
            path: target.to_path_buf(),
        });
    }
    let sqlite = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Sqlite {
            action,
            path,
            source,
        }
    };
    // Without SQLITE_OPEN_CREATE: a database removed meanwhile is an error,
    // not a new empty file.
    let conn = Connection::open_with_flags(
        &source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite("opening", &source))?;
    conn.busy_timeout(lock_wait.timeout)
        .map_err(sqlite("opening", &source))?;
    check_schema(&conn, &source)?;

    let partial = Partial::create(target)?;
    conn.execute("VACUUM INTO ?1", [partial.path.to_string_lossy()])
        .map_err(sqlite("copying into", &partial.path))?;
    drop(conn);

    let (schema_version, runs) = check_copy(&partial.path)?;
    let bytes = partial.persist(target)?;
    Ok(BackupReport {
        source,
        target: target.to_path_buf(),
        bytes,
        schema_version,
        runs,
        elapsed: started.elapsed(),
    })
}

/// Refuses a database this binary does not know the schema of: its copy
/// could not be checked, nor served by this release.
fn check_schema(conn: &Connection, path: &Path) -> Result<(), BackupError> {
    let found: Option<i64> =
        match conn.query_row("SELECT MAX(version) FROM schema_migrations", [], |row| {
            row.get(0)
        }) {
            Ok(found) => found,
            // A database file the server created but has not migrated yet.
            Err(rusqlite::Error::SqliteFailure(_, Some(message)))
                if message.starts_with("no such table") =>
            {
                None
            }
            Err(source) => {
                return Err(BackupError::Sqlite {
                    action: "reading the schema version of",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
    let known = migrations::latest(MIGRATIONS);
    match found {
        None => Err(BackupError::NoSchema {
            path: path.to_path_buf(),
        }),
        Some(found) if found > known => Err(BackupError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            known,
        }),
        Some(_) => Ok(()),
    }
}

/// `PRAGMA quick_check` on the copy, then its schema version and run count.
fn check_copy(path: &Path) -> Result<(i64, i64), BackupError> {
    let err = |source| BackupError::Sqlite {
        action: "checking the copy",
        path: path.to_path_buf(),
        source,
    };
    // VACUUM INTO writes a rollback-journal database: no -shm needed to read it.
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
    let report: Vec<String> = conn
        .prepare("PRAGMA quick_check")
        .map_err(err)?
        .query_map([], |row| row.get(0))
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    if report != ["ok"] {
        return Err(BackupError::CheckFailed {
            path: path.to_path_buf(),
            report: report.join("; "),
        });
    }
    conn.query_row(
        "SELECT (SELECT MAX(version) FROM schema_migrations),
                (SELECT count(*) FROM manifests)",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .map_err(err)
}

/// The copy being written, removed on drop unless persisted.
struct Partial {
    path: PathBuf,
    persisted: bool,
}

impl Partial {
    /// An empty 0600 file next to `target` (VACUUM INTO writes into an empty
    /// file and keeps its mode).
    fn create(target: &Path) -> Result<Self, BackupError> {
        let name = target.file_name().ok_or_else(|| BackupError::Io {
            action: "naming the copy",
            path: target.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
        })?;
        let mut partial_name = std::ffi::OsString::from(".");
        partial_name.push(name);
        partial_name.push(format!(".partial-{}", std::process::id()));
        let path = target.with_file_name(partial_name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| BackupError::Io {
                action: "creating",
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            persisted: false,
        })
    }

    /// Fsyncs the copy, links it in as `target` (failing if `target` appeared
    /// meanwhile: link(2) never replaces) and fsyncs the directory. Returns
    /// its size.
    fn persist(mut self, target: &Path) -> Result<u64, BackupError> {
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| BackupError::Io {
                action,
                path,
                source,
            }
        };
        let file = File::open(&self.path).map_err(io_err("opening", &self.path))?;
        file.sync_all().map_err(io_err("fsyncing", &self.path))?;
        let bytes = file
            .metadata()
            .map_err(io_err("reading the size of", &self.path))?
            .len();
        match std::fs::hard_link(&self.path, target) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                return Err(BackupError::TargetExists {
                    path: target.to_path_buf(),
                });
            }
            Err(err) => return Err(io_err("linking the copy in as", target)(err)),
        }
        self.persisted = true;
        std::fs::remove_file(&self.path).map_err(io_err("removing", &self.path))?;
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsyncing", dir))?;
        Ok(bytes)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
