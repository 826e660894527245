//! Turns the results of the two writes into the reply of CompleteRun (and
//! of DeleteRun, whose removal of both records shares one fate), applying
//! the contract's rule that the manifest comes first.

use std::time::Duration;

use crate::{
    api::error::{code_name, storage_failure},
    proto::{
        CompleteRunResponse, DeleteRunResponse, Outcome, WriteState, WriteStatus, WriteTarget,
    },
    storage::{self, StorageError, Target, WriteReceipt},
};

/// The status of one finished (or failed) write.
pub fn write_status(
    target: WriteTarget,
    location: String,
    elapsed: Duration,
    result: &Result<WriteReceipt, StorageError>,
) -> WriteStatus {
    let duration_micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    match result {
        Ok(receipt) => WriteStatus {
            target: target.into(),
            state: WriteState::Written.into(),
            code: code_name(tonic::Code::Ok).to_owned(),
            message: String::new(),
            retryable: false,
            location: receipt.location.clone(),
            duration_micros,
            bytes: receipt.bytes,
        },
        Err(err) => {
            let class = storage_failure(err);
            WriteStatus {
                target: target.into(),
                state: WriteState::Failed.into(),
                code: code_name(class.code).to_owned(),
                message: err.to_string(),
                retryable: class.retryable,
                location,
                duration_micros,
                bytes: 0,
            }
        }
    }
}

/// Combines both statuses. `primary_error` is the manifest's status when it
/// failed, otherwise the snapshot's when that failed, otherwise unset.
pub fn complete_run_response(snapshot: WriteStatus, manifest: WriteStatus) -> CompleteRunResponse {
    let written = |status: &WriteStatus| status.state() == WriteState::Written;
    let (outcome, primary_error) = match (written(&snapshot), written(&manifest)) {
        (true, true) => (Outcome::AllWritten, None),
        (false, true) => (Outcome::SnapshotFailed, Some(snapshot.clone())),
        (true, false) => (Outcome::ManifestFailed, Some(manifest.clone())),
        (false, false) => (Outcome::NoneWritten, Some(manifest.clone())),
    };
    CompleteRunResponse {
        snapshot: Some(snapshot),
        manifest: Some(manifest),
        outcome: outcome.into(),
        primary_error,
    }
}

/// The reply of DeleteRun: both records were removed in one transaction, so
/// both statuses carry its one result.
pub fn delete_run_response(
    task_id: &str,
    run_id: &str,
    elapsed: Duration,
    result: &Result<bool, StorageError>,
) -> DeleteRunResponse {
    let status = |target: WriteTarget, table: Target| {
        let location = storage::location(table, task_id, run_id);
        let receipt = result.clone().map(|_| WriteReceipt {
            location: location.clone(),
            bytes: 0,
        });
        write_status(target, location, elapsed, &receipt)
    };
    let reply = complete_run_response(
        status(WriteTarget::Snapshot, Target::Snapshot),
        status(WriteTarget::Manifest, Target::Manifest),
    );
    DeleteRunResponse {
        snapshot: reply.snapshot,
        manifest: reply.manifest,
        outcome: reply.outcome,
        primary_error: reply.primary_error,
        found: matches!(result, Ok(true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(target: WriteTarget, ok: bool) -> WriteStatus {
        let result = if ok {
            Ok(WriteReceipt {
                location: "here".into(),
                bytes: 3,
            })
        } else {
            Err(StorageError::Exhausted("no space left on device".into()))
        };
        write_status(target, "here".into(), Duration::from_micros(5), &result)
    }

    #[test]
    fn manifest_failure_is_primary_whenever_it_failed() {
        use WriteTarget::{Manifest, Snapshot};
        let cases = [
            (true, true, Outcome::AllWritten, None),
            (false, true, Outcome::SnapshotFailed, Some(Snapshot)),
            (true, false, Outcome::ManifestFailed, Some(Manifest)),
            (false, false, Outcome::NoneWritten, Some(Manifest)),
        ];
        for (snapshot_ok, manifest_ok, outcome, primary) in cases {
            let reply =
                complete_run_response(status(Snapshot, snapshot_ok), status(Manifest, manifest_ok));
            assert_eq!(reply.outcome(), outcome);
            assert_eq!(reply.primary_error.map(|p| p.target()), primary);
        }
    }

    #[test]
    fn a_delete_has_one_fate_for_both_records() {
        let done = delete_run_response("t", "r", Duration::ZERO, &Ok(false));
        assert_eq!(done.outcome(), Outcome::AllWritten);
        assert!(!done.found && done.primary_error.is_none());
        assert_eq!(done.manifest.expect("manifest").location, "manifests/t/r");
        let failed = delete_run_response(
            "t",
            "r",
            Duration::ZERO,
            &Err(StorageError::Aborted("lock".into())),
        );
        assert_eq!(failed.outcome(), Outcome::NoneWritten);
        let primary = failed.primary_error.expect("primary error");
        assert_eq!(
            (primary.target(), primary.code.as_str(), primary.retryable),
            (WriteTarget::Manifest, "ABORTED", true)
        );
        assert_eq!(
            failed.snapshot.expect("snapshot").state(),
            WriteState::Failed
        );
    }

    #[test]
    fn a_failed_write_carries_code_and_retryability() {
        let failed = status(WriteTarget::Manifest, false);
        assert_eq!(failed.state(), WriteState::Failed);
        assert_eq!(failed.code, "RESOURCE_EXHAUSTED");
        assert!(failed.retryable);
        assert_eq!(failed.bytes, 0);
    }
}
