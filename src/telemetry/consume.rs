//! Metrics of `shipper consume`, and its `/metrics`, `/healthz` and `/readyz` endpoint.
//!
//! Per shard: `shipper_consume_millis_behind_latest` (from GetRecords), Kinesis records and bytes
//! read, user records forwarded. Overall: user records and bytes forwarded, Firehose entries failed
//! by error code, dead-lettered, duplicates dropped; with a lease table, leases held, taken,
//! stolen, handed over, received and lost, and lease table calls and errors.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::metrics::MAX_SHARD_LABELS;

/// Per-shard gauges and counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShardStats {
    pub millis_behind_latest: u64,
    pub records_read: u64,
    pub bytes_read: u64,
    pub user_records_forwarded: u64,
}

macro_rules! consume_counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Every counter, each exported as `shipper_consume_<name>`.
        #[derive(Debug, Default)]
        pub struct ConsumeMetrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// Leases this replica holds (with a lease table).
            pub leases_held: AtomicU64,
            /// Firehose entries and calls that failed, by error code.
            failed_by_code: Mutex<BTreeMap<String, u64>>,
            shards: Mutex<BTreeMap<String, ShardStats>>,
        }

        impl ConsumeMetrics {
            /// Every plain counter with its name, for exporting.
            pub fn counters(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

consume_counters! {
    /// Kinesis records read by GetRecords.
    records_read_total,
    /// Bytes of those records' data, as read (compressed, aggregated).
    bytes_read_total,
    /// User records accepted by Firehose.
    user_records_forwarded_total,
    /// Bytes of those user records (decompressed, delimiter included).
    user_bytes_forwarded_total,
    /// User records and unreadable Kinesis records written to the dead-letter file.
    dead_lettered_total,
    /// User records dropped because their `id` was forwarded within the dedupe window.
    duplicates_dropped_total,
    /// Records with the aggregation magic that did not verify, forwarded as plain records.
    invalid_aggregates_total,
    /// User records before the checkpoint dropped when a shard resumed.
    resumed_records_skipped_total,
    /// GetRecords calls.
    get_records_calls_total,
    /// GetRecords calls refused for throughput.
    get_records_throttled_total,
    /// Shard iterators renewed after they expired.
    expired_iterators_total,
    /// PutRecordBatch calls.
    put_record_batch_requests_total,
    /// Firehose entries sent again after they failed.
    records_retried_total,
    /// Shards read to their end (closed by a split or merge).
    shards_finished_total,
    /// Free or expired leases taken (with a lease table).
    leases_taken_total,
    /// Leases taken from a replica that did not hand them over when asked.
    leases_stolen_total,
    /// Leases handed over to a replica that asked for them, after a final checkpoint.
    leases_handed_off_total,
    /// Leases handed over to this replica.
    leases_received_total,
    /// Leases lost: taken by another replica, or not renewed in time.
    leases_lost_total,
    /// Lease table calls.
    lease_table_calls_total,
    /// Lease table calls that failed (throttling, 5xx, timeouts, refusals; not conflicts).
    lease_table_errors_total,
}

impl ConsumeMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn failed(&self, code: &str, n: u64) {
        let mut by_code = self
            .failed_by_code
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *by_code.entry(code.to_string()).or_default() += n;
    }

    pub fn failed_by_code(&self) -> Vec<(String, u64)> {
        let by_code = self
            .failed_by_code
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        by_code.iter().map(|(code, n)| (code.clone(), *n)).collect()
    }

    /// Update `shard`'s entry (at most MAX_SHARD_LABELS shards get one).
    pub fn shard(&self, shard: &str, update: impl FnOnce(&mut ShardStats)) {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stats) = shards.get_mut(shard) {
            update(stats);
        } else if shards.len() < MAX_SHARD_LABELS {
            let mut stats = ShardStats::default();
            update(&mut stats);
            shards.insert(shard.to_string(), stats);
        }
    }

    pub fn shards(&self) -> Vec<(String, ShardStats)> {
        let shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        shards.iter().map(|(id, s)| (id.clone(), *s)).collect()
    }
}

/// A per-shard metric: its name, Prometheus type, and value.
type Family = (&'static str, &'static str, fn(&ShardStats) -> u64);

/// Prometheus text exposition.
pub fn render(metrics: &ConsumeMetrics) -> String {
    let mut out = String::new();
    for (name, value) in metrics.counters() {
        let _ = writeln!(
            out,
            "# TYPE shipper_consume_{name} counter\nshipper_consume_{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# TYPE shipper_consume_leases_held gauge\nshipper_consume_leases_held {}",
        metrics.leases_held.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# TYPE shipper_consume_put_record_batch_failed_total counter"
    );
    for (code, value) in metrics.failed_by_code() {
        let code = escape(&code);
        let _ = writeln!(
            out,
            "shipper_consume_put_record_batch_failed_total{{error_code=\"{code}\"}} {value}"
        );
    }
    let shards = metrics.shards();
    let families: [Family; 4] = [
        ("millis_behind_latest", "gauge", |s| s.millis_behind_latest),
        ("shard_records_read_total", "counter", |s| s.records_read),
        ("shard_bytes_read_total", "counter", |s| s.bytes_read),
        ("shard_user_records_forwarded_total", "counter", |s| {
            s.user_records_forwarded
        }),
    ];
    for (name, kind, value) in families {
        let _ = writeln!(out, "# TYPE shipper_consume_{name} {kind}");
        for (shard, stats) in &shards {
            let shard = escape(shard);
            let _ = writeln!(
                out,
                "shipper_consume_{name}{{shard_id=\"{shard}\"}} {}",
                value(stats)
            );
        }
    }
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What the endpoint reads.
#[derive(Debug, Default)]
pub struct ConsumeHealth {
    pub metrics: Arc<ConsumeMetrics>,
    /// Set once the stream and delivery stream were found and reading started.
    pub ready: AtomicBool,
}

/// Bind `addr` and serve until `stop`.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<ConsumeHealth>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    super::server::serve_app(addr, app, stop).await
}

async fn metrics(State(health): State<Arc<ConsumeHealth>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&health.metrics),
    )
}

async fn readyz(State(health): State<Arc<ConsumeHealth>>) -> impl IntoResponse {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_codes_and_shards() {
        let metrics = ConsumeMetrics::default();
        ConsumeMetrics::add(&metrics.duplicates_dropped_total, 3);
        metrics.failed("ServiceUnavailableException", 2);
        metrics.shard("shardId-000000000001", |s| {
            s.millis_behind_latest = 1500;
            s.records_read += 7;
        });
        let text = render(&metrics);
        for line in [
            "shipper_consume_duplicates_dropped_total 3",
            "shipper_consume_put_record_batch_failed_total{error_code=\"ServiceUnavailableException\"} 2",
            "shipper_consume_millis_behind_latest{shard_id=\"shardId-000000000001\"} 1500",
            "shipper_consume_shard_records_read_total{shard_id=\"shardId-000000000001\"} 7",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
