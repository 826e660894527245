//! The two writes run at the same time, and concurrent runs of one task are
//! never lost.

use std::time::Duration;

use async_trait::async_trait;
use runstore::{
    api::{ServiceSettings, WriteMode},
    proto::{Outcome, WriteTarget},
    server::ServerSettings,
};
use tokio::sync::{Mutex, watch};

use crate::{
    held_storage::{Hooked, Hooks},
    helpers::{
        Backend, Table, TestStore, fast_settings, spawn_app, spawn_app_with, ts, write_all_at_once,
    },
};

/// Hooks under which each write announces itself and waits (up to a bound)
/// until both writes of the call have started, recording whether it saw the
/// other one in flight.
#[derive(Default)]
struct OverlapProbe {
    /// Writes currently in flight.
    started: watch::Sender<usize>,
    seen: Mutex<Vec<(WriteTarget, bool)>>,
}

#[async_trait]
impl Hooks for OverlapProbe {
    async fn before_write(&self, target: WriteTarget) {
        let mut started = self.started.subscribe();
        self.started.send_modify(|n| *n += 1);
        // Bounded so a server that writes one after the other fails this
        // test instead of hanging it.
        let both = tokio::time::timeout(Duration::from_secs(2), started.wait_for(|n| *n >= 2))
            .await
            .is_ok_and(|r| r.is_ok());
        self.seen.lock().await.push((target, both));
    }

    async fn after_write(&self, _target: WriteTarget) {
        self.started.send_modify(|n| *n -= 1);
    }
}

async fn overlap_seen(backend: Backend, mode: WriteMode) -> Vec<(WriteTarget, bool)> {
    let store = TestStore::fresh(backend);
    let probe = Hooked::with_hooks(&store, OverlapProbe::default()).await;
    let settings = ServerSettings {
        service: ServiceSettings {
            write_mode: mode,
            ..ServiceSettings::default()
        },
        ..fast_settings()
    };
    let app = spawn_app_with(store, probe.clone(), settings).await;
    let reply = app.complete_run("task", "run-1", &ts(1)).await;
    assert_eq!(reply.outcome(), Outcome::AllWritten);
    let mut seen = probe.seen.lock().await.clone();
    seen.sort_by_key(|(target, _)| *target as i32);
    seen
}

async fn both_writes_are_in_flight_at_the_same_time(backend: Backend) {
    let seen = overlap_seen(backend, WriteMode::Concurrent).await;
    assert_eq!(
        seen,
        [(WriteTarget::Snapshot, true), (WriteTarget::Manifest, true)]
    );
}
contract_test!(both_writes_are_in_flight_at_the_same_time);

/// The probe above can fail: writes made one after the other never overlap.
async fn the_overlap_probe_detects_sequential_writes(backend: Backend) {
    let seen = overlap_seen(backend, WriteMode::Sequential).await;
    assert_eq!(
        seen,
        [
            (WriteTarget::Snapshot, false),
            (WriteTarget::Manifest, false)
        ]
    );
}
contract_test!(the_overlap_probe_detects_sequential_writes);

async fn two_hundred_concurrent_runs_of_one_task_are_all_kept_in_order(backend: Backend) {
    let app = spawn_app(backend).await;
    // Several connections, many client tasks, timestamps in scrambled order.
    let channels = futures::future::join_all((0..4).map(|_| app.connect_client())).await;
    write_all_at_once(&channels, "hot", 200, |i| (i * 67) % 200).await;

    let runs = app.all_runs("hot").await;
    assert_eq!(runs.len(), 200);
    let mut expected: Vec<_> = (0..200u32)
        .map(|i| ((i * 67) % 200, format!("run-{i:03}")))
        .collect();
    expected.sort();
    let got: Vec<_> = runs.iter().map(|r| r.run_id.clone()).collect();
    let expected: Vec<_> = expected.into_iter().map(|(_, id)| id).collect();
    assert_eq!(got, expected, "timestamp order");
    let db = app.db();
    assert_eq!(db.count(Table::SnapshotEntries, "hot"), 200);
    assert_eq!(db.count(Table::Manifests, "hot"), 200);
}
contract_test!(two_hundred_concurrent_runs_of_one_task_are_all_kept_in_order);
