//! Telling the operator that the Kinesis endpoint cannot be reached, and that it can again.
//!
//! The sink retries an unreachable endpoint forever (the file is the buffer), which is right for a
//! sidecar but silent about the big picture: each failed call is logged, not how long the outage
//! has lasted or how much is held up. `Outage` says that at WARN, first after
//! [`FIRST_WARNING_AFTER`] of failures (a blip of a few seconds is not an outage) and then at most
//! once per [`WARNING_INTERVAL`], and at INFO once a call gets through again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::SendError;

/// How long calls must have failed to connect before the first WARN.
pub const FIRST_WARNING_AFTER: Duration = Duration::from_secs(10);
/// At most one WARN per this interval while the outage lasts.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Outage {
    state: Mutex<State>,
    /// Records and batches the sink holds that are not yet delivered.
    records_waiting: AtomicU64,
    batches_waiting: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// When the first call of the current outage failed to connect.
    since: Option<Instant>,
    last_warning: Option<Instant>,
}

/// What one note of a failed or answered call led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Said {
    Nothing,
    /// The WARN, with how long the endpoint has been unreachable.
    StillUnreachable(Duration),
    /// The INFO, with how long it was unreachable.
    Recovered(Duration),
}

impl Outage {
    /// A call failed because the endpoint could not be reached.
    pub fn unreachable(&self, error: &SendError, now: Instant) -> Said {
        let mut state = self.lock();
        let since = *state.since.get_or_insert(now);
        let unreachable_for = now.saturating_duration_since(since);
        let due = match state.last_warning {
            None => unreachable_for >= FIRST_WARNING_AFTER,
            Some(last) => now.saturating_duration_since(last) >= WARNING_INTERVAL,
        };
        if !due {
            return Said::Nothing;
        }
        state.last_warning = Some(now);
        let (records, batches) = self.waiting();
        warn!(
            unreachable_for = %whole_seconds(unreachable_for),
            records_waiting = records,
            batches_waiting = batches,
            %error,
            "kinesis endpoint unreachable for {}; {} waiting to be sent (in {}); still retrying",
            whole_seconds(unreachable_for),
            counted(records, "record"),
            counted(batches, "batch"),
        );
        Said::StillUnreachable(unreachable_for)
    }

    /// A call got an answer (success or an error from the service): the endpoint is reachable.
    pub fn reachable(&self, now: Instant) -> Said {
        let mut state = self.lock();
        let Some(since) = state.since.take() else {
            return Said::Nothing;
        };
        // Only an outage that was reported is reported over: a blip stays quiet both ways.
        if state.last_warning.take().is_none() {
            return Said::Nothing;
        }
        let unreachable_for = now.saturating_duration_since(since);
        info!(
            unreachable_for = %whole_seconds(unreachable_for),
            "kinesis endpoint reachable again after {}",
            whole_seconds(unreachable_for),
        );
        Said::Recovered(unreachable_for)
    }

    /// A batch came into the sink.
    pub fn batch_started(&self, records: usize) {
        self.records_waiting
            .fetch_add(records as u64, Ordering::Relaxed);
        self.batches_waiting.fetch_add(1, Ordering::Relaxed);
    }

    /// `records` of a batch are settled (delivered or dead-lettered), or given up at a stop.
    pub fn records_settled(&self, records: usize) {
        self.records_waiting
            .fetch_sub(records as u64, Ordering::Relaxed);
    }

    /// A batch left the sink; its records were settled already.
    pub fn batch_finished(&self) {
        self.batches_waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// (records, batches) in the sink, not yet delivered.
    pub fn waiting(&self) -> (u64, u64) {
        (
            self.records_waiting.load(Ordering::Relaxed),
            self.batches_waiting.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two instants; a panic elsewhere cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `1 record`, `3 records`, `2 batches`.
fn counted(n: u64, noun: &str) -> String {
    match (n, noun.ends_with('h')) {
        (1, _) => format!("1 {noun}"),
        (_, true) => format!("{n} {noun}es"),
        (_, false) => format!("{n} {noun}s"),
    }
}

fn whole_seconds(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(duration.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::error::ErrorClass;

    fn refused() -> SendError {
        SendError {
            class: ErrorClass::Transient,
            code: "DispatchFailure".into(),
            message: "connection refused".into(),
        }
    }

    #[test]
    fn warns_after_a_while_then_once_a_minute_and_says_when_it_recovered() {
        let outage = Outage::default();
        outage.batch_started(3);
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(outage.unreachable(&refused(), at(0)), Said::Nothing);
        assert_eq!(outage.unreachable(&refused(), at(9)), Said::Nothing);
        assert_eq!(
            outage.unreachable(&refused(), at(10)),
            Said::StillUnreachable(Duration::from_secs(10))
        );
        for secs in [11, 30, 69] {
            assert_eq!(outage.unreachable(&refused(), at(secs)), Said::Nothing);
        }
        assert_eq!(
            outage.unreachable(&refused(), at(70)),
            Said::StillUnreachable(Duration::from_secs(70))
        );
        assert_eq!(
            outage.reachable(at(75)),
            Said::Recovered(Duration::from_secs(75))
        );
        assert_eq!(outage.reachable(at(76)), Said::Nothing);

        // A new outage starts its own clock; a short one is not reported either way.
        assert_eq!(outage.unreachable(&refused(), at(100)), Said::Nothing);
        assert_eq!(outage.unreachable(&refused(), at(105)), Said::Nothing);
        assert_eq!(outage.reachable(at(106)), Said::Nothing);
        assert_eq!(outage.unreachable(&refused(), at(200)), Said::Nothing);
        assert_eq!(
            outage.unreachable(&refused(), at(210)),
            Said::StillUnreachable(Duration::from_secs(10))
        );
    }

    #[test]
    fn counts_read_as_english() {
        assert_eq!(counted(1, "record"), "1 record");
        assert_eq!(counted(3, "record"), "3 records");
        assert_eq!(counted(1, "batch"), "1 batch");
        assert_eq!(counted(0, "batch"), "0 batches");
    }

    #[test]
    fn counts_what_is_waiting() {
        let outage = Outage::default();
        outage.batch_started(500);
        outage.batch_started(20);
        outage.records_settled(300);
        assert_eq!(outage.waiting(), (220, 2));
        outage.records_settled(200);
        outage.batch_finished();
        assert_eq!(outage.waiting(), (20, 1));
    }
}
