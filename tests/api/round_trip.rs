//! The happy path: what CompleteRun writes, the reads return, and the store
//! holds byte for byte.

use std::os::unix::fs::PermissionsExt;

use runstore::proto::{CompleteRunRequest, Outcome, WriteState, WriteTarget};

use crate::helpers::{
    Backend, RowCounts, Table, TestStore, fast_settings, fixture_summary, sha256_hex, spawn_app,
    spawn_app_with, summary_for, ts,
};

async fn complete_run_writes_both_and_reads_return_the_exact_bytes(backend: Backend) {
    let app = spawn_app(backend).await;
    let summary = fixture_summary();
    let doc: serde_json::Value = serde_json::from_str(&summary).expect("fixture");
    let (task_id, run_id) = (
        doc["taskId"].as_str().expect("taskId"),
        doc["runId"].as_str().expect("runId"),
    );
    let timestamp = "2026-01-05T19:26:37.274Z";

    let reply = app
        .try_complete_run(CompleteRunRequest {
            task_id: task_id.into(),
            run_id: run_id.into(),
            timestamp: timestamp.into(),
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
    assert!(!snapshot.retryable && !manifest.retryable);
    assert_eq!(snapshot.message, "");
    assert_eq!(manifest.location, format!("manifests/{task_id}/{run_id}"));
    assert_eq!(
        snapshot.location,
        format!("snapshot_entries/{task_id}/{run_id}")
    );
    assert_eq!(manifest.bytes, summary.len() as u64);
    assert!(
        snapshot.bytes > summary.len() as u64,
        "the snapshot entry holds the summary too: {}",
        snapshot.bytes
    );

    // The stored rows are the summary, byte for byte, with its hash.
    let db = app.db();
    let sha256 = sha256_hex(summary.as_bytes());
    let stored = db
        .row(Table::Manifests, task_id, run_id)
        .expect("manifest row");
    assert_eq!(stored.summary, summary.as_bytes());
    assert_eq!(stored.sha256, sha256);
    assert_eq!(stored.timestamp, timestamp);
    let entry = db
        .row(Table::SnapshotEntries, task_id, run_id)
        .expect("snapshot entry row");
    assert_eq!(entry.summary, summary.as_bytes());
    assert_eq!(entry.timestamp, timestamp);
    assert_eq!(
        db.row_counts(),
        RowCounts {
            tasks: 1,
            snapshot_entries: 1,
            manifests: 1
        }
    );

    let read = app
        .get_manifest(task_id, run_id)
        .await
        .expect("GetManifest");
    assert_eq!(
        read.summary_json, summary,
        "non-ASCII text and big integers survive byte for byte"
    );
    assert_eq!(read.sha256, sha256);
    assert_eq!(
        (read.task_id.as_str(), read.run_id.as_str()),
        (task_id, run_id)
    );
    let written_at =
        chrono::DateTime::parse_from_rfc3339(&read.written_at).expect("written_at is RFC 3339");
    assert_eq!(written_at.offset().local_minus_utc(), 0, "in UTC");
    let age = chrono::Utc::now().signed_duration_since(written_at);
    assert!(
        age >= chrono::Duration::zero() && age < chrono::Duration::minutes(1),
        "written_at {} is now",
        read.written_at
    );

    let snapshot = app
        .get_snapshot(task_id, 0, "")
        .await
        .expect("GetTaskSnapshot");
    assert_eq!(snapshot.task_id, task_id);
    assert_eq!(snapshot.last_run_at, timestamp);
    assert_eq!(snapshot.runs.len(), 1);
    assert_eq!(snapshot.runs[0].run_id, run_id);
    assert_eq!(snapshot.runs[0].timestamp, timestamp);
    assert_eq!(snapshot.runs[0].summary_json, summary);
    assert_eq!(snapshot.next_page_token, "");
}
contract_test!(complete_run_writes_both_and_reads_return_the_exact_bytes);

async fn repeating_a_run_replaces_its_entry_and_rewrites_its_manifest(backend: Backend) {
    let app = spawn_app(backend).await;
    app.complete_run("task", "run-1", &ts(10)).await;
    app.complete_run("task", "run-2", &ts(20)).await;
    let first = app.get_manifest("task", "run-1").await.expect("manifest");

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
    assert_eq!(runs[1].timestamp, ts(30));
    let manifest = app.get_manifest("task", "run-1").await.expect("manifest");
    assert_eq!(manifest.summary_json, retry.summary_json);
    assert_eq!(manifest.sha256, sha256_hex(retry.summary_json.as_bytes()));
    assert!(
        manifest.written_at >= first.written_at,
        "written_at moves on"
    );

    // Replaced in place: still one row per run.
    let db = app.db();
    assert_eq!(db.count(Table::SnapshotEntries, "task"), 2);
    assert_eq!(db.count(Table::Manifests, "task"), 2);
    assert_eq!(
        db.row(Table::Manifests, "task", "run-1")
            .expect("row")
            .summary,
        retry.summary_json.as_bytes()
    );
}
contract_test!(repeating_a_run_replaces_its_entry_and_rewrites_its_manifest);

async fn stored_files_are_private_to_the_service_user(backend: Backend) {
    if !backend.stores_in_data_dir() {
        return crate::helpers::skipped(
            "stored_files_are_private_to_the_service_user",
            "the backend keeps no files in the data dir",
        );
    }
    // The data dir does not exist yet: the backend creates it.
    let store = TestStore::fresh(backend);
    assert!(!store.data_dir().exists());
    let storage = store.open(&Default::default()).await;
    let app = spawn_app_with(store.clone(), storage, fast_settings()).await;
    app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    app.complete_run("task", "run-1", &ts(1)).await;

    let mode = |path: &std::path::Path| {
        let meta =
            std::fs::metadata(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        meta.permissions().mode() & 0o777
    };
    assert_eq!(mode(store.data_dir()), 0o700, "the data dir");
    // While the server runs, the WAL and shared-memory files exist too.
    let files = store.files();
    assert!(!files.is_empty());
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    // Nothing else is kept there.
    let mut names: Vec<_> = std::fs::read_dir(store.data_dir())
        .expect("list data dir")
        .map(|entry| entry.expect("entry").path())
        .collect();
    names.sort();
    let mut expected = files.clone();
    expected.sort();
    assert_eq!(names, expected);
    app.stop().await;
}
contract_test!(stored_files_are_private_to_the_service_user);

async fn duplicate_keys_other_than_the_ids_are_stored_as_sent(backend: Backend) {
    let app = spawn_app(backend).await;
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
    assert_eq!(
        app.db()
            .row(Table::Manifests, "task", "run-1")
            .expect("row")
            .summary,
        summary.as_bytes()
    );
}
contract_test!(duplicate_keys_other_than_the_ids_are_stored_as_sent);
