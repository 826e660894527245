//! The two writes run at the same time, and concurrent runs of one task are
//! never lost.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use runstore::{
    proto::{Outcome, WriteTarget},
    server::ServerSettings,
    service::{ServiceSettings, WriteMode},
};
use tokio::sync::{Mutex, watch};

use crate::{
    held_storage::{Hooked, Hooks},
    helpers::{fast_settings, spawn_app, spawn_app_with, ts, write_all_at_once},
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

async fn overlap_seen(mode: WriteMode) -> Vec<(WriteTarget, bool)> {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let probe = Hooked::with_hooks(dir.path(), OverlapProbe::default());
    let settings = ServerSettings {
        service: ServiceSettings {
            write_mode: mode,
            ..ServiceSettings::default()
        },
        ..fast_settings()
    };
    let app = spawn_app_with(dir, probe.clone(), settings).await;
    let reply = app.complete_run("task", "run-1", &ts(1)).await;
    assert_eq!(reply.outcome(), Outcome::AllWritten);
    let mut seen = probe.seen.lock().await.clone();
    seen.sort_by_key(|(target, _)| *target as i32);
    seen
}

#[tokio::test]
async fn both_writes_are_in_flight_at_the_same_time() {
    crate::helpers::within_test_limit("both_writes_are_in_flight_at_the_same_time", async move {
        let seen = overlap_seen(WriteMode::Concurrent).await;
        assert_eq!(
            seen,
            [(WriteTarget::Snapshot, true), (WriteTarget::Manifest, true)]
        );
    })
    .await
}

/// The probe above can fail: writes made one after the other never overlap.
#[tokio::test]
async fn the_overlap_probe_detects_sequential_writes() {
    crate::helpers::within_test_limit("the_overlap_probe_detects_sequential_writes", async move {
        let seen = overlap_seen(WriteMode::Sequential).await;
        assert_eq!(
            seen,
            [
                (WriteTarget::Snapshot, false),
                (WriteTarget::Manifest, false)
            ]
        );
    })
    .await
}

#[tokio::test]
async fn two_hundred_concurrent_runs_of_one_task_are_all_kept_in_order() {
    crate::helpers::within_test_limit(
        "two_hundred_concurrent_runs_of_one_task_are_all_kept_in_order",
        async move {
            let app = spawn_app().await;
            // Several connections, many client tasks, timestamps in scrambled order.
            let channels: Vec<_> = (0..4).map(|_| app.client()).collect();
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
        },
    )
    .await
}
