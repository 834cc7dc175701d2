//! Intake: which of a worker's new connections it starts on first.
//!
//! Every connection an HTTP worker accepts is a task on that worker's one queue, and a task
//! that is woken (a REST call whose database answer came back) waits behind every task queued
//! before it. When a node dies, its clients' thousands of handshakes reach a survivor within a
//! second; accepted as fast as the kernel hands them over, each worker queued thousands of
//! them at once, and a REST call on the same worker waited behind them at each of its steps
//! (POST p99 of 137–265 ms on a 2-core survivor of a 15,000-client storm, while the median
//! stayed at 3–5 ms; docs/benchmarks.md).
//!
//! So before a worker starts on a new connection, it looks at (peeks, does not read) the
//! connection's first bytes. A REST call or a probe (`/api/`, `/healthz`, `/readyz`,
//! `/metrics`) starts at once. Anything else, WebSocket handshakes above all, takes a turn:
//! `TURNS` per worker, each held until the worker's scheduler next looks at the network (a
//! round of at most 61 tasks on actix's single-threaded workers), so at most that many such
//! connections enter per round and the rest wait, parked, for a turn in arrival order. They
//! still flow as fast as the worker turns: a quiet worker takes in thousands per second. What a
//! handshake costs once its request was read is bounded by admission (`admission`).
//!
//! This is a priority for well-behaved traffic, not a defence: only a connection's first
//! request is looked at (a handshake sent on a keep-alive connection after a REST call is not),
//! and what bounds a hostile client is elsewhere (admission, socket caps, rate limits).

use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Connections other than REST calls that a worker takes in per round of its scheduler.
pub const TURNS: usize = 16;

/// How long a new connection's first bytes are waited for before it is started on anyway
/// (unlooked-at: the HTTP layer's own request timeout then applies).
pub const FIRST_BYTES_WAIT: Duration = Duration::from_secs(1);

/// How long a connection waits for a turn at most; then it is started on without one, so the
/// intake never adds more than this to a handshake (the client's own connect timeout and
/// `NOTIFYD_WS_JOIN_WAIT` come after it).
pub const TURN_WAIT: Duration = Duration::from_secs(1);

/// Paths whose requests start at once: the REST API and the probes.
const AT_ONCE: [&[u8]; 4] = [b"/api/", b"/healthz", b"/readyz", b"/metrics"];

/// Enough of a request line to tell: the longest method, a space, the longest prefix.
const LOOK: usize = 24;

/// One worker's intake (each worker has its own: a turn is a place in that worker's rounds).
pub struct Intake {
    turns: Semaphore,
}

impl Default for Intake {
    fn default() -> Self {
        Intake::new(TURNS)
    }
}

impl Intake {
    pub fn new(turns: usize) -> Self {
        Intake {
            turns: Semaphore::new(turns.max(1)),
        }
    }

    /// Returns when the worker may start on `io`: at once for a REST call, after a turn for
    /// anything else.
    pub async fn enter(&self, io: &TcpStream) {
        let mut first = [0u8; LOOK];
        let n = match tokio::time::timeout(FIRST_BYTES_WAIT, io.peek(&mut first)).await {
            Ok(Ok(n)) => n,
            // Silent or broken: the HTTP layer answers it (or times it out) as it would.
            _ => return,
        };
        if starts_at_once(&first[..n]) {
            return;
        }
        let asked = Instant::now();
        let turn = tokio::time::timeout(TURN_WAIT, self.turns.acquire()).await;
        if let Ok(Ok(_turn)) = turn {
            // Held until the scheduler's next look at the network: the next waiting connection
            // is woken only as this one is started on.
            tokio::task::yield_now().await;
        }
        metrics::histogram!("notifyd_http_intake_wait_seconds")
            .record(asked.elapsed().as_secs_f64());
    }
}

/// Whether a connection whose first bytes are `first` starts at once: a request line for one
/// of the `AT_ONCE` paths, or as much of one as has arrived (a method and a space, then a
/// prefix of such a path; or a method not finished yet).
pub fn starts_at_once(first: &[u8]) -> bool {
    let Some(space) = first.iter().position(|&b| b == b' ') else {
        // No space yet: a method still arriving, or not HTTP at all.
        return !first.is_empty() && first.iter().all(u8::is_ascii_uppercase);
    };
    let (method, path) = (&first[..space], &first[space + 1..]);
    if method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) {
        return false;
    }
    AT_ONCE.iter().any(|p| {
        let n = p.len().min(path.len());
        path[..n] == p[..n]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[test]
    fn rest_calls_and_probes_start_at_once() {
        assert!(starts_at_once(b"POST /api/v1/messages HTTP/1.1\r\n"));
        assert!(starts_at_once(b"GET /api/v1/me/unread-count HTTP/1.1\r\n"));
        assert!(starts_at_once(b"DELETE /api/v1/messages/x HTTP/1.1"));
        assert!(starts_at_once(b"GET /healthz HTTP/1.1\r\n"));
        assert!(starts_at_once(b"GET /metrics HTTP/1.1\r\n"));
        // Not all of it has arrived yet: it may still be one.
        assert!(starts_at_once(b"POST /ap"));
        assert!(starts_at_once(b"POS"));
    }

    #[test]
    fn handshakes_pages_and_anything_else_take_a_turn() {
        assert!(!starts_at_once(b"GET /ws?token=abc HTTP/1.1\r\n"));
        assert!(!starts_at_once(b"HEAD /ws?token=abc HTTP/1.1\r\n"));
        assert!(!starts_at_once(b"GET /w"));
        assert!(!starts_at_once(b"GET http://x/ws?token=a HTTP/1.1\r\n"));
        assert!(!starts_at_once(b"\r\nGET /ws HTTP/1.1\r\n"));
        assert!(!starts_at_once(b"GET /%77s HTTP/1.1\r\n"));
        assert!(!starts_at_once(b"GET /demo HTTP/1.1\r\n"));
        assert!(!starts_at_once(b"GET /api-docs/openapi.json HTTP/1.1\r\n"));
        assert!(!starts_at_once(b"PRI * HTTP/2.0\r\n"));
        assert!(!starts_at_once(b"\x16\x03\x01"));
        assert!(!starts_at_once(b""));
    }

    /// Counts the rounds of the worker's queue: it runs once per round, queued again behind
    /// whatever was woken meanwhile, until `done`.
    struct RoundCounter {
        round: Rc<Cell<usize>>,
        done: Rc<Cell<bool>>,
    }

    impl std::future::Future for RoundCounter {
        type Output = ();
        fn poll(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<()> {
            if self.done.get() {
                return std::task::Poll::Ready(());
            }
            self.round.set(self.round.get() + 1);
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }

    /// The connections, `sends[i]` written on the i-th before the worker accepts any, each
    /// entering on its own task of one single-threaded queue, as on an HTTP worker. Returns,
    /// in the order they entered, each one's index and the round of the worker's queue it
    /// entered in (counted only with `rounds`: the counter keeps the worker busy).
    async fn entries(intake: Intake, sends: &[&'static [u8]], rounds: bool) -> Vec<(usize, usize)> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut clients = vec![];
        for bytes in sends {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(bytes).await.expect("write");
            clients.push(c);
        }
        let round = Rc::new(Cell::new(0));
        let done = Rc::new(Cell::new(false));
        let counter = rounds.then(|| {
            tokio::task::spawn_local(RoundCounter {
                round: round.clone(),
                done: done.clone(),
            })
        });
        let intake = Rc::new(intake);
        let order = Rc::new(RefCell::new(vec![]));
        let mut tasks = vec![];
        for i in 0..sends.len() {
            let (io, _) = listener.accept().await.expect("accept");
            let (intake, order, round) = (intake.clone(), order.clone(), round.clone());
            tasks.push(tokio::task::spawn_local(async move {
                intake.enter(&io).await;
                order.borrow_mut().push((i, round.get()));
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        done.set(true);
        if let Some(counter) = counter {
            counter.await.expect("counter");
        }
        order.take()
    }

    fn on_one_worker<T>(f: impl std::future::Future<Output = T>) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    const WS: &[u8] = b"GET /ws?token=t HTTP/1.1\r\nUpgrade: websocket\r\n\r\n";
    const POST: &[u8] = b"POST /api/v1/messages HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";

    /// Ten handshakes arrived before a REST call. With two turns, the REST call is let in
    /// first, then every handshake, at most two per round of the worker. Without the intake
    /// the REST call would be started on last, behind every handshake, all in one round.
    #[test]
    fn a_rest_call_goes_ahead_of_the_handshakes_that_arrived_before_it() {
        let mut sends = vec![WS; 10];
        sends.push(POST);
        let entered = on_one_worker(entries(Intake::new(2), &sends, true));
        assert_eq!(entered[0].0, 10, "{entered:?}");
        let mut handshakes: Vec<usize> = entered[1..].iter().map(|e| e.0).collect();
        handshakes.sort();
        assert_eq!(handshakes, (0..10).collect::<Vec<_>>(), "{entered:?}");
        for (_, round) in &entered[1..] {
            let in_round = entered[1..].iter().filter(|e| e.1 == *round).count();
            assert!(
                in_round <= 2,
                "{in_round} handshakes in one round: {entered:?}"
            );
        }
    }

    /// A connection that sends nothing is not held back for good: after `FIRST_BYTES_WAIT` it
    /// is started on unlooked-at (the HTTP layer's request timeout then closes it), and it does
    /// not hold up a handshake behind it.
    #[test]
    fn a_silent_connection_is_started_on_after_the_first_bytes_wait() {
        let (entered, took) = on_one_worker(async {
            let t = Instant::now();
            let entered = entries(Intake::new(1), &[b"", WS], false).await;
            (entered, t.elapsed())
        });
        let order: Vec<usize> = entered.iter().map(|e| e.0).collect();
        assert_eq!(order, vec![1, 0]);
        assert!(took >= FIRST_BYTES_WAIT, "{took:?}");
    }
}
