//! The happy path: what CompleteRun writes, the reads return.

use runstore::proto::{CompleteRunRequest, Outcome, WriteState, WriteTarget};
use sha2::{Digest, Sha256};

use crate::helpers::{fixture_summary, spawn_app, summary_for, ts};

#[tokio::test]
async fn complete_run_writes_both_and_reads_return_the_exact_bytes() {
    crate::helpers::within_test_limit(
        "complete_run_writes_both_and_reads_return_the_exact_bytes",
        async move {
            let app = spawn_app().await;
            let summary = fixture_summary();
            let doc: serde_json::Value = serde_json::from_str(&summary).expect("fixture");
            let (task_id, run_id) = (
                doc["taskId"].as_str().expect("taskId"),
                doc["runId"].as_str().expect("runId"),
            );

            let reply = app
                .try_complete_run(CompleteRunRequest {
                    task_id: task_id.into(),
                    run_id: run_id.into(),
                    timestamp: "2026-01-05T19:26:37.274Z".into(),
                    summary_json: summary.clone(),
                })
                .await
                .expect("CompleteRun");

            assert_eq!(reply.outcome(), Outcome::AllWritten);
            assert_eq!(reply.primary_error, None);
            let snapshot = reply.snapshot.expect("snapshot status");
            let manifest = reply.manifest.expect("manifest status");
            assert_eq!(
                (snapshot.target(), snapshot.state(), snapshot.code.as_str()),
                (WriteTarget::Snapshot, WriteState::Written, "OK")
            );
            assert_eq!(
                (manifest.target(), manifest.state(), manifest.code.as_str()),
                (WriteTarget::Manifest, WriteState::Written, "OK")
            );
            assert_eq!(
                manifest.location,
                format!("runs/{task_id}/{run_id}/manifest.json")
            );
            assert_eq!(snapshot.location, format!("tasks/{task_id}/runs.log"));
            assert_eq!(manifest.bytes, summary.len() as u64);
            assert!(
                snapshot.bytes > summary.len() as u64,
                "the snapshot entry holds the summary too"
            );

            // The manifest file on disk is the summary, byte for byte.
            let on_disk =
                std::fs::read(app.data_path().join(&manifest.location)).expect("manifest file");
            assert_eq!(on_disk, summary.as_bytes());

            let read = app
                .get_manifest(task_id, run_id)
                .await
                .expect("GetManifest");
            assert_eq!(
                read.summary_json, summary,
                "non-ASCII text and big integers survive byte for byte"
            );
            assert_eq!(
                read.sha256,
                format!("{:x}", Sha256::digest(summary.as_bytes()))
            );
            assert!(
                chrono::DateTime::parse_from_rfc3339(&read.written_at).is_ok(),
                "{}",
                read.written_at
            );

            let snapshot = app
                .get_snapshot(task_id, 0, "")
                .await
                .expect("GetTaskSnapshot");
            assert_eq!(snapshot.task_id, task_id);
            assert_eq!(snapshot.last_run_at, "2026-01-05T19:26:37.274Z");
            assert_eq!(snapshot.runs.len(), 1);
            assert_eq!(snapshot.runs[0].run_id, run_id);
            assert_eq!(snapshot.runs[0].summary_json, summary);
            assert_eq!(snapshot.next_page_token, "");
        },
    )
    .await
}

#[tokio::test]
async fn repeating_a_run_replaces_its_entry_and_rewrites_its_manifest() {
    crate::helpers::within_test_limit(
        "repeating_a_run_replaces_its_entry_and_rewrites_its_manifest",
        async move {
            let app = spawn_app().await;
            app.complete_run("task", "run-1", &ts(10)).await;
            app.complete_run("task", "run-2", &ts(20)).await;

            let mut retry = crate::helpers::complete_request("task", "run-1", &ts(30));
            retry.summary_json = summary_for("task", "run-1", "second attempt");
            let reply = app.try_complete_run(retry.clone()).await.expect("retry");
            assert_eq!(reply.outcome(), Outcome::AllWritten);

            let runs = app.all_runs("task").await;
            let ids: Vec<_> = runs.iter().map(|r| r.run_id.as_str()).collect();
            assert_eq!(
                ids,
                ["run-2", "run-1"],
                "one entry per run id, at its new timestamp"
            );
            assert_eq!(runs[1].summary_json, retry.summary_json);
            let manifest = app.get_manifest("task", "run-1").await.expect("manifest");
            assert_eq!(manifest.summary_json, retry.summary_json);
        },
    )
    .await
}

#[tokio::test]
async fn stored_files_are_private_to_the_service_user() {
    crate::helpers::within_test_limit("stored_files_are_private_to_the_service_user", async move {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("fresh-data-dir");
        let storage = std::sync::Arc::new(runstore::storage::FsStorage::open(&data).expect("open"));
        let app = crate::helpers::spawn_app_with(
            std::sync::Arc::new(dir),
            storage,
            crate::helpers::fast_settings(),
        )
        .await;
        app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
            .await;
        app.complete_run("task", "run-1", &ts(1)).await;

        let mode = |path: &str| {
            let meta =
                std::fs::metadata(data.join(path)).unwrap_or_else(|err| panic!("{path}: {err}"));
            meta.permissions().mode() & 0o777
        };
        for dir in [
            "",
            "runs",
            "runs/task",
            "runs/task/run-1",
            "tasks",
            "tasks/task",
        ] {
            assert_eq!(mode(dir), 0o700, "directory {dir:?}");
        }
        for file in [
            "runs/task/run-1/manifest.json",
            "tasks/task/runs.log",
            "tasks/task/runs.lock",
        ] {
            assert_eq!(mode(file), 0o600, "file {file:?}");
        }
    })
    .await
}

#[tokio::test]
async fn duplicate_keys_other_than_the_ids_are_stored_as_sent() {
    crate::helpers::within_test_limit(
        "duplicate_keys_other_than_the_ids_are_stored_as_sent",
        async move {
            let app = spawn_app().await;
            // JSON allows repeated names; only a repeated taskId/runId is ambiguous
            // enough to refuse. Everything else is kept byte for byte.
            let summary = r#"{"taskId":"task","attempt":1,"attempt":2,"runId":"run-1"}"#;
            let reply = app
                .try_complete_run(CompleteRunRequest {
                    task_id: "task".into(),
                    run_id: "run-1".into(),
                    timestamp: ts(1),
                    summary_json: summary.into(),
                })
                .await
                .expect("accepted");
            assert_eq!(reply.outcome(), Outcome::AllWritten);
            assert_eq!(
                app.get_manifest("task", "run-1")
                    .await
                    .expect("manifest")
                    .summary_json,
                summary
            );
        },
    )
    .await
}
