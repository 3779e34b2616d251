//! Retry delays: exponential with jitter, capped, and never shorter than the handler asks for,
//! unless the handler keeps a schedule of its own.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct BackoffPolicy {
    /// Delay after the first failure.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
        }
    }
}

/// When a job that failed runs again, as its handler asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDelay {
    /// After the worker's backoff.
    Backoff,
    /// After the backoff, but not before this (a receiver's `Retry-After`).
    AtLeast(Duration),
    /// After exactly this: the handler keeps a schedule of its own (a webhook's retry
    /// schedule), which the job's attempt count, counting database errors and lost leases too,
    /// must not stretch.
    Exactly(Duration),
}

impl RetryDelay {
    /// After the backoff, and not before `requested` when given.
    pub fn at_least(requested: Option<Duration>) -> Self {
        requested.map_or(Self::Backoff, Self::AtLeast)
    }
}

/// The delay before attempt `attempts + 1`, after `attempts` failures, as `asked`: `base ·
/// 2^(attempts-1)`, capped at `max`, times a random factor in [0.8, 1.2) so that failing jobs
/// spread out; at least what `asked` names, or exactly it.
pub fn retry_delay(policy: BackoffPolicy, attempts: i32, asked: RetryDelay) -> Duration {
    let requested = match asked {
        RetryDelay::Exactly(delay) => return delay,
        RetryDelay::Backoff => None,
        RetryDelay::AtLeast(delay) => Some(delay),
    };
    let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let exponential = policy
        .base
        .saturating_mul(2_u32.saturating_pow(exponent))
        .min(policy.max);
    let jittered = exponential.mul_f64(rand::rng().random_range(0.8..1.2));
    requested.map_or(jittered, |requested| jittered.max(requested))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_the_jitter_band_and_stop_at_the_cap() {
        let policy = BackoffPolicy::default();
        for (attempts, nominal) in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (20, 3600.0)] {
            let delay = retry_delay(policy, attempts, RetryDelay::Backoff).as_secs_f64();
            assert!(
                (nominal * 0.8..nominal * 1.2).contains(&delay),
                "{attempts}: {delay}"
            );
        }
    }

    #[test]
    fn a_requested_delay_is_honoured_when_longer() {
        let asked = RetryDelay::AtLeast(Duration::from_secs(120));
        let delay = retry_delay(BackoffPolicy::default(), 1, asked);
        assert_eq!(delay, Duration::from_secs(120));
    }

    #[test]
    fn an_exact_delay_is_kept_however_many_attempts_came_before() {
        let asked = RetryDelay::Exactly(Duration::from_secs(1));
        let delay = retry_delay(BackoffPolicy::default(), 12, asked);
        assert_eq!(delay, Duration::from_secs(1));
    }
}
