//! Real storage faults through real seams: a full disk (a tiny tmpfs) and a
//! read-only directory (a read-only bind mount) under the data dir, or as
//! the whole data dir. Needs root for `mount`; otherwise every case prints
//! `SKIPPED: <reason>` and passes.
//!
//! A path component that is a file is covered by `failures`.

use std::{
    ffi::OsStr,
    fs::OpenOptions,
    io::{self, Write},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use runstore::{
    proto::{CompleteRunRequest, CompleteRunResponse, Outcome, WriteState, WriteStatus},
    storage::{FsStorage, snapshot_log},
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{
    SERVICE_NAME, TestApp, fast_settings, files_under, spawn_app, spawn_app_with, summary_for, ts,
};

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

/// Why mounting is impossible here, if it is.
fn cannot_mount() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .map(str::to_owned);
    match euid.as_deref() {
        Some("0") => None,
        Some(uid) => Some(format!("not root (euid {uid}); mount needs root")),
        None => Some("cannot tell the effective uid".into()),
    }
}

fn skipped(case: &str, reason: &str) {
    println!("SKIPPED: faults::{case}: {reason}");
}

/// Mounts a tmpfs of `size` (e.g. "64k") at `path`, creating the directory.
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

/// Makes the existing directory `path` read-only with a bind mount onto itself.
fn read_only_bind(path: &Path) -> Result<Mount, String> {
    sh(
        "mount",
        [OsStr::new("--bind"), path.as_os_str(), path.as_os_str()],
    )?;
    // From here on the guard undoes the bind even if the remount fails.
    let mount = Mount {
        path: path.to_path_buf(),
    };
    set_bind_mode(&mount, "ro")?;
    Ok(mount)
}

fn set_bind_mode(mount: &Mount, mode: &str) -> Result<(), String> {
    let options = format!("remount,{mode},bind");
    sh(
        "mount",
        [
            OsStr::new("-o"),
            OsStr::new(&options),
            mount.path.as_os_str(),
        ],
    )
}

/// Fills the filesystem holding `dir` by appending to `dir/filler` until
/// ENOSPC: whole pages first, then single bytes to take the last one.
/// Returns the filler's path. Bounded: the mounts here are at most 1 MiB.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
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
                Err(err) => panic!("filling {}: {err}", path.display()),
            }
        }
        assert!(filled, "{} never filled up", dir.display());
    }
    path
}

/// A request whose summary (~34 KiB) cannot fit in what a full disk has left.
fn big_request(task_id: &str, run_id: &str, timestamp: &str) -> CompleteRunRequest {
    let mut doc: serde_json::Value =
        serde_json::from_str(&summary_for(task_id, run_id, timestamp)).expect("summary");
    doc["padding"] = "x".repeat(32 * 1024).into();
    CompleteRunRequest {
        task_id: task_id.into(),
        run_id: run_id.into(),
        timestamp: timestamp.into(),
        summary_json: doc.to_string(),
    }
}

async fn call(app: &TestApp, request: &CompleteRunRequest) -> CompleteRunResponse {
    app.try_complete_run(request.clone())
        .await
        .expect("CompleteRun answers OK even when writes fail")
}

fn statuses(reply: &CompleteRunResponse) -> (&WriteStatus, &WriteStatus) {
    (
        reply.snapshot.as_ref().expect("snapshot status"),
        reply.manifest.as_ref().expect("manifest status"),
    )
}

fn assert_failed(status: &WriteStatus, code: &str, location: &str) {
    assert_eq!(status.state(), WriteState::Failed, "{status:?}");
    assert_eq!(status.code, code, "{status:?}");
    assert!(status.retryable, "{code} is retryable: {status:?}");
    assert!(!status.message.is_empty());
    assert_eq!(status.location, location);
    assert_eq!(status.bytes, 0);
}

fn assert_written(status: &WriteStatus) {
    assert_eq!(status.state(), WriteState::Written, "{status:?}");
    assert_eq!(status.code, "OK");
}

fn print_matrix(case: &str, reply: &CompleteRunResponse) {
    let (snapshot, manifest) = statuses(reply);
    println!(
        "fault matrix: case={case:<22} snapshot={:<18} manifest={:<18} outcome={}",
        snapshot.code,
        manifest.code,
        reply.outcome().as_str_name()
    );
}

/// Temp files under `dir`; none may be left by a failed write.
fn temp_files(dir: &Path) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|f| f.ends_with(".tmp") && !f.contains(".health-probe"))
        .collect()
}

/// The log of `task` under `root` holds only whole frames; returns their run ids.
fn whole_log(root: &Path, task: &str) -> Vec<String> {
    let path = root.join("tasks").join(task).join("runs.log");
    let bytes = std::fs::read(&path).expect("read log");
    let (records, valid) = snapshot_log::decode_all(&bytes);
    assert_eq!(
        valid,
        bytes.len(),
        "{} holds a partial frame after a failed append",
        path.display()
    );
    records.into_iter().map(|r| r.run_id).collect()
}

async fn run_ids(app: &TestApp, task: &str) -> Vec<String> {
    app.all_runs(task)
        .await
        .into_iter()
        .map(|r| r.run_id)
        .collect()
}

async fn assert_others_unaffected(app: &TestApp, run_id: &str) {
    let other = app.complete_run("bystander", run_id, &ts(1)).await;
    assert_eq!(
        other.outcome(),
        Outcome::AllWritten,
        "{:?}",
        other.primary_error
    );
    assert_eq!(app.health(SERVICE_NAME).await, ServingStatus::Serving);
    assert_eq!(app.health("").await, ServingStatus::Serving);
}

#[tokio::test]
async fn full_disk_for_manifests_fails_only_the_manifest() {
    crate::helpers::within_test_limit(
        "full_disk_for_manifests_fails_only_the_manifest",
        async move {
            const CASE: &str = "manifest-disk-full";
            if let Some(reason) = cannot_mount() {
                return skipped(CASE, &reason);
            }
            let app = spawn_app().await;
            let task = "full-manifests";
            let mount_dir = app.data_path().join("runs").join(task);
            let mount = match mount_tmpfs(&mount_dir, "64k") {
                Ok(mount) => mount,
                Err(reason) => return skipped(CASE, &reason),
            };
            let filler = fill(&mount_dir);

            let request = big_request(task, "run-1", &ts(1));
            let reply = call(&app, &request).await;
            print_matrix(CASE, &reply);
            let (snapshot, manifest) = statuses(&reply);
            assert_written(snapshot);
            assert_failed(
                manifest,
                "RESOURCE_EXHAUSTED",
                "runs/full-manifests/run-1/manifest.json",
            );
            assert_eq!(reply.outcome(), Outcome::ManifestFailed);
            assert_eq!(reply.primary_error.as_ref(), Some(manifest));
            assert_eq!(files_under(&mount_dir), ["filler"], "no temp file left");
            let err = app
                .get_manifest(task, "run-1")
                .await
                .expect_err("no manifest");
            assert_eq!(err.code(), Code::NotFound);
            assert_eq!(run_ids(&app, task).await, ["run-1"]);
            assert_others_unaffected(&app, "during-manifest-full").await;

            std::fs::remove_file(filler).expect("free space");
            let retry = call(&app, &request).await;
            assert_eq!(
                retry.outcome(),
                Outcome::AllWritten,
                "{:?}",
                retry.primary_error
            );
            let stored = app.get_manifest(task, "run-1").await.expect("manifest");
            assert_eq!(stored.summary_json, request.summary_json);
            assert_eq!(
                run_ids(&app, task).await,
                ["run-1"],
                "the retry replaced it"
            );

            app.stop().await;
            drop(mount);
        },
    )
    .await
}

#[tokio::test]
async fn full_disk_for_snapshots_fails_only_the_snapshot_and_leaves_no_partial_frame() {
    crate::helpers::within_test_limit(
        "full_disk_for_snapshots_fails_only_the_snapshot_and_leaves_no_partial_frame",
        async move {
            const CASE: &str = "snapshot-disk-full";
            if let Some(reason) = cannot_mount() {
                return skipped(CASE, &reason);
            }
            let app = spawn_app().await;
            let task = "full-snapshots";
            let mount_dir = app.data_path().join("tasks").join(task);
            let mount = match mount_tmpfs(&mount_dir, "256k") {
                Ok(mount) => mount,
                Err(reason) => return skipped(CASE, &reason),
            };
            let earlier = ["run-1", "run-2", "run-3"];
            for (i, run) in (1..).zip(earlier) {
                let reply = app.complete_run(task, run, &ts(i)).await;
                assert_eq!(reply.outcome(), Outcome::AllWritten);
            }
            let filler = fill(&mount_dir);
            let log_len = std::fs::metadata(mount_dir.join("runs.log"))
                .expect("log")
                .len();

            let request = big_request(task, "run-4", &ts(4));
            let reply = call(&app, &request).await;
            print_matrix(CASE, &reply);
            let (snapshot, manifest) = statuses(&reply);
            assert_written(manifest);
            assert_failed(
                snapshot,
                "RESOURCE_EXHAUSTED",
                "tasks/full-snapshots/runs.log",
            );
            assert_eq!(reply.outcome(), Outcome::SnapshotFailed);
            assert_eq!(reply.primary_error.as_ref(), Some(snapshot));
            // The append may have partly landed in the log's last page before
            // ENOSPC; it must have been cut back to the last whole frame.
            assert_eq!(whole_log(app.data_path(), task), earlier);
            assert_eq!(
                std::fs::metadata(mount_dir.join("runs.log"))
                    .expect("log")
                    .len(),
                log_len
            );
            assert!(temp_files(&mount_dir).is_empty());
            let stored = app.get_manifest(task, "run-4").await.expect("manifest");
            assert_eq!(stored.summary_json, request.summary_json);
            assert_eq!(run_ids(&app, task).await, earlier, "earlier runs remain");
            assert_others_unaffected(&app, "during-snapshot-full").await;

            std::fs::remove_file(filler).expect("free space");
            let retry = call(&app, &request).await;
            assert_eq!(
                retry.outcome(),
                Outcome::AllWritten,
                "{:?}",
                retry.primary_error
            );
            let all = ["run-1", "run-2", "run-3", "run-4"];
            assert_eq!(run_ids(&app, task).await, all);
            assert_eq!(whole_log(app.data_path(), task), all);

            app.stop().await;
            drop(mount);
        },
    )
    .await
}

#[tokio::test]
async fn read_only_manifest_dir_fails_the_manifest_as_unavailable() {
    crate::helpers::within_test_limit(
        "read_only_manifest_dir_fails_the_manifest_as_unavailable",
        async move {
            const CASE: &str = "manifest-dir-read-only";
            if let Some(reason) = cannot_mount() {
                return skipped(CASE, &reason);
            }
            let app = spawn_app().await;
            let task = "read-only";
            let first = app.complete_run(task, "run-1", &ts(1)).await;
            assert_eq!(first.outcome(), Outcome::AllWritten);
            let original = app.get_manifest(task, "run-1").await.expect("manifest");
            let mount_dir = app.data_path().join("runs").join(task);
            let mount = match read_only_bind(&mount_dir) {
                Ok(mount) => mount,
                Err(reason) => return skipped(CASE, &reason),
            };

            // A new run (its directory cannot be created) and a rewrite of an
            // existing one (its temp file cannot be created) fail alike.
            for (run, secs) in [("run-2", 2), ("run-1", 1)] {
                let reply = app.complete_run(task, run, &ts(secs)).await;
                let (snapshot, manifest) = statuses(&reply);
                assert_written(snapshot);
                assert_failed(
                    manifest,
                    "UNAVAILABLE",
                    &format!("runs/{task}/{run}/manifest.json"),
                );
                assert_eq!(reply.outcome(), Outcome::ManifestFailed);
                assert_eq!(reply.primary_error.as_ref(), Some(manifest));
                if run == "run-2" {
                    print_matrix(CASE, &reply);
                }
            }
            assert_eq!(
                app.get_manifest(task, "run-1").await.expect("manifest"),
                original,
                "the failed rewrite left the stored manifest as it was"
            );
            let err = app.get_manifest(task, "run-2").await.expect_err("none");
            assert_eq!(err.code(), Code::NotFound);
            assert_others_unaffected(&app, "during-read-only").await;

            set_bind_mode(&mount, "rw").expect("remount read-write");
            let retry = app.complete_run(task, "run-2", &ts(2)).await;
            assert_eq!(
                retry.outcome(),
                Outcome::AllWritten,
                "{:?}",
                retry.primary_error
            );
            assert!(app.get_manifest(task, "run-2").await.is_ok());
            assert_eq!(run_ids(&app, task).await, ["run-1", "run-2"]);
            assert!(temp_files(&mount_dir).is_empty());

            app.stop().await;
            drop(mount);
        },
    )
    .await
}

#[tokio::test]
async fn full_data_dir_fails_both_writes_and_turns_health_not_serving() {
    crate::helpers::within_test_limit(
        "full_data_dir_fails_both_writes_and_turns_health_not_serving",
        async move {
            const CASE: &str = "data-dir-full";
            if let Some(reason) = cannot_mount() {
                return skipped(CASE, &reason);
            }
            let outer = Arc::new(tempfile::tempdir().expect("tempdir"));
            let data = outer.path().join("data");
            let mount = match mount_tmpfs(&data, "256k") {
                Ok(mount) => mount,
                Err(reason) => return skipped(CASE, &reason),
            };
            let storage = FsStorage::open(&data).expect("open storage");
            let app = spawn_app_with(Arc::clone(&outer), Arc::new(storage), fast_settings()).await;
            app.wait_for_health(ServingStatus::Serving).await;
            let task = "whole";
            let first = app.complete_run(task, "run-1", &ts(1)).await;
            assert_eq!(first.outcome(), Outcome::AllWritten);

            // The health probe briefly holds a page of its own; top up until a
            // probe fails for want of space, after which nothing frees a page.
            let mut filler = None;
            for _ in 0..100 {
                filler = Some(fill(&data));
                if app.health(SERVICE_NAME).await == ServingStatus::NotServing {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let filler = filler.expect("filled");
            app.wait_for_health(ServingStatus::NotServing).await;

            let request = big_request(task, "run-2", &ts(2));
            let reply = call(&app, &request).await;
            print_matrix(CASE, &reply);
            let (snapshot, manifest) = statuses(&reply);
            assert_failed(snapshot, "RESOURCE_EXHAUSTED", "tasks/whole/runs.log");
            assert_failed(
                manifest,
                "RESOURCE_EXHAUSTED",
                "runs/whole/run-2/manifest.json",
            );
            assert_eq!(reply.outcome(), Outcome::NoneWritten);
            assert_eq!(reply.primary_error.as_ref(), Some(manifest));
            assert!(temp_files(&data).is_empty(), "{:?}", temp_files(&data));
            assert_eq!(whole_log(&data, task), ["run-1"]);
            assert_eq!(run_ids(&app, task).await, ["run-1"]);
            let err = app.get_manifest(task, "run-2").await.expect_err("none");
            assert_eq!(err.code(), Code::NotFound);

            std::fs::remove_file(filler).expect("free space");
            app.wait_for_health(ServingStatus::Serving).await;
            let retry = call(&app, &request).await;
            assert_eq!(
                retry.outcome(),
                Outcome::AllWritten,
                "{:?}",
                retry.primary_error
            );
            let stored = app.get_manifest(task, "run-2").await.expect("manifest");
            assert_eq!(stored.summary_json, request.summary_json);
            assert_eq!(run_ids(&app, task).await, ["run-1", "run-2"]);

            // Stop the server before unmounting, so nothing writes to the
            // directory underneath afterwards.
            app.stop().await;
            drop(mount);
        },
    )
    .await
}
