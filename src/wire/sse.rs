//! The frames of §5 as Server-Sent Events (contract §10): `id: <seq>` on frames that carry a
//! top-level `seq` (user events, `hello`, `sync`), `event: <the frame's type>`, `data: <the
//! frame>`. A frame is one line of JSON (serde_json escapes every line break inside strings),
//! so it is one `data:` line.
//!
//! The frame is read, not rebuilt: its top-level `type` and `seq` are picked out by serde
//! skipping everything else (nested objects, the `events` of a `sync`), with no allocation for
//! the frames notifyd builds.

use std::borrow::Cow;
use std::fmt::Write;

use bytes::{BufMut, BytesMut};
use serde::Deserialize;

/// A comment line: keeps proxies from timing the stream out and lets the server see whether
/// its writes still drain (the heartbeat of an SSE stream; clients ignore it).
pub const PING: &[u8] = b": ping\n\n";

/// How long `EventSource` waits before it reconnects after a stream ends, unless told
/// otherwise: sent once at the stream's start.
pub const RETRY_MS: u64 = 2000;

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    seq: Option<i64>,
}

/// Appends `frame` to `buf` as one event. `id` overrides the frame's own `seq` as its event id
/// (a resume's `hello`: see `gateway::sse`).
pub fn event(buf: &mut BytesMut, frame: &str, id: Option<i64>) {
    let head = serde_json::from_str::<Head>(frame).unwrap_or(Head {
        kind: None,
        seq: None,
    });
    if let Some(id) = id.or(head.seq) {
        let _ = writeln!(buf, "id: {id}");
    }
    if let Some(kind) = head.kind.as_deref().filter(|k| is_event_name(k)) {
        buf.put_slice(b"event: ");
        buf.put_slice(kind.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_slice(b"data: ");
    buf.put_slice(frame.as_bytes());
    buf.put_slice(b"\n\n");
}

/// `retry: <ms>` on a line of its own (`EventSource`'s reconnect delay from now on).
pub fn retry(buf: &mut BytesMut, ms: u64) {
    let _ = write!(buf, "retry: {ms}\n\n");
}

/// A type that can stand as an event name: no line break can split the field (the frames'
/// types are fixed ASCII names; this is the guard, not a filter that ever fires).
fn is_event_name(kind: &str) -> bool {
    !kind.is_empty() && !kind.bytes().any(|b| b == b'\n' || b == b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(frame: &serde_json::Value, id: Option<i64>) -> String {
        let mut buf = BytesMut::new();
        event(&mut buf, &frame.to_string(), id);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn user_frames_carry_their_seq_as_the_event_id() {
        let f = json!({"type": "message.created", "seq": 18, "unread": 4, "unseen": 2, "message": {"seq": 99, "title": "a\nb"}});
        assert_eq!(
            one(&f, None),
            format!("id: 18\nevent: message.created\ndata: {f}\n\n")
        );
        let sync = json!({"type": "sync", "events": [{"type": "message.read", "seq": 3}], "seq": 3, "unread": 0, "unseen": 0});
        assert!(one(&sync, None).starts_with("id: 3\nevent: sync\n"));
    }

    #[test]
    fn frames_without_a_seq_have_no_id_and_an_id_can_be_given() {
        let topic = json!({"type": "topic.event", "topic": "product:1", "data": {"seq": 5}});
        assert_eq!(
            one(&topic, None),
            format!("event: topic.event\ndata: {topic}\n\n")
        );
        let hello = json!({"type": "hello", "user": "42", "seq": 20, "unread": 1, "unseen": 1, "epoch": 1, "heartbeat_s": 25});
        assert!(one(&hello, Some(10)).starts_with("id: 10\nevent: hello\n"));
    }

    #[test]
    fn every_event_is_one_data_line() {
        let f =
            json!({"type": "message.created", "seq": 1, "message": {"content": "x\r\ny\u{2028}z"}});
        let text = one(&f, None);
        assert_eq!(text.matches("data: ").count(), 1);
        assert_eq!(text.matches('\n').count(), 4, "{text:?}");
        assert!(!text.contains('\r'));
    }
}
