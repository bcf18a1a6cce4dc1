//! PutRecords and PutRecord: validation like Kinesis, fault injection, per-shard limits,
//! and counting what was accepted.

use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use shipper::shard_map::{hash_key, parse_hash_key};

use crate::api::{ApiError, StreamSelector, body, parse};
use crate::state::{ACCOUNT_ID, Faults, Server, Shard, StoredRecord, now_seconds};
use crate::{cbor, payload};

/// Most entries in one PutRecords call (PutRecords API reference).
pub const MAX_ENTRIES: usize = 500;
const THROUGHPUT_EXCEEDED: &str = "ProvisionedThroughputExceededException";
/// Partition key length bounds, in Unicode characters (PutRecordsRequestEntry).
pub const PARTITION_KEY_CHARS: std::ops::RangeInclusive<usize> = 1..=256;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry<'a> {
    #[serde(borrow)]
    data: Cow<'a, str>,
    #[serde(borrow)]
    partition_key: Cow<'a, str>,
    #[serde(borrow, default)]
    explicit_hash_key: Option<Cow<'a, str>>,
}

// Stream selectors are spelled out rather than flattened: `flatten` would buffer the
// whole body before parsing it.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsInput<'a> {
    #[serde(borrow)]
    records: Vec<Entry<'a>>,
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordInput<'a> {
    #[serde(borrow)]
    data: Cow<'a, str>,
    #[serde(borrow)]
    partition_key: Cow<'a, str>,
    #[serde(borrow, default)]
    explicit_hash_key: Option<Cow<'a, str>>,
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EntryResult {
    Accepted {
        #[serde(rename = "SequenceNumber")]
        sequence_number: String,
        #[serde(rename = "ShardId")]
        shard_id: String,
    },
    Failed {
        #[serde(rename = "ErrorCode")]
        error_code: &'static str,
        #[serde(rename = "ErrorMessage")]
        error_message: String,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsOutput {
    failed_record_count: usize,
    records: Vec<EntryResult>,
    encryption_type: &'static str,
}

/// A validated entry: decoded data and the hash key that routes it.
struct Prepared {
    partition_key: String,
    data: Vec<u8>,
    hash_key: u128,
}

impl Prepared {
    fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }
}

/// An entry's data as it came: base64 text (JSON) or bytes (CBOR).
enum Data<'a> {
    Base64(Cow<'a, str>),
    Raw(Cow<'a, [u8]>),
}

/// One entry of either protocol.
struct Sent<'a> {
    data: Data<'a>,
    partition_key: Cow<'a, str>,
    explicit_hash_key: Option<Cow<'a, str>>,
}

impl<'a> From<Entry<'a>> for Sent<'a> {
    fn from(entry: Entry<'a>) -> Self {
        Sent {
            data: Data::Base64(entry.data),
            partition_key: entry.partition_key,
            explicit_hash_key: entry.explicit_hash_key,
        }
    }
}

impl<'a> From<cbor::Entry<'a>> for Sent<'a> {
    fn from(entry: cbor::Entry<'a>) -> Self {
        Sent {
            data: Data::Raw(entry.data),
            partition_key: entry.partition_key,
            explicit_hash_key: entry.explicit_hash_key,
        }
    }
}

fn prepare(server: &Server, position: usize, entry: Sent<'_>) -> Result<Prepared, ApiError> {
    let key_chars = entry.partition_key.chars().count();
    if !PARTITION_KEY_CHARS.contains(&key_chars) {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at 'records.{position}.member.partitionKey' \
             failed to satisfy constraint: Member must have length between 1 and 256"
        )));
    }
    let data = match entry.data {
        Data::Base64(text) => BASE64
            .decode(text.as_bytes())
            .map_err(|error| ApiError::serialization(format!("Data is not base64: {error}")))?,
        Data::Raw(bytes) => bytes.into_owned(),
    };
    if data.len() > server.max_record_bytes {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at 'records.{position}.member.data' failed to \
             satisfy constraint: Member must have length less than or equal to {}",
            server.max_record_bytes
        )));
    }
    let hash_key = match &entry.explicit_hash_key {
        Some(explicit) => parse_hash_key(explicit)
            .map_err(|_| ApiError::invalid(format!("Invalid ExplicitHashKey {explicit}")))?,
        None => hash_key(&entry.partition_key),
    };
    let prepared = Prepared {
        partition_key: entry.partition_key.into_owned(),
        data,
        hash_key,
    };
    if prepared.size() > server.max_record_bytes {
        return Err(ApiError::invalid(format!(
            "Record {position} of {} bytes (data and partition key) exceeds the limit of {}",
            prepared.size(),
            server.max_record_bytes
        )));
    }
    Ok(prepared)
}

fn inject_http_failure(server: &Server, faults: &Faults) -> Result<(), ApiError> {
    if faults.fail_http > 0.0 && rand::random_bool(faults.fail_http) {
        server.stats.http_5xx_injected.fetch_add(1, Relaxed);
        return Err(ApiError::internal("Internal service failure (injected)."));
    }
    Ok(())
}

fn throughput_exceeded(shard: &str, stream: &str) -> String {
    format!("Rate exceeded for shard {shard} in stream {stream} under account {ACCOUNT_ID}.")
}

/// Takes one prepared entry through faults and limits; stores and counts it if accepted.
fn put_one(
    server: &Server,
    faults: &Faults,
    stream: &str,
    shard: &Shard,
    entry: Prepared,
) -> EntryResult {
    if faults.fail_records > 0.0 && rand::random_bool(faults.fail_records) {
        server.stats.failed_entries_injected.fetch_add(1, Relaxed);
        return if rand::random_bool(0.5) {
            EntryResult::Failed {
                error_code: THROUGHPUT_EXCEEDED,
                error_message: throughput_exceeded(shard.id(), stream),
            }
        } else {
            EntryResult::Failed {
                error_code: "InternalFailure",
                error_message: "Internal service failure.".to_owned(),
            }
        };
    }
    let share = 1.0 - faults.other_writer_share;
    let size = entry.size() as u64;
    if faults.shard_limits && !shard.admit(server.window, server.current_slot(), size, share) {
        server.stats.throttled.fetch_add(1, Relaxed);
        return EntryResult::Failed {
            error_code: THROUGHPUT_EXCEEDED,
            error_message: throughput_exceeded(shard.id(), stream),
        };
    }
    server.stats.kinesis_records_accepted.fetch_add(1, Relaxed);
    server
        .stats
        .bytes
        .fetch_add(entry.data.len() as u64, Relaxed);
    payload::account(server, &shard.range, &entry.data);
    let sequence_number = if server.store {
        // Numbering under the shard's lock keeps a shard's records in sequence order.
        let mut records = crate::state::lock(&shard.records);
        let sequence_number = server.next_sequence();
        records.push(StoredRecord {
            sequence_number,
            arrival_seconds: now_seconds(),
            partition_key: entry.partition_key,
            data: entry.data.into(),
        });
        sequence_number
    } else {
        server.next_sequence()
    };
    EntryResult::Accepted {
        sequence_number: format_sequence_number(sequence_number),
        shard_id: shard.id().to_owned(),
    }
}

/// Sequence numbers as Kinesis writes them: decimal strings of fixed width.
pub fn format_sequence_number(number: u64) -> String {
    format!("{number:056}")
}

pub fn put_records(
    server: &Server,
    faults: &Faults,
    body_bytes: &[u8],
) -> Result<Vec<u8>, ApiError> {
    server.stats.put_records_calls.fetch_add(1, Relaxed);
    let input: PutRecordsInput<'_> = parse(body_bytes)?;
    let selector = StreamSelector {
        stream_name: input.stream_name,
        stream_arn: input.stream_arn,
    };
    let sent = input.records.into_iter().map(Sent::from).collect();
    body(&put_entries(server, faults, sent, &selector)?)
}

/// PutRecords in the CBOR protocol.
pub fn put_records_cbor(
    server: &Server,
    faults: &Faults,
    body_bytes: &[u8],
) -> Result<Vec<u8>, ApiError> {
    server.stats.put_records_calls.fetch_add(1, Relaxed);
    server.stats.cbor_requests.fetch_add(1, Relaxed);
    let (entries, selector) = cbor::put_records_input(body_bytes)?;
    let sent = entries.into_iter().map(Sent::from).collect();
    let output = put_entries(server, faults, sent, &selector)?;
    Ok(cbor::put_records_output(
        output.failed_record_count,
        output.records.iter().map(|result| match result {
            EntryResult::Accepted {
                sequence_number,
                shard_id,
            } => cbor::Outcome::Accepted {
                sequence_number,
                shard_id,
            },
            EntryResult::Failed {
                error_code,
                error_message,
            } => cbor::Outcome::Failed {
                error_code,
                error_message,
            },
        }),
    ))
}

fn put_entries(
    server: &Server,
    faults: &Faults,
    sent: Vec<Sent<'_>>,
    selector: &StreamSelector,
) -> Result<PutRecordsOutput, ApiError> {
    let count = sent.len();
    if count == 0 || count > MAX_ENTRIES {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at 'records' failed to satisfy constraint: \
             Member must have length between 1 and {MAX_ENTRIES} (got {count})"
        )));
    }
    let mut entries = Vec::with_capacity(count);
    let mut request_bytes = 0;
    for (position, entry) in sent.into_iter().enumerate() {
        let prepared = prepare(server, position + 1, entry)?;
        request_bytes += prepared.size();
        entries.push(prepared);
    }
    if request_bytes > server.max_request_bytes {
        return Err(ApiError::invalid(format!(
            "Records size exceeds {} MB limit",
            server.max_request_bytes >> 20
        )));
    }
    let stream = selector.resolve(server)?;
    inject_http_failure(server, faults)?;

    let topology = stream
        .topology
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut failed_record_count = 0;
    let (mut accepted, mut accepted_bytes, mut refused) = (0, 0, 0);
    let records = entries
        .into_iter()
        .map(|entry| {
            let size = entry.size() as u64;
            let result = match topology.open_shard_for_hash(entry.hash_key) {
                Some(shard) => put_one(server, faults, &stream.name, shard, entry),
                None => EntryResult::Failed {
                    error_code: "InternalFailure",
                    error_message: "No open shard covers the hash key.".to_owned(),
                },
            };
            match &result {
                EntryResult::Accepted { .. } => {
                    accepted += 1;
                    accepted_bytes += size;
                }
                EntryResult::Failed { error_code, .. } => {
                    failed_record_count += 1;
                    refused += u64::from(*error_code == THROUGHPUT_EXCEEDED);
                }
            }
            result
        })
        .collect();
    server
        .stats
        .count_second(server.current_second(), accepted, accepted_bytes, refused);
    Ok(PutRecordsOutput {
        failed_record_count,
        records,
        encryption_type: "NONE",
    })
}

pub fn put_record(
    server: &Server,
    faults: &Faults,
    body_bytes: &[u8],
) -> Result<Vec<u8>, ApiError> {
    server.stats.put_record_calls.fetch_add(1, Relaxed);
    let input: PutRecordInput<'_> = parse(body_bytes)?;
    let entry = Entry {
        data: input.data,
        partition_key: input.partition_key,
        explicit_hash_key: input.explicit_hash_key,
    };
    let entry = prepare(server, 1, entry.into())?;
    let selector = StreamSelector {
        stream_name: input.stream_name,
        stream_arn: input.stream_arn,
    };
    let stream = selector.resolve(server)?;
    inject_http_failure(server, faults)?;
    let topology = stream
        .topology
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let shard = topology
        .open_shard_for_hash(entry.hash_key)
        .ok_or_else(|| ApiError::internal("No open shard covers the hash key."))?;
    match put_one(server, faults, &stream.name, shard, entry) {
        EntryResult::Accepted {
            sequence_number,
            shard_id,
        } => body(&serde_json::json!({
            "ShardId": shard_id,
            "SequenceNumber": sequence_number,
            "EncryptionType": "NONE",
        })),
        EntryResult::Failed {
            error_code: "InternalFailure",
            error_message,
        } => Err(ApiError::internal(error_message)),
        EntryResult::Failed {
            error_code,
            error_message,
        } => Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            error_code,
            error_message,
        )),
    }
}
