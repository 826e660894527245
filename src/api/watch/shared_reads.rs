//! Shared reads of the change feed. Watchers that are caught up sit at the
//! same cursor and are woken by the same signal; without sharing, each
//! would read the same events from storage and build the same replies, so
//! the feed's cost would grow with the number of watchers. Here the first
//! of them reads, and the others wait for its page.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::watch;

use crate::{
    api::page_token,
    proto::{RunEventKind, WatchRunsResponse},
    storage::{EventCursor, EventKind, EventQuery, RunEvent, Storage, StorageError},
};

/// Events per read.
const SCAN: usize = 256;
/// Reads kept for sharing: watchers at the head share the newest; the
/// others are catching up, each at a cursor of its own.
const KEPT: usize = 16;

/// One event of a page, with the reply every watcher sends for it.
pub struct FeedEvent {
    pub cursor: EventCursor,
    pub task_id: String,
    pub reply: WatchRunsResponse,
}

/// Up to [`SCAN`] events after a cursor, every task's; `full` says more may
/// follow at once.
pub struct FeedPage {
    pub events: Vec<FeedEvent>,
    pub full: bool,
}

type PageRead = Shared<BoxFuture<'static, Result<Arc<FeedPage>, StorageError>>>;

struct Read {
    after: EventCursor,
    /// The signal's version when the read was set up, before it began: it
    /// sees every commit signalled up to this version.
    version: u64,
    page: PageRead,
}

pub struct FeedReader {
    storage: Arc<dyn Storage>,
    signal: watch::Receiver<u64>,
    reads: Mutex<VecDeque<Read>>,
}

impl FeedReader {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self {
            signal: storage.event_signal(),
            storage,
            reads: Mutex::new(VecDeque::with_capacity(KEPT)),
        }
    }

    /// The signal storage sends after a commit that appended events.
    pub fn signal(&self) -> watch::Receiver<u64> {
        self.signal.clone()
    }

    /// The events after `after`. With `seen`, any read of them that began
    /// once the signal had reached that version will do, finished or not;
    /// without, a new read (a poll looks for what no signal announces).
    pub async fn read(
        &self,
        after: EventCursor,
        seen: Option<u64>,
    ) -> Result<Arc<FeedPage>, StorageError> {
        let page = {
            let mut reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
            let shared = seen.and_then(|seen| {
                reads.iter().find(|read| {
                    read.after == after
                        && read.version >= seen
                        // A failure is the reader's; later ones try again.
                        && !matches!(read.page.peek(), Some(Err(_)))
                })
            });
            match shared {
                Some(read) => read.page.clone(),
                None => {
                    let page = self.start_read(after);
                    if reads.len() == KEPT {
                        reads.pop_front();
                    }
                    reads.push_back(Read {
                        after,
                        version: *self.signal.borrow(),
                        page: page.clone(),
                    });
                    page
                }
            }
        };
        page.await
    }

    fn start_read(&self, after: EventCursor) -> PageRead {
        let storage = Arc::clone(&self.storage);
        async move {
            let query = EventQuery { after, limit: SCAN };
            let page = storage.read_events(&query).await?;
            Ok(Arc::new(FeedPage {
                full: page.full,
                events: page.events.into_iter().map(feed_event).collect(),
            }))
        }
        .boxed()
        .shared()
    }
}

fn feed_event(event: RunEvent) -> FeedEvent {
    let recorded_at: chrono::DateTime<chrono::Utc> = event.recorded_at.into();
    let kind = match event.kind {
        EventKind::Completed => RunEventKind::Completed,
        EventKind::Deleted => RunEventKind::Deleted,
        EventKind::Expired => RunEventKind::Expired,
    };
    FeedEvent {
        cursor: event.cursor,
        task_id: event.task_id.clone(),
        reply: WatchRunsResponse {
            event: Some(crate::proto::RunEvent {
                cursor: page_token::encode_event(&event.cursor),
                kind: kind.into(),
                task_id: event.task_id,
                run_id: event.run_id,
                timestamp: event.timestamp,
                recorded_at: recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            }),
        },
    }
}
