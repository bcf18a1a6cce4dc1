//! Counters shared by the pipeline's stages. Plain atomics: cheap on the hot path, read by the
//! metrics endpoint and the stop summary.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of the PutRecords latency histogram's buckets. A healthy call takes
/// tens of milliseconds; the top buckets catch the SDK's timeouts and a struggling endpoint.
pub const PUT_RECORDS_LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

/// Most distinct shard ids kept for `throttled_records_total{shard_id}`. A stream has a bounded
/// number of shards, but resharding mints new ids for as long as the process lives; past this
/// many, throttles are counted under the shard id [`OTHER_SHARDS`] so the series set stays bounded.
pub const MAX_SHARD_LABELS: usize = 1024;
/// The label value that collects throttles beyond [`MAX_SHARD_LABELS`] shards.
pub const OTHER_SHARDS: &str = "other";

/// Why file bytes were given up unread: descriptor bound, deleted-file bound, copytruncate
/// before the bytes were read.
pub const FILE_LOSS_REASONS: [&str; 3] = ["max_open_files", "max_held_deleted", "truncated_unread"];

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Every counter, each exported as `shipper_<name>`.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// Entries and requests that failed, by Kinesis error code.
            pub failed_by_code: Mutex<BTreeMap<String, u64>>,
            /// How long PutRecords calls took.
            pub put_records_latency: Histogram,
            /// Entries refused for throughput, by shard id.
            pub throttled_by_shard: Mutex<BTreeMap<String, u64>>,
            /// Unix seconds of the last PutRecords call that was answered (0: none yet) ...
            pub last_answered_unix: AtomicU64,
            /// ... and of the last one that failed as a whole (0: none yet).
            pub last_failed_unix: AtomicU64,
            /// File bytes given up unread, by reason (in the order of [`FILE_LOSS_REASONS`]).
            pub file_bytes_lost: [AtomicU64; FILE_LOSS_REASONS.len()],
            /// Each `--socket`'s own counters.
            pub sockets: Mutex<Vec<std::sync::Arc<crate::sources::socket::metrics::SocketMetrics>>>,
        }

        impl Metrics {
            /// Every plain counter with its name, for exporting.
            pub fn counters(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Lines read from files.
    lines_read_total,
    /// Bytes read from files.
    bytes_read_total,
    /// Records handed to the batcher.
    records_total,
    /// Records accepted by Kinesis.
    records_sent_total,
    /// Data bytes accepted by Kinesis.
    bytes_sent_total,
    /// Record sends that had to be retried (one per record per retry).
    records_retried_total,
    /// Records written to the dead-letter file after a permanent error.
    records_dead_lettered_total,
    /// PutRecords calls made.
    put_records_requests_total,
    /// PutRecords calls that failed as a whole.
    put_records_failed_requests_total,
    /// Records that landed on another shard than the shard map predicted.
    unexpected_shard_total,
    /// Entries or calls refused for throughput (throttling).
    throttled_total,
    /// Lines whose invalid UTF-8 was replaced.
    lossy_utf8_total,
    /// Empty lines, acknowledged without being shipped.
    empty_lines_skipped_total,
    /// Records that did not parse in their format (json, celery), shipped wrapped.
    parse_errors_total,
    /// Records cut into parts because they were over the record size limit.
    records_split_total,
    /// Lines cut short because they were over the record size limit (--long-lines truncate).
    lines_truncated_total,
    /// Files closed before their end (descriptor or deleted-file bounds).
    files_closed_unread_total,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Metrics {
    /// A PutRecords call was answered (whatever its entries said): Kinesis is reachable.
    pub fn call_answered(&self) {
        self.last_answered_unix.store(unix_now(), Ordering::Relaxed);
    }

    /// A PutRecords call failed as a whole (timeout, connection, 5xx, throttling, refusal).
    pub fn call_failed(&self) {
        self.last_failed_unix.store(unix_now(), Ordering::Relaxed);
    }

    /// Record how long one PutRecords call took (for the latency histogram).
    pub fn observe_put_records_latency(&self, elapsed: Duration) {
        self.put_records_latency.observe(elapsed);
    }

    /// Count `n` entries refused for throughput on one shard.
    pub fn throttled_on_shard(&self, shard_id: &str, n: u64) {
        let mut by_shard = self
            .throttled_by_shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = by_shard.get_mut(shard_id) {
            *count += n;
        } else if by_shard.len() < MAX_SHARD_LABELS {
            by_shard.insert(shard_id.to_string(), n);
        } else {
            *by_shard.entry(OTHER_SHARDS.to_string()).or_default() += n;
        }
    }

    /// Throttled entries per shard id, for exporting.
    pub fn throttled_by_shard(&self) -> Vec<(String, u64)> {
        let by_shard = self
            .throttled_by_shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        by_shard.iter().map(|(id, n)| (id.clone(), *n)).collect()
    }

    /// Count `bytes` of a file given up unread for `reason` (one of [`FILE_LOSS_REASONS`]).
    pub fn file_bytes_lost(&self, reason: &str, bytes: u64) {
        if let Some(i) = FILE_LOSS_REASONS.iter().position(|r| *r == reason) {
            self.file_bytes_lost[i].fetch_add(bytes, Ordering::Relaxed);
        }
        if reason != "truncated_unread" {
            Metrics::add(&self.files_closed_unread_total, 1);
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn failed(&self, code: &str, n: u64) {
        let mut by_code = self
            .failed_by_code
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *by_code.entry(code.to_string()).or_default() += n;
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A latency histogram with the fixed buckets of [`PUT_RECORDS_LATENCY_BUCKETS`]. Each bucket
/// counts only its own observations (plus one slot above the last bound); [`Histogram::snapshot`]
/// makes them cumulative, as Prometheus wants.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; PUT_RECORDS_LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A histogram read at one moment: cumulative counts per upper bound, their sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at or below it)`, bounds ascending, `+Inf` excluded.
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    /// Every observation: the `+Inf` bucket.
    pub count: u64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let slot = PUT_RECORDS_LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(PUT_RECORDS_LATENCY_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The count is the sum of the buckets read here, so `+Inf` always equals `_count` even while
    /// other threads observe.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(PUT_RECORDS_LATENCY_BUCKETS.len());
        for (bound, slot) in PUT_RECORDS_LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += slot.load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let above = self.buckets[PUT_RECORDS_LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: cumulative + above,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_millis(10));
        histogram.observe(Duration::from_millis(700));
        histogram.observe(Duration::from_secs(45));
        let snapshot = histogram.snapshot();
        let at = |bound: f64| {
            snapshot
                .buckets
                .iter()
                .find(|(b, _)| *b == bound)
                .map(|(_, n)| *n)
                .unwrap()
        };
        assert_eq!(at(0.005), 1);
        // A bound is inclusive: 10 ms is counted in le="0.01".
        assert_eq!(at(0.01), 2);
        assert_eq!(at(0.5), 2);
        assert_eq!(at(1.0), 3);
        assert_eq!(at(30.0), 3);
        assert_eq!(snapshot.count, 4);
        assert!((snapshot.sum_seconds - 45.713).abs() < 1e-9, "{snapshot:?}");
        let counts: Vec<u64> = snapshot.buckets.iter().map(|(_, n)| *n).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    }

    #[test]
    fn throttles_add_up_per_shard_and_the_label_set_stays_bounded() {
        let metrics = Metrics::default();
        metrics.throttled_on_shard("shardId-000000000001", 3);
        metrics.throttled_on_shard("shardId-000000000001", 2);
        metrics.throttled_on_shard("shardId-000000000000", 1);
        assert_eq!(
            metrics.throttled_by_shard(),
            [
                ("shardId-000000000000".to_string(), 1),
                ("shardId-000000000001".to_string(), 5)
            ]
        );
        for shard in 0..MAX_SHARD_LABELS + 10 {
            metrics.throttled_on_shard(&format!("shardId-{shard:012}"), 1);
        }
        let by_shard = metrics.throttled_by_shard();
        assert_eq!(by_shard.len(), MAX_SHARD_LABELS + 1);
        let other = by_shard.iter().find(|(id, _)| id == OTHER_SHARDS).unwrap();
        assert_eq!(other.1, 10);
        let total: u64 = by_shard.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 6 + MAX_SHARD_LABELS as u64 + 10);
    }
}
