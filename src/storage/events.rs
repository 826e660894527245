//! The change feed behind WatchRuns: one event per change, appended in the
//! transaction of the change, read in cursor order.

use std::time::SystemTime;

/// A position in the feed. SQLite draws `id` under its write lock, so `tx`
/// is always 0 there; PostgreSQL orders by the writing transaction first
/// (see its `0003_run_events.sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventCursor {
    pub tx: u64,
    pub id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Completed,
    Deleted,
    Expired,
}

impl EventKind {
    /// The name stored in `run_events.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Completed => "COMPLETED",
            EventKind::Deleted => "DELETED",
            EventKind::Expired => "EXPIRED",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        [EventKind::Completed, EventKind::Deleted, EventKind::Expired]
            .into_iter()
            .find(|kind| kind.as_str() == stored)
    }
}

/// One change: a manifest written, a run deleted or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEvent {
    pub cursor: EventCursor,
    pub kind: EventKind,
    pub task_id: String,
    pub run_id: String,
    /// The run's timestamp, as sent.
    pub timestamp: String,
    pub recorded_at: SystemTime,
}

/// Where a watch from now starts: after `after`, leaving out the events in
/// `committed`, which lie after it but had committed already (on PostgreSQL,
/// those of transactions above the snapshot's xmin; none on SQLite).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventHead {
    pub after: EventCursor,
    pub committed: Vec<EventCursor>,
}

/// Which events to read: at most `limit` of those after `after`. Every
/// task's: WatchRuns filters by prefix itself, so that watchers with
/// different prefixes can share one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    pub after: EventCursor,
    pub limit: usize,
}

/// What a read found; `full` says it stopped at its limit (more may follow
/// at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    pub events: Vec<RunEvent>,
    pub full: bool,
}
