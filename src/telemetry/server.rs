//! The HTTP endpoint on `--metrics-addr`: `/metrics` (Prometheus text format), `/healthz` (the
//! process and its checkpoint loop are turning) and `/readyz` (settings loaded, data dir writable).
//!
//! Counters and the latency histogram come from [`Metrics`]; the per-file gauges are computed at
//! scrape time from the ack registry and the files' current sizes.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use super::metrics::FILE_LOSS_REASONS;

/// `/healthz` fails when the checkpoint loop has not turned for this long.
const STALE_AFTER: Duration = Duration::from_secs(30);

/// What the endpoint reads.
#[derive(Debug)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    /// The data dir `/readyz` checks for writability; none in a dry run.
    pub data_dir: Option<PathBuf>,
    /// Unix seconds of the checkpoint loop's last turn (0: not started).
    pub heartbeat: AtomicU64,
    /// Every tracked file's progress, for the per-file lag.
    pub registry: Arc<crate::ack::Registry>,
}

impl Health {
    pub fn new(
        metrics: Arc<Metrics>,
        data_dir: Option<PathBuf>,
        registry: Arc<crate::ack::Registry>,
    ) -> Health {
        Health {
            metrics,
            data_dir,
            heartbeat: AtomicU64::new(now()),
            registry,
        }
    }

    pub fn beat(&self) {
        self.heartbeat.store(now(), Ordering::Relaxed);
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Bind `addr` and serve until `stop`. Binding errors are returned so a wrong address is a clear
/// start-up error.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    serve_app(addr, app, stop).await
}

/// Bind `addr` and serve `app` on a task of its own until `stop`.
pub async fn serve_app(
    addr: SocketAddr,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::warn!(error = %error, "metrics endpoint stopped");
        }
    });
    Ok(())
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let mut text = render(&health.metrics);
    // Sizing the files is a stat per tracked file: keep it off the async workers.
    let registry = Arc::clone(&health.registry);
    match tokio::task::spawn_blocking(move || render_files(&registry.snapshot())).await {
        Ok(files) => text.push_str(&files),
        Err(error) => tracing::warn!(error = %error, "cannot compute the per-file lag"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Prometheus text exposition of every counter, the PutRecords latency histogram and the
/// per-shard throttles.
pub fn render(metrics: &Metrics) -> String {
    let mut out = String::new();
    for (name, value) in metrics.counters() {
        let _ = writeln!(out, "# TYPE shipper_{name} counter\nshipper_{name} {value}");
    }
    let by_code: Vec<(String, u64)> = {
        let by_code = metrics
            .failed_by_code
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        by_code.iter().map(|(code, n)| (code.clone(), *n)).collect()
    };
    let _ = writeln!(out, "# TYPE shipper_put_records_failed_total counter");
    for (code, value) in by_code {
        let code = escape_label_value(&code);
        let _ = writeln!(
            out,
            "shipper_put_records_failed_total{{error_code=\"{code}\"}} {value}"
        );
    }
    // Everything read that did not reach Kinesis as it was, by reason (each also has its own counter).
    let _ = writeln!(out, "# TYPE shipper_records_dropped_total counter");
    let dropped = [
        ("dead_letter", &metrics.records_dead_lettered_total),
        ("line_truncated", &metrics.lines_truncated_total),
        ("empty_line", &metrics.empty_lines_skipped_total),
    ];
    for (reason, counter) in dropped {
        let _ = writeln!(
            out,
            "shipper_records_dropped_total{{reason=\"{reason}\"}} {}",
            Metrics::get(counter)
        );
    }
    let _ = writeln!(out, "# TYPE shipper_file_bytes_lost_total counter");
    for (reason, counter) in FILE_LOSS_REASONS.iter().zip(&metrics.file_bytes_lost) {
        let _ = writeln!(
            out,
            "shipper_file_bytes_lost_total{{reason=\"{reason}\"}} {}",
            Metrics::get(counter)
        );
    }
    let _ = writeln!(out, "# TYPE shipper_throttled_records_total counter");
    for (shard, value) in metrics.throttled_by_shard() {
        let shard = escape_label_value(&shard);
        let _ = writeln!(
            out,
            "shipper_throttled_records_total{{shard_id=\"{shard}\"}} {value}"
        );
    }
    let latency = metrics.put_records_latency.snapshot();
    let name = "shipper_put_records_duration_seconds";
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (bound, count) in &latency.buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", latency.count);
    let _ = writeln!(out, "{name}_sum {}", latency.sum_seconds);
    let _ = writeln!(out, "{name}_count {}", latency.count);
    let sockets = metrics
        .sockets
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    crate::sources::socket::metrics::SocketMetrics::render(&sockets, &mut out);
    out
}

/// The per-file gauges: `shipper_files_tracked` and `shipper_file_lag_bytes{file}`, the bytes of
/// each file not yet known to be delivered (its current size minus its committed offset). Reads
/// file metadata, so call it off the async workers.
pub fn render_files(files: &[crate::ack::FileCheckpoint]) -> String {
    // A rotated file and its successor can share a path for a moment; one series per path keeps
    // the exposition valid, so their lags add up.
    let mut lag_by_path: std::collections::BTreeMap<&Path, u64> = Default::default();
    for file in files {
        *lag_by_path.entry(&file.path).or_default() += file_lag(file);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# TYPE shipper_files_tracked gauge\nshipper_files_tracked {}",
        files.len()
    );
    let _ = writeln!(out, "# TYPE shipper_file_lag_bytes gauge");
    for (path, lag) in lag_by_path {
        let path = escape_label_value(&path.to_string_lossy());
        let _ = writeln!(out, "shipper_file_lag_bytes{{file=\"{path}\"}} {lag}");
    }
    out
}

/// Size minus committed offset of the file the checkpoint describes. 0 when its path no longer
/// names that file (deleted, or rotated away and not yet found under its new name): its size
/// cannot be known from the path then, and another file's size would be meaningless.
fn file_lag(file: &crate::ack::FileCheckpoint) -> u64 {
    match std::fs::metadata(&file.path) {
        Ok(meta) if meta.dev() == file.id.dev && meta.ino() == file.id.ino => {
            meta.len().saturating_sub(file.offset)
        }
        _ => 0,
    }
}

/// Escape a label value for the text format: backslash, double quote and newline.
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

async fn healthz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let age = now().saturating_sub(health.heartbeat.load(Ordering::Relaxed));
    // A dry run writes no checkpoints, so it has no loop to watch.
    let ok = health.data_dir.is_none() || age < STALE_AFTER.as_secs();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({"status": if ok { "ok" } else { "stalled" }, "checkpoint_loop_age_seconds": age});
    (status, axum::Json(body))
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let writable = match &health.data_dir {
        None => Ok(()),
        Some(dir) => {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                let probe = dir.join(".readyz");
                std::fs::write(&probe, b"ok").and_then(|()| std::fs::remove_file(&probe))
            })
            .await
            .unwrap_or_else(|error| Err(std::io::Error::other(error)))
        }
    };
    let sent = Metrics::get(&health.metrics.records_sent_total);
    let failed_requests = Metrics::get(&health.metrics.put_records_failed_requests_total);
    // Kinesis being down does not make the shipper unready: it keeps reading into the file-backed
    // backlog and retries, so it is "recovering" and still doing its job.
    let answered = Metrics::get(&health.metrics.last_answered_unix);
    let failed = Metrics::get(&health.metrics.last_failed_unix);
    let kinesis = match (answered, failed) {
        (0, 0) => "not contacted yet",
        (answered, failed) if answered >= failed => "reachable",
        _ => "recovering",
    };
    let body = serde_json::json!({
        "status": if writable.is_ok() { "ready" } else { "not ready" },
        "config": "loaded",
        "kinesis": kinesis,
        "kinesis_last_answer_unix": answered,
        "kinesis_last_failure_unix": failed,
        "data_dir_writable": writable.is_ok(),
        "data_dir_error": writable.as_ref().err().map(ToString::to_string),
        "records_sent": sent,
        "put_records_failed_requests": failed_requests,
    });
    let status = if writable.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ack::{FileCheckpoint, FileId, FileProgress, Fingerprint, Registry};

    #[test]
    fn render_names_every_counter_and_labels_codes() {
        let metrics = Metrics::default();
        Metrics::add(&metrics.records_sent_total, 7);
        metrics.failed("ProvisionedThroughputExceededException", 2);
        let text = render(&metrics);
        assert!(text.contains("shipper_records_sent_total 7\n"), "{text}");
        assert!(
            text.contains("shipper_records_dropped_total{reason=\"dead_letter\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("shipper_lines_read_total 0\n"), "{text}");
        assert!(
            text.contains("shipper_put_records_failed_total{error_code=\"ProvisionedThroughputExceededException\"} 2\n"),
            "{text}"
        );
    }

    /// The value of the sample line that starts with `series ` (name and labels).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.parse().unwrap())
    }

    #[test]
    fn latency_histogram_buckets_are_cumulative_and_end_at_the_count() {
        let metrics = Metrics::default();
        for millis in [2, 4, 30, 30, 400, 40_000] {
            metrics.observe_put_records_latency(Duration::from_millis(millis));
        }
        let text = render(&metrics);
        let name = "shipper_put_records_duration_seconds";
        assert!(
            text.contains(&format!("# TYPE {name} histogram\n")),
            "{text}"
        );
        let bucket = |le: &str| sample(&text, &format!("{name}_bucket{{le=\"{le}\"}}"));
        assert_eq!(bucket("0.005"), Some(2.0), "{text}");
        assert_eq!(bucket("0.025"), Some(2.0), "{text}");
        assert_eq!(bucket("0.05"), Some(4.0), "{text}");
        assert_eq!(bucket("0.5"), Some(5.0), "{text}");
        assert_eq!(bucket("30"), Some(5.0), "{text}");
        assert_eq!(bucket("+Inf"), Some(6.0), "{text}");
        assert_eq!(sample(&text, &format!("{name}_count")), Some(6.0));
        let sum = sample(&text, &format!("{name}_sum")).unwrap();
        assert!((sum - 40.466).abs() < 1e-9, "{text}");
        let counts: Vec<f64> = text
            .lines()
            .filter(|line| line.starts_with(&format!("{name}_bucket")))
            .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            counts.len(),
            crate::telemetry::metrics::PUT_RECORDS_LATENCY_BUCKETS.len() + 1
        );
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::default();
        metrics.failed("odd\"code\\with\nnewline", 1);
        metrics.throttled_on_shard("shard\"1", 4);
        let text = render(&metrics);
        assert!(
            text.contains(
                "shipper_put_records_failed_total{error_code=\"odd\\\"code\\\\with\\nnewline\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("shipper_throttled_records_total{shard_id=\"shard\\\"1\"} 4\n"),
            "{text}"
        );
        let files = [FileCheckpoint {
            path: PathBuf::from("/logs/a \"quoted\"\\name.log"),
            id: FileId { dev: 0, ino: 0 },
            fingerprint: Fingerprint::default(),
            offset: 0,
        }];
        let text = render_files(&files);
        assert!(
            text.contains(
                "shipper_file_lag_bytes{file=\"/logs/a \\\"quoted\\\"\\\\name.log\"} 0\n"
            ),
            "{text}"
        );
    }

    /// Every sample belongs to a family declared once, with the type its name implies.
    #[test]
    fn every_family_has_one_type_line_of_the_right_type() {
        let metrics = Metrics::default();
        metrics.failed("AccessDeniedException", 1);
        metrics.throttled_on_shard("shardId-000000000000", 1);
        metrics.observe_put_records_latency(Duration::from_millis(20));
        let dir = tempfile::tempdir().unwrap();
        let text = render(&metrics) + &render_files(&[checkpoint_of(&dir.path().join("x"), 0)]);
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(types.insert(name, kind).is_none(), "{name} declared twice");
            }
        }
        for (name, kind) in &types {
            let want = if name.ends_with("_total") {
                "counter"
            } else if name.ends_with("_seconds") {
                "histogram"
            } else {
                "gauge"
            };
            assert_eq!(*kind, want, "{name}");
        }
        assert_eq!(types.get("shipper_file_lag_bytes"), Some(&"gauge"));
        assert_eq!(types.get("shipper_files_tracked"), Some(&"gauge"));
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let series = line.split([' ', '{']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = series.strip_suffix(suffix)?;
                    (types.get(base) == Some(&"histogram")).then_some(base)
                })
                .unwrap_or(series);
            assert!(types.contains_key(family), "no TYPE for {line}");
        }
    }

    fn checkpoint_of(path: &Path, offset: u64) -> FileCheckpoint {
        let (dev, ino) = std::fs::metadata(path)
            .map(|meta| (meta.dev(), meta.ino()))
            .unwrap_or((u64::MAX, u64::MAX));
        FileCheckpoint {
            path: path.to_path_buf(),
            id: FileId { dev, ino },
            fingerprint: Fingerprint::default(),
            offset,
        }
    }

    #[test]
    fn file_lag_is_size_minus_committed_offset() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("worker.log");
        std::fs::write(&live, b"0123456789\n").unwrap();
        let gone = dir.path().join("gone.log");
        let replaced = dir.path().join("replaced.log");
        std::fs::write(&replaced, b"old\n").unwrap();
        let replaced_checkpoint = checkpoint_of(&replaced, 1);
        // Rotated away: the path now names a new, larger file the old offset says nothing about.
        std::fs::rename(&replaced, dir.path().join("replaced.log.1")).unwrap();
        std::fs::write(&replaced, b"a much longer new file\n").unwrap();
        let files = [
            checkpoint_of(&gone, 5),
            replaced_checkpoint,
            checkpoint_of(&live, 4),
        ];
        let text = render_files(&files);
        let lag = |path: &Path| {
            sample(
                &text,
                &format!("shipper_file_lag_bytes{{file=\"{}\"}}", path.display()),
            )
        };
        assert_eq!(lag(&live), Some(7.0), "{text}");
        assert_eq!(lag(&gone), Some(0.0), "{text}");
        assert_eq!(lag(&replaced), Some(0.0), "{text}");
        assert_eq!(sample(&text, "shipper_files_tracked"), Some(3.0), "{text}");

        // A checkpoint past the size (the file shrank and is about to be read again) is no lag.
        let text = render_files(&[checkpoint_of(&live, 100)]);
        assert_eq!(
            sample(
                &text,
                &format!("shipper_file_lag_bytes{{file=\"{}\"}}", live.display())
            ),
            Some(0.0),
            "{text}"
        );
    }

    #[tokio::test]
    async fn metrics_endpoint_reports_the_lag_of_registered_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.log");
        std::fs::write(&path, vec![b'x'; 1000]).unwrap();
        let checkpoint = checkpoint_of(&path, 0);
        let registry = Arc::new(Registry::default());
        let progress = FileProgress::new(checkpoint.id, path.clone(), Fingerprint::default(), 0);
        registry.insert(Arc::clone(&progress));
        progress.token(0, 600).ack();
        let health = Arc::new(Health::new(
            Arc::new(Metrics::default()),
            None,
            Arc::clone(&registry),
        ));
        let response = metrics(State(health)).await.into_response();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let series = format!("shipper_file_lag_bytes{{file=\"{}\"}}", path.display());
        assert_eq!(sample(&text, &series), Some(400.0), "{text}");
        assert_eq!(sample(&text, "shipper_files_tracked"), Some(1.0), "{text}");
        assert!(text.contains("shipper_records_sent_total 0\n"), "{text}");
    }
}
