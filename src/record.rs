//! The unit that flows from sources to the sink.

use std::sync::Arc;

use compact_str::CompactString;

use crate::ack::Acks;

/// One Kinesis record (a user record, or a KPL aggregate of several): the bytes to send, its partition key, and the token that acknowledges
/// the source bytes it came from once Kinesis has accepted it.
#[derive(Debug)]
pub struct Record {
    pub data: Vec<u8>,
    /// Inline up to 24 bytes (a `{random}` key is 16): no allocation per line for the common key.
    pub partition_key: CompactString,
    pub ack: Acks,
    /// The shard this record is expected to land on, when a shard map is known (aggregates, and
    /// every record when rate control is on).
    pub shard: Option<Arc<str>>,
    /// User records inside: 1, or the count packed into an aggregate.
    pub user_records: u32,
    /// The partition key is random and nothing else: inside an aggregate, the record can share
    /// the key of another random-keyed record of the same shard.
    pub random_key: bool,
}

impl Record {
    /// Bytes this record counts against the PutRecords limits: data plus partition key (UTF-8).
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }
}
