//! Handshake admission: how many WebSocket handshakes a node works on at once, and how many more
//! wait for a turn.
//!
//! When a node dies, all its clients resume on the survivors within a second; each join costs a
//! handshake, a token check, an actor and a catch-up read, and thousands at once starve the HTTP
//! API on the same cores (a REST call waits behind every handshake its worker holds). So at most
//! `NOTIFYD_WS_MAX_JOINING` handshakes are worked on at once, each from its request until its
//! catch-up read is queued (`UserActor::join`): the CPU part of a join. Its wait for the
//! database takes no turn; the catch-up batcher's queue bounds those.
//!
//! One more waits for a turn, in arrival order, once the checks that need no database passed
//! (origin, token, `since`, socket limits: `gateway::ws`), holding its connection and its socket
//! count but no actor and no database work: up to `NOTIFYD_WS_JOIN_QUEUE` of them, each at most
//! `NOTIFYD_WS_JOIN_WAIT`. Only past that is a handshake refused (the caller closes it with 1013
//! and a jittered `retry_after`). Refusing at once instead cost twice: every refused client came
//! back with a whole new handshake, and its 1–5 s `retry_after` left the node idle while refused
//! clients slept (a 15,000-client storm on 2 cores made 13,103 refusals and took 11.7 s to get
//! everyone back; docs/benchmarks.md). At shutdown (`close`) every waiting handshake is refused
//! at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

pub struct Admission {
    /// Handshakes worked on at once (`NOTIFYD_WS_MAX_JOINING`); closed when the node shuts down.
    joining: Arc<Semaphore>,
    /// Handshakes waiting for a turn now, at most `queue`.
    waiting: AtomicUsize,
    queue: usize,
    wait: Duration,
}

/// Why a handshake got no turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue was full: refused at once.
    QueueFull,
    /// It waited `NOTIFYD_WS_JOIN_WAIT` without a turn.
    WaitedTooLong,
    /// The node is shutting down (`close`).
    Closing,
}

impl Refused {
    /// The `reason` label of `notifyd_ws_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::QueueFull => "join_queue_full",
            Refused::WaitedTooLong => "join_wait_expired",
            Refused::Closing => "shutting_down",
        }
    }
}

/// A waiting handshake's place in the queue, given back however the wait ends (a turn, the
/// bound, shutdown, or the handler's future being dropped).
struct Place<'a>(&'a Admission);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("notifyd_ws_join_waiting").decrement(1.0);
    }
}

impl Admission {
    pub fn new(max_joining: usize, queue: usize, wait: Duration) -> Self {
        Admission {
            joining: Arc::new(Semaphore::new(max_joining.max(1))),
            waiting: AtomicUsize::new(0),
            queue,
            wait,
        }
    }

    /// A turn to work on a handshake (held until its catch-up read is queued), at once or after a wait
    /// in arrival order (tokio's semaphore hands a freed permit to the longest waiter).
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, Refused> {
        match self.joining.clone().try_acquire_owned() {
            Ok(turn) => return Ok(turn),
            Err(TryAcquireError::Closed) => return Err(Refused::Closing),
            Err(TryAcquireError::NoPermits) => {}
        }
        let place = self.enter().ok_or(Refused::QueueFull)?;
        let turn = tokio::time::timeout(self.wait, self.joining.clone().acquire_owned()).await;
        drop(place);
        match turn {
            Ok(Ok(turn)) => Ok(turn),
            Ok(Err(_closed)) => Err(Refused::Closing),
            Err(_elapsed) => Err(Refused::WaitedTooLong),
        }
    }

    /// Shutdown: every waiting handshake is refused now, and so is every later one.
    pub fn close(&self) {
        self.joining.close();
    }

    fn enter(&self) -> Option<Place<'_>> {
        let queue = self.queue;
        self.waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < queue).then_some(n + 1)
            })
            .ok()?;
        metrics::gauge!("notifyd_ws_join_waiting").increment(1.0);
        Some(Place(self))
    }

    /// Handshakes waiting for a turn now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Turns no handshake holds now.
    pub fn turns_free(&self) -> usize {
        self.joining.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn under_the_cap_a_handshake_is_admitted_at_once() {
        let a = Admission::new(2, 0, WAIT);
        let first = a.admit().await;
        let second = a.admit().await;
        assert!(first.is_ok() && second.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_with_no_queue_a_handshake_is_refused_at_once() {
        let a = Admission::new(1, 0, WAIT);
        let _held = a.admit().await.expect("the first turn");
        let started = tokio::time::Instant::now();
        assert_eq!(a.admit().await.err(), Some(Refused::QueueFull));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_handshake_gets_the_next_turn_in_arrival_order() {
        let a = Arc::new(Admission::new(1, 2, WAIT));
        let held = a.admit().await.expect("the first turn");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for who in ["second", "third"] {
            let (a, tx) = (a.clone(), tx.clone());
            tokio::spawn(async move {
                let turn = a.admit().await;
                let _ = tx.send((who, turn.is_ok()));
                // Each holds its turn a moment, so the next waits for it.
                tokio::time::sleep(Duration::from_millis(100)).await;
            });
            // Arrival order: the second is queued before the third starts.
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(a.waiting(), 2);
        drop(held);
        assert_eq!(rx.recv().await, Some(("second", true)));
        assert_eq!(rx.recv().await, Some(("third", true)));
        assert_eq!(a.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_queue_a_handshake_is_refused_at_once() {
        let a = Arc::new(Admission::new(1, 1, WAIT));
        let _held = a.admit().await.expect("the first turn");
        let queued = tokio::spawn({
            let a = a.clone();
            async move { a.admit().await.err() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(a.waiting(), 1);
        let started = tokio::time::Instant::now();
        assert_eq!(
            a.admit().await.err(),
            Some(Refused::QueueFull),
            "the queue holds one"
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        // The queued one is still waiting, then gives up at the bound.
        assert_eq!(queued.await.expect("joined"), Some(Refused::WaitedTooLong));
        assert_eq!(a.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_bound_and_gives_its_place_back() {
        let a = Admission::new(1, 4, WAIT);
        let _held = a.admit().await.expect("the first turn");
        let started = tokio::time::Instant::now();
        assert_eq!(a.admit().await.err(), Some(Refused::WaitedTooLong));
        assert_eq!(started.elapsed(), WAIT);
        assert_eq!(a.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_leaves_while_waiting_gives_its_place_back() {
        let a = Admission::new(1, 1, WAIT);
        let _held = a.admit().await.expect("the first turn");
        let gone = tokio::time::timeout(Duration::from_millis(50), a.admit()).await;
        assert!(gone.is_err(), "still waiting when dropped");
        assert_eq!(a.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_refuses_the_waiting_at_once_and_everyone_after() {
        let a = Arc::new(Admission::new(1, 4, WAIT));
        let _held = a.admit().await.expect("the first turn");
        let queued = tokio::spawn({
            let a = a.clone();
            async move { a.admit().await.err() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let started = tokio::time::Instant::now();
        a.close();
        assert_eq!(queued.await.expect("joined"), Some(Refused::Closing));
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(a.admit().await.err(), Some(Refused::Closing));
        assert_eq!(a.waiting(), 0);
    }
}
