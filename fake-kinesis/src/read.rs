//! Control-plane and read operations: streams, shards, resharding, iterators, GetRecords.

use std::sync::{Arc, PoisonError};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::{Value, json};
use shipper::shard_map::parse_hash_key;

use crate::api::{ApiError, StreamSelector, body, find_stream, parse, stream_not_found};
use crate::put::format_sequence_number;
use crate::state::{ACCOUNT_ID, Server, Shard, Stream, lock};
use crate::stats::Faults;
use std::sync::atomic::Ordering::Relaxed;

/// Most records GetRecords returns in one call (GetRecords API reference).
const MAX_GET_RECORDS: usize = 10_000;
/// Most bytes GetRecords returns in one call (same source).
const MAX_GET_BYTES: usize = 10 << 20;
/// Most shards ListShards returns in one page (ListShards API reference).
const MAX_LIST_SHARDS: usize = 10_000;
/// Shards of a stream created without ShardCount (on-demand streams start with 4).
const DEFAULT_SHARD_COUNT: usize = 4;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateStreamInput {
    stream_name: String,
    shard_count: Option<i64>,
}

pub fn create_stream(server: &Server, body_bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    let input: CreateStreamInput = parse(body_bytes)?;
    let count = input.shard_count.unwrap_or(DEFAULT_SHARD_COUNT as i64);
    if !(1..=MAX_LIST_SHARDS as i64).contains(&count) {
        return Err(ApiError::invalid(format!(
            "ShardCount {count} is out of range"
        )));
    }
    if !server.create_stream(&input.stream_name, count as usize) {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "ResourceInUseException",
            format!(
                "Stream {} under account {ACCOUNT_ID} already exists.",
                input.stream_name
            ),
        ));
    }
    body(&json!({}))
}

pub fn delete_stream(server: &Server, body_bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    let selector: StreamSelector = parse(body_bytes)?;
    let name = selector.name()?;
    let removed = server
        .streams
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(name);
    match removed {
        Some(_) => body(&json!({})),
        None => Err(stream_not_found(name)),
    }
}

fn shard_json(shard: &Shard) -> Value {
    let mut value = json!({
        "ShardId": shard.id(),
        "HashKeyRange": {
            "StartingHashKey": shard.range.start.to_string(),
            "EndingHashKey": shard.range.end.to_string(),
        },
        "SequenceNumberRange": {
            "StartingSequenceNumber": format_sequence_number(shard.starting_sequence_number),
        },
    });
    if let Some(end) = shard.ending_sequence_number() {
        value["SequenceNumberRange"]["EndingSequenceNumber"] = format_sequence_number(end).into();
    }
    if let Some(parent) = &shard.parent {
        value["ParentShardId"] = parent.as_str().into();
    }
    if let Some(adjacent) = &shard.adjacent_parent {
        value["AdjacentParentShardId"] = adjacent.as_str().into();
    }
    value
}

fn stream_fields(stream: &Stream) -> Value {
    json!({
        "StreamName": stream.name,
        "StreamARN": stream.arn,
        "StreamStatus": "ACTIVE",
        "StreamModeDetails": { "StreamMode": "PROVISIONED" },
        "RetentionPeriodHours": 24,
        "StreamCreationTimestamp": stream.created_seconds,
        "EnhancedMonitoring": [{ "ShardLevelMetrics": [] }],
        "EncryptionType": "NONE",
    })
}

pub fn describe_stream_summary(server: &Server, body_bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    let stream = parse::<StreamSelector>(body_bytes)?.resolve(server)?;
    let mut summary = stream_fields(&stream);
    let open = stream
        .topology
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .open
        .len();
    summary["OpenShardCount"] = open.into();
    summary["ConsumerCount"] = 0.into();
    body(&json!({ "StreamDescriptionSummary": summary }))
}

pub fn describe_stream(server: &Server, body_bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    let stream = parse::<StreamSelector>(body_bytes)?.resolve(server)?;
    let mut description = stream_fields(&stream);
    let topology = stream
        .topology
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    description["Shards"] = topology
        .shards
        .iter()
        .map(|shard| shard_json(shard))
        .collect();
    description["HasMoreShards"] = false.into();
    body(&json!({ "StreamDescription": description }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListShardsInput {
    #[serde(flatten)]
    stream: StreamSelector,
    next_token: Option<String>,
    exclusive_start_shard_id: Option<String>,
    max_results: Option<usize>,
    shard_filter: Option<ShardFilter>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ShardFilter {
    r#type: String,
}

/// Pagination and iterator tokens: opaque to clients, `stream\nshard-or-index\nposition`.
fn encode_token(parts: &[&str]) -> String {
    URL_SAFE_NO_PAD.encode(parts.join("\n"))
}

fn decode_token(token: &str, what: &str) -> Result<Vec<String>, ApiError> {
    let invalid = || ApiError::invalid(format!("Invalid {what}."));
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    Ok(text.split('\n').map(str::to_owned).collect())
}

pub fn list_shards(server: &Server, body_bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    let input: ListShardsInput = parse(body_bytes)?;
    let (stream, mut skip) = match &input.next_token {
        Some(token) => match decode_token(token, "NextToken")?.as_slice() {
            [stream, skip] => (
                find_stream(server, stream)?,
                skip.parse()
                    .map_err(|_| ApiError::invalid("Invalid NextToken."))?,
            ),
            _ => return Err(ApiError::invalid("Invalid NextToken.")),
        },
        None => (input.stream.resolve(server)?, 0),
    };
    let topology = stream
        .topology
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    let only_open = input
        .shard_filter
        .is_some_and(|filter| filter.r#type == "AT_LATEST");
    let candidates: Vec<&Arc<Shard>> = topology
        .shards
        .iter()
        .filter(|shard| !only_open || shard.ending_sequence_number().is_none())
        .collect();
    if let Some(start) = &input.exclusive_start_shard_id {
        skip = candidates
            .iter()
            .position(|shard| shard.id() == start)
            .map_or(0, |position| position + 1);
    }
    let page_size = input
        .max_results
        .unwrap_or(MAX_LIST_SHARDS)
        .clamp(1, MAX_LIST_SHARDS);
    let page: Vec<Value> = candidates
        .iter()
        .skip(skip)
        .take(page_size)
        .map(|shard| shard_json(shard))
        .collect();
    let mut output = json!({ "Shards": page });
    if skip + page_size < candidates.len() {
        let next = (skip + page_size).to_string();
        output["NextToken"] = encode_token(&[&stream.name, &next]).into();
    }
    body(&output)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SplitShardInput {
    #[serde(flatten)]
    stream: StreamSelector,
    shard_to_split: String,
    new_starting_hash_key: String,
}

pub fn split_shard(server: &Server, body_bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    let input: SplitShardInput = parse(body_bytes)?;
    let stream = input.stream.resolve(server)?;
    let new_start = parse_hash_key(&input.new_starting_hash_key)
        .map_err(|error| ApiError::invalid(error.to_string()))?;
    stream.split(server, &input.shard_to_split, new_start)?;
    body(&json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MergeShardsInput {
    #[serde(flatten)]
    stream: StreamSelector,
    shard_to_merge: String,
    adjacent_shard_to_merge: String,
}

pub fn merge_shards(server: &Server, body_bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    let input: MergeShardsInput = parse(body_bytes)?;
    let stream = input.stream.resolve(server)?;
    stream.merge(
        server,
        &input.shard_to_merge,
        &input.adjacent_shard_to_merge,
    )?;
    body(&json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetShardIteratorInput {
    #[serde(flatten)]
    stream: StreamSelector,
    shard_id: String,
    shard_iterator_type: String,
    starting_sequence_number: Option<String>,
    timestamp: Option<f64>,
}

pub fn get_shard_iterator(server: &Server, body_bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    let input: GetShardIteratorInput = parse(body_bytes)?;
    let stream = input.stream.resolve(server)?;
    let topology = stream
        .topology
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    let shard = topology.shard(&input.shard_id).ok_or_else(|| {
        ApiError::not_found(format!(
            "Shard {} in stream {} not found.",
            input.shard_id, stream.name
        ))
    })?;
    let records = lock(&shard.records);
    let sequence = || -> Result<u64, ApiError> {
        let text = input
            .starting_sequence_number
            .as_deref()
            .unwrap_or_default();
        text.parse()
            .map_err(|_| ApiError::invalid(format!("Invalid StartingSequenceNumber {text:?}.")))
    };
    let position = match input.shard_iterator_type.as_str() {
        "TRIM_HORIZON" => 0,
        "LATEST" => records.len(),
        "AT_SEQUENCE_NUMBER" => {
            let number = sequence()?;
            records.partition_point(|record| record.sequence_number < number)
        }
        "AFTER_SEQUENCE_NUMBER" => {
            let number = sequence()?;
            records.partition_point(|record| record.sequence_number <= number)
        }
        "AT_TIMESTAMP" => {
            let at = input.timestamp.unwrap_or_default();
            records.partition_point(|record| record.arrival_seconds < at)
        }
        other => {
            return Err(ApiError::invalid(format!(
                "Invalid ShardIteratorType {other}."
            )));
        }
    };
    let iterator = encode_token(&[&stream.name, shard.id(), &position.to_string()]);
    body(&json!({ "ShardIterator": iterator }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetRecordsInput {
    shard_iterator: String,
    limit: Option<usize>,
}

pub fn get_records(
    server: &Server,
    faults: &Faults,
    body_bytes: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let input: GetRecordsInput = parse(body_bytes)?;
    server.stats.get_records_calls.fetch_add(1, Relaxed);
    if faults.expire_iterators > 0.0 && rand::random_bool(faults.expire_iterators) {
        server
            .stats
            .expired_iterators_injected
            .fetch_add(1, Relaxed);
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "ExpiredIteratorException",
            "Iterator expired (injected).",
        ));
    }
    let parts = decode_token(&input.shard_iterator, "ShardIterator")?;
    let [stream_name, shard_id, position] = parts.as_slice() else {
        return Err(ApiError::invalid("Invalid ShardIterator."));
    };
    let mut position: usize = position
        .parse()
        .map_err(|_| ApiError::invalid("Invalid ShardIterator."))?;
    let stream = find_stream(server, stream_name)?;
    let topology = stream
        .topology
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    let shard = topology
        .shard(shard_id)
        .ok_or_else(|| ApiError::not_found(format!("Shard {shard_id} not found.")))?;
    let limit = input
        .limit
        .unwrap_or(MAX_GET_RECORDS)
        .clamp(1, MAX_GET_RECORDS);
    let stored = lock(&shard.records);
    let mut records = Vec::new();
    let mut bytes = 0;
    while let Some(record) = stored.get(position) {
        if records.len() == limit || (bytes > 0 && bytes + record.data.len() > MAX_GET_BYTES) {
            break;
        }
        bytes += record.data.len();
        records.push(json!({
            "SequenceNumber": format_sequence_number(record.sequence_number),
            "ApproximateArrivalTimestamp": record.arrival_seconds,
            "Data": BASE64.encode(&record.data),
            "PartitionKey": record.partition_key,
        }));
        position += 1;
    }
    let caught_up = position == stored.len();
    // How far the last record returned is behind the newest one, by arrival time.
    let behind_ms = match (stored.get(position.saturating_sub(1)), stored.last()) {
        (Some(read), Some(newest)) if !caught_up => {
            ((newest.arrival_seconds - read.arrival_seconds) * 1000.0).max(0.0) as u64
        }
        _ => 0,
    };
    let mut output = json!({ "Records": records, "MillisBehindLatest": behind_ms });
    if caught_up && shard.ending_sequence_number().is_some() {
        // A closed shard read to its end: no next iterator, and the children to go on with.
        let children: Vec<Value> = topology
            .shards
            .iter()
            .filter(|child| {
                [&child.parent, &child.adjacent_parent]
                    .into_iter()
                    .any(|parent| parent.as_deref() == Some(shard_id.as_str()))
            })
            .map(|child| {
                let parents: Vec<&str> = [&child.parent, &child.adjacent_parent]
                    .into_iter()
                    .flatten()
                    .map(String::as_str)
                    .collect();
                json!({
                    "ShardId": child.id(),
                    "ParentShards": parents,
                    "HashKeyRange": {
                        "StartingHashKey": child.range.start.to_string(),
                        "EndingHashKey": child.range.end.to_string(),
                    },
                })
            })
            .collect();
        output["ChildShards"] = children.into();
    } else {
        let next = encode_token(&[stream_name, shard_id, &position.to_string()]);
        output["NextShardIterator"] = next.into();
    }
    body(&output)
}
