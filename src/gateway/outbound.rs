//! A session's outbound queue: bounded in frames and in bytes, filled without waiting by the
//! user's actor and the session's reader, drained by the session's writer (`session::writer`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::protocol::close;

/// Frames queued for one session before it counts as a slow consumer and is closed with 4008.
pub const OUTBOUND_QUEUE: usize = 512;
/// Bytes of text frames that may wait for one session; a frame arriving when this much waits
/// counts the session as a slow consumer (4008).
pub const OUTBOUND_BYTES: usize = 1024 * 1024;

/// What the writer sends.
pub enum Out {
    /// A text frame, shared: a topic event fanned out to many sessions is one buffer.
    Text(Arc<str>),
    /// A WebSocket ping carrying a nonce the client must echo to count as reading.
    Ping(Bytes),
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

    pub fn push(&self, frame: Arc<str>) -> Push {
        let len = frame.len();
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        // The budget is on what waits: one frame is always taken by a queue under it, however
        // large (a resume's `sync` carries up to 1,000 events), so at most budget + one frame.
        let result = if before >= OUTBOUND_BYTES {
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
    pub fn ping(&self, nonce: Bytes) {
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
