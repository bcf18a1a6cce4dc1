//! Reading one shard: GetShardIterator, then GetRecords within the per-shard limits, unpacking
//! each Kinesis record into user records and handing them to the shard's [`Packer`].
//!
//! Limits (Kinesis Data Streams quotas): 5 GetRecords calls/s and 2 MiB/s per shard, at most
//! 10,000 records per call. The reader waits at least 200 ms between calls and long enough for the
//! bytes it read to fit 2 MiB/s, asks for about [`TARGET_RESPONSE_BYTES`] per call (bounded
//! memory), waits [`IDLE_WAIT`] when a shard has nothing new, and backs off when throttled. An
//! expired iterator is renewed after the last record read (AFTER_SEQUENCE_NUMBER), or from the
//! shard's starting point if nothing was read yet: never from the start or the tip of the shard.
//! A shard resumed from a checkpoint is read from AT_SEQUENCE_NUMBER, and the user records at or
//! before the checkpoint's sub-sequence number are dropped, so a half-forwarded aggregate is not
//! sent twice.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::ShardIteratorType;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::dead_letters::DeadLetters;
use super::dedupe::Dedupe;
use super::forward::{Batch, Packer};
use super::position::{Position, ResumeFilter, SequenceNumber};
use super::progress::Progress;
use super::settings::Delimiter;
use super::unpack;
use crate::sinks::error::{ErrorClass, SendError};
use crate::sinks::retry::RetryPolicy;
use crate::telemetry::consume::ConsumeMetrics;

/// GetRecords calls per second per shard (Kinesis quota: 5).
pub const MIN_CALL_INTERVAL: Duration = Duration::from_millis(200);
/// Read throughput per shard (Kinesis quota: 2 MiB/s, shared by every polling reader).
pub const READ_BYTES_PER_SECOND: f64 = 2.0 * 1024.0 * 1024.0;
/// Most records one GetRecords call returns (GetRecords API reference).
pub const MAX_GET_RECORDS: i32 = 10_000;
/// The data asked for per call, judged from the records' average size: half a second of the
/// shard's read quota (the pacing keeps to the quota), and a bound on what one response holds in
/// memory.
pub const TARGET_RESPONSE_BYTES: f64 = READ_BYTES_PER_SECOND / 2.0;
/// The record size assumed before a shard's first response: large (a compressed aggregate), so
/// that the first call cannot bring back many times the target.
const FIRST_GUESS_RECORD_BYTES: f64 = 64.0 * 1024.0;
/// The pause after a call that returned nothing (AWS suggests about a second; the KCL 1.5 s).
pub const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Where a shard's reading starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    TrimHorizon,
    Latest,
    /// From a checkpoint: at its sequence number, dropping user records at or before it.
    Resume(Position),
}

/// What every shard's reader shares.
pub struct Context {
    pub client: Client,
    pub stream: String,
    pub delimiter: Delimiter,
    pub dedupe_window: Duration,
    pub retry: RetryPolicy,
    pub metrics: Arc<ConsumeMetrics>,
    pub dead_letters: Arc<DeadLetters>,
}

/// How the next iterator is asked for.
#[derive(Debug, Clone)]
enum From {
    Start(Start),
    After(SequenceNumber),
}

/// Read `shard_id` until its end (then mark `progress` ended), `stop` (flush what was read), or
/// `hard_stop`. Batches go to `batches`, in order.
pub async fn read_shard(
    context: Arc<Context>,
    shard_id: Arc<str>,
    start: Start,
    progress: Arc<Progress>,
    batches: mpsc::Sender<Batch>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) {
    let mut reader = Reader {
        resume: ResumeFilter::new(match &start {
            Start::Resume(position) => Some(position.clone()),
            _ => None,
        }),
        packer: Packer::new(context.delimiter, Arc::clone(&progress)),
        dedupe: Dedupe::new(context.dedupe_window),
        max_user_bytes: Packer::max_user_bytes(context.delimiter),
        context,
        shard_id,
        batches,
        hard_stop,
    };
    info!(shard_id = %reader.shard_id, ?start, "reading shard");
    let ended = reader.run(start, &stop).await;
    if reader.flush().await && ended {
        progress.end();
        info!(shard_id = %reader.shard_id, "shard read to its end");
    }
}

struct Reader {
    context: Arc<Context>,
    shard_id: Arc<str>,
    resume: ResumeFilter,
    packer: Packer,
    dedupe: Dedupe,
    max_user_bytes: usize,
    batches: mpsc::Sender<Batch>,
    hard_stop: CancellationToken,
}

impl Reader {
    /// Returns true when the shard was read to its end.
    async fn run(&mut self, start: Start, stop: &CancellationToken) -> bool {
        let mut from = From::Start(start);
        let mut iterator: Option<String> = None;
        let mut last_read: Option<SequenceNumber> = None;
        let mut backoff = self.context.retry.backoff();
        let mut next_call = Instant::now();
        let mut average_record_bytes = FIRST_GUESS_RECORD_BYTES;
        loop {
            let current = match iterator.take() {
                Some(current) => current,
                None => match self.iterator(&from).await {
                    Ok(Some(current)) => current,
                    // A closed shard with nothing after the position: read to its end.
                    Ok(None) => return true,
                    Err(error) => {
                        warn!(shard_id = %self.shard_id, error = %error, "getsharditerator failed; retrying");
                        if !sleep(backoff.next_delay(), stop).await {
                            return false;
                        }
                        continue;
                    }
                },
            };
            if !sleep(next_call.saturating_duration_since(Instant::now()), stop).await {
                return false;
            }
            let limit = (TARGET_RESPONSE_BYTES / average_record_bytes)
                .clamp(1.0, f64::from(MAX_GET_RECORDS)) as i32;
            ConsumeMetrics::add(&self.context.metrics.get_records_calls_total, 1);
            let called = Instant::now();
            let output = tokio::select! {
                output = self.context.client.get_records().shard_iterator(&current).limit(limit).send() => output,
                () = stop.cancelled() => return false,
            };
            let output = match output {
                Ok(output) => output,
                Err(error) => {
                    let error = SendError::from_sdk(&error);
                    if error.code == "ExpiredIteratorException" {
                        ConsumeMetrics::add(&self.context.metrics.expired_iterators_total, 1);
                        warn!(shard_id = %self.shard_id, after = ?last_read, "shard iterator expired; renewing it after the last record read");
                        if let Some(last) = &last_read {
                            from = From::After(last.clone());
                        }
                        continue;
                    }
                    if error.is_throttle() {
                        ConsumeMetrics::add(&self.context.metrics.get_records_throttled_total, 1);
                        debug!(shard_id = %self.shard_id, error = %error, "getrecords throttled; backing off");
                    } else if error.class == ErrorClass::Transient {
                        warn!(shard_id = %self.shard_id, error = %error, "getrecords failed; retrying");
                    } else {
                        error!(shard_id = %self.shard_id, error = %error, "getrecords failed; retrying");
                    }
                    iterator = Some(current);
                    if !sleep(backoff.next_delay(), stop).await {
                        return false;
                    }
                    continue;
                }
            };
            backoff = self.context.retry.backoff();
            let behind = output.millis_behind_latest().unwrap_or_default().max(0) as u64;
            let records = output.records();
            let bytes: usize = records.iter().map(|r| r.data().as_ref().len()).sum();
            ConsumeMetrics::add(
                &self.context.metrics.records_read_total,
                records.len() as u64,
            );
            ConsumeMetrics::add(&self.context.metrics.bytes_read_total, bytes as u64);
            self.context.metrics.shard(&self.shard_id, |stats| {
                stats.millis_behind_latest = behind;
                stats.records_read += records.len() as u64;
                stats.bytes_read += bytes as u64;
            });
            for record in records {
                let sequence = SequenceNumber::new(record.sequence_number());
                if !self.handle(&sequence, record.data().as_ref()).await {
                    return false;
                }
                last_read = Some(sequence);
            }
            if !records.is_empty() {
                average_record_bytes = (bytes as f64 / records.len() as f64).max(1.0);
            }
            if !self.flush().await {
                return false;
            }
            let pace = Duration::from_secs_f64(bytes as f64 / READ_BYTES_PER_SECOND)
                .max(MIN_CALL_INTERVAL);
            next_call = called
                + if records.is_empty() && behind == 0 {
                    IDLE_WAIT
                } else {
                    pace
                };
            match output.next_shard_iterator() {
                Some(next) => iterator = Some(next.to_string()),
                None => return true,
            }
        }
    }

    async fn iterator(&self, from: &From) -> Result<Option<String>, SendError> {
        let request = self
            .context
            .client
            .get_shard_iterator()
            .shard_id(&*self.shard_id);
        let request = if self.context.stream.starts_with("arn:") {
            request.stream_arn(&self.context.stream)
        } else {
            request.stream_name(&self.context.stream)
        };
        let request = match from {
            From::Start(Start::TrimHorizon) => {
                request.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            From::Start(Start::Latest) => request.shard_iterator_type(ShardIteratorType::Latest),
            From::Start(Start::Resume(position)) => request
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(position.sequence.as_str()),
            From::After(sequence) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(sequence.as_str()),
        };
        let output = request
            .send()
            .await
            .map_err(|error| SendError::from_sdk(&error))?;
        Ok(output.shard_iterator().map(str::to_string))
    }

    /// Unpack one Kinesis record and pack its user records; false when forwarding has stopped.
    async fn handle(&mut self, sequence: &SequenceNumber, data: &[u8]) -> bool {
        let unpacked = unpack::unpack(data, self.max_user_bytes);
        if unpacked.invalid_aggregate {
            ConsumeMetrics::add(&self.context.metrics.invalid_aggregates_total, 1);
            debug!(shard_id = %self.shard_id, sequence_number = sequence.as_str(), "record has the aggregation magic but does not verify; forwarding it as a plain record");
        }
        let now = Instant::now();
        for (sub_sequence, user) in unpacked.records.into_iter().enumerate() {
            let position = Position {
                sequence: sequence.clone(),
                sub_sequence: sub_sequence as u64,
            };
            if !self.resume.keep(&position) {
                ConsumeMetrics::add(&self.context.metrics.resumed_records_skipped_total, 1);
                continue;
            }
            match user {
                Ok(user) => {
                    if self.dedupe.is_duplicate(&user, now) {
                        ConsumeMetrics::add(&self.context.metrics.duplicates_dropped_total, 1);
                        self.packer.skip(position);
                    } else if user.is_empty() && self.context.delimiter == Delimiter::None {
                        self.packer.skip(position);
                    } else if let Some(batch) = self.packer.push(position, &user)
                        && !self.send(batch).await
                    {
                        return false;
                    }
                }
                Err(reject) => {
                    if !self.dead_letter(&position, &reject, data).await {
                        return false;
                    }
                    self.packer.skip(position);
                }
            }
        }
        true
    }

    /// Write a rejected record to the dead-letter file, retrying until it is written: the
    /// checkpoint must not pass a record that is neither forwarded nor dead-lettered.
    async fn dead_letter(&self, position: &Position, reject: &unpack::Reject, data: &[u8]) -> bool {
        error!(shard_id = %self.shard_id, sequence_number = position.sequence.as_str(), sub_sequence_number = position.sub_sequence, error_code = reject.code, error = %reject.message, "record cannot be forwarded; writing it to the dead-letter file");
        let mut backoff = self.context.retry.backoff();
        loop {
            match self.context.dead_letters.write_unreadable(
                &self.shard_id,
                position,
                reject.code,
                &reject.message,
                data,
            ) {
                Ok(()) => {
                    ConsumeMetrics::add(&self.context.metrics.dead_lettered_total, 1);
                    return true;
                }
                Err(io_error) => {
                    error!(path = %self.context.dead_letters.path().display(), error = %io_error, "cannot write the dead-letter file; retrying");
                    if !sleep(backoff.next_delay(), &self.hard_stop).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn flush(&mut self) -> bool {
        for batch in self.packer.flush() {
            if !self.send(batch).await {
                return false;
            }
        }
        true
    }

    async fn send(&self, batch: Batch) -> bool {
        tokio::select! {
            sent = self.batches.send(batch) => sent.is_ok(),
            () = self.hard_stop.cancelled() => false,
        }
    }
}

/// Sleep for `delay` unless `stop` comes first; false when stopped.
async fn sleep(delay: Duration, stop: &CancellationToken) -> bool {
    if delay.is_zero() {
        return !stop.is_cancelled();
    }
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = stop.cancelled() => false,
    }
}
