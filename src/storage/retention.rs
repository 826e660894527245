//! Retention's unit of work: one bounded step of `--retain-for` or
//! `--retain-runs`, which a backend runs as one short transaction, so a
//! crash in mid-sweep leaves every run either whole or removed with its
//! EXPIRED event, and a writer never waits long behind it.

use super::RunInstant;

/// Most runs one step removes.
pub const EXPIRE_BATCH: usize = 256;

/// Most tasks one `--retain-runs` step looks at.
pub const TASK_SCAN: usize = 1000;

/// What one step expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpireRule {
    /// `--retain-for`: runs whose timestamp names an instant before this,
    /// across all tasks, found through the by-instant indexes of both
    /// tables (so a manifest whose snapshot write failed expires too).
    Before(RunInstant),
    /// `--retain-runs`: in each task from `from` on (in task id order), the
    /// oldest runs beyond the newest `keep`.
    KeepNewest { keep: u64, from: String },
}

/// What one step did, and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpireStep {
    /// Runs removed, each with its EXPIRED event.
    pub expired: u64,
    /// The next step of this pass; `None` once the pass is complete.
    pub next: Option<ExpireRule>,
}

/// The smallest task id after `task_id` in byte order, where a walk resumes.
pub fn task_after(task_id: &str) -> String {
    format!("{task_id}\0")
}
