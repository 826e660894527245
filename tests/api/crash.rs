//! Crash safety of the real binary: SIGKILL under concurrent CompleteRun
//! load, restart on the same data dir, and nothing acknowledged is lost.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::{StreamExt, stream};
use runstore::{
    proto::{
        CompleteRunRequest, GetManifestRequest, GetTaskSnapshotRequest, RunEntry, WriteState,
        persistence_service_client::PersistenceServiceClient,
    },
    storage::{
        RunInstant,
        snapshot_log::{self, LogRecord},
    },
};
use tonic::{Code, transport::Channel};

use crate::{
    helpers::{summary_for, ts},
    server_process::start_server,
};

const ROUNDS: u32 = 5;
const CLIENTS: u32 = 32;
const TASKS: u32 = 4;
/// Upper bound per client and round; the kill normally comes first.
const CALLS_PER_CLIENT: u32 = 400;
const KILL_DELAY_MS: std::ops::Range<u64> = 100..600;

/// xorshift64*: enough randomness for kill delays, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn in_range(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.next() % (range.end - range.start)
    }
}

fn seed() -> u64 {
    if let Some(seed) = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return seed;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    (nanos as u64) | 1
}

type Key = (String, String);

/// Everything the clients sent and what the server acknowledged.
#[derive(Default)]
struct Ledger {
    /// Every request ever sent, by (task, run). Run ids are never reused.
    sent: HashMap<Key, CompleteRunRequest>,
    /// Runs whose reply said the manifest is WRITTEN.
    manifests: BTreeSet<Key>,
    /// Runs whose reply said the snapshot entry is WRITTEN.
    snapshots: BTreeSet<Key>,
    both: usize,
    manifest_only: usize,
    snapshot_only: usize,
}

impl Ledger {
    fn record(&mut self, request: CompleteRunRequest, snapshot: bool, manifest: bool) {
        let key = (request.task_id.clone(), request.run_id.clone());
        if snapshot {
            self.snapshots.insert(key.clone());
        }
        if manifest {
            self.manifests.insert(key.clone());
        }
        match (snapshot, manifest) {
            (true, true) => self.both += 1,
            (true, false) => self.snapshot_only += 1,
            (false, true) => self.manifest_only += 1,
            (false, false) => {}
        }
        self.sent.insert(key, request);
    }
}

/// What one client task saw: every request it sent, each with the written
/// flags of its reply (None when no reply arrived).
type ClientLog = Vec<(CompleteRunRequest, Option<(bool, bool)>)>;

fn task_id(n: u32) -> String {
    format!("crash-{n}")
}

async fn client_loop(
    mut client: PersistenceServiceClient<Channel>,
    round: u32,
    client_no: u32,
) -> ClientLog {
    let mut log = Vec::new();
    for i in 0..CALLS_PER_CLIENT {
        let task = task_id(client_no % TASKS);
        let run = format!("r{round}-c{client_no:02}-{i:04}");
        let timestamp = ts(round * 100_000 + i * CLIENTS + client_no);
        let request = CompleteRunRequest {
            summary_json: summary_for(&task, &run, &timestamp),
            task_id: task,
            run_id: run,
            timestamp,
        };
        match client.complete_run(request.clone()).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                let written = |s: Option<&runstore::proto::WriteStatus>| {
                    s.is_some_and(|s| s.state() == WriteState::Written)
                };
                let flags = (
                    written(reply.snapshot.as_ref()),
                    written(reply.manifest.as_ref()),
                );
                log.push((request, Some(flags)));
            }
            Err(_) => {
                // The server was killed: this run may or may not be stored.
                log.push((request, None));
                break;
            }
        }
    }
    log
}

/// What a scan of the data dir found, read straight from the files.
#[derive(Default, Debug)]
struct DiskScan {
    manifests: usize,
    logs: usize,
    /// Logs whose file holds bytes after the last whole frame.
    torn_logs: Vec<PathBuf>,
    temp_files: Vec<PathBuf>,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("list data dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Every manifest.json parses as a JSON object and is byte for byte a
/// summary that was sent for that run; every runs.log decodes, and every
/// whole record in it is a run that was sent, with its bytes.
fn scan_data_dir(root: &Path, ledger: &Ledger) -> DiskScan {
    let mut files = Vec::new();
    walk(root, &mut files);
    let mut scan = DiskScan::default();
    for path in files {
        let relative = path.strip_prefix(root).expect("under root");
        let parts: Vec<_> = relative.iter().map(|p| p.to_string_lossy()).collect();
        let name = parts.last().expect("file name").to_string();
        if name.ends_with(".tmp") {
            scan.temp_files.push(relative.to_path_buf());
        } else if name == "manifest.json" {
            assert_eq!(parts.len(), 4, "manifest at {}", relative.display());
            let bytes = std::fs::read(&path).expect("read manifest");
            let doc: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|err| panic!("{} is not JSON: {err}", relative.display()));
            assert!(doc.is_object(), "{} is not an object", relative.display());
            let key = (parts[1].to_string(), parts[2].to_string());
            let sent = ledger
                .sent
                .get(&key)
                .unwrap_or_else(|| panic!("{} holds a run never sent", relative.display()));
            assert_eq!(
                bytes,
                sent.summary_json.as_bytes(),
                "{} differs from what was sent",
                relative.display()
            );
            scan.manifests += 1;
        } else if name == "runs.log" {
            let bytes = std::fs::read(&path).expect("read log");
            let (records, valid) = snapshot_log::decode_all(&bytes);
            if valid != bytes.len() {
                scan.torn_logs.push(relative.to_path_buf());
            }
            let task = parts[1].to_string();
            for record in records {
                let key = (task.clone(), record.run_id.clone());
                let sent = ledger.sent.get(&key).unwrap_or_else(|| {
                    panic!("{} holds run {:?} never sent", relative.display(), key)
                });
                assert_eq!(record.summary_json, sent.summary_json, "{key:?} in the log");
                assert_eq!(record.timestamp, sent.timestamp, "{key:?} in the log");
            }
            scan.logs += 1;
        }
    }
    scan
}

/// Appends the first half of a frame to a task's log, as a power loss in
/// the middle of an append could leave it. SIGKILL alone practically never
/// tears a frame (one pwrite, and the page cache outlives the process), so
/// without this the torn-tail path would go untested.
fn inject_torn_tail(root: &Path, task: &str, round: u32) {
    let record = LogRecord {
        seq: 1 << 40,
        frame_index: 1 << 40,
        compacted_frames: 0,
        instant: RunInstant { secs: 0, nanos: 0 },
        run_id: format!("torn-r{round}"),
        timestamp: ts(0),
        summary_json: "{}".into(),
    };
    let mut frame = Vec::new();
    snapshot_log::encode(&record, &mut frame).expect("encode");
    let path = root.join("tasks").join(task).join("runs.log");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open log");
    std::io::Write::write_all(&mut log, &frame[..frame.len() / 2]).expect("tear log");
}

/// Every run of a task through the API, following page tokens (bounded).
async fn all_runs(client: &mut PersistenceServiceClient<Channel>, task: &str) -> Vec<RunEntry> {
    let mut runs = Vec::new();
    let mut token = String::new();
    for _ in 0..10_000 {
        let page = match client
            .get_task_snapshot(GetTaskSnapshotRequest {
                task_id: task.into(),
                page_size: 500,
                page_token: token.clone(),
            })
            .await
        {
            Ok(page) => page.into_inner(),
            Err(status) if status.code() == Code::NotFound && token.is_empty() => return runs,
            Err(status) => panic!("GetTaskSnapshot {task}: {status}"),
        };
        runs.extend(page.runs);
        if page.next_page_token.is_empty() {
            return runs;
        }
        token = page.next_page_token;
    }
    panic!("GetTaskSnapshot {task}: too many pages");
}

/// Checks everything acknowledged so far through a freshly started server.
/// Returns the acknowledged writes that are missing or different.
async fn verify_through_api(
    client: &PersistenceServiceClient<Channel>,
    ledger: &Ledger,
) -> BTreeSet<(&'static str, Key)> {
    let mut lost = BTreeSet::new();

    let manifest_checks = stream::iter(ledger.manifests.iter().cloned())
        .map(|key| {
            let mut client = client.clone();
            async move {
                let reply = client
                    .get_manifest(GetManifestRequest {
                        task_id: key.0.clone(),
                        run_id: key.1.clone(),
                    })
                    .await;
                (key, reply)
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for (key, reply) in manifest_checks {
        let expected = &ledger.sent[&key].summary_json;
        match reply {
            Ok(reply) if &reply.get_ref().summary_json == expected => {}
            Ok(_) => {
                eprintln!("LOST: manifest {key:?} differs from what was acknowledged");
                lost.insert(("manifest", key));
            }
            Err(status) => {
                eprintln!("LOST: manifest {key:?}: {status}");
                lost.insert(("manifest", key));
            }
        }
    }

    let mut client = client.clone();
    for n in 0..TASKS {
        let task = task_id(n);
        let runs = all_runs(&mut client, &task).await;
        let mut seen = HashSet::new();
        for run in &runs {
            assert!(
                seen.insert(run.run_id.clone()),
                "run {} of {task} appears twice in the snapshot",
                run.run_id
            );
            // Only whole runs, exactly as some call sent them.
            let sent = ledger
                .sent
                .get(&(task.clone(), run.run_id.clone()))
                .unwrap_or_else(|| panic!("snapshot of {task} shows unknown run {}", run.run_id));
            assert_eq!(run.summary_json, sent.summary_json, "{task}/{}", run.run_id);
            assert_eq!(run.timestamp, sent.timestamp, "{task}/{}", run.run_id);
        }
        // ts() timestamps share one format, so text order is instant order.
        assert!(
            runs.windows(2).all(|w| w[0].timestamp <= w[1].timestamp),
            "snapshot of {task} is out of timestamp order"
        );
        for key in ledger.snapshots.iter().filter(|(t, _)| *t == task) {
            if !seen.contains(&key.1) {
                eprintln!("LOST: snapshot entry {key:?}");
                lost.insert(("snapshot", key.clone()));
            }
        }
    }
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_never_loses_an_acknowledged_write() {
    crate::helpers::within_test_limit("sigkill_under_load_never_loses_an_acknowledged_write", async move {
        let started = Instant::now();
        let dir = tempfile::tempdir().expect("tempdir");
        let seed = seed();
        let mut rng = Rng(seed);
        let mut ledger = Ledger::default();
        let mut lost = BTreeSet::new();
        let mut delays = Vec::new();
        let mut torn_seen = 0;
        let mut torn_injected = Vec::new();
        let mut warning_counters = Vec::new();
        let mut unacknowledged_calls = 0;
        let mut unacknowledged = Vec::new();
        let mut unacknowledged_stored = 0;

        for round in 0..=ROUNDS {
            // Straight from the files, before any server touches them again.
            let scan = scan_data_dir(dir.path(), &ledger);
            torn_seen += scan.torn_logs.len();
            for task in &torn_injected {
                let log = Path::new("tasks").join(task).join("runs.log");
                assert!(
                    scan.torn_logs.contains(&log),
                    "{task}: injected tear not seen"
                );
            }

            let server = start_server(dir.path(), &["--health-interval", "100ms"]).await;
            let client = server.client().await;
            lost.extend(verify_through_api(&client, &ledger).await);

            // One write per task: any torn tail must be cut, leaving only whole
            // frames in the file.
            for n in 0..TASKS {
                let task = task_id(n);
                let run = format!("r{round}-after-restart");
                let timestamp = ts(round * 100_000 + 99_999);
                let request = CompleteRunRequest {
                    summary_json: summary_for(&task, &run, &timestamp),
                    task_id: task.clone(),
                    run_id: run,
                    timestamp,
                };
                let reply = client
                    .clone()
                    .complete_run(request.clone())
                    .await
                    .expect("CompleteRun after restart")
                    .into_inner();
                assert_eq!(
                    reply.outcome(),
                    runstore::proto::Outcome::AllWritten,
                    "{:?}",
                    reply.primary_error
                );
                ledger.record(request, true, true);
                let log = dir.path().join("tasks").join(&task).join("runs.log");
                let bytes = std::fs::read(&log).expect("read log");
                assert_eq!(
                    snapshot_log::decode_all(&bytes).1,
                    bytes.len(),
                    "{} still has a torn tail after a write",
                    log.display()
                );
            }
            warning_counters.push(Arc::clone(&server.torn_tail_warnings));

            if round == ROUNDS {
                // The final restart only verifies.
                let status = server.terminate().await;
                assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
                break;
            }

            let clients: Vec<_> = (0..CLIENTS)
                .map(|c| tokio::spawn(client_loop(client.clone(), round, c)))
                .collect();
            let delay = rng.in_range(KILL_DELAY_MS);
            delays.push(delay);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let mut server = server;
            server.child.start_kill().expect("SIGKILL");
            let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
                .await
                .expect("killed server exits")
                .expect("wait");
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(9),
                "killed by SIGKILL, not exited on its own: {status}"
            );

            for handle in clients {
                let log = tokio::time::timeout(Duration::from_secs(20), handle)
                    .await
                    .expect("client stops once the server is gone")
                    .expect("client task");
                for (request, flags) in log {
                    match flags {
                        Some((snapshot, manifest)) => ledger.record(request, snapshot, manifest),
                        None => {
                            unacknowledged_calls += 1;
                            let key = (request.task_id.clone(), request.run_id.clone());
                            ledger.sent.insert(key, request.clone());
                            unacknowledged.push(request);
                        }
                    }
                }
            }
            // The server is dead: tear one task's log for the next restart.
            let task = task_id(round % TASKS);
            inject_torn_tail(dir.path(), &task, round);
            torn_injected = vec![task];
        }

        // Read last, so each server's log drain has had time to see the line.
        let torn_cut_warnings: usize = warning_counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        // Runs that were in flight at a kill and still made it (allowed).
        let final_scan = scan_data_dir(dir.path(), &ledger);
        for (key, _) in ledger.sent.iter() {
            let manifest = dir
                .path()
                .join("runs")
                .join(&key.0)
                .join(&key.1)
                .join("manifest.json");
            if !ledger.manifests.contains(key) && manifest.exists() {
                unacknowledged_stored += 1;
            }
        }
        // Temp files by what they were meant to become, e.g. "manifest".
        let mut temp_by_kind: BTreeMap<String, usize> = BTreeMap::new();
        for path in &final_scan.temp_files {
            let name = path.file_name().expect("name").to_string_lossy();
            let kind = name.trim_start_matches('.').split(['.', '-']).next();
            *temp_by_kind
                .entry(kind.unwrap_or("").to_owned())
                .or_default() += 1;
        }

        println!(
            "crash test: rounds={ROUNDS} acknowledged={} lost={} temp_leftovers={}",
            ledger.both,
            lost.len(),
            final_scan.temp_files.len()
        );
        println!(
            "crash test detail: seed={seed} kill_delays_ms={delays:?} manifest_only={} \
             snapshot_only={} unacknowledged_calls={unacknowledged_calls} \
             unacknowledged_manifests_present={unacknowledged_stored} manifests_on_disk={} \
             logs_on_disk={} torn_tails_seen={torn_seen} (injected={ROUNDS}) torn_tail_cut_warnings={torn_cut_warnings} \
             temp_leftovers_by_kind={temp_by_kind:?} elapsed={:?}",
            ledger.manifest_only,
            ledger.snapshot_only,
            final_scan.manifests,
            final_scan.logs,
            started.elapsed()
        );
        assert!(ledger.both > 0, "the load acknowledged nothing");
        assert_eq!(lost.len(), 0, "acknowledged writes lost: {lost:?}");

        // Callers retry what was never acknowledged; the retries succeed, and
        // clear what the killed attempts left in those run directories.
        let server = start_server(dir.path(), &[]).await;
        let mut client = server.client().await;
        for request in unacknowledged {
            let reply = client
                .complete_run(request)
                .await
                .expect("retry")
                .into_inner();
            assert_eq!(reply.snapshot.map(|s| s.state()), Some(WriteState::Written));
            assert_eq!(reply.manifest.map(|s| s.state()), Some(WriteState::Written));
        }
        let after_retries = scan_data_dir(dir.path(), &ledger);
        println!(
            "crash test: after retrying the {unacknowledged_calls} unacknowledged calls, temp_leftovers={}",
            after_retries.temp_files.len()
        );
        assert_eq!(
            after_retries.temp_files,
            Vec::<PathBuf>::new(),
            "crash leftovers survive a retry"
        );
        assert_eq!(server.terminate().await.code(), Some(0));
    })
    .await
}
