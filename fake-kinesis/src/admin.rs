//! Admin endpoints beside the Kinesis API: counters, run-time faults, a record dump.

use std::sync::{Arc, PoisonError};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::put::format_sequence_number;
use crate::state::{Server, lock};
use crate::stats::FaultsUpdate;

/// `GET /stats`: every counter as JSON.
pub async fn stats(State(server): State<Arc<Server>>) -> Json<Value> {
    Json(server.stats.snapshot())
}

/// `GET /stats/seconds`: for each second since the endpoint started, PutRecords entries accepted,
/// their bytes (data and partition keys, what the shard limits count) and entries refused for
/// throughput: `{"seconds": [[entries, bytes, refused], ...]}`.
pub async fn seconds(State(server): State<Arc<Server>>) -> Json<Value> {
    Json(json!({ "seconds": *lock(&server.stats.per_second) }))
}

/// `POST /stats/reset`: zeroes the counters and forgets seen data (between scenarios).
pub async fn reset(State(server): State<Arc<Server>>) -> Json<Value> {
    server.reset();
    Json(server.stats.snapshot())
}

/// `GET /faults`: the current fault settings.
pub async fn faults(State(server): State<Arc<Server>>) -> Response {
    Json(server.faults()).into_response()
}

/// `POST /faults`: a partial update, e.g. `{"fail_records": 0.3, "fail_http": 0.05}`;
/// answers the settings now in force.
pub async fn set_faults(State(server): State<Arc<Server>>, body: axum::body::Bytes) -> Response {
    let update: FaultsUpdate = match serde_json::from_slice(&body) {
        Ok(update) => update,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    let mut faults = server
        .faults
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    match faults.apply(update) {
        Ok(()) => Json(*faults).into_response(),
        Err(message) => (StatusCode::BAD_REQUEST, message).into_response(),
    }
}

#[derive(serde::Deserialize)]
pub struct RecordsQuery {
    stream: String,
}

/// `GET /records?stream=S`: stored Kinesis records per shard (needs `--store`), data in
/// base64 as received.
pub async fn records(
    State(server): State<Arc<Server>>,
    Query(query): Query<RecordsQuery>,
) -> Response {
    let Some(stream) = server.stream(&query.stream) else {
        return (StatusCode::NOT_FOUND, format!("no stream {}", query.stream)).into_response();
    };
    let topology = stream
        .topology
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    let mut dump = Vec::new();
    for shard in &topology.shards {
        for record in lock(&shard.records).iter() {
            dump.push(json!({
                "shard_id": shard.id(),
                "sequence_number": format_sequence_number(record.sequence_number),
                "partition_key": record.partition_key,
                "data": BASE64.encode(&record.data),
            }));
        }
    }
    Json(json!({ "stream": stream.name, "records": dump })).into_response()
}

/// `GET /firehose?stream=D`: the records delivery stream `D` accepted, in order, data in base64
/// (needs `--store`).
pub async fn firehose_records(
    State(server): State<Arc<Server>>,
    Query(query): Query<RecordsQuery>,
) -> Response {
    match server.firehose.records(&query.stream) {
        Some(records) => {
            let records: Vec<String> = records.iter().map(|data| BASE64.encode(data)).collect();
            Json(json!({ "delivery_stream": query.stream, "records": records })).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            format!("no delivery stream {}", query.stream),
        )
            .into_response(),
    }
}
