//! Token buckets per key (a peer, an agent): a sustained rate with bursts of half a minute.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Most keys tracked; when full, buckets that have refilled completely are forgotten.
pub const MAX_KEYS: usize = 4096;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Rate limits per key. `per_minute == 0` means unlimited.
#[derive(Debug)]
pub struct RateLimiter<K> {
    per_second: f64,
    burst: f64,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_minute` sustained, bursts of `per_minute / 2` (at least 1).
    pub fn per_minute(per_minute: u32) -> Self {
        Self {
            per_second: f64::from(per_minute) / 60.0,
            burst: (f64::from(per_minute) / 2.0).max(1.0),
            buckets: HashMap::new(),
        }
    }

    /// Whether the limiter limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.per_second == 0.0
    }

    /// Takes `n` tokens for `key` at `now`; on refusal, how long until they are there.
    pub fn take(&mut self, key: &K, n: u32, now: Instant) -> Result<(), Duration> {
        let (rate, burst) = (self.per_second, self.burst);
        let Some(b) = self.bucket(key, now) else {
            return Ok(());
        };
        let need = f64::from(n);
        if b.tokens >= need {
            b.tokens -= need;
            Ok(())
        } else {
            let wait = (need.min(burst) - b.tokens) / rate;
            Err(Duration::from_secs_f64(wait.max(0.001)))
        }
    }

    /// Takes as many of `n` tokens as there are (a prefix of a batch); when none, how long
    /// until one is there.
    pub fn take_up_to(&mut self, key: &K, n: u32, now: Instant) -> Result<u32, Duration> {
        let rate = self.per_second;
        let Some(b) = self.bucket(key, now) else {
            return Ok(n);
        };
        let k = (b.tokens.floor() as u32).min(n);
        if k == 0 && n > 0 {
            let wait = (1.0 - b.tokens) / rate;
            return Err(Duration::from_secs_f64(wait.max(0.001)));
        }
        b.tokens -= f64::from(k);
        Ok(k)
    }

    /// The refilled bucket of `key` (None when unlimited, or when too many keys are
    /// tracked, which is then treated as "limit reached" by giving an empty bucket).
    fn bucket(&mut self, key: &K, now: Instant) -> Option<&mut Bucket> {
        if self.is_unlimited() {
            return None;
        }
        if self.buckets.len() >= MAX_KEYS && !self.buckets.contains_key(key) {
            let (rate, burst) = (self.per_second, self.burst);
            self.buckets
                .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let (rate, burst) = (self.per_second, self.burst);
        let full = self.buckets.len() >= MAX_KEYS;
        let b = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: if full { 0.0 } else { burst },
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_sustained_rate() {
        let mut r = RateLimiter::per_minute(60);
        let t0 = Instant::now();
        for _ in 0..30 {
            assert!(r.take(&"a", 1, t0).is_ok());
        }
        let wait = r.take(&"a", 1, t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO, "{wait:?}");
        // Another key has its own bucket.
        assert!(r.take(&"b", 1, t0).is_ok());
        // One token a second comes back.
        assert!(r.take(&"a", 1, t0 + Duration::from_millis(1100)).is_ok());
        assert!(r.take(&"a", 1, t0 + Duration::from_millis(1100)).is_err());
        assert!(RateLimiter::per_minute(0).take(&"x", 1_000_000, t0).is_ok());
        // A batch gets the prefix there are tokens for.
        let mut r = RateLimiter::per_minute(120);
        assert_eq!(r.take_up_to(&"p", 100, t0), Ok(60));
        assert!(r.take_up_to(&"p", 5, t0).is_err());
        assert_eq!(r.take_up_to(&"p", 5, t0 + Duration::from_secs(1)), Ok(2));
    }
}
