//! PutRecords in Kinesis's CBOR protocol (`application/x-amz-cbor-1.1`): the same documents as
//! the JSON protocol, with record data as byte strings. Only PutRecords is served in CBOR, the one
//! call the shipper sends that way.

use std::borrow::Cow;

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use crate::api::{ApiError, StreamSelector};

pub const CONTENT_TYPE: &str = "application/x-amz-cbor-1.1";

/// One PutRecords entry as sent in CBOR.
pub struct Entry<'a> {
    pub data: Cow<'a, [u8]>,
    pub partition_key: Cow<'a, str>,
    pub explicit_hash_key: Option<Cow<'a, str>>,
}

type Decoded<T> = Result<T, minicbor::decode::Error>;

/// A PutRecords request: its entries and the stream it names.
pub fn put_records_input(body: &[u8]) -> Result<(Vec<Entry<'_>>, StreamSelector), ApiError> {
    let mut decoder = Decoder::new(body);
    let mut entries = None;
    let mut selector = StreamSelector::default();
    each_field(&mut decoder, |decoder, name| {
        match name {
            "Records" => {
                let mut list = Vec::new();
                each_item(decoder, |decoder| {
                    list.push(entry(decoder)?);
                    Ok(())
                })?;
                entries = Some(list);
            }
            "StreamName" => selector.stream_name = Some(text(decoder)?.into_owned()),
            "StreamARN" => selector.stream_arn = Some(text(decoder)?.into_owned()),
            _ => decoder.skip()?,
        }
        Ok(())
    })
    .map_err(|error| ApiError::serialization(format!("PutRecords in CBOR: {error}")))?;
    let entries = entries.ok_or_else(|| ApiError::serialization("Records is missing"))?;
    Ok((entries, selector))
}

fn entry<'a>(decoder: &mut Decoder<'a>) -> Decoded<Entry<'a>> {
    let (mut data, mut partition_key, mut explicit_hash_key) = (None, None, None);
    each_field(decoder, |decoder, name| {
        match name {
            "Data" => data = Some(bytes(decoder)?),
            "PartitionKey" => partition_key = Some(text(decoder)?),
            "ExplicitHashKey" => explicit_hash_key = Some(text(decoder)?),
            _ => decoder.skip()?,
        }
        Ok(())
    })?;
    match (data, partition_key) {
        (Some(data), Some(partition_key)) => Ok(Entry {
            data,
            partition_key,
            explicit_hash_key,
        }),
        _ => Err(minicbor::decode::Error::message(
            "an entry needs Data and PartitionKey",
        )),
    }
}

/// One entry of a PutRecords answer.
pub enum Outcome<'a> {
    Accepted {
        sequence_number: &'a str,
        shard_id: &'a str,
    },
    Failed {
        error_code: &'a str,
        error_message: &'a str,
    },
}

/// A PutRecords answer.
pub fn put_records_output<'a>(
    failed_record_count: usize,
    results: impl ExactSizeIterator<Item = Outcome<'a>>,
) -> Vec<u8> {
    let mut encoder = Encoder::new(Vec::new());
    let written: Result<(), minicbor::encode::Error<std::convert::Infallible>> = (|| {
        encoder
            .map(3)?
            .str("FailedRecordCount")?
            .u64(failed_record_count as u64)?
            .str("Records")?
            .array(results.len() as u64)?;
        for result in results {
            match result {
                Outcome::Accepted {
                    sequence_number,
                    shard_id,
                } => encoder
                    .map(2)?
                    .str("SequenceNumber")?
                    .str(sequence_number)?
                    .str("ShardId")?
                    .str(shard_id)?,
                Outcome::Failed {
                    error_code,
                    error_message,
                } => encoder
                    .map(2)?
                    .str("ErrorCode")?
                    .str(error_code)?
                    .str("ErrorMessage")?
                    .str(error_message)?,
            };
        }
        encoder.str("EncryptionType")?.str("NONE")?;
        Ok(())
    })();
    // Writing to a Vec cannot fail.
    written.unwrap_or_default();
    encoder.into_writer()
}

/// An error answer: `{"__type": kind, "message": message}`.
pub fn error(kind: &str, message: &str) -> Vec<u8> {
    let mut encoder = Encoder::new(Vec::new());
    let written: Result<_, minicbor::encode::Error<std::convert::Infallible>> = encoder
        .map(2)
        .and_then(|e| e.str("__type"))
        .and_then(|e| e.str(kind))
        .and_then(|e| e.str("message"))
        .and_then(|e| e.str(message))
        .map(|_| ());
    written.unwrap_or_default();
    encoder.into_writer()
}

fn each_field<'b>(
    decoder: &mut Decoder<'b>,
    mut field: impl FnMut(&mut Decoder<'b>, &str) -> Decoded<()>,
) -> Decoded<()> {
    let len = decoder.map()?;
    let mut index = 0;
    while !at_end(decoder, len, index)? {
        let name = text(decoder)?;
        field(decoder, &name)?;
        index += 1;
    }
    Ok(())
}

fn each_item<'b>(
    decoder: &mut Decoder<'b>,
    mut item: impl FnMut(&mut Decoder<'b>) -> Decoded<()>,
) -> Decoded<()> {
    let len = decoder.array()?;
    let mut index = 0;
    while !at_end(decoder, len, index)? {
        item(decoder)?;
        index += 1;
    }
    Ok(())
}

fn at_end(decoder: &mut Decoder<'_>, len: Option<u64>, index: u64) -> Decoded<bool> {
    match len {
        Some(len) => Ok(index >= len),
        None if decoder.datatype()? == Type::Break => {
            decoder.set_position(decoder.position() + 1);
            Ok(true)
        }
        None => Ok(false),
    }
}

fn text<'b>(decoder: &mut Decoder<'b>) -> Decoded<Cow<'b, str>> {
    if decoder.datatype()? == Type::String {
        return decoder.str().map(Cow::Borrowed);
    }
    let mut joined = String::new();
    for chunk in decoder.str_iter()? {
        joined.push_str(chunk?);
    }
    Ok(Cow::Owned(joined))
}

fn bytes<'b>(decoder: &mut Decoder<'b>) -> Decoded<Cow<'b, [u8]>> {
    if decoder.datatype()? == Type::Bytes {
        return decoder.bytes().map(Cow::Borrowed);
    }
    let mut joined = Vec::new();
    for chunk in decoder.bytes_iter()? {
        joined.extend_from_slice(chunk?);
    }
    Ok(Cow::Owned(joined))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_read_and_an_answer_written() {
        let mut encoder = Encoder::new(Vec::new());
        encoder
            .map(2)
            .unwrap()
            .str("Records")
            .unwrap()
            .begin_array()
            .unwrap()
            .map(3)
            .unwrap()
            .str("Data")
            .unwrap()
            .bytes(b"\x00\xffline")
            .unwrap()
            .str("PartitionKey")
            .unwrap()
            .str("k")
            .unwrap()
            .str("ExplicitHashKey")
            .unwrap()
            .str("7")
            .unwrap()
            .end()
            .unwrap()
            .str("StreamName")
            .unwrap()
            .str("logs")
            .unwrap();
        let body = encoder.into_writer();
        let (entries, selector) = put_records_input(&body).expect("a valid request");
        assert_eq!(entries.len(), 1);
        assert_eq!(&*entries[0].data, b"\x00\xffline");
        assert_eq!(entries[0].partition_key, "k");
        assert_eq!(entries[0].explicit_hash_key.as_deref(), Some("7"));
        assert_eq!(selector.name().unwrap(), "logs");

        let answer = put_records_output(
            1,
            [
                Outcome::Accepted {
                    sequence_number: "1",
                    shard_id: "shardId-000000000000",
                },
                Outcome::Failed {
                    error_code: "InternalFailure",
                    error_message: "no",
                },
            ]
            .into_iter(),
        );
        let mut decoder = Decoder::new(&answer);
        let mut names = Vec::new();
        each_field(&mut decoder, |decoder, name| {
            names.push(name.to_owned());
            decoder.skip()
        })
        .unwrap();
        assert_eq!(names, ["FailedRecordCount", "Records", "EncryptionType"]);
    }

    #[test]
    fn a_request_that_is_not_cbor_is_a_serialization_error() {
        let error = put_records_input(br#"{"Records":[]}"#)
            .err()
            .expect("refused");
        assert_eq!(error.kind, "SerializationException");
    }
}
