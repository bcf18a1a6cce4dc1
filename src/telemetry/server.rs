//! The HTTP endpoint on `--metrics-addr`: `/metrics` (Prometheus text format), `/healthz` (the
//! process and its checkpoint loop are turning) and `/readyz` (settings loaded, data dir writable).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
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
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&health.metrics),
    )
}

/// Prometheus text exposition of every counter.
pub fn render(metrics: &Metrics) -> String {
    let mut out = String::new();
    for (name, value) in metrics.counters() {
        let _ = writeln!(out, "# TYPE shipper_{name} counter\nshipper_{name} {value}");
    }
    let by_code = metrics
        .failed_by_code
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let _ = writeln!(out, "# TYPE shipper_put_records_failed_total counter");
    for (code, value) in by_code.iter() {
        let code = code.replace(['\\', '"', '\n'], "_");
        let _ = writeln!(
            out,
            "shipper_put_records_failed_total{{error_code=\"{code}\"}} {value}"
        );
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
    let body = serde_json::json!({
        "status": if writable.is_ok() { "ready" } else { "not ready" },
        "config": "loaded",
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
    use super::*;

    #[test]
    fn render_names_every_counter_and_labels_codes() {
        let metrics = Metrics::default();
        Metrics::add(&metrics.records_sent_total, 7);
        metrics.failed("ProvisionedThroughputExceededException", 2);
        let text = render(&metrics);
        assert!(text.contains("shipper_records_sent_total 7\n"), "{text}");
        assert!(text.contains("shipper_lines_read_total 0\n"), "{text}");
        assert!(
            text.contains("shipper_put_records_failed_total{error_code=\"ProvisionedThroughputExceededException\"} 2\n"),
            "{text}"
        );
    }
}
