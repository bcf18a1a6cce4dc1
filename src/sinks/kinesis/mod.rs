//! The Kinesis sink: sends batches with PutRecords and drives acknowledgements from every entry's
//! result.
//!
//! A PutRecords call can succeed while some of its entries fail. Each entry's result is read (the
//! response's FailedRecordCount is not trusted); delivered entries are acknowledged, failed entries
//! are retried alone after a backoff, for as long as it takes when the failure is transient. Records
//! refused permanently go to the dead-letter file, and are acknowledged only once written there.

mod body;
mod cbor;
pub mod client;
pub mod dead_letter;
pub mod outage;
pub mod rate;
mod transport;

// Shared with the Firehose sink; re-exported so `sinks::kinesis::{error, retry}` keep working.
pub use super::{error, retry};

#[cfg(test)]
mod pacing_tests;
#[cfg(test)]
mod tests;

/// A record for the body and answer tests: its data, key and expected shard, acknowledging a
/// range of a file that is never read.
#[cfg(test)]
fn test_record(data: Vec<u8>, key: &str, shard: Option<&str>) -> Record {
    use crate::ack::{FileId, FileProgress, Fingerprint};
    let progress = FileProgress::new(
        FileId { dev: 0, ino: 0 },
        "/t".into(),
        Fingerprint::default(),
        0,
    );
    Record {
        data: data.into(),
        partition_key: key.into(),
        ack: progress.token(0, 1).into(),
        shard: shard.map(Arc::from),
        user_records: 1,
        random_key: false,
    }
}

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::ack;
use crate::batch::Batch;
use crate::record::Record;
use crate::shard_map::SharedShardMap;
use crate::telemetry::Metrics;

pub use dead_letter::DeadLetter;
pub use error::{ErrorClass, SendError, classify_code};
pub use outage::Outage;
pub use rate::ShardLimiter;
pub use retry::RetryPolicy;
pub use transport::{EntryResult, SdkTransport, Transport, check_stream};

/// After this many consecutive failed attempts of one batch, a retriable failure is logged at ERROR:
/// nothing is lost yet, but an operator should look.
const LOUD_AFTER_ATTEMPTS: u32 = 10;

/// Batches that may wait out a backoff without holding a request slot, per request slot.
const PARKED_PER_REQUEST_SLOT: usize = 4;

pub struct Sink<T> {
    transport: T,
    stream: String,
    retry: RetryPolicy,
    dead_letter: DeadLetter,
    metrics: Arc<Metrics>,
    shards: Option<Arc<SharedShardMap>>,
    limiter: Option<Arc<ShardLimiter>>,
    /// Request slots: at most this many PutRecords calls in flight (`--concurrency`).
    requests: Arc<Semaphore>,
    /// Places for batches waiting out a backoff after a partly failed call, without a slot.
    parked: Arc<Semaphore>,
    /// How long the endpoint has been unreachable, and what waits meanwhile.
    outage: Outage,
}

impl<T: Transport> Sink<T> {
    pub fn new(
        transport: T,
        stream: String,
        retry: RetryPolicy,
        dead_letter: DeadLetter,
        metrics: Arc<Metrics>,
    ) -> Self {
        Sink {
            transport,
            stream,
            retry,
            dead_letter,
            metrics,
            shards: None,
            limiter: None,
            requests: Arc::new(Semaphore::new(0)),
            parked: Arc::new(Semaphore::new(0)),
            outage: Outage::default(),
        }
        .with_concurrency(crate::config::DEFAULT_CONCURRENCY)
    }

    /// At most `concurrency` PutRecords calls in flight.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        self.requests = Arc::new(Semaphore::new(concurrency));
        self.parked = Arc::new(Semaphore::new(concurrency * PARKED_PER_REQUEST_SLOT));
        self
    }

    /// Wait for a request slot: the dispatcher takes one before it starts a batch, so that reading
    /// pauses while every slot is busy.
    pub async fn request_slot(&self) -> Option<OwnedSemaphorePermit> {
        // The semaphore is never closed, so this only waits.
        Arc::clone(&self.requests).acquire_owned().await.ok()
    }

    /// Mark `shards` stale when a record lands elsewhere than expected, and pace each call per
    /// shard with `limiter` when given.
    pub fn with_shards(
        mut self,
        shards: Arc<SharedShardMap>,
        limiter: Option<Arc<ShardLimiter>>,
    ) -> Self {
        self.shards = Some(shards);
        self.limiter = limiter;
        self
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    pub fn outage(&self) -> &Outage {
        &self.outage
    }

    /// Wait until every shard the records expect to land on has room for them.
    async fn pace(&self, records: &[Record], stop: &CancellationToken) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        let mut usage = Vec::new();
        for record in records {
            if let Some(shard) = &record.shard {
                tally(&mut usage, shard, 1, record.size() as u64);
            }
        }
        let wait = limiter.reserve(&usage, tokio::time::Instant::now());
        if wait.is_zero() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = stop.cancelled() => false,
        }
    }

    /// Deliver `batch`: returns when every record is acknowledged or dead-lettered, or when `stop` is
    /// cancelled (the records left are then not acknowledged, and a restart reads them again).
    pub async fn send(&self, batch: Batch, stop: &CancellationToken) {
        let Some(slot) = self.request_slot().await else {
            return;
        };
        self.send_in_slot(batch, slot, stop).await;
    }

    /// [`Sink::send`] with a request slot already taken.
    ///
    /// After a call that delivered some entries and failed others, the stream is working and the
    /// failures were the entries' own (a throttled shard, an internal failure): the batch then
    /// waits out its backoff parked, without its request slot, so that other batches keep flowing,
    /// and the backoff starts again from its shortest step. After a call that delivered nothing,
    /// the batch keeps its slot while it waits, and the backoff keeps growing: when the stream or
    /// the network is down, the slots stay busy, reading pauses, and the file is the buffer.
    pub async fn send_in_slot(
        &self,
        batch: Batch,
        slot: OwnedSemaphorePermit,
        stop: &CancellationToken,
    ) {
        let mut slot = Some(slot);
        let mut waiting = Waiting::new(&self.outage, batch.records.len());
        let mut pending = batch.records;
        let mut backoff = self.retry.backoff();
        let mut failed_attempts = 0u32;
        // Held from parking until the slot is back, so that the parked batches stay bounded.
        let mut parking: Option<OwnedSemaphorePermit> = None;
        while !pending.is_empty() {
            if slot.is_none() {
                slot = tokio::select! {
                    permit = Arc::clone(&self.requests).acquire_owned() => permit.ok(),
                    () = stop.cancelled() => return,
                };
                parking = None;
            }
            if !self.pace(&pending, stop).await {
                return;
            }
            Metrics::add(&self.metrics.put_records_requests_total, 1);
            let started = std::time::Instant::now();
            let outcome = tokio::select! {
                outcome = self.transport.put_records(&pending) => outcome,
                () = stop.cancelled() => return,
            };
            self.metrics.observe_put_records_latency(started.elapsed());
            let sent = pending.len();
            pending = match outcome {
                Ok(results) => {
                    self.metrics.call_answered();
                    self.outage.reachable(tokio::time::Instant::now());
                    self.settle(pending, results)
                }
                Err(error) => {
                    self.metrics.call_failed();
                    if error.is_unreachable() {
                        self.outage.unreachable(&error, tokio::time::Instant::now());
                    } else {
                        self.outage.reachable(tokio::time::Instant::now());
                    }
                    Metrics::add(&self.metrics.put_records_failed_requests_total, 1);
                    self.metrics.failed(&error.code, 1);
                    if error.is_throttle() {
                        Metrics::add(&self.metrics.throttled_total, 1);
                        if let Some(limiter) = &self.limiter {
                            let now = tokio::time::Instant::now();
                            for shard in pending.iter().filter_map(|r| r.shard.as_ref()) {
                                limiter.outcome(shard, 1, 1, now);
                            }
                        }
                    }
                    if !error.is_retriable() {
                        error!(stream = %self.stream, error = %error, records = pending.len(), "kinesis refused the request permanently; writing the records to the dead-letter file");
                        self.dead_letter(&error.code, &error.message, pending);
                        return;
                    }
                    if error.is_unreachable() {
                        // The outage report says it at WARN, at most once a minute.
                        debug!(stream = %self.stream, error = %error, records = pending.len(), "putrecords could not reach kinesis; retrying");
                    } else if error.class == ErrorClass::Credentials
                        || failed_attempts >= LOUD_AFTER_ATTEMPTS
                    {
                        error!(stream = %self.stream, error = %error, records = pending.len(), attempts = failed_attempts + 1, "putrecords keeps failing; retrying");
                    } else {
                        warn!(stream = %self.stream, error = %error, records = pending.len(), "putrecords failed; retrying");
                    }
                    pending
                }
            };
            waiting.now(pending.len());
            if pending.is_empty() {
                break;
            }
            Metrics::add(&self.metrics.records_retried_total, pending.len() as u64);
            let progressed = pending.len() < sent;
            if progressed {
                failed_attempts = 0;
                backoff = self.retry.backoff();
                parking = Arc::clone(&self.parked).try_acquire_owned().ok();
            } else {
                failed_attempts += 1;
            }
            if parking.is_some() {
                slot = None;
            }
            let delay = backoff.next_delay();
            debug!(
                records = pending.len(),
                ?delay,
                parked = parking.is_some(),
                "retrying failed entries"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Acknowledge delivered entries, dead-letter permanent failures, give back the entries to retry.
    fn settle(&self, records: Vec<Record>, results: Vec<EntryResult>) -> Vec<Record> {
        let mut delivered = Vec::with_capacity(records.len());
        let mut retry = Vec::new();
        let mut delivered_bytes = 0u64;
        let mut delivered_records = 0u64;
        // Per shard, with a limiter: entries sent and entries refused for throughput.
        let mut shard_outcomes = Vec::new();
        for (mut record, result) in records.into_iter().zip(results) {
            if let (Some(_), Some(shard)) = (&self.limiter, &record.shard) {
                let refused = matches!(&result, EntryResult::Failed { code, .. }
                    if classify_code(code) == ErrorClass::Throttled);
                tally(&mut shard_outcomes, shard, 1, u64::from(refused));
            }
            match result {
                EntryResult::Delivered | EntryResult::DeliveredElsewhere { .. } => {
                    if let EntryResult::DeliveredElsewhere { shard_id } = &result {
                        Metrics::add(&self.metrics.unexpected_shard_total, 1);
                        warn!(stream = %self.stream, expected = ?record.shard, shard_id = %shard_id, "record landed on an unexpected shard; refreshing the shard map");
                        if let Some(shards) = &self.shards {
                            shards.mark_stale();
                        }
                    }
                    delivered_bytes += record.data.len() as u64;
                    delivered_records += u64::from(record.user_records);
                    delivered.extend(record.ack);
                }
                EntryResult::Failed { code, message } => {
                    self.metrics.failed(&code, 1);
                    match classify_code(&code) {
                        ErrorClass::Permanent => {
                            error!(stream = %self.stream, error_code = %code, error = %message, "kinesis refused a record permanently; writing it to the dead-letter file");
                            self.dead_letter(&code, &message, vec![record]);
                        }
                        class => {
                            if class == ErrorClass::Throttled {
                                Metrics::add(&self.metrics.throttled_total, 1);
                                if let Some(shard) = &record.shard {
                                    self.metrics.throttled_on_shard(shard, 1);
                                }
                            }
                            record.unshare();
                            retry.push(record);
                        }
                    }
                }
            }
        }
        if let Some(limiter) = &self.limiter {
            let now = tokio::time::Instant::now();
            for (shard, sent, refused) in &shard_outcomes {
                limiter.outcome(shard, *sent, *refused, now);
            }
        }
        Metrics::add(&self.metrics.records_sent_total, delivered_records);
        Metrics::add(&self.metrics.bytes_sent_total, delivered_bytes);
        ack::ack_all(delivered);
        retry
    }

    fn dead_letter(&self, code: &str, message: &str, records: Vec<Record>) {
        match self
            .dead_letter
            .write(&self.stream, code, message, &records)
        {
            Ok(()) => {
                Metrics::add(
                    &self.metrics.records_dead_lettered_total,
                    records.len() as u64,
                );
                ack::ack_all(records.into_iter().flat_map(|record| record.ack));
            }
            // Not acknowledged: the checkpoint stays before these records and a restart retries them.
            Err(io_error) => error!(
                path = %self.dead_letter.path().display(),
                error = %io_error,
                records = records.len(),
                "cannot write the dead-letter file; the records stay unacknowledged"
            ),
        }
    }

    /// A record over the per-record limit, which Kinesis would refuse: dead-letter it.
    pub fn oversize(&self, record: Record) {
        error!(stream = %self.stream, bytes = record.size(), "record over the size limit; writing it to the dead-letter file");
        self.dead_letter(
            "RecordTooLarge",
            "record over the per-record size limit",
            vec![record],
        );
    }
}

/// A batch's records in the sink's count of what is waiting; whatever is left when the batch
/// leaves the sink (delivered, dead-lettered, or abandoned at a stop) is taken off.
struct Waiting<'a> {
    outage: &'a Outage,
    records: usize,
}

impl<'a> Waiting<'a> {
    fn new(outage: &'a Outage, records: usize) -> Self {
        outage.batch_started(records);
        Waiting { outage, records }
    }

    /// `records` are still waiting; the others were settled.
    fn now(&mut self, records: usize) {
        self.outage
            .records_settled(self.records.saturating_sub(records));
        self.records = records;
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.outage.records_settled(self.records);
        self.outage.batch_finished();
    }
}

/// Adds `a` and `b` to `shard`'s entry of a per-shard tally (a request touches few shards: a list
/// beats a map).
fn tally(tally: &mut Vec<(Arc<str>, u64, u64)>, shard: &Arc<str>, a: u64, b: u64) {
    match tally.iter_mut().find(|(s, _, _)| s == shard) {
        Some(entry) => {
            entry.1 += a;
            entry.2 += b;
        }
        None => tally.push((Arc::clone(shard), a, b)),
    }
}
