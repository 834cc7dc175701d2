//! Token buckets per key (a user id), for what clients may do on their own: publish to a group
//! topic, send a direct message. Per node: a client spread over N nodes gets N times the rate,
//! which bounds abuse without a round trip to Redis on every frame (documented in docs/topics.md).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys one limiter remembers at most. Past it, buckets that have refilled completely (they
/// hold no information) are forgotten; if every bucket is still draining, the new key is
/// refused rather than growing the map (counted as limited).
pub const MAX_KEYS: usize = 100_000;

/// Group publishes (`publish` frames) per user per node: sustained rate and burst.
pub const PUBLISH_PER_SECOND: f64 = 10.0;
pub const PUBLISH_BURST: f64 = 20.0;
/// Direct messages (`send` frames and `POST /api/v1/me/send`) per sender per node.
pub const DIRECT_PER_SECOND: f64 = 5.0;
pub const DIRECT_BURST: f64 = 20.0;

pub struct TokenBuckets {
    name: &'static str,
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl TokenBuckets {
    pub fn new(name: &'static str, per_second: f64, burst: f64) -> Self {
        TokenBuckets {
            name,
            per_second,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or says how long until one is there.
    pub fn take(&self, key: &str) -> Result<(), Duration> {
        self.take_at(key, Instant::now())
    }

    fn take_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= MAX_KEYS {
            let (rate, burst) = (self.per_second, self.burst);
            map.retain(|_, b| refill(*b, now, rate, burst) < burst);
            if map.len() >= MAX_KEYS {
                return Err(self.limited(Duration::from_secs(1)));
            }
        }
        let b = map.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = refill(*b, now, self.per_second, self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / self.per_second;
            Err(self.limited(Duration::from_secs_f64(wait)))
        }
    }

    fn limited(&self, retry_after: Duration) -> Duration {
        metrics::counter!("notifyd_rate_limited_total", "what" => self.name).increment(1);
        retry_after
    }
}

fn refill(b: Bucket, now: Instant, per_second: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    (b.tokens + elapsed * per_second).min(burst)
}

/// The node's limiters, one per kind of client action.
pub struct RateLimits {
    pub publish: TokenBuckets,
    pub direct: TokenBuckets,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            publish: TokenBuckets::new("publish", PUBLISH_PER_SECOND, PUBLISH_BURST),
            direct: TokenBuckets::new("direct", DIRECT_PER_SECOND, DIRECT_BURST),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst is allowed at once, then one token per 1/rate seconds; keys are independent.
    #[test]
    fn burst_then_rate() {
        let t = TokenBuckets::new("t", 2.0, 3.0);
        let now = Instant::now();
        for _ in 0..3 {
            assert!(t.take_at("a", now).is_ok());
        }
        let wait = t.take_at("a", now).expect_err("the burst is spent");
        assert!((wait.as_secs_f64() - 0.5).abs() < 0.01, "{wait:?}");
        assert!(
            t.take_at("b", now).is_ok(),
            "another key has its own bucket"
        );
        assert!(t.take_at("a", now + Duration::from_millis(500)).is_ok());
        assert!(t.take_at("a", now + Duration::from_millis(500)).is_err());
        // A long pause refills only up to the burst.
        let later = now + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(t.take_at("a", later).is_ok());
        }
        assert!(t.take_at("a", later).is_err());
    }
}
