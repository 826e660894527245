//! CompleteRun validation agrees with a reference written from the
//! contract's rules (README "CompleteRun" and the proto comments), not from
//! `validate.rs`: the same accept or reject, for a rejection the same field
//! (or RESOURCE_EXHAUSTED for the size limit), for an acceptance the same
//! instant. The input is structured so that each field lands near the edges
//! of its rules far more often than random bytes would.
#![no_main]

use chrono::NaiveDate;
use libfuzzer_sys::{
    arbitrary::{self, Arbitrary},
    fuzz_target,
};
use runstore::{api::error::ApiError, api::validate, proto::CompleteRunRequest};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

#[derive(Arbitrary, Debug)]
struct Input {
    task_id: Id,
    run_id: Id,
    timestamp: Timestamp,
    summary: Summary,
    limit: Limit,
}

/// Characters some id or timestamp rule is about.
const SPECIAL: &[char] = &[
    '.', ' ', '<', '>', ':', '"', '|', '?', '*', '/', '\\', '\0', '\n', '\u{1f}', '\u{7f}',
    '\u{80}', '\u{85}', '\u{a0}', 'é', '$', 'T', 't', 'Z', 'z', '+', '-', '0', '9',
];

fn special(index: u8) -> char {
    SPECIAL[usize::from(index) % SPECIAL.len()]
}

#[derive(Arbitrary, Debug)]
enum Id {
    Raw(String),
    /// `a` repeated 240–259 times, then one more character: crosses 255 bytes.
    Long {
        repeat: u8,
        tail: char,
    },
    /// A device name or a near miss, with case changes, trailing spaces and
    /// an optional extension.
    Device {
        name: u8,
        lowercase: u8,
        spaces: u8,
        extension: Option<String>,
    },
    Decorated {
        prefix: Option<u8>,
        body: String,
        suffix: Option<u8>,
    },
}

/// Device names, then near misses that are ordinary ids.
const NAMES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM5", "COM9", "LPT1", "LPT9", "CONIN$", "CONOUT$",
    "COM0", "COM10", "LPT0", "LPT", "CONIN", "CONOUT", "CONSOLE", "NULL", "AUX1", "..", ".",
];

impl Id {
    fn build(&self) -> String {
        match self {
            Id::Raw(raw) => raw.clone(),
            Id::Long { repeat, tail } => {
                let mut id = "a".repeat(240 + usize::from(*repeat % 20));
                id.push(*tail);
                id
            }
            Id::Device {
                name,
                lowercase,
                spaces,
                extension,
            } => {
                let name = NAMES[usize::from(*name) % NAMES.len()];
                let mut id: String = name
                    .chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if lowercase >> (i % 8) & 1 == 1 {
                            c.to_ascii_lowercase()
                        } else {
                            c
                        }
                    })
                    .collect();
                id.push_str(&" ".repeat(usize::from(*spaces % 3)));
                if let Some(extension) = extension {
                    id.push('.');
                    id.push_str(extension);
                }
                id
            }
            Id::Decorated {
                prefix,
                body,
                suffix,
            } => {
                let mut id = String::new();
                id.extend(prefix.map(special));
                id.push_str(body);
                id.extend(suffix.map(special));
                id
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Timestamp {
    Raw(String),
    /// Each part reduced to a little past its range; fractions long enough
    /// to cross 64 bytes; optionally one character replaced.
    Parts {
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
        separator: u8,
        fraction_digits: u8,
        fraction_seed: u64,
        offset: Offset,
        replace: Option<(u8, u8)>,
    },
}

#[derive(Arbitrary, Debug)]
enum Offset {
    Z,
    LowerZ,
    Numeric { minus: bool, hour: u8, minute: u8 },
    Raw(String),
}

impl Timestamp {
    fn build(&self) -> String {
        let Timestamp::Parts {
            year,
            month,
            day,
            hour,
            minute,
            second,
            separator,
            fraction_digits,
            fraction_seed,
            offset,
            replace,
        } = self
        else {
            let Timestamp::Raw(raw) = self else {
                unreachable!()
            };
            return raw.clone();
        };
        let separator = ['T', 't', ' ', '_'][usize::from(*separator % 4)];
        let mut ts = format!(
            "{:04}-{:02}-{:02}{separator}{:02}:{:02}:{:02}",
            year % 10_000,
            month % 14,
            day % 33,
            hour % 25,
            minute % 61,
            second % 62,
        );
        // 0: no fraction; 45: a bare '.'; else that many digits.
        match fraction_digits % 46 {
            0 => {}
            45 => ts.push('.'),
            digits => {
                ts.push('.');
                let seed = fraction_seed.to_string();
                ts.extend(seed.chars().cycle().take(usize::from(digits)));
            }
        }
        match offset {
            Offset::Z => ts.push('Z'),
            Offset::LowerZ => ts.push('z'),
            Offset::Numeric {
                minus,
                hour,
                minute,
            } => ts.push_str(&format!(
                "{}{:02}:{:02}",
                if *minus { '-' } else { '+' },
                hour % 25,
                minute % 61
            )),
            Offset::Raw(raw) => ts.push_str(raw),
        }
        if let Some((at, with)) = replace {
            // ts is ASCII up to the offset; a raw offset may not be.
            let at = usize::from(*at) % ts.len();
            if ts.is_char_boundary(at) && ts.is_char_boundary(at + 1) {
                ts.replace_range(at..at + 1, &special(*with).to_string());
            }
        }
        ts
    }
}

#[derive(Arbitrary, Debug)]
enum Summary {
    Raw(String),
    Object {
        fields: Vec<(String, Leaf)>,
        task_id: Ident,
        run_id: Ident,
        /// Arrays nested this many deep (mod 135) inside the object.
        depth: u8,
        trailing: Option<String>,
    },
    /// A non-object at the top.
    Scalar(Leaf),
}

#[derive(Arbitrary, Debug)]
enum Ident {
    Absent,
    Same,
    Other(String),
    NotString(Leaf),
    Twice,
    /// The key spelled with a \u escape: the same key once decoded.
    EscapedKey,
}

#[derive(Arbitrary, Debug)]
enum Leaf {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// `1e<n>`: out of f64 range from about 1e309.
    Exponent(i16),
    /// Inserted as is: usually not JSON.
    Token(String),
}

impl Leaf {
    fn json(&self) -> String {
        match self {
            Leaf::Null => "null".into(),
            Leaf::Bool(b) => b.to_string(),
            Leaf::Int(i) => i.to_string(),
            Leaf::Float(f) => serde_json::to_string(f).unwrap(),
            Leaf::Text(s) => serde_json::to_string(s).unwrap(),
            Leaf::Exponent(e) => format!("1e{e}"),
            Leaf::Token(t) => t.clone(),
        }
    }
}

impl Summary {
    fn build(&self, task_id: &str, run_id: &str) -> String {
        let (fields, idents, depth, trailing) = match self {
            Summary::Raw(raw) => return raw.clone(),
            Summary::Scalar(leaf) => return leaf.json(),
            Summary::Object {
                fields,
                task_id: t,
                run_id: r,
                depth,
                trailing,
            } => (
                fields,
                [("taskId", t, task_id), ("runId", r, run_id)],
                depth,
                trailing,
            ),
        };
        let mut members: Vec<String> = fields
            .iter()
            .map(|(key, leaf)| format!("{}:{}", serde_json::to_string(key).unwrap(), leaf.json()))
            .collect();
        for (key, ident, expected) in idents {
            let expected = serde_json::to_string(expected).unwrap();
            match ident {
                Ident::Absent => {}
                Ident::Same => members.push(format!("\"{key}\":{expected}")),
                Ident::Other(other) => members.push(format!(
                    "\"{key}\":{}",
                    serde_json::to_string(other).unwrap()
                )),
                Ident::NotString(leaf) => members.push(format!("\"{key}\":{}", leaf.json())),
                Ident::Twice => {
                    members.push(format!("\"{key}\":{expected}"));
                    members.push(format!("\"{key}\":{expected}"));
                }
                Ident::EscapedKey => {
                    let escaped = key.replacen('I', "\\u0049", 1);
                    members.push(format!("\"{escaped}\":{expected}"));
                }
            }
        }
        let depth = usize::from(depth % 135);
        if depth > 0 {
            members.push(format!(
                "\"deep\":{}{}",
                "[".repeat(depth),
                "]".repeat(depth)
            ));
        }
        let mut json = format!("{{{}}}", members.join(","));
        if let Some(trailing) = trailing {
            json.push_str(trailing);
        }
        json
    }
}

#[derive(Arbitrary, Debug)]
enum Limit {
    Default,
    /// The summary's own size plus this: crosses the limit either way.
    Relative(i8),
}

/// What a request gets: accepted with the instant (seconds, nanos) its
/// timestamp names, INVALID_ARGUMENT naming a field, or RESOURCE_EXHAUSTED.
#[derive(Debug, PartialEq)]
enum Decision {
    Accept(i64, u32),
    Invalid(&'static str),
    TooLarge,
}

fuzz_target!(|input: Input| {
    let task_id = input.task_id.build();
    let run_id = input.run_id.build();
    let summary_json = input.summary.build(&task_id, &run_id);
    let limit = match input.limit {
        Limit::Default => runstore::api::DEFAULT_MAX_SUMMARY_BYTES,
        Limit::Relative(delta) => summary_json.len().saturating_add_signed(isize::from(delta)),
    };
    let req = CompleteRunRequest {
        task_id,
        run_id,
        timestamp: input.timestamp.build(),
        summary_json,
    };
    let server = match validate::complete_run(&req, limit) {
        Ok(instant) => Decision::Accept(instant.secs, instant.nanos),
        Err(ApiError::InvalidArgument { field, .. }) => Decision::Invalid(field),
        Err(ApiError::SummaryTooLarge { .. }) => Decision::TooLarge,
        Err(other) => panic!("unexpected error {other:?} for {req:?}"),
    };
    let reference = reference(&req, limit);
    assert_eq!(
        server, reference,
        "server (left) and reference (right) disagree on {req:?} with limit {limit}"
    );
});

// ---- The reference: the rules as the contract states them, checked in the
// ---- order the contract reports them (ids, timestamp, size, summary).

fn reference(req: &CompleteRunRequest, limit: usize) -> Decision {
    if !id_ok(&req.task_id) {
        return Decision::Invalid("task_id");
    }
    if !id_ok(&req.run_id) {
        return Decision::Invalid("run_id");
    }
    let Some((secs, nanos)) = instant(&req.timestamp) else {
        return Decision::Invalid("timestamp");
    };
    if req.summary_json.len() > limit {
        return Decision::TooLarge;
    }
    if !summary_ok(&req.summary_json, &req.task_id, &req.run_id) {
        return Decision::Invalid("summary_json");
    }
    Decision::Accept(secs, nanos)
}

const DEVICE_NAMES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9", "CONIN$",
    "CONOUT$",
];

fn id_ok(id: &str) -> bool {
    if id.is_empty() || id.len() > 255 {
        return false;
    }
    // Control characters are C0 and DEL; none of < > : " | ? * / \.
    if id
        .chars()
        .any(|c| (c as u32) < 0x20 || c == '\u{7f}' || "<>:\"|?*/\\".contains(c))
    {
        return false;
    }
    // No leading '.' (which covers ".."), no trailing '.' or space.
    if id.starts_with('.') || id.ends_with('.') || id.ends_with(' ') {
        return false;
    }
    // A device name before the first dot, in any ASCII case, spaces after
    // it ignored (Windows resolves "NUL .txt" to the device too).
    let stem = id.split('.').next().unwrap().trim_end_matches(' ');
    !DEVICE_NAMES
        .iter()
        .any(|name| stem.eq_ignore_ascii_case(name))
}

/// RFC 3339 `date-time` (section 5.6), at most 64 bytes, read by hand; chrono
/// only does the calendar arithmetic. A leap second (:60) names the last
/// nanosecond of the second before it; digits past nanoseconds are ignored.
fn instant(ts: &str) -> Option<(i64, u32)> {
    if ts.is_empty() || ts.len() > 64 {
        return None;
    }
    let b = ts.as_bytes();
    let digits = |at: usize, n: usize| -> Option<u32> {
        b.get(at..at + n)?.iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    let is = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    let year = digits(0, 4)?;
    let month = digits(5, 2)?;
    let day = digits(8, 2)?;
    let hour = digits(11, 2)?;
    let minute = digits(14, 2)?;
    let second = digits(17, 2)?;
    // ABNF literals are case-insensitive: 't' and 'z' are allowed; so is a
    // space between date and time, which section 5.6's note permits.
    if !(is(4, b"-") && is(7, b"-") && is(10, b"Tt ") && is(13, b":") && is(16, b":")) {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0;
    if is(at, b".") {
        let start = at + 1;
        let end = start + b[start..].iter().take_while(|d| d.is_ascii_digit()).count();
        if end == start {
            return None;
        }
        let mut fraction: String = ts[start..end].chars().take(9).collect();
        while fraction.len() < 9 {
            fraction.push('0');
        }
        nanos = fraction.parse().unwrap();
        at = end;
    }
    let offset_secs: i64 = if is(at, b"Zz") {
        at += 1;
        0
    } else if is(at, b"+-") {
        let (oh, om) = (digits(at + 1, 2)?, digits(at + 4, 2)?);
        if !is(at + 3, b":") || oh > 23 || om > 59 {
            return None;
        }
        let sign = if b[at] == b'-' { -1 } else { 1 };
        at += 6;
        sign * i64::from(oh * 3600 + om * 60)
    } else {
        return None;
    };
    if at != b.len() {
        return None;
    }
    let leap_year = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap_year => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > month_days || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let local = NaiveDate::from_ymd_opt(year as i32, month, day)?
        .and_hms_opt(hour, minute, second.min(59))?
        .and_utc()
        .timestamp();
    if second == 60 {
        nanos = 999_999_999;
    }
    Some((local - offset_secs, nanos))
}

/// A JSON object serde_json reads, nesting at most 127 deep, whose `taskId`
/// and `runId`, where present, are strings equal to the request's and appear
/// once (two would leave parsers to disagree on which counts).
fn summary_ok(json: &str, task_id: &str, run_id: &str) -> bool {
    let Ok(value) = serde_json::from_str::<Value>(json) else {
        return false;
    };
    let Value::Object(members) = &value else {
        return false;
    };
    if depth(&value) > 127 {
        return false;
    }
    // serde_json's map keeps the last of duplicate keys; count them apart.
    let Ok(TopKeys(keys)) = serde_json::from_str::<TopKeys>(json) else {
        return false;
    };
    [("taskId", task_id), ("runId", run_id)]
        .into_iter()
        .all(|(key, expected)| {
            keys.iter().filter(|k| *k == key).count() <= 1
                && members
                    .get(key)
                    .is_none_or(|value| value.as_str() == Some(expected))
        })
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The keys of a top-level object, duplicates included.
struct TopKeys(Vec<String>);

impl<'de> serde::Deserialize<'de> for TopKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = TopKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(TopKeys(keys))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}
