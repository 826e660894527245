//! Crash safety of the real binary: SIGKILL at random moments under 32
//! concurrent writers, restart on the same store, and nothing acknowledged
//! is lost: after every restart each acknowledged run is there through
//! GetManifest, byte for byte, and in its task's snapshot; every stored row
//! is whole and exactly as some call sent it; the store passes its own
//! integrity check. Reproduce a run with CRASH_SEED=<seed>.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::{StreamExt, stream};
use runstore::proto::{
    CompleteRunRequest, GetManifestRequest, WriteState,
    persistence_service_client::PersistenceServiceClient,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

use crate::{
    helpers::{Backend, Table, TestStore, all_runs, sha256_hex, summary_for, ts, within},
    server_process::{ServerProcess, start_server},
};

const ROUNDS: u32 = 20;
pub const CLIENTS: u32 = 32;
const CONNECTIONS: usize = 4;
pub const TASKS: u32 = 4;
/// Upper bound per client and round; the kill normally comes first.
const CALLS_PER_CLIENT: u32 = 2_000;
const KILL_DELAY_MS: std::ops::Range<u64> = 20..300;

/// xorshift64*: enough randomness for kill delays, reproducible from a seed.
pub struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn in_range(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.next() % (range.end - range.start)
    }
}

pub fn seed() -> u64 {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_nanos();
            (nanos as u64) | 1
        });
    // Shown with the output of a failed test, to reproduce it.
    println!("CRASH_SEED={seed}");
    seed
}

pub type Key = (String, String);

/// Everything the clients sent and what the server acknowledged.
#[derive(Default)]
pub struct Ledger {
    /// Every request ever sent, by (task, run). Run ids are never reused.
    pub sent: HashMap<Key, CompleteRunRequest>,
    /// Runs whose reply said the manifest is WRITTEN.
    pub manifests: BTreeSet<Key>,
    /// Runs whose reply said the snapshot entry is WRITTEN.
    pub snapshots: BTreeSet<Key>,
    pub both: usize,
    /// Replies that said a write FAILED: none are expected.
    pub not_all_written: usize,
    pub unacknowledged: Vec<CompleteRunRequest>,
}

impl Ledger {
    pub fn record(&mut self, request: CompleteRunRequest, reply: Option<(bool, bool)>) {
        let key = (request.task_id.clone(), request.run_id.clone());
        match reply {
            Some((snapshot, manifest)) => {
                if snapshot {
                    self.snapshots.insert(key.clone());
                }
                if manifest {
                    self.manifests.insert(key.clone());
                }
                if snapshot && manifest {
                    self.both += 1;
                } else {
                    self.not_all_written += 1;
                }
            }
            None => self.unacknowledged.push(request.clone()),
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

/// Longest a single call may wait for its reply. A killed server's
/// connections close at once; this only bounds a call that never hears so.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// One writer: CompleteRun after CompleteRun until a call fails or `killed`
/// is cancelled.
async fn client_loop(
    mut client: PersistenceServiceClient<Channel>,
    round: u32,
    client_no: u32,
    killed: CancellationToken,
) -> ClientLog {
    let mut log = Vec::new();
    for i in 0..CALLS_PER_CLIENT {
        if killed.is_cancelled() {
            break;
        }
        let task = task_id(client_no % TASKS);
        let run = format!("r{round:02}-c{client_no:02}-{i:04}");
        let timestamp = ts(round * 100_000 + i * CLIENTS + client_no);
        let request = CompleteRunRequest {
            summary_json: summary_for(&task, &run, &timestamp),
            task_id: task,
            run_id: run,
            timestamp,
        };
        match tokio::time::timeout(CALL_LIMIT, client.complete_run(request.clone())).await {
            Ok(Ok(reply)) => {
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
            Ok(Err(_)) | Err(_) => {
                // No reply: this run may or may not be stored.
                log.push((request, None));
                break;
            }
        }
    }
    log
}

/// The writers of one round, [`CLIENTS`] of them over `clients`.
pub struct Writers {
    killed: CancellationToken,
    tasks: Vec<JoinHandle<ClientLog>>,
}

impl Writers {
    pub fn start(clients: &[PersistenceServiceClient<Channel>], round: u32) -> Self {
        let killed = CancellationToken::new();
        let tasks = (0..CLIENTS)
            .map(|n| {
                let client = clients[n as usize % clients.len()].clone();
                tokio::spawn(client_loop(client, round, n, killed.clone()))
            })
            .collect();
        Self { killed, tasks }
    }

    /// Just before the kill: no call starts from now on, so none reaches
    /// the dead server's address, where another test's server may by then
    /// listen on the reused port; the calls in flight meet the kill.
    pub fn stop(&self) {
        self.killed.cancel();
    }

    /// Waits for every writer and records what it saw; the number of runs
    /// acknowledged this round.
    pub async fn record(self, ledger: &mut Ledger, round: u32) -> usize {
        let before = ledger.both;
        for task in self.tasks {
            let what = format!("a writer of round {round} to notice the kill");
            let log = within(&what, task).await.expect("client task");
            for (request, reply) in log {
                ledger.record(request, reply);
            }
        }
        ledger.both - before
    }
}

/// Clients on a few connections of their own.
pub async fn clients(server: &ServerProcess) -> Vec<PersistenceServiceClient<Channel>> {
    futures::future::join_all((0..CONNECTIONS).map(|_| server.client())).await
}

/// What a check after a restart found.
#[derive(Default)]
pub struct Check {
    /// Acknowledged writes missing or different.
    pub lost: BTreeSet<(&'static str, Key)>,
    /// What was wrong with each.
    details: Vec<String>,
    /// Stored runs that were never acknowledged (in flight at a kill).
    pub unacknowledged_stored: usize,
}

/// [`verify`], printing what was lost.
pub async fn verify_and_report(
    clients: &[PersistenceServiceClient<Channel>],
    store: &TestStore,
    ledger: &Ledger,
) -> Check {
    let check = verify(clients, store, ledger).await;
    for line in &check.details {
        eprintln!("{line}");
    }
    check
}

/// Checks everything acknowledged so far through a freshly started server,
/// and every stored row through the test's own connection.
async fn verify(
    clients: &[PersistenceServiceClient<Channel>],
    store: &TestStore,
    ledger: &Ledger,
) -> Check {
    let mut check = Check::default();

    // Every acknowledged manifest, byte for byte, through the API.
    let manifest_checks = stream::iter(ledger.manifests.iter().cloned().enumerate())
        .map(|(i, key)| {
            let mut client = clients[i % clients.len()].clone();
            async move {
                let reply = client
                    .get_manifest(GetManifestRequest {
                        task_id: key.0.clone(),
                        run_id: key.1.clone(),
                        ..Default::default()
                    })
                    .await;
                (key, reply)
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>();
    for (key, reply) in within("GetManifest of every acknowledged run", manifest_checks).await {
        let sent = &ledger.sent[&key];
        match reply {
            Ok(reply)
                if reply.get_ref().summary_json == sent.summary_json
                    && reply.get_ref().sha256 == sha256_hex(sent.summary_json.as_bytes()) => {}
            Ok(_) => {
                check.details.push(format!(
                    "LOST: manifest {key:?} differs from what was acknowledged"
                ));
                check.lost.insert(("manifest", key));
            }
            Err(status) => {
                check
                    .details
                    .push(format!("LOST: manifest {key:?}: {}", status.code()));
                check.lost.insert(("manifest", key));
            }
        }
    }

    // Every task's snapshot: only whole runs as sent, once each, in order,
    // every acknowledged one among them.
    let mut client = clients[0].clone();
    for n in 0..TASKS {
        let task = task_id(n);
        let runs = match within("a snapshot walk", all_runs(&mut client, &task, 1000)).await {
            Ok(runs) => runs,
            Err(status) if status.code() == Code::NotFound => Vec::new(),
            Err(status) => panic!("GetTaskSnapshot {task}: {status}"),
        };
        let mut seen = HashSet::new();
        for run in &runs {
            assert!(
                seen.insert(run.run_id.clone()),
                "run {} of {task} appears twice in the snapshot",
                run.run_id
            );
            let key = (task.clone(), run.run_id.clone());
            let sent = ledger
                .sent
                .get(&key)
                .unwrap_or_else(|| panic!("snapshot of {task} shows unknown run {}", run.run_id));
            assert_eq!(run.summary_json, sent.summary_json, "{key:?}");
            assert_eq!(run.timestamp, sent.timestamp, "{key:?}");
            if !ledger.snapshots.contains(&key) {
                check.unacknowledged_stored += 1;
            }
        }
        // ts() timestamps share one format, so text order is instant order.
        assert!(
            runs.windows(2).all(|w| w[0].timestamp <= w[1].timestamp),
            "snapshot of {task} is out of timestamp order"
        );
        for key in ledger.snapshots.iter().filter(|(t, _)| *t == task) {
            if !seen.contains(&key.1) {
                check.details.push(format!("LOST: snapshot entry {key:?}"));
                check.lost.insert(("snapshot", key.clone()));
            }
        }
    }

    // Straight from the store: consistent, and every manifest row whole and
    // exactly as sent, its hash its own.
    let db = store.db();
    assert_eq!(db.integrity_check(), "ok", "integrity_check after a kill");
    let rows = db.all_rows(Table::Manifests);
    for (task, run, row) in &rows {
        let key = (task.clone(), run.clone());
        let sent = ledger
            .sent
            .get(&key)
            .unwrap_or_else(|| panic!("manifests holds {key:?}, never sent"));
        assert_eq!(row.summary, sent.summary_json.as_bytes(), "{key:?}");
        assert_eq!(row.sha256, sha256_hex(&row.summary), "{key:?}");
        assert_eq!(row.timestamp, sent.timestamp, "{key:?}");
    }
    check
}

async fn sigkill_under_load_never_loses_an_acknowledged_write(backend: Backend) {
    let started = Instant::now();
    let store = TestStore::fresh(backend);
    let seed = seed();
    let mut rng = Rng(seed);
    let mut ledger = Ledger::default();
    let mut lost = BTreeSet::new();
    let mut delays = Vec::new();
    let mut acknowledged_per_round = Vec::new();
    let mut verifying = Duration::ZERO;

    for round in 0..ROUNDS {
        let server = start_server(&store, &["--health-interval", "100ms"]).await;
        let clients = clients(&server).await;
        let verify_started = Instant::now();
        lost.extend(verify_and_report(&clients, &store, &ledger).await.lost);
        verifying += verify_started.elapsed();

        let writers = Writers::start(&clients, round);
        let delay = rng.in_range(KILL_DELAY_MS);
        delays.push(delay);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        writers.stop();
        server.kill().await;
        acknowledged_per_round.push(writers.record(&mut ledger, round).await);
    }

    // After the last kill: everything once more, then callers retry what
    // was never acknowledged, and the retries succeed.
    let server = start_server(&store, &[]).await;
    let clients = clients(&server).await;
    let last = verify_and_report(&clients, &store, &ledger).await;
    lost.extend(last.lost);
    let acknowledged = ledger.both;
    let mut client = clients[0].clone();
    let unacknowledged = std::mem::take(&mut ledger.unacknowledged);
    for request in &unacknowledged {
        let reply = client
            .complete_run(request.clone())
            .await
            .expect("retry")
            .into_inner();
        assert_eq!(reply.snapshot.map(|s| s.state()), Some(WriteState::Written));
        assert_eq!(reply.manifest.map(|s| s.state()), Some(WriteState::Written));
        ledger.record(request.clone(), Some((true, true)));
    }
    let after_retries = verify_and_report(&clients, &store, &ledger).await;
    lost.extend(after_retries.lost);
    let counts = store.db().row_counts();

    // Negative control: the check notices a lost manifest and a lost
    // snapshot entry (deleted behind the server's back), and nothing else.
    let mut acked = ledger.manifests.iter();
    let (gone_manifest, gone_entry) = (
        acked.next().expect("an acknowledged run").clone(),
        acked.next_back().expect("another").clone(),
    );
    let db = store.db();
    db.delete_row(Table::Manifests, &gone_manifest.0, &gone_manifest.1);
    db.delete_row(Table::SnapshotEntries, &gone_entry.0, &gone_entry.1);
    let noticed = verify(&clients, &store, &ledger).await.lost;
    assert_eq!(
        noticed,
        BTreeSet::from([("manifest", gone_manifest), ("snapshot", gone_entry)]),
        "the check sees exactly the deleted rows as lost"
    );

    println!(
        "crash test: rounds={ROUNDS} acknowledged={acknowledged} lost={}",
        lost.len()
    );
    println!(
        "crash test detail: backend={} seed={seed} writers={CLIENTS} kill_delays_ms={delays:?} \
         acknowledged_per_round={acknowledged_per_round:?} not_all_written={} \
         unacknowledged_calls={} of_them_stored_before_retry={} rows_after_retries={counts:?} \
         verifying={verifying:?} elapsed={:?}",
        backend.name(),
        ledger.not_all_written,
        unacknowledged.len(),
        last.unacknowledged_stored,
        started.elapsed()
    );
    assert!(
        acknowledged_per_round.iter().filter(|&&n| n > 0).count() >= ROUNDS as usize / 2,
        "the kills came before most rounds acknowledged anything: {acknowledged_per_round:?}"
    );
    assert_eq!(lost.len(), 0, "acknowledged writes lost: {lost:?}");
    assert_eq!(ledger.not_all_written, 0, "a reply said a write failed");
    assert_eq!(counts.manifests, ledger.sent.len() as i64);
    assert_eq!(counts.snapshot_entries, ledger.sent.len() as i64);
    assert_eq!(server.terminate().await.code(), Some(0));
}
contract_test!(sigkill_under_load_never_loses_an_acknowledged_write);
