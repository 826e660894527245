//! The real binary: several processes sharing one data dir, and SIGTERM.

use crate::{helpers::write_all_at_once, server_process::start_server};

#[tokio::test]
async fn two_processes_sharing_a_data_dir_never_lose_a_run() {
    crate::helpers::within_test_limit(
        "two_processes_sharing_a_data_dir_never_lose_a_run",
        async move {
            let dir = tempfile::tempdir().expect("tempdir");
            let servers = [
                start_server(dir.path(), &[]).await,
                start_server(dir.path(), &[]).await,
            ];
            let clients = [servers[0].client().await, servers[1].client().await];

            write_all_at_once(&clients, "shared", 200, |i| i).await;

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
        },
    )
    .await
}
