//! The opaque page tokens. GetTaskSnapshot's holds the sort key of the last
//! run a page returned and the order of the walk, so it stays valid while
//! runs are added and cannot be used with the other order. ListTasks' holds
//! the last task id of the page.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::storage::{EventCursor, RunCursor, RunInstant};

/// The first byte of a snapshot token: its version and order. Version 1
/// (oldest first) predates `newest_first`, so its tokens keep working.
const OLDEST_FIRST: u8 = 1;
const NEWEST_FIRST: u8 = 2;
const SNAPSHOT_LEN: usize = 1 + 8 + 4 + 8;
/// The first byte of a ListTasks token, apart from every snapshot token's.
const TASKS: u8 = 0x10;
/// The first byte of a WatchRuns cursor.
const EVENTS: u8 = 0x20;
const EVENT_LEN: usize = 1 + 8 + 8;

/// A GetTaskSnapshot position and the order it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotToken {
    pub after: RunCursor,
    pub newest_first: bool,
}

pub fn encode(token: &SnapshotToken) -> String {
    let cursor = &token.after;
    let mut bytes = Vec::with_capacity(SNAPSHOT_LEN);
    bytes.push(if token.newest_first {
        NEWEST_FIRST
    } else {
        OLDEST_FIRST
    });
    bytes.extend_from_slice(&cursor.instant.secs.to_be_bytes());
    bytes.extend_from_slice(&cursor.instant.nanos.to_be_bytes());
    bytes.extend_from_slice(&cursor.seq.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `None` when the token was not made by [`encode`].
pub fn decode(token: &str) -> Option<SnapshotToken> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    if bytes.len() != SNAPSHOT_LEN {
        return None;
    }
    let newest_first = match bytes[0] {
        OLDEST_FIRST => false,
        NEWEST_FIRST => true,
        _ => return None,
    };
    let secs = i64::from_be_bytes(bytes[1..9].try_into().ok()?);
    let nanos = u32::from_be_bytes(bytes[9..13].try_into().ok()?);
    let seq = u64::from_be_bytes(bytes[13..21].try_into().ok()?);
    (nanos < 1_000_000_000).then_some(SnapshotToken {
        after: RunCursor {
            instant: RunInstant { secs, nanos },
            seq,
        },
        newest_first,
    })
}

/// A ListTasks token: the last task id of a page.
pub fn encode_task(last_task_id: &str) -> String {
    let mut bytes = Vec::with_capacity(1 + last_task_id.len());
    bytes.push(TASKS);
    bytes.extend_from_slice(last_task_id.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `None` when the token was not made by [`encode_task`].
pub fn decode_task(token: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let (&version, id) = bytes.split_first()?;
    if version != TASKS || id.is_empty() {
        return None;
    }
    String::from_utf8(id.to_vec()).ok()
}

/// A RunEvent cursor.
pub fn encode_event(cursor: &EventCursor) -> String {
    let mut bytes = Vec::with_capacity(EVENT_LEN);
    bytes.push(EVENTS);
    bytes.extend_from_slice(&cursor.tx.to_be_bytes());
    bytes.extend_from_slice(&cursor.id.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `None` when the cursor was not made by [`encode_event`].
pub fn decode_event(token: &str) -> Option<EventCursor> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    if bytes.len() != EVENT_LEN || bytes[0] != EVENTS {
        return None;
    }
    Some(EventCursor {
        tx: u64::from_be_bytes(bytes[1..9].try_into().ok()?),
        id: u64::from_be_bytes(bytes[9..17].try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_tokens_round_trip_with_their_order_and_reject_foreign_ones() {
        for newest_first in [false, true] {
            let token = SnapshotToken {
                after: RunCursor {
                    instant: RunInstant { secs: -5, nanos: 7 },
                    seq: 42,
                },
                newest_first,
            };
            assert_eq!(decode(&encode(&token)), Some(token));
        }
        for bad in [
            "",
            "abc",
            "not base64!",
            &URL_SAFE_NO_PAD.encode([3u8; SNAPSHOT_LEN]),
            &encode_task("a-task-id-of-twenty1"),
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn event_cursors_round_trip_and_reject_foreign_ones() {
        let cursor = EventCursor {
            tx: 7,
            id: u64::MAX,
        };
        assert_eq!(decode_event(&encode_event(&cursor)), Some(cursor));
        for bad in [
            "",
            "x",
            &encode_task("seventeen-bytes!"),
            &URL_SAFE_NO_PAD.encode([EVENTS; EVENT_LEN + 1]),
        ] {
            assert_eq!(decode_event(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn task_tokens_round_trip_and_reject_foreign_ones() {
        for id in ["a", "job-é-7", &"x".repeat(255)] {
            assert_eq!(decode_task(&encode_task(id)).as_deref(), Some(id));
        }
        let snapshot = encode(&SnapshotToken {
            after: RunCursor::FIRST,
            newest_first: false,
        });
        for bad in [
            "",
            "not base64!",
            &URL_SAFE_NO_PAD.encode([TASKS]),
            &URL_SAFE_NO_PAD.encode([TASKS, 0xff]),
            &snapshot,
        ] {
            assert_eq!(decode_task(bad), None, "{bad:?}");
        }
    }
}
