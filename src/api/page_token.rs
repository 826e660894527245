//! The opaque page token of GetTaskSnapshot: the sort key of the last run a
//! page returned, so it stays valid while runs are added.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::storage::{RunCursor, RunInstant};

const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + 4 + 8;

pub fn encode(cursor: &RunCursor) -> String {
    let mut bytes = Vec::with_capacity(LEN);
    bytes.push(VERSION);
    bytes.extend_from_slice(&cursor.instant.secs.to_be_bytes());
    bytes.extend_from_slice(&cursor.instant.nanos.to_be_bytes());
    bytes.extend_from_slice(&cursor.seq.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `None` when the token was not made by [`encode`].
pub fn decode(token: &str) -> Option<RunCursor> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    if bytes.len() != LEN || bytes[0] != VERSION {
        return None;
    }
    let secs = i64::from_be_bytes(bytes[1..9].try_into().ok()?);
    let nanos = u32::from_be_bytes(bytes[9..13].try_into().ok()?);
    let seq = u64::from_be_bytes(bytes[13..21].try_into().ok()?);
    (nanos < 1_000_000_000).then_some(RunCursor {
        instant: RunInstant { secs, nanos },
        seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_tokens() {
        let cursor = RunCursor {
            instant: RunInstant { secs: -5, nanos: 7 },
            seq: 42,
        };
        assert_eq!(decode(&encode(&cursor)), Some(cursor));
        for bad in [
            "",
            "abc",
            "not base64!",
            &URL_SAFE_NO_PAD.encode([2u8; LEN]),
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
