//! WatchRuns: the change feed as a stream. One task per watcher reads the
//! feed from its cursor (through [`shared_reads`], so that watchers at the
//! same cursor share one read), sends what matches its prefix into a
//! bounded buffer, and sleeps until storage signals new events (or a slow
//! poll comes round, for what a signal cannot reach).
//!
//! Stored history is sent at the pace the caller reads it. Once a watcher
//! has reached the head it is live, and a live watcher that falls a full
//! buffer behind is cut off with the cursor to resume from: holding every
//! writer's events for it would make one slow reader everyone's problem.

mod shared_reads;

use std::{collections::HashSet, sync::Arc, time::Duration};

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{
    api::{error::ApiError, page_token},
    proto::WatchRunsResponse,
    storage::{EventCursor, EventHead},
};
pub use shared_reads::FeedReader;

/// Events a live watcher may fall behind by; beyond it its stream ends with
/// the cursor to resume from.
pub const BUFFER: usize = 1024;
/// How often a watcher looks without a signal: other processes sharing a
/// SQLite data dir, and NOTIFYs lost to an outage.
const POLL: Duration = Duration::from_secs(1);

pub type WatchStream = ReceiverStream<Result<WatchRunsResponse, Status>>;
type Sender = mpsc::Sender<Result<WatchRunsResponse, Status>>;

/// Starts a watcher after `start`.
pub fn spawn(
    feed: Arc<FeedReader>,
    start: EventHead,
    task_prefix: String,
    stop: CancellationToken,
) -> WatchStream {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let end = follow(&feed, start, &task_prefix, &stop, &tx).await;
        if let Some(status) = end {
            // Waits for room in the buffer, so everything before the final
            // status is delivered; bounded by the caller reading or leaving.
            tokio::select! {
                _ = tx.send(Err(status)) => {}
                () = tx.closed() => {}
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Follows the feed until the caller leaves (`None`) or the stream must end
/// with a status.
async fn follow(
    feed: &FeedReader,
    start: EventHead,
    task_prefix: &str,
    stop: &CancellationToken,
    tx: &Sender,
) -> Option<Status> {
    let mut signal = feed.signal();
    // Committed before the watch began, though after its start cursor.
    let mut committed: HashSet<EventCursor> = start.committed.into_iter().collect();
    let mut after = start.after;
    let mut live = false;
    let mut polled = false;
    loop {
        // Marked before the read: a signal during it wakes the next wait.
        let seen = *signal.borrow_and_update();
        let page = match feed.read(after, (!polled).then_some(seen)).await {
            Ok(page) => page,
            Err(err) => return Some(ApiError::from(err).into()),
        };
        for event in &page.events {
            if committed.remove(&event.cursor) || !event.task_id.starts_with(task_prefix) {
                after = event.cursor;
                continue;
            }
            let reply = Ok(event.reply.clone());
            if live {
                match tx.try_send(reply) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        return Some(
                            ApiError::WatcherBehind {
                                resume_after: page_token::encode_event(&after),
                            }
                            .into(),
                        );
                    }
                    Err(TrySendError::Closed(_)) => return None,
                }
            } else {
                tokio::select! {
                    sent = tx.send(reply) => if sent.is_err() { return None },
                    () = stop.cancelled() => return Some(interrupted(after)),
                }
            }
            after = event.cursor;
        }
        if page.full {
            polled = false;
            continue;
        }
        live = true;
        polled = tokio::select! {
            _ = signal.changed() => false,
            () = tokio::time::sleep(POLL) => true,
            () = tx.closed() => return None,
            () = stop.cancelled() => return Some(interrupted(after)),
        };
    }
}

fn interrupted(after: EventCursor) -> Status {
    ApiError::WatchInterrupted {
        resume_after: page_token::encode_event(&after),
    }
    .into()
}
