//! A task's run history as callers see it: one entry per run id, ordered by
//! the instant each timestamp names, ties in recording order, read in pages.
//! Backends that cannot sort in their query language use [`page_of`].

use std::collections::HashMap;

/// The instant a run's timestamp names, in UTC: seconds since the Unix epoch
/// and nanoseconds within that second. Ordering compares instants, never the
/// timestamp text (offsets and fraction lengths differ between callers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunInstant {
    pub secs: i64,
    pub nanos: u32,
}

/// A position in a task's ordered history: the sort key of the last run a
/// page returned. Keys are stable while runs are added, so a cursor stays
/// valid; runs added before it are simply not revisited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunCursor {
    pub instant: RunInstant,
    /// Recording order within the task, increasing with every write.
    pub seq: u64,
}

/// One recorded run of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRun {
    pub run_id: String,
    pub timestamp: String,
    pub summary_json: String,
    pub cursor: RunCursor,
}

/// One page of a task's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPage {
    /// The latest timestamp among all the task's runs, as sent.
    pub last_run_at: String,
    pub runs: Vec<StoredRun>,
    /// Set when more runs follow this page.
    pub next: Option<RunCursor>,
}

/// Most summary bytes in one page (at least one run is always returned), so
/// a page fits the 4 MiB default receive limit of common gRPC clients.
pub const PAGE_BYTE_BUDGET: usize = 3 * 1024 * 1024;

/// Builds a page from every record of a task, in any order and possibly with
/// several records per run id (the one recorded last wins). `None` when there
/// are no records.
pub fn page_of(
    records: Vec<StoredRun>,
    after: Option<RunCursor>,
    limit: usize,
) -> Option<SnapshotPage> {
    let mut latest: HashMap<String, StoredRun> = HashMap::with_capacity(records.len());
    for run in records {
        match latest.get(&run.run_id) {
            Some(existing) if existing.cursor.seq > run.cursor.seq => {}
            _ => {
                latest.insert(run.run_id.clone(), run);
            }
        }
    }
    let mut runs: Vec<StoredRun> = latest.into_values().collect();
    runs.sort_unstable_by_key(|run| run.cursor);
    let last_run_at = runs.last()?.timestamp.clone();

    let start = after.map_or(0, |cursor| runs.partition_point(|run| run.cursor <= cursor));
    let mut end = start;
    let mut bytes = 0usize;
    while end < runs.len() && end - start < limit {
        bytes += runs[end].summary_json.len();
        if end > start && bytes > PAGE_BYTE_BUDGET {
            break;
        }
        end += 1;
    }
    let next = (end < runs.len() && end > start).then(|| runs[end - 1].cursor);
    let page = runs.drain(start..end).collect();
    Some(SnapshotPage {
        last_run_at,
        runs: page,
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, secs: i64, seq: u64) -> StoredRun {
        StoredRun {
            run_id: id.into(),
            timestamp: format!("t{secs}"),
            summary_json: "{}".into(),
            cursor: RunCursor {
                instant: RunInstant { secs, nanos: 0 },
                seq,
            },
        }
    }

    fn ids(page: &SnapshotPage) -> Vec<&str> {
        page.runs.iter().map(|r| r.run_id.as_str()).collect()
    }

    #[test]
    fn orders_by_instant_then_recording_order_and_keeps_latest_per_run() {
        let records = vec![
            run("b", 5, 0),
            run("a", 9, 1),
            run("c", 5, 2),
            run("b", 7, 3),
        ];
        let page = page_of(records, None, 10).expect("page");
        assert_eq!(ids(&page), ["c", "b", "a"]);
        assert_eq!(page.last_run_at, "t9");
        assert_eq!(page.next, None);
    }

    #[test]
    fn pages_resume_after_the_cursor() {
        let records = (0..5)
            .map(|i| run(&format!("r{i}"), i, i as u64))
            .collect::<Vec<_>>();
        let first = page_of(records.clone(), None, 2).expect("page");
        assert_eq!(ids(&first), ["r0", "r1"]);
        let second = page_of(records.clone(), first.next, 2).expect("page");
        assert_eq!(ids(&second), ["r2", "r3"]);
        let third = page_of(records, second.next, 2).expect("page");
        assert_eq!(ids(&third), ["r4"]);
        assert_eq!(third.next, None);
    }

    #[test]
    fn pages_stop_at_the_byte_budget_but_hold_at_least_one_run() {
        let big = |id: &str, secs| StoredRun {
            summary_json: "x".repeat(PAGE_BYTE_BUDGET / 2 + 1),
            ..run(id, secs, secs as u64)
        };
        let records = vec![big("a", 1), big("b", 2), big("c", 3)];
        let first = page_of(records.clone(), None, 100).expect("page");
        assert_eq!(ids(&first), ["a"]);
        let second = page_of(records, first.next, 100).expect("page");
        assert_eq!(ids(&second), ["b"]);
    }

    #[test]
    fn no_records_means_no_page() {
        assert_eq!(page_of(Vec::new(), None, 10), None);
    }
}
