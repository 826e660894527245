//! Start-up, health, reflection, restart and graceful shutdown.

use runstore::proto::Outcome;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::held_storage::{HeldStorage, Hold};
use crate::helpers::{
    Backend, LIVENESS, RowCounts, SERVICE_NAME, Table, TestStore, fast_settings, spawn_app,
    spawn_app_on, spawn_app_with, ts, within,
};

/// Liveness is SERVING from the start; readiness only once storage has
/// passed a probe.
async fn readiness_waits_until_storage_proves_writable(backend: Backend) {
    let store = TestStore::fresh(backend);
    let storage = HeldStorage::new(&store, false, Hold::Nothing).await;
    let app = spawn_app_with(store, storage.clone(), fast_settings()).await;

    assert_eq!(app.health(LIVENESS).await, ServingStatus::Serving);
    assert_eq!(app.health(SERVICE_NAME).await, ServingStatus::NotServing);

    storage.ready.send_replace(true);
    app.wait_for_health(ServingStatus::Serving).await;
    assert_eq!(app.health(LIVENESS).await, ServingStatus::Serving);
}
contract_test!(readiness_waits_until_storage_proves_writable);

async fn a_restart_keeps_every_run(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..20u32 {
        app.complete_run("kept", &format!("run-{i:02}"), &ts(i))
            .await;
    }
    let before = app.all_runs("kept").await;
    let manifest = app.get_manifest("kept", "run-07").await.expect("manifest");
    let store = app.store.clone();
    app.stop().await;
    let counts = store.db().row_counts();
    assert_eq!(
        counts,
        RowCounts {
            tasks: 1,
            snapshot_entries: 20,
            manifests: 20
        }
    );

    let app = spawn_app_on(store).await;
    assert_eq!(app.all_runs("kept").await, before);
    assert_eq!(
        app.get_manifest("kept", "run-07").await.expect("manifest"),
        manifest
    );
    app.complete_run("kept", "run-20", &ts(20)).await;
    assert_eq!(app.all_runs("kept").await.len(), 21);
    // The restarted server goes on with the recording order it left.
    app.complete_run("kept", "run-03", &ts(20)).await;
    let ids = app.run_ids("kept").await;
    assert_eq!(&ids[19..], ["run-20", "run-03"]);
}
contract_test!(a_restart_keeps_every_run);

async fn shutdown_refuses_new_calls_and_finishes_admitted_ones(backend: Backend) {
    let store = TestStore::fresh(backend);
    let storage = HeldStorage::new(&store, true, Hold::Manifests).await;
    let mut app = spawn_app_with(store.clone(), storage.clone(), fast_settings()).await;
    app.wait_for_health(ServingStatus::Serving).await;
    let mut watch = HealthClient::new(app.channel.clone())
        .watch(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        within("the first health update", watch.next())
            .await
            .expect("first")
            .expect("status")
            .status(),
        ServingStatus::Serving
    );

    // One call admitted and held mid-write...
    let admitted = {
        let client = app.client();
        let request = crate::helpers::complete_request("task", "admitted", &ts(1));
        tokio::spawn(async move { client.clone().complete_run(request).await })
    };
    storage.wait_held(1).await;

    // ...then shutdown: health turns NOT_SERVING at once.
    app.begin_shutdown();
    assert_eq!(
        within("NOT_SERVING after shutdown begins", watch.next())
            .await
            .expect("update")
            .expect("status")
            .status(),
        ServingStatus::NotServing
    );

    let refused = app
        .try_complete_run(crate::helpers::complete_request("task", "late", &ts(2)))
        .await
        .expect_err("new calls are refused");
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(app.health(LIVENESS).await, ServingStatus::NotServing);

    storage.release(1);
    let reply = within("the admitted call", admitted)
        .await
        .expect("client task")
        .expect("admitted call completes")
        .into_inner();
    assert_eq!(reply.outcome(), Outcome::AllWritten);
    assert!(
        within("the watch stream to end", watch.next())
            .await
            .is_none(),
        "the watch stream ends rather than hold the drain open"
    );
    app.stop().await;

    let db = store.db();
    assert!(db.row(Table::Manifests, "task", "admitted").is_some());
    assert!(db.row(Table::SnapshotEntries, "task", "admitted").is_some());
    assert!(
        db.row(Table::Manifests, "task", "late").is_none()
            && db.row(Table::SnapshotEntries, "task", "late").is_none(),
        "the refused call wrote nothing"
    );
}
contract_test!(shutdown_refuses_new_calls_and_finishes_admitted_ones);

async fn reflection_lists_the_services_in_both_versions(backend: Backend) {
    use tonic_reflection::pb::{v1, v1alpha};
    let app = spawn_app(backend).await;

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut replies =
        v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection v1")
            .into_inner();
    let reply = within("a reflection reply", replies.next())
        .await
        .expect("reply")
        .expect("ok");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected reflection reply: {reply:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        SERVICE_NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                SERVICE_NAME.into(),
            ),
        ),
    };
    let mut replies =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection v1alpha")
            .into_inner();
    let reply = within("a reflection reply", replies.next())
        .await
        .expect("reply")
        .expect("ok");
    assert!(
        matches!(reply.message_response, Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{reply:?}"
    );
}
contract_test!(reflection_lists_the_services_in_both_versions);
