//! Reading history back: ordering by instant, pagination, not-found.

use tonic::Code;

use crate::helpers::{complete_request, spawn_app, ts};

#[tokio::test]
async fn runs_are_ordered_by_instant_with_ties_in_recording_order() {
    crate::helpers::within_test_limit(
        "runs_are_ordered_by_instant_with_ties_in_recording_order",
        async move {
            let app = spawn_app().await;
            // Text order disagrees with instant order: offsets and fraction lengths differ.
            let writes = [
                ("late", "2026-01-05T12:00:00Z"),
                ("early-offset", "2026-01-05T12:30:00+02:00"), // 10:30Z
                ("tie-first", "2026-01-05T11:00:00.5Z"),
                ("tie-second", "2026-01-05T11:00:00.500000000Z"),
                ("tie-third", "2026-01-05T12:00:00.500+01:00"), // 11:00:00.5Z
            ];
            for (run_id, timestamp) in writes {
                app.complete_run("ordered", run_id, timestamp).await;
            }
            let page = app.get_snapshot("ordered", 0, "").await.expect("snapshot");
            let ids: Vec<_> = page.runs.iter().map(|r| r.run_id.as_str()).collect();
            assert_eq!(
                ids,
                [
                    "early-offset",
                    "tie-first",
                    "tie-second",
                    "tie-third",
                    "late"
                ]
            );
            let stamps: Vec<_> = page.runs.iter().map(|r| r.timestamp.as_str()).collect();
            assert_eq!(
                stamps[0], "2026-01-05T12:30:00+02:00",
                "timestamps come back as sent"
            );
            assert_eq!(page.last_run_at, "2026-01-05T12:00:00Z");
        },
    )
    .await
}

#[tokio::test]
async fn pagination_walks_the_whole_history_and_survives_new_runs() {
    crate::helpers::within_test_limit(
        "pagination_walks_the_whole_history_and_survives_new_runs",
        async move {
            let app = spawn_app().await;
            for i in 0..250u32 {
                app.complete_run("paged", &format!("run-{i:03}"), &ts(i * 10))
                    .await;
            }

            let first = app.get_snapshot("paged", 0, "").await.expect("first page");
            assert_eq!(first.runs.len(), 100, "default page size");
            assert!(!first.next_page_token.is_empty());

            // A run added behind the cursor and one ahead of it while paging.
            app.complete_run("paged", "run-behind", &ts(5)).await;
            app.complete_run("paged", "run-ahead", &ts(10_000)).await;

            let mut ids: Vec<String> = first.runs.into_iter().map(|r| r.run_id).collect();
            let mut token = first.next_page_token;
            while !token.is_empty() {
                let page = app.get_snapshot("paged", 70, &token).await.expect("page");
                assert!(page.runs.len() <= 70);
                ids.extend(page.runs.into_iter().map(|r| r.run_id));
                token = page.next_page_token;
            }
            let mut expected: Vec<String> = (0..250).map(|i| format!("run-{i:03}")).collect();
            expected.push("run-ahead".into());
            assert_eq!(
                ids, expected,
                "every run once, in order; the token stayed valid"
            );

            let capped = app
                .get_snapshot("paged", 5000, "")
                .await
                .expect("capped page");
            assert_eq!(capped.runs.len(), 252, "everything fits under the 1000 cap");
            assert_eq!(capped.next_page_token, "");
        },
    )
    .await
}

#[tokio::test]
async fn page_size_is_capped_at_1000() {
    crate::helpers::within_test_limit("page_size_is_capped_at_1000", async move {
        let app = spawn_app().await;
        // 64 at a time: well under the server's in-flight limit.
        use futures::StreamExt;
        futures::stream::iter(0..1001u32)
            .map(|i| {
                let app = &app;
                async move {
                    let reply = app
                        .try_complete_run(complete_request("big", &format!("r{i:04}"), &ts(i)))
                        .await
                        .expect("write");
                    assert_eq!(reply.outcome(), runstore::proto::Outcome::AllWritten);
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<()>>()
            .await;
        let page = app.get_snapshot("big", 5000, "").await.expect("page");
        assert_eq!(page.runs.len(), 1000);
        let rest = app
            .get_snapshot("big", 5000, &page.next_page_token)
            .await
            .expect("rest");
        assert_eq!(rest.runs.len(), 1);
        assert_eq!(rest.runs[0].run_id, "r1000");
    })
    .await
}

#[tokio::test]
async fn unknown_tasks_and_runs_are_not_found() {
    crate::helpers::within_test_limit("unknown_tasks_and_runs_are_not_found", async move {
        let app = spawn_app().await;
        app.complete_run("known", "run-1", &ts(1)).await;

        let err = app
            .get_manifest("known", "run-2")
            .await
            .expect_err("unknown run");
        assert_eq!(err.code(), Code::NotFound);
        let err = app
            .get_manifest("unknown", "run-1")
            .await
            .expect_err("unknown task");
        assert_eq!(err.code(), Code::NotFound);
        let err = app
            .get_snapshot("unknown", 0, "")
            .await
            .expect_err("unknown task");
        assert_eq!(err.code(), Code::NotFound);
    })
    .await
}

#[tokio::test]
async fn a_forged_page_token_is_invalid() {
    crate::helpers::within_test_limit("a_forged_page_token_is_invalid", async move {
        let app = spawn_app().await;
        app.complete_run("task", "run-1", &ts(1)).await;
        let err = app
            .get_snapshot("task", 0, "not-a-token")
            .await
            .expect_err("forged token");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("page_token"), "{}", err.message());
    })
    .await
}
