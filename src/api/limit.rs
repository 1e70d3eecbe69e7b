//! Per-identity rate limiting: a token bucket for each authenticated subject.
//! A client over its rate gets 429 with `Retry-After`; nothing is decided.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Requests a subject may make per second, sustained.
pub const DEFAULT_RATE: f64 = 50.0;
/// Requests a subject may make at once.
pub const DEFAULT_BURST: f64 = 200.0;

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new(DEFAULT_RATE, DEFAULT_BURST)
    }
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter { rate: rate.max(0.001), burst: burst.max(1.0), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `subject`; `Err(seconds)` until the next token when empty.
    pub fn admit(&self, subject: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = crate::lock(&self.buckets);
        let (tokens, last) = buckets.entry(subject.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_the_subject_waits_and_others_do_not() {
        let limiter = RateLimiter::new(1.0, 3.0);
        assert!((0..3).all(|_| limiter.admit("alice").is_ok()));
        assert_eq!(limiter.admit("alice"), Err(1));
        assert!(limiter.admit("bob").is_ok());
    }
}
