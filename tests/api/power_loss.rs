//! Power loss, on a file system that forgets what was not fsynced
//! ([`crate::power_fs`]). SIGKILL (crash.rs) leaves the page cache intact,
//! so it passes with fsync removed; a power cut here does not.
//!
//! - Under 32 concurrent writers the power is cut at random moments; after
//!   each cut the file system comes back with only what was durable, the
//!   server restarts on it, and every run acknowledged WRITTEN is there,
//!   byte for byte, in a database that passes its integrity check.
//! - The negative control: the same harness on the same file system with
//!   fsync a no-op reports lost acknowledged runs.
//! - EIO on write and on fsync: the writes hit are FAILED with UNAVAILABLE,
//!   readiness turns NOT_SERVING, and the server recovers without a
//!   restart; after a failed fsync (whose data Linux drops: fsyncgate)
//!   nothing of the failed commit is acknowledged later, nor lost.
//!
//! Needs root and /dev/fuse; elsewhere it prints `SKIPPED: <reason>`.
//! Reproduce a run with CRASH_SEED=<seed>.

use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};

use runstore::proto::{CompleteRunRequest, GetManifestRequest, WriteState, WriteStatus};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    crash::{self, CLIENTS, Key, Ledger, Rng, Writers, verify_and_report},
    helpers::{
        Backend, LIVENESS, SERVICE_NAME, TestStore, health, skipped, summary_for, ts,
        wait_for_service, within,
    },
    postgres_server::PrivateCluster,
    power_fs::{self, Durability, Faults, PowerFs},
    server_process::{ServerProcess, start_server},
};

const CUTS: u32 = 12;
/// Moments of the cut after the writers start.
const CUT_DELAY_MS: std::ops::Range<u64> = 20..400;

/// A fresh SQLite store whose data dir is on a new power-loss mount.
fn store_on(fs: &PowerFs) -> TestStore {
    let root = Arc::new(tempfile::tempdir().expect("temp dir"));
    TestStore::at(Backend::Sqlite, root, fs.join("data"))
}

/// A store of `backend` on `fs`: for SQLite its data dir, for PostgreSQL
/// the data dir of a cluster of the test's own (initdb'd durably onto it).
async fn store_of(backend: Backend, fs: &PowerFs) -> (TestStore, Option<PrivateCluster>) {
    match backend {
        Backend::Sqlite => (store_on(fs), None),
        Backend::Postgres => {
            let data_dir = fs.join("pg");
            std::fs::create_dir(&data_dir).expect("mkdir on the mount");
            // Its entry too must survive the cuts.
            std::fs::File::open(fs.path())
                .and_then(|root| root.sync_all())
                .expect("fsync the mount's root");
            let cluster = PrivateCluster::start_on(&[], data_dir).await;
            let store = TestStore::on_database(cluster.create_database().await);
            (store, Some(cluster))
        }
    }
}

/// What a series of power cuts found.
struct Outcome {
    acknowledged: usize,
    lost: BTreeSet<(&'static str, Key)>,
    acknowledged_per_cut: Vec<usize>,
}

/// Cuts the power `cuts` times under load, checking after every reboot
/// that each run acknowledged so far is there.
async fn cut_power_under_load(backend: Backend, durability: Durability, cuts: u32) -> Outcome {
    let mut fs = PowerFs::mount(durability);
    let (store, cluster) = store_of(backend, &fs).await;
    let seed = crash::seed();
    let mut rng = Rng(seed);
    let mut ledger = Ledger::default();
    let mut lost = BTreeSet::new();
    let mut delays = Vec::new();
    let mut acknowledged_per_cut = Vec::new();

    for round in 0..cuts {
        let server = start_server(&store, &["--health-interval", "100ms"]).await;
        let clients = crash::clients(&server).await;
        lost.extend(verify_and_report(&clients, &store, &ledger).await.lost);
        // Read now: after the cut nothing on the mount can be.
        let postmaster = cluster.as_ref().map(|c| c.postmaster_pid());

        let writers = Writers::start(&clients, round);
        let delay = rng.in_range(CUT_DELAY_MS);
        delays.push(delay);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        fs.cut_power();
        // The machine is dead: its processes go with it.
        writers.stop();
        server.kill().await;
        if let Some(pid) = postmaster {
            kill_cluster(pid);
        }
        acknowledged_per_cut.push(writers.record(&mut ledger, round).await);
        drop(clients);
        fs.restore_power();
        if let Some(cluster) = &cluster {
            // Crash recovery from what the WAL had made durable.
            cluster.start_again().await;
        }
    }

    let server = start_server(&store, &[]).await;
    let clients = crash::clients(&server).await;
    lost.extend(verify_and_report(&clients, &store, &ledger).await.lost);
    assert_eq!(server.terminate().await.code(), Some(0));

    let stats = fs.stats();
    println!(
        "power-loss detail: backend={} durability={durability:?} seed={seed} writers={CLIENTS} \
         cut_delays_ms={delays:?} acknowledged_per_cut={acknowledged_per_cut:?} \
         failed_after_a_cut={} fsyncs={}",
        backend.name(),
        ledger.not_all_written,
        stats.fsyncs
    );
    Outcome {
        acknowledged: ledger.both,
        lost,
        acknowledged_per_cut,
    }
}

/// SIGKILL to a PostgreSQL cluster: the postmaster and every process it
/// forked (each of them leads a process group of its own). Stopped first,
/// so that it forks nothing more while its children are found.
fn kill_cluster(postmaster: u32) {
    use rustix::process::{Pid, Signal, kill_process};
    let pid = |raw: u32| Pid::from_raw(raw as i32).expect("a pid");
    kill_process(pid(postmaster), Signal::STOP).expect("SIGSTOP the postmaster");
    for child in children_of(postmaster) {
        let _ = kill_process(pid(child), Signal::KILL);
    }
    kill_process(pid(postmaster), Signal::KILL).expect("SIGKILL the postmaster");
    // Gone, reaped: until then its lock files still name a live pid, and
    // PostgreSQL refuses to start beside it.
    let proc_dir = PathBuf::from(format!("/proc/{postmaster}"));
    for _ in 0..200 {
        if !proc_dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("postmaster {postmaster} still exists 10 s after SIGKILL");
}

/// The pids whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so after the ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    children
}

async fn a_power_cut_under_load_never_loses_an_acknowledged_write(backend: Backend) {
    let test = "power_loss::a_power_cut_under_load_never_loses_an_acknowledged_write";
    if let Some(reason) = power_fs::unavailable() {
        return skipped(test, &reason);
    }
    // SQLite holds under the strictest model; PostgreSQL relies on the
    // metadata journal for a directory entry or two (see Durability).
    let durability = match backend {
        Backend::Sqlite => Durability::Posix,
        Backend::Postgres => Durability::Journaled,
    };
    let outcome = cut_power_under_load(backend, durability, CUTS).await;
    println!(
        "power-loss test: backend={} cuts={CUTS} acknowledged={} lost={}",
        backend.name(),
        outcome.acknowledged,
        outcome.lost.len()
    );
    let rounds_acknowledging = outcome.acknowledged_per_cut.iter().filter(|&&n| n > 0);
    assert!(
        rounds_acknowledging.count() >= CUTS as usize / 2,
        "the cuts came before most rounds acknowledged anything: {:?}",
        outcome.acknowledged_per_cut
    );
    assert!(
        outcome.lost.is_empty(),
        "acknowledged writes lost: {:?}",
        outcome.lost
    );
}
contract_test!(a_power_cut_under_load_never_loses_an_acknowledged_write);

/// The negative control: with fsync a no-op in the file system (never in
/// the product), the same harness must report lost acknowledged runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_fsync_a_noop_the_same_harness_reports_lost_runs() {
    let test = "power_loss::with_fsync_a_noop_the_same_harness_reports_lost_runs";
    if let Some(reason) = power_fs::unavailable() {
        return skipped(test, &reason);
    }
    crate::helpers::within_test_limit(test, async {
        let cuts = 3;
        let outcome = cut_power_under_load(Backend::Sqlite, Durability::FsyncIsNoop, cuts).await;
        println!(
            "power-loss negative control: cuts={cuts} acknowledged={} lost={}",
            outcome.acknowledged,
            outcome.lost.len()
        );
        assert!(outcome.acknowledged > 0, "nothing was acknowledged");
        assert!(
            !outcome.lost.is_empty(),
            "with fsync a no-op the harness found nothing lost: it cannot tell durable from not"
        );
    })
    .await
}

fn request(n: u32) -> CompleteRunRequest {
    let (task, run, timestamp) = ("io".to_owned(), format!("run-{n:04}"), ts(n));
    CompleteRunRequest {
        summary_json: summary_for(&task, &run, &timestamp),
        task_id: task,
        run_id: run,
        timestamp,
    }
}

/// Both writes of a reply, as (snapshot, manifest).
async fn complete(
    server: &ServerProcess,
    request: &CompleteRunRequest,
) -> (WriteStatus, WriteStatus) {
    let reply = within(
        "CompleteRun",
        server.client().await.complete_run(request.clone()),
    )
    .await
    .expect("CompleteRun answers with per-write statuses")
    .into_inner();
    (
        reply.snapshot.expect("snapshot status"),
        reply.manifest.expect("manifest status"),
    )
}

fn written(statuses: &(WriteStatus, WriteStatus)) -> bool {
    [&statuses.0, &statuses.1]
        .iter()
        .all(|s| s.state() == WriteState::Written)
}

fn assert_failed_unavailable(statuses: &(WriteStatus, WriteStatus), what: &str) {
    for status in [&statuses.0, &statuses.1] {
        assert_eq!(status.state(), WriteState::Failed, "{what}: {status:?}");
        assert_eq!(status.code, "UNAVAILABLE", "{what}: {status:?}");
        assert!(status.retryable, "{what}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn io_errors_fail_writes_as_unavailable_and_lose_nothing_acknowledged() {
    let test = "power_loss::io_errors_fail_writes_as_unavailable_and_lose_nothing_acknowledged";
    if let Some(reason) = power_fs::unavailable() {
        return skipped(test, &reason);
    }
    crate::helpers::within_test_limit(test, async {
        let mut fs = PowerFs::mount(Durability::Posix);
        let store = store_on(&fs);
        let server = start_server(&store, &["--health-interval", "100ms"]).await;
        let channel = server.channel().await;
        wait_for_service(&channel, SERVICE_NAME, ServingStatus::Serving).await;
        let mut next = 0;
        let mut acknowledged = Vec::new();
        let mut failed = Vec::new();
        let mut write = async |fs_faults: Option<Faults>| {
            if let Some(faults) = fs_faults {
                fs.set_faults(faults);
            }
            next += 1;
            let request = request(next);
            let statuses = complete(&server, &request).await;
            (request, statuses)
        };

        for _ in 0..5 {
            let (request, statuses) = write(None).await;
            assert!(written(&statuses), "{statuses:?}");
            acknowledged.push(request);
        }

        // EIO on write(2): the write fails, readiness follows, liveness stays.
        let (request, statuses) = write(Some(Faults {
            fail_writes: true,
            ..Faults::default()
        }))
        .await;
        assert_failed_unavailable(&statuses, "a write during EIO on write");
        failed.push(request);
        wait_for_service(&channel, SERVICE_NAME, ServingStatus::NotServing).await;
        assert_eq!(health(&channel, LIVENESS).await, ServingStatus::Serving);

        // The errors stop: the same server recovers.
        let (request, statuses) = write(Some(Faults::default())).await;
        wait_for_service(&channel, SERVICE_NAME, ServingStatus::Serving).await;
        if written(&statuses) {
            acknowledged.push(request);
        } else {
            // The first commit after the errors may still meet the
            // connection they left behind; it must then say so.
            assert_failed_unavailable(&statuses, "the first write after EIO on write");
            failed.push(request);
        }
        for _ in 0..5 {
            let (request, statuses) = write(None).await;
            assert!(written(&statuses), "after the errors stopped: {statuses:?}");
            acknowledged.push(request);
        }

        // EIO on every fsync: the same, and each failure drops its data.
        let (request, statuses) = write(Some(Faults {
            fail_fsyncs: u32::MAX,
            ..Faults::default()
        }))
        .await;
        assert_failed_unavailable(&statuses, "a write during EIO on fsync");
        failed.push(request);
        wait_for_service(&channel, SERVICE_NAME, ServingStatus::NotServing).await;
        assert_eq!(health(&channel, LIVENESS).await, ServingStatus::Serving);
        fs.set_faults(Faults::default());
        wait_for_service(&channel, SERVICE_NAME, ServingStatus::Serving).await;
        for _ in 0..5 {
            let (request, statuses) = write(None).await;
            assert!(
                written(&statuses),
                "after EIO on fsync stopped: {statuses:?}"
            );
            acknowledged.push(request);
        }

        // EIO on fsync, once: its dirty data is dropped (fsyncgate). The
        // health probe commits too, so arm it until a call is the one hit.
        let mut fsync_failures = 0;
        for _ in 0..50 {
            let (request, statuses) = write(Some(Faults {
                fail_fsyncs: 1,
                ..Faults::default()
            }))
            .await;
            if written(&statuses) {
                acknowledged.push(request);
                continue;
            }
            assert_failed_unavailable(&statuses, "a write whose commit fsync failed");
            failed.push(request);
            fsync_failures += 1;
            break;
        }
        assert_eq!(fsync_failures, 1, "no call's commit met the failing fsync");
        fs.set_faults(Faults::default());
        wait_for_service(&channel, SERVICE_NAME, ServingStatus::Serving).await;
        for _ in 0..5 {
            let (request, statuses) = write(None).await;
            assert!(written(&statuses), "after the failed fsync: {statuses:?}");
            acknowledged.push(request);
        }
        let stats = fs.stats();

        // Then the power goes: what the later fsyncs acknowledged is there,
        // and nothing of a failed write.
        fs.cut_power();
        server.kill().await;
        fs.restore_power();
        let server = start_server(&store, &[]).await;
        let mut client = server.client().await;
        for (request, should_exist) in acknowledged
            .iter()
            .map(|r| (r, true))
            .chain(failed.iter().map(|r| (r, false)))
        {
            let reply = client
                .get_manifest(GetManifestRequest {
                    task_id: request.task_id.clone(),
                    run_id: request.run_id.clone(),
                    ..Default::default()
                })
                .await;
            match (reply, should_exist) {
                (Ok(reply), true) => assert_eq!(reply.get_ref().summary_json, request.summary_json),
                (Err(status), false) => assert_eq!(status.code(), Code::NotFound),
                (reply, _) => panic!("{}: {reply:?}", request.run_id),
            }
        }
        let mut snapshot = crate::helpers::all_runs(&mut client, "io", 1000)
            .await
            .expect("GetTaskSnapshot")
            .into_iter()
            .map(|run| run.run_id)
            .collect::<Vec<_>>();
        snapshot.sort();
        let mut expected = acknowledged
            .iter()
            .map(|r| r.run_id.clone())
            .collect::<Vec<_>>();
        expected.sort();
        assert_eq!(
            snapshot, expected,
            "the snapshot holds exactly the acknowledged runs"
        );
        assert_eq!(store.db().integrity_check(), "ok");
        println!(
            "power-loss io errors: acknowledged={} failed={} failed_writes={} failed_fsyncs={} \
             dropped_pages={} lost=0",
            acknowledged.len(),
            failed.len(),
            stats.failed_writes,
            stats.failed_fsyncs,
            stats.dropped_pages
        );
        assert_eq!(server.terminate().await.code(), Some(0));
    })
    .await
}

/// The file system itself, through the kernel: what fsync covers survives
/// a cut, what it does not is gone, and a failed fsync drops its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_system_keeps_only_what_was_fsynced() {
    use std::{
        fs,
        io::{Seek, SeekFrom, Write},
    };
    let test = "power_loss::the_file_system_keeps_only_what_was_fsynced";
    if let Some(reason) = power_fs::unavailable() {
        return skipped(test, &reason);
    }
    let mut pfs = PowerFs::mount(Durability::Posix);
    let sync_dir = |path: &std::path::Path| fs::File::open(path).unwrap().sync_all().unwrap();
    fs::create_dir(pfs.join("d")).unwrap();
    sync_dir(pfs.path());
    let mut synced = fs::File::create(pfs.join("d/synced")).unwrap();
    synced.write_all(b"durable").unwrap();
    synced.sync_all().unwrap();
    fs::write(pfs.join("d/unsynced"), b"volatile").unwrap();
    sync_dir(&pfs.join("d"));
    synced.write_all(b" and more").unwrap();
    fs::write(pfs.join("d/entry-never-synced"), b"x").unwrap();

    // fsyncgate: the failed fsync's data is dropped, the next fsync succeeds.
    let mut gate = fs::File::create(pfs.join("gate")).unwrap();
    sync_dir(pfs.path());
    gate.write_all(b"dropped").unwrap();
    pfs.set_faults(Faults {
        fail_fsyncs: 1,
        ..Faults::default()
    });
    assert_eq!(gate.sync_all().unwrap_err().raw_os_error(), Some(libc::EIO));
    // On the next page: a write to the same page would dirty it again,
    // and Linux would then write the old bytes with the new.
    gate.seek(SeekFrom::Start(4096)).unwrap();
    gate.write_all(b"kept").unwrap();
    gate.sync_all().unwrap();
    drop((synced, gate));

    pfs.cut_power();
    assert!(fs::read(pfs.join("d/synced")).is_err(), "EIO after the cut");
    pfs.restore_power();
    assert_eq!(fs::read(pfs.join("d/synced")).unwrap(), b"durable");
    assert_eq!(fs::read(pfs.join("d/unsynced")).unwrap(), b"");
    assert!(!pfs.join("d/entry-never-synced").exists());
    let mut expected = vec![0; 4096];
    expected.extend_from_slice(b"kept");
    assert_eq!(fs::read(pfs.join("gate")).unwrap(), expected);
}
