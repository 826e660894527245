//! The real binary: several processes sharing one data dir, and SIGTERM.

use runstore::proto::Outcome;

use crate::{
    helpers::{complete_request, ts},
    server_process::start_server,
};

#[tokio::test]
async fn two_processes_sharing_a_data_dir_never_lose_a_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let servers = [
        start_server(dir.path(), &[]).await,
        start_server(dir.path(), &[]).await,
    ];
    let clients = [servers[0].client().await, servers[1].client().await];

    let calls: Vec<_> = (0..200u32)
        .map(|i| {
            let mut client = clients[i as usize % 2].clone();
            tokio::spawn(async move {
                let request = complete_request("shared", &format!("run-{i:03}"), &ts(i));
                client
                    .complete_run(request)
                    .await
                    .expect("CompleteRun")
                    .into_inner()
            })
        })
        .collect();
    for call in calls {
        let reply = call.await.expect("client task");
        assert_eq!(
            reply.outcome(),
            Outcome::AllWritten,
            "{:?}",
            reply.primary_error
        );
    }

    for client in &clients {
        let page = client
            .clone()
            .get_task_snapshot(runstore::proto::GetTaskSnapshotRequest {
                task_id: "shared".into(),
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .expect("snapshot")
            .into_inner();
        let ids: Vec<_> = page.runs.iter().map(|r| r.run_id.clone()).collect();
        let expected: Vec<_> = (0..200).map(|i| format!("run-{i:03}")).collect();
        assert_eq!(ids, expected, "both processes see every run, in order");
    }

    for server in servers {
        let status = server.terminate().await;
        assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    }
}
