//! Per-shard rate control, so the shipper keeps to the Kinesis write limits however the service
//! counts them (AWS says "per second" and not how: fixed one-second windows, a sliding second in
//! 100 ms slots, ...), and backs off smoothly when a shard is shared with other writers.
//!
//! Three parts, per shard:
//! - a token bucket for records and one for bytes: sending is spread evenly, in lumps of at most
//!   REQUEST_SECONDS of the rate (the batcher cuts requests to that budget), with a small burst;
//! - a log of the last second's sends: a send waits until what went out in the last
//!   GUARD_WINDOW plus the send stays under GUARD_SHARE of the limit. That bounds every span of
//!   one second, so every window model that honours the limits accepts it, even when single
//!   records are bigger than a request's share (compressed aggregates);
//! - a factor on both, from throttling feedback: down by the share refused (at most 30%), then
//!   back quickly to just under where it was throttled, slowly past it (probing), and quickly
//!   again beyond, like TCP CUBIC's shape; the climb goes at the pace of the share accepted, so a
//!   shard that refuses everything keeps the factor at its floor.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Kinesis accepts up to 1,000 records per second per shard (Kinesis quotas, PutRecords).
pub const SHARD_RECORDS_PER_SECOND: f64 = 1000.0;
/// ... and up to 1 MiB per second per shard, data plus partition keys.
pub const SHARD_BYTES_PER_SECOND: f64 = 1024.0 * 1024.0;
/// The buckets fill at this fraction of the limits.
const UTILISATION: f64 = 0.93;
/// A bucket holds at most this long's worth of its rate: what goes at once after a pause.
const BURST_SECONDS: f64 = 0.02;
/// What one request may carry per shard: this long's worth of the paced rate. Small lumps keep any
/// 100 ms of a shard's traffic under its 100 ms share, and any second under the limit with room
/// left for requests that arrive a little late or early.
const REQUEST_SECONDS: f64 = 0.04;
/// The guard: what goes out in any span this long (a second, and 20 ms for requests delayed in
/// flight) ...
const GUARD_WINDOW: Duration = Duration::from_millis(1020);
/// ... stays under this share of the limits (times the throttling factor). Steady pacing stays
/// under it (1.02 s at the rate plus one request's lump is 98.6% of the limits): the guard binds
/// only for records bigger than a request's share and for bursts.
const GUARD_SHARE: f64 = 0.99;
/// A throttled shard's rate is multiplied by the share of its entries it accepted since the last
/// decrease (Kinesis accepts up to its limit and refuses the rest), by at most this ...
const GENTLEST_DECREASE: f64 = 0.95;
/// ... and at least this (a smoothly paced sender is refused for a small excess: halving would
/// give away far more than the excess) ...
const DECREASE: f64 = 0.7;
/// ... at most once per this long (the requests in flight when a shard starts throttling all come
/// back throttled: that is one signal, not several) ...
const DECREASE_INTERVAL: Duration = Duration::from_millis(500);
/// ... never below this fraction of the limit.
const MIN_FACTOR: f64 = 0.1;
/// It climbs, at the pace of the share of entries accepted since the last decrease (not at all
/// while the shard refuses everything, nearly in full when it refuses a few entries whatever the
/// rate), by this fraction of the limit per second ...
const CLIMB_PER_SECOND: f64 = 0.4;
/// ... up to this share of the factor at which it was throttled, and from there by this much per
/// second ...
const NEAR_CEILING: f64 = 0.95;
const PROBE_PER_SECOND: f64 = 0.1;
/// ... up to this share of it, past which the shard has room again and the climb is quick.
const PAST_CEILING: f64 = 1.05;

pub fn batch_budget() -> crate::batch::ShardBudget {
    crate::batch::ShardBudget {
        max_records: (SHARD_RECORDS_PER_SECOND * UTILISATION * REQUEST_SECONDS) as usize,
        max_bytes: (SHARD_BYTES_PER_SECOND * UTILISATION * REQUEST_SECONDS) as usize,
    }
}

/// The throttling factor after `seconds` of climbing from `factor`, throttled last at `ceiling`.
fn climb(mut factor: f64, ceiling: f64, mut seconds: f64) -> f64 {
    while seconds > 0.0 && factor < 1.0 {
        let (end, speed) = if factor < ceiling * NEAR_CEILING {
            (ceiling * NEAR_CEILING, CLIMB_PER_SECOND)
        } else if factor < ceiling * PAST_CEILING {
            (ceiling * PAST_CEILING, PROBE_PER_SECOND)
        } else {
            (1.0, CLIMB_PER_SECOND)
        };
        let end = end.min(1.0);
        let needed = (end - factor) / speed;
        if needed >= seconds {
            factor += seconds * speed;
            break;
        }
        factor = end;
        seconds -= needed;
    }
    factor.min(1.0)
}

/// One send in a shard's log: when, and what it carried.
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Instant,
    records: f64,
    bytes: f64,
}

#[derive(Debug)]
struct Bucket {
    records: f64,
    bytes: f64,
    factor: f64,
    /// The factor at the last decrease: the climb slows near it.
    ceiling: f64,
    at: Instant,
    decreased_at: Option<Instant>,
    /// Entries sent and refused for throughput since `window_at`: the share refused is what a
    /// decrease takes off.
    sent: u64,
    refused: u64,
    window_at: Instant,
    /// Sends planned in the last GUARD_WINDOW, oldest first, and their sums.
    log: VecDeque<Sent>,
    logged_records: f64,
    logged_bytes: f64,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket {
            records: SHARD_RECORDS_PER_SECOND * UTILISATION * BURST_SECONDS,
            bytes: SHARD_BYTES_PER_SECOND * UTILISATION * BURST_SECONDS,
            factor: 1.0,
            ceiling: 1.0,
            at: now,
            decreased_at: None,
            sent: 0,
            refused: 0,
            window_at: now,
            log: VecDeque::new(),
            logged_records: 0.0,
            logged_bytes: 0.0,
        }
    }

    /// Refill for the time passed, capped at the burst allowed.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        if elapsed <= 0.0 {
            return;
        }
        self.at = now;
        // The climb goes at the pace of the share accepted since the last decrease: not at all while
        // the shard refuses everything, nearly in full when it refuses a few entries whatever the
        // rate.
        let accepted = 1.0 - self.refused as f64 / self.sent.max(1) as f64;
        self.factor = climb(self.factor, self.ceiling, elapsed * accepted);
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

    /// The earliest time at or after `at` when `records` and `bytes` more keep every
    /// GUARD_WINDOW of the log under the guard (or the log is empty: a record bigger than the
    /// guard still goes, alone).
    fn guard(&self, at: Instant, records: f64, bytes: f64) -> Instant {
        let most_records = SHARD_RECORDS_PER_SECOND * GUARD_SHARE * self.factor;
        let most_bytes = SHARD_BYTES_PER_SECOND * GUARD_SHARE * self.factor;
        // Sends are logged in order, and never before the last one.
        let mut at = self.log.back().map_or(at, |last| at.max(last.at));
        let (mut logged_records, mut logged_bytes) = (self.logged_records, self.logged_bytes);
        for sent in &self.log {
            let in_window = sent.at + GUARD_WINDOW > at;
            if in_window
                && logged_records + records <= most_records
                && logged_bytes + bytes <= most_bytes
            {
                break;
            }
            if in_window {
                // Wait until this send leaves the window.
                at = sent.at + GUARD_WINDOW;
            }
            logged_records -= sent.records;
            logged_bytes -= sent.bytes;
        }
        at
    }

    fn log(&mut self, at: Instant, records: f64, bytes: f64) {
        while let Some(oldest) = self.log.front() {
            if oldest.at + GUARD_WINDOW > at {
                break;
            }
            self.logged_records -= oldest.records;
            self.logged_bytes -= oldest.bytes;
            self.log.pop_front();
        }
        if self.log.is_empty() {
            // Clear the float residue of the subtractions.
            self.logged_records = 0.0;
            self.logged_bytes = 0.0;
        }
        self.log.push_back(Sent { at, records, bytes });
        self.logged_records += records;
        self.logged_bytes += bytes;
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
    /// wait before sending so that no shard goes over its rate, nor its guard. Tokens may go
    /// negative: the wait pays the debt, and later callers queue behind it. The caller must send
    /// after that wait: the send is logged at that time.
    pub fn reserve(&self, usage: &[(Arc<str>, u64, u64)], now: Instant) -> Duration {
        let mut buckets = self.lock();
        let mut send_at = now;
        for (shard, records, bytes) in usage {
            let bucket = buckets
                .entry(Arc::clone(shard))
                .or_insert_with(|| Bucket::new(now));
            bucket.refill(now);
            bucket.records -= *records as f64;
            bucket.bytes -= *bytes as f64;
            let (records_rate, bytes_rate) = bucket.rates();
            let wait = (-bucket.records / records_rate)
                .max(-bucket.bytes / bytes_rate)
                .max(0.0);
            let paced = now + Duration::from_secs_f64(wait);
            send_at = send_at.max(bucket.guard(paced, *records as f64, *bytes as f64));
        }
        // Every shard's log gets the time the call really goes (the latest any shard allows).
        for (shard, records, bytes) in usage {
            if let Some(bucket) = buckets.get_mut(shard) {
                bucket.log(send_at, *records as f64, *bytes as f64);
            }
        }
        send_at.saturating_duration_since(now)
    }

    /// What became of the entries a call sent to `shard`: `sent` in all, `refused` of them for
    /// throughput. When the shard refuses some, its rate is scaled by the share it accepted since
    /// the last decrease (0.7 to 0.95), at most once per DECREASE_INTERVAL, and what is left of its
    /// burst is spent. One call's share alone would be too noisy: a retry of three entries with
    /// two refused is not a shard two thirds over its limit.
    pub fn outcome(&self, shard: &Arc<str>, sent: u64, refused: u64, now: Instant) {
        let mut buckets = self.lock();
        let bucket = buckets
            .entry(Arc::clone(shard))
            .or_insert_with(|| Bucket::new(now));
        if bucket.refused == 0
            && now.saturating_duration_since(bucket.window_at) >= DECREASE_INTERVAL
        {
            bucket.sent = 0;
            bucket.window_at = now;
        }
        bucket.sent += sent;
        bucket.refused += refused.min(sent);
        // After counting this outcome: a call answered after a long silence tells how that time went.
        bucket.refill(now);
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
        bucket.ceiling = bucket.factor;
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
#[path = "rate_tests.rs"]
mod tests;
