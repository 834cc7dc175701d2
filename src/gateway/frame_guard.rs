//! A guard on the raw bytes a WebSocket client sends, below actix-ws.
//!
//! actix-http's frame parser checks a frame's size only once the whole frame has arrived, so a
//! header announcing 1 TiB made the server buffer whatever the client streamed. This guard reads
//! each frame header as it passes and fails the stream as soon as a data frame (or a fragmented
//! message so far) announces more than the limit: the socket is closed with 1009 and at most one
//! frame's worth of bytes (the limit) was ever held for it.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;

/// The longest frame header: 2 bytes, an 8-byte extended length, a 4-byte mask.
const MAX_HEADER: usize = 14;

pub struct FrameGuard<S> {
    inner: S,
    limit: u64,
    header: [u8; MAX_HEADER],
    header_len: usize,
    /// Payload bytes of the current frame still to pass (0 = the next byte starts a header).
    remaining: u64,
    /// Bytes of the fragmented data message so far (continuations add up).
    message: u64,
    tripped: Rc<Cell<bool>>,
}

impl<S> FrameGuard<S> {
    /// Returns the guard and a flag that turns true when it refused a frame for its size.
    pub fn new(inner: S, limit: usize) -> (Self, Rc<Cell<bool>>) {
        let tripped = Rc::new(Cell::new(false));
        let guard = FrameGuard {
            inner,
            limit: limit as u64,
            header: [0; MAX_HEADER],
            header_len: 0,
            remaining: 0,
            message: 0,
            tripped: tripped.clone(),
        };
        (guard, tripped)
    }

    /// Walks `chunk` through the frame boundaries; `Err` when a frame is too large.
    fn check(&mut self, mut chunk: &[u8]) -> Result<(), ()> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining).min(chunk.len() as u64) as usize;
                self.remaining -= n as u64;
                chunk = &chunk[n..];
                continue;
            }
            self.header[self.header_len] = chunk[0];
            self.header_len += 1;
            chunk = &chunk[1..];
            if let Some(len) = self.header_complete() {
                self.header_len = 0;
                self.frame(len)?;
            }
        }
        Ok(())
    }

    /// The announced payload length once the header is complete.
    fn header_complete(&self) -> Option<u64> {
        if self.header_len < 2 {
            return None;
        }
        let len7 = self.header[1] & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        if self.header_len < 2 + ext + mask {
            return None;
        }
        Some(match ext {
            2 => u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
            8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
            _ => len7 as u64,
        })
    }

    fn frame(&mut self, len: u64) -> Result<(), ()> {
        let fin = self.header[0] & 0x80 != 0;
        let opcode = self.header[0] & 0x0f;
        if opcode >= 0x8 {
            // Control frames: at most 125 bytes by RFC 6455 (actix-http enforces it), and they
            // may come between the fragments of a message.
            if len > 125 {
                return Err(());
            }
        } else {
            if opcode != 0x0 {
                self.message = 0; // a new text or binary message starts
            }
            let total = self.message.saturating_add(len);
            if total > self.limit {
                return Err(());
            }
            self.message = if fin { 0 } else { total };
        }
        self.remaining = len;
        Ok(())
    }
}

impl<S> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.tripped.get() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => match this.check(&bytes) {
                // A copy of exactly these bytes, not the chunk itself: the chunk is a slice of
                // the connection's 8 KiB read buffer, and actix-ws adopts a chunk it owns alone
                // as its own buffer, so passing it on would keep that whole buffer alive for as
                // long as the socket is open. Client frames are small and rare; the copy is cheap.
                Ok(()) => Poll::Ready(Some(Ok(Bytes::copy_from_slice(&bytes)))),
                Err(()) => {
                    this.tripped.set(true);
                    metrics::counter!("notifyd_ws_frames_too_large_total").increment(1);
                    Poll::Ready(Some(Err(PayloadError::Overflow)))
                }
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(limit: usize) -> FrameGuard<futures_util::stream::Empty<Result<Bytes, PayloadError>>> {
        FrameGuard::new(futures_util::stream::empty(), limit).0
    }

    fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![if fin { 0x80 } else { 0 } | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=65535 => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[9, 9, 9, 9]);
        h
    }

    #[test]
    fn frames_within_the_limit_pass_byte_by_byte() {
        let mut g = guard(100);
        let mut bytes = header(true, 1, 100);
        bytes.extend(vec![b'a'; 100]);
        bytes.extend(header(true, 9, 3));
        bytes.extend(b"png");
        bytes.extend(header(true, 1, 5));
        bytes.extend(b"hello");
        for b in &bytes {
            assert_eq!(g.check(std::slice::from_ref(b)), Ok(()));
        }
        assert_eq!(g.check(&bytes), Ok(()));
    }

    #[test]
    fn a_header_over_the_limit_fails_before_its_payload() {
        assert_eq!(guard(100).check(&header(true, 1, 101)), Err(()));
        assert_eq!(guard(64 * 1024).check(&header(true, 2, 1 << 40)), Err(()));
        assert_eq!(guard(1000).check(&header(true, 9, 126)), Err(()));
    }

    #[test]
    fn fragments_add_up_and_control_frames_may_interleave() {
        let mut g = guard(100);
        let mut bytes = header(false, 1, 60);
        bytes.extend(vec![b'a'; 60]);
        bytes.extend(header(true, 9, 0));
        assert_eq!(g.check(&bytes), Ok(()));
        assert_eq!(g.check(&header(true, 0, 41)), Err(()));

        let mut g = guard(100);
        let mut bytes = header(false, 1, 60);
        bytes.extend(vec![b'a'; 60]);
        bytes.extend(header(true, 0, 40));
        bytes.extend(vec![b'a'; 40]);
        bytes.extend(header(true, 1, 100)); // a new message starts from zero
        assert_eq!(g.check(&bytes), Ok(()));
    }
}
