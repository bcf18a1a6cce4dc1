//! The Firehose sink: sends records with PutRecordBatch to a Direct PUT delivery stream, and reads
//! every entry's result.
//!
//! A PutRecordBatch call can succeed while some entries fail (`ServiceUnavailableException`,
//! `InternalFailure`). Each entry's result is read (FailedPutCount is not trusted); failed entries
//! are retried alone after a backoff (the shared [`RetryPolicy`]), for as long as it takes when
//! the failure is transient, so an entry that succeeded is never sent again. Entries refused
//! permanently are handed back to the caller for its dead-letter file.

pub mod client;
mod transport;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::sinks::error::{ErrorClass, classify_code};
use crate::sinks::retry::RetryPolicy;
use crate::telemetry::consume::ConsumeMetrics;

pub use transport::{EntryResult, SdkTransport, Transport};

/// Most records in one PutRecordBatch call (PutRecordBatch API reference; cannot be raised).
pub const MAX_BATCH_RECORDS: usize = 500;
/// Most bytes of data in one call (same source: 4 MiB for the entire request).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Largest record (same source: 1,000 KiB, before base64 encoding).
pub const MAX_RECORD_BYTES: usize = 1000 * 1024;

/// After this many consecutive failed attempts, a retriable failure is logged at ERROR.
const LOUD_AFTER_ATTEMPTS: u32 = 10;

/// How each record of a [`Sink::send`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Refused permanently: the caller writes it to its dead-letter file.
    Refused {
        code: String,
        message: String,
    },
}

pub struct Sink<T> {
    transport: T,
    delivery_stream: String,
    retry: RetryPolicy,
    metrics: Arc<ConsumeMetrics>,
    /// At most this many calls in flight.
    requests: Arc<Semaphore>,
}

impl<T: Transport> Sink<T> {
    pub fn new(
        transport: T,
        delivery_stream: String,
        retry: RetryPolicy,
        metrics: Arc<ConsumeMetrics>,
        concurrency: usize,
    ) -> Self {
        Sink {
            transport,
            delivery_stream,
            retry,
            metrics,
            requests: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// Deliver `records` (within the batch limits): returns each record's outcome, in order, once
    /// every one was delivered or refused; `None` when `stop` was cancelled first (nothing is then
    /// known to be delivered, and the caller acknowledges nothing).
    pub async fn send(&self, records: &[Bytes], stop: &CancellationToken) -> Option<Vec<Delivery>> {
        let mut outcomes: Vec<Option<Delivery>> = vec![None; records.len()];
        let mut pending: Vec<usize> = (0..records.len()).collect();
        let mut backoff = self.retry.backoff();
        let mut failed_attempts = 0u32;
        while !pending.is_empty() {
            let outcome = {
                let _slot = tokio::select! {
                    slot = self.requests.acquire() => slot.ok()?,
                    () = stop.cancelled() => return None,
                };
                let batch: Vec<Bytes> = pending.iter().map(|&i| records[i].clone()).collect();
                ConsumeMetrics::add(&self.metrics.put_record_batch_requests_total, 1);
                tokio::select! {
                    outcome = self.transport.put_record_batch(&batch) => outcome,
                    () = stop.cancelled() => return None,
                }
            };
            let sent = pending.len();
            pending = match outcome {
                Ok(results) => {
                    let mut retry = Vec::new();
                    for (index, result) in pending.into_iter().zip(results) {
                        match result {
                            EntryResult::Delivered => {
                                outcomes[index] = Some(Delivery::Delivered);
                            }
                            EntryResult::Failed { code, message } => {
                                self.metrics.failed(&code, 1);
                                if classify_code(&code) == ErrorClass::Permanent {
                                    error!(delivery_stream = %self.delivery_stream, error_code = %code, error = %message, "firehose refused a record permanently");
                                    outcomes[index] = Some(Delivery::Refused { code, message });
                                } else {
                                    retry.push(index);
                                }
                            }
                        }
                    }
                    retry
                }
                Err(error) => {
                    self.metrics.failed(&error.code, 1);
                    if !error.is_retriable() {
                        error!(delivery_stream = %self.delivery_stream, error = %error, records = pending.len(), "firehose refused the request permanently");
                        for index in pending {
                            outcomes[index] = Some(Delivery::Refused {
                                code: error.code.clone(),
                                message: error.message.clone(),
                            });
                        }
                        break;
                    }
                    if error.class == ErrorClass::Credentials
                        || failed_attempts >= LOUD_AFTER_ATTEMPTS
                    {
                        error!(delivery_stream = %self.delivery_stream, error = %error, records = pending.len(), attempts = failed_attempts + 1, "putrecordbatch keeps failing; retrying");
                    } else {
                        warn!(delivery_stream = %self.delivery_stream, error = %error, records = pending.len(), "putrecordbatch failed; retrying");
                    }
                    pending
                }
            };
            if pending.is_empty() {
                break;
            }
            ConsumeMetrics::add(&self.metrics.records_retried_total, pending.len() as u64);
            if pending.len() < sent {
                failed_attempts = 0;
                backoff = self.retry.backoff();
            } else {
                failed_attempts += 1;
            }
            let delay = backoff.next_delay();
            debug!(records = pending.len(), ?delay, "retrying failed entries");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return None,
            }
        }
        Some(
            outcomes
                .into_iter()
                .map(|outcome| {
                    // Every record ends above; were one missed, dead-lettering it is the safe side.
                    outcome.unwrap_or_else(|| Delivery::Refused {
                        code: "Unknown".into(),
                        message: "no outcome".into(),
                    })
                })
                .collect(),
        )
    }
}
