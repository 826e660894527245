//! Another process holding the store's write lock: writes wait at most the
//! lock timeout and then fail with ABORTED (retryable), reads go on,
//! readiness turns NOT_SERVING while liveness stays SERVING, and all of it
//! recovers once the lock is released, without a restart. The lock is
//! really held: the test's own connection keeps a write transaction open.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use runstore::proto::{
    Outcome, WriteState, WriteStatus, persistence_service_client::PersistenceServiceClient,
};
use tokio_stream::StreamExt;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{
        Backend, LIVENESS, RowCounts, SERVICE_NAME, TestStore, complete_request, health, ts,
        wait_for_service, within,
    },
    server_process::start_server,
};

const LOCK_TIMEOUT: Duration = Duration::from_millis(200);
const ARGS: &[&str] = &["--lock-timeout", "200ms", "--health-interval", "100ms"];

fn assert_aborted(status: &WriteStatus, location: &str) {
    assert_eq!(status.state(), WriteState::Failed, "{status:?}");
    assert_eq!(status.code, "ABORTED", "{status:?}");
    assert!(status.retryable, "a lock timeout is retryable: {status:?}");
    assert!(!status.message.is_empty());
    assert_eq!(status.location, location);
    assert_eq!(status.bytes, 0);
    assert!(
        Duration::from_micros(status.duration_micros) >= LOCK_TIMEOUT,
        "the write waited for the lock: {status:?}"
    );
}

async fn a_held_write_lock_fails_writes_as_aborted_after_the_lock_timeout(backend: Backend) {
    let store = TestStore::fresh(backend);
    let server = start_server(&store, ARGS).await;
    let channel = server.channel().await;
    wait_for_service(&channel, SERVICE_NAME, ServingStatus::Serving).await;
    let mut client = PersistenceServiceClient::new(channel.clone());
    let first = complete_request("locked", "run-1", &ts(1));
    let reply = client
        .complete_run(first.clone())
        .await
        .expect("CompleteRun")
        .into_inner();
    assert_eq!(reply.outcome(), Outcome::AllWritten);
    let before = store.db().row_counts();

    let lock = store.db().hold_write_lock();
    let started = Instant::now();
    let request = complete_request("locked", "run-2", &ts(2));
    let reply = within(
        "CompleteRun against a held lock",
        client.complete_run(request.clone()),
    )
    .await
    .expect("CompleteRun answers OK even when writes fail")
    .into_inner();
    let took = started.elapsed();
    let snapshot = reply.snapshot.as_ref().expect("snapshot");
    let manifest = reply.manifest.as_ref().expect("manifest");
    println!(
        "fault matrix: backend={} case=write-lock-held snapshot={} manifest={} outcome={} \
         (lock timeout {LOCK_TIMEOUT:?}, call took {took:?})",
        backend.name(),
        snapshot.code,
        manifest.code,
        reply.outcome().as_str_name()
    );
    assert_aborted(snapshot, "snapshot_entries/locked/run-2");
    assert_aborted(manifest, "manifests/locked/run-2");
    assert_eq!(reply.outcome(), Outcome::NoneWritten);
    assert_eq!(reply.primary_error.as_ref(), Some(manifest));
    // The flag took effect: the default timeout (5 s) would be far over.
    assert!(took < Duration::from_secs(3), "took {took:?}");

    // Readers never wait for the lock.
    let read = client
        .get_manifest(runstore::proto::GetManifestRequest {
            task_id: "locked".into(),
            run_id: "run-1".into(),
            ..Default::default()
        })
        .await
        .expect("a read while the lock is held")
        .into_inner();
    assert_eq!(read.summary_json, first.summary_json);
    let runs = crate::helpers::all_runs(&mut client, "locked", 100)
        .await
        .expect("snapshot while locked");
    assert_eq!(runs.len(), 1, "nothing of run-2 is visible");

    lock.release();
    assert_eq!(store.db().row_counts(), before, "nothing partial");
    let retry = client
        .complete_run(request.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(
        retry.outcome(),
        Outcome::AllWritten,
        "{:?}",
        retry.primary_error
    );
    assert_eq!(
        store.db().row_counts(),
        RowCounts {
            tasks: 1,
            snapshot_entries: 2,
            manifests: 2
        }
    );
    assert_eq!(server.terminate().await.code(), Some(0));
}
contract_test!(
    a_held_write_lock_fails_writes_as_aborted_after_the_lock_timeout,
    sqlite_only
);

async fn readiness_follows_storage_while_liveness_stays_serving(backend: Backend) {
    let store = TestStore::fresh(backend);
    let server = start_server(&store, ARGS).await;
    let channel = server.channel().await;
    wait_for_service(&channel, SERVICE_NAME, ServingStatus::Serving).await;

    // Every liveness status from here on.
    let mut liveness = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: LIVENESS.into(),
        })
        .await
        .expect("liveness watch")
        .into_inner();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(Ok(update)) = liveness.next().await {
                seen.lock().expect("seen").push(update.status());
            }
        })
    };

    // The probe's write cannot get the lock: not ready, but live.
    let lock = store.db().hold_write_lock();
    let locked_at = Instant::now();
    wait_for_service(&channel, SERVICE_NAME, ServingStatus::NotServing).await;
    let not_ready_after = locked_at.elapsed();
    assert_eq!(health(&channel, LIVENESS).await, ServingStatus::Serving);

    lock.release();
    let released_at = Instant::now();
    wait_for_service(&channel, SERVICE_NAME, ServingStatus::Serving).await;
    let ready_after = released_at.elapsed();
    assert_eq!(health(&channel, LIVENESS).await, ServingStatus::Serving);
    let reply = PersistenceServiceClient::new(channel.clone())
        .complete_run(complete_request("after", "run-1", &ts(1)))
        .await
        .expect("CompleteRun")
        .into_inner();
    assert_eq!(reply.outcome(), Outcome::AllWritten);

    recorder.abort();
    let seen = seen.lock().expect("seen").clone();
    println!(
        "readiness split: NOT_SERVING {not_ready_after:?} after the lock was taken, SERVING \
         {ready_after:?} after release; liveness saw {seen:?}"
    );
    assert!(!seen.is_empty(), "the liveness watch reported");
    assert!(
        seen.iter().all(|s| *s == ServingStatus::Serving),
        "liveness never left SERVING: {seen:?}"
    );
    assert_eq!(server.terminate().await.code(), Some(0));
}
contract_test!(
    readiness_follows_storage_while_liveness_stays_serving,
    sqlite_only
);
