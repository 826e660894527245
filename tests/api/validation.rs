//! Every invalid request gets INVALID_ARGUMENT naming the field and the rule,
//! nothing is written, and the server keeps serving.

use runstore::{
    api::DEFAULT_MAX_SUMMARY_BYTES,
    proto::{CompleteRunRequest, GetManifestRequest, Outcome},
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{
    Backend, RowCounts, Table, TestStore, complete_request, spawn_app, spawn_app_with, summary_for,
    ts, with_summary_limit,
};

fn with(mutate: impl FnOnce(&mut CompleteRunRequest)) -> CompleteRunRequest {
    let mut request = complete_request("task", "run", &ts(1));
    mutate(&mut request);
    request
}

/// A request with both ids set, and a summary that matches them.
fn ids(task_id: &str, run_id: &str) -> CompleteRunRequest {
    let mut request = complete_request(task_id, run_id, &ts(1));
    request.summary_json = "{}".into();
    request
}

fn invalid_requests() -> Vec<(CompleteRunRequest, &'static str, &'static str)> {
    let mut cases = vec![
        (ids("", "run"), "task_id", "must not be empty"),
        (ids(&"t".repeat(256), "run"), "task_id", "at most 255 bytes"),
        (ids(&"é".repeat(128), "run"), "task_id", "at most 255 bytes"),
        (ids("a\u{0}b", "run"), "task_id", "control characters"),
        (ids("a\u{1f}b", "run"), "task_id", "control characters"),
        (ids("a\u{7f}b", "run"), "task_id", "control characters"),
        (ids("..", "run"), "task_id", "must not be '..'"),
        (ids(".git", "run"), "task_id", "must not start with '.'"),
        (
            ids("task.", "run"),
            "task_id",
            "must not end with '.' or a space",
        ),
        (
            ids("task ", "run"),
            "task_id",
            "must not end with '.' or a space",
        ),
        (ids("task", ""), "run_id", "must not be empty"),
        (
            ids("task", "../../etc/passwd"),
            "run_id",
            "must not contain",
        ),
        (ids("task", "run\n"), "run_id", "control characters"),
        (ids("task", "."), "run_id", "must not start with '.'"),
        (
            with(|r| r.timestamp = String::new()),
            "timestamp",
            "must not be empty",
        ),
        (
            with(|r| r.timestamp = "yesterday".into()),
            "timestamp",
            "RFC 3339",
        ),
        (
            with(|r| r.timestamp = "2026-01-05".into()),
            "timestamp",
            "RFC 3339",
        ),
        (
            with(|r| r.timestamp = "2026-13-05T00:00:00Z".into()),
            "timestamp",
            "RFC 3339",
        ),
        (
            with(|r| r.timestamp = "2026-01-05T00:00:00".into()),
            "timestamp",
            "RFC 3339",
        ),
        (
            // One byte over the 64-byte limit on timestamps.
            with(|r| r.timestamp = format!("2026-01-05T00:00:00.{}Z", "1".repeat(44))),
            "timestamp",
            "at most 64 bytes, got 65",
        ),
        (
            with(|r| r.timestamp = format!("2026-01-05T00:00:00.{}Z", "1".repeat(69_979))),
            "timestamp",
            "at most 64 bytes, got 70000",
        ),
        (
            with(|r| r.summary_json = String::new()),
            "summary_json",
            "JSON object",
        ),
        (
            with(|r| r.summary_json = "[1,2]".into()),
            "summary_json",
            "JSON object",
        ),
        (
            with(|r| r.summary_json = "\"text\"".into()),
            "summary_json",
            "JSON object",
        ),
        (
            with(|r| r.summary_json = "42".into()),
            "summary_json",
            "JSON object",
        ),
        (
            with(|r| r.summary_json = "null".into()),
            "summary_json",
            "JSON object",
        ),
        (
            with(|r| r.summary_json = "{\"a\":1".into()),
            "summary_json",
            "JSON object",
        ),
        (
            with(|r| r.summary_json = "{} trailing".into()),
            "summary_json",
            "JSON object",
        ),
        (
            with(|r| r.summary_json = summary_for("other-task", "run", "x")),
            "summary_json",
            "\"taskId\"",
        ),
        (
            with(|r| r.summary_json = summary_for("task", "other-run", "x")),
            "summary_json",
            "\"runId\"",
        ),
        (
            with(|r| r.summary_json = r#"{"taskId":7}"#.into()),
            "summary_json",
            "must be a string",
        ),
        (
            with(|r| r.summary_json = r#"{"runId":"run","runId":"run"}"#.into()),
            "summary_json",
            "duplicate key",
        ),
        (
            with(|r| {
                r.summary_json = format!("{{\"a\":{}{}}}", "[".repeat(5000), "]".repeat(5000))
            }),
            "summary_json",
            "deep",
        ),
    ];
    for c in ['<', '>', ':', '"', '|', '?', '*', '/', '\\'] {
        cases.push((
            ids(&format!("a{c}b"), "run"),
            "task_id",
            "must not contain any of",
        ));
    }
    for name in [
        "CON", "prn", "Aux.json", "nul.txt", "COM1", "com9.log", "LPT1", "lpt9", "CONIN$",
        "conout$",
    ] {
        cases.push((ids(name, "run"), "task_id", "reserved device name"));
        cases.push((ids("task", name), "run_id", "reserved device name"));
    }
    cases
}

/// Nothing of any run is stored: no rows besides the readiness probe's.
fn assert_nothing_stored(app: &crate::helpers::TestApp) {
    assert_eq!(app.db().row_counts(), RowCounts::default());
}

async fn every_rule_is_rejected_with_invalid_argument_and_nothing_is_written(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = invalid_requests();
    // The 70,000-byte timestamp is among them.
    assert!(cases.iter().any(|(r, _, _)| r.timestamp.len() == 70_000));
    for (request, field, rule) in cases {
        let err = app
            .try_complete_run(request.clone())
            .await
            .expect_err("must be rejected");
        let shown = format!("{:.200?}", request);
        assert_eq!(err.code(), Code::InvalidArgument, "{shown}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}: ")),
            "names the field: {}",
            err.message()
        );
        assert!(
            err.message().contains(rule),
            "names the rule {rule:?}: {}",
            err.message()
        );
        let violations = err
            .get_details_bad_request()
            .expect("BadRequest details")
            .field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, field);
    }
    assert_nothing_stored(&app);

    // The server keeps serving.
    let reply = app.complete_run("task", "run", &ts(1)).await;
    assert_eq!(reply.outcome(), Outcome::AllWritten);
    // Negative control: the row count sees a write.
    assert_eq!(
        app.db().row_counts(),
        RowCounts {
            tasks: 1,
            snapshot_entries: 1,
            manifests: 1
        }
    );
}
contract_test!(every_rule_is_rejected_with_invalid_argument_and_nothing_is_written);

async fn reads_reject_ids_that_could_reach_outside_the_data(backend: Backend) {
    let app = spawn_app(backend).await;
    for (task, run) in [
        ("..", "x"),
        ("task", "../../../etc/passwd"),
        ("/etc", "passwd"),
        ("", "run"),
    ] {
        let err = app
            .get_manifest(task, run)
            .await
            .expect_err("must be rejected");
        assert_eq!(err.code(), Code::InvalidArgument, "{task:?}/{run:?}");
    }
    // A valid id that looks like SQL is just an id nobody wrote.
    let err = app
        .get_manifest("task'; DROP TABLE manifests; --", "run")
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = app
        .get_snapshot("../tasks", 0, "")
        .await
        .expect_err("must be rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("task_id: "), "{}", err.message());
    // Ids are data, never SQL: the tables are all still there.
    app.complete_run("task", "run", &ts(1)).await;
    assert_eq!(app.db().count(Table::Manifests, "task"), 1);
}
contract_test!(reads_reject_ids_that_could_reach_outside_the_data);

async fn an_oversized_summary_is_resource_exhausted_and_the_server_stays_up(backend: Backend) {
    let store = TestStore::fresh(backend);
    let (options, settings) = with_summary_limit(64 * 1024);
    let storage = store.open(&options).await;
    let app = spawn_app_with(store, storage, settings).await;
    app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;

    for size in [64 * 1024 + 1, 100 * 1024, 129 * 1024] {
        let request =
            with(|r| r.summary_json = format!("{{\"pad\":\"{}\"}}", "x".repeat(size - 10)));
        assert_eq!(request.summary_json.len(), size);
        let err = app.try_complete_run(request).await.expect_err("oversized");
        assert_eq!(err.code(), Code::ResourceExhausted, "{size} bytes: {err:?}");
        assert!(err.message().contains("summary_json"), "{}", err.message());
    }
    assert_nothing_stored(&app);

    let at_limit =
        with(|r| r.summary_json = format!("{{\"pad\":\"{}\"}}", "x".repeat(64 * 1024 - 10)));
    assert_eq!(at_limit.summary_json.len(), 64 * 1024);
    let reply = app
        .try_complete_run(at_limit)
        .await
        .expect("at the limit is fine");
    assert_eq!(reply.outcome(), Outcome::AllWritten);
}
contract_test!(an_oversized_summary_is_resource_exhausted_and_the_server_stays_up);

/// The default limit is 4 MiB − 64 KiB, and a summary at the limit can be
/// read back by a client with gRPC's default 4 MiB receive limit.
async fn the_default_limit_is_4_mib_minus_64_kib(backend: Backend) {
    assert_eq!(DEFAULT_MAX_SUMMARY_BYTES, 4_128_768);
    let app = spawn_app(backend).await;
    let padded = |size: usize| {
        with(|r| r.summary_json = format!("{{\"pad\":\"{}\"}}", "x".repeat(size - 10)))
    };

    let over = padded(DEFAULT_MAX_SUMMARY_BYTES + 1);
    let err = app
        .try_complete_run(over)
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("4128768"), "{}", err.message());
    assert_nothing_stored(&app);

    let at_limit = padded(DEFAULT_MAX_SUMMARY_BYTES);
    assert_eq!(at_limit.summary_json.len(), 4_128_768);
    let reply = app
        .try_complete_run(at_limit.clone())
        .await
        .expect("at the limit");
    assert_eq!(
        reply.outcome(),
        Outcome::AllWritten,
        "{:?}",
        reply.primary_error
    );

    // A client with the default receive limit reads it back, whole.
    let mut default_client =
        runstore::proto::persistence_service_client::PersistenceServiceClient::new(
            app.channel.clone(),
        );
    let manifest = default_client
        .get_manifest(GetManifestRequest {
            task_id: "task".into(),
            run_id: "run".into(),
            ..Default::default()
        })
        .await
        .expect("GetManifest within 4 MiB")
        .into_inner();
    assert_eq!(manifest.summary_json, at_limit.summary_json);
    let page = crate::helpers::all_runs(&mut default_client, "task", 0)
        .await
        .expect("GetTaskSnapshot within 4 MiB");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].summary_json, at_limit.summary_json);
}
contract_test!(the_default_limit_is_4_mib_minus_64_kib);

async fn look_alike_characters_are_ids_of_their_own(backend: Backend) {
    let app = spawn_app(backend).await;
    // Full-width solidus, division slash, fraction slash, one-dot leader,
    // a C1 control, a quote: none is a separator or special, so each id is
    // one id, stored as sent.
    let tasks = [
        "a\u{ff0f}b",
        "a\u{2215}b",
        "a\u{2044}b",
        "\u{2024}\u{2024}",
        "a\u{85}b",
        "it's",
        &"é".repeat(127),
    ];
    for task in tasks {
        let reply = app
            .try_complete_run(ids(task, "run"))
            .await
            .expect("accepted");
        assert_eq!(reply.outcome(), Outcome::AllWritten, "{task:?}");
        let manifest = reply.manifest.expect("manifest");
        assert_eq!(manifest.location, format!("manifests/{task}/run"));
        assert!(app.get_manifest(task, "run").await.is_ok(), "{task:?}");
    }
    let mut expected: Vec<String> = tasks.iter().map(|t| t.to_string()).collect();
    expected.sort();
    let db = app.db();
    for table in [Table::Manifests, Table::SnapshotEntries] {
        assert_eq!(db.task_ids(table), expected, "{table:?}: one id each");
    }
}
contract_test!(look_alike_characters_are_ids_of_their_own);
