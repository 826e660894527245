//! Graceful shutdown of the real binary under load: SIGTERM while 150
//! CompleteRuns are in flight. Each call either finishes with both writes
//! durable or is refused with UNAVAILABLE having written nothing; the
//! process exits 0 within the grace period; a health Watch sees NOT_SERVING.
//!
//! SIGTERM goes out as soon as the first reply is back, so the other calls
//! are still being written, or not yet admitted. Whether any call is still
//! unadmitted at that moment is a race (the server often admits all 150
//! before the first reply), so the second test also sends a wave of calls
//! once the Watch reports NOT_SERVING. Admission closes before NOT_SERVING
//! is published, so every one of those must be refused. It runs with
//! `--shutdown-delay`, which keeps connections open for that long: without
//! it the connection closes as soon as the first wave has drained, which on
//! fast storage may be before the late calls arrive, and a call on a closed
//! connection says nothing about the server's refusal.
//!
//! For the same reason a first-wave call whose stream the client had not
//! yet opened when the server's GOAWAY came fails in the client's
//! transport (tonic: an h2 error, INTERNAL), not with the server's
//! UNAVAILABLE. Such a call never reached the server: it is counted apart,
//! and, like a refused one, must have left nothing.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use runstore::proto::{
    CompleteRunResponse, GetManifestRequest, GetTaskSnapshotRequest, Outcome,
    persistence_service_client::PersistenceServiceClient,
};
use tokio::{
    sync::{Notify, oneshot},
    task::JoinHandle,
};
use tokio_stream::StreamExt;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{Backend, SERVICE_NAME, TestStore, complete_request, ts},
    server_process::start_server,
};

const CALLS: u32 = 150;
/// Calls sent after NOT_SERVING. With the first wave's, at most 190 streams
/// share the connection, under the server's HTTP/2 limit of 200.
const LATE_CALLS: u32 = 40;
const TASKS: u32 = 5;
const GRACE: Duration = Duration::from_secs(20);

struct CallResult {
    task_id: String,
    run_id: String,
    summary_json: String,
    /// Whether the reply came after SIGTERM was sent.
    after_sigterm: bool,
    /// Sent after the Watch reported NOT_SERVING.
    late: bool,
    result: Result<CompleteRunResponse, tonic::Status>,
}

/// Starts CompleteRun number `i` (its own run id) as a task.
fn spawn_call(
    mut client: PersistenceServiceClient<Channel>,
    i: u32,
    sigterm_sent: Arc<AtomicBool>,
    replied: Arc<Notify>,
) -> JoinHandle<CallResult> {
    tokio::spawn(async move {
        let request = complete_request(
            &format!("drain-{}", i % TASKS),
            &format!("run-{i:03}"),
            &ts(i),
        );
        let (task_id, run_id, summary_json) = (
            request.task_id.clone(),
            request.run_id.clone(),
            request.summary_json.clone(),
        );
        let result = client
            .complete_run(request)
            .await
            .map(tonic::Response::into_inner);
        let after_sigterm = sigterm_sent.load(Ordering::SeqCst);
        replied.notify_one();
        CallResult {
            task_id,
            run_id,
            summary_json,
            after_sigterm,
            late: i >= CALLS,
            result,
        }
    })
}

/// Opens a Watch on its own connection and waits for SERVING. The returned
/// task records every later status and fires `not_serving` on the first
/// NOT_SERVING.
async fn watch_health(
    channel: Channel,
    not_serving: oneshot::Sender<()>,
) -> JoinHandle<Vec<ServingStatus>> {
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .expect("health watch")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(update) = watch.next().await {
            if update.expect("health update").status() == ServingStatus::Serving {
                return;
            }
        }
        panic!("health stream ended before SERVING");
    })
    .await
    .expect("SERVING before the load");
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut not_serving = Some(not_serving);
        while let Some(Ok(update)) = watch.next().await {
            seen.push(update.status());
            if update.status() == ServingStatus::NotServing
                && let Some(tx) = not_serving.take()
            {
                let _ = tx.send(());
            }
        }
        seen
    })
}

/// Rounds of [`sigterm_round`] until one has calls in flight at SIGTERM.
/// On a loaded machine the client may only read the replies after group
/// commit has answered every call at once; such a round checks nothing about
/// the drain, so it is repeated rather than counted.
async fn sigterm_under_load(backend: Backend, label: &str, shutdown_delay: Option<&str>) {
    const ATTEMPTS: u32 = 5;
    for attempt in 1..=ATTEMPTS {
        if sigterm_round(backend, label, shutdown_delay).await > 0 {
            return;
        }
        println!("attempt {attempt}: every call had finished before SIGTERM; again");
    }
    panic!("in {ATTEMPTS} attempts SIGTERM always came after every call had finished");
}

/// SIGTERM under load, then restart and check what is stored. With
/// `shutdown_delay`, also sends `LATE_CALLS` calls once NOT_SERVING is seen.
/// Returns how many calls were answered after SIGTERM.
async fn sigterm_round(backend: Backend, label: &str, shutdown_delay: Option<&str>) -> usize {
    let store = TestStore::fresh(backend);
    let mut args = vec!["--shutdown-grace", "20s", "--health-interval", "100ms"];
    if let Some(delay) = shutdown_delay {
        args.extend(["--shutdown-delay", delay]);
    }
    let mut server = start_server(&store, &args).await;
    let (not_serving_tx, not_serving) = oneshot::channel();
    let watcher = watch_health(server.channel().await, not_serving_tx).await;

    let client = server.client().await;
    let sigterm_sent = Arc::new(AtomicBool::new(false));
    let replied = Arc::new(Notify::new());
    let mut calls: Vec<_> = (0..CALLS)
        .map(|i| spawn_call(client.clone(), i, sigterm_sent.clone(), replied.clone()))
        .collect();

    // No sleep: the first reply is the cue.
    tokio::time::timeout(Duration::from_secs(30), replied.notified())
        .await
        .expect("a first reply");
    let sigterm_at = Instant::now();
    sigterm_sent.store(true, Ordering::SeqCst);
    server.signal("-TERM");

    // Synchronised on the server's own signal, not on time.
    tokio::time::timeout(Duration::from_secs(10), not_serving)
        .await
        .expect("NOT_SERVING soon after SIGTERM")
        .expect("the Watch reports NOT_SERVING");
    let not_serving_after = sigterm_at.elapsed();
    let late_calls = if shutdown_delay.is_some() {
        LATE_CALLS
    } else {
        0
    };
    calls.extend(
        (CALLS..CALLS + late_calls)
            .map(|i| spawn_call(client.clone(), i, sigterm_sent.clone(), replied.clone())),
    );

    let mut results = Vec::new();
    for call in calls {
        let result = tokio::time::timeout(GRACE + Duration::from_secs(5), call)
            .await
            .expect("every call ends within the grace")
            .expect("call task");
        results.push(result);
    }
    let status = tokio::time::timeout(GRACE + Duration::from_secs(5), server.child.wait())
        .await
        .expect("the server exits within the grace period")
        .expect("wait");
    let exit_after = sigterm_at.elapsed();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0: {status}");
    assert!(exit_after < GRACE, "exited after {exit_after:?}");
    let health_seen = tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the health watch ends with the server")
        .expect("watch task");

    let mut written = Vec::new();
    let mut refused = Vec::new();
    let mut unsent = Vec::new();
    let mut unexpected = Vec::new();
    for call in &results {
        match &call.result {
            Ok(reply) if reply.outcome() == Outcome::AllWritten => written.push(call),
            Ok(reply) => unexpected.push(format!(
                "{}/{}: OK but {:?}: {:?}",
                call.task_id,
                call.run_id,
                reply.outcome(),
                reply.primary_error
            )),
            Err(status) if status.code() == Code::Unavailable => refused.push(call),
            Err(status) if met_the_closing_transport(status) && !call.late => unsent.push(call),
            Err(status) => unexpected.push(format!(
                "{}/{}: {:?} {:?} (late: {}, after SIGTERM: {})",
                call.task_id,
                call.run_id,
                status.code(),
                status.message(),
                call.late,
                call.after_sigterm
            )),
        }
    }
    let late_refused = refused.iter().filter(|c| c.late).count();
    // Answered by the server after SIGTERM (an unsent call says nothing).
    let in_flight = written
        .iter()
        .chain(&refused)
        .filter(|c| c.after_sigterm)
        .count();
    println!(
        "shutdown under load: in_flight={in_flight} written={} refused={} unsent={} \
         [{label}: first wave {CALLS} calls, refused {}; {late_calls} calls after NOT_SERVING, \
         refused {late_refused}; NOT_SERVING after {not_serving_after:?}, exit 0 after \
         {exit_after:?}; Watch saw {health_seen:?}]",
        written.len(),
        refused.len(),
        unsent.len(),
        refused.len() - late_refused,
    );
    assert!(
        unexpected.is_empty(),
        "only OK with ALL_WRITTEN or UNAVAILABLE are allowed: {unexpected:#?}"
    );
    assert_eq!(
        late_refused, late_calls as usize,
        "every call sent after NOT_SERVING is refused"
    );
    assert!(
        health_seen.contains(&ServingStatus::NotServing),
        "the Watch saw NOT_SERVING: {health_seen:?}"
    );
    refused.extend(unsent);
    check_after_restart(&store, &written, &refused).await;
    in_flight
}

/// A call the client's HTTP/2 transport failed because the connection was
/// going away or gone (tonic reports h2's error as INTERNAL with this prefix).
fn met_the_closing_transport(status: &tonic::Status) -> bool {
    status.code() == Code::Internal && status.message().starts_with("h2 protocol error")
}

/// Restarts on the data dir: every written run is there in full, every
/// refused (or unsent) one left nothing, and nothing else was recorded.
async fn check_after_restart(store: &TestStore, written: &[&CallResult], refused: &[&CallResult]) {
    let server = start_server(store, &[]).await;
    let mut client = server.client().await;
    let mut snapshot = HashMap::new();
    for n in 0..TASKS {
        let task = format!("drain-{n}");
        let page = match client
            .get_task_snapshot(GetTaskSnapshotRequest {
                task_id: task.clone(),
                page_size: 1000,
                page_token: String::new(),
                ..Default::default()
            })
            .await
        {
            Ok(page) => page.into_inner(),
            Err(status) if status.code() == Code::NotFound => continue,
            Err(status) => panic!("GetTaskSnapshot {task}: {status}"),
        };
        assert!(page.next_page_token.is_empty(), "one page holds every run");
        for run in page.runs {
            let previous = snapshot.insert((task.clone(), run.run_id.clone()), run.summary_json);
            assert!(previous.is_none(), "{task}/{} appears twice", run.run_id);
        }
    }
    for call in written {
        let key = (call.task_id.clone(), call.run_id.clone());
        assert_eq!(
            snapshot.get(&key),
            Some(&call.summary_json),
            "snapshot entry of written run {key:?}"
        );
        let manifest = client
            .get_manifest(GetManifestRequest {
                task_id: call.task_id.clone(),
                run_id: call.run_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("manifest of written run {key:?}: {status}"))
            .into_inner();
        assert_eq!(manifest.summary_json, call.summary_json, "{key:?}");
    }
    for call in refused {
        let key = (call.task_id.clone(), call.run_id.clone());
        assert!(
            !snapshot.contains_key(&key),
            "refused run {key:?} has a snapshot entry"
        );
        let err = client
            .get_manifest(GetManifestRequest {
                task_id: call.task_id.clone(),
                run_id: call.run_id.clone(),
                ..Default::default()
            })
            .await
            .expect_err("a refused run has no manifest");
        assert_eq!(err.code(), Code::NotFound, "{key:?}: {err}");
    }
    assert_eq!(snapshot.len(), written.len(), "nothing else was recorded");
    let counts = store.db().row_counts();
    assert_eq!(
        (counts.snapshot_entries, counts.manifests),
        (written.len() as i64, written.len() as i64),
        "nothing else was stored: {counts:?}"
    );
    assert!(counts.tasks <= TASKS as i64, "{counts:?}");
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0));
}

async fn sigterm_under_load_finishes_admitted_calls_and_refuses_the_rest(backend: Backend) {
    sigterm_under_load(backend, "no shutdown delay", None).await;
}
contract_test!(sigterm_under_load_finishes_admitted_calls_and_refuses_the_rest);

async fn sigterm_under_load_refuses_every_call_sent_after_not_serving(backend: Backend) {
    sigterm_under_load(backend, "--shutdown-delay 1s", Some("1s")).await;
}
contract_test!(sigterm_under_load_refuses_every_call_sent_after_not_serving);
