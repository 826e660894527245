//! `runstore serve` as a child process: the real binary on 127.0.0.1:0
//! with JSON logs, on a test's store, for tests that signal or kill it or
//! measure its memory.

use std::{process::Stdio, time::Duration};

use runstore::proto::persistence_service_client::PersistenceServiceClient;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;

use crate::helpers::{TestStore, within};

/// `runstore serve` as a child process on 127.0.0.1:0 with JSON logs.
pub struct ServerProcess {
    pub child: Child,
    pub addr: String,
    /// The metrics endpoint's `host:port`.
    pub metrics_addr: String,
}

/// Starts the real binary on `store` and waits for its "listening" line.
pub async fn start_server(store: &TestStore, extra_args: &[&str]) -> ServerProcess {
    start_server_with_env(store, extra_args, &[]).await
}

/// The variables that turn trace export on: never inherited from the
/// environment the tests run in, only set by the test that wants them.
const TRACE_ENDPOINTS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// [`start_server`] with extra environment variables.
pub async fn start_server_with_env(
    store: &TestStore,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> ServerProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runstore"));
    for name in TRACE_ENDPOINTS {
        command.env_remove(name);
    }
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(extra_args)
        .args(store.server_args())
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start runstore");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let echo = std::env::var_os("TEST_LOG").is_some();
    let (addr, metrics_addr) = tokio::time::timeout(Duration::from_secs(30), async {
        let mut metrics_addr = None;
        while let Some(line) = lines.next_line().await.expect("read log") {
            if echo {
                println!("{line}");
            }
            let event: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            let addr = || event["addr"].as_str().expect("addr").to_owned();
            if event["message"] == "metrics listening" {
                metrics_addr = Some(addr());
            }
            if event["message"] == "listening" {
                let metrics = metrics_addr.expect("metrics listening, before listening");
                return (addr(), metrics);
            }
        }
        panic!("runstore exited before listening");
    })
    .await
    .expect("runstore did not start");
    // Keep draining the logs so the server never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if echo {
                println!("{line}");
            }
        }
    });
    ServerProcess {
        child,
        addr,
        metrics_addr,
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
        within("runstore to exit after SIGTERM", self.child.wait())
            .await
            .expect("wait")
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL");
        within("runstore to die of SIGKILL", self.child.wait())
            .await
            .expect("wait");
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}
