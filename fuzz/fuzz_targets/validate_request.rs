//! Request validation never panics, and what it accepts is safe downstream:
//! ids are one plain path component, summaries are JSON objects serde_json
//! reads, timestamps name instants the storage formats can hold.
//!
//! Input: `task_id NUL run_id NUL timestamp NUL summary_json` (lossy UTF-8);
//! missing fields are empty. The summary may itself hold NULs.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use runstore::api::validate;

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    let mut fields = input.splitn(4, '\0');
    let [task_id, run_id, timestamp, summary] = [(); 4].map(|()| fields.next().unwrap_or(""));

    // Every field doubles as an id candidate: more shapes for the id rules.
    for value in [task_id, run_id, timestamp, summary] {
        if validate::id("task_id", value).is_ok() {
            check_accepted_id(value);
        }
    }

    if let Ok(instant) = validate::timestamp("timestamp", timestamp) {
        // The snapshot log and page tokens reject nanos >= 1e9 as corrupt, so
        // an accepted instant outside that range could be written but never read back.
        assert!(
            instant.nanos < 1_000_000_000,
            "accepted timestamp {timestamp:?} has nanos {}",
            instant.nanos
        );
    }

    if validate::summary("summary_json", summary, task_id, run_id).is_ok() {
        // The validator skips most values unparsed, so this is where serde_json's
        // own limits (nesting depth, f64 range, paired \u surrogates) get
        // checked: an accepted summary must be one serde_json can read back.
        match serde_json::from_str::<serde_json::Value>(summary) {
            Ok(value) => assert!(value.is_object(), "accepted non-object {summary:?}"),
            Err(err) => panic!("accepted summary serde_json cannot parse ({err}): {summary:?}"),
        }
    }
});

fn check_accepted_id(id: &str) {
    assert!(!id.contains(['/', '\\']), "{id:?}");
    // The contract forbids C0 controls and DEL (0-31, 127); C1 is allowed.
    assert!(
        !id.chars().any(|c| c.is_ascii_control()),
        "control char in {id:?}"
    );
    assert!(id != "." && id != "..", "{id:?}");
    assert!(id.len() <= validate::MAX_ID_BYTES, "{id:?}");
    let components: Vec<_> = Path::new(id).components().collect();
    assert!(
        matches!(components[..], [Component::Normal(c)] if c == id),
        "{id:?} is not one plain path component: {components:?}"
    );
}
