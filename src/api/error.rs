//! Errors of the gRPC API and the one place where they, and storage
//! failures, become gRPC status codes.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::storage::StorageError;

/// Why a call was refused or failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {rule}")]
    InvalidArgument { field: &'static str, rule: String },
    #[error("summary_json: {size} bytes is over the {limit}-byte limit")]
    SummaryTooLarge { size: usize, limit: usize },
    #[error("this token lacks the `{scope}` scope that {rpc} needs")]
    PermissionDenied {
        rpc: &'static str,
        scope: &'static str,
    },
    #[error("{0} not found")]
    NotFound(String),
    #[error("the server is shutting down; retry on another replica")]
    ShuttingDown,
    #[error(
        "the deadline passed before both writes finished; they go on and may complete, and a retry is safe"
    )]
    DeadlineExceeded,
    #[error("the server is at its limit of {limit} calls in flight; retry with backoff")]
    Overloaded { limit: usize },
    #[error(
        "this watcher fell {} events behind; resume after {resume_after}",
        crate::api::watch::BUFFER
    )]
    WatcherBehind { resume_after: String },
    #[error("the server is shutting down; resume after {resume_after} on another replica")]
    WatchInterrupted { resume_after: String },
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// The ErrorInfo that tells a watcher where to resume.
fn resume_info(reason: &str, resume_after: String) -> ErrorDetails {
    ErrorDetails::with_error_info(
        reason,
        "runstore",
        [("resume_after".to_owned(), resume_after)],
    )
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let message = err.to_string();
        match err {
            ApiError::InvalidArgument { field, rule } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation(field, rule),
            ),
            ApiError::SummaryTooLarge { .. } | ApiError::Overloaded { .. } => {
                Status::resource_exhausted(message)
            }
            ApiError::PermissionDenied { .. } => Status::permission_denied(message),
            ApiError::NotFound(_) => Status::not_found(message),
            ApiError::ShuttingDown => Status::unavailable(message),
            ApiError::DeadlineExceeded => Status::deadline_exceeded(message),
            ApiError::WatcherBehind { resume_after } => Status::with_error_details(
                Code::Aborted,
                message,
                resume_info("WATCHER_BEHIND", resume_after),
            ),
            ApiError::WatchInterrupted { resume_after } => Status::with_error_details(
                Code::Unavailable,
                message,
                resume_info("SHUTTING_DOWN", resume_after),
            ),
            ApiError::Storage(StorageError::CursorPruned) => Status::out_of_range(
                "events after this cursor have been pruned (--event-retention): read again and watch from now",
            ),
            ApiError::Storage(source) => {
                tracing::error!(error = %source, "storage read failed");
                Status::new(storage_failure(&source).code, message)
            }
        }
    }
}

/// How a storage failure is reported to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureClass {
    pub code: Code,
    /// Whether the same request may succeed if retried later.
    pub retryable: bool,
}

/// Maps a storage failure to the status a caller should act on.
pub fn storage_failure(err: &StorageError) -> FailureClass {
    let (code, retryable) = match err {
        StorageError::NotFound => (Code::NotFound, false),
        StorageError::CursorPruned => (Code::OutOfRange, false),
        StorageError::Unavailable(_) => (Code::Unavailable, true),
        StorageError::Exhausted(_) => (Code::ResourceExhausted, true),
        StorageError::Aborted(_) => (Code::Aborted, true),
        StorageError::Corrupt(_) => (Code::DataLoss, false),
        StorageError::Invalid(_) => (Code::FailedPrecondition, false),
        StorageError::Internal(_) => (Code::Internal, false),
    };
    FailureClass { code, retryable }
}

/// The canonical upper-case name of a gRPC status code, as clients in every
/// language spell it (e.g. `RESOURCE_EXHAUSTED`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
