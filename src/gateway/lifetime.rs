//! What ends a session besides its client, whatever the transport: a client that stopped
//! reading (no answer to the heartbeat's pings for the liveness window) and a token that
//! expired (unless renewed in-band). One timer serves both (it fires at whichever comes first):
//! a task per socket carries one, not two. The transport asks `deadline` when to wake, calls
//! `tick` then, sends the ping `tick` asks for, and reports what shows the client reads
//! (`answered` for a WebSocket pong; a transport without pongs calls `read_until` with when its
//! writes last drained).

use std::time::Duration;

use tokio::time::Instant;

use crate::wire::outbound::CloseWith;
use crate::wire::protocol::close;

/// Pings remembered for matching pongs (a slow but reading client may answer an older one).
const OUTSTANDING_PINGS: usize = 4;

/// Far enough in the future to stand for "never" (an anonymous session's token expiry).
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How long a client may go without answering a ping before it counts as not reading: two
/// missed heartbeats and half of the third.
pub fn liveness_window(heartbeat: Duration) -> Duration {
    heartbeat * 2 + heartbeat / 2
}

/// How long a closing session's last frames and close frame get to drain: the same time a live
/// client has to answer a ping.
pub fn close_grace(heartbeat: Duration) -> Duration {
    liveness_window(heartbeat)
}

/// What the transport does when the timer fires.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    /// Nothing yet: wait for the next `deadline`.
    Wait,
    /// Send a ping carrying this nonce (a pong must echo it).
    Ping(u64),
    /// End the session with this close.
    End(CloseWith),
}

pub struct Lifetime {
    heartbeat: Duration,
    next_ping: Instant,
    expires: Instant,
    last_read: Instant,
    pings: Pings,
}

impl Lifetime {
    /// `exp`: the token's (Unix seconds), `None` for an anonymous session.
    pub fn new(heartbeat: Duration, exp: Option<i64>) -> Self {
        let now = Instant::now();
        Lifetime {
            heartbeat,
            next_ping: now + heartbeat,
            expires: exp.map_or(now + NEVER, deadline_of),
            last_read: now,
            pings: Pings::default(),
        }
    }

    /// When the transport must call `tick` next: the next ping, the token's expiry, or the
    /// moment the liveness window since the last read passes (§7: closed *at* 2.5 heartbeats;
    /// checked only on ping ticks, a silent client got the whole third heartbeat).
    pub fn deadline(&self) -> Instant {
        self.next_ping
            .min(self.expires)
            .min(self.last_read + liveness_window(self.heartbeat))
    }

    /// A fresh token was accepted in-band: the session now ends at its `exp`.
    pub fn renewed(&mut self, exp: i64) {
        self.expires = deadline_of(exp);
    }

    /// A pong arrived: only one echoing a ping not yet answered shows the client read that
    /// far (unsolicited pongs prove nothing).
    pub fn answered(&mut self, payload: &[u8]) {
        if self.pings.answered(payload) {
            self.last_read = Instant::now();
        }
    }

    /// The client had read everything sent before `at` (for transports without pongs: SSE
    /// reports when its writes last drained).
    pub fn read_until(&mut self, at: Instant) {
        self.last_read = self.last_read.max(at);
    }

    /// The timer fired: the token may have expired, a ping may be due, or the client may have
    /// gone silent.
    pub fn tick(&mut self, now: Instant) -> Tick {
        if now >= self.expires {
            metrics::counter!("notifyd_ws_token_expired_total").increment(1);
            return Tick::End((close::TOKEN_EXPIRED, "token expired"));
        }
        if now.duration_since(self.last_read) >= liveness_window(self.heartbeat) {
            metrics::counter!("notifyd_ws_liveness_closed_total").increment(1);
            return Tick::End((close::POLICY, "missed heartbeats"));
        }
        if now < self.next_ping {
            return Tick::Wait;
        }
        self.next_ping += self.heartbeat;
        Tick::Ping(self.pings.push(rand::random::<u64>()))
    }
}

/// The instant the clock reads `exp` (Unix seconds), to the millisecond: a session never ends
/// before its token has expired (a reconnect with it is then refused).
fn deadline_of(exp: i64) -> Instant {
    let left_ms = exp.saturating_mul(1000) - chrono::Utc::now().timestamp_millis();
    Instant::now() + Duration::from_millis(left_ms.max(0) as u64)
}

/// The last `OUTSTANDING_PINGS` ping nonces not yet answered, oldest first (a slow but
/// reading client may answer an older one). Inline: no allocation per socket.
#[derive(Default)]
struct Pings {
    nonces: [u64; OUTSTANDING_PINGS],
    len: usize,
}

impl Pings {
    /// Remembers `nonce` (forgetting the oldest when full) and returns it.
    fn push(&mut self, nonce: u64) -> u64 {
        if self.len == OUTSTANDING_PINGS {
            self.nonces.copy_within(1.., 0);
            self.len -= 1;
        }
        self.nonces[self.len] = nonce;
        self.len += 1;
        nonce
    }

    /// Whether `payload` echoes a remembered nonce; that one and every older one are then
    /// forgotten.
    fn answered(&mut self, payload: &[u8]) -> bool {
        let Some(i) = self.nonces[..self.len]
            .iter()
            .position(|n| payload == n.to_be_bytes())
        else {
            return false;
        };
        self.nonces.copy_within(i + 1..self.len, 0);
        self.len -= i + 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_reading_client_is_pinged_every_heartbeat_and_stays() {
        let mut l = Lifetime::new(HB, None);
        for _ in 0..10 {
            tokio::time::advance(HB).await;
            let Tick::Ping(nonce) = l.tick(Instant::now()) else {
                panic!("a ping is due");
            };
            l.answered(&nonce.to_be_bytes());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_answers_nothing_is_ended_after_the_liveness_window() {
        let mut l = Lifetime::new(HB, None);
        let mut ticks = vec![];
        for _ in 0..4 {
            tokio::time::advance(HB).await;
            ticks.push(l.tick(Instant::now()));
        }
        assert!(matches!(ticks[..2], [Tick::Ping(_), Tick::Ping(_)]));
        assert_eq!(
            ticks[2],
            Tick::End((close::POLICY, "missed heartbeats")),
            "{ticks:?}"
        );
    }

    /// Drives `l`'s timer as a transport does (sleep until `deadline`, then `tick`, no client
    /// reading) until it ends the session; returns when, and why.
    async fn run_until_ended(l: &mut Lifetime) -> (Instant, CloseWith) {
        for _ in 0..100 {
            tokio::time::advance(l.deadline().saturating_duration_since(Instant::now())).await;
            if let Tick::End(why) = l.tick(Instant::now()) {
                return (Instant::now(), why);
            }
        }
        panic!("the timer keeps firing without ending the session");
    }

    /// Contract §7: "A session that has not read for 2.5 heartbeats is closed" — at 2.5, not
    /// at the next ping tick after it (the third heartbeat).
    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_ended_when_the_window_passes_not_at_the_next_ping() {
        let window = liveness_window(HB);
        let within = |since: Instant, at: Instant| {
            at - since >= window && at - since <= window + Duration::from_millis(1)
        };
        let start = Instant::now();
        let mut l = Lifetime::new(HB, None);
        let (ended_at, why) = run_until_ended(&mut l).await;
        assert_eq!(why, (close::POLICY, "missed heartbeats"));
        assert!(
            within(start, ended_at),
            "ended {:?} after the last read; the window is {window:?}",
            ended_at - start
        );
        // A client that answered: the window counts from its last answer.
        let mut l = Lifetime::new(HB, None);
        tokio::time::advance(HB).await;
        let Tick::Ping(nonce) = l.tick(Instant::now()) else {
            panic!("a ping is due");
        };
        tokio::time::advance(Duration::from_secs(1)).await;
        l.answered(&nonce.to_be_bytes());
        let answered = Instant::now();
        let (ended_at, _) = run_until_ended(&mut l).await;
        assert!(
            within(answered, ended_at),
            "ended {:?} after the last answer",
            ended_at - answered
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unsolicited_pongs_prove_nothing_but_a_transport_without_pongs_can_vouch() {
        let mut l = Lifetime::new(HB, None);
        for _ in 0..3 {
            tokio::time::advance(HB).await;
            l.answered(&7u64.to_be_bytes());
            if let Tick::End(_) = l.tick(Instant::now()) {
                break;
            }
        }
        assert!(matches!(l.tick(Instant::now()), Tick::End(_)));
        let mut l = Lifetime::new(HB, None);
        for _ in 0..10 {
            tokio::time::advance(HB).await;
            l.read_until(Instant::now());
            assert!(matches!(l.tick(Instant::now()), Tick::Ping(_)));
        }
        // Drains that stopped long ago do not keep it alive, however often they are reported.
        let stalled = Instant::now();
        for _ in 0..3 {
            tokio::time::advance(HB).await;
            l.read_until(stalled);
        }
        assert!(matches!(l.tick(Instant::now()), Tick::End(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_ends_the_session_at_its_exp_unless_renewed() {
        let exp = chrono::Utc::now().timestamp() + 15;
        let mut l = Lifetime::new(HB, Some(exp));
        assert!(l.deadline() <= Instant::now() + HB);
        l.renewed(exp + 3600);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(matches!(l.tick(Instant::now()), Tick::Ping(_)));
        l.renewed(chrono::Utc::now().timestamp() - 1);
        assert_eq!(
            l.tick(Instant::now()),
            Tick::End((close::TOKEN_EXPIRED, "token expired"))
        );
    }
}
