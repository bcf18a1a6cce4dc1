//! Exponential backoff with full jitter.
//!
//! `backon` provides the capped exponential schedule (min, doubling, max, no limit on attempts);
//! each delay is then drawn uniformly from `[0, step]` ("full jitter"), which spreads retries of many
//! shippers hitting one throttled stream better than backon's own jitter (`[step, 2 * step)`).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rand::RngExt;

/// Validated backoff bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    pub fn new(min_delay: Duration, max_delay: Duration) -> Result<RetryPolicy, String> {
        if min_delay.is_zero() || min_delay > max_delay {
            return Err(format!(
                "backoff needs 0 < min ({min_delay:?}) <= max ({max_delay:?})"
            ));
        }
        Ok(RetryPolicy {
            min_delay,
            max_delay,
        })
    }

    pub fn backoff(&self) -> Backoff {
        let steps = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .without_max_times()
            .build();
        Backoff {
            steps,
            max_delay: self.max_delay,
        }
    }
}

/// An endless sequence of retry delays.
#[derive(Debug)]
pub struct Backoff {
    steps: ExponentialBackoff,
    max_delay: Duration,
}

impl Backoff {
    /// The current step (before jitter), then the jittered delay to wait.
    pub fn next_step(&mut self) -> (Duration, Duration) {
        // Without a limit on attempts the schedule never ends; max_delay is the fallback regardless.
        let step = self
            .steps
            .next()
            .unwrap_or(self.max_delay)
            .min(self.max_delay);
        let delay = step.mul_f64(rand::rng().random_range(0.0..=1.0));
        (step, delay)
    }

    pub fn next_delay(&mut self) -> Duration {
        self.next_step().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Steps start at min, never shrink, never pass max; every delay lies in [0, step].
        #[test]
        fn delays_stay_within_bounds(min_ms in 1u64..2_000, extra_ms in 0u64..60_000, attempts in 1usize..80) {
            let policy = RetryPolicy::new(Duration::from_millis(min_ms), Duration::from_millis(min_ms + extra_ms)).unwrap();
            let mut backoff = policy.backoff();
            let mut previous = Duration::ZERO;
            for attempt in 0..attempts {
                let (step, delay) = backoff.next_step();
                if attempt == 0 {
                    prop_assert_eq!(step, policy.min_delay);
                }
                prop_assert!(step >= previous);
                prop_assert!(step <= policy.max_delay);
                prop_assert!(delay <= step);
                previous = step;
            }
        }
    }

    #[test]
    fn reaches_and_holds_the_maximum() {
        let policy = RetryPolicy::default();
        let mut backoff = policy.backoff();
        let steps: Vec<Duration> = (0..20).map(|_| backoff.next_step().0).collect();
        assert_eq!(steps[0], Duration::from_millis(100));
        // backon multiplies in f32, so compare whole milliseconds.
        assert_eq!(steps[1].as_millis(), 200);
        assert_eq!(*steps.last().unwrap(), Duration::from_secs(30));
    }

    #[test]
    fn invalid_bounds_are_refused() {
        assert!(RetryPolicy::new(Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(RetryPolicy::new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
    }
}
