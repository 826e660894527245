//! Slow and abandoned callers: the caller's deadline is answered with
//! DEADLINE_EXCEEDED, and a write a caller stopped waiting for still
//! completes (it is never cut in half) before the server exits.

use runstore::proto::Outcome;
use tonic::Code;

use crate::{
    held_storage::{HeldStorage, Hold},
    helpers::{Backend, Table, TestStore, complete_request, fast_settings, spawn_app_with, ts},
};

async fn a_passed_deadline_is_deadline_exceeded_and_the_write_still_completes(backend: Backend) {
    let store = TestStore::fresh(backend);
    let storage = HeldStorage::new(&store, true, Hold::Manifests).await;
    let app = spawn_app_with(store.clone(), storage.clone(), fast_settings()).await;

    let mut request = tonic::Request::new(complete_request("slow", "run-1", &ts(1)));
    // The deadline as a bare `grpc-timeout` header, with no client-side
    // timer racing the server's answer: DEADLINE_EXCEEDED must come from
    // the service itself.
    request
        .metadata_mut()
        .insert("grpc-timeout", "300m".parse().expect("header value"));
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
    // Neither manifest is there yet: they are held.
    assert_eq!(app.db().count(Table::Manifests, "slow"), 0);

    // The server keeps serving others meanwhile.
    storage.release(3);
    let reply = app.complete_run("other", "run-1", &ts(1)).await;
    assert_eq!(reply.outcome(), Outcome::AllWritten);

    // Shutdown waits for the writes nobody waits for any more.
    app.stop().await;
    let db = store.db();
    for run in ["run-1", "run-2"] {
        let sent = complete_request("slow", run, &ts(if run == "run-1" { 1 } else { 2 }));
        let manifest = db.row(Table::Manifests, "slow", run);
        assert_eq!(
            manifest.map(|row| row.summary),
            Some(sent.summary_json.clone().into_bytes()),
            "{run}: the write completed, whole, after its caller left"
        );
        assert!(
            db.row(Table::SnapshotEntries, "slow", run).is_some(),
            "{run}"
        );
    }
    assert_eq!(db.count(Table::SnapshotEntries, "slow"), 2);
}
contract_test!(a_passed_deadline_is_deadline_exceeded_and_the_write_still_completes);

async fn writes_a_caller_left_behind_still_count_against_the_in_flight_limit(backend: Backend) {
    let store = TestStore::fresh(backend);
    let storage = HeldStorage::new(&store, true, Hold::Manifests).await;
    let settings = runstore::server::ServerSettings {
        max_in_flight: 1,
        ..fast_settings()
    };
    let app = spawn_app_with(store, storage.clone(), settings).await;

    let mut request = tonic::Request::new(complete_request("slow", "run-1", &ts(1)));
    // The deadline as a bare `grpc-timeout` header, with no client-side
    // timer racing the server's answer: DEADLINE_EXCEEDED must come from
    // the service itself.
    request
        .metadata_mut()
        .insert("grpc-timeout", "200m".parse().expect("header value"));
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
}
contract_test!(writes_a_caller_left_behind_still_count_against_the_in_flight_limit);
