//! `--format raw|json|celery`: turns a joined [`Event`] into the payload shipped to Kinesis, and
//! collects the values a partition key template can use.
//!
//! - raw: the bytes as they are; invalid UTF-8 is replaced (U+FFFD) and counted.
//! - json: a record that is a JSON object ships as written, with the enrichment spliced in before
//!   its closing brace (the user's keys keep their order and win over enrichment keys of the same
//!   name). Anything else ships as `{"message": <text>, "parse_error": <reason>, ...}`, counted.
//! - celery: `{"ts", "level", "process", "task_name"?, "task_id"?, "message", ...enrichment}`;
//!   a record without the Celery prefix ships as `{"message", "parse_error", ...}`, counted.
//!
//! Parts of a record cut at the size cap carry `"part": <index>` and `"last_part": <bool>`.
//! Parts after the first have no prefix to parse: they ship as `message` alone, not as errors.
//! The payload is the only allocation per record (besides the lossy copy of invalid UTF-8).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use super::Stats;
use super::celery::{self, TimeZone};
use super::enrich::{self, Enrichment, FileContext};
use super::json::{self, push_json_str, push_u64};
use super::multiline::Event;
use crate::partition_key;

/// `--format`: how a record's bytes become its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Raw,
    Json,
    Celery,
}

/// A `--format` value that is not `raw`, `json` or `celery`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid format {0:?}: expected raw, json or celery")]
pub struct FormatError(pub String);

impl FromStr for Format {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(Format::Raw),
            "json" => Ok(Format::Json),
            "celery" => Ok(Format::Celery),
            other => Err(FormatError(other.to_string())),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Raw => "raw",
            Format::Json => "json",
            Format::Celery => "celery",
        })
    }
}

/// Keys of the celery envelope; enrichment fields with these names are left out.
const CELERY_KEYS: [&str; 9] = [
    "ts",
    "level",
    "process",
    "task_name",
    "task_id",
    "message",
    "parse_error",
    "part",
    "last_part",
];
/// `wanted` always starts with these, so `{task_id}` and `{task_name}` work in every format.
const TASK_ID: usize = 0;
const TASK_NAME: usize = 1;

/// A formatted record: its payload and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formatted {
    pub payload: Vec<u8>,
    /// The event's file range, for acknowledgements.
    pub start: u64,
    pub end: u64,
    /// The event was a part of a record cut at the size cap, and more parts follow.
    pub split: bool,
    /// Invalid UTF-8 was replaced.
    pub lossy_utf8: bool,
    /// The record did not parse in the configured format (shipped wrapped, with `parse_error`).
    pub parse_error: bool,
}

/// Per-file scratch the formatter fills for each record: the values a partition key reads.
/// Reused from record to record so formatting allocates nothing else.
#[derive(Debug, Default)]
pub struct RecordFields {
    scan: json::Scan,
}

impl RecordFields {
    /// No fields: what a raw record (which is not parsed) offers the partition key.
    pub fn clear_scanned(&mut self) {
        self.scan.values.iter_mut().for_each(String::clear);
    }
}

/// Formats events; built once at startup and shared by every file.
#[derive(Debug, Clone)]
pub struct Formatter {
    format: Format,
    zone: TimeZone,
    enrichment: Enrichment,
    /// `task_id`, `task_name`, then the `{field.NAME}` names of the partition key template.
    wanted: Vec<String>,
    /// Enrichment keys then per-record keys, in the order `enrich::write_fields` writes them.
    known: Vec<String>,
    /// Per `known` key: left out of celery envelopes because the envelope has it.
    celery_skip: Vec<bool>,
}

impl Formatter {
    /// `field_names`: the `{field.NAME}` names the partition key template reads
    /// (`partition_key::Template::field_names`).
    pub fn new(
        format: Format,
        zone: TimeZone,
        enrichment: Enrichment,
        field_names: &[&str],
    ) -> Formatter {
        let mut wanted = vec!["task_id".to_string(), "task_name".to_string()];
        for name in field_names {
            if !wanted.iter().any(|w| w == name) {
                wanted.push(name.to_string());
            }
        }
        let known: Vec<String> = enrichment
            .keys()
            .chain(enrich::RECORD_KEYS)
            .map(str::to_string)
            .collect();
        let celery_skip = known
            .iter()
            .map(|k| CELERY_KEYS.contains(&k.as_str()))
            .collect();
        Formatter {
            format,
            zone,
            enrichment,
            wanted,
            known,
            celery_skip,
        }
    }

    pub fn format_kind(&self) -> Format {
        self.format
    }

    pub fn enrichment(&self) -> &Enrichment {
        &self.enrichment
    }

    /// Formats one event. Counters go to `stats`; partition key values to `fields`.
    pub fn format(
        &self,
        event: Event,
        file: &FileContext,
        fields: &mut RecordFields,
        stats: &mut Stats,
    ) -> Formatted {
        let (start, end, split) = (event.start, event.end, event.split);
        let (payload, lossy_utf8, parse_error) = match self.format {
            Format::Raw => {
                fields.clear_scanned();
                match String::from_utf8(event.data) {
                    Ok(text) => (text.into_bytes(), false, false),
                    Err(error) => (
                        String::from_utf8_lossy(error.as_bytes())
                            .into_owned()
                            .into_bytes(),
                        true,
                        false,
                    ),
                }
            }
            Format::Json => self.json(&event, file, fields),
            Format::Celery => self.celery(&event, file, fields),
        };
        stats.lossy_utf8 += u64::from(lossy_utf8);
        if parse_error {
            match self.format {
                Format::Json => stats.json_parse_errors += 1,
                _ => stats.celery_unparsed += 1,
            }
        }
        Formatted {
            payload,
            start,
            end,
            split,
            lossy_utf8,
            parse_error,
        }
    }

    /// The partition key's view of a formatted record.
    pub fn key_fields<'a>(
        &'a self,
        file: &'a FileContext,
        fields: &'a RecordFields,
    ) -> KeyFields<'a> {
        KeyFields {
            formatter: self,
            file,
            fields,
        }
    }

    fn json(
        &self,
        event: &Event,
        file: &FileContext,
        fields: &mut RecordFields,
    ) -> (Vec<u8>, bool, bool) {
        let text = String::from_utf8_lossy(&event.data);
        let lossy = matches!(text, Cow::Owned(_));
        let error = match json::scan_object(&text, &self.wanted, &self.known, &mut fields.scan) {
            Ok(()) => {
                // Valid, so the last non-whitespace byte is the object's closing brace.
                let close = text
                    .bytes()
                    .rposition(|b| !b.is_ascii_whitespace())
                    .unwrap_or(0);
                let mut out = Vec::with_capacity(text.len() + 256);
                out.extend_from_slice(&text.as_bytes()[..close]);
                let first_added = out.len();
                write_part(&mut out, event);
                let present = &fields.scan.known_present;
                enrich::write_fields(&mut out, &self.enrichment, file, event.start, |i| {
                    present[i]
                });
                if !fields.scan.non_empty && out.get(first_added) == Some(&b',') {
                    out.remove(first_added);
                }
                out.push(b'}');
                return (out, lossy, false);
            }
            Err(error) => json::error_reason(&error),
        };
        fields.scan.values.iter_mut().for_each(String::clear);
        let mut out = Vec::with_capacity(text.len() + 256);
        out.extend_from_slice(b"{\"message\":");
        push_json_str(&mut out, &text);
        out.extend_from_slice(b",\"parse_error\":");
        push_json_str(&mut out, &error);
        write_part(&mut out, event);
        enrich::write_fields(&mut out, &self.enrichment, file, event.start, |_| false);
        out.push(b'}');
        (out, lossy, true)
    }

    fn celery(
        &self,
        event: &Event,
        file: &FileContext,
        fields: &mut RecordFields,
    ) -> (Vec<u8>, bool, bool) {
        let values = &mut fields.scan.values;
        values.resize_with(self.wanted.len(), String::new);
        values.iter_mut().for_each(String::clear);
        let text = String::from_utf8_lossy(&event.data);
        let lossy = matches!(text, Cow::Owned(_));
        let mut out = Vec::with_capacity(text.len() + 256);
        out.push(b'{');
        // Later parts of a cut record start mid-message: no prefix to look for.
        let prefix = if event.part == 0 {
            celery::parse_prefix(text.as_bytes())
        } else {
            None
        };
        let mut parsed = false;
        if let Some(p) = &prefix {
            out.extend_from_slice(b"\"ts\":\"");
            if celery::write_rfc3339(&mut out, p, self.zone) {
                parsed = true;
                let level = text.get(p.level.clone()).unwrap_or("");
                let process = text.get(p.process.clone()).unwrap_or("");
                let mut message = text.get(p.message_start..).unwrap_or("");
                out.extend_from_slice(b"\",\"level\":");
                push_json_str(&mut out, level);
                out.extend_from_slice(b",\"process\":");
                push_json_str(&mut out, process);
                if let Some(task) = celery::find_task(message.as_bytes()) {
                    let name = message.get(task.name).unwrap_or("");
                    let id = message.get(task.id).unwrap_or("");
                    out.extend_from_slice(b",\"task_name\":");
                    push_json_str(&mut out, name);
                    out.extend_from_slice(b",\"task_id\":");
                    push_json_str(&mut out, id);
                    values[TASK_ID].push_str(id);
                    values[TASK_NAME].push_str(name);
                    message = message.get(task.message_start..).unwrap_or("");
                }
                out.extend_from_slice(b",\"message\":");
                push_json_str(&mut out, message);
                for (name, value) in self.wanted.iter().zip(values.iter_mut()).skip(2) {
                    match name.as_str() {
                        "level" => value.push_str(level),
                        "process" => value.push_str(process),
                        "message" => value.push_str(message),
                        _ => {}
                    }
                }
            } else {
                out.truncate(1);
            }
        }
        if !parsed {
            out.extend_from_slice(b"\"message\":");
            push_json_str(&mut out, &text);
            if event.part == 0 {
                let reason = if prefix.is_some() {
                    "invalid timestamp"
                } else {
                    "no celery prefix"
                };
                out.extend_from_slice(b",\"parse_error\":");
                push_json_str(&mut out, reason);
            }
        }
        write_part(&mut out, event);
        enrich::write_fields(&mut out, &self.enrichment, file, event.start, |i| {
            self.celery_skip[i]
        });
        out.push(b'}');
        (out, lossy, !parsed && event.part == 0)
    }
}

/// `,"part":N,"last_part":B` for the parts of a record cut at the size cap.
fn write_part(out: &mut Vec<u8>, event: &Event) {
    if event.split || event.part > 0 {
        out.extend_from_slice(b",\"part\":");
        push_u64(out, u64::from(event.part));
        out.extend_from_slice(if event.split {
            b",\"last_part\":false"
        } else {
            b",\"last_part\":true"
        });
    }
}

/// What a partition key template can read from one formatted record.
#[derive(Debug, Clone, Copy)]
pub struct KeyFields<'a> {
    formatter: &'a Formatter,
    file: &'a FileContext,
    fields: &'a RecordFields,
}

impl KeyFields<'_> {
    fn value(&self, index: usize) -> Option<&str> {
        self.fields
            .scan
            .values
            .get(index)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

impl partition_key::Fields for KeyFields<'_> {
    fn task_id(&self) -> Option<&str> {
        self.value(TASK_ID)
    }

    fn task_name(&self) -> Option<&str> {
        self.value(TASK_NAME)
    }

    fn host(&self) -> Option<&str> {
        self.formatter.enrichment.host()
    }

    fn pod(&self) -> Option<&str> {
        self.formatter.enrichment.pod()
    }

    fn file(&self) -> Option<&str> {
        Some(self.file.path())
    }

    /// A top-level field of the record, else a static enrichment field of that name.
    fn field(&self, name: &str) -> Option<&str> {
        let index = self.formatter.wanted.iter().position(|w| w == name);
        index
            .and_then(|i| self.value(i))
            .or_else(|| self.formatter.enrichment.field(name))
    }
}
