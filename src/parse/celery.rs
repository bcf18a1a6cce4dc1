//! Celery's default log formats, recognised on bytes without a regex.
//!
//! Worker format: `[%(asctime)s: %(levelname)s/%(processName)s] %(message)s`.
//! Task format:   `[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s`.
//! Celery's own task lifecycle messages (`Task NAME[ID] received`, `... succeeded in ...`,
//! `... raised unexpected: ...`, `... retry: ...`) carry the task too, in the message itself.
//!
//! `asctime` has no zone, so the offset comes from a [`TimeZone`] setting (default UTC). Only fixed
//! offsets are supported: named zones with daylight saving time would need a zone database, which
//! this crate does not carry.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// Length of `[YYYY-MM-DD HH:MM:SS,mmm: `, the fixed part of the prefix.
const FIXED_PREFIX_LEN: usize = 26;
/// Longest `LEVEL/Process` part accepted before the closing bracket; keeps the scan of a line that
/// merely starts like a timestamp bounded.
const MAX_LEVEL_PROCESS_LEN: usize = 128;
/// Longest task name or task id accepted; real ones are far shorter (ids are UUIDs).
const MAX_TASK_PART_LEN: usize = 256;

/// The parsed `[asctime: LEVEL/Process]` prefix of a line. Ranges index the input bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub millis: u16,
    pub level: Range<usize>,
    pub process: Range<usize>,
    /// Where the message starts (after `] `), or the input length when the message is empty.
    pub message_start: usize,
}

/// True when `line` starts with the Celery prefix. The hot path of `--multiline celery`.
#[inline]
pub fn has_prefix(line: &[u8]) -> bool {
    // Cheap rejection first: almost every continuation line fails on the first byte.
    line.first() == Some(&b'[') && parse_prefix(line).is_some()
}

/// Parses the `[YYYY-MM-DD HH:MM:SS,mmm: LEVEL/Process] ` prefix. The date is checked for shape,
/// not for validity (month 13 still parses here; [`write_rfc3339`] rejects it).
pub fn parse_prefix(line: &[u8]) -> Option<Prefix> {
    if line.len() < FIXED_PREFIX_LEN + 4 {
        return None;
    }
    let b = line;
    let shape = b[0] == b'['
        && b[5] == b'-'
        && b[8] == b'-'
        && b[11] == b' '
        && b[14] == b':'
        && b[17] == b':'
        && b[20] == b','
        && b[24] == b':'
        && b[25] == b' ';
    if !shape {
        return None;
    }
    let year = digits(&b[1..5])?;
    let month = digits(&b[6..8])?;
    let day = digits(&b[9..11])?;
    let hour = digits(&b[12..14])?;
    let minute = digits(&b[15..17])?;
    let second = digits(&b[18..20])?;
    let millis = digits(&b[21..24])?;

    let window_end = b.len().min(FIXED_PREFIX_LEN + MAX_LEVEL_PROCESS_LEN);
    let window = &b[FIXED_PREFIX_LEN..window_end];
    let close = FIXED_PREFIX_LEN + memchr::memchr(b']', window)?;
    let slash = FIXED_PREFIX_LEN + memchr::memchr(b'/', &b[FIXED_PREFIX_LEN..close])?;
    let level = FIXED_PREFIX_LEN..slash;
    let process = slash + 1..close;
    // Levels are upper-case names (`INFO`) or `Level 5` for unnamed numeric levels.
    let level_ok = !level.is_empty()
        && b[level.clone()]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b' ' || *c == b'_');
    if !level_ok || process.is_empty() {
        return None;
    }
    let message_start = match b.get(close + 1) {
        None => close + 1,
        Some(b' ') => close + 2,
        Some(_) => return None,
    };
    Some(Prefix {
        year: year as u16,
        month: month as u8,
        day: day as u8,
        hour: hour as u8,
        minute: minute as u8,
        second: second as u8,
        millis: millis as u16,
        level,
        process,
        message_start,
    })
}

/// Parses ASCII decimal digits (at most 4, so no overflow).
#[inline]
fn digits(bytes: &[u8]) -> Option<u32> {
    bytes.iter().try_fold(0u32, |acc, c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

/// A task named in a message: ranges index the message bytes given to [`find_task`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRef {
    pub name: Range<usize>,
    pub id: Range<usize>,
    /// Where the user's message starts: after `]: ` in the task format, 0 for Celery's own
    /// `Task NAME[ID] ...` messages (kept whole, since the verb is the information).
    pub message_start: usize,
}

/// Finds the task in a Celery message: the task format `NAME[ID]: message`, or Celery's own
/// `Task NAME[ID] received|succeeded in ...|raised unexpected: ...|retry: ...` messages.
pub fn find_task(message: &[u8]) -> Option<TaskRef> {
    if let Some(rest) = message.strip_prefix(b"Task ") {
        let (name, id, after) = name_and_id(rest)?;
        let offset = b"Task ".len();
        let next = rest.get(after);
        // `Task NAME[ID]` is followed by a verb, or `:` in `Task NAME[ID]: ...` variants.
        if matches!(next, None | Some(b' ') | Some(b':')) {
            return Some(TaskRef {
                name: name.start + offset..name.end + offset,
                id: id.start + offset..id.end + offset,
                message_start: 0,
            });
        }
        return None;
    }
    let (name, id, after) = name_and_id(message)?;
    match &message[after..] {
        [b':', b' ', ..] => Some(TaskRef {
            name,
            id,
            message_start: after + 2,
        }),
        [b':'] => Some(TaskRef {
            name,
            id,
            message_start: after + 1,
        }),
        _ => None,
    }
}

/// Splits `NAME[ID]...` into the name range, the id range and the index after `]`.
fn name_and_id(bytes: &[u8]) -> Option<(Range<usize>, Range<usize>, usize)> {
    let window = &bytes[..bytes.len().min(MAX_TASK_PART_LEN)];
    let open = memchr::memchr(b'[', window)?;
    if open == 0 || bytes[..open].iter().any(|c| c.is_ascii_whitespace()) {
        return None;
    }
    let id_window = &bytes[open + 1..bytes.len().min(open + 1 + MAX_TASK_PART_LEN)];
    let close = open + 1 + memchr::memchr(b']', id_window)?;
    let id = open + 1..close;
    if id.is_empty()
        || bytes[id.clone()]
            .iter()
            .any(|c| c.is_ascii_whitespace() || *c == b'[')
    {
        return None;
    }
    Some((0..open, id, close + 1))
}

/// A fixed UTC offset for Celery timestamps, parsed from `UTC`, `Z`, `+02:00`, `-0530` or `+02`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeZone {
    offset_minutes: i16,
}

/// A `--timezone` value that is not a fixed offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid timezone {0:?}: expected UTC or a fixed offset like +02:00 (named zones with daylight saving time are not supported)"
)]
pub struct TimeZoneError(pub String);

impl TimeZone {
    pub const UTC: TimeZone = TimeZone { offset_minutes: 0 };

    /// Offset east of UTC, in minutes; `None` beyond ±23:59.
    pub fn from_offset_minutes(offset_minutes: i16) -> Option<TimeZone> {
        (offset_minutes.unsigned_abs() < 24 * 60).then_some(TimeZone { offset_minutes })
    }

    pub fn offset_minutes(self) -> i16 {
        self.offset_minutes
    }

    /// The RFC 3339 offset suffix, e.g. `+00:00`.
    fn suffix(self) -> [u8; 6] {
        let sign = if self.offset_minutes < 0 { b'-' } else { b'+' };
        let abs = self.offset_minutes.unsigned_abs();
        let (h, m) = ((abs / 60) as u8, (abs % 60) as u8);
        [
            sign,
            b'0' + h / 10,
            b'0' + h % 10,
            b':',
            b'0' + m / 10,
            b'0' + m % 10,
        ]
    }
}

impl FromStr for TimeZone {
    type Err = TimeZoneError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || TimeZoneError(s.to_string());
        let t = s.trim();
        if t.eq_ignore_ascii_case("utc") || t == "Z" || t.eq_ignore_ascii_case("gmt") {
            return Ok(TimeZone::UTC);
        }
        let (sign, rest) = match t.as_bytes().first() {
            Some(b'+') => (1i16, &t[1..]),
            Some(b'-') => (-1i16, &t[1..]),
            _ => return Err(err()),
        };
        let r = rest.as_bytes();
        let (hours, minutes) = match r.len() {
            2 => (digits(r), Some(0)),
            4 => (digits(&r[..2]), digits(&r[2..])),
            5 if r[2] == b':' => (digits(&r[..2]), digits(&r[3..])),
            _ => (None, None),
        };
        let (Some(hours), Some(minutes)) = (hours, minutes) else {
            return Err(err());
        };
        let (hours, minutes) = (hours as i16, minutes as i16);
        if hours > 23 || minutes > 59 {
            return Err(err());
        }
        TimeZone::from_offset_minutes(sign * (hours * 60 + minutes)).ok_or_else(err)
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.offset_minutes == 0 {
            return f.write_str("UTC");
        }
        f.write_str(std::str::from_utf8(&self.suffix()).map_err(|_| fmt::Error)?)
    }
}

/// Appends the prefix's timestamp as RFC 3339 with milliseconds and the zone's offset, e.g.
/// `2026-11-22T02:45:34.572+00:00`. Returns false (writing nothing) for an impossible date or time.
pub fn write_rfc3339(out: &mut Vec<u8>, p: &Prefix, zone: TimeZone) -> bool {
    let date =
        chrono::NaiveDate::from_ymd_opt(i32::from(p.year), u32::from(p.month), u32::from(p.day));
    let time = chrono::NaiveTime::from_hms_milli_opt(
        u32::from(p.hour),
        u32::from(p.minute),
        u32::from(p.second),
        u32::from(p.millis),
    );
    if date.is_none() || time.is_none() {
        return false;
    }
    // The fields were validated above, so plain digit arithmetic renders them.
    let two = |v: u8| [b'0' + v / 10, b'0' + v % 10];
    let y = p.year;
    out.extend_from_slice(&[
        b'0' + (y / 1000) as u8,
        b'0' + (y / 100 % 10) as u8,
        b'0' + (y / 10 % 10) as u8,
        b'0' + (y % 10) as u8,
        b'-',
    ]);
    out.extend_from_slice(&two(p.month));
    out.push(b'-');
    out.extend_from_slice(&two(p.day));
    out.push(b'T');
    out.extend_from_slice(&two(p.hour));
    out.push(b':');
    out.extend_from_slice(&two(p.minute));
    out.push(b':');
    out.extend_from_slice(&two(p.second));
    let ms = p.millis;
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
    ]);
    out.extend_from_slice(&zone.suffix());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    type PrefixCase = (
        &'static str,
        Option<(&'static str, &'static str, &'static str)>,
    );
    type TaskCase = (&'static str, Option<(&'static str, &'static str, usize)>);

    #[test]
    fn prefix_table() {
        let cases: &[PrefixCase] = &[
            (
                "[2026-11-22 02:45:34,572: INFO/ForkPoolWorker-2] hi",
                Some(("INFO", "ForkPoolWorker-2", "hi")),
            ),
            (
                "[2026-11-22 02:45:34,572: WARNING/MainProcess] ",
                Some(("WARNING", "MainProcess", "")),
            ),
            (
                "[2026-11-22 02:45:34,572: Level 5/MainProcess]",
                Some(("Level 5", "MainProcess", "")),
            ),
            ("[2026-11-22 02:45:34,572: INFO/MainProcess]x", None),
            ("[2026-11-22 02:45:34,572: INFO] no process", None),
            ("[2026-11-22 02:45:34.572: INFO/MainProcess] dot", None),
            ("  File \"/app/tasks.py\", line 1", None),
            ("[2026-1x-22 02:45:34,572: INFO/MainProcess] x", None),
            ("", None),
        ];
        for (line, want) in cases {
            let got = parse_prefix(line.as_bytes()).map(|p| {
                let s = line.as_bytes();
                (
                    std::str::from_utf8(&s[p.level]).unwrap().to_string(),
                    std::str::from_utf8(&s[p.process]).unwrap().to_string(),
                    std::str::from_utf8(&s[p.message_start..])
                        .unwrap()
                        .to_string(),
                )
            });
            let want = want.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()));
            assert_eq!(got, want, "{line:?}");
            assert_eq!(has_prefix(line.as_bytes()), want.is_some(), "{line:?}");
        }
    }

    #[test]
    fn task_table() {
        let cases: &[TaskCase] = &[
            ("tasks.add[abc-1]: done", Some(("tasks.add", "abc-1", 18))),
            (
                "Task tasks.add[abc-1] received",
                Some(("tasks.add", "abc-1", 0)),
            ),
            (
                "Task tasks.add[abc-1] succeeded in 0.1s: 3",
                Some(("tasks.add", "abc-1", 0)),
            ),
            (
                "Task tasks.add[abc-1] raised unexpected: KeyError('x')",
                Some(("tasks.add", "abc-1", 0)),
            ),
            ("Task tasks.add[abc-1]x", None),
            ("Connected to redis://x[0]", None),
            ("tasks.add[abc-1] no colon", None),
            ("w1@vm ready.", None),
            ("[x]: y", None),
        ];
        for (msg, want) in cases {
            let got =
                find_task(msg.as_bytes()).map(|t| (&msg[t.name], &msg[t.id], t.message_start));
            assert_eq!(got, *want, "{msg:?}");
        }
    }

    #[test]
    fn timezone_parsing_and_rendering() {
        for (s, minutes) in [
            ("UTC", 0),
            ("Z", 0),
            ("+02:00", 120),
            ("-0530", -330),
            ("+09", 540),
        ] {
            assert_eq!(
                s.parse::<TimeZone>().unwrap().offset_minutes(),
                minutes,
                "{s}"
            );
        }
        for bad in ["Europe/Paris", "+24:00", "+2", "02:00", "+02:60", ""] {
            assert!(bad.parse::<TimeZone>().is_err(), "{bad}");
        }
        let line = b"[2026-11-22 02:45:34,072: INFO/MainProcess] x";
        let p = parse_prefix(line).unwrap();
        let mut out = Vec::new();
        assert!(write_rfc3339(&mut out, &p, "-05:30".parse().unwrap()));
        assert_eq!(out, b"2026-11-22T02:45:34.072-05:30");
        let bad = parse_prefix(b"[2026-13-22 02:45:34,072: INFO/MainProcess] x").unwrap();
        assert!(!write_rfc3339(&mut Vec::new(), &bad, TimeZone::UTC));
    }
}
