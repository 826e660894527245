//! What PostgreSQL's errors mean for a caller, as backend-neutral
//! [`StorageError`] kinds, by SQLSTATE class.

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use crate::storage::StorageError;

pub fn classify(err: &tokio_postgres::Error) -> StorageError {
    let detail = match err.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => err.to_string(),
    };
    let Some(code) = err.code() else {
        // No SQLSTATE: the connection broke or could not be made.
        return StorageError::Unavailable(detail);
    };
    let class = &code.code()[..2];
    match class {
        // connection exception; operator intervention (shutdown, crash
        // recovery, cannot connect now); system error (I/O)
        "08" | "57" | "58" => StorageError::Unavailable(detail),
        // insufficient resources: disk full, out of memory, too many connections
        "53" => StorageError::Exhausted(detail),
        // transaction rollback: serialization failure, deadlock
        "40" => StorageError::Aborted(detail),
        // integrity constraint violation; data exception; a trigger's or
        // function's RAISE (P0001)
        "23" | "22" => StorageError::Invalid(detail),
        _ if *code == SqlState::RAISE_EXCEPTION => StorageError::Invalid(detail),
        _ if *code == SqlState::LOCK_NOT_AVAILABLE || *code == SqlState::QUERY_CANCELED => {
            StorageError::Aborted(detail)
        }
        // internal error: data corrupted, index corrupted
        "XX" if *code != SqlState::INTERNAL_ERROR => StorageError::Corrupt(detail),
        _ => StorageError::Internal(detail),
    }
}

/// Whether the error says the server cannot be reached right now.
pub fn is_unreachable(err: &StorageError) -> bool {
    matches!(err, StorageError::Unavailable(_))
}

pub fn classify_pool(err: &PoolError) -> StorageError {
    match err {
        PoolError::Backend(e) => classify(e),
        PoolError::Timeout(kind) => {
            StorageError::Unavailable(format!("no database connection in time ({kind:?})"))
        }
        other => StorageError::Unavailable(other.to_string()),
    }
}
