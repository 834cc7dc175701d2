//! A session's outbound queue: bounded in frames and in bytes, filled without waiting by the
//! user's actor, the topic router and the session's own task, drained by the connection's
//! response body (a WebSocket's `gateway::ws_body`, an SSE stream's `gateway::sse::Body`), which
//! encodes each frame as actix-http asks for more.
//!
//! Two ways in. Inbox events are *offered* (`offer`): past the budget the queue refuses them
//! without closing anything, and the user's actor refills the session from the event log once
//! it has drained (a client that reads, only slower than a burst arrives, is never cut off for
//! it). Everything else is *pushed* (`push`): replies, `hello`/`sync`, topic frames; they may
//! use a headroom above the budget, and a push past that closes the session with 4008.
//!
//! One allocation per session, the size of a few words while idle: the edge's one queue
//! primitive (`queue::Queue`), with the pong slot and the close beside the frames under its lock.

use std::sync::Arc;
use std::task::{Poll, Waker};

use bytes::{Bytes, BytesMut};

use super::protocol::close;
use super::queue::Queue;

/// Frames queued for one session before it counts as a slow consumer and is closed with 4008.
pub const OUTBOUND_QUEUE: usize = 512;
/// Bytes of inbox events that may wait for one session; past it the actor stops queueing
/// events for the session and refills it from the event log as it drains.
pub const OUTBOUND_BYTES: usize = 1024 * 1024;
/// Room above `OUTBOUND_BYTES` for pushed frames (replies, topic frames); a push arriving when
/// this much waits closes the session as a slow consumer (4008).
pub const PUSH_HEADROOM_BYTES: usize = 256 * 1024;
/// Frame slots of the queue that offered events leave free for pushed frames and pings.
pub const PUSH_HEADROOM_FRAMES: usize = 64;

/// What is written to the client.
pub enum Out {
    /// A text frame, shared: a topic event fanned out to many sessions is one buffer.
    Text(Arc<str>),
    /// A WebSocket ping carrying a nonce the client must echo to count as reading.
    Ping(u64),
    /// Send the pong waiting in the session's pong slot (at most one waits: RFC 6455 lets an
    /// endpoint answer only the latest ping).
    Pong,
}

/// Why a session is closing: the close code and reason sent to the client.
pub type CloseWith = (u16, &'static str);

/// What a response body hands actix-http at most at once (it asks again while its write buffer
/// has room): every transport's chunk.
pub const CHUNK_BYTES: usize = 16 * 1024;

/// How one chunk's drain (`SessionTx::drain_into`) ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// The queue is empty or the chunk full: the session goes on.
    Open,
    /// The session is over: this close was asked for (`None`: it ended without one), and the
    /// transport writes its last words for it; nothing queued after it is written.
    Closed(Option<CloseWith>),
}

/// What the session keeps beside its frames, under the same lock.
#[derive(Default)]
struct State {
    /// The latest unanswered ping's payload (copied: a slice would pin the read buffer).
    pong: Option<Bytes>,
    close: Option<CloseWith>,
    /// The session's task has ended: nothing queued will be written.
    ended: bool,
    /// The session's task while it waits for a close to be asked (`close_asked`): the queue's
    /// own wake-up goes to whatever drains it (a WebSocket's or an SSE stream's response body),
    /// which a full socket may leave unpolled, so a close must reach the task by itself.
    closer: Option<Waker>,
}

/// The bytes a queued frame is accounted for: text frames count, control frames do not.
fn weight(out: &Out) -> usize {
    match out {
        Out::Text(t) => t.len(),
        Out::Ping(_) | Out::Pong => 0,
    }
}

/// What carries a session's frames: decides only how they are written, and labels the
/// connection gauge (contract §6: `transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Sse,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }
    }
}

/// The handle on a session held by its actor, the topic router and its own task.
#[derive(Clone)]
pub struct SessionTx {
    pub id: u64,
    pub transport: Transport,
    queue: Queue<Out, State>,
}

pub enum Push {
    Sent,
    /// Queue full (slow consumer) or gone: the caller drops the session.
    Dropped,
}

/// What became of an offered event.
pub enum Offer {
    Queued,
    /// At the budget: not queued, the session is untouched; offer it again later.
    Full,
    /// The session is closing or closed.
    Gone,
}

/// What the queue's drain is to do next.
pub enum Next {
    /// Write this frame (the pong's bytes are taken out of the slot already).
    Write(Out, Option<Bytes>),
    /// Close the connection (with `closing()`'s code and reason, read once the session's loop
    /// has ended, whatever ended it); nothing more is written before it.
    Close,
}

impl SessionTx {
    pub fn new(id: u64, transport: Transport) -> SessionTx {
        SessionTx {
            id,
            transport,
            queue: Queue::new(State::default()),
        }
    }

    /// Queues an inbox event unless `OUTBOUND_BYTES` already wait (or the frame queue is down
    /// to its headroom). Like the budget of `push`, one frame is always taken by a queue under
    /// the budget, however large. Never closes the session.
    pub fn offer(&self, frame: Arc<str>) -> Offer {
        {
            let mut q = self.queue.lock();
            if q.state.ended || q.state.close.is_some() {
                return Offer::Gone;
            }
            if q.bytes() >= OUTBOUND_BYTES || q.len() >= OUTBOUND_QUEUE - PUSH_HEADROOM_FRAMES {
                return Offer::Full;
            }
            let bytes = frame.len();
            q.push(Out::Text(frame), bytes);
        }
        self.queue.wake();
        Offer::Queued
    }

    /// Whether the queue has drained to half of what `offer` fills, in bytes AND in frames: a
    /// session behind is refilled only then. A queue full of small frames is at its frame
    /// limit long before its byte budget; reading the log for it would queue nothing.
    pub fn half_drained(&self) -> bool {
        let offerable = OUTBOUND_QUEUE - PUSH_HEADROOM_FRAMES;
        let q = self.queue.lock();
        q.bytes() <= OUTBOUND_BYTES / 2 && q.len() <= offerable / 2
    }

    pub fn push(&self, frame: Arc<str>) -> Push {
        let slow = {
            let mut q = self.queue.lock();
            if q.state.ended || q.state.close.is_some() {
                return Push::Dropped;
            }
            // The budget is on what waits: one frame is always taken by a queue under it,
            // however large (a resume's `sync` carries up to 1,000 events), so at most
            // budget + headroom + one frame.
            if q.bytes() >= OUTBOUND_BYTES + PUSH_HEADROOM_BYTES || q.len() >= OUTBOUND_QUEUE {
                true
            } else {
                let bytes = frame.len();
                q.push(Out::Text(frame), bytes);
                false
            }
        };
        if slow {
            self.slow_consumer();
            return Push::Dropped;
        }
        self.queue.wake();
        Push::Sent
    }

    pub fn push_json(&self, v: &serde_json::Value) -> Push {
        self.push(Arc::from(v.to_string()))
    }

    /// Queues a ping; a full queue means the client is not reading: slow consumer.
    pub fn ping(&self, nonce: u64) {
        self.control(Out::Ping(nonce), None);
    }

    /// Answers a client's ping. Only the latest waits; a client pinging faster than it reads
    /// replaces its own pending pong instead of growing the queue.
    pub fn pong(&self, payload: &[u8]) {
        self.control(Out::Pong, Some(Bytes::copy_from_slice(payload)));
    }

    fn control(&self, out: Out, pong: Option<Bytes>) {
        let slow = {
            let mut q = self.queue.lock();
            if q.state.ended || q.state.close.is_some() {
                return;
            }
            let queue_it = match pong {
                Some(p) => q.state.pong.replace(p).is_none(),
                None => true,
            };
            if !queue_it {
                return;
            }
            if q.len() >= OUTBOUND_QUEUE {
                true
            } else {
                q.push(out, 0);
                false
            }
        };
        if slow {
            self.slow_consumer();
        } else {
            self.queue.wake();
        }
    }

    fn slow_consumer(&self) {
        metrics::counter!("notifyd_slow_consumer_closed_total").increment(1);
        self.close_with(close::SLOW_CONSUMER, "slow consumer: resume with since");
    }

    /// Asks the session's task to close the connection with `code`; the first close asked
    /// for wins. Frames still queued are not written.
    pub fn close_with(&self, code: u16, reason: &'static str) {
        let closer = {
            let mut q = self.queue.lock();
            if q.state.close.is_some() || q.state.ended {
                return;
            }
            q.state.close = Some((code, reason));
            q.state.closer.take()
        };
        self.queue.wake();
        if let Some(closer) = closer {
            closer.wake();
        }
    }

    /// The session's task only: resolves once a close was asked for (by anyone). Separate from
    /// `changed`, whose one waiter is whatever drains the queue.
    pub async fn close_asked(&self) {
        std::future::poll_fn(|cx| {
            let mut q = self.queue.lock();
            if q.state.close.is_some() || q.state.ended {
                return Poll::Ready(());
            }
            if !q
                .state
                .closer
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                q.state.closer = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// The close asked for, if any.
    pub fn closing(&self) -> Option<CloseWith> {
        self.queue.lock().state.close
    }

    /// What drains the queue: what to do next, if anything is to be done now (a close
    /// comes before any queued frame; a session that ended without one ends its stream too).
    pub fn next(&self) -> Option<Next> {
        let mut q = self.queue.lock();
        if q.state.close.is_some() || q.state.ended {
            return Some(Next::Close);
        }
        let out = q.pop(weight)?;
        let pong = match out {
            Out::Pong => q.state.pong.take(),
            Out::Text(_) | Out::Ping(_) => None,
        };
        Some(Next::Write(out, pong))
    }

    /// What every transport's response body does with the queue: appends what waits to `buf`,
    /// each frame encoded by `encode` (a WebSocket frame, an SSE event), until `buf` holds
    /// `CHUNK_BYTES`, nothing waits, or the session closes (a close comes before any queued
    /// frame, see `next`).
    pub fn drain_into(
        &self,
        buf: &mut BytesMut,
        mut encode: impl FnMut(&mut BytesMut, Out, Option<Bytes>),
    ) -> Drained {
        while buf.len() < CHUNK_BYTES {
            match self.next() {
                None => break,
                Some(Next::Write(out, pong)) => encode(buf, out, pong),
                Some(Next::Close) => return Drained::Closed(self.closing()),
            }
        }
        Drained::Open
    }

    /// What drains the queue only (one waiter): resolves once `next` may have something (a
    /// frame was queued, a close was asked for or the session ended since the last call).
    pub async fn changed(&self) {
        self.queue.changed().await
    }

    /// The session's task only, when it ends: from now on every offer, push or close is a
    /// no-op, and what is queued is freed.
    pub fn end(&self) {
        let freed = {
            let mut q = self.queue.lock();
            q.state.ended = true;
            q.state.pong = None;
            q.state.closer = None;
            q.take_all()
        };
        drop(freed);
        // Whatever drains the queue learns that the stream is over.
        self.queue.wake();
    }
}
