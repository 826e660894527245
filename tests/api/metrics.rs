//! The metrics endpoint of the real binary: after a few calls of each kind,
//! a scrape shows the right series moved by the right amounts, and no label
//! names a task or a run; the sweep's series move as runs expire. (Calls in
//! flight and shed: `overload.rs`.)

use std::collections::HashMap;

use runstore::proto::{
    CompleteRunRequest, DeleteRunRequest, GetTaskSnapshotRequest, ListTasksRequest, WriteState,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    helpers::{Backend, On, Table, TestStore, complete_request, ts, within},
    server_process::start_server,
};

/// One scrape: the OpenMetrics text, checked for its framing.
async fn scrape_text(addr: &str) -> String {
    let mut stream = within("connect to /metrics", tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    within("the scrape", stream.read_to_string(&mut response))
        .await
        .expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(
        body.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    body.to_owned()
}

/// Every sample, keyed by its series (`name{labels}`).
pub fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("series value");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// A series' value; 0 when it is not there (yet).
pub fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

async fn a_scrape_counts_each_kind_of_call(backend: Backend) {
    let store = TestStore::fresh(backend);
    let server = start_server(&store, &[]).await;
    let mut client = server.client().await;
    let before = samples(&scrape_text(&server.metrics_addr).await);

    for i in 0..3 {
        let reply = client
            .complete_run(complete_request("metrics-task", &format!("r{i}"), &ts(i)))
            .await
            .expect("CompleteRun")
            .into_inner();
        assert_eq!(
            reply.manifest.expect("manifest").state(),
            WriteState::Written
        );
    }
    let invalid = client
        .complete_run(CompleteRunRequest {
            run_id: "no task".into(),
            ..complete_request("", "x", &ts(9))
        })
        .await
        .expect_err("no task id");
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    // One manifest write refused by a trigger: the call is OK, the write
    // FAILED with the code its WriteStatus carries.
    let db = store.db();
    let fault = db.inject_fault(Table::Manifests, "metrics-doomed", &[On::Insert]);
    let refused = client
        .complete_run(complete_request("metrics-doomed", "r1", &ts(1)))
        .await
        .expect("CompleteRun")
        .into_inner();
    db.remove_fault(fault);
    let refused = refused.manifest.expect("manifest");
    assert_eq!(refused.state(), WriteState::Failed);
    let refused_code = refused.code.clone();
    client
        .get_manifest(runstore::proto::GetManifestRequest {
            task_id: "metrics-task".into(),
            run_id: "r0".into(),
            ..Default::default()
        })
        .await
        .expect("GetManifest");
    let missing = client
        .get_manifest(runstore::proto::GetManifestRequest {
            task_id: "metrics-task".into(),
            run_id: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("no such run");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    client
        .get_task_snapshot(GetTaskSnapshotRequest {
            task_id: "metrics-task".into(),
            ..Default::default()
        })
        .await
        .expect("GetTaskSnapshot");
    client
        .list_tasks(ListTasksRequest::default())
        .await
        .expect("ListTasks");
    client
        .delete_run(DeleteRunRequest {
            task_id: "metrics-task".into(),
            run_id: "r2".into(),
        })
        .await
        .expect("DeleteRun");

    let text = scrape_text(&server.metrics_addr).await;
    let after = samples(&text);
    let moved = |series: &str| value(&after, series) - value(&before, series);
    let rpc = |method: &str, code: &str| {
        moved(&format!(
            "runstore_rpc_requests_total{{method=\"{method}\",code=\"{code}\"}}"
        ))
    };
    assert_eq!(rpc("CompleteRun", "OK"), 4.0, "{text}");
    assert_eq!(rpc("CompleteRun", "INVALID_ARGUMENT"), 1.0, "{text}");
    assert_eq!(rpc("GetManifest", "OK"), 1.0, "{text}");
    assert_eq!(rpc("GetManifest", "NOT_FOUND"), 1.0, "{text}");
    assert_eq!(rpc("GetTaskSnapshot", "OK"), 1.0, "{text}");
    assert_eq!(rpc("ListTasks", "OK"), 1.0, "{text}");
    assert_eq!(rpc("DeleteRun", "OK"), 1.0, "{text}");
    assert_eq!(
        moved("runstore_rpc_duration_seconds_count{method=\"CompleteRun\",code=\"OK\"}"),
        4.0
    );
    let write = |target: &str, code: &str| {
        moved(&format!(
            "runstore_write_duration_seconds_count{{target=\"{target}\",code=\"{code}\"}}"
        ))
    };
    assert_eq!(write("snapshot", "OK"), 4.0, "{text}");
    assert_eq!(write("manifest", "OK"), 3.0, "{text}");
    assert_eq!(write("manifest", &refused_code), 1.0, "{text}");
    assert_eq!(
        moved(&format!(
            "runstore_write_failures_total{{target=\"manifest\",code=\"{refused_code}\"}}"
        )),
        1.0,
        "{text}"
    );
    assert_eq!(
        moved("runstore_write_failures_total{target=\"snapshot\",code=\"OK\"}"),
        0.0
    );
    assert_eq!(value(&after, "runstore_calls_in_flight"), 0.0, "{text}");
    assert_eq!(value(&after, "runstore_calls_shed_total"), 0.0, "{text}");
    assert_eq!(value(&after, "runstore_storage_ready"), 1.0, "{text}");
    match backend {
        Backend::Sqlite => {
            // 7 writes succeeded and 1 was refused, in at least one commit
            // (the health probe commits too).
            assert!(moved("runstore_group_commit_writes_count") >= 1.0, "{text}");
            assert!(moved("runstore_group_commit_writes_sum") >= 7.0, "{text}");
            assert!(moved("runstore_group_commit_duration_seconds_count") >= 1.0);
            assert!(
                value(&after, "runstore_sqlite_wal_size_bytes") > 0.0,
                "{text}"
            );
        }
        Backend::Postgres => {
            assert_eq!(value(&after, "runstore_postgres_pool_max"), 16.0, "{text}");
            assert!(
                value(&after, "runstore_postgres_pool_open") >= 1.0,
                "{text}"
            );
            // A health probe or a NOTIFY may hold one at this moment.
            assert!(
                value(&after, "runstore_postgres_pool_in_use")
                    <= value(&after, "runstore_postgres_pool_open"),
                "{text}"
            );
        }
    }
    for id in ["metrics-task", "metrics-doomed", "r0", "r1"] {
        assert!(!text.contains(id), "no label names a task or a run: {id}");
    }
}
contract_test!(a_scrape_counts_each_kind_of_call);

async fn the_sweep_counts_the_runs_it_expires(backend: Backend) {
    let store = TestStore::fresh(backend);
    let server = start_server(&store, &["--retain-runs", "1", "--sweep-interval", "100ms"]).await;
    let mut client = server.client().await;
    for i in 0..3 {
        client
            .complete_run(complete_request(
                "metrics-expiring",
                &format!("r{i}"),
                &ts(i),
            ))
            .await
            .expect("CompleteRun");
    }
    // The newest run stays; the two before it expire at a sweep.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let (expired, sweeps) = loop {
        let now = samples(&scrape_text(&server.metrics_addr).await);
        let expired = value(&now, "runstore_runs_expired_total");
        let sweeps = value(&now, "runstore_sweep_duration_seconds_count");
        if expired >= 2.0 || tokio::time::Instant::now() > deadline {
            break (expired, sweeps);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(expired, 2.0, "two runs expired");
    assert!(sweeps >= 1.0, "at least one sweep timed: {sweeps}");
}
contract_test!(the_sweep_counts_the_runs_it_expires);
