//! The Kinesis sink's dead-letter file: records Kinesis refused permanently, one JSON object per
//! line (`sinks::dead_letter`), so nothing is dropped silently and an operator can replay them.

use std::io;
use std::path::Path;

use base64::Engine;
use serde::Serialize;

use crate::ack::AckToken;
use crate::record::Record;
use crate::sinks::dead_letter::DeadLetterFile;

pub const FILE_NAME: &str = "dead-letter.jsonl";

#[derive(Serialize)]
struct Entry<'a> {
    time: String,
    stream: &'a str,
    error_code: &'a str,
    error_message: &'a str,
    partition_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
    file: String,
    start: u64,
    end: u64,
}

#[derive(Debug)]
pub struct DeadLetter {
    file: DeadLetterFile,
}

impl DeadLetter {
    pub fn new(data_dir: &Path) -> DeadLetter {
        DeadLetter {
            file: DeadLetterFile::new(data_dir, FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Append `records` with the reason they were refused, and fsync. Only once this returns Ok may
    /// the records be acknowledged.
    pub fn write(
        &self,
        stream: &str,
        code: &str,
        message: &str,
        records: &[Record],
    ) -> io::Result<()> {
        let entries = records.iter().map(|record| {
            let text = std::str::from_utf8(&record.data).ok();
            let first = record.ack.first();
            let (start, end) = first.map(AckToken::range).unwrap_or_default();
            Entry {
                time: chrono::Utc::now().to_rfc3339(),
                stream,
                error_code: code,
                error_message: message,
                partition_key: &record.partition_key,
                data: text,
                data_base64: text
                    .is_none()
                    .then(|| base64::engine::general_purpose::STANDARD.encode(&record.data)),
                file: first
                    .map(|t| t.file().checkpoint().path.display().to_string())
                    .unwrap_or_default(),
                start,
                end,
            }
        });
        self.file.append(entries)
    }
}
