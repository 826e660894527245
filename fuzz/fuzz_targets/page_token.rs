//! The page token decoders never panic on any string, and every token one
//! accepts names a position that survives encode → decode, as the same
//! token (one position, one token). No string is both kinds of token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runstore::api::page_token::{decode, decode_task, encode, encode_task};

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let snapshot = decode(&token);
    let task = decode_task(&token);
    assert!(
        snapshot.is_none() || task.is_none(),
        "token {token:?} is both kinds"
    );
    // URL_SAFE_NO_PAD rejects padding and non-zero trailing bits, so an
    // accepted token is canonical.
    if let Some(position) = snapshot {
        let reencoded = encode(&position);
        assert_eq!(decode(&reencoded), Some(position), "token {token:?}");
        assert_eq!(reencoded, token, "accepted a non-canonical token");
    }
    if let Some(last_task_id) = task {
        let reencoded = encode_task(&last_task_id);
        assert_eq!(
            decode_task(&reencoded).as_ref(),
            Some(&last_task_id),
            "token {token:?}"
        );
        assert_eq!(reencoded, token, "accepted a non-canonical token");
    }
});
