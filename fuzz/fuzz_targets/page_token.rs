//! `page_token::decode` never panics on any string, and every token it
//! accepts names a cursor that survives `encode` → `decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runstore::api::page_token::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    if let Some(cursor) = decode(&token) {
        let reencoded = encode(&cursor);
        assert_eq!(decode(&reencoded), Some(cursor), "token {token:?}");
        // URL_SAFE_NO_PAD rejects padding and non-zero trailing bits, so an
        // accepted token is canonical: one cursor, one token.
        assert_eq!(reencoded, token, "accepted a non-canonical token");
    }
});
