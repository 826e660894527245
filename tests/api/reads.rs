//! Reading history back: ordering by instant, pagination (also while runs
//! are replaced and added), page size cap, not-found, forged tokens.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use runstore::proto::{CompleteRunRequest, Outcome};
use tonic::Code;

use crate::helpers::{Backend, complete_request, spawn_app, summary_for, ts};

async fn runs_are_ordered_by_instant_with_ties_in_recording_order(backend: Backend) {
    let app = spawn_app(backend).await;
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

    // Rewriting a tied run records it again: it moves behind its ties.
    app.complete_run("ordered", "tie-first", "2026-01-05T11:00:00.5Z")
        .await;
    assert_eq!(
        app.run_ids("ordered").await,
        [
            "early-offset",
            "tie-second",
            "tie-third",
            "tie-first",
            "late"
        ]
    );
}
contract_test!(runs_are_ordered_by_instant_with_ties_in_recording_order);

async fn pagination_walks_the_whole_history_and_survives_new_runs(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..250u32 {
        app.complete_run("paged", &format!("run-{i:03}"), &ts(i * 10))
            .await;
    }

    let first = app.get_snapshot("paged", 0, "").await.expect("first page");
    assert_eq!(first.runs.len(), 100, "default page size");
    assert!(!first.next_page_token.is_empty());
    assert_eq!(
        first.last_run_at,
        ts(2490),
        "the latest of all, not of the page"
    );

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
}
contract_test!(pagination_walks_the_whole_history_and_survives_new_runs);

async fn page_size_is_capped_at_1000(backend: Backend) {
    let app = spawn_app(backend).await;
    // 64 at a time: well under the server's in-flight limit.
    futures::stream::iter(0..1001u32)
        .map(|i| {
            let app = &app;
            async move {
                let reply = app
                    .try_complete_run(complete_request("big", &format!("r{i:04}"), &ts(i)))
                    .await
                    .expect("write");
                assert_eq!(reply.outcome(), Outcome::AllWritten);
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let page = app.get_snapshot("big", 5000, "").await.expect("page");
    assert_eq!(page.runs.len(), 1000);
    assert!(!page.next_page_token.is_empty());
    let rest = app
        .get_snapshot("big", 5000, &page.next_page_token)
        .await
        .expect("rest");
    assert_eq!(rest.runs.len(), 1);
    assert_eq!(rest.runs[0].run_id, "r1000");
    assert_eq!(rest.next_page_token, "");
}
contract_test!(page_size_is_capped_at_1000);

async fn unknown_tasks_and_runs_are_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
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
    // Negative control: the known ones are found.
    assert!(app.get_manifest("known", "run-1").await.is_ok());
    assert_eq!(app.run_ids("known").await, ["run-1"]);
}
contract_test!(unknown_tasks_and_runs_are_not_found);

async fn a_forged_page_token_is_invalid(backend: Backend) {
    let app = spawn_app(backend).await;
    app.complete_run("task", "run-1", &ts(1)).await;
    app.complete_run("task", "run-2", &ts(2)).await;
    for forged in ["not-a-token", "AAAA", "%%%", &"A".repeat(4096)] {
        let err = app
            .get_snapshot("task", 0, forged)
            .await
            .expect_err("forged token");
        assert_eq!(err.code(), Code::InvalidArgument, "{forged:.20}");
        assert!(err.message().contains("page_token"), "{}", err.message());
    }
    // Negative control: a real token is accepted.
    let first = app.get_snapshot("task", 1, "").await.expect("page");
    let second = app
        .get_snapshot("task", 1, &first.next_page_token)
        .await
        .expect("a real token");
    assert_eq!(second.runs[0].run_id, "run-2");
}
contract_test!(a_forged_page_token_is_invalid);

// ---------------------------------------------------------------------------
// Walking while runs are replaced and added
// ---------------------------------------------------------------------------

const WALK_TASK: &str = "walk";
const ORIGINAL_RUNS: usize = 300;
const WALK_PAGE: usize = 7;

/// The RFC 3339 timestamp `micros` microseconds after a fixed base; one
/// format throughout, so text order is instant order.
fn ts_micros(micros: i64) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-05T00:00:00Z").expect("base");
    (base + chrono::Duration::microseconds(micros))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A task's history as the contract orders it: by instant, ties in
/// recording order (each write records the run anew).
#[derive(Default, Clone)]
struct Model {
    order: BTreeMap<(i64, u64), String>,
    key_of: HashMap<String, (i64, u64)>,
    writes: u64,
}

impl Model {
    fn write(&mut self, run_id: &str, micros: i64) {
        self.writes += 1;
        if let Some(old) = self.key_of.remove(run_id) {
            self.order.remove(&old);
        }
        let key = (micros, self.writes);
        self.order.insert(key, run_id.to_owned());
        self.key_of.insert(run_id.to_owned(), key);
    }

    /// Keys after `cursor`, in order.
    fn after(&self, cursor: Option<(i64, u64)>) -> Vec<((i64, u64), String)> {
        let start = match cursor {
            Some(c) => std::ops::Bound::Excluded(c),
            None => std::ops::Bound::Unbounded,
        };
        self.order
            .range((start, std::ops::Bound::Unbounded))
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
}

/// What happens after each page: writes of (run id, instant in µs).
type Mutations = Vec<(String, i64)>;

/// Picks this page's rewrites and additions from the history as it is:
/// an unreturned run moved behind the cursor, a returned run moved ahead,
/// an unreturned run rewritten in place, a new run ahead (tied with an
/// existing one) and a new run behind.
fn plan_mutations(
    model: &Model,
    cursor: (i64, u64),
    page: usize,
    touched: &mut Vec<String>,
) -> Mutations {
    let mut writes = Vec::new();
    let original = |id: &str| id.starts_with("orig-") && !touched.iter().any(|t| t == id);
    let ahead: Vec<_> = model
        .after(Some(cursor))
        .into_iter()
        .filter(|(_, id)| original(id))
        .collect();
    if ahead.len() < 8 {
        return writes;
    }
    let behind: Vec<_> = model
        .order
        .range(..cursor)
        .filter(|(_, id)| original(id))
        .map(|(_, id)| id.clone())
        .collect();
    let last = model.order.keys().next_back().expect("a run").0;
    // Ahead → behind: an offset-based walk would skip a run for this.
    writes.push((ahead[2].1.clone(), cursor.0 - 1));
    // Behind → ahead.
    if let Some(id) = behind.first() {
        writes.push((id.clone(), last + 1_000_000));
    }
    // Rewritten in place, still ahead.
    writes.push((ahead[4].1.clone(), ahead[4].0.0));
    // New runs: one ahead tied with an existing run, one behind.
    writes.push((format!("new-ahead-{page:03}"), ahead[6].0.0));
    writes.push((format!("new-behind-{page:03}"), cursor.0 - 2));
    for (id, _) in &writes {
        if id.starts_with("orig-") {
            touched.push(id.clone());
        }
    }
    writes
}

/// A page-token walk of a task, page_size 7, rewriting and adding runs
/// between pages: every run that existed at the start and was not
/// rewritten appears exactly once, and the walk is exactly the keyset walk
/// the contract's order implies.
async fn a_walk_sees_every_untouched_run_once_while_others_are_replaced(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut model = Model::default();
    let write = |run_id: String, micros: i64| {
        let app = &app;
        async move {
            let timestamp = ts_micros(micros);
            let reply = app
                .try_complete_run(CompleteRunRequest {
                    summary_json: summary_for(WALK_TASK, &run_id, &timestamp),
                    task_id: WALK_TASK.into(),
                    run_id,
                    timestamp,
                })
                .await
                .expect("CompleteRun");
            assert_eq!(reply.outcome(), Outcome::AllWritten);
        }
    };
    // One write at a time, so recording order is the order sent.
    for i in 0..ORIGINAL_RUNS {
        let (id, micros) = (format!("orig-{i:03}"), i as i64 * 1_000_000);
        write(id.clone(), micros).await;
        model.write(&id, micros);
    }
    let originals: Vec<String> = model.order.values().cloned().collect();

    let mut walked: Vec<String> = Vec::new();
    let mut plan: Vec<Mutations> = Vec::new();
    let mut touched: Vec<String> = Vec::new();
    let mut token = String::new();
    let mut cursor = None;
    loop {
        let page = app
            .get_snapshot(WALK_TASK, WALK_PAGE as u32, &token)
            .await
            .expect("page");
        assert!(page.runs.len() <= WALK_PAGE);
        // The page is the model's next keyset page.
        let expected: Vec<_> = model.after(cursor).into_iter().take(WALK_PAGE).collect();
        let got: Vec<_> = page.runs.iter().map(|r| r.run_id.clone()).collect();
        let want: Vec<_> = expected.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(got, want, "page {} of the walk", plan.len());
        walked.extend(got);
        if page.next_page_token.is_empty() {
            assert_eq!(model.after(expected.last().map(|(k, _)| *k)).len(), 0);
            break;
        }
        cursor = expected.last().map(|(k, _)| *k);
        token = page.next_page_token;
        let mutations = plan_mutations(&model, cursor.expect("cursor"), plan.len(), &mut touched);
        for (id, micros) in &mutations {
            write(id.clone(), *micros).await;
            model.write(id, *micros);
        }
        plan.push(mutations);
    }

    let count = |ids: &[String], id: &str| ids.iter().filter(|w| *w == id).count();
    let untouched: Vec<_> = originals
        .iter()
        .filter(|id| !touched.contains(id))
        .collect();
    for id in &untouched {
        assert_eq!(count(&walked, id), 1, "{id} appears exactly once");
    }
    let rewrites: usize = plan
        .iter()
        .flatten()
        .filter(|(id, _)| id.starts_with("orig-"))
        .count();
    println!(
        "walk with replace: pages={} originals={ORIGINAL_RUNS} untouched={} rewrites={rewrites} added={} walked={}",
        plan.len() + 1,
        untouched.len(),
        plan.iter().flatten().count() - rewrites,
        walked.len()
    );
    assert!(rewrites >= 60, "the walk was disturbed enough: {rewrites}");

    // Negative control: the same history walked by offset (page n = rows
    // 7n..7n+7 of the history at that moment) skips untouched runs, so the
    // check above is not vacuous.
    let mut offset_model = Model::default();
    for i in 0..ORIGINAL_RUNS {
        offset_model.write(&format!("orig-{i:03}"), i as i64 * 1_000_000);
    }
    let mut by_offset = Vec::new();
    for page in 0.. {
        let rows: Vec<_> = offset_model.after(None);
        let slice: Vec<_> = rows
            .iter()
            .skip(page * WALK_PAGE)
            .take(WALK_PAGE)
            .map(|(_, id)| id.clone())
            .collect();
        if slice.is_empty() {
            break;
        }
        by_offset.extend(slice);
        for (id, micros) in plan.get(page).into_iter().flatten() {
            offset_model.write(id, *micros);
        }
    }
    let missed = untouched
        .iter()
        .filter(|id| count(&by_offset, id) != 1)
        .count();
    assert!(missed > 0, "an offset walk would have passed too");
}
contract_test!(a_walk_sees_every_untouched_run_once_while_others_are_replaced);
