//! A task's run history as callers see it: one entry per run id, ordered by
//! the instant each timestamp names, ties in recording order, read in pages.

/// The instant a run's timestamp names, in UTC: seconds since the Unix epoch
/// and nanoseconds within that second. Ordering compares instants, never the
/// timestamp text (offsets and fraction lengths differ between callers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunInstant {
    pub secs: i64,
    pub nanos: u32,
}

/// A position in a task's ordered history: the sort key of the last run a
/// page returned. A run keeps its key until it is written again, so a walk
/// by cursor returns every run that was neither replaced nor deleted during
/// it exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunCursor {
    pub instant: RunInstant,
    /// Recording order within the task, increasing with every write.
    pub seq: u64,
}

impl RunCursor {
    /// Before every run: where an oldest-first walk starts.
    pub const FIRST: RunCursor = RunCursor {
        instant: RunInstant {
            secs: i64::MIN,
            nanos: 0,
        },
        seq: 0,
    };
    /// After every run: where a newest-first walk starts.
    pub const LAST: RunCursor = RunCursor {
        instant: RunInstant {
            secs: i64::MAX,
            nanos: u32::MAX,
        },
        seq: i64::MAX as u64,
    };
}

/// One recorded run of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRun {
    pub run_id: String,
    pub timestamp: String,
    pub summary_json: String,
    pub cursor: RunCursor,
}

/// Which page of a task's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotQuery {
    /// The cursor of the last run of the previous page, in this order.
    pub after: Option<RunCursor>,
    /// Most runs in the page (at least one is always returned).
    pub limit: usize,
    /// The exact reverse of the history's order.
    pub newest_first: bool,
    /// Leave every summary out (ids and timestamps only).
    pub omit_summaries: bool,
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

/// A task with runs, as ListTasks reports it: kept current by every write
/// and delete, so listing never aggregates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    pub task_id: String,
    /// Snapshot entries the task holds.
    pub run_count: u64,
    /// The latest timestamp among its runs, as sent.
    pub last_run_at: String,
}

/// Which page of tasks to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskQuery {
    /// Only task ids starting with these bytes; empty for all.
    pub prefix: String,
    /// The last task id of the previous page.
    pub after: Option<String>,
    pub limit: usize,
}

impl TaskQuery {
    /// Where the seek starts, `task_id >= from AND task_id <> skip`: one
    /// lower bound, so the index range is exact. After a page, its last id
    /// (which starts with the prefix) is skipped; on the first page, the
    /// probe's row with the empty id.
    pub fn range_start(&self) -> (&str, &str) {
        match &self.after {
            Some(after) => (after.as_str(), after.as_str()),
            None => (self.prefix.as_str(), ""),
        }
    }

    /// The smallest string above every string that starts with the prefix
    /// (`None` when there is none, or no prefix): with it, a prefix is one
    /// range of the primary key. Strings compare by their UTF-8 bytes,
    /// which is the order of their chars, so this increments the last char
    /// that has a successor and drops what follows it.
    pub fn prefix_end(&self) -> Option<String> {
        let mut chars: Vec<char> = self.prefix.chars().collect();
        while let Some(last) = chars.pop() {
            let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
            if let Some(next) = next {
                chars.push(next);
                return Some(chars.into_iter().collect());
            }
        }
        None
    }
}

/// One page of tasks, in task id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPage {
    pub tasks: Vec<TaskInfo>,
    /// Set when more tasks follow: the last task id of this page.
    pub next: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(prefix: &str) -> Option<String> {
        TaskQuery {
            prefix: prefix.into(),
            after: None,
            limit: 1,
        }
        .prefix_end()
    }

    #[test]
    fn prefix_end_bounds_exactly_the_strings_with_the_prefix() {
        assert_eq!(end(""), None);
        assert_eq!(end("ab"), Some("ac".into()));
        assert_eq!(end("a\u{10FFFF}"), Some("b".into()));
        assert_eq!(end("\u{10FFFF}"), None);
        // The surrogate range has no chars: U+D7FF is followed by U+E000.
        assert_eq!(end("x\u{D7FF}"), Some("x\u{E000}".into()));
        for (prefix, inside, outside) in [
            ("job-", "job-\u{10FFFF}zz", "job."),
            ("é", "éa", "ê"),
            ("a", "a\u{7F}", "b"),
        ] {
            let end = end(prefix).expect("an end");
            assert!(inside.starts_with(prefix) && inside.as_bytes() < end.as_bytes());
            assert!(!outside.starts_with(prefix) && outside.as_bytes() >= end.as_bytes());
        }
    }
}
