//! The limiter alone: buckets, the one-second guard, and the throttling factor.

use super::*;
use proptest::prelude::*;

fn shard(name: &str) -> Arc<str> {
    Arc::from(name)
}

const RECORDS_RATE: f64 = SHARD_RECORDS_PER_SECOND * UTILISATION;
const BYTES_RATE: f64 = SHARD_BYTES_PER_SECOND * UTILISATION;

fn close(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() < 1e-3
}

/// The factor `a` has after looking at the time (a reservation of nothing).
fn factor_at(limiter: &ShardLimiter, a: &Arc<str>, at: Instant) -> f64 {
    limiter.reserve(&[(Arc::clone(a), 0, 0)], at);
    limiter.factor(a)
}

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
    assert!((wait.as_secs_f64() - 0.5).abs() < 2e-3, "{wait:?}");
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
fn the_guard_spaces_records_bigger_than_a_requests_share() {
    // 300 KB records: the bucket alone would send one every 0.31 s, four in 0.93 s; the guard
    // lets only three into any GUARD_WINDOW.
    let limiter = ShardLimiter::default();
    let start = Instant::now();
    let a = shard("a");
    let sends: Vec<f64> = (0..6)
        .map(|_| {
            let wait = limiter.reserve(&[(Arc::clone(&a), 1, 300_000)], start);
            wait.as_secs_f64()
        })
        .collect();
    for pair in sends.windows(4) {
        let apart = pair[3] - pair[0];
        assert!(apart >= GUARD_WINDOW.as_secs_f64() - 1e-9, "{sends:?}");
    }
    // A call touching two shards goes when both allow, and both log it then.
    let b = shard("b");
    let both = limiter.reserve(&[(Arc::clone(&a), 1, 10), (Arc::clone(&b), 1, 10)], start);
    assert!(both.as_secs_f64() >= sends[5], "{both:?} {sends:?}");
    let b_alone = limiter.reserve(&[(Arc::clone(&b), 1, 10)], start);
    assert!(b_alone >= both, "{b_alone:?} {both:?}");
}

#[test]
fn climb_is_quick_below_the_ceiling_slow_near_it_and_quick_past_it() {
    // From 0.5, throttled last at 0.8: quick to 0.76, slow to 0.84, quick on.
    let (quick, slow) = (CLIMB_PER_SECOND, PROBE_PER_SECOND);
    assert!(close(climb(0.5, 0.8, 0.1), 0.5 + 0.1 * quick));
    let to_near = 0.26 / quick;
    assert!(close(climb(0.5, 0.8, to_near + 0.1), 0.76 + 0.1 * slow));
    let to_past = to_near + 0.08 / slow;
    assert!(close(climb(0.5, 0.8, to_past + 0.1), 0.84 + 0.1 * quick));
    assert_eq!(climb(0.5, 0.8, 100.0), 1.0);
    assert_eq!(climb(1.0, 1.0, 1.0), 1.0);
}

#[test]
fn a_throttle_takes_off_at_most_thirty_percent_then_the_rate_climbs_back_within_seconds() {
    let limiter = ShardLimiter::default();
    let start = Instant::now();
    let a = shard("a");
    limiter.outcome(&a, 10, 10, start);
    assert_eq!(limiter.factor("a"), DECREASE);
    // Requests that were in flight come back throttled too: one signal, and no climb while the
    // shard refuses everything.
    limiter.outcome(&a, 10, 10, start + Duration::from_millis(300));
    assert_eq!(limiter.factor("a"), DECREASE);
    // Then calls are accepted: the climb goes at the pace of the share accepted since the
    // decrease (990 of 1,000), quickly to 95% of where it was throttled, then slower.
    limiter.outcome(&a, 990, 0, start + Duration::from_millis(400));
    let at_400 = climb(DECREASE, 1.0, 0.1 * 0.99);
    assert!(
        close(limiter.factor("a"), at_400),
        "{}",
        limiter.factor("a")
    );
    let at = |millis| factor_at(&limiter, &a, start + Duration::from_millis(millis));
    assert!(close(at(1000), climb(at_400, 1.0, 0.6 * 0.99)));
    assert_eq!(at(2000), 1.0);
}

#[test]
fn a_shard_refusing_everything_for_long_goes_down_to_the_floor() {
    let limiter = ShardLimiter::default();
    let start = Instant::now();
    let a = shard("a");
    for step in 0..40 {
        limiter.outcome(&a, 10, 10, start + Duration::from_millis(500 * step));
    }
    assert!(
        close(limiter.factor("a"), MIN_FACTOR),
        "{}",
        limiter.factor("a")
    );
}

#[test]
fn a_partly_refused_shard_slows_by_the_share_refused_since_the_last_decrease() {
    let limiter = ShardLimiter::default();
    let start = Instant::now();
    let a = shard("a");
    // 75 entries accepted, then a call with 25 refused: a quarter refused.
    limiter.outcome(&a, 75, 0, start);
    limiter.outcome(&a, 25, 25, start + Duration::from_millis(10));
    assert!(close(limiter.factor("a"), 0.75), "{}", limiter.factor("a"));
    // Within the interval, refusals only accumulate, and the rate climbs at the pace of the share
    // accepted since the decrease (27 of 30, over 0.39 s).
    limiter.outcome(&a, 30, 3, start + Duration::from_millis(400));
    let at_400 = climb(0.75, 1.0, 0.39 * 0.9);
    assert!(
        close(limiter.factor("a"), at_400),
        "{}",
        limiter.factor("a")
    );
    // After it, one more refusal: 4 of 40 since the last decrease, x0.9, taken off the rate
    // climbed since (at 90% pace over 0.62 s).
    let before = climb(at_400, 1.0, 0.62 * 0.9) * 0.9;
    limiter.outcome(&a, 10, 1, start + Duration::from_millis(1020));
    assert!(
        close(limiter.factor("a"), before),
        "{}",
        limiter.factor("a")
    );
    // Most refused: down by 30%, not more.
    let b = shard("b");
    limiter.outcome(&b, 10, 9, start);
    assert_eq!(limiter.factor("b"), DECREASE);
    // Few refused: the gentlest step.
    let c = shard("c");
    limiter.outcome(&c, 500, 1, start);
    assert_eq!(limiter.factor("c"), GENTLEST_DECREASE);
    // Nothing refused: no change.
    let d = shard("d");
    limiter.outcome(&d, 500, 0, start);
    assert_eq!(limiter.factor("d"), 1.0);
}

proptest! {
    /// Over any sequence of reservations, what is let through by time t never exceeds the
    /// burst plus the rate times t.
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
            prop_assert!(records as f64 <= RECORDS_RATE * (BURST_SECONDS + elapsed) + 1e-6);
            prop_assert!(bytes as f64 <= BYTES_RATE * (BURST_SECONDS + elapsed) + 1e-3);
            now = sent_at;
        }
    }

    /// Callers reserving at any pace (several may wait at once), with lumps of any size up to
    /// half the limit: no span of one second holds more than the guard's share of the limit,
    /// unless it holds a single send.
    #[test]
    fn no_second_holds_more_than_the_guard(calls in proptest::collection::vec((1u64..500, 0u64..520_000, 0u64..200), 1..150)) {
        let limiter = ShardLimiter::default();
        let start = Instant::now();
        let a = shard("a");
        let mut now = start;
        let mut sends = Vec::new();
        for (n, b, gap_ms) in calls {
            now += Duration::from_millis(gap_ms);
            let wait = limiter.reserve(&[(Arc::clone(&a), n, b)], now);
            sends.push((now + wait, n as f64, b as f64));
        }
        for (i, (from, _, _)) in sends.iter().enumerate() {
            let span: Vec<_> = sends[i..]
                .iter()
                .filter(|(at, _, _)| at.duration_since(*from) <= Duration::from_secs(1))
                .collect();
            let records: f64 = span.iter().map(|s| s.1).sum();
            let bytes: f64 = span.iter().map(|s| s.2).sum();
            prop_assert!(
                span.len() == 1
                    || (records <= SHARD_RECORDS_PER_SECOND * GUARD_SHARE + 1e-6
                        && bytes <= SHARD_BYTES_PER_SECOND * GUARD_SHARE + 1e-3),
                "{} sends, {records} records, {bytes} bytes from {i}", span.len()
            );
        }
    }
}
