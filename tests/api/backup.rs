//! `runstore backup --to FILE` against the real binary: a copy taken while
//! writers keep writing opens cleanly, holds every run acknowledged before
//! the backup began (byte for byte, through a second server started on it:
//! the restore), and is a snapshot (the source goes on growing). It refuses
//! to overwrite a file, to back up a database that is not there (creating
//! nothing) or one whose schema is newer than the binary; and its long read
//! never stalls the server's writes.

use std::{
    collections::{BTreeMap, HashSet},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use runstore::{
    proto::{
        CompleteRunRequest, GetManifestRequest, WatchRunsRequest, WriteState,
        persistence_service_client::PersistenceServiceClient,
    },
    storage::sqlite::DATABASE_FILE,
};
use tonic::transport::Channel;

use crate::{
    helpers::{Backend, TestStore, all_runs, complete_request, sha256_hex, within},
    server_process::start_server,
};

const WRITERS: usize = 8;
const CONNECTIONS: usize = 4;
const TASKS: usize = 4;
/// Upper bound per writer; the test stops them long before.
const CALLS_PER_WRITER: usize = 5_000;
/// Runs acknowledged before the backup starts, at least.
const WARM_UP: usize = 300;
/// Runs acknowledged after the backup ended, before the writers stop: the
/// server keeps serving, and the source outgrows the copy.
const AFTER_BACKUP: usize = 100;

/// One acknowledged call: what was sent and when its reply arrived.
struct Acked {
    request: CompleteRunRequest,
    at: Instant,
}

/// Runs `runstore backup` (bounded) with the given flags.
async fn run_backup(data_dir: &Path, to: &Path) -> Output {
    let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_runstore"))
        .arg("backup")
        .arg("--to")
        .arg(to)
        .arg("--data-dir")
        .arg(data_dir)
        .kill_on_drop(true)
        .output();
    within("runstore backup to exit", command)
        .await
        .expect("run runstore backup")
}

/// Files in `dir` whose name marks an unfinished copy.
fn partial_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.contains(".partial-"))
        .collect()
}

fn manifest_count(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.query_row("SELECT count(*) FROM manifests", [], |row| row.get(0))
        .expect("count manifests")
}

/// Writes runs until `stop`, recording every call acknowledged with both
/// writes WRITTEN; a reply that says otherwise fails the test.
async fn writer(
    mut client: PersistenceServiceClient<Channel>,
    n: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> Vec<Acked> {
    let mut log = Vec::new();
    for i in 0..CALLS_PER_WRITER {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let task = format!("backup-{}", n % TASKS);
        let request = complete_request(
            &task,
            &format!("w{n}-{i:05}"),
            &crate::helpers::ts((i * WRITERS + n) as u32),
        );
        let reply = client
            .complete_run(request.clone())
            .await
            .expect("CompleteRun")
            .into_inner();
        let written = |s: Option<&runstore::proto::WriteStatus>| {
            s.is_some_and(|s| s.state() == WriteState::Written)
        };
        assert!(
            written(reply.snapshot.as_ref()) && written(reply.manifest.as_ref()),
            "a write failed during the backup: {:?}",
            reply.primary_error
        );
        log.push(Acked {
            request,
            at: Instant::now(),
        });
        acked.fetch_add(1, Ordering::Relaxed);
    }
    log
}

/// Waits (bounded, polling) until `acked` reaches `count`.
async fn wait_for_acks(acked: &AtomicUsize, count: usize, what: &str) {
    within(what, async {
        while acked.load(Ordering::Relaxed) < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

async fn a_backup_under_load_holds_every_run_acknowledged_before_it(backend: Backend) {
    let store = TestStore::fresh(backend);
    let server = start_server(&store, &["--health-interval", "100ms"]).await;
    let clients: Vec<_> =
        futures::future::join_all((0..CONNECTIONS).map(|_| server.client())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|n| {
            let client = clients[n % CONNECTIONS].clone();
            tokio::spawn(writer(client, n, Arc::clone(&stop), Arc::clone(&acked)))
        })
        .collect();
    wait_for_acks(&acked, WARM_UP, "the warm-up writes").await;

    let copy = store.root().join("copy.db");
    let backup_started = Instant::now();
    let output = run_backup(store.data_dir(), &copy).await;
    let backup_ended = Instant::now();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "runstore backup failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let at_end = acked.load(Ordering::Relaxed);
    wait_for_acks(&acked, at_end + AFTER_BACKUP, "writes after the backup").await;
    stop.store(true, Ordering::Relaxed);
    let mut log = Vec::new();
    for writer in writers {
        log.extend(
            within("a writer to stop", writer)
                .await
                .expect("writer task"),
        );
    }
    let source_runs = manifest_count(&store.data_dir().join(DATABASE_FILE));
    let source_cursor = newest_cursor(&store.data_dir().join(DATABASE_FILE));
    assert_eq!(server.terminate().await.code(), Some(0));

    let before: Vec<&Acked> = log.iter().filter(|a| a.at < backup_started).collect();
    let during = log
        .iter()
        .filter(|a| a.at >= backup_started && a.at < backup_ended)
        .count();
    assert!(before.len() >= WARM_UP, "{} acked before", before.len());

    // The copy: whole, private, a snapshot between the two counts, no
    // partial file left behind.
    let mode = std::fs::metadata(&copy).expect("copy").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode of the copy");
    assert_eq!(partial_files(store.root()), Vec::<String>::new());
    let conn = rusqlite::Connection::open(&copy).expect("open the copy");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
    drop(conn);
    let copy_runs = manifest_count(&copy);
    assert!(
        copy_runs >= before.len() as i64,
        "the copy has {copy_runs} runs, {} were acknowledged before the backup",
        before.len()
    );
    assert!(
        copy_runs < source_runs,
        "the copy ({copy_runs} runs) is a snapshot; the source went on to {source_runs}"
    );
    assert!(
        stdout.contains(&format!("{copy_runs} runs")),
        "backup reports its run count: {stdout}"
    );

    // The restore: a second server on a fresh data dir holding the copy.
    let restored = TestStore::fresh(backend);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(restored.data_dir())
        .expect("data dir");
    std::fs::copy(&copy, restored.data_dir().join(DATABASE_FILE)).expect("copy in");
    let server = start_server(&restored, &[]).await;
    let client = server.client().await;
    let checks = stream::iter(before.iter().map(|acked| {
        let mut client = client.clone();
        let request = acked.request.clone();
        async move {
            let reply = client
                .get_manifest(GetManifestRequest {
                    task_id: request.task_id.clone(),
                    run_id: request.run_id.clone(),
                    ..Default::default()
                })
                .await;
            (request, reply)
        }
    }))
    .buffer_unordered(32)
    .collect::<Vec<_>>();
    for (request, reply) in within("GetManifest of every run acked before", checks).await {
        let reply = reply
            .unwrap_or_else(|status| panic!("{}/{}: {status}", request.task_id, request.run_id))
            .into_inner();
        assert_eq!(
            reply.summary_json, request.summary_json,
            "{}",
            request.run_id
        );
        assert_eq!(reply.sha256, sha256_hex(request.summary_json.as_bytes()));
    }
    let mut by_task: BTreeMap<&str, Vec<&CompleteRunRequest>> = BTreeMap::new();
    for acked in &before {
        by_task
            .entry(&acked.request.task_id)
            .or_default()
            .push(&acked.request);
    }
    let sent: HashSet<(&str, &str)> = log
        .iter()
        .map(|a| (a.request.task_id.as_str(), a.request.run_id.as_str()))
        .collect();
    let mut client = client.clone();
    let mut restored_runs = 0;
    for (task, requests) in &by_task {
        let runs = within("a snapshot walk", all_runs(&mut client, task, 1000))
            .await
            .expect("GetTaskSnapshot");
        restored_runs += runs.len();
        for run in &runs {
            assert!(
                sent.contains(&(*task, run.run_id.as_str())),
                "{}",
                run.run_id
            );
        }
        let summaries: BTreeMap<&str, &str> = runs
            .iter()
            .map(|r| (r.run_id.as_str(), r.summary_json.as_str()))
            .collect();
        for request in requests {
            assert_eq!(
                summaries.get(request.run_id.as_str()),
                Some(&request.summary_json.as_str()),
                "{task}/{} in the restored snapshot",
                request.run_id
            );
        }
    }
    assert_eq!(
        restored_runs as i64, copy_runs,
        "snapshot entries = manifests"
    );
    assert_eq!(server.terminate().await.code(), Some(0));
    cursors_from_before_the_restore_are_fenced_off(&restored, source_cursor).await;

    println!(
        "backup test: acked_before={} acked_during={during} copy_runs={copy_runs} \
         source_runs={source_runs} backup_took={:?} copy_bytes={} stdout={stdout:?}",
        before.len(),
        backup_ended - backup_started,
        std::fs::metadata(&copy).expect("copy").len(),
    );
}
/// The newest cursor the feed ever drew.
fn newest_cursor(path: &Path) -> u64 {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.query_row(
        "SELECT seq FROM sqlite_sequence WHERE name = 'run_events'",
        [],
        |row| row.get::<_, i64>(0),
    )
    .map(|seq| u64::try_from(seq).expect("a positive counter"))
    .expect("the feed's counter")
}

/// The README's fence, as an operator runs it on a restored database.
const FENCE: &str = "
    UPDATE run_events_pruned SET up_to = 1000000000
        + (SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'run_events');
    DELETE FROM sqlite_sequence WHERE name = 'run_events';
    INSERT INTO sqlite_sequence (name, seq) SELECT 'run_events', up_to FROM run_events_pruned;";

/// After the README's fence, a cursor the old server handed out after the
/// backup is OUT_OF_RANGE (not silently ahead of the feed), and a watch from
/// now gets the next event.
async fn cursors_from_before_the_restore_are_fenced_off(restored: &TestStore, old_cursor: u64) {
    let path = restored.data_dir().join(DATABASE_FILE);
    assert!(
        newest_cursor(&path) < old_cursor,
        "the source drew cursors after the copy"
    );
    rusqlite::Connection::open(&path)
        .expect("open")
        .execute_batch(FENCE)
        .expect("the fence");
    let server = start_server(restored, &[]).await;
    let mut client = server.client().await;
    let old = runstore::api::page_token::encode_event(&runstore::storage::EventCursor {
        tx: 0,
        id: old_cursor,
    });
    // A pruned cursor is the call's status, not the stream's.
    let status = client
        .watch_runs(WatchRunsRequest {
            after: old,
            ..Default::default()
        })
        .await
        .expect_err("an old cursor after the fence");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");

    let mut live = client
        .watch_runs(WatchRunsRequest::default())
        .await
        .expect("WatchRuns")
        .into_inner();
    client
        .complete_run(complete_request(
            "after-restore",
            "r",
            &crate::helpers::ts(0),
        ))
        .await
        .expect("CompleteRun");
    let event = within("the live watch's event", live.next())
        .await
        .expect("an event")
        .expect("no error")
        .event
        .expect("event");
    assert_eq!(event.task_id, "after-restore");
    assert_eq!(server.terminate().await.code(), Some(0));
}

contract_test!(
    a_backup_under_load_holds_every_run_acknowledged_before_it,
    sqlite_only
);

async fn a_backup_never_overwrites_a_file(backend: Backend) {
    let store = TestStore::fresh(backend);
    let server = start_server(&store, &[]).await;
    let mut client = server.client().await;
    client
        .complete_run(complete_request("t", "r", &crate::helpers::ts(0)))
        .await
        .expect("CompleteRun");
    assert_eq!(server.terminate().await.code(), Some(0));

    let target = store.root().join("copy.db");
    std::fs::write(&target, b"keep me").expect("write target");
    let output = run_backup(store.data_dir(), &target).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "backup over a file succeeded");
    assert!(stderr.contains("exists already"), "{stderr}");
    assert_eq!(std::fs::read(&target).expect("read target"), b"keep me");
    assert_eq!(partial_files(store.root()), Vec::<String>::new());

    // Negative control: the same database to a fresh name is fine.
    let fresh = store.root().join("fresh.db");
    let output = run_backup(store.data_dir(), &fresh).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(manifest_count(&fresh), 1);
}
contract_test!(a_backup_never_overwrites_a_file, sqlite_only);

async fn a_backup_of_a_missing_database_creates_nothing(backend: Backend) {
    let store = TestStore::fresh(backend);
    let target = store.root().join("copy.db");
    let output = run_backup(store.data_dir(), &target).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "backup of nothing succeeded");
    assert!(stderr.contains("no database at"), "{stderr}");
    assert!(!store.data_dir().exists(), "backup created the data dir");
    assert!(!target.exists(), "backup created the target");

    // An empty data dir: still no database, and none created in it.
    std::fs::create_dir(store.data_dir()).expect("data dir");
    let output = run_backup(store.data_dir(), &target).await;
    assert!(!output.status.success(), "backup of an empty dir succeeded");
    let left: Vec<_> = std::fs::read_dir(store.data_dir()).expect("ls").collect();
    assert!(left.is_empty(), "backup created {left:?}");
    assert!(!target.exists(), "backup created the target");
    assert_eq!(partial_files(store.root()), Vec::<String>::new());
}
contract_test!(a_backup_of_a_missing_database_creates_nothing, sqlite_only);

async fn a_backup_refuses_a_newer_schema(backend: Backend) {
    let store = TestStore::fresh(backend);
    let server = start_server(&store, &[]).await;
    assert_eq!(server.terminate().await.code(), Some(0));
    rusqlite::Connection::open(store.data_dir().join(DATABASE_FILE))
        .expect("open")
        .execute(
            "INSERT INTO schema_migrations (version, name) VALUES (1000, 'from_the_future')",
            [],
        )
        .expect("a newer version");
    let target = store.root().join("copy.db");
    let output = run_backup(store.data_dir(), &target).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "backup of a newer schema succeeded"
    );
    assert!(stderr.contains("schema version 1000, newer"), "{stderr}");
    assert!(!target.exists());
    assert_eq!(partial_files(store.root()), Vec::<String>::new());
}
contract_test!(a_backup_refuses_a_newer_schema, sqlite_only);

/// A summary of the fixture's shape padded to about `bytes`.
fn padded_request(task_id: &str, run_id: &str, bytes: usize) -> CompleteRunRequest {
    let mut request = complete_request(task_id, run_id, &crate::helpers::ts(0));
    let mut doc: serde_json::Value =
        serde_json::from_str(&request.summary_json).expect("summary JSON");
    doc["padding"] = "x".repeat(bytes).into();
    request.summary_json = doc.to_string();
    request
}

/// A backup's read holds one snapshot for as long as the copy takes, so the
/// WAL cannot start over and grows past the size where the checkpointer
/// forces a restart. That restart holds the write lock while it waits for
/// readers: it must give up soon, not stall every commit for the lock
/// timeout (5 s) each round. The test holds such a read itself (as a long
/// VACUUM INTO would) while 24 MiB of summaries (48 MiB of rows) and then
/// small writes for 3 s go through.
async fn a_long_backup_read_never_stalls_writes(backend: Backend) {
    let store = TestStore::fresh(backend);
    let server = start_server(&store, &[]).await;
    let mut client = server.client().await;
    client
        .complete_run(complete_request("t", "first", &crate::helpers::ts(0)))
        .await
        .expect("CompleteRun");
    let reader = rusqlite::Connection::open(store.data_dir().join(DATABASE_FILE)).expect("open");
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM manifests;")
        .expect("a read transaction");

    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    let mut calls = 0;
    // 24 runs of 1 MiB (2 MiB of WAL each), then small ones for a few
    // checkpointer rounds.
    while calls < 24 || started.elapsed() < Duration::from_secs(3) {
        let request = if calls < 24 {
            padded_request("big", &format!("r{calls:03}"), 1 << 20)
        } else {
            complete_request("small", &format!("r{calls:05}"), &crate::helpers::ts(0))
        };
        let call = Instant::now();
        let reply = within(
            "a CompleteRun during a long read",
            client.complete_run(request),
        )
        .await
        .expect("CompleteRun")
        .into_inner();
        slowest = slowest.max(call.elapsed());
        assert!(
            reply.primary_error.is_none(),
            "a write failed during a long read: {:?}",
            reply.primary_error
        );
        calls += 1;
    }
    let wal = std::fs::metadata(store.data_dir().join(format!("{DATABASE_FILE}-wal")))
        .expect("the WAL")
        .len();
    reader.execute_batch("COMMIT").expect("end the read");
    assert_eq!(server.terminate().await.code(), Some(0));
    println!("long read: calls={calls} slowest={slowest:?} wal_bytes={wal}");
    assert!(wal > 32 << 20, "the WAL grew past the restart size: {wal}");
    assert!(
        slowest < Duration::from_secs(1),
        "a write took {slowest:?} while a read held an old snapshot"
    );
}
contract_test!(a_long_backup_read_never_stalls_writes, sqlite_only);
