//! The unit that flows from sources to the sink.

use crate::ack::AckToken;

/// One Kinesis user record: the bytes to send, its partition key, and the token that acknowledges
/// the source bytes it came from once Kinesis has accepted it.
#[derive(Debug)]
pub struct Record {
    pub data: Vec<u8>,
    pub partition_key: String,
    pub ack: AckToken,
}

impl Record {
    /// Bytes this record counts against the PutRecords limits: data plus partition key (UTF-8).
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }
}
