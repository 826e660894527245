//! Space (SQLite's own): a fresh database uses incremental auto-vacuum;
//! after half of a large history is deleted, the sweep hands the free
//! pages back to the file system, and writing as much again reuses space
//! instead of growing the database past its old size.

use std::{path::Path, time::Duration};

use futures::{StreamExt, stream};
use runstore::{
    proto::{DeleteRunRequest, Outcome},
    server::{ServerSettings, sweep::SweepSettings},
    storage::sqlite::DATABASE_FILE,
};

use crate::helpers::{
    Backend, TestApp, TestStore, complete_request, fast_settings, spawn_app_with, ts, within,
};

const RUNS: u32 = 2_000;

/// (page count × page size, auto_vacuum mode) as the test's own connection sees it.
fn database_size(data_dir: &Path) -> (u64, i64) {
    let conn = rusqlite::Connection::open(data_dir.join(DATABASE_FILE)).expect("open");
    let pragma = |name: &str| -> i64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
            .expect(name)
    };
    let size = pragma("page_count") * pragma("page_size");
    (u64::try_from(size).expect("size"), pragma("auto_vacuum"))
}

fn file_size(data_dir: &Path) -> u64 {
    std::fs::metadata(data_dir.join(DATABASE_FILE))
        .expect("database file")
        .len()
}

async fn write_runs(app: &TestApp, runs: impl Iterator<Item = u32>) {
    let client = app.client();
    stream::iter(runs)
        .for_each_concurrent(16, |i| {
            let mut client = client.clone();
            async move {
                let request = complete_request("big", &format!("run-{i:05}"), &ts(i));
                let reply = within("CompleteRun", client.complete_run(request))
                    .await
                    .expect("CompleteRun")
                    .into_inner();
                assert_eq!(reply.outcome(), Outcome::AllWritten);
            }
        })
        .await;
}

async fn deleted_space_is_handed_back_and_reused(backend: Backend) {
    let store = TestStore::fresh(backend);
    let storage = store.open(&Default::default()).await;
    let settings = ServerSettings {
        sweep: SweepSettings {
            interval: Duration::from_millis(20),
            ..SweepSettings::default()
        },
        ..fast_settings()
    };
    let app = spawn_app_with(store, storage, settings).await;
    let data_dir = app.store.data_dir().to_path_buf();
    assert_eq!(database_size(&data_dir).1, 2, "auto_vacuum is INCREMENTAL");

    write_runs(&app, 0..RUNS).await;
    let (peak, _) = database_size(&data_dir);
    let client = app.client();
    // The older half: whole pages empty out (deleting every other run
    // would leave half-full pages, which SQLite keeps).
    stream::iter(0..RUNS / 2)
        .for_each_concurrent(16, |i| {
            let mut client = client.clone();
            async move {
                let request = DeleteRunRequest {
                    task_id: "big".into(),
                    run_id: format!("run-{i:05}"),
                };
                let reply = within("DeleteRun", client.delete_run(request))
                    .await
                    .expect("DeleteRun")
                    .into_inner();
                assert!(reply.found, "run-{i:05}: {reply:?}");
            }
        })
        .await;
    within("the sweep to hand the freed pages back", async {
        // The file shrinks once a checkpoint has copied the vacuum's commit.
        while file_size(&data_dir) > peak * 3 / 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    write_runs(&app, RUNS..RUNS + RUNS / 2).await;
    let (after, _) = database_size(&data_dir);
    assert!(
        after <= peak + peak / 20,
        "the database grew from {peak} to {after} bytes while as much was written as was deleted"
    );
    // Negative control of the bound: writing as much again on top does grow it.
    write_runs(&app, RUNS + RUNS / 2..2 * RUNS).await;
    let (grown, _) = database_size(&data_dir);
    assert!(
        grown > peak + peak / 20,
        "{grown} bytes after {} more runs: the bound above could not fail",
        RUNS / 2
    );
}
contract_test!(deleted_space_is_handed_back_and_reused, sqlite_only);
