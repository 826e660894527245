//! Every invalid request gets INVALID_ARGUMENT naming the field and the rule,
//! nothing is written, and the server keeps serving.

use runstore::{
    proto::{CompleteRunRequest, Outcome},
    server::ServerSettings,
    service::ServiceSettings,
    storage::FsStorage,
};
use std::sync::Arc;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{
    complete_request, fast_settings, files_under, spawn_app, spawn_app_with, summary_for, ts,
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

#[tokio::test]
async fn every_rule_is_rejected_with_invalid_argument_and_nothing_is_written() {
    crate::helpers::within_test_limit(
        "every_rule_is_rejected_with_invalid_argument_and_nothing_is_written",
        async move {
            let app = spawn_app().await;
            for (request, field, rule) in invalid_requests() {
                let err = app
                    .try_complete_run(request.clone())
                    .await
                    .expect_err("must be rejected");
                assert_eq!(err.code(), Code::InvalidArgument, "{request:?}: {err:?}");
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
            assert!(files_under(&app.data_path().join("runs")).is_empty());
            assert!(files_under(&app.data_path().join("tasks")).is_empty());

            // The server keeps serving.
            let reply = app.complete_run("task", "run", &ts(1)).await;
            assert_eq!(reply.outcome(), Outcome::AllWritten);
        },
    )
    .await
}

#[tokio::test]
async fn reads_reject_ids_that_could_reach_outside_the_data() {
    crate::helpers::within_test_limit(
        "reads_reject_ids_that_could_reach_outside_the_data",
        async move {
            let app = spawn_app().await;
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
            let err = app
                .get_snapshot("../tasks", 0, "")
                .await
                .expect_err("must be rejected");
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(err.message().starts_with("task_id: "), "{}", err.message());
        },
    )
    .await
}

#[tokio::test]
async fn an_oversized_summary_is_resource_exhausted_and_the_server_stays_up() {
    crate::helpers::within_test_limit(
        "an_oversized_summary_is_resource_exhausted_and_the_server_stays_up",
        async move {
            let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
            let storage = Arc::new(FsStorage::open(dir.path()).expect("open"));
            let settings = ServerSettings {
                service: ServiceSettings {
                    max_summary_bytes: 64 * 1024,
                    ..ServiceSettings::default()
                },
                ..fast_settings()
            };
            let app = spawn_app_with(dir, storage, settings).await;

            for size in [64 * 1024 + 1, 100 * 1024, 129 * 1024] {
                let request =
                    with(|r| r.summary_json = format!("{{\"pad\":\"{}\"}}", "x".repeat(size - 10)));
                let err = app.try_complete_run(request).await.expect_err("oversized");
                assert_eq!(err.code(), Code::ResourceExhausted, "{size} bytes: {err:?}");
                assert!(err.message().contains("summary_json"), "{}", err.message());
            }
            assert!(files_under(&app.data_path().join("runs")).is_empty());

            let at_limit = with(|r| {
                r.summary_json = format!("{{\"pad\":\"{}\"}}", "x".repeat(64 * 1024 - 10))
            });
            assert_eq!(at_limit.summary_json.len(), 64 * 1024);
            let reply = app
                .try_complete_run(at_limit)
                .await
                .expect("at the limit is fine");
            assert_eq!(reply.outcome(), Outcome::AllWritten);
        },
    )
    .await
}

#[tokio::test]
async fn the_default_limit_is_4_mib() {
    crate::helpers::within_test_limit("the_default_limit_is_4_mib", async move {
        let app = spawn_app().await;
        let over =
            with(|r| r.summary_json = format!("{{\"pad\":\"{}\"}}", "x".repeat(4 * 1024 * 1024)));
        let err = app.try_complete_run(over).await.expect_err("over 4 MiB");
        assert_eq!(err.code(), Code::ResourceExhausted);
        let reply = app.complete_run("task", "run", &ts(1)).await;
        assert_eq!(reply.outcome(), Outcome::AllWritten);
    })
    .await
}

#[tokio::test]
async fn look_alike_characters_stay_inside_one_directory() {
    crate::helpers::within_test_limit(
        "look_alike_characters_stay_inside_one_directory",
        async move {
            let app = spawn_app().await;
            // Full-width solidus, division slash, fraction slash, one-dot leader,
            // a C1 control: none is a path separator, so each id stays one name.
            for task in [
                "a\u{ff0f}b",
                "a\u{2215}b",
                "a\u{2044}b",
                "\u{2024}\u{2024}",
                "a\u{85}b",
                &"é".repeat(127),
            ] {
                let reply = app
                    .try_complete_run(ids(task, "run"))
                    .await
                    .expect("accepted");
                assert_eq!(reply.outcome(), Outcome::AllWritten, "{task:?}");
                assert!(
                    app.data_path()
                        .join("runs")
                        .join(task)
                        .join("run/manifest.json")
                        .is_file(),
                    "{task:?}"
                );
            }
            let entries = std::fs::read_dir(app.data_path().join("runs"))
                .expect("runs")
                .count();
            assert_eq!(entries, 6, "each id is exactly one directory under runs/");
        },
    )
    .await
}
