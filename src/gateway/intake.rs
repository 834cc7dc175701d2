//! Intake: which of a worker's new connections it starts on first.
//!
//! Every connection an HTTP worker accepts is a task on that worker's one queue, and a task
//! that is woken (a REST call whose database answer came back) waits behind every task queued
//! before it. When a node dies, its clients' thousands of handshakes reach a survivor within a
//! second; accepted as fast as the kernel hands them over, each worker queued thousands of
//! them at once, and a REST call on the same worker waited behind all of them at each of its
//! waits (POST p99 of 100–700 ms on a 2-core survivor of a 15,000-client storm, while the
//! median stayed at 3–5 ms; docs/benchmarks.md).
//!
//! So a new connection's first request is looked at (peeked, not read) before the worker
//! starts on it. A WebSocket handshake (`GET /ws`) takes a turn: at most `TURNS` at a time per
//! worker, each held over one pass of the worker's queue, so the worker takes in at most that
//! many handshakes per pass and the rest wait, parked, in arrival order. Everything else (REST
//! calls, the web pages) starts at once. Handshakes still flow as fast as the worker gets
//! through its queue: a quiet worker passes thousands per second; a busy one takes in fewer.
//! What a handshake costs after its request was read is bounded by admission (`admission`).

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Handshakes a worker takes in per pass of its queue.
pub const TURNS: usize = 16;

/// How long a new connection's first bytes are waited for before it is started on anyway
/// (unclassified: the HTTP layer's own request timeout then applies).
pub const FIRST_BYTES_WAIT: Duration = Duration::from_secs(1);

/// The request line of a WebSocket handshake, as far as it is needed to tell.
const HANDSHAKE: &[u8] = b"GET /ws";

/// One worker's intake (each worker has its own: a turn is a place in that worker's queue).
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

    /// Returns when the worker may start on `io`: at once for anything but a WebSocket
    /// handshake; a handshake after its turn.
    pub async fn enter(&self, io: &TcpStream) {
        let mut first = [0u8; HANDSHAKE.len() + 1];
        let n = match tokio::time::timeout(FIRST_BYTES_WAIT, io.peek(&mut first)).await {
            Ok(Ok(n)) => n,
            // Silent or broken: the HTTP layer answers it (or times it out) as it would.
            _ => return,
        };
        if !is_handshake(&first[..n]) {
            return;
        }
        let asked = std::time::Instant::now();
        let Ok(_turn) = self.turns.acquire().await else {
            return;
        };
        // Held over one pass of the queue: the next waiting handshake is woken only when this
        // one is started on, so at most `TURNS` handshakes enter per pass.
        tokio::task::yield_now().await;
        metrics::histogram!("notifyd_ws_intake_wait_seconds").record(asked.elapsed().as_secs_f64());
    }
}

/// Whether `first` (a connection's first bytes) starts a WebSocket handshake: `GET /ws`
/// followed by the end of the path or its query, or as much of that as has arrived.
pub fn is_handshake(first: &[u8]) -> bool {
    if first.len() <= HANDSHAKE.len() {
        return HANDSHAKE.starts_with(first) && !first.is_empty();
    }
    first.starts_with(HANDSHAKE) && matches!(first[HANDSHAKE.len()], b' ' | b'?')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// `sends[i]`'s bytes are written on the i-th connection before the worker accepts any;
    /// returns the order in which the connections were let in, each entering on its own task of
    /// one single-threaded queue, as on an HTTP worker.
    async fn entry_order(intake: Intake, sends: &[&'static [u8]]) -> Vec<usize> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut clients = vec![];
        for bytes in sends {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(bytes).await.expect("write");
            clients.push(c);
        }
        let intake = Rc::new(intake);
        let order = Rc::new(RefCell::new(vec![]));
        let mut tasks = vec![];
        for i in 0..sends.len() {
            let (io, _) = listener.accept().await.expect("accept");
            let (intake, order) = (intake.clone(), order.clone());
            tasks.push(tokio::task::spawn_local(async move {
                intake.enter(&io).await;
                order.borrow_mut().push(i);
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        order.take()
    }

    fn on_one_worker<T>(f: impl std::future::Future<Output = T>) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    const WS: &[u8] = b"GET /ws?token=t HTTP/1.1\r\nUpgrade: websocket\r\n\r\n";
    const POST: &[u8] = b"POST /api/v1/messages HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";

    /// Ten handshakes arrived before a REST call; with two turns per pass, the REST call is let
    /// in first, and the handshakes after it, all of them, two per pass in arrival order (the
    /// order within a pass is the runtime's). Without the intake the REST call would be started
    /// on last, behind every handshake.
    #[test]
    fn a_rest_call_goes_ahead_of_the_handshakes_that_arrived_before_it() {
        let mut sends = vec![WS; 10];
        sends.push(POST);
        let order = on_one_worker(entry_order(Intake::new(2), &sends));
        assert_eq!(order[0], 10, "{order:?}");
        let handshakes = &order[1..];
        let mut all = handshakes.to_vec();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>(), "{order:?}");
        for (place, &i) in handshakes.iter().enumerate() {
            assert_eq!(place / 2, i / 2, "handshake {i} not in its pass: {order:?}");
        }
    }

    /// A connection that sends nothing is not held back for good: after `FIRST_BYTES_WAIT` it
    /// is started on unclassified (the HTTP layer's request timeout then closes it), and it
    /// does not hold up a handshake behind it.
    #[test]
    fn a_silent_connection_is_started_on_after_the_first_bytes_wait() {
        let started = on_one_worker(async {
            let t = tokio::time::Instant::now();
            let order = entry_order(Intake::new(1), &[b"", WS]).await;
            (order, t.elapsed())
        });
        assert_eq!(started.0, vec![1, 0]);
        assert!(started.1 >= FIRST_BYTES_WAIT, "{:?}", started.1);
    }

    #[test]
    fn a_websocket_request_line_is_a_handshake() {
        assert!(is_handshake(b"GET /ws?token=abc HTTP/1.1\r\n"));
        assert!(is_handshake(b"GET /ws HTTP/1.1\r\n"));
        // Not all of it has arrived yet: it will be one.
        assert!(is_handshake(b"GET /w"));
    }

    #[test]
    fn rest_calls_and_pages_are_not() {
        assert!(!is_handshake(b"POST /api/v1/messages HTTP/1.1\r\n"));
        assert!(!is_handshake(b"GET /api/v1/me HTTP/1.1\r\n"));
        assert!(!is_handshake(b"GET /wsx HTTP/1.1\r\n"));
        assert!(!is_handshake(b"GET / HTTP/1.1\r\n"));
        assert!(!is_handshake(b""));
    }
}
