//! A real full disk: the store's data dir on a small tmpfs, filled by a
//! filler file. Readiness turns NOT_SERVING once the free-space rule (room
//! for twice the summary limit plus 1 MiB) fails, before writes do; when
//! the disk is full, writes fail with RESOURCE_EXHAUSTED (retryable) and
//! leave nothing; liveness stays SERVING throughout; deleting the filler
//! brings it all back without a restart.
//!
//! Needs root for `mount`; otherwise it prints `SKIPPED: <reason>` and
//! passes. The mount is undone (lazily if busy) however the test ends.

use std::{
    ffi::OsStr,
    fs::OpenOptions,
    io::{self, Write},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use runstore::proto::{CompleteRunRequest, CompleteRunResponse, Outcome, WriteState, WriteStatus};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    helpers::{
        Backend, LIVENESS, SERVICE_NAME, TestApp, TestStore, health, skipped, spawn_app_with,
        summary_for, ts, wait_for_service, with_summary_limit,
    },
    server_process::start_server,
};

/// A small limit, so the free-space rule fits a small tmpfs.
const SUMMARY_LIMIT: usize = 256 * 1024;
/// What readiness requires: room for twice the summary limit plus 1 MiB.
const REQUIRED_FREE: u64 = 2 * SUMMARY_LIMIT as u64 + (1 << 20);
const TMPFS_SIZE: &str = "6m";

/// A mount made by a test, unmounted (lazily if busy) when dropped.
struct Mount {
    path: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        if sh("umount", [self.path.as_os_str()]).is_err() {
            let _ = sh("umount", [OsStr::new("-l"), self.path.as_os_str()]);
        }
    }
}

fn sh<I, S>(program: &str, args: I) -> Result<(), String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|err| format!("cannot run {program}: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Mounts a tmpfs of `size` (e.g. "6m") at `path`, creating the directory.
fn mount_tmpfs(path: &Path, size: &str) -> Result<Mount, String> {
    std::fs::create_dir_all(path).map_err(|err| format!("mkdir {}: {err}", path.display()))?;
    let options = format!("size={size},mode=0700");
    sh(
        "mount",
        [
            OsStr::new("-t"),
            OsStr::new("tmpfs"),
            OsStr::new("-o"),
            OsStr::new(&options),
            OsStr::new("tmpfs"),
            path.as_os_str(),
        ],
    )?;
    Ok(Mount {
        path: path.to_path_buf(),
    })
}

/// Bytes an unprivileged writer may still use on the file system of `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let stats = rustix::fs::statvfs(dir).expect("statvfs");
    stats.f_bavail * stats.f_frsize
}

/// Appends `len` bytes to `path` (created if missing) and syncs them.
fn append(path: &Path, len: u64) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).expect("write filler");
        left -= n as u64;
    }
    file.sync_all().expect("sync filler");
}

/// Fills the file system of `dir` with `filler` until ENOSPC: pages first,
/// then single bytes to take the last one. Bounded: the mount is small.
fn fill(filler: &Path) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(filler)
        .expect("open filler");
    let page = [0u8; 4096];
    for chunk in [&page[..], &page[..1]] {
        let mut filled = false;
        for _ in 0..(1 << 20) {
            match file.write_all(chunk).and_then(|()| file.sync_data()) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::StorageFull => {
                    filled = true;
                    break;
                }
                Err(err) => panic!("filling {}: {err}", filler.display()),
            }
        }
        assert!(filled, "{} never filled up", filler.display());
    }
}

/// A run whose summary is `size` bytes, in the fixture's shape.
fn sized_request(run_id: &str, secs: u32, size: usize) -> CompleteRunRequest {
    let timestamp = ts(secs);
    let mut doc: serde_json::Value =
        serde_json::from_str(&summary_for("full", run_id, &timestamp)).expect("summary");
    let base = doc.to_string().len() + r#","padding":"""#.len();
    doc["padding"] = "x".repeat(size - base).into();
    let summary_json = doc.to_string();
    assert_eq!(summary_json.len(), size);
    CompleteRunRequest {
        task_id: "full".into(),
        run_id: run_id.into(),
        timestamp,
        summary_json,
    }
}

async fn call(app: &TestApp, request: &CompleteRunRequest) -> CompleteRunResponse {
    app.try_complete_run(request.clone())
        .await
        .expect("CompleteRun answers OK even when writes fail")
}

fn assert_exhausted(status: &WriteStatus, location: &str) {
    assert_eq!(status.state(), WriteState::Failed, "{status:?}");
    assert_eq!(status.code, "RESOURCE_EXHAUSTED", "{status:?}");
    assert!(status.retryable, "a full disk is retryable: {status:?}");
    assert!(!status.message.is_empty());
    assert_eq!(status.location, location);
    assert_eq!(status.bytes, 0);
}

async fn a_full_disk_fails_writes_as_resource_exhausted_and_recovers(backend: Backend) {
    const TEST: &str = "disk_full::a_full_disk_fails_writes_as_resource_exhausted_and_recovers";
    if !backend.stores_in_data_dir() {
        return skipped(TEST, "the backend keeps its data outside the data dir");
    }
    let root = Arc::new(tempfile::tempdir().expect("tempdir"));
    let mount_point = root.path().join("fs");
    let mount = match mount_tmpfs(&mount_point, TMPFS_SIZE) {
        Ok(mount) => mount,
        Err(reason) => return skipped(TEST, &format!("cannot mount a tmpfs: {reason}")),
    };
    let store = TestStore::at(backend, Arc::clone(&root), mount_point.join("data"));
    let (options, mut settings) = with_summary_limit(SUMMARY_LIMIT);
    // Probes append to the WAL; fewer of them keep its growth small.
    settings.health_interval = Duration::from_millis(100);
    let storage = store.open(&options).await;
    let app = spawn_app_with(store.clone(), storage, settings).await;
    // Negative control: with room, the same rule passes.
    app.wait_for_health(ServingStatus::Serving).await;
    for (run, secs) in [("run-1", 1), ("run-2", 2)] {
        let reply = call(&app, &sized_request(run, secs, 4096)).await;
        assert_eq!(reply.outcome(), Outcome::AllWritten);
    }
    let db = app.db();

    // 1. Below the rule, not yet full: not ready (before any write meets
    // a full disk), still live, and writes still succeed.
    let low = mount_point.join("filler-low");
    let free = free_bytes(&mount_point);
    assert!(
        free > REQUIRED_FREE,
        "{free} bytes free on a fresh {TMPFS_SIZE} tmpfs"
    );
    append(&low, free - REQUIRED_FREE / 2);
    wait_for_service(&app.channel, SERVICE_NAME, ServingStatus::NotServing).await;
    assert_eq!(app.health(LIVENESS).await, ServingStatus::Serving);
    let reply = call(&app, &sized_request("run-3", 3, 4096)).await;
    assert_eq!(
        reply.outcome(),
        Outcome::AllWritten,
        "{:?}",
        reply.primary_error
    );
    println!(
        "disk full: {} KiB free of {TMPFS_SIZE}, under the rule's {} KiB: readiness \
         NOT_SERVING, liveness SERVING, writes still succeed",
        free_bytes(&mount_point) / 1024,
        REQUIRED_FREE / 1024
    );

    // 2. Full: writes fail as RESOURCE_EXHAUSTED, retryable, and leave
    // nothing (rows as they were), a new run and a rewrite alike. Each
    // needs more log space than the store has used so far, so neither can
    // fit in space the store already holds.
    let full = mount_point.join("filler-full");
    fill(&full);
    let before = db.row_counts();
    let new_run = sized_request("run-4", 4, SUMMARY_LIMIT);
    let rewrite = sized_request("run-1", 5, SUMMARY_LIMIT);
    for request in [&new_run, &rewrite] {
        let reply = call(&app, request).await;
        let snapshot = reply.snapshot.as_ref().expect("snapshot");
        let manifest = reply.manifest.as_ref().expect("manifest");
        println!(
            "fault matrix: backend={} case=disk-full({}) snapshot={} manifest={} outcome={}",
            backend.name(),
            request.run_id,
            snapshot.code,
            manifest.code,
            reply.outcome().as_str_name()
        );
        let run = &request.run_id;
        assert_exhausted(snapshot, &format!("snapshot_entries/full/{run}"));
        assert_exhausted(manifest, &format!("manifests/full/{run}"));
        assert_eq!(reply.outcome(), Outcome::NoneWritten);
        assert_eq!(reply.primary_error.as_ref(), Some(manifest));
    }
    assert_eq!(db.row_counts(), before, "nothing partial");
    let err = app.get_manifest("full", "run-4").await.expect_err("none");
    assert_eq!(err.code(), Code::NotFound);
    let stored = app.get_manifest("full", "run-1").await.expect("run-1");
    assert_eq!(
        stored.summary_json,
        sized_request("run-1", 1, 4096).summary_json
    );
    assert_eq!(app.run_ids("full").await, ["run-1", "run-2", "run-3"]);
    assert_eq!(app.health(SERVICE_NAME).await, ServingStatus::NotServing);
    assert_eq!(app.health(LIVENESS).await, ServingStatus::Serving);

    // 3. Space again: ready again and the retries succeed, no restart.
    std::fs::remove_file(&full).expect("remove filler");
    std::fs::remove_file(&low).expect("remove filler");
    wait_for_service(&app.channel, SERVICE_NAME, ServingStatus::Serving).await;
    assert_eq!(app.health(LIVENESS).await, ServingStatus::Serving);
    for request in [&new_run, &rewrite] {
        let reply = call(&app, request).await;
        assert_eq!(
            reply.outcome(),
            Outcome::AllWritten,
            "{:?}",
            reply.primary_error
        );
        let stored = app
            .get_manifest("full", &request.run_id)
            .await
            .expect("manifest");
        assert_eq!(stored.summary_json, request.summary_json);
    }
    assert_eq!(
        app.run_ids("full").await,
        ["run-2", "run-3", "run-4", "run-1"]
    );
    assert_eq!(db.integrity_check(), "ok");

    // The server first, then the mount (the guard would also do it lazily).
    drop(db);
    app.stop().await;
    drop(mount);
}
contract_test!(a_full_disk_fails_writes_as_resource_exhausted_and_recovers);

/// A pod that starts on a full disk waits unready instead of exiting (and
/// being restarted in a loop): the real binary on a fresh data dir inside
/// a full tmpfs serves probes (live, not ready) and answers writes
/// UNAVAILABLE; once there is room it creates and migrates the database
/// and serves, with no restart.
async fn a_server_started_on_a_full_disk_waits_unready_until_there_is_room(backend: Backend) {
    const TEST: &str =
        "disk_full::a_server_started_on_a_full_disk_waits_unready_until_there_is_room";
    if !backend.stores_in_data_dir() {
        return skipped(TEST, "the backend keeps its data outside the data dir");
    }
    let root = Arc::new(tempfile::tempdir().expect("tempdir"));
    let mount_point = root.path().join("fs");
    let mount = match mount_tmpfs(&mount_point, TMPFS_SIZE) {
        Ok(mount) => mount,
        Err(reason) => return skipped(TEST, &format!("cannot mount a tmpfs: {reason}")),
    };
    let filler = mount_point.join("filler");
    fill(&filler);
    let store = TestStore::at(backend, Arc::clone(&root), mount_point.join("data"));
    let limit = SUMMARY_LIMIT.to_string();
    let server = start_server(
        &store,
        &["--health-interval", "200ms", "--max-summary-bytes", &limit],
    )
    .await;
    let pid = server.pid();
    let channel = server.channel().await;
    let mut client = server.client().await;
    wait_for_service(&channel, LIVENESS, ServingStatus::Serving).await;
    for secs in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            health(&channel, SERVICE_NAME).await,
            ServingStatus::NotServing
        );
        let reply = client
            .complete_run(sized_request(&format!("full-{secs}"), secs, 4096))
            .await
            .expect("CompleteRun answers OK with failed writes")
            .into_inner();
        assert_eq!(reply.outcome(), Outcome::NoneWritten, "{reply:?}");
        let manifest = reply.manifest.as_ref().expect("manifest");
        assert_eq!(manifest.code, "UNAVAILABLE", "{manifest:?}");
        assert!(manifest.retryable, "{manifest:?}");
        assert!(manifest.message.contains("not open yet"), "{manifest:?}");
    }

    std::fs::remove_file(&filler).expect("remove filler");
    wait_for_service(&channel, SERVICE_NAME, ServingStatus::Serving).await;
    let request = sized_request("room", 10, 4096);
    let reply = client
        .complete_run(request.clone())
        .await
        .expect("CompleteRun")
        .into_inner();
    assert_eq!(
        reply.outcome(),
        Outcome::AllWritten,
        "{:?}",
        reply.primary_error
    );
    let stored = client
        .get_manifest(runstore::proto::GetManifestRequest {
            task_id: "full".into(),
            run_id: "room".into(),
            ..Default::default()
        })
        .await
        .expect("GetManifest")
        .into_inner();
    assert_eq!(stored.summary_json, request.summary_json);
    assert_eq!(health(&channel, LIVENESS).await, ServingStatus::Serving);
    assert_eq!(server.pid(), pid, "the same process throughout");
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    drop(mount);
}
contract_test!(a_server_started_on_a_full_disk_waits_unready_until_there_is_room);
