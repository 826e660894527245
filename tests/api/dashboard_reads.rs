//! Reads a dashboard or sync worker needs: newest-first pages (the exact
//! reverse), pages without summaries, and a GetManifest that skips the
//! transfer of a manifest the caller already holds.

use runstore::proto::{
    CompleteRunRequest, GetManifestRequest, GetTaskSnapshotRequest, GetTaskSnapshotResponse,
    RunEntry,
};
use tonic::Code;

use crate::helpers::{Backend, TestApp, sha256_hex, spawn_app, summary_for, ts};

async fn page(
    app: &TestApp,
    task_id: &str,
    page_size: u32,
    page_token: &str,
    newest_first: bool,
    omit_summaries: bool,
) -> Result<GetTaskSnapshotResponse, tonic::Status> {
    app.client()
        .get_task_snapshot(GetTaskSnapshotRequest {
            task_id: task_id.into(),
            page_size,
            page_token: page_token.into(),
            newest_first,
            omit_summaries,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A whole walk in one order; also checks every page's last_run_at.
async fn walk(app: &TestApp, task_id: &str, newest_first: bool, omit: bool) -> Vec<RunEntry> {
    let (mut runs, mut token) = (Vec::new(), String::new());
    for _ in 0..1000 {
        let reply = page(app, task_id, 4, &token, newest_first, omit)
            .await
            .expect("page");
        assert_eq!(reply.last_run_at, ts(74), "last_run_at in every page");
        runs.extend(reply.runs);
        if reply.next_page_token.is_empty() {
            return runs;
        }
        token = reply.next_page_token;
    }
    panic!("the walk did not end");
}

/// 25 runs, with ties of one instant and a rewrite among them.
async fn write_history(app: &TestApp) {
    for i in 0..25u32 {
        // Runs 10..15 share one instant: their order is recording order.
        let secs = match i {
            0..10 => i,
            10..15 => 50,
            _ => i + 50,
        };
        app.complete_run("dash", &format!("r{i:02}"), &ts(secs))
            .await;
    }
    app.complete_run("dash", "r11", &ts(50)).await;
}

async fn newest_first_is_the_exact_reverse_and_summaries_can_be_left_out(backend: Backend) {
    let app = spawn_app(backend).await;
    write_history(&app).await;
    let oldest_first = walk(&app, "dash", false, false).await;
    assert_eq!(oldest_first.len(), 25);
    let mut reversed = walk(&app, "dash", true, false).await;
    reversed.reverse();
    assert_eq!(reversed, oldest_first, "newest_first is the exact reverse");
    let tied: Vec<_> = oldest_first[10..15]
        .iter()
        .map(|r| r.run_id.as_str())
        .collect();
    assert_eq!(
        tied,
        ["r10", "r12", "r13", "r14", "r11"],
        "ties in recording order"
    );

    for newest_first in [false, true] {
        let mut lean = walk(&app, "dash", newest_first, true).await;
        if newest_first {
            lean.reverse();
        }
        assert_eq!(lean.len(), oldest_first.len());
        for (lean, full) in lean.iter().zip(&oldest_first) {
            assert_eq!(
                (&lean.run_id, &lean.timestamp),
                (&full.run_id, &full.timestamp)
            );
            assert!(lean.summary_json.is_empty(), "omit_summaries leaves it out");
            assert!(!full.summary_json.is_empty());
        }
    }
}
contract_test!(newest_first_is_the_exact_reverse_and_summaries_can_be_left_out);

async fn a_page_token_belongs_to_its_order(backend: Backend) {
    let app = spawn_app(backend).await;
    write_history(&app).await;
    for newest_first in [false, true] {
        let first = page(&app, "dash", 4, "", newest_first, false)
            .await
            .expect("first page");
        let err = page(
            &app,
            "dash",
            4,
            &first.next_page_token,
            !newest_first,
            false,
        )
        .await
        .expect_err("the other order");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with("page_token") && err.message().contains("other order"),
            "{err:?}"
        );
        // omit_summaries may change between pages: it is not part of the order.
        let second = page(&app, "dash", 4, &first.next_page_token, newest_first, true)
            .await
            .expect("same order, no summaries");
        assert_eq!(second.runs.len(), 4);
    }
}
contract_test!(a_page_token_belongs_to_its_order);

async fn get_manifest_skips_a_manifest_the_caller_already_holds(backend: Backend) {
    let app = spawn_app(backend).await;
    app.complete_run("sync", "r1", &ts(1)).await;
    let held = app.get_manifest("sync", "r1").await.expect("manifest");
    assert!(!held.not_modified);
    let conditional = |if_none_match: String| {
        let mut client = app.client();
        async move {
            client
                .get_manifest(GetManifestRequest {
                    task_id: "sync".into(),
                    run_id: "r1".into(),
                    if_none_match,
                })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let same = conditional(held.sha256.clone()).await.expect("conditional");
    assert!(same.not_modified);
    assert!(same.summary_json.is_empty(), "no transfer");
    assert_eq!(
        (&same.sha256, &same.written_at),
        (&held.sha256, &held.written_at)
    );

    // Rewritten with another summary: the held sha no longer matches.
    let mut summary: serde_json::Value =
        serde_json::from_str(&summary_for("sync", "r1", &ts(1))).expect("JSON");
    summary["attempt"] = 2.into();
    let summary_json = summary.to_string();
    app.try_complete_run(CompleteRunRequest {
        task_id: "sync".into(),
        run_id: "r1".into(),
        timestamp: ts(1),
        summary_json: summary_json.clone(),
    })
    .await
    .expect("rewrite");
    let changed = conditional(held.sha256.clone()).await.expect("changed");
    assert!(!changed.not_modified);
    assert_eq!(changed.summary_json, summary_json);
    assert_eq!(changed.sha256, sha256_hex(summary_json.as_bytes()));

    for bad in [
        "xyz",
        &held.sha256.to_uppercase(),
        &format!("{}0", held.sha256),
    ] {
        let err = conditional(bad.to_owned()).await.expect_err("not a sha256");
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert!(err.message().starts_with("if_none_match"), "{err:?}");
    }
    let err = app
        .get_manifest("sync", "r2")
        .await
        .expect_err("unknown run");
    assert_eq!(err.code(), Code::NotFound);
}
contract_test!(get_manifest_skips_a_manifest_the_caller_already_holds);
