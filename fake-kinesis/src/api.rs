//! The Kinesis API over the awsJson1_1 protocol, as aws-sdk-kinesis speaks it: `POST /`
//! with `X-Amz-Target: Kinesis_20131202.<Operation>`, JSON bodies, blobs in base64,
//! timestamps in epoch seconds, errors as `{"__type": ..., "message": ...}`. PutRecords is also
//! served in the CBOR protocol (`cbor.rs`), unless the endpoint was started with `--no-cbor`
//! (refused) or `--drop-cbor` (connection closed unanswered).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use serde::{Deserialize, Serialize};

use crate::state::{ACCOUNT_ID, CborMode, Server, Stream};
use crate::{cbor, put, read};

/// Prefix of `X-Amz-Target` (the Smithy service shape name of Kinesis).
const TARGET_PREFIX: &str = "Kinesis_20131202.";
/// Content type of the awsJson1_1 protocol.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// A request-level error: HTTP status plus the `__type` the SDK maps to an error variant.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidArgumentException", message)
    }

    /// What Kinesis answers when a request breaks a constraint of the API model
    /// (entry count, data length, partition key length).
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ValidationException", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "ResourceNotFoundException",
            message,
        )
    }

    pub fn serialization(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "SerializationException", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            message,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "__type": self.kind, "message": self.message });
        let mut response = json_response(self.status, body.to_string().into_bytes());
        response
            .headers_mut()
            .insert("x-amzn-ErrorType", HeaderValue::from_static(self.kind));
        response
    }
}

pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    typed_response(status, body, CONTENT_TYPE)
}

fn typed_response(status: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Parses a request body, answering like Kinesis when it is not the expected JSON.
pub fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| ApiError::serialization(error.to_string()))
}

/// Stream selectors every operation accepts.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamSelector {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
}

impl StreamSelector {
    pub fn name(&self) -> Result<&str, ApiError> {
        match (&self.stream_name, &self.stream_arn) {
            (Some(name), _) => Ok(name),
            (None, Some(arn)) => arn
                .rsplit_once(":stream/")
                .map(|(_, name)| name)
                .ok_or_else(|| ApiError::invalid(format!("malformed stream ARN {arn}"))),
            (None, None) => Err(ApiError::invalid(
                "Either StreamName or StreamARN should be provided.",
            )),
        }
    }

    pub fn resolve(&self, server: &Server) -> Result<Arc<Stream>, ApiError> {
        let name = self.name()?;
        find_stream(server, name)
    }
}

pub fn find_stream(server: &Server, name: &str) -> Result<Arc<Stream>, ApiError> {
    server.stream(name).ok_or_else(|| stream_not_found(name))
}

pub fn stream_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "Stream {name} under account {ACCOUNT_ID} not found."
    ))
}

/// `POST /`: routes on `X-Amz-Target`.
pub async fn handle(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    server
        .stats
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let faults = server.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let target = headers
        .get("x-amz-target")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if target.is_empty() && crate::credentials::is_sts(&body) {
        server
            .stats
            .web_identity_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return crate::credentials::handle(&body);
    }
    if headers
        .get("x-amz-security-token")
        .is_some_and(|token| token == crate::credentials::SESSION_TOKEN)
    {
        server
            .stats
            .requests_with_session_token
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let operation = target.strip_prefix(TARGET_PREFIX).unwrap_or(target);
    let cbor = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(cbor::CONTENT_TYPE.as_bytes()));
    // A server that refuses CBOR reads the body as JSON, and refuses it as a JSON-only endpoint
    // does; one that drops it closes the connection without a word.
    if cbor && server.cbor == CborMode::Drop {
        server
            .stats
            .cbor_calls_dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Response::new(Body::new(Unanswered));
    }
    if cbor && server.cbor == CborMode::Serve {
        let result = match operation {
            "PutRecords" => put::put_records_cbor(&server, &faults, &body),
            _ => Err(ApiError::serialization(format!(
                "{operation} is served in JSON only"
            ))),
        };
        return answer(&server, result, true);
    }
    let result = match operation {
        _ if target.starts_with(crate::firehose::TARGET_PREFIX) => {
            let operation = &target[crate::firehose::TARGET_PREFIX.len()..];
            crate::firehose::handle(&server, &faults, operation, &body)
        }
        "PutRecords" => put::put_records(&server, &faults, &body),
        "PutRecord" => put::put_record(&server, &faults, &body),
        "CreateStream" => read::create_stream(&server, &body),
        "DeleteStream" => read::delete_stream(&server, &body),
        "DescribeStreamSummary" => read::describe_stream_summary(&server, &body),
        "DescribeStream" => read::describe_stream(&server, &body),
        "ListShards" => read::list_shards(&server, &body),
        "SplitShard" => read::split_shard(&server, &body),
        "MergeShards" => read::merge_shards(&server, &body),
        "GetShardIterator" => read::get_shard_iterator(&server, &body),
        "GetRecords" => read::get_records(&server, &faults, &body),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("operation {target:?} is not supported by this endpoint"),
        )),
    };
    answer(&server, result, false)
}

/// The body of a call dropped unanswered: it fails before its first byte, and the server closes
/// the connection without sending the answer's head.
struct Unanswered;

impl http_body::Body for Unanswered {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::other(
            "the call is dropped unanswered",
        ))))
    }
}

/// The HTTP answer to a call, in CBOR or JSON; client errors are counted.
fn answer(server: &Server, result: Result<Vec<u8>, ApiError>, cbor: bool) -> Response {
    match result {
        Ok(body) if cbor => typed_response(StatusCode::OK, body, cbor::CONTENT_TYPE),
        Ok(body) => json_response(StatusCode::OK, body),
        Err(error) => {
            if error.status.is_client_error() {
                server
                    .stats
                    .invalid_requests
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if cbor {
                let body = cbor::error(error.kind, &error.message);
                typed_response(error.status, body, cbor::CONTENT_TYPE)
            } else {
                error.into_response()
            }
        }
    }
}

/// A successful answer's body.
pub fn body(value: &impl Serialize) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|error| ApiError::internal(error.to_string()))
}
