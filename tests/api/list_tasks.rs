//! ListTasks: task id order by UTF-8 bytes, a literal case-sensitive prefix,
//! cursor pages that belong to their prefix, counts kept by the writes.

use runstore::proto::{ListTasksRequest, ListTasksResponse, TaskSummary};
use tonic::Code;

use crate::helpers::{Backend, TestApp, spawn_app, ts};

async fn list(
    app: &TestApp,
    prefix: &str,
    page_size: u32,
    page_token: &str,
) -> Result<ListTasksResponse, tonic::Status> {
    app.client()
        .list_tasks(ListTasksRequest {
            prefix: prefix.into(),
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every task with the prefix, page by page (bounded).
async fn walk(app: &TestApp, prefix: &str, page_size: u32) -> (Vec<TaskSummary>, usize) {
    let (mut tasks, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let page = list(app, prefix, page_size, &token)
            .await
            .expect("ListTasks");
        assert!(page.tasks.len() <= page_size as usize);
        tasks.extend(page.tasks);
        pages += 1;
        assert!(pages < 1000, "the walk ends");
        if page.next_page_token.is_empty() {
            return (tasks, pages);
        }
        token = page.next_page_token;
    }
}

fn ids(tasks: &[TaskSummary]) -> Vec<&str> {
    tasks.iter().map(|t| t.task_id.as_str()).collect()
}

const TASK_IDS: &[&str] = &[
    "b", "a", "A", "ab", "a%", "a_b", "é", "job-2", "job-10", "job-1", "jo", "z",
];

async fn list_tasks_pages_through_tasks_in_byte_order(backend: Backend) {
    let app = spawn_app(backend).await;
    for (n, task) in TASK_IDS.iter().enumerate() {
        // Task n gets n % 3 + 1 runs, the latest at second 100 + n.
        for r in 0..=(n % 3) as u32 {
            app.complete_run(task, &format!("r{r}"), &ts(100 + n as u32 - r))
                .await;
        }
    }
    let mut expected: Vec<&str> = TASK_IDS.to_vec();
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));

    let (tasks, pages) = walk(&app, "", 5).await;
    assert_eq!(
        ids(&tasks),
        expected,
        "byte order; the probe's row is never listed"
    );
    assert_eq!(pages, 3, "12 tasks in pages of 5");
    for task in &tasks {
        let n = TASK_IDS
            .iter()
            .position(|t| *t == task.task_id)
            .expect("known");
        assert_eq!(task.run_count, (n % 3 + 1) as u64, "{}", task.task_id);
        assert_eq!(task.last_run_at, ts(100 + n as u32), "{}", task.task_id);
    }
    // page_size 0 is the default (100): one page.
    let page = list(&app, "", 0, "").await.expect("default page");
    assert_eq!(ids(&page.tasks), expected);
    assert!(page.next_page_token.is_empty());
}
contract_test!(list_tasks_pages_through_tasks_in_byte_order);

async fn list_tasks_prefix_is_literal_and_case_sensitive(backend: Backend) {
    let app = spawn_app(backend).await;
    for task in TASK_IDS {
        app.complete_run(task, "r", &ts(1)).await;
    }
    for (prefix, wanted) in [
        ("a", &["a", "a%", "a_b", "ab"][..]),
        ("a%", &["a%"]), // not a LIKE pattern
        ("a_", &["a_b"]),
        ("A", &["A"]),
        ("job-1", &["job-1", "job-10"]),
        ("jo", &["jo", "job-1", "job-10", "job-2"]),
        ("é", &["é"]),
        ("zz", &[]),
    ] {
        for page_size in [1, 100] {
            let (tasks, _) = walk(&app, prefix, page_size).await;
            assert_eq!(
                ids(&tasks),
                wanted,
                "prefix {prefix:?}, pages of {page_size}"
            );
        }
    }
}
contract_test!(list_tasks_prefix_is_literal_and_case_sensitive);

async fn list_tasks_tokens_belong_to_their_prefix(backend: Backend) {
    let app = spawn_app(backend).await;
    for task in TASK_IDS {
        app.complete_run(task, "r", &ts(1)).await;
    }
    let page = list(&app, "a", 1, "").await.expect("first page");
    let token = page.next_page_token;
    assert!(!token.is_empty());
    for (prefix, token, rule) in [
        ("b", token.as_str(), "prefix"),
        ("", "not-a-token", "ListTasks"),
        ("a", "AQ", "ListTasks"),
    ] {
        let err = list(&app, prefix, 1, token).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{prefix:?} {token:?}");
        assert!(
            err.message().starts_with("page_token") && err.message().contains(rule),
            "{err:?}"
        );
    }
    // A snapshot token is not a ListTasks token.
    app.complete_run("a", "r2", &ts(2)).await;
    let snapshot = app.get_snapshot("a", 1, "").await.expect("snapshot");
    let err = list(&app, "", 1, &snapshot.next_page_token)
        .await
        .expect_err("a snapshot token");
    assert_eq!(err.code(), Code::InvalidArgument);

    let long = "x".repeat(256);
    for (prefix, rule) in [(long.as_str(), "at most 255 bytes"), ("a\u{7}", "control")] {
        let err = list(&app, prefix, 1, "").await.expect_err("bad prefix");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with("prefix") && err.message().contains(rule),
            "{err:?}"
        );
    }
}
contract_test!(list_tasks_tokens_belong_to_their_prefix);

/// Tasks created during a walk after its position appear; none appears
/// twice, and every task that existed throughout appears once.
async fn a_list_walk_sees_every_task_once_while_tasks_are_added(backend: Backend) {
    let app = spawn_app(backend).await;
    for n in (0..40u32).step_by(2) {
        app.complete_run(&format!("t{n:02}"), "r", &ts(n)).await;
    }
    let (mut seen, mut token) = (Vec::new(), String::new());
    for step in 0..100u32 {
        let page = list(&app, "t", 3, &token).await.expect("page");
        seen.extend(page.tasks.into_iter().map(|t| t.task_id));
        // Between pages: an odd task id, somewhere in the range.
        app.complete_run(&format!("t{:02}", ((step * 7) % 40) | 1), "r", &ts(step))
            .await;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "in order, no task twice");
    for n in (0..40u32).step_by(2) {
        assert!(
            seen.contains(&format!("t{n:02}")),
            "t{n:02} was there throughout"
        );
    }
}
contract_test!(a_list_walk_sees_every_task_once_while_tasks_are_added);
