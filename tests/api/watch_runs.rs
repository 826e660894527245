//! WatchRuns: the change feed. Events are recorded with their change (no
//! event without its change, no manifest write or removal without its
//! event), start from now or exactly after a cursor (also across restarts
//! and replicas), a late-committing PostgreSQL transaction is never skipped,
//! a slow live watcher is cut off with the cursor to resume from while
//! stored history goes at the reader's pace, many watchers sharing reads
//! each get exactly their own events, and pruned
//! cursors get OUT_OF_RANGE.

use std::time::Duration;

use futures::StreamExt;

use runstore::{
    api::page_token,
    proto::{
        DeleteRunRequest, Outcome, RunEvent, RunEventKind, WatchRunsRequest, WatchRunsResponse,
        persistence_service_client::PersistenceServiceClient,
    },
    server::{ServerSettings, sweep::SweepSettings},
};
use tonic::{Code, Streaming};
use tonic_types::StatusExt;

use crate::helpers::{
    Backend, On, Table, TestApp, TestStore, fast_settings, spawn_app, spawn_app_on, spawn_app_with,
    ts, within,
};

async fn watch(
    app: &TestApp,
    task_prefix: &str,
    after: &str,
) -> Result<Streaming<WatchRunsResponse>, tonic::Status> {
    app.client()
        .watch_runs(WatchRunsRequest {
            task_prefix: task_prefix.into(),
            after: after.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The next `n` events (each wait bounded).
async fn next_events(stream: &mut Streaming<WatchRunsResponse>, n: usize) -> Vec<RunEvent> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        let message = within(
            &format!("event {} of {n}", events.len() + 1),
            stream.message(),
        )
        .await
        .expect("the stream goes on")
        .expect("an event");
        events.push(message.event.expect("an event in every message"));
    }
    events
}

/// (kind, task, run) of each event.
fn summary(events: &[RunEvent]) -> Vec<(RunEventKind, String, String)> {
    events
        .iter()
        .map(|e| (e.kind(), e.task_id.clone(), e.run_id.clone()))
        .collect()
}

fn completed(task: &str, run: &str) -> (RunEventKind, String, String) {
    (RunEventKind::Completed, task.into(), run.into())
}

fn deleted(task: &str, run: &str) -> (RunEventKind, String, String) {
    (RunEventKind::Deleted, task.into(), run.into())
}

async fn delete(app: &TestApp, task_id: &str, run_id: &str) {
    let reply = app
        .client()
        .delete_run(DeleteRunRequest {
            task_id: task_id.into(),
            run_id: run_id.into(),
        })
        .await
        .expect("DeleteRun")
        .into_inner();
    assert_eq!(reply.outcome(), Outcome::AllWritten);
}

/// A marker write: when its event is the next one, nothing was recorded in
/// between.
async fn marker(app: &TestApp, task: &str, stream: &mut Streaming<WatchRunsResponse>) {
    app.complete_run(task, "marker", &ts(999)).await;
    let next = next_events(stream, 1).await;
    assert_eq!(
        summary(&next),
        [completed(task, "marker")],
        "nothing in between"
    );
}

async fn a_watch_from_now_sees_each_change_once_in_order(backend: Backend) {
    let app = spawn_app(backend).await;
    app.complete_run("w-a", "before", &ts(1)).await;
    let mut stream = watch(&app, "w-", "").await.expect("WatchRuns");

    app.complete_run("w-a", "r1", &ts(10)).await;
    app.complete_run("other", "x", &ts(11)).await; // another prefix
    app.complete_run("w-b", "r2", "2026-01-05T12:30:00+02:00")
        .await;
    delete(&app, "w-a", "r1").await;
    delete(&app, "w-a", "never-written").await; // removes nothing: no event
    app.complete_run("w-b", "r2", &ts(12)).await; // a rewrite is another event

    let events = next_events(&mut stream, 4).await;
    assert_eq!(
        summary(&events),
        [
            completed("w-a", "r1"),
            completed("w-b", "r2"),
            deleted("w-a", "r1"),
            completed("w-b", "r2"),
        ],
        "from now (not 'before'), only the prefix, in commit order"
    );
    assert_eq!(
        events[1].timestamp, "2026-01-05T12:30:00+02:00",
        "the run's, as sent"
    );
    assert_eq!(
        events[2].timestamp,
        ts(10),
        "a delete carries the run's timestamp"
    );
    for event in &events {
        chrono::DateTime::parse_from_rfc3339(&event.recorded_at).expect("recorded_at");
    }
    let mut cursors: Vec<_> = events.iter().map(|e| e.cursor.clone()).collect();
    cursors.dedup();
    assert_eq!(cursors.len(), 4, "each event has its own cursor");
    marker(&app, "w-a", &mut stream).await;
}
contract_test!(a_watch_from_now_sees_each_change_once_in_order);

/// A manifest that failed has no event; a snapshot that failed does not
/// stop the manifest's. A delete refused by a trigger has none either.
async fn events_exist_only_with_their_change(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut stream = watch(&app, "f-", "").await.expect("WatchRuns");
    let fault = app
        .db()
        .inject_fault(Table::Manifests, "f-manifest", &[On::Insert]);
    let reply = app.complete_run("f-manifest", "r1", &ts(1)).await;
    assert_eq!(reply.outcome(), Outcome::ManifestFailed);
    app.db().remove_fault(fault);
    marker(&app, "f-manifest", &mut stream).await;

    let fault = app
        .db()
        .inject_fault(Table::SnapshotEntries, "f-snapshot", &[On::Insert]);
    let reply = app.complete_run("f-snapshot", "r1", &ts(1)).await;
    assert_eq!(reply.outcome(), Outcome::SnapshotFailed);
    app.db().remove_fault(fault);
    assert_eq!(
        summary(&next_events(&mut stream, 1).await),
        [completed("f-snapshot", "r1")]
    );

    let fault = app
        .db()
        .inject_fault(Table::Manifests, "f-snapshot", &[On::Delete]);
    let reply = app
        .client()
        .delete_run(DeleteRunRequest {
            task_id: "f-snapshot".into(),
            run_id: "r1".into(),
        })
        .await
        .expect("DeleteRun")
        .into_inner();
    assert_eq!(reply.outcome(), Outcome::NoneWritten);
    app.db().remove_fault(fault);
    marker(&app, "f-snapshot", &mut stream).await;
}
contract_test!(events_exist_only_with_their_change);

/// A cursor resumes exactly after its event, on a restarted server and on
/// another server of the same store.
async fn a_cursor_resumes_exactly_after_its_event_across_restarts_and_replicas(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut stream = watch(&app, "", "").await.expect("WatchRuns");
    for i in 0..5u32 {
        app.complete_run("resume", &format!("r{i}"), &ts(i)).await;
    }
    let first = next_events(&mut stream, 5).await;
    let store = app.store.clone();
    drop(stream);
    app.stop().await;

    let app = spawn_app_on(store.clone()).await;
    for i in 5..7u32 {
        app.complete_run("resume", &format!("r{i}"), &ts(i)).await;
    }
    let mut resumed = watch(&app, "", &first[1].cursor).await.expect("resume");
    let events = next_events(&mut resumed, 5).await;
    let runs: Vec<_> = events.iter().map(|e| e.run_id.as_str()).collect();
    assert_eq!(
        runs,
        ["r2", "r3", "r4", "r5", "r6"],
        "exactly after r1's cursor"
    );
    assert_eq!(events[..3], first[2..], "the same events, cursors and all");

    // Another server on the same store (a replica; on SQLite another
    // process would do the same) sees this one's writes as they come.
    let replica = spawn_app_on(store).await;
    let mut on_replica = watch(&replica, "", &events[4].cursor)
        .await
        .expect("replica");
    app.complete_run("resume", "r7", &ts(7)).await;
    let seen = next_events(&mut on_replica, 1).await;
    assert_eq!(summary(&seen), [completed("resume", "r7")]);
}
contract_test!(a_cursor_resumes_exactly_after_its_event_across_restarts_and_replicas);

/// A live watcher that does not read is cut off once its buffer is full,
/// with the cursor of the last event it was sent; resuming there loses
/// nothing and repeats nothing, and the resumed catch-up of stored events
/// goes at the reader's pace, however slow (with it cut off as a live
/// watcher is, this test fails after about 3,600 events). Beyond the watcher's own buffer, HTTP/2 buffers up
/// to 400 KiB on the server, and the client here keeps HTTP/2's 64 KiB
/// windows (hyper's client default would buffer 2 MiB): together about
/// 3,000 events of this size, so 8× the buffer overflows them all.
async fn a_watcher_that_falls_behind_gets_the_cursor_to_resume_from(backend: Backend) {
    const RUNS: u32 = runstore::api::watch::BUFFER as u32 * 8;
    let app = spawn_app(backend).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", app.port))
        .expect("uri")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut client = PersistenceServiceClient::new(channel);
    let mut stream = client
        .clone()
        .watch_runs(WatchRunsRequest {
            task_prefix: "slow".into(),
            after: String::new(),
        })
        .await
        .expect("WatchRuns")
        .into_inner();
    futures::stream::iter(0..RUNS)
        .for_each_concurrent(64, |i| {
            let app = &app;
            async move {
                app.complete_run("slow", &format!("r{i:04}"), &ts(i)).await;
            }
        })
        .await;

    let mut seen = Vec::new();
    let status = loop {
        match within("the slow watcher's stream", stream.message()).await {
            Ok(Some(message)) => seen.push(message.event.expect("event")),
            Ok(None) => panic!(
                "the stream ended without a status after {} events",
                seen.len()
            ),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(
        (seen.len() as u32) < RUNS,
        "cut off before the end: {}",
        seen.len()
    );
    let info = status.get_details_error_info().expect("ErrorInfo");
    let resume_after = info.metadata.get("resume_after").expect("resume_after");
    assert_eq!(resume_after, &seen.last().expect("some events").cursor);
    assert!(status.message().contains(resume_after.as_str()));

    // Resuming reads the stored history at the pace the caller reads it:
    // this stream is not cut off, however many events it has to catch up
    // (through the same small windows).
    let mut resumed = client
        .watch_runs(WatchRunsRequest {
            task_prefix: "slow".into(),
            after: resume_after.clone(),
        })
        .await
        .expect("resume")
        .into_inner();
    let mut reads = 0;
    while (seen.len() as u32) < RUNS {
        let message = within("the resumed stream", resumed.message())
            .await
            .unwrap_or_else(|status| {
                panic!(
                    "the catch-up was cut off after {} events: {status:?}",
                    seen.len()
                )
            })
            .expect("the resumed stream goes on");
        seen.push(message.event.expect("event"));
        reads += 1;
        // Read slowly at first, so the stored history has to wait for us.
        if reads < 8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(seen.len() as u32, RUNS, "no event repeated, none missed");
    let mut runs: Vec<_> = seen.iter().map(|e| e.run_id.clone()).collect();
    runs.sort();
    runs.dedup();
    assert_eq!(runs.len() as u32, RUNS, "every run once");
}
contract_test!(a_watcher_that_falls_behind_gets_the_cursor_to_resume_from);

/// Many watchers at once, some at the same cursor (they share storage
/// reads) and with different prefixes: each sees exactly its own events,
/// once each, in cursor order, while the writes race.
async fn many_watchers_each_see_their_own_events_once_in_order(backend: Backend) {
    const RUNS: u32 = 200;
    let app = spawn_app(backend).await;
    let prefixes = ["", "", "fan-a", "fan-a", "fan-b", "fan-", "fan-b-", "none"];
    let mut streams = Vec::new();
    for prefix in prefixes {
        streams.push(watch(&app, prefix, "").await.expect("WatchRuns"));
    }
    futures::stream::iter(0..RUNS)
        .for_each_concurrent(32, |i| {
            let app = &app;
            async move {
                let task = if i % 2 == 0 { "fan-a" } else { "fan-b" };
                app.complete_run(task, &format!("r{i:03}"), &ts(i)).await;
            }
        })
        .await;
    // The last event of all, so every watcher can tell it has seen the rest.
    app.complete_run("zz-end", "end", &ts(RUNS)).await;
    for (prefix, stream) in prefixes.iter().zip(&mut streams) {
        let expected = match *prefix {
            "" => RUNS as usize + 1,
            "fan-a" | "fan-b" => RUNS as usize / 2,
            "fan-" => RUNS as usize,
            _ => 0,
        };
        let events = next_events(stream, expected).await;
        assert!(
            events.iter().all(|e| e.task_id.starts_with(prefix)),
            "prefix {prefix:?}: only its tasks"
        );
        let mut runs: Vec<_> = events.iter().map(|e| &e.run_id).collect();
        runs.sort();
        runs.dedup();
        assert_eq!(runs.len(), expected, "prefix {prefix:?}: each run once");
        let cursors: Vec<_> = events.iter().map(|e| e.cursor.clone()).collect();
        let mut in_order = cursors.clone();
        in_order.sort_by_key(|c| page_token::decode_event(c).expect("a cursor"));
        assert_eq!(cursors, in_order, "prefix {prefix:?}: in cursor order");
    }
    // The "none" watcher was sent none of the above: a run of its own is
    // the first event it gets (and the next for the "" watchers).
    app.complete_run("none-x", "last", &ts(RUNS + 1)).await;
    for (prefix, stream) in prefixes.iter().zip(&mut streams) {
        if prefix.is_empty() || *prefix == "none" {
            let next = next_events(stream, 1).await;
            assert_eq!(summary(&next), [completed("none-x", "last")], "{prefix:?}");
        }
    }
}
contract_test!(many_watchers_each_see_their_own_events_once_in_order);

/// At shutdown a watch ends with UNAVAILABLE and its cursor, not a reset.
async fn a_watch_ends_at_shutdown_with_its_cursor(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let mut stream = watch(&app, "", "").await.expect("WatchRuns");
    app.complete_run("bye", "r1", &ts(1)).await;
    let events = next_events(&mut stream, 1).await;
    app.begin_shutdown();
    let status = within("the watch to end", stream.message())
        .await
        .expect_err("a final status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.metadata.get("resume_after"), Some(&events[0].cursor));
}
contract_test!(a_watch_ends_at_shutdown_with_its_cursor);

/// With a short `--event-retention`, old events are pruned; a cursor before
/// them gets OUT_OF_RANGE, and a watch from now still works.
async fn a_pruned_cursor_is_out_of_range(backend: Backend) {
    let store = TestStore::fresh(backend);
    let storage = store.open(&Default::default()).await;
    let settings = ServerSettings {
        sweep: SweepSettings {
            interval: Duration::from_millis(50),
            // Long enough to read both events before they go.
            event_retention: Duration::from_secs(1),
            ..SweepSettings::default()
        },
        ..fast_settings()
    };
    let app = spawn_app_with(store, storage, settings).await;
    let mut stream = watch(&app, "", "").await.expect("WatchRuns");
    app.complete_run("old", "r1", &ts(1)).await;
    app.complete_run("old", "r2", &ts(2)).await;
    let events = next_events(&mut stream, 2).await;
    within("the sweep to prune both events", async {
        loop {
            match watch(&app, "", &events[0].cursor).await {
                Err(status) if status.code() == Code::OutOfRange => return,
                Err(status) => panic!("{status:?}"),
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let mut fresh = watch(&app, "", "").await.expect("from now");
    app.complete_run("old", "r3", &ts(3)).await;
    assert_eq!(
        summary(&next_events(&mut fresh, 1).await),
        [completed("old", "r3")]
    );
}
contract_test!(a_pruned_cursor_is_out_of_range);

async fn watch_runs_validates_its_request(backend: Backend) {
    let app = spawn_app(backend).await;
    for (prefix, after, field) in [
        ("", "not-a-cursor", "after"),
        ("", "AQ", "after"),
        ("bad\u{1}", "", "task_prefix"),
    ] {
        let status = watch(&app, prefix, after).await.expect_err("invalid");
        assert_eq!(status.code(), Code::InvalidArgument, "{prefix:?} {after:?}");
        assert!(status.message().starts_with(field), "{status:?}");
    }
}
contract_test!(watch_runs_validates_its_request);

/// PostgreSQL draws event ids in one order and commits them in another. A
/// transaction held open on purpose draws its id first and commits last;
/// the watcher delivers it, then the write that committed before it: in
/// transaction order, nothing skipped. The negative control shows the
/// hazard is real: at the moment the later write has committed, a reader of
/// "id > last seen" sees it alone, and its cursor then passes the held one.
async fn a_late_commit_on_postgres_is_delivered_not_skipped() {
    let app = spawn_app(Backend::Postgres).await;
    let mut stream = watch(&app, "late", "").await.expect("WatchRuns");
    let db = app.store.postgres();
    let mut held = db.client().await;
    let naive = db.client().await;
    let max_id = "SELECT COALESCE(MAX(id), 0) FROM run_events";
    let start: i64 = naive.query_one(max_id, &[]).await.expect("max id").get(0);

    let transaction = held.transaction().await.expect("BEGIN");
    let held_id: i64 = transaction
        .query_one(
            "INSERT INTO run_events (kind, task_id, run_id, timestamp)
             VALUES ('COMPLETED', 'late', 'held', '2026-01-05T00:00:00Z') RETURNING id",
            &[],
        )
        .await
        .expect("the held event")
        .get(0);
    app.complete_run("late", "after", &ts(2)).await;

    let naive_rows = naive
        .query(
            "SELECT id, run_id FROM run_events WHERE id > $1 ORDER BY id",
            &[&start],
        )
        .await
        .expect("naive read");
    let naive_runs: Vec<String> = naive_rows.iter().map(|r| r.get(1)).collect();
    let after_id: i64 = naive_rows[0].get(0);
    assert_eq!(naive_runs, ["after"], "the later write alone is visible");
    assert!(held_id < after_id, "a naive cursor passes the held event");

    transaction.commit().await.expect("COMMIT");
    let events = next_events(&mut stream, 2).await;
    assert_eq!(
        summary(&events),
        [completed("late", "held"), completed("late", "after")],
        "the held transaction first, nothing skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_commit_on_postgres_is_delivered_not_skipped_test() {
    crate::helpers::within_test_limit(
        "watch_runs::a_late_commit_on_postgres_is_delivered_not_skipped",
        a_late_commit_on_postgres_is_delivered_not_skipped(),
    )
    .await
}
