//! Per-shard rate control: a token bucket for records and one for bytes per shard, at the Kinesis
//! write limits, so the shipper does not provoke throttling storms; and additive-increase /
//! multiplicative-decrease on throttling feedback, so a shard that is shared with other writers
//! (or whose limit is lower) gets less, then recovers gradually.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Kinesis accepts up to 1,000 records per second per shard (Kinesis quotas, PutRecords).
pub const SHARD_RECORDS_PER_SECOND: f64 = 1000.0;
/// ... and up to 1 MiB per second per shard, data plus partition keys.
pub const SHARD_BYTES_PER_SECOND: f64 = 1024.0 * 1024.0;
/// Pace at this fraction of the limits, with a burst of BURST_SECONDS of that rate, so that any
/// one-second window (how Kinesis measures) holds at most rate + burst, under 95% of the limit. The
/// rest absorbs the jitter of requests in flight (a request sent just before a second ends may
/// arrive just after).
const UTILISATION: f64 = 0.9;
const BURST_SECONDS: f64 = 0.05;
/// A throttled shard's rate is multiplied by the share of its entries it accepted since the last
/// decrease (Kinesis accepts up to its limit and refuses the rest), by at most this ...
const GENTLEST_DECREASE: f64 = 0.9;
/// ... and at least this ...
const DECREASE: f64 = 0.5;
/// ... at most once per this long (the requests in flight when a shard starts throttling all come
/// back throttled: that is one signal, not several) ...
const DECREASE_INTERVAL: Duration = Duration::from_secs(1);
/// ... never below this fraction of the limit ...
const MIN_FACTOR: f64 = 0.1;
/// ... and recovers by this fraction of the limit per second without throttling.
const INCREASE_PER_SECOND: f64 = 0.1;

/// What one request may carry per shard: a tenth of a second at the paced rate. A request is a lump
/// of a shard's budget; a one-second window that catches one lump more than the pace allows (a
/// request delayed in flight from one second into the next) then stays near the limit
/// (0.9 + 0.09 + the burst), where half-second lumps could put 1.4 seconds' worth in it.
const REQUEST_SECONDS: f64 = 0.1;

pub fn batch_budget() -> crate::batch::ShardBudget {
    crate::batch::ShardBudget {
        max_records: (SHARD_RECORDS_PER_SECOND * UTILISATION * REQUEST_SECONDS) as usize,
        max_bytes: (SHARD_BYTES_PER_SECOND * UTILISATION * REQUEST_SECONDS) as usize,
    }
}

#[derive(Debug)]
struct Bucket {
    records: f64,
    bytes: f64,
    factor: f64,
    at: Instant,
    decreased_at: Option<Instant>,
    /// Entries sent and refused for throughput since `window_at`: the share refused is what a
    /// decrease takes off.
    sent: u64,
    refused: u64,
    window_at: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket {
            records: SHARD_RECORDS_PER_SECOND * UTILISATION * BURST_SECONDS,
            bytes: SHARD_BYTES_PER_SECOND * UTILISATION * BURST_SECONDS,
            factor: 1.0,
            at: now,
            decreased_at: None,
            sent: 0,
            refused: 0,
            window_at: now,
        }
    }

    /// Refill for the time passed, capped at the burst allowed.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        let calm = self
            .decreased_at
            .is_none_or(|at| now.saturating_duration_since(at) >= DECREASE_INTERVAL);
        if calm {
            self.factor = (self.factor + elapsed * INCREASE_PER_SECOND).min(1.0);
        }
        let (records_rate, bytes_rate) = self.rates();
        self.records = (self.records + elapsed * records_rate).min(records_rate * BURST_SECONDS);
        self.bytes = (self.bytes + elapsed * bytes_rate).min(bytes_rate * BURST_SECONDS);
    }

    fn rates(&self) -> (f64, f64) {
        let scale = self.factor * UTILISATION;
        (
            SHARD_RECORDS_PER_SECOND * scale,
            SHARD_BYTES_PER_SECOND * scale,
        )
    }
}

/// The buckets of every shard seen, by shard id.
#[derive(Debug, Default)]
pub struct ShardLimiter {
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

impl ShardLimiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Bucket>> {
        // A poisoned lock still holds whole numbers; keep using them.
        self.buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Take what a call will use on each shard (`(shard, records, bytes)`), and return how long to
    /// wait before sending so that no shard goes over its rate. Tokens may go negative: the wait
    /// pays the debt, and later callers queue behind it.
    pub fn reserve(&self, usage: &[(Arc<str>, u64, u64)], now: Instant) -> Duration {
        let mut buckets = self.lock();
        let mut wait = 0.0f64;
        for (shard, records, bytes) in usage {
            let bucket = buckets
                .entry(Arc::clone(shard))
                .or_insert_with(|| Bucket::new(now));
            bucket.refill(now);
            bucket.records -= *records as f64;
            bucket.bytes -= *bytes as f64;
            let (records_rate, bytes_rate) = bucket.rates();
            wait = wait
                .max(-bucket.records / records_rate)
                .max(-bucket.bytes / bytes_rate);
        }
        Duration::from_secs_f64(wait.max(0.0))
    }

    /// What became of the entries a call sent to `shard`: `sent` in all, `refused` of them for
    /// throughput. When the shard refuses some, its rate is scaled by the share it accepted since
    /// the last decrease (0.5 to 0.9), at most once per DECREASE_INTERVAL, and what is left of its
    /// burst is spent. One call's share alone would be too noisy: a retry of three entries with
    /// two refused is not a shard two thirds over its limit.
    pub fn outcome(&self, shard: &Arc<str>, sent: u64, refused: u64, now: Instant) {
        let mut buckets = self.lock();
        let bucket = buckets
            .entry(Arc::clone(shard))
            .or_insert_with(|| Bucket::new(now));
        bucket.refill(now);
        if bucket.refused == 0
            && now.saturating_duration_since(bucket.window_at) >= DECREASE_INTERVAL
        {
            bucket.sent = 0;
            bucket.window_at = now;
        }
        bucket.sent += sent;
        bucket.refused += refused.min(sent);
        if refused == 0 {
            return;
        }
        bucket.records = bucket.records.min(0.0);
        bucket.bytes = bucket.bytes.min(0.0);
        let recent = bucket
            .decreased_at
            .is_some_and(|at| now.saturating_duration_since(at) < DECREASE_INTERVAL);
        if recent {
            return;
        }
        let accepted = 1.0 - bucket.refused as f64 / bucket.sent.max(1) as f64;
        bucket.factor =
            (bucket.factor * accepted.clamp(DECREASE, GENTLEST_DECREASE)).max(MIN_FACTOR);
        bucket.decreased_at = Some(now);
        bucket.sent = 0;
        bucket.refused = 0;
        bucket.window_at = now;
    }

    pub fn factor(&self, shard: &str) -> f64 {
        self.lock().get(shard).map_or(1.0, |bucket| bucket.factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shard(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    const RECORDS_RATE: f64 = SHARD_RECORDS_PER_SECOND * UTILISATION;
    const BYTES_RATE: f64 = SHARD_BYTES_PER_SECOND * UTILISATION;

    #[test]
    fn a_burst_within_the_limits_goes_at_once_then_callers_wait() {
        let limiter = ShardLimiter::default();
        let now = Instant::now();
        let a = shard("a");
        let burst = (RECORDS_RATE * BURST_SECONDS) as u64;
        assert_eq!(
            limiter.reserve(&[(Arc::clone(&a), burst, 1000)], now),
            Duration::ZERO
        );
        // Half a second's worth more waits half a second.
        let half = (RECORDS_RATE / 2.0) as u64;
        let wait = limiter.reserve(&[(Arc::clone(&a), half, 1000)], now);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-3, "{wait:?}");
        // Another shard has its own bucket.
        assert_eq!(
            limiter.reserve(&[(shard("b"), 10, 10)], now),
            Duration::ZERO
        );
    }

    #[test]
    fn bytes_limit_binds_too() {
        let limiter = ShardLimiter::default();
        let now = Instant::now();
        let bytes = (BYTES_RATE * (BURST_SECONDS + 2.0)) as u64;
        let wait = limiter.reserve(&[(shard("a"), 1, bytes)], now);
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-3, "{wait:?}");
    }

    #[test]
    fn throttling_halves_once_per_interval_then_recovers_with_time() {
        let limiter = ShardLimiter::default();
        let start = Instant::now();
        let a = shard("a");
        limiter.outcome(&a, 10, 10, start);
        // Requests that were in flight come back throttled too: one signal.
        limiter.outcome(&a, 10, 10, start + Duration::from_millis(300));
        assert_eq!(limiter.factor("a"), 0.5);
        // A second later it may halve again (after the 0.7 s of recovery since the last look).
        limiter.outcome(&a, 10, 10, start + Duration::from_millis(1000));
        assert!(
            (limiter.factor("a") - (0.5 + 0.07) / 2.0).abs() < 1e-9,
            "{}",
            limiter.factor("a")
        );
        for second in 2..40 {
            limiter.outcome(&a, 10, 10, start + Duration::from_secs(second));
        }
        assert!(
            (limiter.factor("a") - MIN_FACTOR).abs() < 1e-6,
            "{}",
            limiter.factor("a")
        );
        // Quiet for five seconds: up by half the limit; then back to the full rate.
        let later = start + Duration::from_secs(39 + 1 + 5);
        limiter.reserve(&[(Arc::clone(&a), 0, 0)], later);
        assert!(
            (limiter.factor("a") - (MIN_FACTOR + 0.5)).abs() < 0.11,
            "{}",
            limiter.factor("a")
        );
        limiter.reserve(&[(Arc::clone(&a), 0, 0)], later + Duration::from_secs(10));
        assert_eq!(limiter.factor("a"), 1.0);
    }

    #[test]
    fn a_partly_refused_shard_slows_by_the_share_refused_since_the_last_decrease() {
        let limiter = ShardLimiter::default();
        let start = Instant::now();
        let a = shard("a");
        // 75 entries accepted, then a call with 25 refused: a quarter refused.
        limiter.outcome(&a, 75, 0, start);
        limiter.outcome(&a, 25, 25, start + Duration::from_millis(10));
        assert!(
            (limiter.factor("a") - 0.75).abs() < 1e-3,
            "{}",
            limiter.factor("a")
        );
        // Within the interval, refusals only accumulate (and the rate does not recover yet).
        limiter.outcome(&a, 30, 3, start + Duration::from_millis(500));
        assert!(
            (limiter.factor("a") - 0.75).abs() < 1e-3,
            "{}",
            limiter.factor("a")
        );
        // After it, one more refusal: 4 of 40 since the last decrease is the gentlest step, x0.9,
        // taken off the rate recovered over the 0.52 s since the last look.
        let before = (0.75 + 0.052) * GENTLEST_DECREASE;
        limiter.outcome(&a, 10, 1, start + Duration::from_millis(1020));
        assert!(
            (limiter.factor("a") - before).abs() < 1e-3,
            "{}",
            limiter.factor("a")
        );
        // Most refused: halved, not more.
        let b = shard("b");
        limiter.outcome(&b, 10, 9, start);
        assert_eq!(limiter.factor("b"), DECREASE);
        // Nothing refused: no change.
        let c = shard("c");
        limiter.outcome(&c, 500, 0, start);
        assert_eq!(limiter.factor("c"), 1.0);
    }

    proptest! {
        /// Over any sequence of reservations, what is let through by time t never exceeds the
        /// burst (one second's worth) plus the rate times t.
        #[test]
        fn never_exceeds_the_rate(calls in proptest::collection::vec((1u64..400, 0u64..200_000, 0u64..300), 1..100)) {
            let limiter = ShardLimiter::default();
            let start = Instant::now();
            let a = shard("a");
            let mut now = start;
            let (mut records, mut bytes) = (0u64, 0u64);
            for (n, b, gap_ms) in calls {
                now += Duration::from_millis(gap_ms);
                let wait = limiter.reserve(&[(Arc::clone(&a), n, b)], now);
                let sent_at = now + wait;
                records += n;
                bytes += b;
                let elapsed = sent_at.duration_since(start).as_secs_f64();
                // What went out by each send: at most the burst plus the rate over the time since start.
                prop_assert!(records as f64 <= RECORDS_RATE * (BURST_SECONDS + elapsed) + 1e-6);
                prop_assert!(bytes as f64 <= BYTES_RATE * (BURST_SECONDS + elapsed) + 1e-3);
                now = sent_at;
            }
        }
    }
}
