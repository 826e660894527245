//! One write failing never hides or holds up the other, the manifest's
//! failure comes first, nothing partial is visible, and other calls in the
//! same moment are unaffected. The failures are real refusals by the store:
//! triggers on its tables that raise for one task id (the way a constraint
//! would), created through the test's own connection while the server runs,
//! and dropped again to show a retry succeeds without a restart.

use std::collections::HashMap;

use runstore::proto::{
    CompleteRunRequest, CompleteRunResponse, Outcome, WriteState, WriteStatus, WriteTarget,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    held_storage::{HeldStorage, Hold},
    helpers::{
        Backend, LIVENESS, On, SERVICE_NAME, Table, TestApp, TestStore, complete_request,
        fast_settings, spawn_app_with, summary_for, ts, within,
    },
};

const DOOMED: &str = "doomed";
/// Calls to other tasks whose writes are released together with the doomed
/// call's, so that they share its group commits.
const BYSTANDERS: usize = 16;

/// Which of the doomed call's writes the store refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Manifest,
    Snapshot,
    Both,
}

impl Refused {
    fn tables(self) -> &'static [Table] {
        match self {
            Refused::Manifest => &[Table::Manifests],
            Refused::Snapshot => &[Table::SnapshotEntries],
            Refused::Both => &[Table::Manifests, Table::SnapshotEntries],
        }
    }
    fn manifest(self) -> bool {
        self != Refused::Snapshot
    }
    fn snapshot(self) -> bool {
        self != Refused::Manifest
    }
    fn outcome(self) -> Outcome {
        match self {
            Refused::Manifest => Outcome::ManifestFailed,
            Refused::Snapshot => Outcome::SnapshotFailed,
            Refused::Both => Outcome::NoneWritten,
        }
    }
}

fn statuses(reply: &CompleteRunResponse) -> (&WriteStatus, &WriteStatus) {
    (
        reply.snapshot.as_ref().expect("snapshot status"),
        reply.manifest.as_ref().expect("manifest status"),
    )
}

fn assert_refused(status: &WriteStatus, target: WriteTarget, location: &str) {
    assert_eq!(status.target(), target, "{status:?}");
    assert_eq!(status.state(), WriteState::Failed, "{status:?}");
    assert_eq!(status.code, "FAILED_PRECONDITION", "{status:?}");
    assert!(
        !status.retryable,
        "a refused record fails again: {status:?}"
    );
    assert!(
        status.message.contains("injected"),
        "the store's reason is passed on: {status:?}"
    );
    assert_eq!(status.location, location);
    assert_eq!(status.bytes, 0);
}

fn assert_written(status: &WriteStatus, target: WriteTarget, location: &str) {
    assert_eq!(status.target(), target, "{status:?}");
    assert_eq!(status.state(), WriteState::Written, "{status:?}");
    assert_eq!(status.code, "OK");
    assert_eq!(status.location, location);
    assert!(status.bytes > 0);
}

/// Sends `requests` at once through a store that holds every write, then
/// releases all their writes together.
async fn all_at_once(
    app: &TestApp,
    storage: &HeldStorage,
    requests: Vec<CompleteRunRequest>,
) -> Vec<CompleteRunResponse> {
    let writes = requests.len() * 2;
    let calls: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let mut client = app.client();
            tokio::spawn(async move { client.complete_run(request).await })
        })
        .collect();
    storage.wait_held(writes).await;
    storage.release(writes);
    let mut replies = Vec::new();
    for call in calls {
        let reply = within("a CompleteRun", call)
            .await
            .expect("client task")
            .expect("CompleteRun answers OK even when writes fail");
        replies.push(reply.into_inner());
    }
    replies
}

/// The doomed call's run, first (`attempt` 1) or as rewritten (2).
fn doomed_request(run_id: &str, attempt: u32) -> CompleteRunRequest {
    let timestamp = ts(attempt);
    let mut request = complete_request(DOOMED, run_id, &timestamp);
    request.summary_json = summary_for(DOOMED, run_id, &format!("attempt {attempt}"));
    request
}

fn bystander_request(i: usize, attempt: u32) -> CompleteRunRequest {
    let mut request = complete_request(&format!("bystander-{i:02}"), "run-1", &ts(attempt));
    request.summary_json = summary_for(
        &request.task_id,
        "run-1",
        &format!("bystander attempt {attempt}"),
    );
    request
}

/// The store refuses `refused` writes of task "doomed" on `on` (a new run:
/// INSERT; a rewrite of a stored run: UPDATE). Checks the reply, that
/// nothing partial is stored or readable, that bystanders in the same
/// commits are written, that health is untouched; then removes the fault
/// and retries without restarting.
async fn refused_write(backend: Backend, refused: Refused, on: On) {
    let case = format!("{refused:?} refused on {on:?}");
    let store = TestStore::fresh(backend);
    let storage = HeldStorage::new(&store, true, Hold::Everything).await;
    let app = spawn_app_with(store, storage.clone(), fast_settings()).await;
    app.wait_for_health(ServingStatus::Serving).await;
    let db = app.db();

    // A rewrite needs a stored run to rewrite: attempt 1 of everything.
    let attempt = match on {
        On::Insert => 1,
        On::Update => {
            let mut first = vec![doomed_request("run-1", 1)];
            first.extend((0..BYSTANDERS).map(|i| bystander_request(i, 1)));
            for reply in all_at_once(&app, &storage, first).await {
                assert_eq!(reply.outcome(), Outcome::AllWritten);
            }
            2
        }
        On::Delete => unreachable!("CompleteRun deletes nothing"),
    };
    let before = db.row_counts();
    let doomed_before = (
        db.row(Table::SnapshotEntries, DOOMED, "run-1"),
        db.row(Table::Manifests, DOOMED, "run-1"),
    );

    let faults: Vec<_> = refused
        .tables()
        .iter()
        .map(|&table| db.inject_fault(table, DOOMED, &[on]))
        .collect();

    let doomed = doomed_request("run-1", attempt);
    let mut requests = vec![doomed.clone()];
    requests.extend((0..BYSTANDERS).map(|i| bystander_request(i, attempt)));
    let bystanders = requests[1..].to_vec();
    let replies = all_at_once(&app, &storage, requests).await;

    // The doomed call: per-write statuses, manifest first.
    let reply = &replies[0];
    let (snapshot, manifest) = statuses(reply);
    println!(
        "fault matrix: backend={} case={case:<26} snapshot={:<20} manifest={:<20} outcome={}",
        backend.name(),
        snapshot.code,
        manifest.code,
        reply.outcome().as_str_name()
    );
    let (snapshot_at, manifest_at) = ("snapshot_entries/doomed/run-1", "manifests/doomed/run-1");
    if refused.snapshot() {
        assert_refused(snapshot, WriteTarget::Snapshot, snapshot_at);
    } else {
        assert_written(snapshot, WriteTarget::Snapshot, snapshot_at);
    }
    if refused.manifest() {
        assert_refused(manifest, WriteTarget::Manifest, manifest_at);
    } else {
        assert_written(manifest, WriteTarget::Manifest, manifest_at);
    }
    assert_eq!(reply.outcome(), refused.outcome(), "{case}");
    let primary = if refused.manifest() {
        manifest
    } else {
        snapshot
    };
    assert_eq!(reply.primary_error.as_ref(), Some(primary), "{case}");

    // Bystanders in the same moment are unaffected.
    for (request, reply) in bystanders.iter().zip(&replies[1..]) {
        assert_eq!(
            reply.outcome(),
            Outcome::AllWritten,
            "{}: {:?}",
            request.task_id,
            reply.primary_error
        );
        for table in [Table::Manifests, Table::SnapshotEntries] {
            let row = db.row(table, &request.task_id, "run-1").expect("row");
            assert_eq!(row.summary, request.summary_json.as_bytes());
        }
    }

    // Nothing partial: a refused write left its table as it was; the
    // other write stands in full.
    let after = db.row_counts();
    let new_rows = |written: bool| i64::from(on == On::Insert && written);
    assert_eq!(
        after.manifests - before.manifests,
        new_rows(!refused.manifest())
            + if on == On::Insert {
                BYSTANDERS as i64
            } else {
                0
            },
        "{case}: {before:?} -> {after:?}"
    );
    assert_eq!(
        after.snapshot_entries - before.snapshot_entries,
        new_rows(!refused.snapshot())
            + if on == On::Insert {
                BYSTANDERS as i64
            } else {
                0
            },
        "{case}: {before:?} -> {after:?}"
    );
    if on == On::Insert && refused.snapshot() {
        // The entry's sequence number was drawn in the same savepoint.
        assert_eq!(db.count(Table::Tasks, DOOMED), 0, "{case}");
    }
    let stored_snapshot = db.row(Table::SnapshotEntries, DOOMED, "run-1");
    let stored_manifest = db.row(Table::Manifests, DOOMED, "run-1");
    if refused.snapshot() {
        assert_eq!(
            stored_snapshot, doomed_before.0,
            "{case}: snapshot entry untouched"
        );
    } else {
        assert_eq!(
            stored_snapshot.map(|r| r.summary),
            Some(doomed.summary_json.clone().into_bytes())
        );
    }
    if refused.manifest() {
        assert_eq!(
            stored_manifest, doomed_before.1,
            "{case}: manifest untouched"
        );
    } else {
        assert_eq!(
            stored_manifest.map(|r| r.summary),
            Some(doomed.summary_json.clone().into_bytes())
        );
    }

    // And the reads agree.
    match (
        app.get_manifest(DOOMED, "run-1").await,
        refused.manifest(),
        on,
    ) {
        (Err(err), true, On::Insert) => assert_eq!(err.code(), Code::NotFound),
        (Ok(m), true, On::Update) => {
            assert_eq!(m.summary_json, doomed_request("run-1", 1).summary_json)
        }
        (Ok(m), false, _) => assert_eq!(m.summary_json, doomed.summary_json),
        other => panic!("{case}: GetManifest: {other:?}"),
    }
    match (
        app.get_snapshot(DOOMED, 0, "").await,
        refused.snapshot(),
        on,
    ) {
        (Err(err), true, On::Insert) => assert_eq!(err.code(), Code::NotFound),
        (Ok(page), true, On::Update) => {
            assert_eq!(page.runs.len(), 1);
            assert_eq!(
                page.runs[0].summary_json,
                doomed_request("run-1", 1).summary_json
            );
            assert_eq!(page.last_run_at, ts(1));
        }
        (Ok(page), false, _) => {
            assert_eq!(page.runs.len(), 1);
            assert_eq!(page.runs[0].summary_json, doomed.summary_json);
        }
        other => panic!("{case}: GetTaskSnapshot: {other:?}"),
    }

    // A refused record says nothing about the store's health.
    assert_eq!(app.health(SERVICE_NAME).await, ServingStatus::Serving);
    assert_eq!(app.health(LIVENESS).await, ServingStatus::Serving);

    // The fault is specific: a fault on rewrites still lets a new run of
    // the same task in.
    if on == On::Update {
        storage.open_gate();
        let other = app.complete_run(DOOMED, "run-new", &ts(9)).await;
        assert_eq!(
            other.outcome(),
            Outcome::AllWritten,
            "{:?}",
            other.primary_error
        );
    }

    // Without the fault, the retry succeeds, in the same server.
    for fault in faults {
        db.remove_fault(fault);
    }
    storage.open_gate();
    let retry = app.try_complete_run(doomed.clone()).await.expect("retry");
    assert_eq!(
        retry.outcome(),
        Outcome::AllWritten,
        "{:?}",
        retry.primary_error
    );
    assert_eq!(
        app.get_manifest(DOOMED, "run-1")
            .await
            .expect("manifest")
            .summary_json,
        doomed.summary_json
    );
    let runs: HashMap<_, _> = app
        .all_runs(DOOMED)
        .await
        .into_iter()
        .map(|r| (r.run_id, r.summary_json))
        .collect();
    assert_eq!(
        runs.get("run-1"),
        Some(&doomed.summary_json),
        "one entry, replaced"
    );
    assert_eq!(db.count(Table::Manifests, DOOMED), runs.len() as i64);
    app.stop().await;
}

async fn a_refused_manifest_fails_only_the_manifest_and_is_primary(backend: Backend) {
    refused_write(backend, Refused::Manifest, On::Insert).await;
}
contract_test!(a_refused_manifest_fails_only_the_manifest_and_is_primary);

async fn a_refused_snapshot_fails_only_the_snapshot_and_is_primary(backend: Backend) {
    refused_write(backend, Refused::Snapshot, On::Insert).await;
}
contract_test!(a_refused_snapshot_fails_only_the_snapshot_and_is_primary);

async fn when_both_are_refused_the_manifest_is_primary_and_nothing_is_left(backend: Backend) {
    refused_write(backend, Refused::Both, On::Insert).await;
}
contract_test!(when_both_are_refused_the_manifest_is_primary_and_nothing_is_left);

async fn a_refused_manifest_rewrite_keeps_the_stored_manifest(backend: Backend) {
    refused_write(backend, Refused::Manifest, On::Update).await;
}
contract_test!(a_refused_manifest_rewrite_keeps_the_stored_manifest);

async fn a_refused_snapshot_rewrite_keeps_the_stored_entry(backend: Backend) {
    refused_write(backend, Refused::Snapshot, On::Update).await;
}
contract_test!(a_refused_snapshot_rewrite_keeps_the_stored_entry);

async fn refused_rewrites_of_both_keep_both_and_the_manifest_is_primary(backend: Backend) {
    refused_write(backend, Refused::Both, On::Update).await;
}
contract_test!(refused_rewrites_of_both_keep_both_and_the_manifest_is_primary);
