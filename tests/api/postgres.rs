//! PostgreSQL of its own: the real binary against a real PostgreSQL server
//! the harness starts (postgres_server.rs), each test on a fresh database
//! (and the outage test on a cluster of its own, which it stops and starts).
//! Replicas starting together migrate once; every key leads with task_id;
//! a server that does not make commits durable is refused, without showing
//! the URL's password; replicas sharing a database never lose a run; the
//! test's own look into the database (the contract suite's `Db`, whose
//! trigger faults the failures suite uses on PostgreSQL too) sees what was
//! stored; and losing the database makes writes fail fast as retryable and
//! readiness drop, and recovers without a restart.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::join_all;
use runstore::{
    proto::{CompleteRunResponse, Outcome, WriteState, WriteStatus},
    storage::{self, Storage, StorageSetting, migrations},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::Command,
    sync::{oneshot, watch},
};
use tokio_stream::StreamExt;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{
        LIVENESS, RowCounts, SERVICE_NAME, Table, all_runs, complete_request, health, sha256_hex,
        summary_for, ts, wait_for_service, within, within_test_limit, write_all_at_once,
    },
    postgres_server::{
        PrivateCluster, TestDatabase, fresh_database, fresh_database_blocking, storage_flag,
    },
    server_process::ServerProcess,
};

/// A password in the URL (trust authentication ignores it) that must never
/// be shown.
const PASSWORD: &str = "hunter2";

// ---------------------------------------------------------------------------
// The binary on PostgreSQL
// ---------------------------------------------------------------------------

/// `runstore serve` on a PostgreSQL URL, with everything it logged (stdout
/// and stderr) kept for checks.
struct Runstore {
    process: ServerProcess,
    logs: Arc<Mutex<Vec<String>>>,
}

fn runstore_command(storage: &[OsString], extra_args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runstore"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(extra_args)
        .args(storage)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Keeps every line of `stream` in `logs` (echoed with TEST_LOG), and sends
/// the address of the "listening" line to `listening`.
async fn collect_lines(
    stream: impl AsyncRead + Unpin,
    logs: Arc<Mutex<Vec<String>>>,
    mut listening: Option<oneshot::Sender<String>>,
) {
    let echo = std::env::var_os("TEST_LOG").is_some();
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if echo {
            println!("{line}");
        }
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
            && event["message"] == "listening"
            && let Some(tx) = listening.take()
        {
            let _ = tx.send(event["addr"].as_str().unwrap_or_default().to_owned());
        }
        logs.lock().expect("logs").push(line);
    }
}

/// Starts the real binary on `db` and waits for its "listening" line.
async fn start_runstore(db: &TestDatabase, extra_args: &[&str]) -> Runstore {
    start_runstore_at(db, &db.server_args(), extra_args).await
}

/// Starts the real binary on `db` with these storage flags (e.g. a URL
/// with a password) and waits for its "listening" line.
async fn start_runstore_at(
    db: &TestDatabase,
    storage: &[OsString],
    extra_args: &[&str],
) -> Runstore {
    let mut child = runstore_command(storage, extra_args)
        .spawn()
        .expect("start runstore");
    db.adopt(child.id().expect("a running child"));
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = oneshot::channel();
    tokio::spawn(collect_lines(
        child.stdout.take().expect("stdout"),
        logs.clone(),
        Some(tx),
    ));
    tokio::spawn(collect_lines(
        child.stderr.take().expect("stderr"),
        logs.clone(),
        None,
    ));
    match within("runstore to log \"listening\"", rx).await {
        Ok(addr) => {
            // Logged before "listening", so already collected.
            let metrics_addr = logs
                .lock()
                .expect("logs")
                .iter()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find(|event| event["message"] == "metrics listening")
                .and_then(|event| event["addr"].as_str().map(str::to_owned))
                .expect("metrics listening, before listening");
            Runstore {
                process: ServerProcess {
                    child,
                    addr,
                    metrics_addr,
                },
                logs,
            }
        }
        Err(_) => {
            let status = within("runstore to exit", child.wait()).await;
            let logs = logs.lock().expect("logs").join("\n");
            panic!("runstore exited ({status:?}) before listening:\n{logs}");
        }
    }
}

impl Runstore {
    fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs").clone()
    }

    /// The JSON log events with `message`.
    fn events(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["message"] == message)
            .collect()
    }

    async fn wait_ready(&self) -> Channel {
        let channel = self.process.channel().await;
        wait_for_service(&channel, LIVENESS, ServingStatus::Serving).await;
        wait_for_service(&channel, SERVICE_NAME, ServingStatus::Serving).await;
        channel
    }

    async fn terminate(self) {
        let status = self.process.terminate().await;
        assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    }
}

/// Runs `runstore` to completion (it must exit by itself), with its output.
async fn run_runstore(what: &str, mut command: Command) -> (std::process::ExitStatus, String) {
    // The error chain alone, without anyhow's backtrace.
    command.env("RUST_BACKTRACE", "0");
    let output = within(what, command.output()).await.expect("run runstore");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status, text)
}

/// The storage, opened in-process through the factory, as the binary does.
async fn open_in_process(db: &TestDatabase) -> Arc<dyn Storage> {
    within(
        "opening the PostgreSQL storage",
        storage::open(&StorageSetting::Postgres(db.settings())),
    )
    .await
    .expect("open the PostgreSQL storage")
}

// ---------------------------------------------------------------------------
// Replicas starting together
// ---------------------------------------------------------------------------

async fn four_servers_starting_together_all_come_up_and_migrate_once_body() {
    let db = fresh_database().await;
    let url = storage_flag(&db.url_with_password(PASSWORD));
    // All four spawned before any is awaited: they race for the migration.
    let servers = join_all((0..4).map(|_| start_runstore_at(&db, &url, &[]))).await;
    let channels = join_all(servers.iter().map(Runstore::wait_ready)).await;
    assert_eq!(channels.len(), 4);

    let client = db.client().await;
    let rows = within(
        "reading schema_migrations",
        client.query(
            "SELECT version, COUNT(*) FROM schema_migrations GROUP BY version ORDER BY version",
            &[],
        ),
    )
    .await
    .expect("schema_migrations");
    let recorded: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected: Vec<(i64, i64)> = migrations::POSTGRES
        .iter()
        .map(|m| (m.version, 1))
        .collect();
    assert_eq!(recorded, expected, "every version exactly once");

    // Exactly one of them applied the migrations; the others found them.
    let applied: Vec<String> = servers
        .iter()
        .map(|server| {
            let events = server.events("postgres storage open");
            assert_eq!(events.len(), 1, "{:?}", server.logs());
            events[0]["applied"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    let all_versions = format!(
        "{:?}",
        migrations::POSTGRES
            .iter()
            .map(|m| m.version)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        applied.iter().filter(|a| **a == all_versions).count(),
        1,
        "one server migrates: {applied:?}"
    );
    assert_eq!(
        applied.iter().filter(|a| *a == "[]").count(),
        3,
        "{applied:?}"
    );

    // They are replicas of one store: what one writes, every one reads.
    for (i, server) in servers.iter().enumerate() {
        let reply = server
            .process
            .client()
            .await
            .complete_run(complete_request(
                "shared",
                &format!("run-{i}"),
                &ts(i as u32),
            ))
            .await
            .expect("CompleteRun")
            .into_inner();
        assert_eq!(reply.outcome(), Outcome::AllWritten, "{reply:?}");
    }
    for server in &servers {
        let runs = all_runs(&mut server.process.client().await, "shared", 10)
            .await
            .expect("snapshot");
        let ids: Vec<_> = runs.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["run-0", "run-1", "run-2", "run-3"]);
    }

    for server in servers {
        assert!(
            !server.logs().iter().any(|line| line.contains(PASSWORD)),
            "the URL's password is never logged"
        );
        server.terminate().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_servers_starting_together_all_come_up_and_migrate_once() {
    within_test_limit(
        "postgres::four_servers_starting_together_all_come_up_and_migrate_once",
        four_servers_starting_together_all_come_up_and_migrate_once_body(),
    )
    .await
}

// ---------------------------------------------------------------------------
// The schema: every key leads with task_id
// ---------------------------------------------------------------------------

/// Tables that are not the service's own records, or not distributed by
/// task id.
const NOT_BY_TASK: &[&str] = &["schema_migrations", "run_events", "run_events_pruned"];

async fn every_key_starts_with_task_id_body() {
    let db = fresh_database().await;
    drop(open_in_process(&db).await);
    let client = db.client().await;

    let tables: BTreeSet<String> = within(
        "listing the tables",
        client.query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            &[],
        ),
    )
    .await
    .expect("tables")
    .iter()
    .map(|r| r.get(0))
    .filter(|t: &String| !NOT_BY_TASK.contains(&t.as_str()))
    .collect();
    for table in ["tasks", "snapshot_entries", "manifests"] {
        assert!(tables.contains(table), "{table} is missing: {tables:?}");
    }

    // Primary keys and unique constraints, with their first column.
    let constraints = within(
        "reading pg_constraint",
        client.query(
            "SELECT t.relname::text, c.conname::text, c.contype::text, a.attname::text
             FROM pg_constraint c
             JOIN pg_class t ON t.oid = c.conrelid
             JOIN pg_namespace n ON n.oid = t.relnamespace
             LEFT JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
             WHERE c.contype IN ('p', 'u') AND n.nspname = current_schema()
             ORDER BY 1, 2",
            &[],
        ),
    )
    .await
    .expect("pg_constraint");
    // Unique indexes too, whether or not a constraint made them.
    let indexes = within(
        "reading pg_index",
        client.query(
            "SELECT t.relname::text, i.indexrelid::regclass::text, a.attname::text
             FROM pg_index i
             JOIN pg_class t ON t.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = t.relnamespace
             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
             WHERE (i.indisunique OR i.indisprimary) AND n.nspname = current_schema()
             ORDER BY 1, 2",
            &[],
        ),
    )
    .await
    .expect("pg_index");

    let mut with_primary_key = BTreeSet::new();
    let mut wrong = Vec::new();
    for row in &constraints {
        let (table, name, kind, first): (String, String, String, Option<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if !tables.contains(&table) {
            continue;
        }
        println!("constraint {table}.{name} ({kind}) starts with {first:?}");
        if kind == "p" {
            with_primary_key.insert(table.clone());
        }
        if first.as_deref() != Some("task_id") {
            wrong.push(format!(
                "constraint {name} on {table} starts with {first:?}"
            ));
        }
    }
    for row in &indexes {
        let (table, name, first): (String, String, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        if !tables.contains(&table) {
            continue;
        }
        println!("unique index {name} on {table} starts with {first:?}");
        if first.as_deref() != Some("task_id") {
            wrong.push(format!(
                "unique index {name} on {table} starts with {first:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "keys not led by task_id: {wrong:?}");
    assert_eq!(
        with_primary_key, tables,
        "every table of the service has a primary key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_key_starts_with_task_id() {
    within_test_limit(
        "postgres::every_key_starts_with_task_id",
        every_key_starts_with_task_id_body(),
    )
    .await
}

// ---------------------------------------------------------------------------
// The test's own look into the database (the contract suite's `Db`)
// ---------------------------------------------------------------------------

async fn the_test_connection_sees_what_the_server_stored_body() {
    // The synchronous path, as the contract suite's TestStore takes it.
    let db = fresh_database_blocking();
    let server = start_runstore(&db, &[]).await;
    server.wait_ready().await;
    let mut client = server.process.client().await;
    let runs = [
        ("task-b", "run-1"),
        ("task-a", "run-1"),
        ("task-a", "run-2"),
    ];
    for (i, (task_id, run_id)) in runs.iter().enumerate() {
        let reply = client
            .complete_run(complete_request(task_id, run_id, &ts(i as u32)))
            .await
            .expect("CompleteRun")
            .into_inner();
        assert_eq!(reply.outcome(), Outcome::AllWritten, "{reply:?}");
    }

    let store = db.db();
    assert_eq!(
        store.row_counts(),
        RowCounts {
            tasks: 2,
            snapshot_entries: 3,
            manifests: 3,
        },
        "the readiness probe's row is not counted"
    );
    assert_eq!(store.count(Table::SnapshotEntries, "task-a"), 2);
    assert_eq!(store.task_ids(Table::Manifests), ["task-a", "task-b"]);
    let summary = summary_for("task-a", "run-2", &ts(2));
    let manifest = store
        .row(Table::Manifests, "task-a", "run-2")
        .expect("stored manifest");
    assert_eq!(manifest.summary, summary.as_bytes(), "the summary as sent");
    assert_eq!(manifest.sha256, sha256_hex(summary.as_bytes()));
    assert_eq!(manifest.timestamp, ts(2));
    let entry = store
        .row(Table::SnapshotEntries, "task-a", "run-2")
        .expect("stored entry");
    assert_eq!(entry.summary, summary.as_bytes());
    assert!(store.row(Table::Manifests, "task-a", "run-9").is_none());
    assert_eq!(store.all_rows(Table::SnapshotEntries).len(), 3);
    assert_eq!(store.integrity_check(), "ok");

    // A row deleted behind the server's back is gone for it too.
    store.delete_row(Table::Manifests, "task-b", "run-1");
    let read = client
        .get_manifest(runstore::proto::GetManifestRequest {
            task_id: "task-b".into(),
            run_id: "run-1".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(read.expect_err("deleted").code(), Code::NotFound);
    assert_eq!(store.row_counts().manifests, 2);
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_test_connection_sees_what_the_server_stored() {
    within_test_limit(
        "postgres::the_test_connection_sees_what_the_server_stored",
        the_test_connection_sees_what_the_server_stored_body(),
    )
    .await
}

// ---------------------------------------------------------------------------
// Refusing a server that would not make commits durable
// ---------------------------------------------------------------------------

/// Checks a refused start: non-zero exit, the setting named, nothing served,
/// the password nowhere.
fn assert_refused(status: std::process::ExitStatus, output: &str, setting: &str) {
    println!("refused start ({status}):\n{output}");
    assert!(!status.success(), "runstore must not start: {output}");
    assert!(
        output.contains(&format!("{setting} = off")),
        "the error names {setting}: {output}"
    );
    assert!(!output.contains("\"listening\""), "{output}");
    assert!(
        !output.contains(PASSWORD),
        "the URL's password is never shown"
    );
}

async fn refuses_a_database_with_synchronous_commit_off_body() {
    let db = fresh_database().await;
    let client = db.client().await;
    within(
        "ALTER DATABASE",
        client.batch_execute(&format!(
            "ALTER DATABASE {} SET synchronous_commit = off",
            db.name
        )),
    )
    .await
    .expect("ALTER DATABASE");

    let url = db.url_with_password(PASSWORD);
    let (status, output) = run_runstore(
        "runstore to refuse synchronous_commit = off",
        runstore_command(&storage_flag(&url), &[]),
    )
    .await;
    assert_refused(status, &output, "synchronous_commit");
    // Refused before it touched the schema.
    let migrated: bool = within(
        "looking for schema_migrations",
        client.query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[]),
    )
    .await
    .expect("to_regclass")
    .get(0);
    assert!(!migrated, "a refused database is not migrated");

    // --help, with the URL in the environment, never shows it either.
    for args in [&["--help"][..], &["serve", "--help"]] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_runstore"));
        command
            .args(args)
            .env("RUNSTORE_STORAGE", &url)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let (status, output) = run_runstore("runstore --help", command).await;
        assert!(status.success(), "{output}");
        assert!(output.contains("--storage") || args.len() == 1, "{output}");
        assert!(
            !output.contains(PASSWORD),
            "--help never shows the password: {output}"
        );
    }

    // An unreachable database: the server waits unready (it may come up),
    // and its log names the URL, password masked.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/nothing");
    let server = start_runstore_at(
        &db,
        &storage_flag(&url),
        &["--postgres-connect-timeout", "2s"],
    )
    .await;
    let channel = server.process.channel().await;
    assert_eq!(
        health(&channel, SERVICE_NAME).await,
        ServingStatus::NotServing
    );
    let waiting = server.events("storage is not open yet: serving unready while retrying");
    let error = waiting
        .first()
        .and_then(|event| event["error"].as_str())
        .unwrap_or_default()
        .to_owned();
    println!("unreachable: {error}");
    assert!(
        error.contains(&format!("postgres://postgres:***@127.0.0.1:{port}/nothing")),
        "the error names the database, password masked: {error}"
    );
    let logs = server.logs().join("\n");
    server.terminate().await;
    assert!(!logs.contains(PASSWORD), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refuses_a_database_with_synchronous_commit_off() {
    within_test_limit(
        "postgres::refuses_a_database_with_synchronous_commit_off",
        refuses_a_database_with_synchronous_commit_off_body(),
    )
    .await
}

async fn refuses_a_server_with_fsync_off_body() {
    // fsync is the whole server's: a cluster of its own.
    let cluster = PrivateCluster::start(&[("fsync", "off")]).await;
    let db = cluster.create_database().await;
    let (status, output) = run_runstore(
        "runstore to refuse fsync = off",
        runstore_command(&storage_flag(&db.url_with_password(PASSWORD)), &[]),
    )
    .await;
    assert_refused(status, &output, "fsync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refuses_a_server_with_fsync_off() {
    within_test_limit(
        "postgres::refuses_a_server_with_fsync_off",
        refuses_a_server_with_fsync_off_body(),
    )
    .await
}

// ---------------------------------------------------------------------------
// Two replicas, one task, 200 runs at once
// ---------------------------------------------------------------------------

async fn two_servers_writing_one_task_at_once_never_lose_a_run_body() {
    const TASK: &str = "shared";
    const RUNS: u32 = 200;
    let db = fresh_database().await;
    let servers = join_all((0..2).map(|_| start_runstore(&db, &[]))).await;
    join_all(servers.iter().map(Runstore::wait_ready)).await;
    let clients = join_all(servers.iter().map(|s| s.process.client())).await;

    // Timestamps a permutation of the run numbers: arrival order is not
    // timestamp order. Every other call goes to each server.
    let timestamp_of = |i: u32| (i * 73) % RUNS;
    write_all_at_once(&clients, TASK, RUNS, timestamp_of).await;

    let mut expected: Vec<(String, String)> = (0..RUNS)
        .map(|i| (ts(timestamp_of(i)), format!("run-{i:03}")))
        .collect();
    expected.sort();
    for (client, page_size) in clients.iter().zip([7, 64]) {
        let runs = all_runs(&mut client.clone(), TASK, page_size)
            .await
            .expect("GetTaskSnapshot");
        let got: Vec<(String, String)> = runs
            .iter()
            .map(|r| (r.timestamp.clone(), r.run_id.clone()))
            .collect();
        assert_eq!(got, expected, "all {RUNS} runs, in timestamp order");
        for run in &runs {
            assert_eq!(
                run.summary_json,
                summary_for(TASK, &run.run_id, &run.timestamp)
            );
        }
    }

    // Every manifest readable, from either server.
    for i in 0..RUNS {
        let run_id = format!("run-{i:03}");
        let summary = summary_for(TASK, &run_id, &ts(timestamp_of(i)));
        let manifest = clients[i as usize % 2]
            .clone()
            .get_manifest(runstore::proto::GetManifestRequest {
                task_id: TASK.into(),
                run_id: run_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("GetManifest {run_id}: {status:?}"))
            .into_inner();
        assert_eq!(manifest.run_id, run_id);
        assert_eq!(manifest.summary_json, summary);
        assert_eq!(manifest.sha256, sha256_hex(summary.as_bytes()));
    }

    // In the database: one row each, and the task's sequence drawn once per
    // write across both replicas.
    let client = db.client().await;
    let row = within(
        "counting rows",
        client.query_one(
            "SELECT (SELECT COUNT(*) FROM snapshot_entries WHERE task_id = $1),
                    (SELECT COUNT(DISTINCT seq) FROM snapshot_entries WHERE task_id = $1),
                    (SELECT COUNT(*) FROM manifests WHERE task_id = $1),
                    (SELECT last_seq FROM tasks WHERE task_id = $1)",
            &[&TASK],
        ),
    )
    .await
    .expect("counts");
    let counts: (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    let runs = i64::from(RUNS);
    assert_eq!(counts, (runs, runs, runs, runs));

    for server in servers {
        server.terminate().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_writing_one_task_at_once_never_lose_a_run() {
    within_test_limit(
        "postgres::two_servers_writing_one_task_at_once_never_lose_a_run",
        two_servers_writing_one_task_at_once_never_lose_a_run_body(),
    )
    .await
}

// ---------------------------------------------------------------------------
// The database goes away under load, and comes back
// ---------------------------------------------------------------------------

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Every call's deadline; every call must be answered well within it.
const CALL_DEADLINE: Duration = Duration::from_secs(2 * CONNECT_TIMEOUT.as_secs());
const WORKERS: usize = 8;
/// Each worker's pace (a bound on the load, not a synchronisation).
const PACE: Duration = Duration::from_millis(20);
/// Bound on each worker's calls.
const MAX_CALLS_PER_WORKER: u32 = 3000;

/// One call of the load.
struct Call {
    run_id: String,
    task_id: String,
    started: Instant,
    elapsed: Duration,
    /// `None`: no answer at all by the deadline plus a second.
    reply: Option<Result<CompleteRunResponse, tonic::Status>>,
}

impl Call {
    fn finished(&self) -> Instant {
        self.started + self.elapsed
    }
    fn written(&self) -> bool {
        matches!(&self.reply, Some(Ok(r)) if r.outcome() == Outcome::AllWritten)
    }
    fn statuses(&self) -> Vec<&WriteStatus> {
        match &self.reply {
            Some(Ok(r)) => r.snapshot.iter().chain(r.manifest.iter()).collect(),
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Progress {
    written: u64,
    last_written: Option<Instant>,
    /// When each call that wrote nothing, both writes UNAVAILABLE, started.
    unavailable_started: Vec<Instant>,
}

async fn load_worker(
    mut client: runstore::proto::persistence_service_client::PersistenceServiceClient<Channel>,
    worker: usize,
    stop: Arc<AtomicBool>,
    progress: Arc<watch::Sender<Progress>>,
) -> Vec<Call> {
    let task_id = format!("load-{worker}");
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut calls = Vec::new();
    for n in 0..MAX_CALLS_PER_WORKER {
        pace.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let run_id = format!("run-{n:05}");
        let mut request = tonic::Request::new(complete_request(&task_id, &run_id, &ts(n)));
        request.set_timeout(CALL_DEADLINE);
        let started = Instant::now();
        let reply = tokio::time::timeout(
            CALL_DEADLINE + Duration::from_secs(1),
            client.complete_run(request),
        )
        .await
        .ok()
        .map(|r| r.map(tonic::Response::into_inner));
        let call = Call {
            run_id,
            task_id: task_id.clone(),
            started,
            elapsed: started.elapsed(),
            reply,
        };
        let finished = call.finished();
        let written = call.written();
        let statuses = call.statuses();
        let unavailable = !statuses.is_empty() && statuses.iter().all(|s| s.code == "UNAVAILABLE");
        progress.send_modify(|p| {
            if written {
                p.written += 1;
                p.last_written = Some(finished);
            }
            if unavailable {
                p.unavailable_started.push(started);
            }
        });
        calls.push(call);
    }
    calls
}

/// Every status `service` reports through a Watch stream, with when.
fn watch_health(
    channel: Channel,
    service: &'static str,
) -> watch::Receiver<Vec<(Instant, ServingStatus)>> {
    let (tx, rx) = watch::channel(Vec::new());
    tokio::spawn(async move {
        let mut updates = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health watch")
            .into_inner();
        while let Some(Ok(update)) = updates.next().await {
            let status = update.status();
            tx.send_modify(|log| log.push((Instant::now(), status)));
        }
    });
    rx
}

/// Waits until `log` has `wanted` reported at or after `since`; when.
async fn wait_for_status(
    what: &str,
    log: &mut watch::Receiver<Vec<(Instant, ServingStatus)>>,
    wanted: ServingStatus,
    since: Instant,
) -> Instant {
    let found = |log: &Vec<(Instant, ServingStatus)>| {
        log.iter()
            .find(|(at, status)| *status == wanted && *at >= since)
            .map(|(at, _)| *at)
    };
    let seen = within(what, log.wait_for(|log| found(log).is_some()))
        .await
        .expect("health log");
    found(&seen).expect("found")
}

async fn database_outage_fails_writes_fast_and_recovers_without_restart_body() {
    let cluster = PrivateCluster::start(&[]).await;
    let db = cluster.create_database().await;
    let server = start_runstore(
        &db,
        &[
            "--health-interval",
            "200ms",
            "--postgres-connect-timeout",
            &format!("{}s", CONNECT_TIMEOUT.as_secs()),
        ],
    )
    .await;
    let pid = server.process.pid();
    let channel = server.wait_ready().await;
    let mut readiness = watch_health(channel.clone(), SERVICE_NAME);
    let liveness = watch_health(channel.clone(), LIVENESS);

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(watch::Sender::new(Progress::default()));
    let client = server.process.client().await;
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            tokio::spawn(load_worker(
                client.clone(),
                worker,
                stop.clone(),
                progress.clone(),
            ))
        })
        .collect();
    let mut watcher = progress.subscribe();
    within(
        "writes before the outage",
        watcher.wait_for(|p| p.written >= 50),
    )
    .await
    .expect("progress");

    // The database goes away.
    let stop_issued = Instant::now();
    cluster.stop("fast").await;
    let stopped = Instant::now();
    let not_serving = wait_for_status(
        "readiness to turn NOT_SERVING",
        &mut readiness,
        ServingStatus::NotServing,
        stop_issued,
    )
    .await;
    // Some calls made while it is down: a few of every worker's.
    within(
        "calls made after the stop to fail UNAVAILABLE",
        watcher.wait_for(|p| {
            p.unavailable_started
                .iter()
                .filter(|at| **at >= stopped)
                .count()
                >= 4 * WORKERS
        }),
    )
    .await
    .expect("progress");
    assert_eq!(
        health(&channel, LIVENESS).await,
        ServingStatus::Serving,
        "liveness stays SERVING without the database"
    );
    let mut process = server.process;
    assert!(
        process.child.try_wait().expect("try_wait").is_none(),
        "the server stays up"
    );

    // The database comes back.
    let start_issued = Instant::now();
    cluster.start_again().await;
    let started = Instant::now();
    within(
        "a write to succeed after the restart",
        watcher.wait_for(|p| p.last_written.is_some_and(|at| at > start_issued)),
    )
    .await
    .expect("progress");
    let serving_again = wait_for_status(
        "readiness to recover",
        &mut readiness,
        ServingStatus::Serving,
        start_issued,
    )
    .await;
    let written_after = watcher.borrow().written;
    within(
        "more writes after the recovery",
        watcher.wait_for(|p| p.written >= written_after + 50),
    )
    .await
    .expect("progress");
    stop.store(true, Ordering::Relaxed);
    let mut calls = Vec::new();
    for worker in workers {
        calls.extend(
            within("a load worker to finish", worker)
                .await
                .expect("worker"),
        );
    }

    let ms = |at: Instant| at.saturating_duration_since(stop_issued).as_millis();
    let written = calls.iter().filter(|c| c.written()).count();
    let first_written_again = calls
        .iter()
        .filter(|c| c.written() && c.finished() > start_issued)
        .map(Call::finished)
        .min();
    let first_unavailable = calls
        .iter()
        .filter(|c| c.statuses().iter().any(|s| s.code == "UNAVAILABLE"))
        .map(Call::finished)
        .min();
    let at = |instant: Option<Instant>| instant.map_or("none".to_owned(), |i| ms(i).to_string());
    let statuses: Vec<ServingStatus> = readiness.borrow().iter().map(|(_, s)| *s).collect();
    println!(
        "outage timeline (ms after `pg_ctl stop -m fast` was issued):\n\
         \x20 database stopped (pg_ctl returned)  {:>6}\n\
         \x20 first write failed UNAVAILABLE      {:>6}\n\
         \x20 readiness NOT_SERVING               {:>6}\n\
         \x20 `pg_ctl start` issued               {:>6}\n\
         \x20 database started (pg_ctl returned)  {:>6}\n\
         \x20 first write succeeded again         {:>6}\n\
         \x20 readiness SERVING again             {:>6}\n\
         \x20 calls {} (written {written}, during the outage {}), slowest call {:?}, readiness {:?}",
        ms(stopped),
        at(first_unavailable),
        ms(not_serving),
        ms(start_issued),
        ms(started),
        at(first_written_again),
        ms(serving_again),
        calls.len(),
        calls
            .iter()
            .filter(|c| c.started >= stopped && c.finished() <= start_issued)
            .count(),
        calls.iter().map(|c| c.elapsed).max().unwrap_or_default(),
        statuses,
    );

    // Every call answered, in time, and every failure retryable UNAVAILABLE.
    let unanswered = calls.iter().filter(|c| c.reply.is_none()).count();
    assert_eq!(unanswered, 0, "every call is answered");
    let slowest = calls.iter().map(|c| c.elapsed).max().unwrap_or_default();
    assert!(
        slowest < CALL_DEADLINE,
        "every call answers within 2x the connect timeout; the slowest took {slowest:?}"
    );
    for call in &calls {
        let reply = match call.reply.as_ref().expect("answered") {
            Ok(reply) => reply,
            Err(status) => panic!("{}: CompleteRun failed as a whole: {status:?}", call.run_id),
        };
        for status in call.statuses() {
            if status.state() == WriteState::Failed {
                assert_eq!(status.code, "UNAVAILABLE", "{}: {reply:?}", call.run_id);
                assert!(status.retryable, "{}: {reply:?}", call.run_id);
            }
        }
    }
    // Calls made entirely while the database was down wrote nothing.
    let during: Vec<&Call> = calls
        .iter()
        .filter(|c| c.started >= stopped && c.finished() <= start_issued)
        .collect();
    assert!(!during.is_empty(), "calls were made during the outage");
    for call in &during {
        let reply = call.reply.as_ref().expect("answered").as_ref().expect("OK");
        assert_eq!(reply.outcome(), Outcome::NoneWritten, "{reply:?}");
    }
    assert!(first_written_again.is_some(), "a write after the restart");

    // What was written survived the outage; what failed while down is not
    // there.
    let pg = db.client().await;
    let stored: BTreeSet<(String, String)> = within(
        "reading the stored manifests",
        pg.query("SELECT task_id, run_id FROM manifests", &[]),
    )
    .await
    .expect("manifests")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let stored_entries: BTreeSet<(String, String)> = within(
        "reading the stored entries",
        pg.query("SELECT task_id, run_id FROM snapshot_entries", &[]),
    )
    .await
    .expect("entries")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    for call in &calls {
        let key = (call.task_id.clone(), call.run_id.clone());
        if call.written() {
            assert!(stored.contains(&key), "{key:?} manifest lost");
            assert!(stored_entries.contains(&key), "{key:?} entry lost");
        }
    }
    for call in &during {
        let key = (call.task_id.clone(), call.run_id.clone());
        assert!(!stored.contains(&key) && !stored_entries.contains(&key));
    }

    // Readiness went down and came back; liveness never left SERVING.
    let liveness_log: Vec<ServingStatus> = liveness.borrow().iter().map(|(_, s)| *s).collect();
    assert!(!liveness_log.is_empty());
    assert!(
        liveness_log.iter().all(|s| *s == ServingStatus::Serving),
        "liveness: {liveness_log:?}"
    );
    assert_eq!(statuses.first(), Some(&ServingStatus::Serving));
    assert_eq!(statuses.last(), Some(&ServingStatus::Serving));
    assert!(
        process.child.try_wait().expect("try_wait").is_none(),
        "no restart"
    );
    assert_eq!(process.pid(), pid, "the same process throughout");

    let status = process.terminate().await;
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_outage_fails_writes_fast_and_recovers_without_restart() {
    within_test_limit(
        "postgres::database_outage_fails_writes_fast_and_recovers_without_restart",
        database_outage_fails_writes_fast_and_recovers_without_restart_body(),
    )
    .await
}

/// A pod that starts while its database is down waits unready: it serves
/// probes (live, not ready) and answers calls UNAVAILABLE, then opens the
/// store once the database is back, with no restart.
async fn a_server_started_during_an_outage_waits_unready_until_the_database_is_up_body() {
    let cluster = PrivateCluster::start(&[]).await;
    let db = cluster.create_database().await;
    cluster.stop("fast").await;
    let server = start_runstore(&db, &["--health-interval", "200ms"]).await;
    let pid = server.process.pid();
    let channel = server.process.channel().await;
    wait_for_service(&channel, LIVENESS, ServingStatus::Serving).await;
    let mut client = server.process.client().await;

    // Down: several probes and calls, all unready and retryable.
    let mut probes = 0;
    for secs in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            health(&channel, SERVICE_NAME).await,
            ServingStatus::NotServing
        );
        assert_eq!(health(&channel, LIVENESS).await, ServingStatus::Serving);
        probes += 1;
        let reply = within(
            "CompleteRun while the database is down",
            client.complete_run(complete_request("t", &format!("down-{secs}"), &ts(secs))),
        )
        .await
        .expect("CompleteRun answers OK with failed writes")
        .into_inner();
        assert_eq!(reply.outcome(), Outcome::NoneWritten, "{reply:?}");
        for status in [&reply.snapshot, &reply.manifest] {
            let status = status.as_ref().expect("status");
            assert_eq!(status.code, "UNAVAILABLE", "{status:?}");
            assert!(status.retryable, "{status:?}");
            assert!(status.message.contains("not open yet"), "{status:?}");
        }
    }
    assert_eq!(
        server
            .events("storage is not open yet: serving unready while retrying")
            .len(),
        1
    );
    let mut process = server.process;
    assert!(
        process.child.try_wait().expect("try_wait").is_none(),
        "the server stays up"
    );

    // Up: the store opens, readiness follows, writes succeed.
    let start_issued = Instant::now();
    cluster.start_again().await;
    wait_for_service(&channel, SERVICE_NAME, ServingStatus::Serving).await;
    let ready_after = start_issued.elapsed();
    let reply = client
        .complete_run(complete_request("t", "up", &ts(10)))
        .await
        .expect("CompleteRun")
        .into_inner();
    assert_eq!(reply.outcome(), Outcome::AllWritten, "{reply:?}");
    let stored = client
        .get_task_snapshot(runstore::proto::GetTaskSnapshotRequest {
            task_id: "t".into(),
            ..Default::default()
        })
        .await
        .expect("GetTaskSnapshot")
        .into_inner();
    let runs: Vec<&str> = stored.runs.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(
        runs,
        ["up"],
        "nothing of the calls made while down was written"
    );
    assert_eq!(process.pid(), pid, "the same process throughout");
    println!(
        "started during an outage: {probes} probes NOT_SERVING while down; \
         ready {} ms after `pg_ctl start` was issued",
        ready_after.as_millis()
    );
    let status = process.terminate().await;
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_started_during_an_outage_waits_unready_until_the_database_is_up() {
    within_test_limit(
        "postgres::a_server_started_during_an_outage_waits_unready_until_the_database_is_up",
        a_server_started_during_an_outage_waits_unready_until_the_database_is_up_body(),
    )
    .await
}
