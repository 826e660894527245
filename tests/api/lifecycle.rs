//! Start-up, health, reflection, restart and graceful shutdown.

use std::sync::Arc;

use runstore::proto::Outcome;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::held_storage::HeldStorage;
use crate::helpers::{SERVICE_NAME, fast_settings, spawn_app, spawn_app_on, spawn_app_with, ts};

#[tokio::test]
async fn health_is_not_serving_until_storage_proves_writable() {
    crate::helpers::within_test_limit(
        "health_is_not_serving_until_storage_proves_writable",
        async move {
            let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
            let storage = HeldStorage::new(dir.path(), false, false);
            let app = spawn_app_with(dir, storage.clone(), fast_settings()).await;

            assert_eq!(app.health("").await, ServingStatus::NotServing);
            assert_eq!(app.health(SERVICE_NAME).await, ServingStatus::NotServing);

            storage.ready.send_replace(true);
            app.wait_for_health(ServingStatus::Serving).await;
            assert_eq!(app.health("").await, ServingStatus::Serving);
        },
    )
    .await
}

#[tokio::test]
async fn health_follows_storage_failures_and_recovery() {
    crate::helpers::within_test_limit("health_follows_storage_failures_and_recovery", async move {
        let app = spawn_app().await;
        assert_eq!(app.health(SERVICE_NAME).await, ServingStatus::Serving);

        // Take the data dir away for real: the probe write fails.
        let root = app.data_path().to_path_buf();
        let moved = root.with_extension("moved");
        std::fs::rename(&root, &moved).expect("move data dir away");
        app.wait_for_health(ServingStatus::NotServing).await;

        std::fs::rename(&moved, &root).expect("put data dir back");
        app.wait_for_health(ServingStatus::Serving).await;
        let reply = app.complete_run("task", "run", &ts(1)).await;
        assert_eq!(reply.outcome(), Outcome::AllWritten);
    })
    .await
}

#[tokio::test]
async fn a_restart_keeps_every_run() {
    crate::helpers::within_test_limit("a_restart_keeps_every_run", async move {
        let app = spawn_app().await;
        for i in 0..20u32 {
            app.complete_run("kept", &format!("run-{i:02}"), &ts(i))
                .await;
        }
        let before = app.all_runs("kept").await;
        let manifest = app.get_manifest("kept", "run-07").await.expect("manifest");
        let dir = app.data_dir.clone();
        app.stop().await;

        let app = spawn_app_on(dir).await;
        assert_eq!(app.all_runs("kept").await, before);
        assert_eq!(
            app.get_manifest("kept", "run-07").await.expect("manifest"),
            manifest
        );
        app.complete_run("kept", "run-20", &ts(20)).await;
        assert_eq!(app.all_runs("kept").await.len(), 21);
    })
    .await
}

#[tokio::test]
async fn shutdown_refuses_new_calls_and_finishes_admitted_ones() {
    crate::helpers::within_test_limit(
        "shutdown_refuses_new_calls_and_finishes_admitted_ones",
        async move {
            let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
            let storage = HeldStorage::new(dir.path(), true, true);
            let mut app = spawn_app_with(dir, storage.clone(), fast_settings()).await;
            app.wait_for_health(ServingStatus::Serving).await;
            let mut watch = HealthClient::new(app.channel.clone())
                .watch(HealthCheckRequest {
                    service: SERVICE_NAME.into(),
                })
                .await
                .expect("watch")
                .into_inner();
            assert_eq!(
                watch.next().await.expect("first").expect("status").status(),
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
                watch
                    .next()
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

            storage.release(1);
            let reply = admitted
                .await
                .expect("client task")
                .expect("admitted call completes")
                .into_inner();
            assert_eq!(reply.outcome(), Outcome::AllWritten);
            assert!(
                watch.next().await.is_none(),
                "the watch stream ends rather than hold the drain open"
            );
            let data = app.data_dir.clone();
            app.stop().await;

            assert!(
                data.path()
                    .join("runs/task/admitted/manifest.json")
                    .exists()
            );
            assert!(
                !data.path().join("runs/task/late").exists(),
                "the refused call wrote nothing"
            );
        },
    )
    .await
}

#[tokio::test]
async fn reflection_lists_the_services_in_both_versions() {
    crate::helpers::within_test_limit("reflection_lists_the_services_in_both_versions", async move {
        use tonic_reflection::pb::{v1, v1alpha};
        let app = spawn_app().await;

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
        let reply = replies.next().await.expect("reply").expect("ok");
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
        let reply = replies.next().await.expect("reply").expect("ok");
        assert!(
            matches!(reply.message_response, Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
            "{reply:?}"
        );
    })
    .await
}
