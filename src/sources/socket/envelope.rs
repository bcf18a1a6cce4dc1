//! A decoded LogRecord dict → one-line JSON object, shaped like the `--format celery` envelope of
//! the file path where the two overlap (`ts`, `level`, `task_name`, `task_id`, `message`), so the
//! same partition key templates (`{task_id}`, `{field.NAME}`) and consumers work for both.
//!
//! Keys, in this order, each only when the record has it:
//! `ts` (from `created`, RFC 3339 UTC with milliseconds, as the celery envelope writes it),
//! `level` (levelname), `logger` (name), `process` (pid), `processName`, `thread`, `threadName`,
//! `task_name`, `task_id` (attributes a Celery filter adds), `message` (msg, its args already
//! merged by the handler), `exception` (exc_text, the whole traceback), `stack_info`,
//! `pathname`, `lineno`, `funcName`, then every other key (`extra=`) in the record's order.
//!
//! Dropped: `args`, `exc_info`, `msecs`, `relativeCreated`, `filename`, `module`, `levelno`,
//! `message` (a copy of msg), `taskName` when None, `exception`/`stack_info` when None.
//! An `extra=` key that is also an envelope key (`ts`, `level`, ...) is written as `extra_<key>`,
//! so no key appears twice. Values: dict → object (non-string keys as text), list/tuple/set →
//! array, None → null, NaN and infinities → the strings `"NaN"`, `"Infinity"`, `"-Infinity"`,
//! integers beyond 64 bits → JSON numbers with all their digits (strings beyond f64's range,
//! which common parsers refuse), bytes → text (invalid UTF-8 replaced). Output has no raw
//! newline.

use std::io::Write as _;

use chrono::{Datelike as _, Timelike as _};

use super::pickle::{Value, lossy_utf8};
use crate::parse::celery::{self, Prefix, TimeZone};
use crate::parse::json::push_json_str;

/// Integers with more digits than this (beyond f64's range) are written as strings.
const MAX_NUMBER_DIGITS: usize = 308;

/// The envelope's own keys, in output order.
const ENVELOPE_KEYS: [&str; 15] = [
    "ts",
    "level",
    "logger",
    "process",
    "processName",
    "thread",
    "threadName",
    "task_name",
    "task_id",
    "message",
    "exception",
    "stack_info",
    "pathname",
    "lineno",
    "funcName",
];

/// LogRecord attributes that are either renamed into the envelope or dropped.
const RECORD_KEYS: [&str; 24] = [
    "name",
    "msg",
    "args",
    "levelname",
    "levelno",
    "pathname",
    "filename",
    "module",
    "exc_info",
    "exc_text",
    "stack_info",
    "lineno",
    "funcName",
    "created",
    "msecs",
    "relativeCreated",
    "thread",
    "threadName",
    "processName",
    "process",
    "taskName",
    "task_id",
    "task_name",
    "message",
];

/// The place of `name` in [`RECORD_KEYS`], by a `match` (no hashing, no scan).
fn record_key(name: &str) -> Option<usize> {
    Some(match name {
        "name" => 0,
        "msg" => 1,
        "args" => 2,
        "levelname" => 3,
        "levelno" => 4,
        "pathname" => 5,
        "filename" => 6,
        "module" => 7,
        "exc_info" => 8,
        "exc_text" => 9,
        "stack_info" => 10,
        "lineno" => 11,
        "funcName" => 12,
        "created" => 13,
        "msecs" => 14,
        "relativeCreated" => 15,
        "thread" => 16,
        "threadName" => 17,
        "processName" => 18,
        "process" => 19,
        "taskName" => 20,
        "task_id" => 21,
        "task_name" => 22,
        "message" => 23,
        _ => return None,
    })
}

fn is_envelope_key(name: &str) -> bool {
    matches!(
        name,
        "ts" | "level"
            | "logger"
            | "process"
            | "processName"
            | "thread"
            | "threadName"
            | "task_name"
            | "task_id"
            | "message"
            | "exception"
            | "stack_info"
            | "pathname"
            | "lineno"
            | "funcName"
    )
}

/// Writes the JSON envelope of a LogRecord dict.
pub fn log_record(fields: &[(Value, Value)]) -> Vec<u8> {
    // One pass finds where each LogRecord attribute is (the last occurrence wins, as in a
    // Python dict built from the same items); other keys are the extras.
    let mut at: [Option<usize>; RECORD_KEYS.len()] = [None; RECORD_KEYS.len()];
    for (i, (key, _)) in fields.iter().enumerate() {
        if let Value::Str(key) = key
            && let Some(slot) = record_key(key)
        {
            at[slot] = Some(i);
        }
    }
    let get = |name: &str| {
        record_key(name)
            .and_then(|slot| at[slot])
            .map(|i| &fields[i].1)
    };
    let present = |name: &str| get(name).filter(|v| !matches!(v, Value::None));

    let mut out = Vec::with_capacity(512);
    out.push(b'{');
    let mut first = true;
    if let Some(created) = get("created") {
        out.extend_from_slice(b"\"ts\":");
        let written = match created {
            Value::Float(f) => write_ts(&mut out, *f),
            Value::Int(n) => write_ts(&mut out, *n as f64),
            _ => false,
        };
        if written {
            first = false;
        } else {
            out.truncate(1);
        }
    }
    let mut key = |out: &mut Vec<u8>, name: &str| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        push_json_str(out, name);
        out.push(b':');
    };
    let renamed: [(&str, &str); ENVELOPE_KEYS.len() - 1] = [
        ("level", "levelname"),
        ("logger", "name"),
        ("process", "process"),
        ("processName", "processName"),
        ("thread", "thread"),
        ("threadName", "threadName"),
        ("task_name", "task_name"),
        ("task_id", "task_id"),
        ("message", "msg"),
        ("exception", "exc_text"),
        ("stack_info", "stack_info"),
        ("pathname", "pathname"),
        ("lineno", "lineno"),
        ("funcName", "funcName"),
    ];
    for (name, attribute) in renamed {
        let value = match name {
            // Only SocketHandler's `msg` is the merged message; `message` is a fallback.
            "message" => present("msg").or_else(|| present("message")),
            _ => present(attribute),
        };
        if let Some(value) = value {
            key(&mut out, name);
            write_value(&mut out, value);
        }
    }
    for (i, (name, value)) in fields.iter().enumerate() {
        let text_key;
        let name: &str = match name {
            Value::Str(name) => {
                match record_key(name) {
                    // An attribute, written above or dropped; only a set `taskName` ships, once.
                    Some(slot) => {
                        if name != "taskName" || matches!(value, Value::None) || at[slot] != Some(i)
                        {
                            continue;
                        }
                    }
                    // An extra given twice: the last one wins.
                    None => {
                        let later = fields[i + 1..]
                            .iter()
                            .any(|(k, _)| matches!(k, Value::Str(k) if k == name));
                        if later {
                            continue;
                        }
                    }
                }
                name
            }
            other => {
                text_key = key_text(other);
                &text_key
            }
        };
        if is_envelope_key(name) {
            key(&mut out, &format!("extra_{name}"));
        } else {
            key(&mut out, name);
        }
        write_value(&mut out, value);
    }
    out.push(b'}');
    out
}

/// `created` (seconds since the epoch) as the celery envelope's `ts`: `YYYY-MM-DDTHH:MM:SS.mmm+00:00`.
/// Milliseconds are truncated, as Python's `msecs`. False for years outside 1..=9999.
fn write_ts(out: &mut Vec<u8>, created: f64) -> bool {
    if !created.is_finite() {
        return false;
    }
    let seconds = created.floor();
    // Within chrono's range and years 1 to 9999.
    if !(-62_135_596_800.0..253_402_300_800.0).contains(&seconds) {
        return false;
    }
    let millis = (((created - seconds) * 1000.0) as u16).min(999);
    let Some(time) = chrono::DateTime::from_timestamp(seconds as i64, 0) else {
        return false;
    };
    let Ok(year) = u16::try_from(time.year()) else {
        return false;
    };
    let prefix = Prefix {
        year,
        month: time.month() as u8,
        day: time.day() as u8,
        hour: time.hour() as u8,
        minute: time.minute() as u8,
        second: time.second() as u8,
        millis,
        level: 0..0,
        process: 0..0,
        message_start: 0,
    };
    out.push(b'"');
    if !celery::write_rfc3339(out, &prefix, TimeZone::UTC) {
        return false;
    }
    out.push(b'"');
    true
}

/// A dict key that is not a string, as text (`1`, `None`, `(1, 2)` as JSON `[1,2]`).
fn key_text(key: &Value) -> String {
    match key {
        Value::Str(s) => s.clone(),
        Value::Bytes(b) => lossy_utf8(b),
        Value::BigInt(digits) => digits.clone(),
        other => {
            let mut out = Vec::new();
            write_value(&mut out, other);
            String::from_utf8(out).unwrap_or_default()
        }
    }
}

/// Writes `value` as JSON. Depth is bounded by the pickle decoder.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::None => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(n) => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{n}");
        }
        // All digits, as Python's `json.dumps` writes them; beyond f64's range common parsers
        // refuse the number, so it is written as a string.
        Value::BigInt(digits) if digits.trim_start_matches('-').len() <= MAX_NUMBER_DIGITS => {
            out.extend_from_slice(digits.as_bytes())
        }
        Value::BigInt(digits) => push_json_str(out, digits),
        Value::Float(f) => write_float(out, *f),
        Value::Str(s) => push_json_str(out, s),
        Value::Bytes(b) => push_json_str(out, &lossy_utf8(b)),
        Value::List(items) | Value::Tuple(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Dict(pairs) => {
            out.push(b'{');
            for (i, (k, v)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_json_str(out, &key_text(k));
                out.push(b':');
                write_value(out, v);
            }
            out.push(b'}');
        }
    }
}

fn write_float(out: &mut Vec<u8>, f: f64) {
    if f.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 {
            b"\"Infinity\""
        } else {
            b"\"-Infinity\""
        });
    } else {
        // `Debug` is the shortest text that reads back as the same f64 (`1.5`, `1e300`, `-0.0`),
        // always a valid JSON number.
        let _ = write!(out, "{f:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_matches_agree_with_the_key_lists() {
        for (i, name) in RECORD_KEYS.iter().enumerate() {
            assert_eq!(record_key(name), Some(i), "{name}");
        }
        assert_eq!(record_key("seq"), None);
        for name in ENVELOPE_KEYS {
            assert!(is_envelope_key(name), "{name}");
        }
        assert!(!is_envelope_key("seq") && !is_envelope_key("name"));
    }
}
