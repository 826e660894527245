//! The real binary: several processes sharing one data dir, and SIGTERM.

use std::{process::Stdio, time::Duration};

use runstore::proto::{Outcome, persistence_service_client::PersistenceServiceClient};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;

use crate::helpers::{complete_request, ts};

struct ServerProcess {
    child: Child,
    client: PersistenceServiceClient<Channel>,
}

/// Starts `runstore serve` on 127.0.0.1:0 and connects once it logs its address.
async fn start_server(data_dir: &std::path::Path) -> ServerProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runstore"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--health-interval",
            "100ms",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start runstore");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            let event: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            if event["message"] == "listening" {
                return event["addr"].as_str().expect("addr").to_owned();
            }
        }
        panic!("runstore exited before listening");
    })
    .await
    .expect("runstore did not start");
    // Keep draining the logs so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let client = PersistenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    ServerProcess { child, client }
}

impl ServerProcess {
    /// SIGTERM, then the exit status.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within the grace period")
            .expect("wait")
    }
}

#[tokio::test]
async fn two_processes_sharing_a_data_dir_never_lose_a_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let servers = [
        start_server(dir.path()).await,
        start_server(dir.path()).await,
    ];

    let calls: Vec<_> = (0..200u32)
        .map(|i| {
            let mut client = servers[i as usize % 2].client.clone();
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

    for server in &servers {
        let page = server
            .client
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
