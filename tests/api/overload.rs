//! Beyond the in-flight limit, calls are refused at once with
//! RESOURCE_EXHAUSTED instead of piling up; memory stays bounded in a burst.

use std::{sync::Arc, time::Duration};

use runstore::{
    proto::{CompleteRunRequest, Outcome, persistence_service_client::PersistenceServiceClient},
    server::{ServerSettings, metrics::Metrics},
};
use tonic::Code;

use crate::{
    held_storage::{HeldStorage, Hold},
    helpers::{Backend, Table, TestStore, complete_request, fast_settings, spawn_app_with, ts},
    metrics::{samples, value},
    server_process::start_server,
};

async fn calls_beyond_the_limit_get_resource_exhausted_at_once(backend: Backend) {
    let store = TestStore::fresh(backend);
    let storage = HeldStorage::new(&store, true, Hold::Manifests).await;
    let metrics = Arc::new(Metrics::new());
    let settings = ServerSettings {
        max_in_flight: 4,
        metrics: Arc::clone(&metrics),
        ..fast_settings()
    };
    let app = spawn_app_with(store, storage.clone(), settings).await;
    let series = |name: &str| value(&samples(&metrics.encode()), name);

    // Fill every slot with a call held mid-write.
    let held: Vec<_> = (0..4)
        .map(|i| {
            let mut client = app.client();
            tokio::spawn(async move {
                client
                    .complete_run(complete_request("busy", &format!("held-{i}"), &ts(i)))
                    .await
            })
        })
        .collect();
    storage.wait_held(4).await;

    // The next call is refused without waiting for a slot.
    let err = app
        .try_complete_run(complete_request("busy", "one-too-many", &ts(9)))
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("limit of 4 calls"),
        "{}",
        err.message()
    );
    assert_eq!(series("runstore_calls_in_flight"), 4.0);
    assert_eq!(series("runstore_calls_shed_total"), 1.0);
    assert_eq!(
        series("runstore_rpc_requests_total{method=\"CompleteRun\",code=\"RESOURCE_EXHAUSTED\"}"),
        1.0
    );
    let db = app.db();
    assert!(db.row(Table::Manifests, "busy", "one-too-many").is_none());
    assert!(
        db.row(Table::SnapshotEntries, "busy", "one-too-many")
            .is_none()
    );

    storage.release(4);
    for call in held {
        let reply = crate::helpers::within("a held call", call)
            .await
            .expect("task")
            .expect("held call")
            .into_inner();
        assert_eq!(reply.outcome(), Outcome::AllWritten);
    }
    // Slots are given back.
    storage.release(1);
    let reply = app.complete_run("busy", "after", &ts(10)).await;
    assert_eq!(reply.outcome(), Outcome::AllWritten);
    assert_eq!(series("runstore_calls_in_flight"), 0.0);
    assert_eq!(series("runstore_calls_shed_total"), 1.0);
}
contract_test!(calls_beyond_the_limit_get_resource_exhausted_at_once);

async fn memory_stays_bounded_in_a_burst(backend: Backend) {
    const CALLS: usize = 1200;
    const SUMMARY_BYTES: usize = 256 * 1024;
    const LIMIT_MIB: u64 = 768;

    let store = TestStore::fresh(backend);
    let server = start_server(&store, &["--max-in-flight", "64"]).await;
    let addr = server.addr.clone();
    let baseline = server.peak_rss_kib();

    let clients: Vec<_> = futures::future::join_all(
        (0..8).map(|_| PersistenceServiceClient::connect(format!("http://{addr}"))),
    )
    .await
    .into_iter()
    .map(|c| c.expect("connect").max_decoding_message_size(16 << 20))
    .collect();
    let pad = "x".repeat(SUMMARY_BYTES);
    let burst = (0..CALLS).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        let request = CompleteRunRequest {
            summary_json: format!("{{\"pad\":\"{pad}\"}}"),
            ..complete_request(
                &format!("burst-{}", i % 50),
                &format!("run-{i}"),
                &ts(i as u32),
            )
        };
        async move {
            client
                .complete_run(request)
                .await
                .map(|r| r.into_inner().outcome())
        }
    });
    let results = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(burst))
        .await
        .expect("the burst finishes");

    let written = results
        .iter()
        .filter(|r| matches!(r, Ok(Outcome::AllWritten)))
        .count();
    let shed = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .count();
    let other: Vec<_> = results
        .iter()
        .filter(|r| {
            !matches!(r, Ok(Outcome::AllWritten))
                && !matches!(r, Err(s) if s.code() == Code::ResourceExhausted)
        })
        .collect();
    let peak = server.peak_rss_kib();
    println!(
        "burst: calls={CALLS} summary_bytes={SUMMARY_BYTES} written={written} shed={shed} baseline_rss_mib={} peak_rss_mib={}",
        baseline / 1024,
        peak / 1024
    );
    assert!(
        other.is_empty(),
        "only written or shed: {:?}",
        &other[..other.len().min(3)]
    );
    assert_eq!(written + shed, CALLS);
    assert!(written > 0);
    assert!(peak / 1024 < LIMIT_MIB, "peak RSS {} MiB", peak / 1024);
    assert_eq!(server.terminate().await.code(), Some(0));
}
contract_test!(memory_stays_bounded_in_a_burst);
