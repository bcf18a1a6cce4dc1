//! The consumer's dead-letter file (`consume-dead-letter.jsonl` in the data dir): Kinesis records
//! that cannot be unpacked, user records too large for Firehose, and Firehose records refused
//! permanently, each with its shard and sequence number so an operator can find or replay it.

use std::io;
use std::path::Path;

use base64::Engine;
use serde::Serialize;

use super::position::Position;
use crate::sinks::dead_letter::DeadLetterFile;

pub const FILE_NAME: &str = "consume-dead-letter.jsonl";

#[derive(Serialize)]
struct Entry<'a> {
    time: String,
    stream: &'a str,
    shard_id: &'a str,
    sequence_number: &'a str,
    sub_sequence_number: u64,
    error_code: &'a str,
    error_message: &'a str,
    /// The Kinesis record as read (for unpacking failures) or the Firehose record as sent.
    data_base64: String,
}

#[derive(Debug)]
pub struct DeadLetters {
    stream: String,
    file: DeadLetterFile,
}

impl DeadLetters {
    pub fn new(data_dir: &Path, stream: &str) -> DeadLetters {
        DeadLetters {
            stream: stream.to_string(),
            file: DeadLetterFile::new(data_dir, FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// A Kinesis record, or one of its user records (`position.sub_sequence`), that cannot be
    /// forwarded; `data` is the Kinesis record as read.
    pub fn write_unreadable(
        &self,
        shard_id: &str,
        position: &Position,
        code: &str,
        message: &str,
        data: &[u8],
    ) -> io::Result<()> {
        self.write(shard_id, position, code, message, data)
    }

    /// A Firehose record refused permanently; `position` is its last user record's.
    pub fn write_forwarding(
        &self,
        shard_id: &str,
        position: &Position,
        code: &str,
        message: &str,
        data: &[u8],
    ) -> io::Result<()> {
        self.write(shard_id, position, code, message, data)
    }

    fn write(
        &self,
        shard_id: &str,
        position: &Position,
        code: &str,
        message: &str,
        data: &[u8],
    ) -> io::Result<()> {
        self.file.append([Entry {
            time: chrono::Utc::now().to_rfc3339(),
            stream: &self.stream,
            shard_id,
            sequence_number: position.sequence.as_str(),
            sub_sequence_number: position.sub_sequence,
            error_code: code,
            error_message: message,
            data_base64: base64::engine::general_purpose::STANDARD.encode(data),
        }])
    }
}
