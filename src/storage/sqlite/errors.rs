//! What SQLite's result codes mean for a caller, as backend-neutral
//! [`StorageError`] kinds.
//!
//! Statement errors that fail one write alone (its savepoint is rolled back,
//! the rest of the batch commits): SQLITE_CONSTRAINT (a constraint or a
//! trigger's RAISE), SQLITE_TOOBIG, SQLITE_MISMATCH. Errors after which
//! SQLite may roll the whole transaction back, and so fail the batch:
//! SQLITE_FULL, SQLITE_IOERR, SQLITE_BUSY, SQLITE_NOMEM, SQLITE_CORRUPT — the
//! committer checks whether the transaction survived instead of guessing.

use rusqlite::ErrorCode;

use crate::storage::StorageError;

pub fn classify(err: &rusqlite::Error) -> StorageError {
    let detail = err.to_string();
    let rusqlite::Error::SqliteFailure(failure, _) = err else {
        return StorageError::Internal(detail);
    };
    match failure.code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StorageError::Aborted(format!(
            "another process held the database lock too long: {detail}"
        )),
        ErrorCode::DiskFull | ErrorCode::OutOfMemory => StorageError::Exhausted(detail),
        ErrorCode::SystemIoFailure
        | ErrorCode::CannotOpen
        | ErrorCode::ReadOnly
        | ErrorCode::PermissionDenied
        | ErrorCode::FileLockingProtocolFailed
        | ErrorCode::NoLargeFileSupport => StorageError::Unavailable(detail),
        ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => StorageError::Corrupt(detail),
        ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch => {
            StorageError::Invalid(detail)
        }
        _ => StorageError::Internal(detail),
    }
}

/// Whether an error leaves the connection in doubt (its view of the files
/// may not match the disk), so the committer reopens it before going on.
pub fn needs_reopen(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::SystemIoFailure | ErrorCode::DatabaseCorrupt | ErrorCode::CannotOpen)
    )
}
