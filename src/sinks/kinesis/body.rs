//! The PutRecords request body, written straight from the records.
//!
//! The SDK would copy every record's data into a request entry and serialize the entries through
//! its schema-driven JSON writer; at one record per line that is an allocation, a copy and a
//! generic walk per line. This writes the same awsJson 1.1 document in one pass, base64 straight
//! from each record into the body. The SDK still does everything else: credentials, endpoint,
//! SigV4 over this body, the HTTP call, and parsing the answer and its errors.

use crate::record::Record;

/// `{"Records":[{"Data":"<base64>","PartitionKey":"<key>"},...],"StreamName":"<name>"}`, with
/// `StreamARN` instead of `StreamName` when `by_arn`.
pub fn put_records(stream: &str, by_arn: bool, records: &[Record]) -> Vec<u8> {
    let size: usize = records
        .iter()
        .map(|record| base64_len(record.data.len()) + record.partition_key.len() + ENTRY_OVERHEAD)
        .sum();
    let mut body = Vec::with_capacity(size + stream.len() + 64);
    body.extend_from_slice(b"{\"Records\":[");
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"Data\":\"");
        base64_simd::STANDARD.encode_append(&record.data, &mut body);
        body.extend_from_slice(b"\",\"PartitionKey\":");
        json_string(&mut body, &record.partition_key);
        body.push(b'}');
    }
    body.extend_from_slice(if by_arn {
        b"],\"StreamARN\":"
    } else {
        b"],\"StreamName\":"
    });
    json_string(&mut body, stream);
    body.push(b'}');
    body
}

/// `{"Data":"","PartitionKey":""}` and the comma before the next entry.
const ENTRY_OVERHEAD: usize = 31;

fn base64_len(len: usize) -> usize {
    len.div_ceil(3) * 4
}

/// `value` as a JSON string: quotes, backslashes and control characters escaped, everything else
/// (including non-ASCII UTF-8) as is.
fn json_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let bytes = value.as_bytes();
    // Keys almost never need escaping: one branch-free pass (which the compiler vectorizes) finds
    // that out before the byte-by-byte path.
    if !bytes
        .iter()
        .fold(false, |found, &byte| found | needs_escape(byte))
    {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        if !needs_escape(byte) {
            continue;
        }
        out.extend_from_slice(&bytes[start..index]);
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(format!("\\u{byte:04x}").as_bytes()),
        }
        start = index + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::sinks::kinesis::test_record;

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).expect("the body is JSON")
    }

    #[test]
    fn a_body_names_the_stream_by_name_or_by_arn() {
        let records = [test_record(b"hello".to_vec(), "k", None)];
        let by_name = parse(&put_records("logs", false, &records));
        assert_eq!(by_name["StreamName"], "logs");
        assert!(by_name.get("StreamARN").is_none());
        let arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/logs";
        let by_arn = parse(&put_records(arn, true, &records));
        assert_eq!(by_arn["StreamARN"], arn);
        assert!(by_arn.get("StreamName").is_none());
        assert_eq!(by_arn["Records"][0]["Data"], "aGVsbG8=");
    }

    proptest! {
        /// Whatever the data and keys, the body parses as JSON and gives back every record's bytes
        /// and key, in order.
        #[test]
        fn every_record_comes_back(
            entries in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..300), "\\PC{1,20}|[\\x00-\\x1f\"\\\\]{1,5}"),
                1..20,
            ),
            stream in "[a-zA-Z0-9_.-]{1,20}",
        ) {
            let records: Vec<Record> = entries.iter().map(|(data, key)| test_record(data.clone(), key, None)).collect();
            let body = put_records(&stream, false, &records);
            let parsed = parse(&body);
            prop_assert_eq!(parsed["StreamName"].as_str(), Some(stream.as_str()));
            let out = parsed["Records"].as_array().expect("Records is an array");
            prop_assert_eq!(out.len(), entries.len());
            for (entry, (data, key)) in out.iter().zip(&entries) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(entry["Data"].as_str().expect("Data is a string"))
                    .expect("Data is base64");
                prop_assert_eq!(&decoded, data);
                prop_assert_eq!(entry["PartitionKey"].as_str(), Some(key.as_str()));
            }
        }
    }
}
