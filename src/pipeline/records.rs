//! From lines to records: multiline joining, formatting and partition keys, on the file source's
//! thread. It does no I/O of its own besides handing full chunks to the batcher.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::ack::{FileId, FileProgress};
use crate::compress::Compression;
use crate::parse::multiline::{Event, Joiner, JoinerConfig};
use crate::parse::{FileContext, FileIdentity, Formatter, RecordFields, Stats};
use crate::partition_key::{Key, KeyRng, Template};
use crate::record::{Arena, Record};
use crate::sources::file::{Closed, Line, LineKind, LineSink, Loss};
use crate::telemetry::Metrics;

/// A chunk is handed to the batcher when it holds this many records ...
const CHUNK_RECORDS: usize = 512;
/// ... or this many bytes; with the channel's capacity this bounds the memory between stages.
const CHUNK_BYTES: usize = 1024 * 1024;

/// How one input turns lines into records.
pub struct RecordRules {
    pub formatter: Formatter,
    pub template: Template,
    pub joiner: JoinerConfig,
    /// Most data bytes in one record (the record limit minus room for the key).
    pub max_data_bytes: usize,
    /// Records are compressed later (whole aggregates, or each record); this leaves room for it.
    pub compress: Compression,
}

impl RecordRules {
    /// Most bytes of one record's data before compression: the record limit, less room for
    /// compression framing when records are compressed.
    fn max_payload_bytes(&self) -> usize {
        match self.compress {
            Compression::None => self.max_data_bytes,
            _ => self.max_data_bytes - COMPRESSION_SLACK_BYTES,
        }
    }
}

/// A line's buffer larger than this is not kept for the next line.
const SPARE_MAX_BYTES: usize = 64 * 1024;

/// Room left for compression framing when a record's data is compressed: gzip and zstd add a few
/// bytes of header and block overhead even to data that does not compress.
const COMPRESSION_SLACK_BYTES: usize = 256;

/// Per-file state: the multiline joiner and what the formatter needs to know of the file.
struct FileState {
    progress: Arc<FileProgress>,
    joiner: Joiner,
    context: FileContext,
    /// Generation and end of the last line pushed, to notice a truncation between two lines.
    generation: u64,
    next_start: u64,
}

impl FileState {
    fn new(line: &Line<'_>, joiner: &JoinerConfig) -> FileState {
        let id = line.file.id();
        FileState {
            progress: Arc::clone(line.file),
            joiner: Joiner::new(joiner.clone()),
            // The record id must not change when a small file grows, so it uses device and inode
            // only; the offset makes it unique within the file.
            context: FileContext::new(
                line.path.display().to_string(),
                FileIdentity {
                    dev: id.dev,
                    inode: id.ino,
                    fingerprint: 0,
                },
            ),
            generation: line.file.generation(),
            next_start: line.start,
        }
    }
}

/// Turns lines into records and passes them on in chunks.
pub struct RecordBuilder {
    tx: mpsc::Sender<Vec<Record>>,
    rules: RecordRules,
    rng: KeyRng,
    fields: RecordFields,
    metrics: Arc<Metrics>,
    /// Looked up several times per line: FxHash, not SipHash (the keys are our own inode numbers,
    /// not attacker-chosen).
    files: FxHashMap<FileId, FileState>,
    events: Vec<Event>,
    /// Record data is copied into shared blocks, and the line's buffer goes back to the joiner.
    arena: Arena,
    spare: Vec<u8>,
    chunk: Vec<Record>,
    chunk_bytes: usize,
    /// Full chunks the batcher had no room for yet. The source reads nothing while any wait, so
    /// this holds at most about one read's worth beyond a chunk.
    held: VecDeque<Vec<Record>>,
    /// Parse counters already added to `metrics`.
    reported: Stats,
}

impl RecordBuilder {
    pub fn new(tx: mpsc::Sender<Vec<Record>>, rules: RecordRules, metrics: Arc<Metrics>) -> Self {
        RecordBuilder {
            tx,
            rules,
            rng: KeyRng::new(),
            fields: RecordFields::default(),
            metrics,
            files: FxHashMap::default(),
            events: Vec::new(),
            arena: Arena::default(),
            spare: Vec::new(),
            chunk: Vec::with_capacity(CHUNK_RECORDS),
            chunk_bytes: 0,
            held: VecDeque::new(),
            reported: Stats::default(),
        }
    }

    /// The common case, one record per line in raw format, on a short path: a whole UTF-8 line,
    /// read right after the previous one of its file, goes from the read buffer straight into the
    /// arena. The general path would make the same record (the joiner ships the line alone, the
    /// raw formatter keeps valid UTF-8 as it is) after copying the line into an event first.
    /// `false`: anything else (the first line of a file, a truncation, an empty, partial, split,
    /// over-long or non-UTF-8 line, joining, another format), which takes the general path.
    fn pass_through(&mut self, line: &Line<'_>) -> Result<bool, Closed> {
        let max = self.rules.max_payload_bytes();
        if line.kind != LineKind::Complete
            || line.data.is_empty()
            || line.data.len() > max
            || self.rules.formatter.format_kind() != crate::parse::Format::Raw
        {
            return Ok(false);
        }
        let generation = line.file.generation();
        let Some(state) = self.files.get_mut(&line.file.id()) else {
            return Ok(false);
        };
        if !Arc::ptr_eq(&state.progress, line.file)
            || state.generation != generation
            || state.next_start != line.start
            || !state.joiner.passes_through(line.data.len())
            || std::str::from_utf8(line.data).is_err()
        {
            return Ok(false);
        }
        state.next_start = line.end;
        // As the raw formatter does: a raw line has no fields for the key.
        self.fields.clear_scanned();
        let Key {
            text: partition_key,
            random: random_key,
        } = {
            let fields = self
                .rules
                .formatter
                .key_fields(&state.context, &self.fields);
            self.rules.template.deferred_key(&fields, &mut self.rng)
        };
        let ack = state
            .progress
            .token_in(generation, line.start, line.end)
            .into();
        let data = self.arena.copy(line.data);
        self.add(Record {
            data,
            partition_key,
            ack,
            shard: None,
            user_records: 1,
            random_key,
        })?;
        Ok(true)
    }

    fn state(&mut self, line: &Line<'_>) -> &mut FileState {
        let joiner = &self.rules.joiner;
        let state = self
            .files
            .entry(line.file.id())
            .or_insert_with(|| FileState::new(line, joiner));
        if !Arc::ptr_eq(&state.progress, line.file) {
            // A new file with a reused inode: start over.
            *state = FileState::new(line, joiner);
        }
        state
    }

    fn emit_events(&mut self, id: FileId, generation: u64) -> Result<(), Closed> {
        let Some(state) = self.files.get(&id) else {
            return Ok(());
        };
        let progress = Arc::clone(&state.progress);
        // Drained, not taken: the buffer keeps its capacity from one line to the next.
        let mut events = std::mem::take(&mut self.events);
        let emitted = self.emit(&progress, id, generation, &mut events);
        events.clear();
        self.events = events;
        emitted
    }

    fn emit(
        &mut self,
        progress: &Arc<FileProgress>,
        id: FileId,
        generation: u64,
        events: &mut Vec<Event>,
    ) -> Result<(), Closed> {
        for event in events.drain(..) {
            let (start, end) = (event.start, event.end);
            if event.data.is_empty() {
                // An empty line (or the newline ending a line already shipped as partial) carries
                // nothing to ship; acknowledging it keeps the checkpoint moving.
                Metrics::add(&self.metrics.empty_lines_skipped_total, 1);
                progress.token_in(generation, start, end).ack();
                continue;
            }
            let state = &self.files[&id];
            let mut stats = Stats::default();
            let formatted =
                self.rules
                    .formatter
                    .format(event, &state.context, &mut self.fields, &mut stats);
            let key = {
                let fields = self
                    .rules
                    .formatter
                    .key_fields(&state.context, &self.fields);
                self.rules.template.deferred_key(&fields, &mut self.rng)
            };
            self.count(&stats);
            self.push(progress, generation, formatted.payload, key, start, end)?;
        }
        Ok(())
    }

    fn count(&mut self, stats: &Stats) {
        Metrics::add(&self.metrics.lossy_utf8_total, stats.lossy_utf8);
        Metrics::add(
            &self.metrics.parse_errors_total,
            stats.json_parse_errors + stats.celery_unparsed,
        );
        self.reported.add(stats);
    }

    fn push(
        &mut self,
        file: &Arc<FileProgress>,
        generation: u64,
        mut payload: Vec<u8>,
        key: Key,
        start: u64,
        end: u64,
    ) -> Result<(), Closed> {
        let Key {
            text: partition_key,
            random: random_key,
        } = key;
        let max = self.rules.max_payload_bytes();
        if payload.len() <= max {
            let data = self.arena.take(&mut payload);
            // Emptied, with its capacity: the next line is read into it.
            if payload.capacity() > self.spare.capacity() && payload.capacity() <= SPARE_MAX_BYTES {
                self.spare = payload;
            }
            return self.add(Record {
                data,
                partition_key,
                ack: file.token_in(generation, start, end).into(),
                shard: None,
                user_records: 1,
                random_key,
            });
        }
        // Formatting (escaping, replacement characters, enrichment) made the record outgrow the
        // limit: cut it at character boundaries. Only the last part carries the range, so the
        // checkpoint passes the record once every part is delivered.
        Metrics::add(&self.metrics.records_split_total, 1);
        // The parts share one key, a random one drawn now if it was left to the packer.
        let partition_key = if partition_key.is_empty() {
            self.rng.key()
        } else {
            partition_key
        };
        let data = Bytes::from(payload);
        let parts = split_at_char_boundaries(&data, max);
        let last = parts.len() - 1;
        for (i, part) in parts.into_iter().enumerate() {
            let (from, to) = if i == last {
                (start, end)
            } else {
                (start, start)
            };
            let record = Record {
                data: data.slice_ref(part),
                partition_key: partition_key.clone(),
                ack: file.token_in(generation, from, to).into(),
                shard: None,
                user_records: 1,
                random_key,
            };
            self.add(record)?;
        }
        Ok(())
    }

    fn add(&mut self, record: Record) -> Result<(), Closed> {
        self.chunk_bytes += record.size();
        self.chunk.push(record);
        if self.chunk.len() >= CHUNK_RECORDS || self.chunk_bytes >= CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Hand the open chunk to the batcher, or hold it while the batcher is full. Never waits: a
    /// full batcher makes [`LineSink::ready`] false, which pauses reading, not discovery.
    pub fn flush(&mut self) -> Result<(), Closed> {
        if !self.chunk.is_empty() {
            Metrics::add(&self.metrics.records_total, self.chunk.len() as u64);
            let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_RECORDS));
            self.chunk_bytes = 0;
            self.held.push_back(chunk);
        }
        self.send_held()
    }

    /// Pass held chunks on while the batcher has room.
    fn send_held(&mut self) -> Result<(), Closed> {
        while let Some(chunk) = self.held.pop_front() {
            match self.tx.try_send(chunk) {
                Ok(()) => {}
                Err(TrySendError::Full(chunk)) => {
                    self.held.push_front(chunk);
                    break;
                }
                Err(TrySendError::Closed(_)) => return Err(Closed),
            }
        }
        Ok(())
    }

    /// Ship every pending multiline record, the open chunk and the held ones, waiting for room
    /// (at stop).
    pub fn finish(&mut self) -> Result<(), Closed> {
        let ids: Vec<FileId> = self.files.keys().copied().collect();
        for id in ids {
            if let Some(state) = self.files.get_mut(&id) {
                let generation = state.generation;
                self.events.extend(state.joiner.flush());
                self.emit_events(id, generation)?;
            }
        }
        self.flush()?;
        while let Some(chunk) = self.held.pop_front() {
            self.tx.blocking_send(chunk).map_err(|_| Closed)?;
        }
        Ok(())
    }
}

impl LineSink for RecordBuilder {
    fn line(&mut self, line: Line<'_>) -> Result<(), Closed> {
        Metrics::add(&self.metrics.lines_read_total, 1);
        Metrics::add(&self.metrics.bytes_read_total, line.end - line.start);
        match line.kind {
            LineKind::Truncated => Metrics::add(&self.metrics.lines_truncated_total, 1),
            LineKind::Fragment => Metrics::add(&self.metrics.records_split_total, 1),
            LineKind::Complete | LineKind::Partial => {}
        }
        if self.pass_through(&line)? {
            return Ok(());
        }
        let id = line.file.id();
        let generation = line.file.generation();
        let mut events = std::mem::take(&mut self.events);
        let state = self.state(&line);
        let old_generation = state.generation;
        if state.generation != generation || state.next_start != line.start {
            // The file was truncated or skipped ahead: what is pending belongs to the old bytes
            // and goes out on its own, acknowledged in the generation it was read in.
            events.extend(state.joiner.flush());
        }
        let flushed = !events.is_empty();
        self.events = events;
        if flushed {
            self.emit_events(id, old_generation)?;
        }
        let state = self.files.get_mut(&id).ok_or(Closed)?;
        state.generation = generation;
        state.next_start = line.end;
        // A fragment of an over-long line is a record by itself; joining it would only split again.
        if line.kind == LineKind::Fragment {
            self.events.extend(state.joiner.flush());
            self.events.push(Event {
                data: line.data.to_vec(),
                start: line.start,
                end: line.end,
                lines: 1,
                split: true,
                part: 0,
            });
        } else {
            state.joiner.offer(&mut self.spare);
            state.joiner.push(
                line.data,
                line.start,
                line.end,
                line.read_at,
                &mut self.events,
            );
        }
        self.emit_events(id, generation)
    }

    fn idle(&mut self, now: Instant) -> Result<Option<Instant>, Closed> {
        let ids: Vec<FileId> = self.files.keys().copied().collect();
        let mut next: Option<Instant> = None;
        for id in ids {
            let Some(state) = self.files.get_mut(&id) else {
                continue;
            };
            let generation = state.generation;
            self.events.extend(state.joiner.poll_timeout(now));
            if let Some(at) = state.joiner.next_deadline() {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
            self.emit_events(id, generation)?;
        }
        // Forget files nobody else tracks any more (retired and delivered) once nothing is pending.
        self.files.retain(|_, state| {
            state.joiner.has_pending() || Arc::strong_count(&state.progress) > 1
        });
        self.flush()?;
        Ok(next)
    }

    fn ready(&mut self) -> Result<bool, Closed> {
        self.send_held()?;
        Ok(self.held.is_empty())
    }

    fn lost(&mut self, loss: Loss) {
        self.metrics
            .file_bytes_lost(loss.reason.as_str(), loss.bytes);
    }
}

/// Cut `data` (valid UTF-8) into parts of at most `max` bytes without splitting a character.
fn split_at_char_boundaries(data: &[u8], max: usize) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while rest.len() > max {
        let mut cut = max;
        // UTF-8 continuation bytes are 0b10xxxxxx; back up to the start of a character.
        while cut > 0 && rest[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        if cut == 0 {
            cut = max;
        }
        parts.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    parts.push(rest);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::{FileId, Fingerprint};
    use crate::parse::multiline::Multiline;
    use crate::parse::{Enrichment, Format, Kubernetes, TimeZone};
    use proptest::prelude::*;

    /// Every record a builder makes of `lines` (one file, read in one go, then finished): data,
    /// key and acknowledged range, in order.
    fn records(
        lines: &[(Vec<u8>, LineKind)],
        multiline: Multiline,
        compress: Compression,
    ) -> Vec<(Vec<u8>, String, (u64, u64))> {
        built("{file}-x", lines, multiline, compress)
            .into_iter()
            .map(|record| {
                let range = record.ack.first().expect("a token").range();
                (
                    record.data.to_vec(),
                    record.partition_key.to_string(),
                    range,
                )
            })
            .collect()
    }

    /// The records a builder makes of `lines` of one file.
    fn built(
        template: &str,
        lines: &[(Vec<u8>, LineKind)],
        multiline: Multiline,
        compress: Compression,
    ) -> Vec<Record> {
        let template = Template::parse(template).expect("a template");
        let formatter = Formatter::new(
            Format::Raw,
            TimeZone::UTC,
            Enrichment::new(None, Kubernetes::default(), Vec::new()),
            &template.field_names(),
        );
        let rules = RecordRules {
            formatter,
            template,
            joiner: JoinerConfig {
                multiline,
                flush_timeout: std::time::Duration::from_secs(5),
                max_record_bytes: 600,
            },
            max_data_bytes: 700,
            compress,
        };
        let (tx, mut rx) = mpsc::channel(10_000);
        let mut builder = RecordBuilder::new(tx, rules, Arc::new(Metrics::default()));
        let file = FileProgress::new(
            FileId { dev: 1, ino: 2 },
            "/var/log/w.log".into(),
            Fingerprint::default(),
            0,
        );
        let path = std::path::Path::new("/var/log/w.log");
        let mut at = 0;
        for (data, kind) in lines {
            let end = at + data.len() as u64 + u64::from(*kind == LineKind::Complete);
            builder
                .line(Line {
                    file: &file,
                    path,
                    data,
                    start: at,
                    end,
                    kind: *kind,
                    read_at: Instant::now(),
                })
                .expect("open");
            at = end;
        }
        builder.finish().expect("open");
        drop(builder);
        let mut out = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            out.extend(chunk);
        }
        out
    }

    #[test]
    fn a_random_key_is_left_to_the_packer_unless_a_split_record_needs_it_shared() {
        // 600 bytes that are not UTF-8 become 1,800 bytes of replacement characters: three parts.
        let lines = [
            (b"plain".to_vec(), LineKind::Complete),
            (vec![0xff; 600], LineKind::Complete),
            (b"again".to_vec(), LineKind::Complete),
        ];
        for template in ["{random}", "{task_id|random}"] {
            let records = built(template, &lines, Multiline::None, Compression::None);
            assert_eq!(records.len(), 5, "{template}");
            assert!(records.iter().all(|record| record.random_key));
            for alone in [&records[0], &records[4]] {
                assert_eq!(alone.partition_key, "", "{template}");
            }
            let parts = &records[1..4];
            assert_eq!(parts[0].partition_key.len(), 16, "{template}");
            assert!(
                parts
                    .iter()
                    .all(|p| p.partition_key == parts[0].partition_key)
            );
        }
        // A key with something chosen is rendered as before.
        let records = built(
            "{file}-{random}",
            &lines,
            Multiline::None,
            Compression::None,
        );
        assert!(records.iter().all(
            |record| !record.random_key && record.partition_key.starts_with("/var/log/w.log-")
        ));
    }

    proptest! {
        /// The short path for one raw line per record makes the records the general path makes:
        /// the same bytes, keys and ranges, whatever the mix of empty, partial, over-long and
        /// non-UTF-8 lines. (A start pattern that every line matches takes the general path.)
        #[test]
        fn the_short_path_makes_the_records_the_general_path_makes(
            lines in prop::collection::vec(
                (
                    prop_oneof![
                        "[a-z é]{0,40}".prop_map(String::into_bytes),
                        prop::collection::vec(any::<u8>(), 0..40),
                        "[a-z]{590,720}".prop_map(String::into_bytes),
                    ],
                    prop_oneof![
                        8 => Just(LineKind::Complete),
                        1 => Just(LineKind::Partial),
                    ],
                ),
                1..40,
            ),
            gzip in any::<bool>(),
        ) {
            let compress = if gzip { Compression::Gzip } else { Compression::None };
            let every_line = Multiline::Regex(regex::bytes::Regex::new("").expect("a regex"));
            prop_assert_eq!(
                records(&lines, Multiline::None, compress),
                records(&lines, every_line, compress)
            );
        }
    }

    #[test]
    fn split_keeps_characters_whole() {
        let text = "한국어😀abc".repeat(10);
        for max in 4..20 {
            let parts = split_at_char_boundaries(text.as_bytes(), max);
            assert!(
                parts
                    .iter()
                    .all(|p| p.len() <= max && std::str::from_utf8(p).is_ok()),
                "max {max}"
            );
            assert_eq!(parts.concat(), text.as_bytes());
        }
    }
}
