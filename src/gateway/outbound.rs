//! A session's outbound queue: bounded in frames and in bytes, filled without waiting by the
//! user's actor, the topic router and the session's reader, drained by the session's writer
//! (`session::writer`).
//!
//! Two ways in. Inbox events are *offered* (`offer`): past the budget the queue refuses them
//! without closing anything, and the user's actor refills the session from the event log once
//! it has drained (a client that reads, only slower than a burst arrives, is never cut off for
//! it). Everything else is *pushed* (`push`): replies, `hello`/`sync`, topic frames; they may
//! use a headroom above the budget, and a push past that closes the session with 4008.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::protocol::close;

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

/// What the writer sends.
pub enum Out {
    /// A text frame, shared: a topic event fanned out to many sessions is one buffer.
    Text(Arc<str>),
    /// A WebSocket ping carrying a nonce the client must echo to count as reading (a number,
    /// not bytes: this enum is the size of every slot of every session's queue).
    Ping(u64),
    /// Send the pong waiting in the session's pong slot (at most one waits: RFC 6455 lets an
    /// endpoint answer only the latest ping).
    Pong,
}

/// The handle on a session held by its actor and its reader.
#[derive(Clone)]
pub struct SessionTx {
    pub id: u64,
    frames: mpsc::Sender<Out>,
    /// Bytes of text frames in `frames`.
    queued: Arc<AtomicUsize>,
    /// The latest unanswered ping's payload (copied: a slice would pin the read buffer).
    pong: Arc<Mutex<Option<Bytes>>>,
    pub close: watch::Sender<Option<(u16, &'static str)>>,
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

/// The writer's end of a session.
pub struct Outbox {
    pub frames: mpsc::Receiver<Out>,
    /// Bytes of text frames in `frames`: the writer subtracts what it takes.
    pub queued: Arc<AtomicUsize>,
    pong: Arc<Mutex<Option<Bytes>>>,
    pub close: watch::Receiver<Option<(u16, &'static str)>>,
}

impl Outbox {
    /// The pong to send for an `Out::Pong`, if it was not sent already.
    pub fn take_pong(&self) -> Option<Bytes> {
        self.pong.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl SessionTx {
    pub fn new(id: u64) -> (SessionTx, Outbox) {
        let (frames_tx, frames) = mpsc::channel(OUTBOUND_QUEUE);
        let (close_tx, close) = watch::channel(None);
        let queued = Arc::new(AtomicUsize::new(0));
        let pong = Arc::new(Mutex::new(None));
        (
            SessionTx {
                id,
                frames: frames_tx,
                queued: queued.clone(),
                pong: pong.clone(),
                close: close_tx,
            },
            Outbox {
                frames,
                queued,
                pong,
                close,
            },
        )
    }

    /// Queues an inbox event unless `OUTBOUND_BYTES` already wait (or the frame queue is down
    /// to its headroom). Like the budget of `push`, one frame is always taken by a queue under
    /// the budget, however large. Never closes the session.
    pub fn offer(&self, frame: Arc<str>) -> Offer {
        if self.frames.is_closed() || self.close.borrow().is_some() {
            return Offer::Gone;
        }
        if self.queued.load(Ordering::Relaxed) >= OUTBOUND_BYTES
            || self.frames.capacity() <= PUSH_HEADROOM_FRAMES
        {
            return Offer::Full;
        }
        let len = frame.len();
        self.queued.fetch_add(len, Ordering::Relaxed);
        match self.frames.try_send(Out::Text(frame)) {
            Ok(()) => Offer::Queued,
            Err(e) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                match e {
                    mpsc::error::TrySendError::Full(_) => Offer::Full,
                    mpsc::error::TrySendError::Closed(_) => Offer::Gone,
                }
            }
        }
    }

    /// Whether the queue has drained to half of what `offer` fills, in bytes AND in frames: a
    /// session behind is refilled only then. A queue full of small frames is at its frame
    /// limit long before its byte budget; reading the log for it would queue nothing.
    pub fn half_drained(&self) -> bool {
        let offerable = OUTBOUND_QUEUE - PUSH_HEADROOM_FRAMES;
        self.queued.load(Ordering::Relaxed) <= OUTBOUND_BYTES / 2
            && self.frames.capacity() >= PUSH_HEADROOM_FRAMES + offerable / 2
    }

    pub fn push(&self, frame: Arc<str>) -> Push {
        let len = frame.len();
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        // The budget is on what waits: one frame is always taken by a queue under it, however
        // large (a resume's `sync` carries up to 1,000 events), so at most budget + headroom +
        // one frame.
        let result = if before >= OUTBOUND_BYTES + PUSH_HEADROOM_BYTES {
            Err(mpsc::error::TrySendError::Full(Out::Text(frame)))
        } else {
            self.frames.try_send(Out::Text(frame))
        };
        match result {
            Ok(()) => Push::Sent,
            Err(e) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                if let mpsc::error::TrySendError::Full(_) = e {
                    metrics::counter!("notifyd_slow_consumer_closed_total").increment(1);
                    self.close_with(close::SLOW_CONSUMER, "slow consumer: resume with since");
                }
                Push::Dropped
            }
        }
    }

    pub fn push_json(&self, v: &serde_json::Value) -> Push {
        self.push(Arc::from(v.to_string()))
    }

    /// Queues a ping; a full queue means the client is not reading: slow consumer.
    pub fn ping(&self, nonce: u64) {
        self.control(Out::Ping(nonce));
    }

    /// Answers a client's ping. Only the latest waits; a client pinging faster than it reads
    /// replaces its own pending pong instead of growing the queue.
    pub fn pong(&self, payload: &[u8]) {
        let first = {
            let mut slot = self.pong.lock().unwrap_or_else(|p| p.into_inner());
            slot.replace(Bytes::copy_from_slice(payload)).is_none()
        };
        if first {
            self.control(Out::Pong);
        }
    }

    fn control(&self, out: Out) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.frames.try_send(out) {
            metrics::counter!("notifyd_slow_consumer_closed_total").increment(1);
            self.close_with(close::SLOW_CONSUMER, "slow consumer: resume with since");
        }
    }

    pub fn close_with(&self, code: u16, reason: &'static str) {
        self.close.send_if_modified(|c| {
            if c.is_none() {
                *c = Some((code, reason));
                true
            } else {
                false
            }
        });
    }
}

/// The text of a shared frame as actix-ws takes it, without copying it: the frame's buffer
/// is kept alive by the `Arc` until the socket has written it (the UTF-8 check is a scan, not
/// a copy).
pub fn shared_text(text: Arc<str>) -> bytestring::ByteString {
    struct Shared(Arc<str>);
    impl AsRef<[u8]> for Shared {
        fn as_ref(&self) -> &[u8] {
            self.0.as_bytes()
        }
    }
    let fallback = text.clone();
    bytestring::ByteString::try_from(Bytes::from_owner(Shared(text)))
        .unwrap_or_else(|_| bytestring::ByteString::from(fallback.as_ref()))
}
