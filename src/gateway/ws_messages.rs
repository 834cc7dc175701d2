//! A WebSocket client's messages, read from the upgraded request's payload with actix-http's
//! `ws::Codec`: frames decoded, fragments assembled into whole messages, within the limits a
//! hostile client must not get past (contract §7, `tests/api/ws_frames.rs`).
//!
//! What this does that the codec does not (it was carried as actix-ws patches 2–5 until
//! decision 0019):
//! - fragments are copied into one buffer as they come (a fragment's `Bytes` would pin the
//!   whole read chunk it was cut from: 65,000 one-byte fragments held ~4 MB), and counted with
//!   their headers as RFC 6455 §5.2 encodes them, so many tiny fragments cannot pass as a small
//!   message; at most `MAX_CLIENT_FRAGMENTS` make one message;
//! - a fragment is refused at its header when it would take its message past the limit: the
//!   codec is given only what the message has left (at least 125 bytes, so a control frame
//!   between fragments always fits), and refuses a larger frame before its payload arrives
//!   (actix-http patch 2);
//! - the payload is read only until a message can be decoded, and a client that is not being
//!   read meets TCP back-pressure; an emptied buffer is released (it may be a whole adopted read
//!   chunk, held for the life of a mostly idle socket);
//! - memory for the message under way is bounded (contract §7, "Fragments"): while the reader
//!   waits for the client it holds at most `MAX_CLIENT_FRAME + HELD_OVERHEAD` bytes (64 KiB plus
//!   about 8.2 KiB), however the client cuts its frames and TCP its segments: the fragments so
//!   far, with at most 8 KiB of room to grow into (`Assembling::append`), and the start of the
//!   next frame in a buffer of that frame's size, which the message's budget bounds
//!   (`keep_partial`). A read chunk of whole frames is decoded in place (no copy: the common
//!   case); only the start of a frame left at its end is copied out, so a few bytes never pin a
//!   whole read buffer. Between two messages cut from one read chunk the reader also holds the
//!   rest of that chunk: one read of actix-http's, 8 KiB (the first, read with the handshake,
//!   at most 16 KiB; actix-http patch 5);
//! - actix-http's payload queue in front of this reader adds nothing while a message is under
//!   way: the reader drains it to finish the message, and the dispatcher releases its emptied
//!   read buffer (actix-http patch 1). Only while the session does not read (its control-frame
//!   budget is spent, or it works on a message) does it fill: to 32 KiB plus one read chunk,
//!   and then actix-http stops reading the socket until the reader takes a chunk (patch 5), so
//!   the client meets TCP back-pressure. A fixed bound, whatever the client's frames;
//! - invalid UTF-8 in a text message, fragmented or not, is its own error (1007).
//!
//! Every error is final: the session closes the connection with `close_for`'s code.

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, Item, ProtocolError};
use actix_web::error::PayloadError;
use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::StreamExt;

use crate::wire::protocol::{self, close};

/// A whole message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    Close,
}

/// Why the client's stream was refused.
#[derive(Debug)]
pub enum Refused {
    /// A frame or a message over the size limit, or a message of too many fragments.
    TooBig,
    /// A text message that is not valid UTF-8.
    InvalidUtf8,
    /// Anything else the codec refused (unmasked frame, bad opcode, a continuation without a
    /// start, a fragmented or over-long control frame, …).
    Protocol(ProtocolError),
    /// The connection failed while reading.
    Io(PayloadError),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::TooBig => f.write_str("message too large"),
            Refused::InvalidUtf8 => f.write_str("invalid UTF-8 in a text message"),
            Refused::Protocol(e) => write!(f, "{e}"),
            Refused::Io(e) => write!(f, "{e}"),
        }
    }
}

/// The close code and reason for a client refused by `ClientMessages`.
pub fn close_for(e: &Refused) -> (u16, &'static str) {
    match e {
        Refused::TooBig | Refused::Protocol(ProtocolError::Overflow) => {
            (close::TOO_BIG, "message too large")
        }
        Refused::InvalidUtf8 => (close::INVALID_DATA, "invalid UTF-8 in a text message"),
        Refused::Protocol(_) | Refused::Io(_) => (close::PROTOCOL_ERROR, "protocol error"),
    }
}

/// The bytes a client's (masked) frame header takes for a payload of `len` bytes, as RFC 6455
/// §5.2 requires it to be encoded (the minimal length encoding).
fn header_len(len: usize) -> usize {
    2 + 4
        + match len {
            0..=125 => 0,
            126..=65535 => 2,
            _ => 8,
        }
}

/// The bytes (header and payload) the frame starting `buf` announces, once its header is
/// there. Only to size the buffer it is read into: the codec parses and checks every frame.
fn announced_size(buf: &[u8]) -> Option<usize> {
    let second = *buf.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let (extended, len) = match second & 0x7f {
        126 => (
            2,
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
        ),
        127 => (8, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        n => (0, u64::from(n)),
    };
    let header = 2 + extended + mask;
    if buf.len() < header {
        return None;
    }
    Some(
        usize::try_from(len)
            .unwrap_or(usize::MAX)
            .saturating_add(header),
    )
}

/// RFC 6455: a control frame's payload is at most 125 bytes.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest header a client's frame has (2 bytes, an 8-byte length, the mask).
const MAX_HEADER: usize = 14;

/// Room the assembled fragments may have beyond what they hold, so that many small fragments
/// are not copied again at each one (they grow into it).
const ASSEMBLY_SPARE: usize = 8 * 1024;

/// What a reader holds at most beyond `MAX_CLIENT_FRAME` for one message under way while it
/// waits for the client (`held_bytes`): the assembly's spare room and its bookkeeping, and the
/// header of the frame being read plus a control frame's payload (which may arrive when the
/// message has less than that left). 8,379 bytes on 64-bit targets.
pub const HELD_OVERHEAD: usize =
    ASSEMBLY_SPARE + std::mem::size_of::<Assembling>() + MAX_HEADER + MAX_CONTROL_PAYLOAD;

/// The message being assembled from fragments.
struct Assembling {
    text: bool,
    /// The payloads so far, copied (never a slice of a read chunk). A `Vec`, grown by
    /// `append` to at most `ASSEMBLY_SPARE` beyond what it holds (a `BytesMut` doubles: a 33 KiB
    /// message held 64 KiB, a 64 KiB one 128 KiB).
    data: Vec<u8>,
    /// Bytes of frames (headers and payloads) so far.
    size: usize,
    fragments: usize,
}

impl Assembling {
    /// Appends a fragment's payload (already counted in `size`).
    fn append(&mut self, payload: &[u8]) {
        let needed = self.data.len() + payload.len();
        if needed > self.data.capacity() {
            // Room to grow into, so small fragments are not copied again at each one, but
            // never more than `ASSEMBLY_SPARE`, nor more than the message may still take.
            let left = protocol::MAX_CLIENT_FRAME.saturating_sub(self.size);
            let spare = needed.min(ASSEMBLY_SPARE).min(left);
            self.data.reserve_exact(needed + spare - self.data.len());
        }
        self.data.extend_from_slice(payload);
    }
}

/// The client's side of one WebSocket: its payload, read and decoded on demand.
pub struct ClientMessages {
    payload: actix_web::dev::Payload,
    /// What the codec decodes from: a read chunk adopted as it came (no copy), or (`own`) a
    /// buffer of ours holding the start of one frame, sized to that frame.
    buf: BytesMut,
    /// `buf`'s allocation when it is ours: where it starts and its size. Kept because
    /// `buf.capacity()` stops counting the decoded frames split off its front, and the codec
    /// may reallocate `buf` (it reserves room for a frame it has the header of).
    own: Option<Own>,
    /// The rest of the last read chunk, not yet in `buf` (which holds a frame it completes).
    rest: Bytes,
    codec: Codec,
    /// `None` while no fragmented message is under way (boxed: most sockets never send one).
    assembling: Option<Box<Assembling>>,
    ended: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Own {
    start: usize,
    size: usize,
}

impl ClientMessages {
    pub fn new(payload: actix_web::web::Payload) -> Self {
        Self::of(payload.into_inner())
    }

    fn of(payload: actix_web::dev::Payload) -> Self {
        ClientMessages {
            payload,
            buf: BytesMut::new(),
            own: None,
            rest: Bytes::new(),
            codec: Codec::new().max_size(protocol::MAX_CLIENT_FRAME),
            assembling: None,
            ended: false,
        }
    }

    /// The next whole message; `None` once the client's side has ended (or after an error).
    /// Cancel-safe: the only wait is for the next read chunk, and what was read is kept.
    pub async fn recv(&mut self) -> Option<Result<ClientMessage, Refused>> {
        if self.ended {
            return None;
        }
        loop {
            match self.decode_buffered() {
                Ok(Some(msg)) => return Some(Ok(msg)),
                Ok(None) => {}
                Err(e) => {
                    self.end();
                    return Some(Err(e));
                }
            }
            if self.rest.is_empty() {
                match self.payload.next().await {
                    Some(Ok(chunk)) => self.rest = chunk,
                    // The client's side ended (or broke) without a close frame: it left, it
                    // broke no rule of the protocol, so this is the stream's end, not a 1002.
                    Some(Err(PayloadError::Incomplete(_) | PayloadError::Io(_))) => {
                        self.end();
                        return None;
                    }
                    Some(Err(e)) => {
                        self.end();
                        return Some(Err(Refused::Io(e)));
                    }
                    None => {
                        self.end();
                        return None;
                    }
                }
            }
            self.feed();
        }
    }

    /// Moves read bytes from `rest` to `buf` for the codec. With nothing before them (the
    /// common case: a chunk of whole frames) the whole chunk is adopted without a copy; after
    /// the start of a frame, only what that frame lacks is copied to it (its header first).
    fn feed(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::from(std::mem::take(&mut self.rest));
            self.own = None;
            return;
        }
        // At least one byte: a frame the codec waits on always lacks one.
        let want = self.partial_frame_size();
        let n = want
            .saturating_sub(self.buf.len())
            .max(1)
            .min(self.rest.len());
        self.buf.extend_from_slice(&self.rest[..n]);
        self.rest.advance(n);
    }

    /// After decoding: an emptied buffer is released (it may be a whole adopted read chunk,
    /// held for the life of a mostly idle socket). Before the reader reads on (`wait`), what
    /// is left is the start of one frame: it is kept in a buffer of ours of that frame's size
    /// (of the longest header while its header is incomplete), so a few bytes never pin a read
    /// chunk's whole allocation (one read of actix-http's, up to 16 KiB), and neither the
    /// codec's reserve nor doubling grows it past what the frame may take.
    fn keep_partial(&mut self, wait: bool) {
        if self.buf.is_empty() {
            if self.buf.capacity() > 0 {
                self.buf = BytesMut::new();
            }
            self.own = None;
            return;
        }
        if !wait {
            return;
        }
        let want = self.partial_frame_size();
        let here = Own {
            start: self.buf.as_ptr() as usize,
            size: self.buf.capacity(),
        };
        // Ours, at its start (nothing decoded from it yet), not reallocated, of the size wanted.
        if self.own == Some(here) && here.size == want {
            return;
        }
        let mut fresh = BytesMut::with_capacity(want);
        fresh.extend_from_slice(&self.buf);
        self.own = Some(Own {
            start: fresh.as_ptr() as usize,
            size: fresh.capacity(),
        });
        self.buf = fresh;
    }

    /// The bytes the frame at the start of `buf` takes with its header, as far as its header
    /// says (`MAX_HEADER` while that is incomplete), and never less than `buf` holds. The codec
    /// has already refused a header announcing more than the budget.
    fn partial_frame_size(&self) -> usize {
        announced_size(&self.buf)
            .unwrap_or(MAX_HEADER)
            .min(self.budget() + MAX_HEADER)
            .max(self.buf.len())
    }

    /// The most payload the next frame may announce: the message's limit less what its
    /// fragments took, but at least a control frame's 125 bytes (one between fragments always
    /// fits). The codec refuses a larger frame at its header.
    fn budget(&self) -> usize {
        match &self.assembling {
            Some(a) => protocol::MAX_CLIENT_FRAME
                .saturating_sub(a.size)
                .max(MAX_CONTROL_PAYLOAD),
            None => protocol::MAX_CLIENT_FRAME,
        }
    }

    /// The bytes this reader holds for the client's incoming message: what was read and not
    /// yet decoded, and the fragments assembled so far. While it waits for the client, at most
    /// `MAX_CLIENT_FRAME + HELD_OVERHEAD`. (An adopted read chunk, held only between two
    /// messages cut from it, counts as its capacity: actix-http's allocation may be larger.)
    pub fn held_bytes(&self) -> usize {
        let buf = match self.own {
            Some(own) => own.size,
            None => self.buf.capacity(),
        };
        buf + self.rest.len()
            + self
                .assembling
                .as_ref()
                .map_or(0, |a| std::mem::size_of::<Assembling>() + a.data.capacity())
    }

    /// Nothing more is decoded; what was buffered is freed (the payload itself stays held, so
    /// a client refused and still streaming meets back-pressure, not a reader).
    fn end(&mut self) {
        self.ended = true;
        self.buf = BytesMut::new();
        self.own = None;
        self.rest = Bytes::new();
        self.assembling = None;
    }

    /// Decodes buffered frames until one completes a message, or the buffer holds no whole
    /// frame.
    fn decode_buffered(&mut self) -> Result<Option<ClientMessage>, Refused> {
        let found = loop {
            // A fragment may take its message only up to the limit: the codec refuses a larger
            // one at its header.
            self.codec = self.codec.clone().max_size(self.budget());
            let frame = match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break None,
                Err(ProtocolError::Overflow) => return Err(Refused::TooBig),
                Err(e) => return Err(Refused::Protocol(e)),
            };
            if let Some(msg) = self.message_of(frame)? {
                break Some(msg);
            }
        };
        self.keep_partial(found.is_none());
        Ok(found)
    }

    /// What a decoded frame makes: a whole message, or a fragment kept (`None`).
    fn message_of(&mut self, frame: Frame) -> Result<Option<ClientMessage>, Refused> {
        Ok(Some(match frame {
            Frame::Text(bytes) => ClientMessage::Text(text(bytes)?),
            Frame::Binary(bytes) => ClientMessage::Binary(bytes),
            Frame::Ping(bytes) => ClientMessage::Ping(bytes),
            Frame::Pong(bytes) => ClientMessage::Pong(bytes),
            Frame::Close(_) => ClientMessage::Close,
            // The codec checks the order (a first fragment while one is under way, a
            // continuation without one): these arrive in order.
            Frame::Continuation(item) => {
                let (first, last, bytes) = match item {
                    Item::FirstText(b) => (Some(true), false, b),
                    Item::FirstBinary(b) => (Some(false), false, b),
                    Item::Continue(b) => (None, false, b),
                    Item::Last(b) => (None, true, b),
                };
                let a = match (first, self.assembling.as_mut()) {
                    (Some(text), _) => self.assembling.insert(Box::new(Assembling {
                        text,
                        data: Vec::new(),
                        size: 0,
                        fragments: 0,
                    })),
                    (None, Some(a)) => a,
                    (None, None) => {
                        return Err(Refused::Protocol(ProtocolError::ContinuationNotStarted))
                    }
                };
                a.size += bytes.len() + header_len(bytes.len());
                a.fragments += 1;
                if a.size > protocol::MAX_CLIENT_FRAME
                    || a.fragments > protocol::MAX_CLIENT_FRAGMENTS
                {
                    return Err(Refused::TooBig);
                }
                a.append(&bytes);
                if !last {
                    return Ok(None);
                }
                let Some(a) = self.assembling.take() else {
                    return Ok(None);
                };
                let data = Bytes::from(a.data);
                if a.text {
                    ClientMessage::Text(text(data)?)
                } else {
                    ClientMessage::Binary(data)
                }
            }
        }))
    }
}

fn text(bytes: Bytes) -> Result<ByteString, Refused> {
    ByteString::try_from(bytes).map_err(|_| Refused::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;
    use std::task::Poll;

    use futures_util::FutureExt;

    /// The most a reader may hold for the message under way while it waits for the client.
    const BOUND: usize = protocol::MAX_CLIENT_FRAME + HELD_OVERHEAD;

    /// A read buffer as large as actix-http's dispatcher lets its own grow under a burst: what
    /// a chunk cut from it can pin.
    const READ_BUF: usize = 256 * 1024;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// One masked client frame (RFC 6455 §5.2, the minimal length encoding).
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&MASK);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        f
    }

    /// A client's side of a socket, fed chunk by chunk.
    struct Client(Rc<RefCell<VecDeque<Bytes>>>);

    fn client() -> (Client, ClientMessages) {
        let chunks = Rc::new(RefCell::new(VecDeque::new()));
        let from = chunks.clone();
        let stream = futures_util::stream::poll_fn(move |_| match from.borrow_mut().pop_front() {
            Some(chunk) => Poll::Ready(Some(Ok(chunk))),
            None => Poll::Pending,
        });
        let payload: actix_http::BoxedPayloadStream = Box::pin(stream);
        (Client(chunks), ClientMessages::of(payload.into()))
    }

    impl Client {
        /// Hands `data` over as actix-http's dispatcher does, a read chunk cut from a read
        /// buffer of `capacity` bytes (`read_buf.split().freeze()`), then lets the reader decode
        /// until it waits for the client again: the messages it made.
        fn send(&self, m: &mut ClientMessages, data: &[u8], capacity: usize) -> Vec<ClientMessage> {
            let mut read_buf = BytesMut::with_capacity(capacity.max(data.len()));
            read_buf.extend_from_slice(data);
            let chunk = read_buf.split().freeze();
            // As the dispatcher does: the emptied read buffer is released (actix-http patch 1),
            // so the chunk is its allocation's only owner.
            drop(read_buf);
            self.send_chunk(m, chunk)
        }

        fn send_chunk(&self, m: &mut ClientMessages, chunk: Bytes) -> Vec<ClientMessage> {
            self.0.borrow_mut().push_back(chunk);
            let mut out = vec![];
            while let Some(next) = m.recv().now_or_never() {
                match next {
                    Some(Ok(msg)) => out.push(msg),
                    Some(Err(e)) => panic!("refused: {e}"),
                    None => break,
                }
            }
            out
        }
    }

    /// Payload bytes that tell their place apart (a misplaced byte shows in the message).
    fn payload(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| b'a' + ((i + seed) % 26) as u8).collect()
    }

    /// A text message in fragments of these payload sizes (with a ping after the first), and
    /// the text it makes.
    fn fragmented(sizes: &[usize]) -> (Vec<u8>, String) {
        let (mut wire, mut text) = (vec![], vec![]);
        for (i, &len) in sizes.iter().enumerate() {
            let part = payload(len, i);
            let opcode = if i == 0 { 0x1 } else { 0x0 };
            wire.extend(frame(i + 1 == sizes.len(), opcode, &part));
            if i == 0 {
                wire.extend(frame(true, 0x9, b"between"));
            }
            text.extend(part);
        }
        (wire, String::from_utf8(text).expect("ASCII"))
    }

    /// Messages just under the limit: few large fragments, 127 small ones, fragments that
    /// double, one unfragmented frame.
    fn messages() -> Vec<(&'static str, Vec<u8>, String)> {
        let shapes: [(&str, Vec<usize>); 4] = [
            ("large fragments", vec![20_000, 20_000, 20_000, 5_000]),
            ("127 small fragments", vec![500; 127]),
            (
                "doubling fragments",
                vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000],
            ),
            ("one frame", vec![65_000]),
        ];
        shapes
            .into_iter()
            .map(|(what, sizes)| {
                let (wire, text) = if sizes.len() == 1 {
                    let p = payload(sizes[0], 0);
                    (frame(true, 0x1, &p), String::from_utf8(p).expect("ASCII"))
                } else {
                    fragmented(&sizes)
                };
                (what, wire, text)
            })
            .collect()
    }

    /// Read chunk sizes, cycled: tiny, mid-frame, larger than whole fragments.
    const CHUNKINGS: [&[usize]; 4] = [&[1, 7, 1_500], &[4_096], &[13, 30_000], &[100_000]];

    #[test]
    fn an_unfinished_message_holds_at_most_the_limit_plus_a_fixed_overhead() {
        for (what, wire, _) in messages() {
            // The last frame never finishes: one byte of it is missing.
            let wire = &wire[..wire.len() - 1];
            for chunking in CHUNKINGS {
                let (c, mut m) = client();
                let mut at = 0;
                for &len in chunking.iter().cycle() {
                    if at == wire.len() {
                        break;
                    }
                    let end = (at + len).min(wire.len());
                    let made = c.send(&mut m, &wire[at..end], READ_BUF);
                    assert!(made.iter().all(|msg| matches!(msg, ClientMessage::Ping(_))));
                    assert!(
                        m.held_bytes() <= BOUND,
                        "{what} in chunks of {chunking:?}: {} bytes held after {end} of {}",
                        m.held_bytes(),
                        wire.len()
                    );
                    at = end;
                }
            }
        }
    }

    #[test]
    fn a_message_in_any_chunking_is_assembled_whole_and_its_buffers_released() {
        for (what, wire, text) in messages() {
            for chunking in CHUNKINGS {
                let (c, mut m) = client();
                let mut made = vec![];
                let mut at = 0;
                for &len in chunking.iter().cycle() {
                    if at == wire.len() {
                        break;
                    }
                    let end = (at + len).min(wire.len());
                    made.extend(c.send(&mut m, &wire[at..end], READ_BUF));
                    at = end;
                }
                let texts: Vec<_> = made
                    .iter()
                    .filter_map(|msg| match msg {
                        ClientMessage::Text(t) => Some(t.to_string()),
                        _ => None,
                    })
                    .collect();
                assert_eq!(
                    texts,
                    vec![text.clone()],
                    "{what} in chunks of {chunking:?}"
                );
                assert_eq!(m.held_bytes(), 0, "{what} in chunks of {chunking:?}");
            }
        }
    }

    #[test]
    fn a_whole_frame_in_one_chunk_is_handed_over_without_a_copy() {
        let (c, mut m) = client();
        let mut read_buf = BytesMut::with_capacity(8 * 1024);
        read_buf.extend_from_slice(&frame(true, 0x1, br#"{"type":"ping"}"#));
        read_buf.extend_from_slice(&frame(false, 0x1, b"{"));
        let chunk = read_buf.split().freeze();
        drop(read_buf);
        let range = chunk.as_ptr_range();
        let made = c.send_chunk(&mut m, chunk);
        let [ClientMessage::Text(text)] = &made[..] else {
            panic!("one text message: {made:?}");
        };
        assert!(
            range.contains(&text.as_bytes().as_ptr()),
            "the frame was copied"
        );
    }

    /// The figure docs/websocket.md gives (64 KiB plus about 8.2 KiB).
    #[test]
    fn the_fixed_overhead_is_the_documented_one() {
        assert_eq!(HELD_OVERHEAD, 8_379);
    }

    #[test]
    fn a_header_counts_as_rfc_6455_encodes_a_clients_frame() {
        assert_eq!(header_len(0), 6);
        assert_eq!(header_len(125), 6);
        assert_eq!(header_len(126), 8);
        assert_eq!(header_len(65_535), 8);
        assert_eq!(header_len(65_536), 14);
    }
}
