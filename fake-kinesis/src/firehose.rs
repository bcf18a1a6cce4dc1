//! The Firehose API (Direct PUT delivery streams) over awsJson1_1, as aws-sdk-firehose speaks it:
//! `X-Amz-Target: Firehose_20150804.<Operation>`. CreateDeliveryStream, DescribeDeliveryStream,
//! DeleteDeliveryStream, PutRecordBatch (with per-entry failures and HTTP 500s injected), and
//! `GET /firehose?stream=D`, the records each delivery stream accepted, in order.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, PoisonError};

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::json;

use crate::api::{ApiError, body, parse};
use crate::state::{ACCOUNT_ID, REGION, Server, lock};
use crate::stats::Faults;

/// Prefix of `X-Amz-Target` for Firehose.
pub const TARGET_PREFIX: &str = "Firehose_20150804.";
/// Most records in one PutRecordBatch call (PutRecordBatch API reference).
const MAX_BATCH_RECORDS: usize = 500;
/// Most bytes of one record (same source: 1,000 KiB).
const MAX_RECORD_BYTES: usize = 1000 * 1024;
/// Most bytes of one call's records (same source: 4 MiB).
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Delivery streams and what they accepted.
#[derive(Debug, Default)]
pub struct DeliveryStreams {
    streams: Mutex<HashMap<String, DeliveryStream>>,
}

#[derive(Debug, Default)]
struct DeliveryStream {
    records: Vec<bytes::Bytes>,
    record_count: u64,
    bytes: u64,
}

impl DeliveryStreams {
    pub fn create(&self, name: &str) -> bool {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if streams.contains_key(name) {
            return false;
        }
        streams.insert(name.to_owned(), DeliveryStream::default());
        true
    }

    /// The records `name` accepted, in order; `None` when there is no such delivery stream.
    pub fn records(&self, name: &str) -> Option<Vec<bytes::Bytes>> {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.get(name).map(|stream| stream.records.clone())
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "Firehose {name} under account {ACCOUNT_ID} not found."
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NameInput {
    delivery_stream_name: String,
}

pub fn handle(
    server: &Server,
    faults: &Faults,
    operation: &str,
    input: &[u8],
) -> Result<Vec<u8>, ApiError> {
    match operation {
        "CreateDeliveryStream" => {
            let input: NameInput = parse(input)?;
            if !server.firehose.create(&input.delivery_stream_name) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "ResourceInUseException",
                    format!("Firehose {} already exists.", input.delivery_stream_name),
                ));
            }
            let arn = arn(&input.delivery_stream_name);
            body(&json!({ "DeliveryStreamARN": arn }))
        }
        "DeleteDeliveryStream" => {
            let input: NameInput = parse(input)?;
            let mut streams = lock(&server.firehose.streams);
            match streams.remove(&input.delivery_stream_name) {
                Some(_) => body(&json!({})),
                None => Err(not_found(&input.delivery_stream_name)),
            }
        }
        "DescribeDeliveryStream" => {
            let input: NameInput = parse(input)?;
            let name = input.delivery_stream_name;
            if !lock(&server.firehose.streams).contains_key(&name) {
                return Err(not_found(&name));
            }
            body(&json!({ "DeliveryStreamDescription": {
                "DeliveryStreamName": name,
                "DeliveryStreamARN": arn(&name),
                "DeliveryStreamStatus": "ACTIVE",
                "DeliveryStreamType": "DirectPut",
                "VersionId": "1",
                "Destinations": [],
                "HasMoreDestinations": false,
            }}))
        }
        "PutRecordBatch" => put_record_batch(server, faults, input),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("operation Firehose {operation:?} is not supported by this endpoint"),
        )),
    }
}

fn arn(name: &str) -> String {
    format!("arn:aws:firehose:{REGION}:{ACCOUNT_ID}:deliverystream/{name}")
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordBatchInput {
    delivery_stream_name: String,
    records: Vec<RecordInput>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecordInput {
    data: String,
}

fn put_record_batch(server: &Server, faults: &Faults, input: &[u8]) -> Result<Vec<u8>, ApiError> {
    let input: PutRecordBatchInput = parse(input)?;
    server.stats.firehose_calls.fetch_add(1, Relaxed);
    if input.records.is_empty() || input.records.len() > MAX_BATCH_RECORDS {
        return Err(ApiError::validation(format!(
            "{} records: a batch holds 1 to {MAX_BATCH_RECORDS}",
            input.records.len()
        )));
    }
    let mut decoded = Vec::with_capacity(input.records.len());
    let mut total = 0;
    for (index, record) in input.records.iter().enumerate() {
        let data = BASE64
            .decode(&record.data)
            .map_err(|_| ApiError::serialization(format!("record {index}: invalid base64")))?;
        if data.is_empty() || data.len() > MAX_RECORD_BYTES {
            return Err(ApiError::validation(format!(
                "record {index} has {} bytes: a record holds 1 to {MAX_RECORD_BYTES}",
                data.len()
            )));
        }
        total += data.len();
        decoded.push(bytes::Bytes::from(data));
    }
    if total > MAX_BATCH_BYTES {
        return Err(ApiError::invalid(format!(
            "a batch of {total} bytes exceeds {MAX_BATCH_BYTES}"
        )));
    }
    if faults.fail_firehose_http > 0.0 && rand::random_bool(faults.fail_firehose_http) {
        server.stats.http_5xx_injected.fetch_add(1, Relaxed);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            "Slow down (injected).",
        ));
    }
    let mut streams = lock(&server.firehose.streams);
    let stream = streams
        .get_mut(&input.delivery_stream_name)
        .ok_or_else(|| not_found(&input.delivery_stream_name))?;
    let mut responses = Vec::with_capacity(decoded.len());
    let mut failed = 0;
    for data in decoded {
        if faults.fail_firehose_records > 0.0 && rand::random_bool(faults.fail_firehose_records) {
            failed += 1;
            server.stats.failed_entries_injected.fetch_add(1, Relaxed);
            responses.push(json!({
                "ErrorCode": "ServiceUnavailableException",
                "ErrorMessage": "Slow down (injected).",
            }));
            continue;
        }
        stream.record_count += 1;
        stream.bytes += data.len() as u64;
        server.stats.firehose_records_accepted.fetch_add(1, Relaxed);
        server
            .stats
            .firehose_bytes_accepted
            .fetch_add(data.len() as u64, Relaxed);
        if server.store {
            stream.records.push(data);
        }
        responses.push(json!({ "RecordId": format!("{:016x}", stream.record_count) }));
    }
    body(&json!({
        "FailedPutCount": failed,
        "Encrypted": false,
        "RequestResponses": responses,
    }))
}
