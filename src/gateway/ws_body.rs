//! A WebSocket's response body: the session's own outbound queue (`wire::outbound`) encoded as
//! frames with actix-http's WebSocket frame writer (`ws::Parser`, what its `ws::Codec` encodes
//! with) whenever actix-http asks for more. No queue between the session and the socket but
//! that one (decision 0019): a frame is encoded straight from the queue into the chunk handed
//! to the HTTP/1 dispatcher, whose write buffer is the only other place it waits.
//!
//! Back-pressure: actix-http stops polling the body while its write buffer is full (the client
//! reads slower than it is sent to), so frames stay in the session's queue, where its bounds
//! decide (an inbox event waits for a refill, a pushed frame past the headroom closes the
//! session with 4008).
//!
//! The body ends after the close frame (`Next::Close` comes before any queued frame), or without
//! one when the session ended without a close (its client's side ended). Dropped, it tells the
//! session's task (`alive`): the connection is gone or the stream is over.

use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser};
use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::wire::outbound::{CloseWith, Drained, Out, SessionTx};

/// RFC 6455: a close frame's reason is at most 123 bytes (125 with the code).
const MAX_CLOSE_REASON: usize = 123;

pub struct Body {
    me: SessionTx,
    /// Dropped with the body: the session's task learns that the stream is over.
    _alive: oneshot::Sender<()>,
    done: bool,
}

impl Body {
    /// The body of session `me`; `alive`'s receiver resolves once it is dropped.
    pub fn new(me: SessionTx, alive: oneshot::Sender<()>) -> Self {
        Body {
            me,
            _alive: alive,
            done: false,
        }
    }

    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
        futures_util::stream::unfold(self, |mut body| async move {
            let chunk = body.next_chunk().await?;
            Some((Ok(chunk), body))
        })
    }

    /// The next chunk of frames, waiting for one if none is queued; `None` once the close frame
    /// was handed over (or the session ended without one).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            let mut buf = BytesMut::new();
            if let Drained::Closed(close) = self.me.drain_into(&mut buf, frame) {
                self.done = true;
                if let Some(close) = close {
                    close_frame(&mut buf, close);
                }
            }
            if !buf.is_empty() {
                return Some(buf.freeze());
            }
            if self.done {
                // Ended without a close frame (the session ended without one).
                return None;
            }
            self.me.changed().await;
        }
    }
}

/// Appends one frame taken from the queue. A text frame's payload is copied once, from the
/// shared event straight into the chunk (no UTF-8 check: it is a `str`).
fn frame(buf: &mut BytesMut, out: Out, pong: Option<Bytes>) {
    match (&out, pong) {
        (Out::Text(text), _) => {
            Parser::write_message(buf, text.as_bytes(), OpCode::Text, true, false)
        }
        (Out::Ping(nonce), _) => {
            Parser::write_message(buf, nonce.to_be_bytes(), OpCode::Ping, true, false)
        }
        // Copied from the client's ping (at most 125 bytes, the parser refuses more).
        (Out::Pong, Some(payload)) => {
            Parser::write_message(buf, payload, OpCode::Pong, true, false)
        }
        (Out::Pong, None) => {}
    }
}

/// Appends the close frame `(code, reason)`.
pub fn close_frame(buf: &mut BytesMut, (code, reason): CloseWith) {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = CloseReason {
        code: CloseCode::from(code),
        description: Some(reason[..end].to_string()),
    };
    Parser::write_close(buf, Some(reason), false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::outbound::Transport;
    use actix_codec::Decoder;
    use actix_http::ws::{Codec, Frame};

    fn frames(mut bytes: BytesMut) -> Vec<Frame> {
        let mut codec = Codec::new().client_mode();
        let mut out = vec![];
        while let Some(f) = codec
            .decode(&mut bytes)
            .expect("a frame the client can parse")
        {
            out.push(f);
        }
        assert!(bytes.is_empty());
        out
    }

    #[tokio::test]
    async fn the_queue_becomes_frames_then_the_close_ends_the_body() {
        let me = SessionTx::new(1, Transport::Ws);
        let (alive, gone) = oneshot::channel();
        let mut body = Body::new(me.clone(), alive);
        me.push(std::sync::Arc::from("{\"a\":1}"));
        me.ping(7);
        me.pong(b"hi");
        let chunk = body.next_chunk().await.expect("frames");
        assert_eq!(
            frames(BytesMut::from(&chunk[..])),
            vec![
                Frame::Text(Bytes::from_static(b"{\"a\":1}")),
                Frame::Ping(Bytes::copy_from_slice(&7u64.to_be_bytes())),
                Frame::Pong(Bytes::from_static(b"hi")),
            ]
        );
        // Queued behind nothing: the close comes before frames still waiting.
        me.push(std::sync::Arc::from("{\"never\":1}"));
        me.close_with(4008, "slow consumer: resume with since");
        let chunk = body.next_chunk().await.expect("the close frame");
        let [Frame::Close(Some(reason))] = &frames(BytesMut::from(&chunk[..]))[..] else {
            panic!("one close frame");
        };
        assert_eq!(u16::from(reason.code), 4008);
        assert!(body.next_chunk().await.is_none(), "ended after the close");
        drop(body);
        assert!(
            gone.await.is_err(),
            "the session's task learns the body is gone"
        );
    }

    #[tokio::test]
    async fn a_session_that_ends_without_a_close_ends_its_body() {
        let me = SessionTx::new(1, Transport::Ws);
        let (alive, _gone) = oneshot::channel();
        let mut body = Body::new(me.clone(), alive);
        let waiting = tokio::spawn(async move { body.next_chunk().await.is_none() });
        tokio::task::yield_now().await;
        me.end();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken by the end")
            .expect("no panic");
        assert!(ended);
    }

    #[test]
    fn a_long_reason_is_cut_at_a_char_boundary_within_125_bytes() {
        let mut buf = BytesMut::new();
        let reason: &'static str = Box::leak(format!("{}é", "a".repeat(122)).into_boxed_str());
        close_frame(&mut buf, (1000, reason));
        assert!(buf[1] as usize <= 125);
        let [Frame::Close(Some(r))] = &frames(buf)[..] else {
            panic!("one close frame");
        };
        assert_eq!(r.description.as_deref(), Some("a".repeat(122).as_str()));
    }
}
