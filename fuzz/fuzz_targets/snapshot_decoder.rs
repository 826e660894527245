//! The snapshot log decoders never panic, and what they accept is exactly
//! what `encode` writes: re-encoding the decoded records reproduces the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runstore::storage::snapshot_log::{TRAILER_LEN, decode_all, decode_last_frame, encode};

fuzz_target!(|data: &[u8]| {
    check(data);
    // A CRC32C is out of reach of blind mutation, so almost every mutated
    // frame would stop at the checksum. Also check a copy whose checksums are
    // made right, so payload parsing gets explored too.
    let mut fixed = data.to_vec();
    fix_checksums(&mut fixed);
    check(&fixed);
});

fn check(data: &[u8]) {
    let (records, valid) = decode_all(data);
    assert!(valid <= data.len());
    let mut out = Vec::new();
    for record in &records {
        encode(record, &mut out).expect("a decoded record re-encodes");
    }
    assert_eq!(out, data[..valid], "re-encoding differs from the valid prefix");

    if let Some((record, len)) = decode_last_frame(data) {
        assert!(len <= data.len());
        let mut out = Vec::new();
        encode(&record, &mut out).expect("a decoded record re-encodes");
        assert_eq!(out, data[data.len() - len..], "re-encoding differs from the last frame");
        // A writer reads the last frame backwards; on a log that is valid to
        // its end, that must be the record a forward read ends with.
        if valid == data.len() {
            assert_eq!(records.last(), Some(&record));
        }
    } else {
        assert!(
            valid < data.len() || records.is_empty(),
            "a fully valid log whose last frame cannot be read from its end"
        );
    }
}

/// Walks frames by their head length and writes the payload's true CRC32C.
fn fix_checksums(data: &mut [u8]) {
    let mut at = 0;
    while let Some(head) = data.get(at..at + 12) {
        let len = u32::from_le_bytes(head[4..8].try_into().unwrap()) as usize;
        let payload = at + 12..at + 12 + len;
        if payload.end + TRAILER_LEN > data.len() {
            break;
        }
        let crc = crc32c::crc32c(&data[payload.clone()]);
        data[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
        at = payload.end + TRAILER_LEN;
    }
}
