//! The on-disk format of a task's snapshot: an append-only log of framed,
//! checksummed run records.
//!
//! ```text
//! frame   = "RSL1" | len: u32 | crc32c(payload): u32 | payload | len: u32 | "1LSR"
//! payload = seq: u64 | frame_index: u64 | compacted_frames: u64
//!         | secs: i64 | nanos: u32
//!         | run_id_len: u16 | run_id | timestamp_len: u16 | timestamp
//!         | summary_len: u32 | summary
//! ```
//! All integers little-endian. The trailer repeats the length so a writer can
//! check the last frame from the end of the file without reading the rest:
//! appending stays O(1) however long the history is. A frame that fails any
//! check ends the valid prefix; only the tail can be torn (a crash mid-append),
//! and writers cut a torn tail before appending.

use super::history::{RunCursor, RunInstant, StoredRun};

const HEAD_MAGIC: &[u8; 4] = b"RSL1";
const TAIL_MAGIC: &[u8; 4] = b"1LSR";
/// Bytes of framing around a payload.
pub const FRAME_OVERHEAD: usize = 20;
/// Bytes of the trailer at the end of every frame.
pub const TRAILER_LEN: usize = 8;

/// One decoded log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Recording order within the task; never reused, kept across compaction.
    pub seq: u64,
    /// This frame's position in the current file (renumbered by compaction).
    pub frame_index: u64,
    /// How many frames the file held right after its last compaction check;
    /// the next check runs once the file has grown well past it.
    pub compacted_frames: u64,
    pub instant: RunInstant,
    pub run_id: String,
    pub timestamp: String,
    pub summary_json: String,
}

impl LogRecord {
    pub fn into_stored_run(self) -> StoredRun {
        StoredRun {
            cursor: RunCursor {
                instant: self.instant,
                seq: self.seq,
            },
            run_id: self.run_id,
            timestamp: self.timestamp,
            summary_json: self.summary_json,
        }
    }
}

/// Why a record cannot be framed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("{field} is {len} bytes, more than the log format's {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
}

/// Appends one framed record to `out`.
pub fn encode(record: &LogRecord, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let run_id = short_field("run_id", &record.run_id)?;
    let timestamp = short_field("timestamp", &record.timestamp)?;
    let summary_len =
        u32::try_from(record.summary_json.len()).map_err(|_| EncodeError::TooLong {
            field: "summary_json",
            len: record.summary_json.len(),
            max: u32::MAX as usize,
        })?;

    let mut payload = Vec::with_capacity(
        48 + record.run_id.len() + record.timestamp.len() + record.summary_json.len(),
    );
    payload.extend_from_slice(&record.seq.to_le_bytes());
    payload.extend_from_slice(&record.frame_index.to_le_bytes());
    payload.extend_from_slice(&record.compacted_frames.to_le_bytes());
    payload.extend_from_slice(&record.instant.secs.to_le_bytes());
    payload.extend_from_slice(&record.instant.nanos.to_le_bytes());
    payload.extend_from_slice(&run_id.to_le_bytes());
    payload.extend_from_slice(record.run_id.as_bytes());
    payload.extend_from_slice(&timestamp.to_le_bytes());
    payload.extend_from_slice(record.timestamp.as_bytes());
    payload.extend_from_slice(&summary_len.to_le_bytes());
    payload.extend_from_slice(record.summary_json.as_bytes());

    let len = u32::try_from(payload.len()).map_err(|_| EncodeError::TooLong {
        field: "record",
        len: payload.len(),
        max: u32::MAX as usize,
    })?;
    out.reserve(payload.len() + FRAME_OVERHEAD);
    out.extend_from_slice(HEAD_MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(TAIL_MAGIC);
    Ok(())
}

fn short_field(field: &'static str, value: &str) -> Result<u16, EncodeError> {
    u16::try_from(value.len()).map_err(|_| EncodeError::TooLong {
        field,
        len: value.len(),
        max: u16::MAX as usize,
    })
}

/// Decodes the valid prefix of a log. Returns the records and the length of
/// that prefix; anything after it is a torn or corrupt tail.
pub fn decode_all(bytes: &[u8]) -> (Vec<LogRecord>, usize) {
    let mut records = Vec::new();
    let mut offset = 0;
    while let Some((record, len)) = decode_frame_at(&bytes[offset..]) {
        records.push(record);
        offset += len;
    }
    (records, offset)
}

/// Decodes the frame that starts at the beginning of `bytes`, returning it
/// and its length in bytes.
pub fn decode_frame_at(bytes: &[u8]) -> Option<(LogRecord, usize)> {
    let head = bytes.get(..12)?;
    if &head[..4] != HEAD_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[8..12].try_into().ok()?);
    let frame_len = len.checked_add(FRAME_OVERHEAD)?;
    let frame = bytes.get(..frame_len)?;
    let payload = &frame[12..12 + len];
    let trailer = &frame[12 + len..];
    if trailer[..4] != head[4..8] || &trailer[4..] != TAIL_MAGIC {
        return None;
    }
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    Some((decode_payload(payload)?, frame_len))
}

/// Decodes the last frame of a log from its final bytes: `tail` must end
/// where the file ends and hold at least the whole last frame. Returns the
/// record and the frame's length.
pub fn decode_last_frame(tail: &[u8]) -> Option<(LogRecord, usize)> {
    let trailer_at = tail.len().checked_sub(TRAILER_LEN)?;
    let len = u32::from_le_bytes(tail[trailer_at..trailer_at + 4].try_into().ok()?) as usize;
    let frame_len = len.checked_add(FRAME_OVERHEAD)?;
    let start = tail.len().checked_sub(frame_len)?;
    let (record, decoded_len) = decode_frame_at(&tail[start..])?;
    (decoded_len == frame_len).then_some((record, frame_len))
}

/// Length of the last frame, read from its trailer, if the trailer is intact.
pub fn last_frame_len(trailer: &[u8; TRAILER_LEN]) -> Option<usize> {
    if &trailer[4..] != TAIL_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(trailer[..4].try_into().ok()?) as usize;
    len.checked_add(FRAME_OVERHEAD)
}

fn decode_payload(payload: &[u8]) -> Option<LogRecord> {
    let mut reader = Reader(payload);
    let seq = reader.u64()?;
    let frame_index = reader.u64()?;
    let compacted_frames = reader.u64()?;
    let secs = i64::from_le_bytes(reader.take(8)?.try_into().ok()?);
    let nanos = u32::from_le_bytes(reader.take(4)?.try_into().ok()?);
    let run_id_len = reader.u16()? as usize;
    let run_id = reader.string(run_id_len)?;
    let timestamp_len = reader.u16()? as usize;
    let timestamp = reader.string(timestamp_len)?;
    let summary_len = reader.u32()? as usize;
    let summary_json = reader.string(summary_len)?;
    if !reader.0.is_empty() || nanos >= 1_000_000_000 {
        return None;
    }
    Some(LogRecord {
        seq,
        frame_index,
        compacted_frames,
        instant: RunInstant { secs, nanos },
        run_id,
        timestamp,
        summary_json,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self, n: usize) -> Option<String> {
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, run_id: &str) -> LogRecord {
        LogRecord {
            seq,
            frame_index: seq,
            compacted_frames: 0,
            instant: RunInstant {
                secs: -62_135_596_800,
                nanos: 999_999_999,
            },
            run_id: run_id.into(),
            timestamp: "0001-01-01T00:00:00.999999999Z".into(),
            summary_json: r#"{"notes":"ünïcödé"}"#.into(),
        }
    }

    #[test]
    fn round_trips_and_reads_the_last_frame_from_the_end() {
        let mut log = Vec::new();
        encode(&record(0, "a"), &mut log).expect("encode");
        encode(&record(1, "b"), &mut log).expect("encode");
        let (records, valid) = decode_all(&log);
        assert_eq!(records, vec![record(0, "a"), record(1, "b")]);
        assert_eq!(valid, log.len());
        let (last, _) = decode_last_frame(&log).expect("last frame");
        assert_eq!(last, record(1, "b"));
    }

    #[test]
    fn every_torn_tail_is_cut_at_the_last_whole_frame() {
        let mut log = Vec::new();
        encode(&record(0, "a"), &mut log).expect("encode");
        let first_len = log.len();
        encode(&record(1, "b"), &mut log).expect("encode");
        for cut in first_len..log.len() {
            let (records, valid) = decode_all(&log[..cut]);
            assert_eq!(records, vec![record(0, "a")], "cut at {cut}");
            assert_eq!(valid, first_len);
            assert!(decode_last_frame(&log[..cut]).is_none() || cut == first_len);
        }
    }

    #[test]
    fn a_flipped_bit_is_detected() {
        let mut log = Vec::new();
        encode(&record(0, "a"), &mut log).expect("encode");
        for i in 0..log.len() {
            let mut damaged = log.clone();
            damaged[i] ^= 0x01;
            assert_eq!(decode_all(&damaged).0, vec![], "bit flip at byte {i}");
        }
    }
}
