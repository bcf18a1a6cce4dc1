//! One syslog message → the JSON envelope:
//! `{"ts"?, "level", "facility", "host"?, "app"?, "procid"?, "msgid"?, "structured_data"?, "message"}`.
//!
//! Three shapes are recognised after the `<PRI>`:
//! - RFC 5424: `1 TIMESTAMP HOST APP PROCID MSGID SD MSG`; `-` fields are left out, a BOM before
//!   MSG is dropped, structured data is kept as written in `structured_data`.
//! - RFC 3164: `Mmm dd hh:mm:ss HOST TAG[pid]: MSG` (also without HOST, as glibc's `syslog(3)`
//!   writes to `/dev/log`, and with an RFC 3339 timestamp instead, as rsyslog forwards). The
//!   timestamp has neither year nor zone: it is read as UTC in the current year, or the previous
//!   one when that would put it more than a day in the future (December messages read in January).
//! - Anything else, which is what Python's `SysLogHandler` sends (`<PRI>` + ident + message, no
//!   timestamp or host, a traceback inside): all of it is `message`. The ident is not split off:
//!   it has no marker that tells it from the message's own first word.
//!
//! Trailing `\0`, `\n` and `\r` are dropped; inner newlines stay. A message without a valid
//! `<PRI>` (1 to 3 digits, at most 191) still ships, as `{"message": ...}` with the warning
//! `syslog_pri`: the bytes arrived on a syslog socket, and dropping them would lose the log.
//! Invalid UTF-8 is replaced (warning `invalid_utf8`).
//!
//! A hand parser rather than `syslog_loose`: that crate's RFC 3164 path requires a timestamp, so
//! Python's `<14>text\0` comes out with `<14>` inside `msg` and no severity, and the PRI, the NUL
//! and the traceback handling would have to be done here anyway. What remains is a few token
//! splits.

use chrono::{DateTime, Datelike as _, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc};

use super::framing::{DecodeError, Decoded, kind};
use super::pickle::lossy_utf8;
use crate::parse::json::push_json_str;

const SEVERITIES: [&str; 8] = [
    "EMERGENCY",
    "ALERT",
    "CRITICAL",
    "ERROR",
    "WARNING",
    "NOTICE",
    "INFO",
    "DEBUG",
];

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Decodes one syslog message (a datagram, or a frame cut by the stream decoder).
pub fn decode(message: &[u8]) -> Result<Decoded, DecodeError> {
    decode_at(message, Utc::now())
}

/// [`decode`] with the clock given, for the RFC 3164 year.
pub fn decode_at(message: &[u8], now: DateTime<Utc>) -> Result<Decoded, DecodeError> {
    let end = message
        .iter()
        .rposition(|b| !matches!(b, b'\0' | b'\n' | b'\r'))
        .map_or(0, |i| i + 1);
    let message = &message[..end];
    if message.is_empty() {
        return Err(DecodeError::new(kind::EMPTY, "empty syslog message"));
    }
    let (text, lossy) = match std::str::from_utf8(message) {
        Ok(text) => (std::borrow::Cow::Borrowed(text), false),
        Err(_) => (std::borrow::Cow::Owned(lossy_utf8(message)), true),
    };
    let mut out = Vec::with_capacity(text.len() + 128);
    out.push(b'{');
    let warning = match parse_pri(&text) {
        Some((pri, rest)) => {
            let parsed = parse_body(rest, now);
            write_envelope(&mut out, pri, &parsed);
            lossy.then_some(kind::INVALID_UTF8)
        }
        None => {
            out.extend_from_slice(b"\"message\":");
            push_json_str(&mut out, &text);
            Some(kind::SYSLOG_PRI)
        }
    };
    out.push(b'}');
    Ok(Decoded::Envelope { json: out, warning })
}

/// `<PRI>` at the start: the value (0..=191) and the rest of the text.
fn parse_pri(text: &str) -> Option<(u8, &str)> {
    let rest = text.strip_prefix('<')?;
    let close = rest.bytes().take(4).position(|b| b == b'>')?;
    let digits = &rest[..close];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pri: u8 = digits.parse().ok().filter(|p| *p <= 191)?;
    Some((pri, &rest[close + 1..]))
}

/// The fields after `<PRI>`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Body<'a> {
    /// RFC 3339 UTC with milliseconds, or the timestamp as written when it does not parse.
    ts: Option<String>,
    host: Option<&'a str>,
    app: Option<&'a str>,
    procid: Option<&'a str>,
    msgid: Option<&'a str>,
    structured_data: Option<&'a str>,
    message: &'a str,
}

fn parse_body(rest: &str, now: DateTime<Utc>) -> Body<'_> {
    if let Some(after_version) = rest.strip_prefix("1 ")
        && let Some(body) = parse_5424(after_version)
    {
        return body;
    }
    if let Some(body) = parse_3164(rest, now) {
        return body;
    }
    Body {
        message: rest,
        ..Body::default()
    }
}

/// Splits off one space-terminated token.
fn token(text: &str) -> Option<(&str, &str)> {
    let (token, rest) = text.split_once(' ')?;
    (!token.is_empty()).then_some((token, rest))
}

fn nil(field: &str) -> Option<&str> {
    (field != "-").then_some(field)
}

fn parse_5424(text: &str) -> Option<Body<'_>> {
    let (timestamp, text) = token(text)?;
    let (host, text) = token(text)?;
    let (app, text) = token(text)?;
    let (procid, text) = token(text)?;
    // MSGID may end the message (no SD, no MSG) in lenient senders.
    let (msgid, text) = token(text).unwrap_or((text, ""));
    if msgid.is_empty() {
        return None;
    }
    let (structured_data, message) = if let Some(rest) = text.strip_prefix('-') {
        (None, rest)
    } else if text.starts_with('[') {
        let end = structured_data_end(text)?;
        (Some(&text[..end]), &text[end..])
    } else if text.is_empty() {
        (None, "")
    } else {
        return None;
    };
    let message = message.strip_prefix(' ').unwrap_or(message);
    let message = message.strip_prefix('\u{feff}').unwrap_or(message);
    Some(Body {
        ts: nil(timestamp).map(rfc3339_utc),
        host: nil(host),
        app: nil(app),
        procid: nil(procid),
        msgid: nil(msgid),
        structured_data,
        message,
    })
}

/// The end of `[id k="v"][...]`: quoted values may hold `\"`, `\]` and `\\`.
fn structured_data_end(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while bytes.get(i) == Some(&b'[') {
        let mut quoted = false;
        i += 1;
        loop {
            match *bytes.get(i)? {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b']' if !quoted => break,
                _ => {}
            }
            i += 1;
        }
        i += 1;
    }
    Some(i)
}

/// An RFC 3339 timestamp normalised to the envelope's `ts` shape; kept as written otherwise.
fn rfc3339_utc(text: &str) -> String {
    match DateTime::parse_from_rfc3339(text) {
        Ok(time) => format_ts(time.with_timezone(&Utc).naive_utc()),
        Err(_) => text.to_string(),
    }
}

fn format_ts(time: NaiveDateTime) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string()
}

fn parse_3164(text: &str, now: DateTime<Utc>) -> Option<Body<'_>> {
    let (ts, rest) = if let Some(rest) = text.get(16..).filter(|_| text.as_bytes()[15] == b' ') {
        (bsd_timestamp(&text[..15], now)?, rest)
    } else {
        let (first, rest) = token(text)?;
        let time = DateTime::parse_from_rfc3339(first).ok()?;
        (format_ts(time.with_timezone(&Utc).naive_utc()), rest)
    };
    let mut body = Body {
        ts: Some(ts),
        message: rest,
        ..Body::default()
    };
    // TAG right after the timestamp (no HOST), else HOST then an optional TAG. A lone word
    // is the message.
    let Some((first, after_first)) = token(rest) else {
        return Some(body);
    };
    if let Some((app, procid)) = tag(first) {
        (body.app, body.procid, body.message) = (Some(app), procid, after_first);
        return Some(body);
    }
    body.host = Some(first);
    body.message = after_first;
    let (second, after_second) = token(after_first).unwrap_or((after_first, ""));
    if let Some((app, procid)) = tag(second) {
        (body.app, body.procid, body.message) = (Some(app), procid, after_second);
    }
    Some(body)
}

/// `Mmm dd hh:mm:ss` (day space-padded), in the year that puts it at most a day ahead of `now`.
fn bsd_timestamp(text: &str, now: DateTime<Utc>) -> Option<String> {
    let b = text.as_bytes();
    if b.len() != 15 || b[3] != b' ' || b[6] != b' ' || b[9] != b':' || b[12] != b':' {
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == &text[..3])? as u32 + 1;
    let day: u32 = text[4..6].trim_start().parse().ok()?;
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = text.get(range)?;
        digits
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    let time = NaiveTime::from_hms_opt(number(7..9)?, number(10..12)?, number(13..15)?)?;
    let year = now.year();
    let at = |year: i32| NaiveDate::from_ymd_opt(year, month, day).map(|d| d.and_time(time));
    let limit = now.naive_utc() + TimeDelta::days(1);
    let time = match at(year) {
        Some(t) if t <= limit => t,
        _ => at(year - 1)?,
    };
    Some(format_ts(time))
}

/// `app[pid]:` or `app:` → (app, pid).
fn tag(word: &str) -> Option<(&str, Option<&str>)> {
    let word = word.strip_suffix(':')?;
    let (app, procid) = match word.strip_suffix(']').and_then(|w| w.split_once('[')) {
        Some((app, pid)) => (app, Some(pid).filter(|p| !p.is_empty())),
        None => (word, None),
    };
    let valid = !app.is_empty() && app.len() <= 48 && !app.contains(['[', ']', '"']);
    valid.then_some((app, procid))
}

fn write_envelope(out: &mut Vec<u8>, pri: u8, body: &Body<'_>) {
    let field = |out: &mut Vec<u8>, name: &str, value: &str| {
        if out.len() > 1 {
            out.push(b',');
        }
        push_json_str(out, name);
        out.push(b':');
        push_json_str(out, value);
    };
    if let Some(ts) = &body.ts {
        field(out, "ts", ts);
    }
    field(out, "level", SEVERITIES[usize::from(pri & 7)]);
    field(out, "facility", FACILITIES[usize::from(pri >> 3).min(23)]);
    let optional = [
        ("host", body.host),
        ("app", body.app),
        ("procid", body.procid),
        ("msgid", body.msgid),
        ("structured_data", body.structured_data),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            field(out, name, value);
        }
    }
    field(out, "message", body.message);
}
