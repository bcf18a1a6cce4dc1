//! KPL aggregated records: many user records packed into one Kinesis record.
//!
//! Wire format (the Kinesis Producer Library's, documented in
//! `amazon-kinesis-producer/aggregation-format.md`, read by the KCL, Lambda's
//! helpers and Firehose):
//!
//! ```text
//! 0xF3 0x89 0x9A 0xC2 | protobuf AggregatedRecord | MD5 (16 bytes) of the protobuf bytes
//! ```
//!
//! [`Aggregator`] encodes incrementally and knows its exact encoded size at every step, so
//! the batcher can fill an aggregate up to a byte limit without ever exceeding it. Every
//! user record keeps its own partition key (deduplicated in `partition_key_table`). The
//! caller must only aggregate user records that hash to the same shard: the KCL drops an
//! aggregate holding a record outside its shard's hash key range. A lone record is never
//! wrapped ([`Finished::Single`]).
//!
//! [`deaggregate`] is strict: it requires the magic and a matching MD5. Use
//! [`deaggregate_or_single`] to treat a record without the magic as one plain user record.

use std::collections::HashMap;

use md5::{Digest, Md5};
use prost::Message;

/// First four bytes of every aggregated record (KPL aggregation format).
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 trailer: the digest of the protobuf bytes (KPL aggregation format).
pub const MD5_LEN: usize = 16;

/// Bytes an aggregate adds around its protobuf message: magic plus MD5 trailer.
pub const FRAMING_LEN: usize = MAGIC.len() + MD5_LEN;

/// Protobuf key byte of `AggregatedRecord.partition_key_table` (field 1, length-delimited).
const KEY_TABLE_TAG: u8 = (1 << 3) | 2;
/// Protobuf key byte of `AggregatedRecord.records` (field 3, length-delimited).
const RECORDS_TAG: u8 = (3 << 3) | 2;
/// Protobuf key byte of `Record.partition_key_index` (field 1, varint).
const KEY_INDEX_TAG: u8 = 1 << 3;
/// Protobuf key byte of `Record.data` (field 3, length-delimited).
const DATA_TAG: u8 = (3 << 3) | 2;

/// `AggregatedRecord` of the KPL format (proto2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<Record>,
}

/// One user record inside an [`AggregatedRecord`] (proto2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    #[prost(uint64, required, tag = "1")]
    pub partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "vec", required, tag = "3")]
    pub data: Vec<u8>,
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<Tag>,
}

/// A user record tag (proto2). We never write tags; decoding ignores them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Tag {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// Why an aggregated record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("record does not start with the kpl aggregation magic")]
    MissingMagic,
    #[error("aggregated record is {0} bytes, shorter than magic and md5 trailer")]
    Truncated(usize),
    #[error("aggregated record md5 trailer does not match its content")]
    Md5Mismatch,
    #[error("aggregated record protobuf is malformed: {0}")]
    Protobuf(String),
    #[error("user record {record} names partition key {index} but the table holds {table_len}")]
    KeyIndexOutOfRange {
        record: usize,
        index: u64,
        table_len: usize,
    },
}

/// Why [`Aggregator::try_push`] refused a user record.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    /// The aggregate already holds records and this one would push it past the limit:
    /// finish the aggregate and push the record into a fresh one.
    #[error("aggregate is full")]
    Full,
    /// Even an empty aggregate cannot hold this record: send it unwrapped.
    #[error("record is too large to aggregate")]
    RecordTooLarge,
}

/// What a finished [`Aggregator`] yields, ready to become one Kinesis record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Nothing was pushed.
    Empty,
    /// Exactly one user record: sent as is, because an aggregate of one only costs bytes.
    Single {
        partition_key: String,
        data: Vec<u8>,
    },
    /// Two or more user records in KPL format. `partition_key` is the first user record's
    /// key: it hashes to the same shard as every record inside.
    Aggregated {
        partition_key: String,
        data: Framed,
        user_records: usize,
    },
}

/// An aggregate's bytes (magic, protobuf, MD5 trailer), left where [`Aggregator`] built them:
/// from `start` to the end of `buf`. Two are equal when their bytes are.
#[derive(Debug, Clone)]
pub struct Framed {
    buf: Vec<u8>,
    start: usize,
}

impl Framed {
    /// The bytes, without copying them when they fill most of the buffer. An aggregate closed
    /// early (at the linger, with a few records) is copied out, so that while it is in flight or
    /// retried it holds its own bytes, not the room a full one would have had.
    pub fn into_bytes(self) -> bytes::Bytes {
        if self.len() < self.buf.capacity() / 2 {
            return bytes::Bytes::copy_from_slice(&self);
        }
        bytes::Bytes::from(self.buf).slice(self.start..)
    }

    pub fn into_vec(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }

    fn protobuf(&self) -> &[u8] {
        &self[MAGIC.len()..self.len() - MD5_LEN]
    }

    fn trailer_mut(&mut self) -> &mut [u8] {
        let end = self.buf.len();
        &mut self.buf[end - MD5_LEN..]
    }
}

impl PartialEq for Framed {
    fn eq(&self, other: &Framed) -> bool {
        **self == **other
    }
}

impl Eq for Framed {}

impl std::ops::Deref for Framed {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Number of bytes protobuf uses to encode `value` as a varint.
pub fn varint_len(value: u64) -> usize {
    // Seven payload bits per byte; zero still takes one byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Bytes a length-delimited field of `len` payload bytes takes with a one-byte key.
fn delimited_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Encoded size of a `Record` message body holding `data_len` bytes under key `index`.
fn record_body_len(index: u64, data_len: usize) -> usize {
    1 + varint_len(index) + delimited_len(data_len)
}

/// Room kept in front of the records for the magic and the key table: [`Aggregator::finish`]
/// writes them there, in front of the records, instead of copying the records after them. One
/// shared random key takes 18 bytes; a table larger than this is copied.
const HEAD_ROOM: usize = 256;

/// Room the records' buffer starts with (an aggregate of the default 64 KiB never grows it).
const INITIAL_RECORDS_BYTES: usize = 64 * 1024;

/// Builds one aggregated record, tracking its exact encoded size.
///
/// Protobuf fields are written in table-then-records order, as the KPL writes them, into
/// two buffers: the records after [`HEAD_ROOM`] bytes, where [`Aggregator::finish`] puts the
/// magic and the table in front of them.
#[derive(Debug)]
pub struct Aggregator {
    max_bytes: usize,
    key_table: Vec<u8>,
    /// [`HEAD_ROOM`] bytes, then the records.
    records: Vec<u8>,
    key_indexes: HashMap<String, u64>,
    /// Where each key's bytes sit in `key_table`, by index.
    key_ranges: Vec<std::ops::Range<usize>>,
    /// The index of the last key pushed. Consecutive records often share a key (a task's lines,
    /// the shared random key), found here without hashing.
    last_key: Option<u64>,
    first_key: String,
    /// Where the first record's data sits in `records`, to unwrap a lone record.
    first_data: std::ops::Range<usize>,
    user_records: usize,
}

impl Aggregator {
    /// An empty aggregator whose encoded output (magic + protobuf + MD5) will never exceed
    /// `max_bytes`. Kinesis counts the partition key against its per-record limit, so pass
    /// the record limit minus the largest partition key the caller uses.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            key_table: Vec::new(),
            records: {
                let mut records =
                    Vec::with_capacity(HEAD_ROOM + max_bytes.min(INITIAL_RECORDS_BYTES));
                records.resize(HEAD_ROOM, 0);
                records
            },
            key_indexes: HashMap::new(),
            key_ranges: Vec::new(),
            last_key: None,
            first_key: String::new(),
            first_data: 0..0,
            user_records: 0,
        }
    }

    /// The limit given to [`Aggregator::new`].
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Number of user records pushed so far.
    pub fn len(&self) -> usize {
        self.user_records
    }

    pub fn is_empty(&self) -> bool {
        self.user_records == 0
    }

    /// Exact size of [`Aggregator::finish`]'s output if it holds two or more records.
    pub fn encoded_len(&self) -> usize {
        FRAMING_LEN + self.key_table.len() + self.records.len() - HEAD_ROOM
    }

    /// Exact encoded size after pushing a record with this key and data length.
    pub fn encoded_len_with(&self, partition_key: &str, data_len: usize) -> usize {
        self.encoded_len_for(self.key_index(partition_key), partition_key, data_len)
    }

    fn encoded_len_for(&self, index: Option<u64>, partition_key: &str, data_len: usize) -> usize {
        let (index, new_key_len) = match index {
            Some(index) => (index, 0),
            None => (
                self.key_indexes.len() as u64,
                delimited_len(partition_key.len()),
            ),
        };
        self.encoded_len() + new_key_len + delimited_len(record_body_len(index, data_len))
    }

    /// The index of `partition_key` in the table, if it is there.
    fn key_index(&self, partition_key: &str) -> Option<u64> {
        if let Some(index) = self.last_key
            && let Some(range) = self.key_ranges.get(index as usize)
            && self.key_table[range.clone()] == *partition_key.as_bytes()
        {
            return Some(index);
        }
        self.key_indexes.get(partition_key).copied()
    }

    /// Appends a user record unless that would exceed the size limit.
    pub fn try_push(&mut self, partition_key: &str, data: &[u8]) -> Result<(), PushError> {
        let known = self.key_index(partition_key);
        if self.encoded_len_for(known, partition_key, data.len()) > self.max_bytes {
            return Err(if self.is_empty() {
                PushError::RecordTooLarge
            } else {
                PushError::Full
            });
        }
        let index = match known {
            Some(index) => index,
            None => {
                let index = self.key_indexes.len() as u64;
                self.key_table.push(KEY_TABLE_TAG);
                put_varint(&mut self.key_table, partition_key.len() as u64);
                let start = self.key_table.len();
                self.key_table.extend_from_slice(partition_key.as_bytes());
                self.key_indexes.insert(partition_key.to_owned(), index);
                self.key_ranges.push(start..self.key_table.len());
                index
            }
        };
        self.last_key = Some(index);
        self.records.push(RECORDS_TAG);
        put_varint(&mut self.records, record_body_len(index, data.len()) as u64);
        self.records.push(KEY_INDEX_TAG);
        put_varint(&mut self.records, index);
        self.records.push(DATA_TAG);
        put_varint(&mut self.records, data.len() as u64);
        let start = self.records.len();
        self.records.extend_from_slice(data);
        if self.user_records == 0 {
            self.first_key = partition_key.to_owned();
            self.first_data = start..self.records.len();
        }
        self.user_records += 1;
        Ok(())
    }

    /// Ends this aggregate: nothing, the lone record unwrapped, or the KPL encoding.
    pub fn finish(self) -> Finished {
        let mut finished = self.finish_unsealed();
        if let Finished::Aggregated { data, .. } = &mut finished {
            seal(&mut [data]);
        }
        finished
    }

    /// As [`Aggregator::finish`], but an aggregate's MD5 trailer is left as zeros, to be written by
    /// [`seal`] together with other aggregates' (their MD5s are computed at once, see
    /// [`crate::md5_lanes`]). Until then the aggregate is not valid.
    pub fn finish_unsealed(self) -> Finished {
        match self.user_records {
            0 => Finished::Empty,
            1 => Finished::Single {
                data: self.records[self.first_data.clone()].to_vec(),
                partition_key: self.first_key,
            },
            user_records => {
                let head = MAGIC.len() + self.key_table.len();
                let (mut buf, start) = if head <= HEAD_ROOM {
                    let mut buf = self.records;
                    let start = HEAD_ROOM - head;
                    buf[start..start + MAGIC.len()].copy_from_slice(&MAGIC);
                    buf[start + MAGIC.len()..HEAD_ROOM].copy_from_slice(&self.key_table);
                    (buf, start)
                } else {
                    let mut buf = Vec::with_capacity(head + self.records.len());
                    buf.extend_from_slice(&MAGIC);
                    buf.extend_from_slice(&self.key_table);
                    buf.extend_from_slice(&self.records[HEAD_ROOM..]);
                    (buf, 0)
                };
                buf.extend_from_slice(&[0; MD5_LEN]);
                Finished::Aggregated {
                    partition_key: self.first_key,
                    data: Framed { buf, start },
                    user_records,
                }
            }
        }
    }

    /// The KPL encoding regardless of the record count (an aggregate of zero or one record
    /// is valid, just wasteful). Prefer [`Aggregator::finish`] when sending.
    pub fn encode(&self) -> Vec<u8> {
        let mut protobuf = Vec::with_capacity(self.key_table.len() + self.records.len());
        protobuf.extend_from_slice(&self.key_table);
        protobuf.extend_from_slice(&self.records[HEAD_ROOM..]);
        frame(&protobuf)
    }
}

/// Writes the MD5 trailer of aggregates from [`Aggregator::finish_unsealed`], hashing them together.
pub fn seal(aggregates: &mut [&mut Framed]) {
    let protobufs: Vec<&[u8]> = aggregates.iter().map(|data| data.protobuf()).collect();
    let digests = crate::md5_lanes::digests(&protobufs);
    for (data, digest) in aggregates.iter_mut().zip(digests) {
        data.trailer_mut().copy_from_slice(&digest);
    }
}

/// Wraps protobuf bytes of an [`AggregatedRecord`] in magic and MD5 trailer.
pub fn frame(protobuf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAMING_LEN + protobuf.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(protobuf);
    out.extend_from_slice(&Md5::digest(protobuf));
    out
}

/// Whether `data` starts with the aggregation magic and is long enough to be an
/// aggregate. Does not verify the MD5; [`decode`] does.
pub fn is_aggregated(data: &[u8]) -> bool {
    data.len() >= FRAMING_LEN && data.starts_with(&MAGIC)
}

/// Verifies magic and MD5 and decodes the protobuf message, checking key indexes.
pub fn decode(data: &[u8]) -> Result<AggregatedRecord, Error> {
    if !data.starts_with(&MAGIC) {
        return Err(Error::MissingMagic);
    }
    if data.len() < FRAMING_LEN {
        return Err(Error::Truncated(data.len()));
    }
    let (protobuf, trailer) = data[MAGIC.len()..].split_at(data.len() - FRAMING_LEN);
    if Md5::digest(protobuf).as_slice() != trailer {
        return Err(Error::Md5Mismatch);
    }
    let aggregate =
        AggregatedRecord::decode(protobuf).map_err(|error| Error::Protobuf(error.to_string()))?;
    let table_len = aggregate.partition_key_table.len();
    for (record, user) in aggregate.records.iter().enumerate() {
        if user.partition_key_index >= table_len as u64 {
            return Err(Error::KeyIndexOutOfRange {
                record,
                index: user.partition_key_index,
                table_len,
            });
        }
    }
    Ok(aggregate)
}

/// The user records of an aggregated record as (partition key, data), in order.
/// Fails on a record without the magic: see [`deaggregate_or_single`].
pub fn deaggregate(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let AggregatedRecord {
        partition_key_table,
        records,
        ..
    } = decode(data)?;
    Ok(records
        .into_iter()
        .map(|record| {
            // `decode` checked every index against the table.
            let key = partition_key_table[record.partition_key_index as usize].clone();
            (key, record.data)
        })
        .collect())
}

/// Like [`deaggregate`], but a record without the magic is one plain user record under
/// the Kinesis record's own `partition_key`. A record with the magic must still verify.
pub fn deaggregate_or_single(
    partition_key: &str,
    data: &[u8],
) -> Result<Vec<(String, Vec<u8>)>, Error> {
    if data.starts_with(&MAGIC) {
        deaggregate(data)
    } else {
        Ok(vec![(partition_key.to_owned(), data.to_vec())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn user_records() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
        // Few distinct keys so the key table dedupes; data sizes cross varint boundaries.
        let key = prop::sample::select(vec!["a", "task-1", "k\u{e9}y", "x".repeat(256).leak()]);
        let record = (
            key.prop_map(str::to_owned),
            prop::collection::vec(any::<u8>(), 0..300),
        );
        prop::collection::vec(record, 0..40)
    }

    proptest! {
        #[test]
        fn round_trip_matches_prediction_and_limit(
            records in user_records(),
            max_bytes in 20usize..4000,
        ) {
            let mut aggregator = Aggregator::new(max_bytes);
            let mut accepted = Vec::new();
            for (key, data) in &records {
                let predicted = aggregator.encoded_len_with(key, data.len());
                match aggregator.try_push(key, data) {
                    Ok(()) => {
                        prop_assert_eq!(aggregator.encoded_len(), predicted);
                        prop_assert!(predicted <= max_bytes);
                        accepted.push((key.clone(), data.clone()));
                    }
                    Err(PushError::Full) => {
                        prop_assert!(predicted > max_bytes);
                        prop_assert!(!aggregator.is_empty());
                        break;
                    }
                    Err(PushError::RecordTooLarge) => {
                        prop_assert!(predicted > max_bytes);
                        prop_assert!(aggregator.is_empty());
                        break;
                    }
                }
            }
            let encoded = aggregator.encode();
            prop_assert_eq!(encoded.len(), aggregator.encoded_len());
            prop_assert!(is_aggregated(&encoded));
            prop_assert_eq!(deaggregate(&encoded).unwrap(), accepted.clone());
            // The hand-written encoding is what prost itself would produce.
            let decoded = decode(&encoded).unwrap();
            prop_assert_eq!(frame(&decoded.encode_to_vec()), encoded.clone());

            match aggregator.finish() {
                Finished::Empty => prop_assert!(accepted.is_empty()),
                Finished::Single { partition_key, data } => {
                    prop_assert_eq!(vec![(partition_key, data)], accepted);
                }
                Finished::Aggregated { partition_key, data, user_records } => {
                    prop_assert_eq!(&*data, &encoded[..]);
                    prop_assert_eq!(user_records, accepted.len());
                    prop_assert_eq!(&partition_key, &accepted[0].0);
                }
            }
        }
    }

    #[test]
    fn varint_len_matches_prost() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            assert_eq!(
                varint_len(value),
                prost::encoding::encoded_len_varint(value)
            );
        }
    }

    #[test]
    fn keys_are_deduplicated() {
        let mut aggregator = Aggregator::new(1 << 20);
        for data in [b"one", b"two", b"six"] {
            aggregator.try_push("same", data).unwrap();
        }
        aggregator.try_push("other", b"ten").unwrap();
        let decoded = decode(&aggregator.encode()).unwrap();
        assert_eq!(decoded.partition_key_table, ["same", "other"]);
        let indexes: Vec<u64> = decoded
            .records
            .iter()
            .map(|r| r.partition_key_index)
            .collect();
        assert_eq!(indexes, [0, 0, 0, 1]);
    }

    #[test]
    fn flipped_byte_fails_md5() {
        let mut aggregator = Aggregator::new(1 << 20);
        aggregator.try_push("k", b"hello").unwrap();
        aggregator.try_push("k", b"world").unwrap();
        let encoded = aggregator.encode();
        for position in MAGIC.len()..encoded.len() {
            let mut corrupt = encoded.clone();
            corrupt[position] ^= 0x01;
            assert_eq!(
                deaggregate(&corrupt),
                Err(Error::Md5Mismatch),
                "byte {position}"
            );
        }
    }

    #[test]
    fn plain_records_need_the_lenient_entry_point() {
        assert!(!is_aggregated(b"plain log line"));
        assert_eq!(deaggregate(b"plain log line"), Err(Error::MissingMagic));
        assert_eq!(
            deaggregate_or_single("pk", b"plain log line").unwrap(),
            vec![("pk".to_owned(), b"plain log line".to_vec())]
        );
        assert_eq!(deaggregate(&MAGIC), Err(Error::Truncated(4)));
    }

    #[test]
    fn key_index_out_of_range_is_an_error() {
        let bad = AggregatedRecord {
            partition_key_table: vec!["k".into()],
            explicit_hash_key_table: vec![],
            records: vec![Record {
                partition_key_index: 1,
                explicit_hash_key_index: None,
                data: b"x".to_vec(),
                tags: vec![],
            }],
        };
        let encoded = frame(&bad.encode_to_vec());
        assert!(matches!(
            decode(&encoded),
            Err(Error::KeyIndexOutOfRange { index: 1, .. })
        ));
    }

    #[test]
    fn single_record_is_sent_unwrapped() {
        let mut aggregator = Aggregator::new(100);
        aggregator.try_push("key", b"line").unwrap();
        let finished = aggregator.finish();
        assert_eq!(
            finished,
            Finished::Single {
                partition_key: "key".into(),
                data: b"line".to_vec()
            }
        );
        assert_eq!(
            Aggregator::new(10).try_push("k", b"data"),
            Err(PushError::RecordTooLarge)
        );
    }
}
