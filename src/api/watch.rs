//! WatchRuns: the change feed as a stream. One task per watcher reads the
//! feed from its cursor in bounded scans, sends what matches its prefix into
//! a bounded buffer, and sleeps until storage signals new events (or a slow
//! poll comes round, for what a signal cannot reach).

use std::{collections::HashSet, sync::Arc, time::Duration};

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{
    api::{error::ApiError, page_token},
    proto::{RunEventKind, WatchRunsResponse},
    storage::{EventCursor, EventHead, EventKind, EventQuery, RunEvent, Storage},
};

/// Events a watcher may fall behind by; beyond it its stream ends with the
/// cursor to resume from.
pub const BUFFER: usize = 1024;
/// Events examined per read.
const SCAN: usize = 256;
/// How often a watcher looks without a signal: other processes sharing a
/// SQLite data dir, and NOTIFYs lost to an outage.
const POLL: Duration = Duration::from_secs(1);

pub type WatchStream = ReceiverStream<Result<WatchRunsResponse, Status>>;

/// Starts a watcher after `start`.
pub fn spawn(
    storage: Arc<dyn Storage>,
    start: EventHead,
    task_prefix: String,
    stop: CancellationToken,
) -> WatchStream {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let end = follow(&storage, start, task_prefix, &stop, &tx).await;
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
    storage: &Arc<dyn Storage>,
    start: EventHead,
    task_prefix: String,
    stop: &CancellationToken,
    tx: &mpsc::Sender<Result<WatchRunsResponse, Status>>,
) -> Option<Status> {
    let mut signal = storage.event_signal();
    // Committed before the watch began, though after its start cursor.
    let mut committed: HashSet<EventCursor> = start.committed.into_iter().collect();
    let mut query = EventQuery {
        after: start.after,
        task_prefix,
        limit: SCAN,
    };
    loop {
        // Marked before the read: a signal during it wakes the next wait.
        signal.mark_unchanged();
        let page = match storage.read_events(&query).await {
            Ok(page) => page,
            Err(err) => return Some(ApiError::from(err).into()),
        };
        for event in page.events {
            let cursor = event.cursor;
            if committed.remove(&cursor) {
                query.after = cursor;
                continue;
            }
            match tx.try_send(Ok(response(event))) {
                Ok(()) => query.after = cursor,
                Err(TrySendError::Full(_)) => {
                    return Some(
                        ApiError::WatcherBehind {
                            resume_after: page_token::encode_event(&query.after),
                        }
                        .into(),
                    );
                }
                Err(TrySendError::Closed(_)) => return None,
            }
        }
        query.after = page.scanned_to;
        if page.full {
            continue;
        }
        tokio::select! {
            _ = signal.changed() => {}
            () = tokio::time::sleep(POLL) => {}
            () = tx.closed() => return None,
            () = stop.cancelled() => {
                return Some(
                    ApiError::WatchInterrupted {
                        resume_after: page_token::encode_event(&query.after),
                    }
                    .into(),
                );
            }
        }
    }
}

fn response(event: RunEvent) -> WatchRunsResponse {
    let recorded_at: chrono::DateTime<chrono::Utc> = event.recorded_at.into();
    let kind = match event.kind {
        EventKind::Completed => RunEventKind::Completed,
        EventKind::Deleted => RunEventKind::Deleted,
        EventKind::Expired => RunEventKind::Expired,
    };
    WatchRunsResponse {
        event: Some(crate::proto::RunEvent {
            cursor: page_token::encode_event(&event.cursor),
            kind: kind.into(),
            task_id: event.task_id,
            run_id: event.run_id,
            timestamp: event.timestamp,
            recorded_at: recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        }),
    }
}
