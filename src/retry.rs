//! Retry delays: exponential backoff with jitter, from the `backoff` crate.
//!
//! `backoff` is flagged unmaintained upstream, so it is used only here: the
//! rest of the code asks a [`Backoff`] for the next delay and never names the
//! crate, and swapping the implementation touches this file alone.

use std::time::Duration;

use backoff::backoff::Backoff as _;
use backoff::{ExponentialBackoff, ExponentialBackoffBuilder};

/// Fraction by which each delay is randomised either way, so many clients
/// failing together do not retry in lockstep. 0.5 is the `backoff` crate's
/// own default and the common choice.
const JITTER: f64 = 0.5;
/// Growth of the delay per failure.
const MULTIPLIER: f64 = 2.0;

/// Delays growing from `initial` to `max` with jitter; never gives up by
/// itself (callers bound attempts or elapsed time).
#[derive(Debug)]
pub struct Backoff(ExponentialBackoff);

impl Backoff {
    /// A backoff starting at `initial` and capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self(
            ExponentialBackoffBuilder::new()
                .with_initial_interval(initial)
                .with_max_interval(max.max(initial))
                .with_randomization_factor(JITTER)
                .with_multiplier(MULTIPLIER)
                .with_max_elapsed_time(None)
                .build(),
        )
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // With no max elapsed time the crate always yields a delay; fall back
        // to the cap rather than retrying at once if that ever changes.
        self.0.next_backoff().unwrap_or(self.0.max_interval)
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.0.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_within_bounds() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut backoff = Backoff::new(initial, max);
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(
            delays[0] >= initial.mul_f64(1.0 - JITTER)
                && delays[0] <= initial.mul_f64(1.0 + JITTER)
        );
        assert!(delays.iter().all(|d| *d <= max.mul_f64(1.0 + JITTER)));
        assert!(delays[8] > delays[0]);
        backoff.reset();
        assert!(backoff.next_delay() <= initial.mul_f64(1.0 + JITTER));
    }
}
