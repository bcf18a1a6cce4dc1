//! PutRecords in Kinesis's CBOR protocol (`application/x-amz-cbor-1.1`, the AWS SDK for Java's
//! default for Kinesis): the same document as the JSON body, but each record's data travels as a
//! CBOR byte string instead of base64 text. The body is a quarter smaller, and that quarter is
//! neither encoded, nor hashed for the signature, nor encrypted, nor copied to the socket.
//!
//! The Rust SDK speaks only JSON to Kinesis, so the answer is read here too: a successful one into
//! per-entry results, an error one rewritten as the JSON error document the SDK parses, so that
//! error codes are classified as for any call.

use std::borrow::Cow;

use super::transport::{EntryResult, delivered, malformed};
use crate::record::Record;
use crate::sinks::error::SendError;

/// The content type of a request or answer in the CBOR protocol.
pub const CONTENT_TYPE: &str = "application/x-amz-cbor-1.1";

const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;

/// `{"Records":[{"Data":h'..',"PartitionKey":"<key>"},...],"StreamName":"<name>"}` in CBOR, with
/// `StreamARN` instead of `StreamName` when `by_arn`. Lengths are definite throughout.
pub fn put_records(stream: &str, by_arn: bool, records: &[Record]) -> Vec<u8> {
    let size: usize = records
        .iter()
        .map(|record| record.data.len() + record.partition_key.len() + ENTRY_OVERHEAD)
        .sum();
    let mut body = Vec::with_capacity(size + stream.len() + 32);
    head(&mut body, MAJOR_MAP, 2);
    text(&mut body, "Records");
    head(&mut body, MAJOR_ARRAY, records.len() as u64);
    for record in records {
        head(&mut body, MAJOR_MAP, 2);
        text(&mut body, "Data");
        head(&mut body, MAJOR_BYTES, record.data.len() as u64);
        body.extend_from_slice(&record.data);
        text(&mut body, "PartitionKey");
        text(&mut body, &record.partition_key);
    }
    text(&mut body, if by_arn { "StreamARN" } else { "StreamName" });
    text(&mut body, stream);
    body
}

/// An entry's map head, its two names with their heads, and the longest data and key heads.
const ENTRY_OVERHEAD: usize = 1 + 5 + 13 + 9 + 3;

/// A CBOR head: the major type and the length (or value) in the shortest form.
fn head(out: &mut Vec<u8>, major: u8, len: u64) {
    let major = major << 5;
    match len {
        0..=23 => out.push(major | len as u8),
        24..=0xff => out.extend_from_slice(&[major | 24, len as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

fn text(out: &mut Vec<u8>, value: &str) {
    head(out, MAJOR_TEXT, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

/// Whether `body` starts like a CBOR map (a JSON document starts with `{` or white space).
pub fn is_map(body: &[u8]) -> bool {
    body.first().is_some_and(|&first| first >> 5 == MAJOR_MAP)
}

/// A successful PutRecords answer in CBOR: one result per record, in order.
pub fn read_answer(body: &[u8], records: &[Record]) -> Result<Vec<EntryResult>, SendError> {
    let broken = |error: Broken| malformed(format!("PutRecords answer (CBOR): {error}"));
    let mut reader = Reader::new(body);
    let mut results = None;
    reader
        .each_field(|reader, name| {
            if name == b"Records" {
                results = Some(entries(reader, records)?);
                Ok(())
            } else {
                reader.skip()
            }
        })
        .map_err(broken)?;
    let results = results.ok_or_else(|| malformed("PutRecords answer has no Records".into()))?;
    if results.len() != records.len() {
        return Err(malformed(format!(
            "{} results for {} records",
            results.len(),
            records.len()
        )));
    }
    Ok(results)
}

/// The answer's entries, matched with the records in order (extra entries are counted, not read).
fn entries(reader: &mut Reader<'_>, records: &[Record]) -> Result<Vec<EntryResult>, Broken> {
    let mut results = Vec::with_capacity(records.len());
    let mut records = records.iter();
    let mut extra = 0;
    reader.each_item(|reader| {
        if let Some(shard_id) = reader.usual_entry() {
            let Some(record) = records.next() else {
                extra += 1;
                return Ok(());
            };
            let shard_id = std::str::from_utf8(shard_id);
            results.push(delivered(
                record,
                Some(shard_id.map_err(|_| Broken("a shard id is not UTF-8"))?),
            ));
            return Ok(());
        }
        let (mut shard_id, mut code, mut message) = (None, None, None);
        reader.each_field(|reader, name| {
            match name {
                b"ShardId" => shard_id = reader.optional_text()?,
                b"ErrorCode" => code = reader.optional_text()?,
                b"ErrorMessage" => message = reader.optional_text()?,
                _ => reader.skip()?,
            }
            Ok(())
        })?;
        let Some(record) = records.next() else {
            extra += 1;
            return Ok(());
        };
        results.push(match code {
            None => {
                let shard_id = shard_id.as_deref().map(std::str::from_utf8).transpose();
                delivered(
                    record,
                    shard_id.map_err(|_| Broken("a shard id is not UTF-8"))?,
                )
            }
            Some(code) => EntryResult::Failed {
                code: String::from_utf8_lossy(&code).into_owned(),
                message: String::from_utf8_lossy(&message.unwrap_or_default()).into_owned(),
            },
        });
        Ok(())
    })?;
    // More entries than records: the caller reports the count mismatch.
    results.extend((0..extra).map(|_| EntryResult::Delivered));
    Ok(results)
}

/// An error answer in CBOR (`{"__type": ..., "message": ...}`), as the JSON document the SDK's
/// error parser reads. `None` when the body is not such a map.
pub fn error_as_json(body: &[u8]) -> Option<Vec<u8>> {
    let mut reader = Reader::new(body);
    let mut fields = serde_json::Map::new();
    reader
        .each_field(|reader, name| {
            let name = match name {
                b"__type" | b"code" | b"message" | b"Message" | b"errorMessage" => name,
                _ => return reader.skip(),
            };
            if let Some(value) = reader.optional_text()? {
                fields.insert(
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(&value).into_owned().into(),
                );
            }
            Ok(())
        })
        .ok()?;
    serde_json::to_vec(&fields).ok()
}

/// Why an answer could not be read.
#[derive(Debug, PartialEq, Eq)]
struct Broken(&'static str);

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Deepest nesting `skip` follows: answers are three levels deep.
const MAX_DEPTH: usize = 32;

/// Just enough of a CBOR reader (RFC 8949) for the answers: maps and arrays of definite or
/// indefinite length, text strings, and skipping anything else. A CBOR library checks every text
/// string as UTF-8 on the way, the 56-digit sequence number of each of 500 entries included, and
/// that made reading an answer cost more than writing the request; this compares names as bytes
/// and checks only the values the sink keeps.
struct Reader<'b> {
    input: &'b [u8],
    at: usize,
}

const MAJOR_TAG: u8 = 6;
const MAJOR_SIMPLE: u8 = 7;
const BREAK: u8 = 0xff;
const NULL: u8 = 0xf6;
const UNDEFINED: u8 = 0xf7;

impl<'b> Reader<'b> {
    fn new(input: &'b [u8]) -> Self {
        Reader { input, at: 0 }
    }

    fn peek(&self) -> Result<u8, Broken> {
        self.input
            .get(self.at)
            .copied()
            .ok_or(Broken("the answer ends early"))
    }

    fn take(&mut self, len: u64) -> Result<&'b [u8], Broken> {
        let left = self.input.len() - self.at;
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= left)
            .ok_or(Broken("a length runs past the end"))?;
        let taken = &self.input[self.at..self.at + len];
        self.at += len;
        Ok(taken)
    }

    /// A data item's head: its major type and its argument (`None`: indefinite length).
    fn head(&mut self) -> Result<(u8, Option<u64>), Broken> {
        let initial = self.peek()?;
        self.at += 1;
        let (major, info) = (initial >> 5, initial & 0x1f);
        let argument = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(
                self.take(2)?.try_into().unwrap_or_default(),
            )),
            26 => u64::from(u32::from_be_bytes(
                self.take(4)?.try_into().unwrap_or_default(),
            )),
            27 => u64::from_be_bytes(self.take(8)?.try_into().unwrap_or_default()),
            31 if matches!(major, MAJOR_BYTES..=MAJOR_MAP) => return Ok((major, None)),
            _ => return Err(Broken("a malformed head")),
        };
        Ok((major, Some(argument)))
    }

    /// Starts a map or an array: its length, `None` if indefinite.
    fn container(&mut self, major: u8) -> Result<Option<u64>, Broken> {
        match self.head()? {
            (found, len) if found == major => Ok(len),
            _ if major == MAJOR_MAP => Err(Broken("expected a map")),
            _ => Err(Broken("expected an array")),
        }
    }

    /// Whether a container of `len` items has none after `index`; an ending break is consumed.
    fn at_end(&mut self, len: Option<u64>, index: u64) -> Result<bool, Broken> {
        match len {
            Some(len) => Ok(index >= len),
            None if self.peek()? == BREAK => {
                self.at += 1;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Calls `field` with each name of a map, the reader at its value.
    fn each_field(
        &mut self,
        mut field: impl FnMut(&mut Self, &[u8]) -> Result<(), Broken>,
    ) -> Result<(), Broken> {
        let len = self.container(MAJOR_MAP)?;
        let mut index = 0;
        while !self.at_end(len, index)? {
            let name = self.text()?;
            field(self, &name)?;
            index += 1;
        }
        Ok(())
    }

    /// Calls `item` with the reader at each item of an array.
    fn each_item(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), Broken>,
    ) -> Result<(), Broken> {
        let len = self.container(MAJOR_ARRAY)?;
        let mut index = 0;
        while !self.at_end(len, index)? {
            item(self)?;
            index += 1;
        }
        Ok(())
    }

    /// The usual entry of a successful answer, `{"SequenceNumber": .., "ShardId": ..}` (either
    /// order) with short definite lengths, read in one step: its shard id. `None`, the reader
    /// unmoved, for any other entry, which the general path reads.
    fn usual_entry(&mut self) -> Option<&'b [u8]> {
        /// A text head of one byte, or of two for 24 to 255 bytes, and the bytes that follow it.
        fn short_text(input: &[u8]) -> Option<(&[u8], &[u8])> {
            let (len, rest) = match *input.first()? {
                head @ 0x60..=0x77 => (usize::from(head - 0x60), &input[1..]),
                0x78 => (usize::from(*input.get(1)?), &input[2..]),
                _ => return None,
            };
            (rest.len() >= len).then(|| rest.split_at(len))
        }
        let mut rest = self.input.get(self.at..)?.strip_prefix(&[0xa2])?;
        let mut shard_id = None;
        let mut sequence_number = false;
        for _ in 0..2 {
            let (name, after) = short_text(rest)?;
            let (value, after) = short_text(after)?;
            match name {
                b"ShardId" if shard_id.is_none() => shard_id = Some(value),
                b"SequenceNumber" if !sequence_number => sequence_number = true,
                _ => return None,
            }
            rest = after;
        }
        self.at = self.input.len() - rest.len();
        shard_id
    }

    /// A text string's bytes: borrowed, or joined from the chunks of an indefinite one.
    fn text(&mut self) -> Result<Cow<'b, [u8]>, Broken> {
        self.string(MAJOR_TEXT)
    }

    fn string(&mut self, major: u8) -> Result<Cow<'b, [u8]>, Broken> {
        match self.head()? {
            (found, Some(len)) if found == major => self.take(len).map(Cow::Borrowed),
            (found, None) if found == major => {
                let mut joined = Vec::new();
                while self.peek()? != BREAK {
                    match self.head()? {
                        (chunk, Some(len)) if chunk == major => {
                            joined.extend_from_slice(self.take(len)?);
                        }
                        _ => return Err(Broken("a malformed string chunk")),
                    }
                }
                self.at += 1;
                Ok(Cow::Owned(joined))
            }
            _ => Err(Broken("expected a text string")),
        }
    }

    /// A text string, or `None` for null or undefined.
    fn optional_text(&mut self) -> Result<Option<Cow<'b, [u8]>>, Broken> {
        if matches!(self.peek()?, NULL | UNDEFINED) {
            self.at += 1;
            return Ok(None);
        }
        self.text().map(Some)
    }

    /// Steps over one data item, whatever it is.
    fn skip(&mut self) -> Result<(), Broken> {
        self.skip_nested(0)
    }

    fn skip_nested(&mut self, depth: usize) -> Result<(), Broken> {
        if depth > MAX_DEPTH {
            return Err(Broken("nested too deep"));
        }
        let at = self.at;
        match self.head()? {
            (MAJOR_BYTES | MAJOR_TEXT, Some(len)) => self.take(len).map(drop),
            (major @ (MAJOR_BYTES | MAJOR_TEXT), None) => {
                self.at = at;
                self.string(major).map(drop)
            }
            (major @ (MAJOR_ARRAY | MAJOR_MAP), len) => {
                let per_entry = if major == MAJOR_MAP { 2 } else { 1 };
                let mut index = 0;
                while !self.at_end(len, index)? {
                    for _ in 0..per_entry {
                        self.skip_nested(depth + 1)?;
                    }
                    index += 1;
                }
                Ok(())
            }
            (MAJOR_TAG, _) => self.skip_nested(depth + 1),
            // Integers, and simple values and floats (their bytes were read with the head).
            (0 | 1 | MAJOR_SIMPLE, _) => Ok(()),
            _ => Err(Broken("a malformed item")),
        }
    }
}

#[cfg(test)]
mod tests {
    use ciborium::Value;
    use proptest::prelude::*;

    use super::*;
    use crate::sinks::kinesis::test_record as record;

    fn decode(body: &[u8]) -> Value {
        ciborium::from_reader(body).expect("the body is CBOR")
    }

    fn field<'a>(map: &'a Value, name: &str) -> &'a Value {
        map.as_map()
            .expect("a map")
            .iter()
            .find(|(key, _)| key.as_text() == Some(name))
            .map(|(_, value)| value)
            .unwrap_or_else(|| panic!("no field {name}"))
    }

    fn encoded(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).expect("encodes");
        out
    }

    fn text(value: &str) -> Value {
        Value::Text(value.into())
    }

    fn map(fields: Vec<(&str, Value)>) -> Value {
        Value::Map(fields.into_iter().map(|(k, v)| (text(k), v)).collect())
    }

    #[test]
    fn a_body_names_the_stream_by_name_or_by_arn() {
        let records = [record(b"x".to_vec(), "k", None)];
        let by_name = decode(&put_records("logs", false, &records));
        assert_eq!(field(&by_name, "StreamName"), &text("logs"));
        let arn = "arn:aws:kinesis:us-east-1:1:stream/logs";
        let by_arn = decode(&put_records(arn, true, &records));
        assert_eq!(field(&by_arn, "StreamARN"), &text(arn));
        assert_eq!(by_arn.as_map().map(Vec::len), Some(2));
    }

    proptest! {
        /// Whatever the data and keys (and their lengths across the head sizes), an independent
        /// decoder gives back every record's bytes and key, in order.
        #[test]
        fn every_record_comes_back(
            records in prop::collection::vec(
                (
                    prop_oneof![
                        prop::collection::vec(any::<u8>(), 0..30),
                        prop::collection::vec(any::<u8>(), 250..70_000),
                    ],
                    "\\PC{1,40}",
                ),
                0..20,
            ),
            stream in "[a-zA-Z0-9_.-]{1,128}",
        ) {
            let records: Vec<Record> = records
                .into_iter()
                .map(|(data, key)| record(data, &key, None))
                .collect();
            let body = put_records(&stream, false, &records);
            let value = decode(&body);
            let entries = field(&value, "Records").as_array().expect("an array");
            prop_assert_eq!(entries.len(), records.len());
            for (entry, record) in entries.iter().zip(&records) {
                prop_assert_eq!(entry.as_map().map(Vec::len), Some(2));
                prop_assert_eq!(field(entry, "Data").as_bytes(), Some(&record.data.to_vec()));
                prop_assert_eq!(field(entry, "PartitionKey").as_text(), Some(&*record.partition_key));
            }
            prop_assert_eq!(field(&value, "StreamName").as_text(), Some(stream.as_str()));
            // The capacity estimate holds: the body was written without growing.
            let estimate: usize = records
                .iter()
                .map(|r| r.data.len() + r.partition_key.len() + ENTRY_OVERHEAD)
                .sum::<usize>() + stream.len() + 32;
            prop_assert!(body.len() <= estimate);
        }
    }

    #[test]
    fn an_answer_gives_one_result_per_record_in_order() {
        let answer = map(vec![
            ("FailedRecordCount", Value::Integer(2.into())),
            (
                "Records",
                Value::Array(vec![
                    map(vec![
                        ("SequenceNumber", text("4959")),
                        ("ShardId", text("shardId-000000000000")),
                    ]),
                    map(vec![
                        ("ErrorCode", text("ProvisionedThroughputExceededException")),
                        ("ErrorMessage", text("Rate exceeded")),
                    ]),
                    map(vec![
                        ("SequenceNumber", text("1")),
                        ("ShardId", text("shardId-000000000002")),
                    ]),
                    map(vec![
                        ("ErrorCode", text("InternalFailure")),
                        ("ErrorMessage", Value::Null),
                    ]),
                    map(vec![
                        ("ShardId", text("shardId-000000000003")),
                        ("ErrorCode", Value::Null),
                        (
                            "Extra",
                            Value::Array(vec![
                                Value::Bool(true),
                                Value::Float(1.5),
                                Value::Float(0.1),
                                Value::Integer((-7).into()),
                                Value::Integer(u64::MAX.into()),
                                Value::Tag(1, Box::new(Value::Integer(1_700_000_000.into()))),
                                Value::Bytes(vec![1, 2, 3]),
                                map(vec![("n", Value::Null)]),
                            ]),
                        ),
                    ]),
                ]),
            ),
            ("EncryptionType", text("NONE")),
        ]);
        let records = [
            record(b"a".to_vec(), "k", Some("shardId-000000000000")),
            record(b"b".to_vec(), "k", None),
            record(b"c".to_vec(), "k", Some("shardId-000000000001")),
            record(b"d".to_vec(), "k", None),
            record(b"e".to_vec(), "k", None),
        ];
        assert_eq!(
            read_answer(&encoded(&answer), &records).expect("a valid answer"),
            vec![
                EntryResult::Delivered,
                EntryResult::Failed {
                    code: "ProvisionedThroughputExceededException".into(),
                    message: "Rate exceeded".into(),
                },
                EntryResult::DeliveredElsewhere {
                    shard_id: "shardId-000000000002".into(),
                },
                EntryResult::Failed {
                    code: "InternalFailure".into(),
                    message: String::new(),
                },
                EntryResult::Delivered,
            ]
        );
    }

    #[test]
    fn indefinite_maps_arrays_and_strings_are_read() {
        // {_ "Records": [_ {_ "ShardId": (_ "shardId-", "000000000001"), "ErrorCode": null}, ],
        //    "FailedRecordCount": 0 }
        let mut body = vec![0xbf];
        body.push(0x67);
        body.extend_from_slice(b"Records");
        body.push(0x9f);
        body.push(0xbf);
        body.push(0x67);
        body.extend_from_slice(b"ShardId");
        body.push(0x7f);
        body.push(0x68);
        body.extend_from_slice(b"shardId-");
        body.push(0x6c);
        body.extend_from_slice(b"000000000001");
        body.push(0xff);
        body.push(0x69);
        body.extend_from_slice(b"ErrorCode");
        body.push(0xf6);
        body.push(0xff);
        body.push(0xff);
        body.push(0x71);
        body.extend_from_slice(b"FailedRecordCount");
        body.push(0x00);
        body.push(0xff);
        let records = [record(b"a".to_vec(), "k", Some("shardId-000000000000"))];
        assert_eq!(
            read_answer(&body, &records).expect("a valid answer"),
            vec![EntryResult::DeliveredElsewhere {
                shard_id: "shardId-000000000001".into()
            }]
        );
    }

    #[test]
    fn a_wrong_count_or_a_broken_answer_is_a_transient_error() {
        let one = map(vec![(
            "Records",
            Value::Array(vec![map(vec![("ShardId", text("s"))])]),
        )]);
        let two = [
            record(b"a".to_vec(), "k", None),
            record(b"b".to_vec(), "k", None),
        ];
        let none: [Record; 0] = [];
        for (body, records) in [
            (encoded(&one), &two[..]),
            (encoded(&one), &none[..]),
            (
                encoded(&map(vec![("FailedRecordCount", Value::Integer(0.into()))])),
                &two[..],
            ),
            (encoded(&one)[..5].to_vec(), &two[..1]),
            (b"{\"Records\":[]}".to_vec(), &none[..]),
        ] {
            let error = read_answer(&body, records).expect_err("not a valid answer");
            assert_eq!(error.code, "MalformedResponse");
            assert!(error.is_retriable());
        }
    }

    #[test]
    fn entries_shaped_almost_like_the_usual_one_are_read_in_full() {
        let entries = [
            // Two shard ids: the last one counts, as for any map.
            map(vec![("ShardId", text("a")), ("ShardId", text("b"))]),
            // A failure with two fields.
            map(vec![("ShardId", text("a")), ("ErrorCode", text("E"))]),
            // No shard id.
            map(vec![
                ("SequenceNumber", text("1")),
                ("SequenceNumber", text("2")),
            ]),
            // A shard id that is not text.
            map(vec![
                ("SequenceNumber", text("1")),
                ("ShardId", Value::Null),
            ]),
            // A long sequence number (its head takes two bytes of length).
            map(vec![
                ("SequenceNumber", text(&"9".repeat(300))),
                ("ShardId", text("c")),
            ]),
        ];
        let answer = map(vec![("Records", Value::Array(entries.to_vec()))]);
        let records: Vec<Record> = (0..entries.len())
            .map(|_| record(b"x".to_vec(), "k", Some("a")))
            .collect();
        let results = read_answer(&encoded(&answer), &records).expect("a valid answer");
        assert_eq!(
            results,
            [
                EntryResult::DeliveredElsewhere {
                    shard_id: "b".into()
                },
                EntryResult::Failed {
                    code: "E".into(),
                    message: String::new()
                },
                EntryResult::Delivered,
                EntryResult::Delivered,
                EntryResult::DeliveredElsewhere {
                    shard_id: "c".into()
                },
            ]
        );
    }

    proptest! {
        /// Whatever the bytes, an answer is read or refused, never a panic.
        #[test]
        fn any_bytes_are_read_or_refused(body in prop::collection::vec(any::<u8>(), 0..300)) {
            let records = [record(b"a".to_vec(), "k", None)];
            if let Err(error) = read_answer(&body, &records) {
                prop_assert_eq!(error.code, "MalformedResponse");
            }
            let _ = error_as_json(&body);
        }

        /// Any answer an independent encoder writes reads back entry by entry.
        #[test]
        fn encoded_answers_read_back(
            entries in prop::collection::vec(
                (any::<bool>(), "[a-zA-Z0-9-]{1,30}", "\\PC{0,40}", 0..3u8, 1..60usize),
                1..40,
            ),
        ) {
            let answer = map(vec![
                ("FailedRecordCount", Value::Integer(0.into())),
                (
                    "Records",
                    Value::Array(
                        entries
                            .iter()
                            .map(|(failed, id, message, shape, digits)| {
                                let sequence_number = text(&"4".repeat(*digits));
                                match (failed, shape) {
                                    (true, _) => map(vec![
                                        ("ErrorCode", text(id)),
                                        ("ErrorMessage", text(message)),
                                    ]),
                                    (false, 0) => map(vec![
                                        ("ShardId", text(id)),
                                        ("ErrorCode", Value::Null),
                                        ("SequenceNumber", sequence_number),
                                    ]),
                                    (false, 1) => map(vec![
                                        ("SequenceNumber", sequence_number),
                                        ("ShardId", text(id)),
                                    ]),
                                    (false, _) => map(vec![
                                        ("ShardId", text(id)),
                                        ("SequenceNumber", sequence_number),
                                    ]),
                                }
                            })
                            .collect(),
                    ),
                ),
            ]);
            let records: Vec<Record> = entries
                .iter()
                .map(|_| record(b"x".to_vec(), "k", Some("expected")))
                .collect();
            let results = read_answer(&encoded(&answer), &records).expect("a valid answer");
            for ((failed, id, message, _, _), result) in entries.iter().zip(results) {
                let want = if *failed {
                    EntryResult::Failed { code: id.clone(), message: message.clone() }
                } else if id == "expected" {
                    EntryResult::Delivered
                } else {
                    EntryResult::DeliveredElsewhere { shard_id: id.clone() }
                };
                prop_assert_eq!(result, want);
            }
        }
    }

    #[test]
    fn a_map_head_tells_cbor_from_json() {
        assert!(is_map(&encoded(&map(vec![(
            "Records",
            Value::Array(vec![])
        )]))));
        assert!(is_map(&[0xbf, 0xff]));
        assert!(!is_map(b"{\"Records\":[]}"));
        assert!(!is_map(b" {}"));
        assert!(!is_map(b""));
    }

    #[test]
    fn an_error_answer_becomes_the_json_the_sdk_reads() {
        let body = encoded(&map(vec![
            ("__type", text("ResourceNotFoundException")),
            ("message", text("Stream logs not found")),
            ("Other", Value::Integer(1.into())),
        ]));
        let json: serde_json::Value =
            serde_json::from_slice(&error_as_json(&body).expect("an error map")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "__type": "ResourceNotFoundException",
                "message": "Stream logs not found",
            })
        );
        assert_eq!(error_as_json(b"<html>502</html>"), None);
    }
}
