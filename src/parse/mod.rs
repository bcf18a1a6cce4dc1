//! Parsing: lines of a file → joined records ([`multiline`]) → payloads ([`format`]). No I/O.
//!
//! Per file: one [`Joiner`] (it holds the record being built) and one [`RecordFields`] scratch.
//! Shared by all files: one [`Formatter`] (format, time zone, enrichment built once at startup).
//!
//! ```text
//! line + [start,end) ─▶ Joiner::push ─▶ Event ─▶ Formatter::format ─▶ Formatted ─▶ partition key
//!                         poll_timeout / flush ─┘                        (KeyFields)
//! ```
//!
//! Every stage counts what it did into a [`Stats`], which the pipeline exports as metrics.
//!
//! Sizes: `max_record_bytes` caps the raw record; the json/celery envelope adds enrichment and
//! escaping, so the pipeline still checks the payload against the Kinesis record limit.

pub mod celery;
pub mod enrich;
pub mod format;
pub mod json;
pub mod multiline;
pub mod python;

pub use celery::{TimeZone, TimeZoneError};
pub use enrich::{Enrichment, FileContext, FileIdentity, Kubernetes, KubernetesEnvNames};
pub use format::{Format, FormatError, Formatted, Formatter, KeyFields, RecordFields};
pub use multiline::{
    DEFAULT_FLUSH_TIMEOUT, DEFAULT_MAX_RECORD_BYTES, Event, Joiner, JoinerConfig, Multiline,
    MultilineError,
};

/// Counters of the parse stages; plain numbers the pipeline adds up and exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lines given to the joiner.
    pub lines: u64,
    /// Events the joiner emitted (each part of a cut record counts).
    pub records: u64,
    /// Records cut into parts because they outgrew `max_record_bytes`.
    pub records_split: u64,
    /// Events marked `split` (every part but the last of a cut record).
    pub split_parts: u64,
    /// Records shipped by the flush timeout rather than by the start of the next record.
    pub flushed_on_timeout: u64,
    /// Records whose invalid UTF-8 was replaced.
    pub lossy_utf8: u64,
    /// `--format json` records that were not a JSON object (shipped wrapped).
    pub json_parse_errors: u64,
    /// `--format celery` records without a parsable Celery prefix (shipped wrapped).
    pub celery_unparsed: u64,
}

impl Stats {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Stats) {
        self.lines += other.lines;
        self.records += other.records;
        self.records_split += other.records_split;
        self.split_parts += other.split_parts;
        self.flushed_on_timeout += other.flushed_on_timeout;
        self.lossy_utf8 += other.lossy_utf8;
        self.json_parse_errors += other.json_parse_errors;
        self.celery_unparsed += other.celery_unparsed;
    }
}

#[cfg(test)]
mod tests;
