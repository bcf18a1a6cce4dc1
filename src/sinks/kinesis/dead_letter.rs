//! The dead-letter file: records Kinesis refused permanently, one JSON object per line, so nothing
//! is dropped silently and an operator can replay them.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use serde::Serialize;

use crate::ack::AckToken;
use crate::record::Record;

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
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl DeadLetter {
    pub fn new(data_dir: &Path) -> DeadLetter {
        DeadLetter {
            path: data_dir.join(FILE_NAME),
            file: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
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
        let mut buffer = Vec::new();
        for record in records {
            let text = std::str::from_utf8(&record.data).ok();
            let first = record.ack.first();
            let (start, end) = first.map(AckToken::range).unwrap_or_default();
            let entry = Entry {
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
            };
            serde_json::to_writer(&mut buffer, &entry)?;
            buffer.push(b'\n');
        }
        let mut guard = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.is_none() {
            *guard = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        // Just filled above when it was empty.
        let file = guard
            .as_mut()
            .ok_or_else(|| io::Error::other("dead-letter file not open"))?;
        file.write_all(&buffer)?;
        file.sync_data()
    }
}
