//! Counters, duplicate tracking and fault settings of the fake Kinesis endpoint.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::state::lock;

/// Fault settings, changed at run time through `POST /faults`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Faults {
    /// Probability that one PutRecords entry fails (throughput exceeded or internal failure).
    pub fail_records: f64,
    /// Probability that a whole PutRecords/PutRecord call answers HTTP 500.
    pub fail_http: f64,
    /// Delay added before answering every API call.
    pub latency_ms: u64,
    /// Enforce the per-shard write limits.
    pub shard_limits: bool,
    /// Probability that one Firehose PutRecordBatch entry fails (ServiceUnavailableException).
    pub fail_firehose_records: f64,
    /// Probability that a whole PutRecordBatch call answers HTTP 503.
    pub fail_firehose_http: f64,
    /// Probability that a GetRecords call answers ExpiredIteratorException.
    pub expire_iterators: f64,
    /// Share of every shard's limits that another writer takes (0 to 1): with the per-shard
    /// limits on, the shipper gets the rest.
    pub other_writer_share: f64,
}

/// A partial update of [`Faults`]; absent fields keep their value.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsUpdate {
    pub fail_records: Option<f64>,
    pub fail_http: Option<f64>,
    pub latency_ms: Option<u64>,
    pub shard_limits: Option<bool>,
    pub fail_firehose_records: Option<f64>,
    pub fail_firehose_http: Option<f64>,
    pub expire_iterators: Option<f64>,
    pub other_writer_share: Option<f64>,
}

impl Faults {
    pub fn apply(&mut self, update: FaultsUpdate) -> Result<(), String> {
        for probability in [
            update.fail_records,
            update.fail_http,
            update.fail_firehose_records,
            update.fail_firehose_http,
            update.expire_iterators,
            update.other_writer_share,
        ]
        .into_iter()
        .flatten()
        {
            if !(0.0..=1.0).contains(&probability) {
                return Err(format!(
                    "probability or share {probability} is outside 0..=1"
                ));
            }
        }
        self.fail_records = update.fail_records.unwrap_or(self.fail_records);
        self.fail_http = update.fail_http.unwrap_or(self.fail_http);
        self.latency_ms = update.latency_ms.unwrap_or(self.latency_ms);
        self.shard_limits = update.shard_limits.unwrap_or(self.shard_limits);
        self.fail_firehose_records = update
            .fail_firehose_records
            .unwrap_or(self.fail_firehose_records);
        self.fail_firehose_http = update.fail_firehose_http.unwrap_or(self.fail_firehose_http);
        self.expire_iterators = update.expire_iterators.unwrap_or(self.expire_iterators);
        self.other_writer_share = update.other_writer_share.unwrap_or(self.other_writer_share);
        Ok(())
    }
}

/// Counters served by `GET /stats`. Field names are the JSON keys.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub put_records_calls: AtomicU64,
    pub put_record_calls: AtomicU64,
    /// PutRecords calls in the CBOR protocol.
    pub cbor_requests: AtomicU64,
    /// PutRecords calls in CBOR dropped unanswered (`--drop-cbor`).
    pub cbor_calls_dropped: AtomicU64,
    /// User records in accepted Kinesis records, after decompression and de-aggregation.
    pub user_records_accepted: AtomicU64,
    /// Bytes of those user records' data.
    pub user_bytes_accepted: AtomicU64,
    pub kinesis_records_accepted: AtomicU64,
    /// Data bytes of accepted Kinesis records, as received (compressed, aggregated).
    pub bytes: AtomicU64,
    pub failed_entries_injected: AtomicU64,
    pub http_5xx_injected: AtomicU64,
    /// Entries refused by the per-shard limits.
    pub throttled: AtomicU64,
    /// Requests refused with a 4xx error (validation, unknown stream).
    pub invalid_requests: AtomicU64,
    /// Accepted Kinesis records that failed to decompress or de-aggregate.
    pub decode_errors: AtomicU64,
    /// User records inside an aggregate whose partition key hashes outside the shard the
    /// aggregate went to (the KCL would drop them).
    pub misaligned_user_records: AtomicU64,
    /// User records whose data was seen before (only with `--track-duplicates`).
    pub duplicate_user_records: AtomicU64,
    pub get_records_calls: AtomicU64,
    /// GetRecords calls answered ExpiredIteratorException by injection.
    pub expired_iterators_injected: AtomicU64,
    pub firehose_calls: AtomicU64,
    /// Firehose records accepted (each a PutRecordBatch entry).
    pub firehose_records_accepted: AtomicU64,
    pub firehose_bytes_accepted: AtomicU64,
    /// STS AssumeRoleWithWebIdentity calls (see `credentials.rs`).
    pub web_identity_calls: AtomicU64,
    /// Calls of the container credentials endpoint, `GET /credentials`.
    pub container_credentials_calls: AtomicU64,
    /// Kinesis and Firehose requests signed with the credentials those calls handed out.
    pub requests_with_session_token: AtomicU64,
    /// By second since start: PutRecords entries accepted, their bytes (data and partition keys)
    /// and entries refused for throughput.
    pub per_second: Mutex<Vec<[u64; 3]>>,
}

impl Stats {
    pub fn snapshot(&self) -> serde_json::Value {
        let get = |counter: &AtomicU64| counter.load(Relaxed);
        serde_json::json!({
            "requests": get(&self.requests),
            "put_records_calls": get(&self.put_records_calls),
            "put_record_calls": get(&self.put_record_calls),
            "cbor_requests": get(&self.cbor_requests),
            "cbor_calls_dropped": get(&self.cbor_calls_dropped),
            "user_records_accepted": get(&self.user_records_accepted),
            "user_bytes_accepted": get(&self.user_bytes_accepted),
            "kinesis_records_accepted": get(&self.kinesis_records_accepted),
            "bytes": get(&self.bytes),
            "failed_entries_injected": get(&self.failed_entries_injected),
            "http_5xx_injected": get(&self.http_5xx_injected),
            "throttled": get(&self.throttled),
            "invalid_requests": get(&self.invalid_requests),
            "decode_errors": get(&self.decode_errors),
            "misaligned_user_records": get(&self.misaligned_user_records),
            "duplicate_user_records": get(&self.duplicate_user_records),
            "get_records_calls": get(&self.get_records_calls),
            "expired_iterators_injected": get(&self.expired_iterators_injected),
            "firehose_calls": get(&self.firehose_calls),
            "firehose_records_accepted": get(&self.firehose_records_accepted),
            "firehose_bytes_accepted": get(&self.firehose_bytes_accepted),
            "web_identity_calls": get(&self.web_identity_calls),
            "container_credentials_calls": get(&self.container_credentials_calls),
            "requests_with_session_token": get(&self.requests_with_session_token),
        })
    }

    /// Adds one request's outcome to second `second`'s counts.
    pub fn count_second(&self, second: u64, accepted: u64, bytes: u64, refused: u64) {
        let mut seconds = lock(&self.per_second);
        let index = second as usize;
        if seconds.len() <= index {
            seconds.resize(index + 1, [0; 3]);
        }
        let counts = &mut seconds[index];
        counts[0] += accepted;
        counts[1] += bytes;
        counts[2] += refused;
    }

    pub fn reset(&self) {
        lock(&self.per_second).clear();
        for counter in [
            &self.requests,
            &self.put_records_calls,
            &self.put_record_calls,
            &self.cbor_requests,
            &self.cbor_calls_dropped,
            &self.user_records_accepted,
            &self.user_bytes_accepted,
            &self.kinesis_records_accepted,
            &self.bytes,
            &self.failed_entries_injected,
            &self.http_5xx_injected,
            &self.throttled,
            &self.invalid_requests,
            &self.decode_errors,
            &self.misaligned_user_records,
            &self.duplicate_user_records,
            &self.get_records_calls,
            &self.expired_iterators_injected,
            &self.firehose_calls,
            &self.firehose_records_accepted,
            &self.firehose_bytes_accepted,
            &self.web_identity_calls,
            &self.container_credentials_calls,
            &self.requests_with_session_token,
        ] {
            counter.store(0, Relaxed);
        }
    }
}

/// Hashes of user record data seen so far, split in stripes to keep locks short.
pub struct SeenData {
    hasher: RandomState,
    stripes: Vec<Mutex<HashSet<u64>>>,
}

impl SeenData {
    const STRIPES: usize = 64;

    pub fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            stripes: (0..Self::STRIPES).map(|_| Mutex::default()).collect(),
        }
    }

    /// Records `data` and says whether it was seen before.
    pub fn is_duplicate(&self, data: &[u8]) -> bool {
        let hash = self.hasher.hash_one(data);
        !lock(&self.stripes[hash as usize % Self::STRIPES]).insert(hash)
    }

    pub fn clear(&self) {
        for stripe in &self.stripes {
            lock(stripe).clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_updates_are_partial_and_checked() {
        let mut faults = Faults::default();
        let update = serde_json::from_str(r#"{"fail_records": 0.3}"#).unwrap();
        faults.apply(update).unwrap();
        let update = serde_json::from_str(r#"{"latency_ms": 5}"#).unwrap();
        faults.apply(update).unwrap();
        assert_eq!((faults.fail_records, faults.latency_ms), (0.3, 5));
        let update = serde_json::from_str(r#"{"fail_http": 1.5}"#).unwrap();
        assert!(faults.apply(update).is_err());
        assert_eq!(faults.fail_http, 0.0);
        assert!(serde_json::from_str::<FaultsUpdate>(r#"{"typo": 1}"#).is_err());
    }

    #[test]
    fn reset_zeroes_every_counter() {
        let stats = Stats::default();
        stats.requests.fetch_add(3, Relaxed);
        stats.duplicate_user_records.fetch_add(1, Relaxed);
        stats.reset();
        let snapshot = stats.snapshot();
        let values = snapshot.as_object().unwrap().values();
        assert!(values.into_iter().all(|value| value == 0));
    }
}
