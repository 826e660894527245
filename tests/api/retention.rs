//! Retention: `--retain-runs` keeps the newest N runs of each task by
//! instant, `--retain-for` drops runs older than a horizon (manifest-only
//! runs and backfilled ones too); both records go together with one EXPIRED
//! event, the task's counters stay right, also under concurrent writes.

use std::{collections::BTreeSet, num::NonZeroU64, time::Duration};

use tonic_health::pb::health_check_response::ServingStatus;

use runstore::{
    proto::{Outcome, WriteState},
    server::{ServerSettings, sweep::SweepSettings},
};

use crate::{
    helpers::{
        Backend, On, RowCounts, Table, TestApp, TestStore, fast_settings, spawn_app_with, ts,
        within, write_all_at_once,
    },
    server_process::start_server,
};

/// A server whose sweep runs every 20 ms with these retention settings.
async fn spawn_retaining(
    backend: Backend,
    retain_runs: Option<u64>,
    retain_for: Option<Duration>,
) -> TestApp {
    let store = TestStore::fresh(backend);
    let storage = store.open(&Default::default()).await;
    let settings = ServerSettings {
        sweep: SweepSettings {
            interval: Duration::from_millis(20),
            retain_runs: retain_runs.map(|n| NonZeroU64::new(n).expect("N >= 1")),
            retain_for,
            ..SweepSettings::default()
        },
        ..fast_settings()
    };
    let app = spawn_app_with(store, storage, settings).await;
    app.wait_for_health(ServingStatus::Serving).await;
    app
}

/// Waits (bounded) until the store holds exactly `wanted` rows.
async fn wait_for_rows(app: &TestApp, wanted: RowCounts) {
    within(&format!("the sweep to leave {wanted:?}"), async {
        while app.db().row_counts() != wanted {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

fn set<'a>(runs: impl IntoIterator<Item = (&'a str, &'a str)>) -> BTreeSet<(String, String)> {
    runs.into_iter()
        .map(|(t, r)| (t.to_owned(), r.to_owned()))
        .collect()
}

/// A timestamp `ago` before now, as a caller would send it.
fn ago(ago: Duration) -> String {
    (chrono::Utc::now() - chrono::Duration::from_std(ago).expect("duration"))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn retain_runs_keeps_the_newest_runs_of_each_task(backend: Backend) {
    let app = spawn_retaining(backend, Some(3), None).await;
    // Written out of order: the newest are those with the latest instants,
    // not the last written; "b" is under the limit.
    for i in [6u32, 2, 5, 1, 4, 3] {
        app.complete_run("keep-a", &format!("r{i}"), &ts(i)).await;
    }
    app.complete_run("keep-b", "r1", &ts(1)).await;
    app.complete_run("keep-b", "r2", &ts(2)).await;
    wait_for_rows(
        &app,
        RowCounts {
            tasks: 2,
            snapshot_entries: 5,
            manifests: 5,
        },
    )
    .await;
    assert_eq!(app.run_ids("keep-a").await, ["r4", "r5", "r6"]);
    assert_eq!(app.run_ids("keep-b").await, ["r1", "r2"]);
    for gone in ["r1", "r2", "r3"] {
        assert_eq!(
            app.db().row(Table::Manifests, "keep-a", gone),
            None,
            "{gone}"
        );
        let err = app.get_manifest("keep-a", gone).await.expect_err(gone);
        assert_eq!(err.code(), tonic::Code::NotFound);
    }
    let a = app.listed_task("keep-a").await.expect("keep-a is listed");
    assert_eq!((a.run_count, a.last_run_at.as_str()), (3, ts(6).as_str()));
    let expired = app.db().events("EXPIRED");
    assert_eq!(expired.len(), 3, "one EXPIRED event per run: {expired:?}");
    assert_eq!(
        set(expired.iter().map(|(t, r)| (t.as_str(), r.as_str()))),
        set([("keep-a", "r1"), ("keep-a", "r2"), ("keep-a", "r3")])
    );
}
contract_test!(retain_runs_keeps_the_newest_runs_of_each_task);

async fn retain_for_expires_old_runs_manifest_only_and_backfilled_ones_too(backend: Backend) {
    let app = spawn_retaining(backend, None, Some(Duration::from_secs(7 * 24 * 3600))).await;
    let young = ago(Duration::from_secs(3600));
    app.complete_run("age", "young", &young).await;
    // A backfilled run, older than the horizon: WRITTEN, then it expires.
    let reply = app
        .complete_run("age", "old", &ago(Duration::from_secs(30 * 86400)))
        .await;
    assert_eq!(reply.outcome(), Outcome::AllWritten);
    // A manifest-only run: its snapshot write is refused.
    let fault = app
        .db()
        .inject_fault(Table::SnapshotEntries, "orphan", &[On::Insert]);
    let reply = app.complete_run("orphan", "old", &ts(1)).await;
    assert_eq!(
        reply.snapshot.as_ref().map(|s| s.state()),
        Some(WriteState::Failed)
    );
    app.db().remove_fault(fault);
    wait_for_rows(
        &app,
        RowCounts {
            tasks: 1,
            snapshot_entries: 1,
            manifests: 1,
        },
    )
    .await;
    assert_eq!(app.run_ids("age").await, ["young"]);
    assert!(app.db().row(Table::Manifests, "age", "young").is_some());
    assert_eq!(
        set(app
            .db()
            .events("EXPIRED")
            .iter()
            .map(|(t, r)| (t.as_str(), r.as_str()))),
        set([("age", "old"), ("orphan", "old")])
    );
    let age = app.listed_task("age").await.expect("age is listed");
    assert_eq!(
        (age.run_count, age.last_run_at.as_str()),
        (1, young.as_str())
    );
}
contract_test!(retain_for_expires_old_runs_manifest_only_and_backfilled_ones_too);

/// Writers race the sweep: every task ends with exactly its newest 5 runs,
/// each of the others expired once, and the counters agree.
async fn retention_under_concurrent_writes_keeps_exactly_the_newest(backend: Backend) {
    const TASKS: u32 = 4;
    const RUNS: u32 = 60;
    const KEEP: u32 = 5;
    let app = spawn_retaining(backend, Some(KEEP.into()), None).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(app.connect_client().await);
    }
    let writers: Vec<_> = (0..TASKS)
        .map(|t| {
            let clients = clients.clone();
            // Timestamps in reverse of the run number for odd tasks, so
            // the newest are written first there.
            tokio::spawn(async move {
                write_all_at_once(&clients, &format!("busy-{t}"), RUNS, move |i| {
                    if t % 2 == 0 { i } else { RUNS - i }
                })
                .await
            })
        })
        .collect();
    for writer in writers {
        within("the writers", writer).await.expect("writer");
    }
    wait_for_rows(
        &app,
        RowCounts {
            tasks: TASKS.into(),
            snapshot_entries: (TASKS * KEEP).into(),
            manifests: (TASKS * KEEP).into(),
        },
    )
    .await;
    let expired = app.db().events("EXPIRED");
    assert_eq!(
        expired.len() as u32,
        TASKS * (RUNS - KEEP),
        "one event per run"
    );
    let distinct: BTreeSet<_> = expired.iter().cloned().collect();
    assert_eq!(distinct.len(), expired.len(), "no run expired twice");
    for t in 0..TASKS {
        let task = format!("busy-{t}");
        let newest: Vec<String> = (0..RUNS)
            .filter(|&i| {
                let stamp = if t % 2 == 0 { i } else { RUNS - i };
                let newest_stamp = if t % 2 == 0 { RUNS - 1 } else { RUNS };
                stamp + KEEP > newest_stamp
            })
            .map(|i| format!("run-{i:03}"))
            .collect();
        let mut kept = app.run_ids(&task).await;
        kept.sort();
        let mut wanted = newest.clone();
        wanted.sort();
        assert_eq!(kept, wanted, "{task}");
        let listed = app.listed_task(&task).await.expect("listed");
        assert_eq!(listed.run_count, u64::from(KEEP), "{task}");
        let newest_stamp = if t % 2 == 0 { RUNS - 1 } else { RUNS };
        assert_eq!(listed.last_run_at, ts(newest_stamp), "{task}");
    }
}
contract_test!(retention_under_concurrent_writes_keeps_exactly_the_newest);

/// SIGKILL of the real binary in mid-sweep, again and again: after every
/// kill each run is either whole (both records) or gone with exactly one
/// EXPIRED event, and once the sweep is done nothing is left, counters
/// included (a task's row goes only when its count reaches zero).
async fn a_kill_in_mid_sweep_leaves_every_run_whole_or_expired(backend: Backend) {
    const TASKS: u32 = 20;
    const RUNS_PER_TASK: u32 = 300;
    const TOTAL: usize = (TASKS * RUNS_PER_TASK) as usize;
    let store = TestStore::fresh(backend);
    let server = start_server(&store, &[]).await;
    let clients = {
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(server.client().await);
        }
        clients
    };
    for t in 0..TASKS {
        write_all_at_once(&clients, &format!("sweep-{t:02}"), RUNS_PER_TASK, |i| i).await;
    }
    drop(clients);
    server.terminate().await;

    let db = store.db();
    let mut cut_in_the_middle = 0;
    for round in 0..10u64 {
        let before = db.events("EXPIRED").len();
        if before == TOTAL {
            break;
        }
        let server =
            start_server(&store, &["--retain-for", "7d", "--sweep-interval", "10ms"]).await;
        within("the sweep to expire something", async {
            while db.events("EXPIRED").len() == before {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(round * 7 % 40)).await;
        server.kill().await;

        let runs = db.runs_at_once();
        let expired_set: BTreeSet<_> = runs.expired.iter().cloned().collect();
        assert_eq!(
            expired_set.len(),
            runs.expired.len(),
            "no run expired twice"
        );
        if runs.expired.len() < TOTAL {
            cut_in_the_middle += 1;
        }
        let entries: BTreeSet<_> = runs.entries.into_iter().collect();
        let manifests: BTreeSet<_> = runs.manifests.into_iter().collect();
        let half_gone: Vec<_> = entries.symmetric_difference(&manifests).take(5).collect();
        assert!(
            half_gone.is_empty(),
            "round {round}: runs that lost one record only ({} entries, {} manifests): {half_gone:?}",
            entries.len(),
            manifests.len()
        );
        assert_eq!(
            entries.len() + expired_set.len(),
            TOTAL,
            "round {round}: every run is stored or expired"
        );
        assert!(
            entries.is_disjoint(&expired_set),
            "round {round}: an expired run is still stored"
        );
        assert_eq!(db.integrity_check(), "ok");
    }
    assert!(
        cut_in_the_middle > 0,
        "no kill landed before the sweep was done: the test proved nothing"
    );
    // Let the sweep finish.
    let server = start_server(&store, &["--retain-for", "7d", "--sweep-interval", "10ms"]).await;
    within("the sweep to finish", async {
        while db.row_counts() != RowCounts::default() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(db.events("EXPIRED").len(), TOTAL);
    server.terminate().await;
}
contract_test!(a_kill_in_mid_sweep_leaves_every_run_whole_or_expired);
