//! From lines to records: the stage that runs on the file source's thread, so it does no I/O of
//! its own besides handing full chunks to the batcher.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::ack::FileProgress;
use crate::record::Record;
use crate::sources::file::{Closed, Line, LineKind, LineSink};
use crate::telemetry::Metrics;

/// A chunk is handed to the batcher when it holds this many records ...
const CHUNK_RECORDS: usize = 512;
/// ... or this many bytes; with the channel's capacity this bounds the memory between stages.
const CHUNK_BYTES: usize = 1024 * 1024;

/// How a record's partition key is chosen.
pub trait KeySource: Send {
    fn key(&mut self, data: &[u8]) -> String;
}

/// Turns lines into records and passes them on in chunks.
pub struct RecordBuilder<K> {
    tx: mpsc::Sender<Vec<Record>>,
    keys: K,
    max_data_bytes: usize,
    metrics: Arc<Metrics>,
    chunk: Vec<Record>,
    chunk_bytes: usize,
}

impl<K: KeySource> RecordBuilder<K> {
    pub fn new(
        tx: mpsc::Sender<Vec<Record>>,
        keys: K,
        max_data_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        RecordBuilder {
            tx,
            keys,
            max_data_bytes,
            metrics,
            chunk: Vec::with_capacity(CHUNK_RECORDS),
            chunk_bytes: 0,
        }
    }

    fn push(
        &mut self,
        file: &Arc<FileProgress>,
        data: Vec<u8>,
        start: u64,
        end: u64,
    ) -> Result<(), Closed> {
        let data = match String::from_utf8(data) {
            Ok(text) => text.into_bytes(),
            Err(error) => {
                Metrics::add(&self.metrics.lossy_utf8_total, 1);
                String::from_utf8_lossy(error.as_bytes())
                    .into_owned()
                    .into_bytes()
            }
        };
        if data.len() <= self.max_data_bytes {
            let partition_key = self.keys.key(&data);
            return self.add(Record {
                data,
                partition_key,
                ack: file.token(start, end),
            });
        }
        // Replacement characters can make a line that fit grow past the limit: cut it at character
        // boundaries. Only the last part carries the line's range, so the checkpoint passes the line
        // once every part is delivered.
        Metrics::add(&self.metrics.records_split_total, 1);
        let parts = split_at_char_boundaries(&data, self.max_data_bytes);
        let last = parts.len() - 1;
        for (i, part) in parts.into_iter().enumerate() {
            let ack = if i == last {
                file.token(start, end)
            } else {
                file.token(start, start)
            };
            let partition_key = self.keys.key(part);
            self.add(Record {
                data: part.to_vec(),
                partition_key,
                ack,
            })?;
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

    /// Hand the chunk to the batcher, waiting while it is full (this is what pauses reading).
    pub fn flush(&mut self) -> Result<(), Closed> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        Metrics::add(&self.metrics.records_total, self.chunk.len() as u64);
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_RECORDS));
        self.chunk_bytes = 0;
        self.tx.blocking_send(chunk).map_err(|_| Closed)
    }
}

impl<K: KeySource> LineSink for RecordBuilder<K> {
    fn line(&mut self, line: Line<'_>) -> Result<(), Closed> {
        Metrics::add(&self.metrics.lines_read_total, 1);
        Metrics::add(&self.metrics.bytes_read_total, line.end - line.start);
        match line.kind {
            LineKind::Truncated => Metrics::add(&self.metrics.lines_truncated_total, 1),
            LineKind::Fragment => Metrics::add(&self.metrics.records_split_total, 1),
            LineKind::Complete | LineKind::Partial => {}
        }
        self.push(line.file, line.data.to_vec(), line.start, line.end)
    }

    fn idle(&mut self, _now: Instant) -> Result<Option<Instant>, Closed> {
        self.flush()?;
        Ok(None)
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
