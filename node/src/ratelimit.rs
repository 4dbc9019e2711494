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
        if self.is_unlimited() {
            return Ok(());
        }
        if self.buckets.len() >= MAX_KEYS && !self.buckets.contains_key(key) {
            let (rate, burst) = (self.per_second, self.burst);
            self.buckets
                .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
            if self.buckets.len() >= MAX_KEYS {
                return Err(Duration::from_secs(1));
            }
        }
        let b = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.last = now;
        let need = f64::from(n);
        if b.tokens >= need {
            b.tokens -= need;
            Ok(())
        } else {
            let wait = (need.min(self.burst) - b.tokens) / self.per_second;
            Err(Duration::from_secs_f64(wait.max(0.001)))
        }
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
    }
}
