//! `runstore serve` as a child process: the real binary on 127.0.0.1:0
//! with JSON logs, for tests that signal or kill it.

use std::{
    path::Path,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use runstore::proto::persistence_service_client::PersistenceServiceClient;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;

/// `runstore serve` as a child process on 127.0.0.1:0 with JSON logs.
pub struct ServerProcess {
    pub child: Child,
    pub addr: String,
    /// Log lines whose message mentions a torn snapshot-log tail.
    pub torn_tail_warnings: Arc<AtomicUsize>,
}

/// Starts the real binary on `data_dir` and waits for its "listening" line.
pub async fn start_server(data_dir: &Path, extra_args: &[&str]) -> ServerProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runstore"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(extra_args)
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
    let torn_tail_warnings = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&torn_tail_warnings);
    // Keep draining the logs so the server never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("torn tail") {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    ServerProcess {
        child,
        addr,
        torn_tail_warnings,
    }
}

impl ServerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("server still running")
    }

    /// A new channel (its own HTTP/2 connection) to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn client(&self) -> PersistenceServiceClient<Channel> {
        PersistenceServiceClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    /// Sends `signal` (e.g. "-TERM") to the process with `kill`.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// SIGTERM, then the exit status (bounded).
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within the grace period")
            .expect("wait")
    }
}
