//! The one PutRecords call, behind a trait so the retry logic is tested without a network.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use http_body::Frame;
use serde::Deserialize;

use aws_sdk_kinesis::Client;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;

use tracing::info;

use super::error::{ErrorClass, SendError};
use super::{body, cbor};
use crate::record::Record;
use crate::shard_map::ShardRange;

/// The result of one entry of a PutRecords call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryResult {
    Delivered,
    /// Delivered, but to another shard than the record expected: the shard map is out of date.
    DeliveredElsewhere {
        shard_id: String,
    },
    Failed {
        code: String,
        message: String,
    },
}

pub trait Transport: Send + Sync {
    /// Send `records` in one call; on success, one result per record, in order.
    fn put_records(
        &self,
        records: &[Record],
    ) -> impl Future<Output = Result<Vec<EntryResult>, SendError>> + Send;

    /// The stream's open shards and their hash key ranges.
    fn list_shards(&self) -> impl Future<Output = Result<Vec<ShardRange>, SendError>> + Send;
}

/// PutRecords through the AWS SDK.
#[derive(Debug, Clone)]
pub struct SdkTransport {
    client: Client,
    stream: String,
    /// Which body format PutRecords uses; shared by the clones.
    protocol: Arc<Protocol>,
}

/// The PutRecords body format: CBOR until the endpoint shows it does not accept it, then JSON.
#[derive(Debug)]
struct Protocol {
    state: AtomicU8,
}

const PROBING_CBOR: u8 = 0;
const CBOR: u8 = 1;
const JSON: u8 = 2;

impl Protocol {
    fn new(cbor: bool) -> Self {
        Protocol {
            state: AtomicU8::new(if cbor { PROBING_CBOR } else { JSON }),
        }
    }

    fn get(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    /// Leaves probing for `state`; false if another call already did.
    fn settle(&self, state: u8) -> bool {
        self.state
            .compare_exchange(PROBING_CBOR, state, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl SdkTransport {
    /// PutRecords in CBOR when `cbor` (and the endpoint accepts it), else in JSON.
    pub fn new(client: Client, stream: String, cbor: bool) -> Self {
        SdkTransport {
            client,
            stream,
            protocol: Arc::new(Protocol::new(cbor)),
        }
    }

    fn is_arn(&self) -> bool {
        self.stream.starts_with("arn:")
    }

    /// One PutRecords call with the body in CBOR or JSON, and how the endpoint answered.
    async fn send(&self, records: &[Record], cbor: bool) -> Sent {
        // The input carries no entries: the body is written from the records directly and put in
        // place before signing, so the signature covers it. The input still names the stream,
        // which endpoint resolution reads.
        let (body, content_type) = if cbor {
            (
                cbor::put_records(&self.stream, self.is_arn(), records),
                cbor::CONTENT_TYPE,
            )
        } else {
            (
                body::put_records(&self.stream, self.is_arn(), records),
                JSON_CONTENT_TYPE,
            )
        };
        let body = Bytes::from(body);
        let request = self.client.put_records().set_records(Some(Vec::new()));
        let request = if self.is_arn() {
            request.stream_arn(&self.stream)
        } else {
            request.stream_name(&self.stream)
        };
        let request = request.customize().mutate_request(move |http| {
            let headers = http.headers_mut();
            headers.insert("content-length", body.len().to_string());
            headers.insert("content-type", content_type);
            *http.body_mut() = SdkBody::from(body.clone());
        });
        let answer = Arc::new(Mutex::new(Answer::default()));
        let result = request
            .interceptor(TakeAnswer {
                answer: Arc::clone(&answer),
            })
            .send()
            .await;
        let answer = std::mem::take(&mut *lock(&answer));
        let result = match result {
            Err(error) => Err(SendError::from_sdk(&error)),
            Ok(_) => match answer.body {
                None => Err(malformed("no answer body".to_string())),
                // Told apart by the body, whatever the content type says.
                Some(body) if answer.cbor == Some(true) => cbor::read_answer(&body, records),
                Some(body) => read_answer(&body, records),
            },
        };
        Sent {
            result,
            cbor_answer: answer.cbor,
        }
    }
}

/// The outcome of one call, and whether the endpoint answered in CBOR (`None`: no answer).
struct Sent {
    result: Result<Vec<EntryResult>, SendError>,
    cbor_answer: Option<bool>,
}

impl Transport for SdkTransport {
    async fn list_shards(&self) -> Result<Vec<ShardRange>, SendError> {
        self.open_shards().await
    }

    async fn put_records(&self, records: &[Record]) -> Result<Vec<EntryResult>, SendError> {
        let state = self.protocol.get();
        let sent = self.send(records, state != JSON).await;
        if state != PROBING_CBOR {
            return sent.result;
        }
        match (&sent.result, sent.cbor_answer) {
            // Answered in CBOR, or accepted: the endpoint speaks it.
            (_, Some(true)) | (Ok(_), _) => {
                if self.protocol.settle(CBOR) {
                    info!("the endpoint accepts PutRecords in CBOR");
                }
                sent.result
            }
            // Refused with an answer in another format, or not answered (an endpoint may drop a
            // connection whose body it cannot parse): the same records again, in JSON. Only if
            // that succeeds is CBOR given up, so an outage (or a proxy's error page during one)
            // does not turn it off.
            (Err(refused), _) => {
                let json = self.send(records, false).await;
                if json.result.is_ok() && self.protocol.settle(JSON) {
                    info!(
                        refused = %refused,
                        "the endpoint refused PutRecords in CBOR and accepted JSON; sending JSON from now on"
                    );
                }
                json.result
            }
        }
    }
}

/// The content type of the awsJson 1.1 protocol, the SDK's own for Kinesis.
const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";

pub(super) fn malformed(message: String) -> SendError {
    SendError {
        class: ErrorClass::Transient,
        code: "MalformedResponse".into(),
        message,
    }
}

/// A successful PutRecords answer: one entry per record, in order. Only what the sink acts on is
/// read; the sequence number and the rest are skipped without being copied.
#[derive(Deserialize)]
struct JsonAnswer<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<AnswerEntry<'a>>,
}

#[derive(Deserialize)]
struct AnswerEntry<'a> {
    #[serde(rename = "ShardId", borrow, default)]
    shard_id: Option<Cow<'a, str>>,
    #[serde(rename = "ErrorCode", borrow, default)]
    error_code: Option<Cow<'a, str>>,
    #[serde(rename = "ErrorMessage", borrow, default)]
    error_message: Option<Cow<'a, str>>,
}

fn read_answer(body: &[u8], records: &[Record]) -> Result<Vec<EntryResult>, SendError> {
    match read_all_delivered(body, records) {
        Some(results) => Ok(results),
        None => parse_answer(body, records),
    }
}

fn parse_answer(body: &[u8], records: &[Record]) -> Result<Vec<EntryResult>, SendError> {
    let answer: JsonAnswer<'_> = serde_json::from_slice(body)
        .map_err(|error| malformed(format!("PutRecords answer: {error}")))?;
    if answer.records.len() != records.len() {
        return Err(malformed(format!(
            "{} results for {} records",
            answer.records.len(),
            records.len()
        )));
    }
    Ok(answer
        .records
        .into_iter()
        .zip(records)
        .map(|(result, record)| match result.error_code {
            None => delivered(record, result.shard_id.as_deref()),
            Some(code) => EntryResult::Failed {
                code: code.into_owned(),
                message: result.error_message.unwrap_or_default().into_owned(),
            },
        })
        .collect())
}

/// The common answer, read without a JSON parser: nothing failed (`"FailedRecordCount":0` and no
/// `"ErrorCode"`), and exactly one `"ShardId":"..."` per record, in order. Parsing 500 entries'
/// sequence numbers took more CPU than building the request; this takes a few vectorized scans.
/// `None` (anything else, another spacing too) sends the answer through the JSON parser.
///
/// The patterns cannot match inside a string value: a quote there is escaped (`\"`), and both
/// patterns end in an unescaped quote after a name.
fn read_all_delivered(body: &[u8], records: &[Record]) -> Option<Vec<EntryResult>> {
    let failed = memchr::memmem::find(body, b"\"FailedRecordCount\":")?;
    let count = &body[failed + b"\"FailedRecordCount\":".len()..];
    if !(count.starts_with(b"0,") || count.starts_with(b"0}")) {
        return None;
    }
    if memchr::memmem::find(body, b"\"ErrorCode\"").is_some() {
        return None;
    }
    const SHARD: &[u8] = b"\"ShardId\":\"";
    let mut results = Vec::with_capacity(records.len());
    let mut records = records.iter();
    for at in memchr::memmem::find_iter(body, SHARD) {
        let record = records.next()?;
        let rest = &body[at + SHARD.len()..];
        let shard_id = &rest[..memchr::memchr(b'"', rest)?];
        if shard_id.contains(&b'\\') {
            return None;
        }
        results.push(delivered(record, Some(std::str::from_utf8(shard_id).ok()?)));
    }
    records.next().is_none().then_some(results)
}

/// A delivered entry: elsewhere when it landed on another shard than the record expected.
pub(super) fn delivered(record: &Record, shard_id: Option<&str>) -> EntryResult {
    match (&record.shard, shard_id) {
        (Some(expected), Some(actual)) if **expected != *actual => {
            EntryResult::DeliveredElsewhere {
                shard_id: actual.to_owned(),
            }
        }
        _ => EntryResult::Delivered,
    }
}

/// What the SDK is given to parse in place of a successful answer: a valid PutRecords output with
/// no entries, which costs nothing to parse. The real answer is read by `read_answer` (or
/// `cbor::read_answer`), which borrows from it instead of allocating two strings per entry.
const EMPTY_ANSWER: &[u8] = br#"{"FailedRecordCount":0,"Records":[]}"#;

/// What the endpoint answered: the body of a successful answer, and whether the answer (any
/// answer) was in CBOR.
#[derive(Debug, Default)]
struct Answer {
    body: Option<Bytes>,
    cbor: Option<bool>,
}

/// Takes the body of a successful PutRecords answer before the SDK parses it. An error answer in
/// JSON is left alone: the SDK reads its code and message as for any call. One in CBOR is handed
/// to the SDK rewritten as JSON.
#[derive(Debug)]
struct TakeAnswer {
    answer: Arc<Mutex<Answer>>,
}

impl Intercept for TakeAnswer {
    fn name(&self) -> &'static str {
        "TakePutRecordsAnswer"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response_mut();
        let cbor = response
            .headers()
            .get("content-type")
            .is_some_and(|value| value.starts_with(cbor::CONTENT_TYPE));
        // An answer, not (yet) known to be CBOR: the body tells, once read.
        lock(&self.answer).cbor = Some(false);
        let success = response.status().is_success();
        if !success && !cbor {
            return Ok(());
        }
        let body = response.take_body();
        let headers = response.headers_mut();
        let then = if success {
            headers.insert("content-length", EMPTY_ANSWER.len().to_string());
            Then::Keep(Arc::clone(&self.answer))
        } else {
            // The length of the rewritten error is known only once it is read.
            headers.remove("content-length");
            headers.insert("content-type", JSON_CONTENT_TYPE);
            Then::ErrorAsJson(Arc::clone(&self.answer))
        };
        *response.body_mut() = SdkBody::from_body_1_x(Capture::new(body, then));
        Ok(())
    }
}

fn lock(answer: &Mutex<Answer>) -> std::sync::MutexGuard<'_, Answer> {
    answer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a [`Capture`] does with the whole body, and notes in the answer (whether it was CBOR:
/// the body says, whatever the content type claimed).
enum Then {
    /// Keep it in the answer, and yield `EMPTY_ANSWER` to the SDK.
    Keep(Arc<Mutex<Answer>>),
    /// Yield it to the SDK as a JSON error (as it was, if it is not a CBOR error map).
    ErrorAsJson(Arc<Mutex<Answer>>),
}

/// A response body that reads the real one to its end, then yields what [`Then`] says.
struct Capture {
    inner: SdkBody,
    /// The frames read so far, as the HTTP client gave them (no copy).
    parts: Vec<Bytes>,
    then: Then,
    done: bool,
}

impl Capture {
    fn new(inner: SdkBody, then: Then) -> Self {
        Capture {
            inner,
            parts: Vec::new(),
            then,
            done: false,
        }
    }

    /// The whole answer: the one frame itself when it came in one (the usual case), else the
    /// frames joined with a single copy.
    fn joined(parts: Vec<Bytes>) -> Bytes {
        if parts.len() <= 1 {
            return parts.into_iter().next().unwrap_or_default();
        }
        let mut whole = Vec::with_capacity(parts.iter().map(Bytes::len).sum());
        for part in &parts {
            whole.extend_from_slice(part);
        }
        Bytes::from(whole)
    }
}

impl http_body::Body for Capture {
    type Data = Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        this.parts.push(data);
                    }
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => {
                    this.done = true;
                    let body = Capture::joined(std::mem::take(&mut this.parts));
                    let yielded = match &this.then {
                        Then::Keep(answer) => {
                            let mut answer = lock(answer);
                            answer.cbor = Some(cbor::is_map(&body));
                            answer.body = Some(body);
                            Bytes::from_static(EMPTY_ANSWER)
                        }
                        Then::ErrorAsJson(answer) => match cbor::error_as_json(&body) {
                            Some(json) => {
                                lock(answer).cbor = Some(true);
                                Bytes::from(json)
                            }
                            None => body,
                        },
                    };
                    return Poll::Ready(Some(Ok(Frame::data(yielded))));
                }
            }
        }
    }
}

impl SdkTransport {
    async fn list_shards_page(
        &self,
        next_token: Option<String>,
    ) -> Result<aws_sdk_kinesis::operation::list_shards::ListShardsOutput, SendError> {
        let request = self.client.list_shards();
        // A paging call names only the token; the first one names the stream.
        let request = match next_token {
            Some(token) => request.next_token(token),
            None if self.is_arn() => request.stream_arn(&self.stream),
            None => request.stream_name(&self.stream),
        };
        request
            .send()
            .await
            .map_err(|error| SendError::from_sdk(&error))
    }

    /// Every open shard (closed shards, left by resharding, have an ending sequence number).
    pub async fn open_shards(&self) -> Result<Vec<ShardRange>, SendError> {
        let mut shards = Vec::new();
        let mut next_token = None;
        loop {
            let page = self.list_shards_page(next_token.take()).await?;
            for shard in page.shards() {
                let closed = shard
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .is_some();
                if closed {
                    continue;
                }
                let Some(range) = shard.hash_key_range() else {
                    continue;
                };
                let parsed = ShardRange::from_decimal(
                    shard.shard_id(),
                    range.starting_hash_key(),
                    range.ending_hash_key(),
                )
                .map_err(|error| SendError {
                    class: ErrorClass::Transient,
                    code: "MalformedResponse".into(),
                    message: error.to_string(),
                })?;
                shards.push(parsed);
            }
            match page.next_token() {
                Some(token) => next_token = Some(token.to_string()),
                None => return Ok(shards),
            }
        }
    }
}

/// Check at start-up that the stream exists, so a typo is a clear error rather than a dead-letter
/// file filling up. Only a definite "not found" is an error: a missing permission to describe, or
/// an unreachable endpoint, is logged and the shipper starts (and retries sending).
pub async fn check_stream(client: &Client, stream: &str) -> Result<(), SendError> {
    let request = client.describe_stream_summary();
    let request = if stream.starts_with("arn:") {
        request.stream_arn(stream)
    } else {
        request.stream_name(stream)
    };
    match request.send().await {
        Ok(_) => Ok(()),
        Err(error) => {
            let error = SendError::from_sdk(&error);
            if error.code == "ResourceNotFoundException" {
                Err(error)
            } else {
                tracing::warn!(stream, error = %error, "cannot describe the stream; starting anyway");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod answer_tests {
    use super::*;
    use crate::sinks::kinesis::test_record;

    fn record(shard: Option<&str>) -> Record {
        test_record(b"x".to_vec(), "k", shard)
    }

    #[test]
    fn an_answer_gives_one_result_per_record_in_order() {
        let body = br#"{"FailedRecordCount":2,"EncryptionType":"NONE","Records":[
            {"SequenceNumber":"49590338271490256608559692538361571095921575989136588898","ShardId":"shardId-000000000000"},
            {"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"Rate exceeded for shard \"shardId-000000000001\""},
            {"SequenceNumber":"1","ShardId":"shardId-000000000002"},
            {"ErrorCode":"InternalFailure","ErrorMessage":null},
            {"SequenceNumber":"2","ShardId":"shardId-000000000003","ErrorCode":null}
        ]}"#;
        let records = [
            record(Some("shardId-000000000000")),
            record(None),
            record(Some("shardId-000000000001")),
            record(None),
            record(None),
        ];
        assert_eq!(
            read_answer(body, &records).expect("a valid answer"),
            vec![
                EntryResult::Delivered,
                EntryResult::Failed {
                    code: "ProvisionedThroughputExceededException".into(),
                    message: "Rate exceeded for shard \"shardId-000000000001\"".into(),
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
    fn an_all_delivered_answer_is_read_without_the_parser() {
        let body = br#"{"EncryptionType":"NONE","FailedRecordCount":0,"Records":[{"SequenceNumber":"4959","ShardId":"shardId-000000000000"},{"SequenceNumber":"4960","ShardId":"shardId-000000000001"}]}"#;
        let records = [
            record(Some("shardId-000000000000")),
            record(Some("shardId-000000000000")),
        ];
        let expected = vec![
            EntryResult::Delivered,
            EntryResult::DeliveredElsewhere {
                shard_id: "shardId-000000000001".into(),
            },
        ];
        assert_eq!(read_all_delivered(body, &records), Some(expected.clone()));
        assert_eq!(parse_answer(body, &records).unwrap(), expected);
        // One record fewer or more than entries: not read here, and an error from the parser.
        assert_eq!(read_all_delivered(body, &records[..1]), None);
        assert!(read_answer(body, &records[..1]).is_err());
    }

    proptest::proptest! {
        /// Whatever the outcomes and however the answer is spaced, the scan and the parser agree;
        /// the scan takes only compact answers where every record was delivered.
        #[test]
        fn the_scan_and_the_parser_agree(
            outcomes in proptest::collection::vec((0u8..4, proptest::bool::ANY), 1..40),
            spaced in proptest::bool::ANY,
            message in "[a-zA-Z\\\\\"{}:, ]{0,40}",
        ) {
            let mut entries = Vec::new();
            let mut records = Vec::new();
            let mut failed = 0;
            for (shard, ok) in &outcomes {
                let shard = format!("shardId-00000000000{shard}");
                if *ok {
                    entries.push(serde_json::json!({"SequenceNumber": "49590338271490256608559692538361571095921575989136588898", "ShardId": shard}));
                } else {
                    failed += 1;
                    entries.push(serde_json::json!({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": format!("\"ShardId\":\"{message}")}));
                }
                records.push(record(Some("shardId-000000000000")));
            }
            let answer = serde_json::json!({"FailedRecordCount": failed, "Records": entries});
            let body = if spaced {
                serde_json::to_vec_pretty(&answer).unwrap()
            } else {
                serde_json::to_vec(&answer).unwrap()
            };
            let parsed = parse_answer(&body, &records).expect("a valid answer");
            proptest::prop_assert_eq!(read_answer(&body, &records).unwrap(), parsed.clone());
            let scanned = read_all_delivered(&body, &records);
            proptest::prop_assert_eq!(scanned.is_some(), failed == 0 && !spaced);
            if let Some(scanned) = scanned {
                proptest::prop_assert_eq!(scanned, parsed);
            }
        }
    }

    #[test]
    fn a_wrong_count_or_a_broken_answer_is_a_transient_error() {
        let records = [record(None), record(None)];
        for body in [
            &br#"{"Records":[{"ShardId":"shardId-000000000000"}]}"#[..],
            br#"{"Records":[{"ShardId":"s"},{"ShardId":"s"}"#,
            br#"{"FailedRecordCount":0}"#,
            b"<html>",
        ] {
            let error = read_answer(body, &records).expect_err("not a valid answer");
            assert_eq!(error.class, ErrorClass::Transient, "{error}");
            assert_eq!(error.code, "MalformedResponse");
        }
    }
}

#[cfg(test)]
mod capture_tests {
    use super::*;
    use std::collections::VecDeque;

    /// A response body that yields the given frames, one per poll.
    struct Frames(VecDeque<Bytes>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = aws_smithy_types::body::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(
                self.get_mut()
                    .0
                    .pop_front()
                    .map(|data| Ok(Frame::data(data))),
            )
        }
    }

    /// Reads a `Capture` over `frames` to its end: what the SDK is given, and the answer kept.
    fn capture(frames: &[Bytes]) -> (Vec<u8>, Bytes) {
        let answer = Arc::new(Mutex::new(Answer::default()));
        let given = read_to_end(frames, Then::Keep(Arc::clone(&answer)));
        let kept = lock(&answer).body.take().expect("the answer is kept");
        (given, kept)
    }

    /// What the SDK is given by a `Capture` over `frames`.
    fn read_to_end(frames: &[Bytes], then: Then) -> Vec<u8> {
        let inner = SdkBody::from_body_1_x(Frames(frames.iter().cloned().collect()));
        let mut capture = Capture::new(inner, then);
        let mut given = Vec::new();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            match http_body::Body::poll_frame(Pin::new(&mut capture), &mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    given.extend_from_slice(&frame.into_data().expect("a data frame"));
                }
                Poll::Ready(None) => break,
                other => panic!("the body never pends or fails here: {other:?}"),
            }
        }
        given
    }

    #[test]
    fn an_answer_in_one_frame_is_kept_without_a_copy() {
        let frame = Bytes::from(br#"{"FailedRecordCount":0,"Records":[{"ShardId":"a"}]}"#.to_vec());
        let (given, kept) = capture(std::slice::from_ref(&frame));
        assert_eq!(given, EMPTY_ANSWER);
        assert_eq!(kept, frame);
        assert_eq!(
            kept.as_ptr(),
            frame.as_ptr(),
            "the frame itself, not a copy"
        );
    }

    #[test]
    fn an_answer_in_several_frames_is_joined_in_order() {
        let frames = [
            Bytes::from_static(br#"{"FailedRecordCount":0,"#),
            Bytes::new(),
            Bytes::from_static(br#""Records":[{"ShardId":"a"},"#),
            Bytes::from_static(br#"{"ShardId":"b"}]}"#),
        ];
        let (given, kept) = capture(&frames);
        assert_eq!(given, EMPTY_ANSWER);
        assert_eq!(
            kept,
            Bytes::from_static(
                br#"{"FailedRecordCount":0,"Records":[{"ShardId":"a"},{"ShardId":"b"}]}"#
            )
        );
    }

    #[test]
    fn a_kept_answer_is_told_cbor_by_its_body() {
        for (body, cbor) in [
            (&br#"{"FailedRecordCount":0,"Records":[]}"#[..], false),
            (
                &[0xa1, 0x67, b'R', b'e', b'c', b'o', b'r', b'd', b's', 0x80][..],
                true,
            ),
        ] {
            let answer = Arc::new(Mutex::new(Answer::default()));
            let body = Bytes::from_static(body);
            read_to_end(std::slice::from_ref(&body), Then::Keep(Arc::clone(&answer)));
            assert_eq!(lock(&answer).cbor, Some(cbor), "{body:?}");
        }
    }

    #[test]
    fn an_empty_answer_is_kept_empty() {
        let (given, kept) = capture(&[]);
        assert_eq!(given, EMPTY_ANSWER);
        assert!(kept.is_empty());
    }

    #[test]
    fn an_error_in_cbor_reaches_the_sdk_as_json() {
        // {"__type": "ResourceNotFoundException", "message": "gone"}, split across two frames.
        let mut error = vec![0xa2, 0x66];
        error.extend_from_slice(b"__type");
        error.push(0x78);
        error.push(25);
        error.extend_from_slice(b"ResourceNotFoundException");
        error.push(0x67);
        error.extend_from_slice(b"message");
        error.push(0x64);
        error.extend_from_slice(b"gone");
        let frames = [
            Bytes::copy_from_slice(&error[..10]),
            Bytes::copy_from_slice(&error[10..]),
        ];
        let answer = Arc::new(Mutex::new(Answer::default()));
        let given = read_to_end(&frames, Then::ErrorAsJson(Arc::clone(&answer)));
        let given: serde_json::Value = serde_json::from_slice(&given).unwrap();
        assert_eq!(
            given,
            serde_json::json!({"__type": "ResourceNotFoundException", "message": "gone"})
        );
        assert_eq!(lock(&answer).cbor, Some(true));
        // Not CBOR after all, whatever the content type said (a proxy's page, a JSON error):
        // passed on as it came, and not taken as a CBOR answer.
        for other in [
            &b"<html>Bad Gateway</html>"[..],
            br#"{"__type":"SerializationException"}"#,
        ] {
            let answer = Arc::new(Mutex::new(Answer::default()));
            let body = Bytes::from_static(other);
            let given = read_to_end(
                std::slice::from_ref(&body),
                Then::ErrorAsJson(Arc::clone(&answer)),
            );
            assert_eq!(given, body);
            assert_eq!(lock(&answer).cbor, None);
        }
    }
}
