//! Joins the lines of one file into records (log events), with a flush timeout and a size cap.
//!
//! One [`Joiner`] per file. Lines arrive without their terminator, each with its byte range
//! `[start, end)` in the file (`end` includes the terminator). A record's data is its lines joined
//! with `\n`; its range runs from its first line's start to its last line's end, so the range, not
//! the data length, drives acknowledgements and checkpoints.
//!
//! Invariants (checked by the property tests in `parse::tests`):
//! - no byte is lost, reordered or duplicated: events' ranges are contiguous and cover every line,
//!   and concatenating a record's parts gives back its lines joined with `\n`;
//! - no event's data is longer than `max_record_bytes`. A record that would be longer is cut into
//!   parts: every part but the last is marked `split`, and `part` numbers them from 0. A cut never
//!   splits a UTF-8 character unless a single character is wider than the room left in an empty part.
//!
//! A record is only known to be complete when the next record starts, so the last record of a quiet
//! file waits for [`Joiner::poll_timeout`] (default 1 s after its last line) or [`Joiner::flush`].

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use regex::bytes::Regex;

use super::Stats;
use super::celery;
use super::python::PythonState;

/// How long the last record of a file waits for more lines before it ships.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Default cap on a record's raw bytes: half of Kinesis' default 1 MiB record limit (data plus
/// partition key, see the PutRecords API reference), leaving room for the JSON envelope,
/// enrichment and escaping (a quote or backslash doubles in JSON).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 512 * 1024;

/// `--multiline`: how to tell where a record starts.
#[derive(Debug, Clone)]
pub enum Multiline {
    /// Every line is a record.
    None,
    /// Python tracebacks (and indented lines) continue the line above; see `parse::python`.
    Python,
    /// Every line that does not start with Celery's `[YYYY-MM-DD HH:MM:SS,mmm: LEVEL/Process]`
    /// prefix continues the record above.
    Celery,
    /// A line matching the regex starts a record; any other line continues the record above.
    Regex(Regex),
}

impl PartialEq for Multiline {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Multiline::Regex(a), Multiline::Regex(b)) => a.as_str() == b.as_str(),
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

/// A `--multiline` value that is neither a mode name nor a valid regex.
#[derive(Debug, thiserror::Error)]
#[error("invalid --multiline start-of-record regex {pattern:?}: {error}")]
pub struct MultilineError {
    pub pattern: String,
    #[source]
    pub error: regex::Error,
}

impl FromStr for Multiline {
    type Err = MultilineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Multiline::None),
            "python" => Ok(Multiline::Python),
            "celery" => Ok(Multiline::Celery),
            pattern => Regex::new(pattern)
                .map(Multiline::Regex)
                .map_err(|error| MultilineError {
                    pattern: pattern.to_string(),
                    error,
                }),
        }
    }
}

impl fmt::Display for Multiline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Multiline::None => f.write_str("none"),
            Multiline::Python => f.write_str("python"),
            Multiline::Celery => f.write_str("celery"),
            Multiline::Regex(re) => f.write_str(re.as_str()),
        }
    }
}

/// A joined record (or one part of a record cut at the cap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The lines joined with `\n`, without the last line's terminator.
    pub data: Vec<u8>,
    /// File offset of the first byte.
    pub start: u64,
    /// File offset just past the last byte, terminator included.
    pub end: u64,
    /// Input lines that contributed bytes to this event.
    pub lines: usize,
    /// True when the record continues in the next event (it outgrew `max_record_bytes`).
    pub split: bool,
    /// Index of this part within its record: 0 for a whole record or a first part.
    pub part: u32,
}

/// Joiner settings.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinerConfig {
    pub multiline: Multiline,
    pub flush_timeout: Duration,
    /// At least 1; smaller values are raised to 1.
    pub max_record_bytes: usize,
}

impl Default for JoinerConfig {
    fn default() -> Self {
        JoinerConfig {
            multiline: Multiline::None,
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

/// How a line is classified; `Multiline` plus the state the Python mode carries.
#[derive(Debug)]
enum StartRule {
    EveryLine,
    Python(PythonState),
    Celery,
    Regex(Regex),
}

/// The record being built.
#[derive(Debug)]
struct Pending {
    data: Vec<u8>,
    start: u64,
    /// Where the last line's content ends (its terminator starts): the `\n` that joins the next
    /// line stands for the bytes `[content_end, end)`.
    content_end: u64,
    end: u64,
    lines: usize,
    part: u32,
    last_line_at: Instant,
}

/// Joins one file's lines into [`Event`]s.
#[derive(Debug)]
pub struct Joiner {
    rule: StartRule,
    flush_timeout: Duration,
    max_record_bytes: usize,
    pending: Option<Pending>,
    /// An empty buffer to build the next record in, when the caller gave one back.
    spare: Vec<u8>,
    stats: Stats,
}

impl Joiner {
    pub fn new(config: JoinerConfig) -> Joiner {
        let rule = match config.multiline {
            Multiline::None => StartRule::EveryLine,
            Multiline::Python => StartRule::Python(PythonState::default()),
            Multiline::Celery => StartRule::Celery,
            Multiline::Regex(re) => StartRule::Regex(re),
        };
        Joiner {
            rule,
            flush_timeout: config.flush_timeout,
            max_record_bytes: config.max_record_bytes.max(1),
            pending: None,
            spare: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Adds one line (without terminator) whose bytes are `[start, end)` in the file. Complete
    /// events, if any, are appended to `out`.
    pub fn push(&mut self, line: &[u8], start: u64, end: u64, now: Instant, out: &mut Vec<Event>) {
        self.stats.lines += 1;
        let starts_record = match &mut self.rule {
            StartRule::EveryLine => true,
            StartRule::Python(state) => !state.continues(line),
            StartRule::Celery => celery::has_prefix(line),
            StartRule::Regex(re) => re.is_match(line),
        };
        let cap = self.max_record_bytes;
        // A continuation line joins the pending record with a `\n`; with nothing pending (start of
        // the file, or after a flush) it starts a record of its own.
        let (mut pending, separator) = match self.pending.take() {
            Some(pending) if !starts_record => (pending, true),
            previous => {
                if let Some(previous) = previous {
                    out.push(finish(previous, &mut self.stats));
                }
                let mut data = std::mem::take(&mut self.spare);
                data.reserve(line.len().min(cap));
                let pending = Pending {
                    data,
                    start,
                    content_end: start,
                    end: start,
                    lines: 0,
                    part: 0,
                    last_line_at: now,
                };
                (pending, false)
            }
        };
        pending.append(separator, line, start, end, cap, &mut self.stats, out);
        pending.last_line_at = now;
        if matches!(self.rule, StartRule::EveryLine) {
            out.push(finish(pending, &mut self.stats));
        } else {
            self.pending = Some(pending);
        }
    }

    /// Whether a whole line of `len` bytes would leave as one record of its own, unchanged: lines
    /// are not joined, nothing is pending, and the line fits in a record. The caller may then
    /// ship it without pushing it (the joiner's counts are then not kept for it).
    pub fn passes_through(&self, len: usize) -> bool {
        matches!(self.rule, StartRule::EveryLine)
            && self.pending.is_none()
            && len <= self.max_record_bytes
    }

    /// Takes `buffer` (emptied) to build a coming record in, unless the joiner has one already:
    /// a caller done with an event's data gives it back, and the next line needs no allocation.
    pub fn offer(&mut self, buffer: &mut Vec<u8>) {
        if self.spare.capacity() == 0 {
            buffer.clear();
            std::mem::swap(&mut self.spare, buffer);
        }
    }

    /// Ships the pending record if no line arrived for `flush_timeout`.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Event> {
        let pending = self.pending.as_ref()?;
        if now.saturating_duration_since(pending.last_line_at) < self.flush_timeout {
            return None;
        }
        self.stats.flushed_on_timeout += 1;
        self.flush()
    }

    /// When [`Joiner::poll_timeout`] will ship the pending record, if there is one.
    pub fn next_deadline(&self) -> Option<Instant> {
        let pending = self.pending.as_ref()?;
        pending.last_line_at.checked_add(self.flush_timeout)
    }

    /// Ships the pending record now (end of file before a rotation, or shutdown).
    pub fn flush(&mut self) -> Option<Event> {
        let pending = self.pending.take()?;
        Some(finish(pending, &mut self.stats))
    }

    /// True while a record waits for more lines.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Counters so far: lines, records, records_split, split_parts, flushed_on_timeout.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// Turns the pending record into its final event.
fn finish(pending: Pending, stats: &mut Stats) -> Event {
    stats.records += 1;
    Event {
        data: pending.data,
        start: pending.start,
        end: pending.end,
        lines: pending.lines,
        split: false,
        part: pending.part,
    }
}

impl Pending {
    /// Appends `\n` (when `separator`) and `line`, shipping full parts to `out` whenever the data
    /// would outgrow `cap`. `self.data.len() <= cap` holds before and after.
    #[allow(clippy::too_many_arguments)] // the line, its range, and where results go: all needed
    fn append(
        &mut self,
        mut separator: bool,
        line: &[u8],
        start: u64,
        end: u64,
        cap: usize,
        stats: &mut Stats,
        out: &mut Vec<Event>,
    ) {
        let mut rest = line;
        let mut rest_offset = start;
        let mut counted = false;
        loop {
            let mut room = cap - self.data.len();
            if usize::from(separator) + rest.len() <= room {
                if separator {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(rest);
                if !counted {
                    self.lines += 1;
                }
                break;
            }
            // The record outgrows the cap: fill this part, ship it, go on in a new part.
            if separator && room > 0 {
                self.data.push(b'\n');
                separator = false;
                room -= 1;
            }
            if !separator && room > 0 {
                // `rest.len() > room` here, so `rest[room]` exists.
                let take = utf8_cut(rest, room, self.data.is_empty());
                if take > 0 {
                    self.data.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    rest_offset += take as u64;
                    if !counted {
                        self.lines += 1;
                    }
                }
            }
            // A separator still owed stands for the previous line's terminator, which stays with
            // the next part; otherwise this part ends where the rest of the line begins.
            let part_end = if separator {
                self.content_end
            } else {
                rest_offset
            };
            let data =
                std::mem::replace(&mut self.data, Vec::with_capacity(cap.min(rest.len() + 1)));
            out.push(Event {
                data,
                start: self.start,
                end: part_end,
                lines: self.lines,
                split: true,
                part: self.part,
            });
            if self.part == 0 {
                stats.records_split += 1;
            }
            stats.split_parts += 1;
            stats.records += 1;
            self.start = part_end;
            self.part += 1;
            self.lines = 0;
            counted = false;
        }
        self.content_end = start + line.len() as u64;
        self.end = end;
    }
}

/// How many bytes of `bytes` (longer than `room`) to take so that a cut does not split a UTF-8
/// character: backs off over at most 3 continuation bytes. Returns 0 when the character does not
/// fit and `must_take` is false (the part has other data and can ship as is); cuts the character
/// when it must take something.
fn utf8_cut(bytes: &[u8], room: usize, must_take: bool) -> usize {
    let is_continuation = |b: u8| b & 0b1100_0000 == 0b1000_0000;
    let mut cut = room;
    while cut > 0 && room - cut < 3 && is_continuation(bytes[cut]) {
        cut -= 1;
    }
    if is_continuation(bytes[cut]) {
        // Not valid UTF-8 here anyway: cut where the room ends.
        room
    } else if cut == 0 && must_take {
        room
    } else {
        cut
    }
}
