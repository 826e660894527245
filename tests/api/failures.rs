//! One write failing never hides or holds up the other, and the manifest's
//! failure comes first. Failures are real: a regular file stands where a
//! directory must go.

use runstore::proto::{CompleteRunResponse, Outcome, WriteState, WriteStatus};
use tonic::Code;

use crate::helpers::{files_under, spawn_app, ts};

fn block_path(app: &crate::helpers::TestApp, dir: &str, task: &str) -> std::path::PathBuf {
    let path = app.data_path().join(dir).join(task);
    std::fs::write(&path, b"in the way").expect("place a file where a directory goes");
    path
}

fn assert_failed(status: &WriteStatus, location: &str) {
    assert_eq!(status.state(), WriteState::Failed);
    assert_eq!(status.code, "FAILED_PRECONDITION");
    assert!(!status.retryable);
    assert!(!status.message.is_empty());
    assert_eq!(status.location, location);
    assert_eq!(status.bytes, 0);
}

fn statuses(reply: &CompleteRunResponse) -> (&WriteStatus, &WriteStatus) {
    (
        reply.snapshot.as_ref().expect("snapshot"),
        reply.manifest.as_ref().expect("manifest"),
    )
}

#[tokio::test]
async fn a_failed_manifest_leaves_the_snapshot_written_and_is_primary() {
    crate::helpers::within_test_limit(
        "a_failed_manifest_leaves_the_snapshot_written_and_is_primary",
        async move {
            let app = spawn_app().await;
            let blocker = block_path(&app, "runs", "task");

            let reply = app.complete_run("task", "run-1", &ts(1)).await;
            let (snapshot, manifest) = statuses(&reply);
            assert_eq!(reply.outcome(), Outcome::ManifestFailed);
            assert_eq!(snapshot.state(), WriteState::Written);
            assert_failed(manifest, "runs/task/run-1/manifest.json");
            assert_eq!(reply.primary_error.as_ref(), Some(manifest));
            assert_eq!(app.all_runs("task").await.len(), 1);

            // Once the obstacle is gone, a retry writes the manifest.
            std::fs::remove_file(blocker).expect("remove obstacle");
            let retry = app.complete_run("task", "run-1", &ts(1)).await;
            assert_eq!(retry.outcome(), Outcome::AllWritten);
            assert!(app.get_manifest("task", "run-1").await.is_ok());
            assert_eq!(
                app.all_runs("task").await.len(),
                1,
                "the retry replaced the entry"
            );
        },
    )
    .await
}

#[tokio::test]
async fn a_failed_snapshot_leaves_the_manifest_written_and_is_primary() {
    crate::helpers::within_test_limit(
        "a_failed_snapshot_leaves_the_manifest_written_and_is_primary",
        async move {
            let app = spawn_app().await;
            block_path(&app, "tasks", "task");

            let reply = app.complete_run("task", "run-1", &ts(1)).await;
            let (snapshot, manifest) = statuses(&reply);
            assert_eq!(reply.outcome(), Outcome::SnapshotFailed);
            assert_eq!(manifest.state(), WriteState::Written);
            assert_failed(snapshot, "tasks/task/runs.log");
            assert_eq!(reply.primary_error.as_ref(), Some(snapshot));
            assert!(app.get_manifest("task", "run-1").await.is_ok());
        },
    )
    .await
}

#[tokio::test]
async fn when_both_fail_the_manifest_is_primary_and_nothing_is_left_behind() {
    crate::helpers::within_test_limit(
        "when_both_fail_the_manifest_is_primary_and_nothing_is_left_behind",
        async move {
            let app = spawn_app().await;
            block_path(&app, "runs", "task");
            block_path(&app, "tasks", "task");

            let reply = app.complete_run("task", "run-1", &ts(1)).await;
            let (snapshot, manifest) = statuses(&reply);
            assert_eq!(reply.outcome(), Outcome::NoneWritten);
            assert_failed(snapshot, "tasks/task/runs.log");
            assert_failed(manifest, "runs/task/run-1/manifest.json");
            assert_eq!(reply.primary_error.as_ref(), Some(manifest));
            // Only the two obstacles: no temp file, no partial log, no directory.
            assert_eq!(files_under(&app.data_path().join("runs")), ["task"]);
            assert_eq!(files_under(&app.data_path().join("tasks")), ["task"]);

            let err = app
                .get_manifest("task", "run-1")
                .await
                .expect_err("nothing written");
            assert_eq!(err.code(), Code::NotFound);

            // Other tasks are unaffected.
            let other = app.complete_run("other", "run-1", &ts(1)).await;
            assert_eq!(other.outcome(), Outcome::AllWritten);
        },
    )
    .await
}
