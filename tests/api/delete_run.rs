//! DeleteRun: both records go in one transaction (one fate for both
//! statuses), deleting twice is OK, the task's order, count and latest
//! timestamp stay right, and a failing delete removes nothing.

use futures::StreamExt;
use runstore::proto::{DeleteRunRequest, DeleteRunResponse, Outcome, WriteState};
use tonic::Code;

use crate::helpers::{Backend, On, RowCounts, Table, TestApp, spawn_app, ts};

async fn delete(
    app: &TestApp,
    task_id: &str,
    run_id: &str,
) -> Result<DeleteRunResponse, tonic::Status> {
    app.client()
        .delete_run(DeleteRunRequest {
            task_id: task_id.into(),
            run_id: run_id.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn assert_deleted(reply: &DeleteRunResponse, found: bool, what: &str) {
    assert_eq!(reply.outcome(), Outcome::AllWritten, "{what}: {reply:?}");
    assert_eq!(reply.found, found, "{what}: found");
    assert!(reply.primary_error.is_none(), "{what}");
    for status in [&reply.snapshot, &reply.manifest] {
        let status = status.as_ref().expect("both statuses");
        assert_eq!(status.state(), WriteState::Written, "{what}: {status:?}");
        assert_eq!(status.code, "OK");
    }
}

async fn delete_run_removes_both_records_and_deleting_again_is_ok(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 1..=3u32 {
        app.complete_run("gone", &format!("r{i}"), &ts(i)).await;
    }
    let reply = delete(&app, "gone", "r2").await.expect("DeleteRun");
    assert_deleted(&reply, true, "first delete");
    assert_eq!(
        reply.snapshot.as_ref().map(|s| s.location.as_str()),
        Some("snapshot_entries/gone/r2")
    );
    assert_eq!(
        reply.manifest.as_ref().map(|s| s.location.as_str()),
        Some("manifests/gone/r2")
    );
    let err = app
        .get_manifest("gone", "r2")
        .await
        .expect_err("no manifest");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(app.run_ids("gone").await, ["r1", "r3"]);
    assert_eq!(app.db().row(Table::SnapshotEntries, "gone", "r2"), None);
    assert_eq!(app.db().row(Table::Manifests, "gone", "r2"), None);

    assert_deleted(
        &delete(&app, "gone", "r2").await.expect("again"),
        false,
        "second delete",
    );
    assert_deleted(
        &delete(&app, "never-written", "r1").await.expect("unknown"),
        false,
        "delete of an unknown task",
    );
    assert_eq!(
        app.db().row_counts(),
        RowCounts {
            tasks: 1,
            snapshot_entries: 2,
            manifests: 2
        }
    );
}
contract_test!(delete_run_removes_both_records_and_deleting_again_is_ok);

async fn deletes_keep_the_order_the_count_and_last_run_at(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 1..=3u32 {
        app.complete_run("kept", &format!("r{i}"), &ts(i)).await;
    }
    // Deleting the latest run moves last_run_at back.
    assert_deleted(
        &delete(&app, "kept", "r3").await.expect("delete"),
        true,
        "r3",
    );
    let page = app.get_snapshot("kept", 0, "").await.expect("snapshot");
    assert_eq!(page.last_run_at, ts(2));
    let task = app.listed_task("kept").await.expect("listed");
    assert_eq!(
        (task.run_count, task.last_run_at.as_str()),
        (2, ts(2).as_str())
    );

    // A task whose runs are all deleted is NOT_FOUND and not listed.
    for run in ["r1", "r2"] {
        assert_deleted(&delete(&app, "kept", run).await.expect("delete"), true, run);
    }
    let err = app.get_snapshot("kept", 0, "").await.expect_err("no runs");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(app.listed_task("kept").await, None);

    // Written again, it starts afresh, in order.
    app.complete_run("kept", "r5", &ts(5)).await;
    app.complete_run("kept", "r4", &ts(4)).await;
    assert_eq!(app.run_ids("kept").await, ["r4", "r5"]);
    let task = app.listed_task("kept").await.expect("listed again");
    assert_eq!(
        (task.run_count, task.last_run_at.as_str()),
        (2, ts(5).as_str())
    );
}
contract_test!(deletes_keep_the_order_the_count_and_last_run_at);

async fn deleting_a_run_that_has_only_its_manifest_finds_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let fault = app
        .db()
        .inject_fault(Table::SnapshotEntries, "half", &[On::Insert]);
    let reply = app.complete_run("half", "r1", &ts(1)).await;
    assert_eq!(reply.outcome(), Outcome::SnapshotFailed);
    app.db().remove_fault(fault);

    assert_deleted(
        &delete(&app, "half", "r1").await.expect("delete"),
        true,
        "manifest only",
    );
    let err = app.get_manifest("half", "r1").await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(app.db().row_counts(), RowCounts::default());
}
contract_test!(deleting_a_run_that_has_only_its_manifest_finds_it);

/// A trigger that refuses the manifest's removal fails the whole delete:
/// the snapshot entry, removed first in the same transaction, is back. The
/// other task's delete, at the same moment, is untouched by it.
async fn a_failing_delete_removes_nothing_and_fails_no_one_else(backend: Backend) {
    let app = spawn_app(backend).await;
    for task in ["stuck", "free"] {
        for i in 1..=2u32 {
            app.complete_run(task, &format!("r{i}"), &ts(i)).await;
        }
    }
    let fault = app
        .db()
        .inject_fault(Table::Manifests, "stuck", &[On::Delete]);
    let (stuck, free) = tokio::join!(delete(&app, "stuck", "r2"), delete(&app, "free", "r2"));
    let stuck = stuck.expect("a failed delete is still OK at the call level");
    assert_eq!(stuck.outcome(), Outcome::NoneWritten, "{stuck:?}");
    let snapshot = stuck.snapshot.as_ref().expect("snapshot status");
    let manifest = stuck.manifest.as_ref().expect("manifest status");
    assert_eq!(snapshot.state(), WriteState::Failed);
    assert_eq!(manifest.state(), WriteState::Failed);
    assert_eq!(snapshot.code, manifest.code, "one fate, one code");
    assert!(manifest.message.contains("injected"), "{manifest:?}");
    assert_eq!(stuck.primary_error.as_ref(), Some(manifest));
    assert!(!stuck.found, "nothing was removed");
    assert_deleted(&free.expect("the other delete"), true, "other task");

    assert_eq!(app.run_ids("stuck").await, ["r1", "r2"]);
    assert!(
        app.db()
            .row(Table::SnapshotEntries, "stuck", "r2")
            .is_some()
    );
    assert!(app.get_manifest("stuck", "r2").await.is_ok());
    assert_eq!(app.listed_task("stuck").await.map(|t| t.run_count), Some(2));

    // Recovery without a restart.
    app.db().remove_fault(fault);
    assert_deleted(
        &delete(&app, "stuck", "r2").await.expect("delete"),
        true,
        "after the fault",
    );
    assert_eq!(app.run_ids("stuck").await, ["r1"]);
}
contract_test!(a_failing_delete_removes_nothing_and_fails_no_one_else);

async fn delete_run_validates_ids_and_removes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.complete_run("valid", "r1", &ts(1)).await;
    for (task_id, run_id, field) in [
        ("", "r1", "task_id"),
        ("valid", "", "run_id"),
        ("valid", "../r1", "run_id"),
        ("a/b", "r1", "task_id"),
    ] {
        let err = delete(&app, task_id, run_id).await.expect_err("invalid");
        assert_eq!(err.code(), Code::InvalidArgument, "{task_id:?}/{run_id:?}");
        assert!(err.message().starts_with(field), "{err:?} names {field}");
    }
    assert_eq!(app.run_ids("valid").await, ["r1"]);
}
contract_test!(delete_run_validates_ids_and_removes_nothing);

/// Writes, rewrites and deletes of the same tasks at once: afterwards each
/// task's listed count and latest timestamp are exactly what its history
/// holds.
async fn counts_stay_right_under_concurrent_writes_and_deletes(backend: Backend) {
    const TASKS: u32 = 4;
    const RUNS: u32 = 60;
    let app = spawn_app(backend).await;
    let task = |n: u32| format!("busy-{n}");
    let writes = (0..TASKS).flat_map(|t| (0..RUNS).map(move |r| (t, r)));
    futures::stream::iter(writes)
        .for_each_concurrent(32, |(t, r)| {
            let app = &app;
            async move {
                app.complete_run(&task(t), &format!("r{r:03}"), &ts(r))
                    .await;
            }
        })
        .await;

    // At once: delete the first third, rewrite the second (later
    // timestamps), write a third of new runs; delete the latest run too.
    enum Op {
        Delete(u32),
        Write(u32, u32),
    }
    let ops = (0..TASKS).flat_map(|t| {
        (0..RUNS).map(move |r| {
            let op = match r % 3 {
                0 => Op::Delete(r),
                1 => Op::Write(r, r + 1000),
                _ => Op::Write(r + RUNS, r + 2000),
            };
            (t, op)
        })
    });
    futures::stream::iter(ops)
        .for_each_concurrent(32, |(t, op)| {
            let app = &app;
            async move {
                match op {
                    Op::Delete(r) => {
                        let reply = delete(app, &task(t), &format!("r{r:03}"))
                            .await
                            .expect("delete");
                        assert_deleted(&reply, true, "concurrent delete");
                    }
                    Op::Write(r, secs) => {
                        app.complete_run(&task(t), &format!("r{r:03}"), &ts(secs))
                            .await;
                    }
                }
            }
        })
        .await;

    for t in 0..TASKS {
        let runs = app.all_runs(&task(t)).await;
        let listed = app.listed_task(&task(t)).await.expect("listed");
        assert_eq!(listed.run_count, runs.len() as u64, "{}", task(t));
        // A third deleted, a third of new runs written: as many as before.
        assert_eq!(runs.len() as u32, RUNS, "{}", task(t));
        let latest = runs.last().expect("runs").timestamp.clone();
        assert_eq!(listed.last_run_at, latest, "{}", task(t));
        assert_eq!(
            app.db().count(Table::SnapshotEntries, &task(t)),
            runs.len() as i64
        );
    }
}
contract_test!(counts_stay_right_under_concurrent_writes_and_deletes);
