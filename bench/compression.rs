//! Compression benchmark: what gzip and zstd save on the wire and what they
//! cost in CPU, against identity (no compression), for `CompleteRun` (the
//! summary travels in the request) and `GetManifest` (it travels in the
//! reply).
//!
//! `BENCH_ROUNDS` times (default 3), for each payload and each encoding (the
//! encodings in a rotated order each round, after a `sync`):
//!
//! 1. Starts the real server binary (`runstore serve --listen 127.0.0.1:0`,
//!    a fresh data dir under `$TMPDIR`), reads its address from the
//!    `listening` log line, and puts a byte-counting TCP proxy on
//!    `127.0.0.1:0` in front of it. The client connects through the proxy,
//!    so the counts are the bytes of the real gRPC/HTTP2 traffic (headers,
//!    framing, window updates and all), one direction each.
//! 2. Waits for `grpc.health.v1` SERVING and makes one warm-up call of each
//!    kind (HPACK tables and flow-control windows settle), not counted.
//! 3. Sends `calls` `CompleteRun`s, `IN_FLIGHT` at a time, each a new task
//!    and run (so no history effects); every reply must be ALL_WRITTEN. Then
//!    reads each run back with `GetManifest` and checks the exact bytes.
//! 4. For each of the two phases reports, per call: the encoded protobuf
//!    message that carries the summary, the bytes through the proxy client
//!    to server and server to client, the server's CPU time
//!    (`utime + stime` of `/proc/<pid>/stat`, all threads, in clock ticks)
//!    and the client's CPU time (the client runs on a current-thread tokio
//!    runtime on the main thread, read from `/proc/thread-self/schedstat`;
//!    the proxy runs on other threads and is not counted).
//! 5. Stops the server with SIGTERM and requires exit status 0.
//!
//! The table gives per-call medians over the rounds, and the range of the
//! server's CPU time across them: a `CompleteRun`'s server CPU is mostly
//! kernel time for the two durable writes, which varies with the
//! filesystem's state more than compression changes it.
//!
//! The compressing clients use `.send_compressed(e).accept_compressed(e)`,
//! so both the request and the reply are compressed; the identity client
//! uses neither. tonic compresses at fixed levels (gzip 6, zstd 3).
//!
//! Payloads: `tests/fixtures/run-summary.json` (~2 KiB) and a 1 MiB summary
//! from `tests/fixtures/make_summary.py` (needs `python3`). Ids inside each
//! summary are rewritten per call to ones of the same length, so every call
//! of a payload carries the same number of bytes.
//!
//! Linux only (`/proc`). The server, proxy and client share the machine.
//!
//! Run: `cargo bench --bench compression`; fewer calls:
//! `BENCH_ROUNDS=1 BENCH_SMALL_CALLS=500 BENCH_LARGE_CALLS=10 cargo bench --bench compression`.
//! `RUNSTORE_BIN` overrides the server binary (default: the one cargo built).

use std::{
    env,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use prost::Message;
use runstore::proto::{
    CompleteRunRequest, GetManifestRequest, GetManifestResponse, Outcome,
    persistence_service_client::PersistenceServiceClient,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tonic::{codec::CompressionEncoding, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const DEFAULT_SMALL_CALLS: usize = 3000;
const DEFAULT_LARGE_CALLS: usize = 100;
const DEFAULT_ROUNDS: usize = 3;
/// Upper bound on any count, whatever the environment says.
const MAX_CALLS: usize = 100_000;
const LARGE_BYTES: usize = 1 << 20;
/// Calls in flight at once.
const IN_FLIGHT: usize = 8;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one phase (all the calls of one kind) may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(40);
const TIMESTAMP: &str = "2026-01-05T19:26:37.274Z";
/// Digits of the per-call counter written over the end of each id.
const COUNTER_DIGITS: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    const ALL: [Self; 3] = [Self::Identity, Self::Gzip, Self::Zstd];

    fn name(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }

    fn tonic(self) -> Option<CompressionEncoding> {
        match self {
            Self::Identity => None,
            Self::Gzip => Some(CompressionEncoding::Gzip),
            Self::Zstd => Some(CompressionEncoding::Zstd),
        }
    }
}

/// A summary template and the ids it carries.
struct Payload {
    label: String,
    text: String,
    task_id: String,
    run_id: String,
    calls: usize,
}

impl Payload {
    fn from_text(label: String, text: String, calls: usize) -> Self {
        let doc: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|err| panic!("{label}: not JSON: {err}"));
        let id = |key: &str| -> String {
            let id = doc[key]
                .as_str()
                .unwrap_or_else(|| panic!("{label}: no string {key}"))
                .to_owned();
            assert!(
                id.len() > COUNTER_DIGITS && id.is_ascii(),
                "{label}: {key} {id:?} too short to number"
            );
            id
        };
        let (task_id, run_id) = (id("taskId"), id("runId"));
        Self {
            label,
            text,
            task_id,
            run_id,
            calls,
        }
    }

    fn fixture(calls: usize) -> Self {
        let path = repo().join("tests/fixtures/run-summary.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
        let label = format!("fixture ({} B)", text.len());
        Self::from_text(label, text, calls)
    }

    fn generated(bytes: usize, calls: usize) -> Self {
        let script = repo().join("tests/fixtures/make_summary.py");
        let output = Command::new("python3")
            .arg(&script)
            .args(["bench-task-000000", "bench-run-000000", TIMESTAMP])
            .arg(bytes.to_string())
            .output()
            .unwrap_or_else(|err| panic!("running {}: {err}", script.display()));
        assert!(
            output.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).expect("make_summary.py prints UTF-8");
        let text = text.trim_end().to_owned();
        let label = format!("{} KiB ({} B)", bytes / 1024, text.len());
        Self::from_text(label, text, calls)
    }

    /// The request of call `index`: the template with both ids (everywhere
    /// they occur) ending in `index`, so the length never changes.
    fn request(&self, index: usize) -> CompleteRunRequest {
        let number = |id: &str| {
            format!(
                "{}{index:0width$}",
                &id[..id.len() - COUNTER_DIGITS],
                width = COUNTER_DIGITS
            )
        };
        let (task_id, run_id) = (number(&self.task_id), number(&self.run_id));
        let summary_json = self
            .text
            .replace(&self.task_id, &task_id)
            .replace(&self.run_id, &run_id);
        assert_eq!(summary_json.len(), self.text.len());
        CompleteRunRequest {
            task_id,
            run_id,
            timestamp: TIMESTAMP.into(),
            summary_json,
        }
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn env_count(name: &str, default: usize) -> usize {
    let count = match env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|err| panic!("{name}={value:?} is not a count: {err}")),
        Err(env::VarError::NotPresent) => default,
        Err(err) => panic!("{name} is unreadable: {err}"),
    };
    assert!(
        (1..=MAX_CALLS).contains(&count),
        "{name} must be 1..={MAX_CALLS}"
    );
    count
}

/// Bytes through the proxy, per direction.
#[derive(Default)]
struct Counters {
    to_server: AtomicU64,
    to_client: AtomicU64,
}

/// Forwards every connection on `listener` to `server`, counting bytes.
async fn proxy(listener: TcpListener, server: SocketAddr, counters: Arc<Counters>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(server).await else {
                return;
            };
            for stream in [&inbound, &outbound] {
                let _ = stream.set_nodelay(true);
            }
            let (client_read, client_write) = inbound.into_split();
            let (server_read, server_write) = outbound.into_split();
            let up = pipe(client_read, server_write, Arc::clone(&counters), true);
            let down = pipe(server_read, client_write, counters, false);
            let _ = tokio::join!(up, down);
        });
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counters: Arc<Counters>,
    to_server: bool,
) -> std::io::Result<()> {
    let counter = if to_server {
        &counters.to_server
    } else {
        &counters.to_client
    };
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The server binary as a child process.
struct Server {
    child: Child,
    addr: SocketAddr,
    _data_dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let bin =
            env::var("RUNSTORE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_runstore").into());
        let data_dir = tempfile::tempdir().expect("temp data dir");
        let mut child = Command::new(&bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir.path().join("data"))
            // One probe at startup, none during the measurement.
            .args(["--health-interval", "1h"])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {bin}: {err}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Reports the address, then keeps the pipe drained.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let message = event["message"]
                    .as_str()
                    .or_else(|| event["fields"]["message"].as_str());
                if message == Some("listening") {
                    let addr = event["addr"]
                        .as_str()
                        .or_else(|| event["fields"]["addr"].as_str())
                        .and_then(|addr| addr.parse::<SocketAddr>().ok());
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Some(addr)) => addr,
            other => {
                let _ = child.kill();
                panic!("server did not report a listening address: {other:?}");
            }
        };
        Self {
            child,
            addr,
            _data_dir: data_dir,
        }
    }

    /// (utime, stime) of the whole process, all threads, in clock ticks.
    fn cpu_ticks(&self) -> (u64, u64) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("reading /proc/<pid>/stat");
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line.
        let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| -> u64 { fields[i].parse().expect("numeric stat field") };
        (field(11), field(12))
    }

    async fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the server") {
                assert!(
                    status.success(),
                    "server exited with {status} after SIGTERM"
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// On-CPU time of the calling thread, in nanoseconds.
fn thread_cpu_nanos() -> u64 {
    let schedstat =
        std::fs::read_to_string("/proc/thread-self/schedstat").expect("reading schedstat");
    schedstat
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .expect("schedstat starts with the on-CPU nanoseconds")
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

/// Everything counted during one phase.
#[derive(Debug, Clone, Copy)]
struct Reading {
    to_server: u64,
    to_client: u64,
    server_user_ticks: u64,
    server_sys_ticks: u64,
    client_nanos: u64,
}

impl Reading {
    fn take(counters: &Counters, server: &Server) -> Self {
        let (user, sys) = server.cpu_ticks();
        Self {
            to_server: counters.to_server.load(Ordering::Relaxed),
            to_client: counters.to_client.load(Ordering::Relaxed),
            server_user_ticks: user,
            server_sys_ticks: sys,
            client_nanos: thread_cpu_nanos(),
        }
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            to_server: self.to_server - before.to_server,
            to_client: self.to_client - before.to_client,
            server_user_ticks: self.server_user_ticks - before.server_user_ticks,
            server_sys_ticks: self.server_sys_ticks - before.server_sys_ticks,
            client_nanos: self.client_nanos - before.client_nanos,
        }
    }
}

const RPCS: [&str; 2] = ["CompleteRun", "GetManifest"];

/// One cell of the table: a payload, an encoding and an RPC, every round.
struct Cell {
    payload: usize,
    encoding: Encoding,
    rpc: &'static str,
    calls: usize,
    message_bytes: usize,
    rounds: Vec<Reading>,
}

/// What one server's run of both phases measured.
struct Measured {
    /// Per RPC, in `RPCS` order: the encoded message carrying the summary,
    /// and the reading.
    phases: [(usize, Reading); 2],
}

/// Lets trailing frames (window updates, acks) through before a reading.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn measure(
    proxy_runtime: &tokio::runtime::Handle,
    payload: &Payload,
    encoding: Encoding,
) -> Measured {
    let server = Server::start();
    let counters = Arc::new(Counters::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
    listener
        .set_nonblocking(true)
        .expect("non-blocking proxy socket");
    let proxy_addr = listener.local_addr().expect("proxy address");
    let proxy_task = proxy_runtime.spawn({
        let (counters, server_addr) = (Arc::clone(&counters), server.addr);
        async move {
            let listener = TcpListener::from_std(listener).expect("proxy listener");
            proxy(listener, server_addr, counters).await;
        }
    });

    let channel = Channel::from_shared(format!("http://{proxy_addr}"))
        .expect("endpoint URI")
        .connect()
        .await
        .expect("connecting through the proxy");
    wait_until_serving(HealthClient::new(channel.clone())).await;
    let mut client = PersistenceServiceClient::new(channel).max_decoding_message_size(64 << 20);
    if let Some(e) = encoding.tonic() {
        client = client.send_compressed(e).accept_compressed(e);
    }

    // Warm-up, uncounted: call number `calls`, past the measured ones.
    let warm_up = payload.request(payload.calls);
    let (warm_task, warm_run) = (warm_up.task_id.clone(), warm_up.run_id.clone());
    let reply = client
        .complete_run(warm_up)
        .await
        .expect("warm-up CompleteRun");
    assert_eq!(reply.get_ref().outcome(), Outcome::AllWritten);
    client
        .get_manifest(GetManifestRequest {
            task_id: warm_task,
            run_id: warm_run,
            ..Default::default()
        })
        .await
        .expect("warm-up GetManifest");

    let requests: Vec<CompleteRunRequest> =
        (0..payload.calls).map(|i| payload.request(i)).collect();
    let sent = requests.clone();
    let message_bytes = requests[0].encoded_len();

    settle().await;
    let before = Reading::take(&counters, &server);
    let writes = stream::iter(requests)
        .map(|request| {
            let mut client = client.clone();
            async move { client.complete_run(request).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>();
    let replies = tokio::time::timeout(PHASE_TIMEOUT, writes)
        .await
        .expect("CompleteRun phase within its time limit");
    settle().await;
    let after = Reading::take(&counters, &server);
    for reply in replies {
        let reply = reply.expect("CompleteRun").into_inner();
        assert_eq!(
            reply.outcome(),
            Outcome::AllWritten,
            "{:?}",
            reply.primary_error
        );
    }
    let writes = (message_bytes, after.since(&before));

    let before = Reading::take(&counters, &server);
    let reads = stream::iter(sent.iter())
        .map(|request| {
            let mut client = client.clone();
            let read = GetManifestRequest {
                task_id: request.task_id.clone(),
                run_id: request.run_id.clone(),
                ..Default::default()
            };
            async move { client.get_manifest(read).await }
        })
        .buffered(IN_FLIGHT)
        .collect::<Vec<_>>();
    let manifests = tokio::time::timeout(PHASE_TIMEOUT, reads)
        .await
        .expect("GetManifest phase within its time limit");
    settle().await;
    let after = Reading::take(&counters, &server);
    let manifests: Vec<GetManifestResponse> = manifests
        .into_iter()
        .map(|reply| reply.expect("GetManifest").into_inner())
        .collect();
    for (request, manifest) in sent.iter().zip(&manifests) {
        assert!(
            manifest.summary_json.as_bytes() == request.summary_json.as_bytes(),
            "GetManifest of {} returned other bytes than were sent",
            request.run_id
        );
    }
    let reads = (manifests[0].encoded_len(), after.since(&before));

    drop(client);
    server.stop().await;
    proxy_task.abort();
    Measured {
        phases: [writes, reads],
    }
}

async fn wait_until_serving(mut health: HealthClient<Channel>) {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        if let Ok(reply) = health.check(request).await
            && reply.get_ref().status() == ServingStatus::Serving
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server did not report SERVING within {STARTUP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Flushes dirty pages and lets the filesystem settle, so one cell's
/// writeback and journal work does not land in the next one.
fn quiesce() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(500));
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn print_table(payloads: &[Payload], cells: &[Cell], ticks_per_second: u64) {
    let tick_us = 1e6 / ticks_per_second as f64;
    // Bytes of the direction that carries the summary, summed over rounds.
    let carrying = |c: &Cell| -> u64 {
        c.rounds
            .iter()
            .map(|r| {
                if c.rpc == "CompleteRun" {
                    r.to_server
                } else {
                    r.to_client
                }
            })
            .sum()
    };
    println!(
        "| payload | rpc | encoding | message B | client→server B/call | server→client B/call | summary bytes vs identity | server CPU µs/call | of which user | client CPU µs/call |"
    );
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for cell in cells {
        let calls = cell.calls as f64;
        let per_call = |f: &dyn Fn(&Reading) -> f64| -> Vec<f64> {
            cell.rounds.iter().map(|r| f(r) / calls).collect()
        };
        let up = median(per_call(&|r| r.to_server as f64));
        let down = median(per_call(&|r| r.to_client as f64));
        let server = per_call(&|r| (r.server_user_ticks + r.server_sys_ticks) as f64 * tick_us);
        let (lo, hi) = server.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
        let server_median = median(server);
        let user = median(per_call(&|r| r.server_user_ticks as f64 * tick_us));
        let client = median(per_call(&|r| r.client_nanos as f64 / 1e3));
        let identity = cells
            .iter()
            .find(|c| {
                c.payload == cell.payload && c.rpc == cell.rpc && c.encoding == Encoding::Identity
            })
            .map(carrying);
        let ratio = match identity {
            Some(base) if base > 0 => {
                format!("{:.1}%", 100.0 * carrying(cell) as f64 / base as f64)
            }
            _ => "-".into(),
        };
        let spread = if cell.rounds.len() > 1 {
            format!(" ({lo:.0}–{hi:.0})")
        } else {
            String::new()
        };
        println!(
            "| {} | {} | {} | {} | {up:.0} | {down:.0} | {ratio} | {server_median:.0}{spread} | {user:.0} | {client:.0} |",
            payloads[cell.payload].label,
            cell.rpc,
            cell.encoding.name(),
            cell.message_bytes,
        );
    }
}

fn main() {
    let small_calls = env_count("BENCH_SMALL_CALLS", DEFAULT_SMALL_CALLS);
    let large_calls = env_count("BENCH_LARGE_CALLS", DEFAULT_LARGE_CALLS);
    let rounds = env_count("BENCH_ROUNDS", DEFAULT_ROUNDS);
    let ticks_per_second = clock_ticks_per_second();
    let payloads = [
        Payload::fixture(small_calls),
        Payload::generated(LARGE_BYTES, large_calls),
    ];
    // The proxy runs on its own thread, so it is not counted as client CPU.
    let proxy_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("proxy runtime");
    // The client and everything tonic spawns for it run on this thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let started = Instant::now();
    let mut cells: Vec<Cell> = Vec::new();
    for round in 0..rounds {
        for (index, payload) in payloads.iter().enumerate() {
            // Each round starts with a different encoding: a cell's cost
            // depends a little on what the filesystem did just before.
            let mut order = Encoding::ALL;
            order.rotate_left(round % Encoding::ALL.len());
            for encoding in order {
                eprintln!(
                    "round {}/{rounds}: {} / {}: {} calls",
                    round + 1,
                    payload.label,
                    encoding.name(),
                    payload.calls
                );
                quiesce();
                let measured = runtime.block_on(measure(proxy_runtime.handle(), payload, encoding));
                for (rpc, (message_bytes, reading)) in RPCS.into_iter().zip(measured.phases) {
                    match cells
                        .iter_mut()
                        .find(|c| c.payload == index && c.encoding == encoding && c.rpc == rpc)
                    {
                        Some(cell) => cell.rounds.push(reading),
                        None => cells.push(Cell {
                            payload: index,
                            encoding,
                            rpc,
                            calls: payload.calls,
                            message_bytes,
                            rounds: vec![reading],
                        }),
                    }
                }
            }
        }
    }
    cells.sort_by_key(|c| {
        (
            c.payload,
            c.rpc,
            Encoding::ALL.iter().position(|&e| e == c.encoding),
        )
    });
    println!(
        "compression: {rounds} rounds of {small_calls} (fixture) / {large_calls} (1 MiB) calls per RPC and encoding, {IN_FLIGHT} in flight; {} CPUs; {:.0} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64()
    );
    println!(
        "per call: bytes are medians over rounds; server CPU is utime+stime from /proc (ticks of {} µs), median (min–max over rounds); client CPU is the client thread's schedstat time, median",
        1_000_000 / ticks_per_second
    );
    print_table(&payloads, &cells, ticks_per_second);
}
