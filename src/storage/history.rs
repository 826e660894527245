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
