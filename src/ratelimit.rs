//! Token buckets per key (a user id), for what clients may do on their own: publish to a group
//! topic, send a direct message. Per node: a client spread over N nodes gets N times the rate,
//! which bounds abuse without a round trip to Redis on every frame (documented in docs/topics.md).
//! And `SessionRate`, a per-session limit kept inline in the session's task: of
//! `subscribe`/`unsubscribe` frames (refused past it) and of WebSocket control frames (paced:
//! the session waits before reading more).

use parking_lot::Mutex;
use std::collections::HashMap;
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
        let mut map = self.buckets.lock();
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

/// A limit on one session's own commands (`subscribe`/`unsubscribe`: contract §7): `per_second`
/// sustained with bursts of `burst`, exactly a token bucket's answers, kept in 8 bytes because
/// every open socket carries one (an idle socket costs ~7.8 KiB in all; a `TokenBuckets` entry
/// would be a map slot and a lock per session). It is GCRA: the one number is the theoretical
/// arrival time of the next command (microseconds since the process's epoch); a command may
/// pass while that time is at most `burst - 1` intervals ahead of now.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionRate {
    next_us: u64,
}

impl SessionRate {
    /// Takes one command, or says how long until one would pass. The rate and burst are passed
    /// in (from the settings), not stored per session.
    pub fn take(&mut self, per_second: u32, burst: u32) -> Result<(), Duration> {
        self.take_at(epoch_us(), per_second, burst)
    }

    fn take_at(&mut self, now_us: u64, per_second: u32, burst: u32) -> Result<(), Duration> {
        let interval = 1_000_000 / u64::from(per_second.max(1));
        let tolerance = interval * u64::from(burst.max(1) - 1);
        let next = self.next_us.max(now_us);
        let ahead = next - now_us;
        if ahead > tolerance {
            return Err(Duration::from_micros(ahead - tolerance));
        }
        self.next_us = next + interval;
        Ok(())
    }

    /// Counts one that already passed, whatever the budget, and says how long until the next
    /// would (zero while the burst lasts): for a limit kept by waiting before reading more
    /// rather than by refusing (the WebSocket session's control frames). A caller that waits
    /// that long lets at most `burst + per_second × t` through in any `t`.
    pub fn pace(&mut self, per_second: u32, burst: u32) -> Duration {
        self.pace_at(epoch_us(), per_second, burst)
    }

    fn pace_at(&mut self, now_us: u64, per_second: u32, burst: u32) -> Duration {
        let interval = 1_000_000 / u64::from(per_second.max(1));
        let tolerance = interval * u64::from(burst.max(1) - 1);
        self.next_us = self.next_us.max(now_us) + interval;
        Duration::from_micros((self.next_us - now_us).saturating_sub(tolerance))
    }
}

/// Microseconds since the first call in this process: a `u64` instead of an `Instant` (16 bytes)
/// in every `SessionRate`, and zero is "long ago" for a fresh one.
fn epoch_us() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
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

    /// The session limiter answers like a token bucket of `burst` refilled at `per_second`:
    /// the burst at once, then one per interval, never more than the burst after a pause.
    #[test]
    fn a_session_rate_allows_the_burst_then_the_rate() {
        let mut r = SessionRate::default();
        let t0 = 5_000_000; // any time after the epoch
        for i in 0..20 {
            assert!(r.take_at(t0, 10, 20).is_ok(), "burst {i}");
        }
        let wait = r.take_at(t0, 10, 20).expect_err("the burst is spent");
        assert_eq!(wait, Duration::from_millis(100));
        // Refused commands cost nothing: still one per 100 ms.
        assert!(r.take_at(t0 + 99_999, 10, 20).is_err());
        assert!(r.take_at(t0 + 100_000, 10, 20).is_ok());
        assert!(r.take_at(t0 + 100_000, 10, 20).is_err());
        // A long pause refills only up to the burst.
        let later = t0 + 60_000_000;
        for i in 0..20 {
            assert!(r.take_at(later, 10, 20).is_ok(), "second burst {i}");
        }
        assert!(r.take_at(later, 10, 20).is_err());
        assert_eq!(std::mem::size_of::<SessionRate>(), 8);
    }

    /// Paced, a session is told to wait once its burst is spent, one interval per unit, and
    /// after a pause has its burst again, never more.
    #[test]
    fn pacing_lets_the_burst_through_then_one_per_interval() {
        let mut r = SessionRate::default();
        let t0 = 5_000_000;
        for i in 0..19 {
            assert_eq!(r.pace_at(t0, 10, 20), Duration::ZERO, "burst {i}");
        }
        assert_eq!(r.pace_at(t0, 10, 20), Duration::from_millis(100));
        // Waited as told: one more, then the same wait again.
        assert_eq!(r.pace_at(t0 + 100_000, 10, 20), Duration::from_millis(100));
        // A caller that did not wait is told to wait longer (every unit counts).
        assert_eq!(r.pace_at(t0 + 100_000, 10, 20), Duration::from_millis(200));
        let later = t0 + 60_000_000;
        for i in 0..19 {
            assert_eq!(r.pace_at(later, 10, 20), Duration::ZERO, "second burst {i}");
        }
        assert_eq!(r.pace_at(later, 10, 20), Duration::from_millis(100));
    }

    #[test]
    fn a_burst_of_one_is_the_rate_alone() {
        let mut r = SessionRate::default();
        assert!(r.take_at(1_000, 2, 1).is_ok());
        assert_eq!(r.take_at(1_000, 2, 1), Err(Duration::from_millis(500)));
        assert!(r.take_at(501_000, 2, 1).is_ok());
    }
}
