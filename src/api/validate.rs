//! Request validation: the id, timestamp and summary rules of the contract.
//! Every failure names the field and the rule it broke.

use chrono::DateTime;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::{api::error::ApiError, proto::CompleteRunRequest, storage::RunInstant};

/// Deepest nesting of arrays and objects accepted in a summary: what
/// serde_json, a common parser downstream, accepts by default.
pub const MAX_SUMMARY_DEPTH: usize = 127;

/// Longest id in bytes: one path component on common file systems.
pub const MAX_ID_BYTES: usize = 255;
/// Longest accepted timestamp: RFC 3339 with nanoseconds is 35 bytes; the
/// rest is room for longer fractions, which are accepted and ignored.
pub const MAX_TIMESTAMP_BYTES: usize = 64;

const FORBIDDEN_ID_CHARS: &[char] = &['<', '>', ':', '"', '|', '?', '*', '/', '\\'];

const RESERVED_DEVICE_NAMES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9", "CONIN$",
    "CONOUT$",
];

fn invalid(field: &'static str, rule: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument {
        field,
        rule: rule.into(),
    }
}

/// The rules ids and id prefixes share: at most [`MAX_ID_BYTES`], no
/// control characters.
fn length_and_characters(field: &'static str, value: &str) -> Result<(), ApiError> {
    if value.len() > MAX_ID_BYTES {
        return Err(invalid(
            field,
            format!("must be at most {MAX_ID_BYTES} bytes, got {}", value.len()),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_ascii_control()) {
        return Err(invalid(
            field,
            format!(
                "must not contain control characters, found U+{:04X}",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// Checks a task or run id: safe as one path component on any platform, so a
/// read or write can never reach outside its own directory.
pub fn id(field: &'static str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    length_and_characters(field, value)?;
    if let Some(c) = value.chars().find(|c| FORBIDDEN_ID_CHARS.contains(c)) {
        return Err(invalid(
            field,
            format!(r#"must not contain any of < > : " | ? * / \, found '{c}'"#),
        ));
    }
    if value == ".." {
        return Err(invalid(field, "must not be '..'"));
    }
    if value.starts_with('.') {
        return Err(invalid(field, "must not start with '.'"));
    }
    if value.ends_with('.') || value.ends_with(' ') {
        return Err(invalid(field, "must not end with '.' or a space"));
    }
    // Windows ignores the extension and trailing spaces when it resolves a
    // device name, so "con.json" and "CON .x" name the console too.
    let stem = value
        .split('.')
        .next()
        .unwrap_or(value)
        .trim_end_matches(' ');
    if let Some(name) = RESERVED_DEVICE_NAMES
        .iter()
        .find(|name| name.eq_ignore_ascii_case(stem))
    {
        return Err(invalid(
            field,
            format!("must not be a reserved device name ({name})"),
        ));
    }
    Ok(())
}

/// Validates a CompleteRun request as the server does, in its order: ids,
/// timestamp, summary size (over `max_summary_bytes` is RESOURCE_EXHAUSTED),
/// then the summary itself. Returns the instant the timestamp names.
pub fn complete_run(
    req: &CompleteRunRequest,
    max_summary_bytes: usize,
) -> Result<RunInstant, ApiError> {
    id("task_id", &req.task_id)?;
    id("run_id", &req.run_id)?;
    let instant = timestamp("timestamp", &req.timestamp)?;
    if req.summary_json.len() > max_summary_bytes {
        return Err(ApiError::SummaryTooLarge {
            size: req.summary_json.len(),
            limit: max_summary_bytes,
        });
    }
    summary("summary_json", &req.summary_json, &req.task_id, &req.run_id)?;
    Ok(instant)
}

/// Checks a ListTasks prefix: empty, or the start of some valid id (at most
/// [`MAX_ID_BYTES`], no control characters). It is matched literally.
pub fn id_prefix(field: &'static str, value: &str) -> Result<(), ApiError> {
    length_and_characters(field, value)
}

/// Checks an optional sha256: empty, or 64 lowercase hex digits as
/// GetManifest returns them.
pub fn sha256_or_empty(field: &'static str, value: &str) -> Result<(), ApiError> {
    let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if value.is_empty() || (value.len() == 64 && value.chars().all(hex)) {
        return Ok(());
    }
    Err(invalid(
        field,
        "must be empty or a sha256 as GetManifest returns it: 64 lowercase hex digits",
    ))
}

/// Parses an RFC 3339 timestamp into the instant it names.
pub fn timestamp(field: &'static str, value: &str) -> Result<RunInstant, ApiError> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > MAX_TIMESTAMP_BYTES {
        return Err(invalid(
            field,
            format!(
                "must be at most {MAX_TIMESTAMP_BYTES} bytes, got {}",
                value.len()
            ),
        ));
    }
    let parsed = DateTime::parse_from_rfc3339(value).map_err(|err| {
        invalid(
            field,
            format!("must be an RFC 3339 timestamp like 2026-01-05T19:26:37.274Z ({err})"),
        )
    })?;
    // chrono reads a leap second (:60) as nanos >= 1e9; it orders as the
    // last instant of the second before it.
    Ok(RunInstant {
        secs: parsed.timestamp(),
        nanos: parsed.timestamp_subsec_nanos().min(999_999_999),
    })
}

/// Checks that a summary is one JSON object that downstream parsers accept
/// (numbers in range, valid escapes, bounded nesting) and that the `taskId`
/// / `runId` it carries, if any, match the request. The summary is stored as
/// sent, so this only reads it: no value tree is built.
pub fn summary(
    field: &'static str,
    json: &str,
    task_id: &str,
    run_id: &str,
) -> Result<(), ApiError> {
    let depth = nesting_depth(json);
    if depth > MAX_SUMMARY_DEPTH {
        return Err(invalid(
            field,
            format!("must nest arrays and objects at most {MAX_SUMMARY_DEPTH} deep, got {depth}"),
        ));
    }
    let ids: SummaryIds = serde_json::from_str(json)
        .map_err(|err| invalid(field, format!("must be a JSON object: {err}")))?;
    for (key, carried, expected) in [
        ("taskId", ids.task_id, task_id),
        ("runId", ids.run_id, run_id),
    ] {
        match carried {
            Some(Some(value)) if value == expected => {}
            Some(Some(value)) => {
                return Err(invalid(
                    field,
                    format!(
                        "\"{key}\" is {value:?} but the request says {expected:?}; they must match"
                    ),
                ));
            }
            Some(None) => {
                return Err(invalid(
                    field,
                    format!("\"{key}\" must be a string equal to the request's ({expected:?})"),
                ));
            }
            None => {}
        }
    }
    Ok(())
}

/// Any JSON value, checked as serde_json checks it when it builds a value
/// (unlike `IgnoredAny`, which skips numbers and escapes unchecked), without
/// keeping anything.
struct ValidJson;

impl<'de> serde::Deserialize<'de> for ValidJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValidJsonVisitor)
    }
}

struct ValidJsonVisitor;

impl<'de> Visitor<'de> for ValidJsonVisitor {
    type Value = ValidJson;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }
    fn visit_i64<E>(self, _: i64) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }
    fn visit_u64<E>(self, _: u64) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }
    fn visit_f64<E>(self, _: f64) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }
    fn visit_str<E>(self, _: &str) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }
    fn visit_unit<E>(self) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ValidJson, A::Error> {
        while seq.next_element::<ValidJson>()?.is_some() {}
        Ok(ValidJson)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ValidJson, A::Error> {
        while map
            .next_entry::<std::borrow::Cow<'de, str>, ValidJson>()?
            .is_some()
        {}
        Ok(ValidJson)
    }
}

/// The deepest nesting of `[` and `{` outside strings, found in one pass
/// without recursion. Malformed JSON is left for the parser to report.
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in json.bytes() {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The identity keys of a summary. Outer `Option`: the key is present;
/// inner: its value is a string.
#[derive(Default)]
struct SummaryIds {
    task_id: Option<Option<String>>,
    run_id: Option<Option<String>>,
}

impl<'de> serde::Deserialize<'de> for SummaryIds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(SummaryIdsVisitor)
    }
}

struct SummaryIdsVisitor;

impl<'de> Visitor<'de> for SummaryIdsVisitor {
    type Value = SummaryIds;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SummaryIds, A::Error> {
        let mut ids = SummaryIds::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "taskId" => &mut ids.task_id,
                "runId" => &mut ids.run_id,
                _ => {
                    map.next_value::<ValidJson>()?;
                    continue;
                }
            };
            if slot.is_some() {
                // Two values for one identity key: downstream parsers would
                // disagree on which one counts.
                return Err(de::Error::custom(format_args!("duplicate key \"{key}\"")));
            }
            let value: serde_json::Value = map.next_value()?;
            *slot = Some(value.as_str().map(str::to_owned));
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_of(result: Result<(), ApiError>) -> String {
        match result {
            Err(ApiError::InvalidArgument { rule, .. }) => rule,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn complete_run_checks_ids_then_timestamp_then_size_then_summary() {
        let request = |task: &str, timestamp: &str, summary: &str| CompleteRunRequest {
            task_id: task.into(),
            run_id: "r".into(),
            timestamp: timestamp.into(),
            summary_json: summary.into(),
        };
        let field = |result: Result<RunInstant, ApiError>| match result {
            Err(ApiError::InvalidArgument { field, .. }) => field.to_string(),
            Err(ApiError::SummaryTooLarge { .. }) => "size".into(),
            other => panic!("expected a rejection, got {other:?}"),
        };
        let ts = "2026-01-05T19:26:37Z";
        assert_eq!(
            field(complete_run(&request("a/b", "x", "[["), 1)),
            "task_id"
        );
        assert_eq!(
            field(complete_run(&request("t", "x", "[["), 1)),
            "timestamp"
        );
        assert_eq!(field(complete_run(&request("t", ts, "[["), 1)), "size");
        assert_eq!(
            field(complete_run(&request("t", ts, "[["), 2)),
            "summary_json"
        );
        assert!(complete_run(&request("t", ts, "{}"), 2).is_ok());
    }

    #[test]
    fn accepts_ordinary_ids() {
        for ok in [
            "task-1",
            "2026-01-05T19-26-37-274Z-8ede48e3",
            "ünïcödé",
            "a.b",
            "CONSOLE",
            "COM10",
            &"x".repeat(255),
        ] {
            assert!(id("task_id", ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn rejects_each_id_rule_with_its_own_message() {
        let cases = [
            ("", "empty"),
            (&"x".repeat(256), "at most 255 bytes"),
            ("a\u{7f}b", "control characters"),
            ("a\nb", "control characters"),
            ("../etc", "< > :"),
            ("a/b", "< > :"),
            ("a\\b", "< > :"),
            ("a:b", "< > :"),
            ("..", "'..'"),
            (".hidden", "start with '.'"),
            ("trailing.", "end with '.'"),
            ("trailing ", "end with '.'"),
            ("con", "reserved device name (CON)"),
            ("Lpt9.log", "reserved device name (LPT9)"),
            ("conin$", "reserved device name (CONIN$)"),
            ("NUL .txt", "reserved device name (NUL)"),
        ];
        for (value, expected) in cases {
            let rule = rule_of(id("task_id", value));
            assert!(rule.contains(expected), "{value:?}: {rule}");
        }
    }

    #[test]
    fn a_leap_second_orders_as_the_end_of_the_second_before() {
        let leap = timestamp("timestamp", "2016-12-31T23:59:60.5Z").expect("leap second");
        let before = timestamp("timestamp", "2016-12-31T23:59:59.999999999Z").expect("before");
        assert_eq!(leap, before);
    }

    #[test]
    fn summaries_are_checked_as_strictly_as_serde_json_parses_them() {
        for (json, expected) in [
            (r#"{"a":1e400}"#, "out of range"),
            (r#"{"a":"\ud800"}"#, "JSON object"),
            (r#"{"a":[1,2,{"b":"\u00"}]}"#, "JSON object"),
        ] {
            let rule = rule_of(summary("summary_json", json, "t", "r"));
            assert!(rule.contains(expected), "{json}: {rule}");
        }
        let ok = r#"{"a":[1e300,-5,"\u00e9\ud83d\ude00",null,true,{"b":{}}]}"#;
        assert!(summary("summary_json", ok, "t", "r").is_ok());
    }

    #[test]
    fn timestamps_order_by_instant_not_text() {
        let utc = timestamp("timestamp", "2026-01-05T19:26:37.274Z").expect("utc");
        let offset = timestamp("timestamp", "2026-01-05T20:26:37.274000+01:00").expect("offset");
        assert_eq!(utc, offset);
        assert!(timestamp("timestamp", "2026-01-05 19:26").is_err());
        assert!(timestamp("timestamp", "").is_err());
    }

    #[test]
    fn summaries_must_be_objects_with_matching_ids() {
        assert!(
            summary(
                "summary_json",
                r#"{"taskId":"t","runId":"r","x":[1,{"y":2}]}"#,
                "t",
                "r"
            )
            .is_ok()
        );
        assert!(summary("summary_json", "{}", "t", "r").is_ok());
        for (json, expected) in [
            ("[]", "JSON object"),
            ("\"x\"", "JSON object"),
            ("{", "JSON object"),
            ("{} {}", "JSON object"),
            (r#"{"taskId":"other"}"#, "must match"),
            (r#"{"runId":7}"#, "must be a string"),
            (r#"{"taskId":"t","taskId":"t"}"#, "duplicate key"),
        ] {
            let rule = rule_of(summary("summary_json", json, "t", "r"));
            assert!(rule.contains(expected), "{json}: {rule}");
        }
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflowing_the_stack() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let rule = rule_of(summary("summary_json", &deep, "t", "r"));
        assert!(rule.contains("at most 127 deep"), "{rule}");
        let nested_ok = format!("{}{}", "[".repeat(126), "]".repeat(126));
        assert!(
            summary(
                "summary_json",
                &format!(r#"{{"a":{nested_ok},"s":"[[[[{{"}}"#),
                "t",
                "r"
            )
            .is_ok()
        );
    }
}
