//! Per-socket counters, and a log line that says how many it held back.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::spool::Spool;

/// Counters of one `--socket`, labelled with its URL.
#[derive(Default)]
pub struct SocketMetrics {
    pub url: String,
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    /// Connections closed at once because `--socket-max-connections` were open.
    pub connections_refused_total: AtomicU64,
    /// Records decoded and appended to the spool.
    pub records_total: AtomicU64,
    /// Bytes received from senders.
    pub bytes_total: AtomicU64,
    /// Datagrams larger than a record can be, dropped whole.
    pub oversize_total: AtomicU64,
    /// Records refused because the spool was full, and their bytes.
    pub spool_dropped_total: AtomicU64,
    pub spool_dropped_bytes_total: AtomicU64,
    /// Torn or corrupt spool bytes cut off at start-up.
    pub spool_cut_bytes_total: AtomicU64,
    decode_errors: Mutex<BTreeMap<&'static str, u64>>,
    decode_warnings: Mutex<BTreeMap<&'static str, u64>>,
    pub spool: OnceLock<Spool>,
}

impl SocketMetrics {
    pub fn new(url: &str) -> SocketMetrics {
        SocketMetrics {
            url: url.to_string(),
            ..SocketMetrics::default()
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn decode_error(&self, kind: &'static str) {
        bump(&self.decode_errors, kind);
    }

    pub fn decode_warning(&self, kind: &'static str) {
        bump(&self.decode_warnings, kind);
    }

    pub fn decode_errors(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.decode_errors).clone()
    }

    /// Append every socket's series to a Prometheus text exposition, one HELP and TYPE line per
    /// family.
    pub fn render(sockets: &[std::sync::Arc<SocketMetrics>], out: &mut String) {
        if sockets.is_empty() {
            return;
        }
        let counters: [Series; 9] = [
            ("connections_total", "Connections accepted", |m| {
                load(&m.connections_total)
            }),
            (
                "connections_refused_total",
                "Connections closed at once because --socket-max-connections were open",
                |m| load(&m.connections_refused_total),
            ),
            ("records_total", "Records received and spooled", |m| {
                load(&m.records_total)
            }),
            ("bytes_total", "Bytes received from senders", |m| {
                load(&m.bytes_total)
            }),
            (
                "oversize_total",
                "Datagrams over the record limit, dropped",
                |m| load(&m.oversize_total),
            ),
            (
                "spool_dropped_total",
                "Records refused because the spool was full",
                |m| load(&m.spool_dropped_total),
            ),
            (
                "spool_dropped_bytes_total",
                "Bytes of records refused because the spool was full",
                |m| load(&m.spool_dropped_bytes_total),
            ),
            (
                "spool_cut_bytes_total",
                "Torn or corrupt spool bytes cut off at start-up",
                |m| load(&m.spool_cut_bytes_total),
            ),
            ("connections_active", "Connections open now", |m| {
                load(&m.connections_active)
            }),
        ];
        for (name, help, value) in counters {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# HELP shipper_socket_{name} {help}.");
            let _ = writeln!(out, "# TYPE shipper_socket_{name} {kind}");
            for socket in sockets {
                let _ = writeln!(
                    out,
                    "shipper_socket_{name}{{socket=\"{}\"}} {}",
                    escape(&socket.url),
                    value(socket)
                );
            }
        }
        for (family, help, field) in [
            (
                "decode_errors_total",
                "Frames that could not be decoded, by kind (each dropped)",
                0,
            ),
            (
                "decode_warnings_total",
                "Records shipped with a part replaced, by kind",
                1,
            ),
        ] {
            let _ = writeln!(out, "# HELP shipper_socket_{family} {help}.");
            let _ = writeln!(out, "# TYPE shipper_socket_{family} counter");
            for socket in sockets {
                let map = if field == 0 {
                    lock(&socket.decode_errors).clone()
                } else {
                    lock(&socket.decode_warnings).clone()
                };
                for (kind, n) in map {
                    let _ = writeln!(
                        out,
                        "shipper_socket_{family}{{socket=\"{}\",kind=\"{kind}\"}} {n}",
                        escape(&socket.url)
                    );
                }
            }
        }
        let gauges: [(&str, &str); 4] = [
            ("spool_bytes", "Bytes the spool takes on disk"),
            (
                "spool_records",
                "Records in the spool not yet acknowledged by Kinesis",
            ),
            (
                "spool_oldest_age_seconds",
                "Age of the oldest record in the spool not yet acknowledged (0 when none)",
            ),
            ("spool_segments", "Spool segment files"),
        ];
        let stats: Vec<_> = sockets
            .iter()
            .map(|s| s.spool.get().map(Spool::stats).unwrap_or_default())
            .collect();
        for (i, (name, help)) in gauges.into_iter().enumerate() {
            let _ = writeln!(out, "# HELP shipper_socket_{name} {help}.");
            let _ = writeln!(out, "# TYPE shipper_socket_{name} gauge");
            for (socket, stats) in sockets.iter().zip(&stats) {
                let value = match i {
                    0 => stats.disk_bytes as f64,
                    1 => stats.pending_entries as f64,
                    2 => stats.oldest_pending.map_or(0.0, |age| age.as_secs_f64()),
                    _ => stats.segments as f64,
                };
                let _ = writeln!(
                    out,
                    "shipper_socket_{name}{{socket=\"{}\"}} {value}",
                    escape(&socket.url)
                );
            }
        }
    }
}

impl std::fmt::Debug for SocketMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketMetrics")
            .field("url", &self.url)
            .field("records_total", &self.records_total)
            .finish_non_exhaustive()
    }
}

/// A series family: name, help text, and how to read it from one socket's metrics.
type Series = (&'static str, &'static str, fn(&SocketMetrics) -> u64);

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, kind: &'static str) {
    *lock(map).entry(kind).or_default() += 1;
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A warning that is logged at most once per interval, with the count of the ones held back, so
/// a sender spraying garbage cannot flood the shipper's own log.
pub struct Throttled {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    pub const fn new(interval: Duration) -> Throttled {
        Throttled {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Returns `Some(held back since the last one)` when this occurrence should be logged.
    pub fn check(&self) -> Option<u64> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                state.1 += 1;
                None
            }
            _ => {
                let held = std::mem::take(&mut state.1);
                state.0 = Some(now);
                Some(held)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn renders_counters_errors_and_spool_gauges_per_socket() {
        let a = Arc::new(SocketMetrics::new("unix:///run/a.sock"));
        SocketMetrics::add(&a.records_total, 3);
        a.decode_error("pickle_budget");
        a.decode_error("pickle_budget");
        let b = Arc::new(SocketMetrics::new("udp://127.0.0.1:5140"));
        let mut out = String::new();
        SocketMetrics::render(&[a, b], &mut out);
        assert!(out.contains("shipper_socket_records_total{socket=\"unix:///run/a.sock\"} 3"));
        assert!(out.contains(
            "shipper_socket_decode_errors_total{socket=\"unix:///run/a.sock\",kind=\"pickle_budget\"} 2"
        ));
        assert!(out.contains("shipper_socket_spool_bytes{socket=\"udp://127.0.0.1:5140\"} 0"));
        assert_eq!(
            out.matches("# TYPE shipper_socket_records_total").count(),
            1
        );
    }

    #[test]
    fn throttled_logs_once_per_interval_and_counts_the_rest() {
        let log = Throttled::new(Duration::from_secs(3600));
        assert_eq!(log.check(), Some(0));
        assert_eq!(log.check(), None);
        assert_eq!(log.check(), None);
        let log = Throttled::new(Duration::ZERO);
        assert_eq!(log.check(), Some(0));
        assert_eq!(log.check(), Some(0));
    }
}
