//! Slow and abandoned callers: the caller's deadline is answered with
//! DEADLINE_EXCEEDED, and a write a caller stopped waiting for still
//! completes (it is never cut in half) before the server exits.

use std::{sync::Arc, time::Duration};

use runstore::proto::Outcome;
use tonic::Code;

use crate::{
    held_storage::HeldStorage,
    helpers::{complete_request, fast_settings, spawn_app_with, ts},
};

#[tokio::test]
async fn a_passed_deadline_is_deadline_exceeded_and_the_write_still_completes() {
    crate::helpers::within_test_limit(
        "a_passed_deadline_is_deadline_exceeded_and_the_write_still_completes",
        async move {
            let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
            let storage = HeldStorage::new(dir.path(), true, true);
            let app = spawn_app_with(dir.clone(), storage.clone(), fast_settings()).await;

            let mut request = tonic::Request::new(complete_request("slow", "run-1", &ts(1)));
            request.set_timeout(Duration::from_millis(300));
            let err = app
                .client()
                .complete_run(request)
                .await
                .expect_err("deadline");
            assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");

            // An abandoned call: the client gives up while the write is held.
            let abandoned = {
                let mut client = app.client();
                tokio::spawn(async move {
                    client
                        .complete_run(complete_request("slow", "run-2", &ts(2)))
                        .await
                })
            };
            storage.wait_held(2).await;
            abandoned.abort();

            // The server keeps serving others meanwhile.
            storage.release(3);
            let reply = app.complete_run("other", "run-1", &ts(1)).await;
            assert_eq!(reply.outcome(), Outcome::AllWritten);

            // Shutdown waits for the writes nobody waits for any more.
            app.stop().await;
            for run in ["run-1", "run-2"] {
                let manifest = dir.path().join(format!("runs/slow/{run}/manifest.json"));
                assert!(
                    manifest.exists(),
                    "{run}: the write completed after its caller left"
                );
            }
            let log = std::fs::read(dir.path().join("tasks/slow/runs.log")).expect("snapshot log");
            let (records, valid) = runstore::storage::snapshot_log::decode_all(&log);
            assert_eq!(valid, log.len());
            assert_eq!(records.len(), 2);
        },
    )
    .await
}

#[tokio::test]
async fn writes_a_caller_left_behind_still_count_against_the_in_flight_limit() {
    crate::helpers::within_test_limit(
        "writes_a_caller_left_behind_still_count_against_the_in_flight_limit",
        async move {
            let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
            let storage = HeldStorage::new(dir.path(), true, true);
            let settings = runstore::server::ServerSettings {
                max_in_flight: 1,
                ..fast_settings()
            };
            let app = spawn_app_with(dir, storage.clone(), settings).await;

            let mut request = tonic::Request::new(complete_request("slow", "run-1", &ts(1)));
            request.set_timeout(Duration::from_millis(200));
            let err = app
                .client()
                .complete_run(request)
                .await
                .expect_err("deadline");
            assert_eq!(err.code(), Code::DeadlineExceeded);

            // Its write is still held, so the one slot is still taken.
            let err = app
                .try_complete_run(complete_request("slow", "run-2", &ts(2)))
                .await
                .expect_err("slot taken");
            assert_eq!(err.code(), Code::ResourceExhausted);

            storage.release(2);
            app.stop().await;
        },
    )
    .await
}
