//! Frames between client and server (contract §5): parsing what clients send, building what
//! the server says besides the stored events.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::inbox::changes::Changes;
use crate::inbox::CountsView;
use crate::store::events::StoredFrame;

/// Largest message a client may send, in frame bytes (for a fragmented message: its fragments'
/// headers and payloads together); larger ones close the socket with 1009 as soon as a header
/// announces it (the size check is in actix-http's frame parser, patches/actix-http.md).
pub const MAX_CLIENT_FRAME: usize = 64 * 1024;
/// Most fragments (the first frame and its continuations) one client message may have; one
/// more closes the socket with 1009. Browsers never fragment what they send; a client library
/// that does uses a few large fragments, not hundreds.
pub const MAX_CLIENT_FRAGMENTS: usize = 128;
/// Most topics one `subscribe` may name (per-session and per-user caps: `topics::router`).
pub const MAX_TOPICS_PER_FRAME: usize = 100;
pub use crate::model::topic::MAX_TOPIC_CHARS;
/// Largest `ref` (as JSON) a client may send: it is echoed in every reply.
pub const MAX_REF_BYTES: usize = 256;
/// Largest token an `auth` frame may carry.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A client frame, as serde reads it: `type` names the variant, every variant may carry a
/// `ref` (echoed in the reply), and each field's reader (`field`) checks its shape and limits,
/// so a frame that deserializes is one the session can act on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Read {
        #[serde(deserialize_with = "field::ids")]
        ids: Vec<Value>,
        #[serde(default)]
        r#ref: Value,
    },
    ReadAll {
        #[serde(default)]
        r#ref: Value,
    },
    SeenAll {
        #[serde(default)]
        r#ref: Value,
    },
    /// Inbox states (contract §10), like `POST /api/v1/me/messages/{unread,archive,...}`.
    Unread {
        #[serde(deserialize_with = "field::ids")]
        ids: Vec<Value>,
        #[serde(default)]
        r#ref: Value,
    },
    Archive {
        #[serde(deserialize_with = "field::ids")]
        ids: Vec<Value>,
        #[serde(default)]
        r#ref: Value,
    },
    Unarchive {
        #[serde(deserialize_with = "field::ids")]
        ids: Vec<Value>,
        #[serde(default)]
        r#ref: Value,
    },
    Snooze {
        #[serde(deserialize_with = "field::ids")]
        ids: Vec<Value>,
        /// Checked where the command is made (`inbox::commands::parse_until`), as over REST.
        #[serde(default)]
        until: Value,
        #[serde(default)]
        r#ref: Value,
    },
    Subscribe {
        #[serde(deserialize_with = "field::topics")]
        topics: Vec<String>,
        #[serde(default)]
        r#ref: Value,
    },
    Unsubscribe {
        #[serde(deserialize_with = "field::topics")]
        topics: Vec<String>,
        #[serde(default)]
        r#ref: Value,
    },
    Ping {
        #[serde(default)]
        r#ref: Value,
    },
    /// A fresh token for the same user, before the current one's `exp`.
    Auth {
        #[serde(deserialize_with = "field::token")]
        token: String,
        #[serde(default)]
        r#ref: Value,
    },
    /// A direct message (contract §8); validated by `inbox::direct`, like `POST /api/v1/me/send`.
    Send {
        #[serde(default)]
        to_user: Value,
        #[serde(deserialize_with = "field::message")]
        message: Value,
        /// Optional idempotency key (like `Idempotency-Key` on `POST /api/v1/me/send`): a resend
        /// after a lost `ack` replays the first send instead of creating a second message.
        #[serde(default)]
        key: Option<Value>,
        #[serde(default)]
        r#ref: Value,
    },
    /// The client handed every user frame up to `seq` to its app: no Web Push for those
    /// (contract §10). Never answered (one per event would double the traffic).
    Received {
        #[serde(deserialize_with = "field::seq")]
        seq: i64,
        #[serde(default)]
        r#ref: Value,
    },
    /// A client's event on a topic its token's `publish` claim allows (contract §8).
    Publish {
        #[serde(deserialize_with = "field::topic")]
        topic: String,
        /// Its size is checked after the frame is read (`parse`), so that a bad topic name is
        /// reported before a bad `data`, whatever order the client wrote them in.
        data: Value,
        #[serde(default)]
        r#ref: Value,
    },
}

impl ClientFrame {
    pub fn r#ref(&self) -> &Value {
        match self {
            ClientFrame::Read { r#ref, .. }
            | ClientFrame::ReadAll { r#ref }
            | ClientFrame::SeenAll { r#ref }
            | ClientFrame::Unread { r#ref, .. }
            | ClientFrame::Archive { r#ref, .. }
            | ClientFrame::Unarchive { r#ref, .. }
            | ClientFrame::Snooze { r#ref, .. }
            | ClientFrame::Subscribe { r#ref, .. }
            | ClientFrame::Unsubscribe { r#ref, .. }
            | ClientFrame::Ping { r#ref }
            | ClientFrame::Auth { r#ref, .. }
            | ClientFrame::Send { r#ref, .. }
            | ClientFrame::Received { r#ref, .. }
            | ClientFrame::Publish { r#ref, .. } => r#ref,
        }
    }
}

/// A client frame that could not be accepted: answered with an `error` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub r#ref: Value,
    pub code: &'static str,
    pub message: String,
}

pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    let v: Value = serde_json::from_str(text).map_err(|e| FrameError {
        r#ref: Value::Null,
        code: "bad_frame",
        message: format!("not JSON: {e}"),
    })?;
    // The `ref` is read before the rest, so that every refusal of a frame echoes it.
    let r#ref = v.get("ref").cloned().unwrap_or(Value::Null);
    if !r#ref.is_null() && r#ref.to_string().len() > MAX_REF_BYTES {
        return Err(FrameError {
            r#ref: Value::Null,
            code: "bad_frame",
            message: format!("\"ref\" must be at most {MAX_REF_BYTES} bytes of JSON"),
        });
    }
    // Checked here, not left to serde: an internally tagged enum would also read an array
    // whose first element is the tag, and its errors for a missing tag name no field.
    let Some(kind) = v.get("type").and_then(Value::as_str) else {
        return Err(FrameError {
            r#ref,
            code: "bad_frame",
            message: "a frame needs a string \"type\"".into(),
        });
    };
    let frame = match ClientFrame::deserialize(&v) {
        Ok(frame) => frame,
        Err(e) => return Err(field::refusal(kind, r#ref, &e)),
    };
    if let ClientFrame::Publish { data, .. } = &frame {
        if let Err(message) = crate::model::topic::check_data(data) {
            return Err(FrameError {
                r#ref,
                code: "bad_frame",
                message,
            });
        }
    }
    Ok(frame)
}

/// The readers of `ClientFrame`'s checked fields, and the one place where a serde error becomes
/// the `error` frame clients see.
///
/// serde's errors carry only text, so a reader's refusal travels as `<code>` `SEP` `<message>`
/// and `refusal` splits it again; serde's own errors (a missing field, an unknown variant) are
/// worded by serde and so are mapped to the field's message here.
mod field {
    use serde::de::{Deserialize, Deserializer, Error};
    use serde_json::Value;

    use super::{FrameError, MAX_TOKEN_BYTES, MAX_TOPICS_PER_FRAME, MAX_TOPIC_CHARS};
    use crate::inbox::commands::MAX_READ_IDS;
    use crate::model::topic::check_topic;

    /// Between a refusal's code and its message (a control character no code or message of
    /// ours contains).
    const SEP: char = '\u{1f}';

    /// What a frame with this field missing or of the wrong type is told.
    fn shape(field: &str) -> String {
        match field {
            "ids" => "\"ids\" must be an array".into(),
            "topics" => "\"topics\" must be an array of strings".into(),
            "token" => format!("\"token\" must be a string of 1 to {MAX_TOKEN_BYTES} bytes"),
            "message" => "\"message\" must be an object".into(),
            "topic" => "\"topic\" must be a string".into(),
            "data" => "\"data\" is required".into(),
            "seq" => "\"seq\" must be a non-negative integer".into(),
            other => format!("\"{other}\" is missing or of the wrong type"),
        }
    }

    fn refuse<E: Error>(code: &str, message: impl std::fmt::Display) -> E {
        E::custom(format_args!("{code}{SEP}{message}"))
    }

    fn bad_shape<E: Error>(field: &str) -> E {
        refuse("bad_frame", shape(field))
    }

    /// The `error` frame for a frame of type `kind` that serde refused with `e`.
    pub(super) fn refusal(kind: &str, r#ref: Value, e: &serde_json::Error) -> FrameError {
        let text = e.to_string();
        let (code, message) = if let Some((code, message)) = text.split_once(SEP) {
            let code = if code == "validation_failed" {
                "validation_failed"
            } else {
                "bad_frame"
            };
            (code, message.to_string())
        } else if let Some(field) = text
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            ("bad_frame", shape(field))
        } else if text.starts_with("unknown variant") {
            ("unknown_type", format!("unknown frame type {kind:?}"))
        } else {
            ("bad_frame", text)
        };
        FrameError {
            r#ref,
            code,
            message,
        }
    }

    pub(super) fn ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
        let Value::Array(ids) = Value::deserialize(d)? else {
            return Err(bad_shape("ids"));
        };
        if ids.len() > MAX_READ_IDS {
            return Err(refuse(
                "bad_frame",
                format_args!("at most {MAX_READ_IDS} ids per read"),
            ));
        }
        Ok(ids)
    }

    /// A name that breaks the name rule (contract §7) is `validation_failed`, like the REST
    /// publish's `422`; only a frame of the wrong shape is `bad_frame`. The first bad topic in
    /// the list decides which.
    pub(super) fn topics<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let Value::Array(list) = Value::deserialize(d)? else {
            return Err(bad_shape("topics"));
        };
        if list.is_empty() || list.len() > MAX_TOPICS_PER_FRAME {
            return Err(refuse(
                "bad_frame",
                format_args!("\"topics\" must hold 1 to {MAX_TOPICS_PER_FRAME} topics"),
            ));
        }
        list.into_iter()
            .map(|t| match t {
                Value::String(s) => match check_topic(&s) {
                    Ok(()) => Ok(s),
                    Err(m) => Err(refuse("validation_failed", m)),
                },
                _ => Err(refuse(
                    "bad_frame",
                    format_args!("a topic is a string of 1 to {MAX_TOPIC_CHARS} characters"),
                )),
            })
            .collect()
    }

    pub(super) fn topic<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let Value::String(topic) = Value::deserialize(d)? else {
            return Err(bad_shape("topic"));
        };
        check_topic(&topic).map_err(|m| refuse("validation_failed", m))?;
        Ok(topic)
    }

    pub(super) fn seq<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_i64()
                .filter(|n| *n >= 0)
                .ok_or_else(|| bad_shape("seq")),
            _ => Err(bad_shape("seq")),
        }
    }

    pub(super) fn token<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        match Value::deserialize(d)? {
            Value::String(t) if !t.is_empty() && t.len() <= MAX_TOKEN_BYTES => Ok(t),
            _ => Err(bad_shape("token")),
        }
    }

    pub(super) fn message<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        match Value::deserialize(d)? {
            m @ Value::Object(_) => Ok(m),
            _ => Err(bad_shape("message")),
        }
    }
}

/// `epoch`: the inbox's (`broker::envelope`); a client resumes with it beside `since`.
pub fn hello(user: &str, c: CountsView, epoch: i64, heartbeat_s: u64) -> Value {
    json!({"type": "hello", "user": user, "seq": c.seq, "unread": c.unread, "unseen": c.unseen, "epoch": epoch, "heartbeat_s": heartbeat_s})
}

/// `hello` for an anonymous viewer of public topics: no user, no inbox, no counts.
pub fn hello_anonymous(heartbeat_s: u64) -> Value {
    json!({"type": "hello", "user": null, "heartbeat_s": heartbeat_s})
}

/// The `sync` frame for a resuming client, or `None` when nothing happened since.
pub fn sync(changes: &Changes) -> Option<Value> {
    match changes {
        Changes::Events { events, .. } if events.is_empty() => None,
        Changes::Events {
            seq,
            unread,
            unseen,
            events,
            ..
        } => Some(
            json!({"type": "sync", "events": events, "seq": seq, "unread": unread, "unseen": unseen}),
        ),
        // A reset says which inbox the client now holds (its next resume passes it back).
        Changes::Reset {
            seq,
            unread,
            unseen,
            epoch,
            ..
        } => Some(
            json!({"type": "sync", "reset": true, "seq": seq, "unread": unread, "unseen": unseen, "epoch": epoch}),
        ),
    }
}

/// Bytes of events one `sync` frame carries at most (a single larger event goes alone).
pub const SYNC_FRAME_BYTES: usize = 256 * 1024;

/// A resume's events as `sync` frames of at most `max_bytes` of events each (at least one event
/// per frame), in seq order, each with the seq it ends at. Each frame's `seq`/`unread`/`unseen`
/// are those after its last event, so a client that applies the frames one by one always holds
/// counts that match what it has applied.
pub fn sync_frames(events: &[StoredFrame], max_bytes: usize) -> Vec<(i64, String)> {
    let mut frames = vec![];
    let mut batch = String::new();
    let mut last: Option<&StoredFrame> = None;
    let finish =
        |batch: &mut String, last: Option<&StoredFrame>, frames: &mut Vec<(i64, String)>| {
            let Some(ev) = last else { return };
            // Only the last event's counters are read, without building the event.
            let c: FrameCounts = serde_json::from_str(ev.text()).unwrap_or_default();
            frames.push((
                c.seq,
                format!(
                    r#"{{"type":"sync","events":[{batch}],"seq":{},"unread":{},"unseen":{}}}"#,
                    c.seq, c.unread, c.unseen
                ),
            ));
            batch.clear();
        };
    for ev in events {
        let text = ev.text();
        // The limit is on the events and their separating commas, as a frame carries them.
        if !batch.is_empty() && batch.len() + 1 + text.len() > max_bytes {
            finish(&mut batch, last, &mut frames);
        }
        if !batch.is_empty() {
            batch.push(',');
        }
        batch.push_str(text);
        last = Some(ev);
    }
    finish(&mut batch, last, &mut frames);
    frames
}

/// The counters an event frame carries (0 where it has none).
#[derive(Deserialize, Default)]
struct FrameCounts {
    #[serde(default)]
    seq: i64,
    #[serde(default)]
    unread: i64,
    #[serde(default)]
    unseen: i64,
}

pub fn ack(r#ref: &Value, extra: Value) -> Value {
    let mut v = json!({"type": "ack", "ref": r#ref});
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    v
}

pub fn error(r#ref: &Value, code: &str, message: &str) -> Value {
    json!({"type": "error", "ref": r#ref, "error": {"code": code, "message": message}})
}

/// An `error` frame for a refusal of the HTTP API's kind; a validation error names its field,
/// as the REST error body does.
pub fn api_error(r#ref: &Value, e: &crate::error::ApiError) -> Value {
    let mut v = error(r#ref, e.code(), &e.to_string());
    if let crate::error::ApiError::Validation { field, .. } = e {
        v["error"]["field"] = json!(field);
    }
    v
}

pub fn pong(r#ref: &Value) -> Value {
    if r#ref.is_null() {
        json!({"type": "pong"})
    } else {
        json!({"type": "pong", "ref": r#ref})
    }
}

/// Close codes (RFC 6455 and the application range).
/// Close reasons for 1013 (server busy), each naming when to come back: `retry_after=<ms>`,
/// 1 to 5 s in 250 ms steps. One is picked at random per refusal, so the clients refused in a
/// storm come back spread over 4 s, not as a second storm. (Fixed strings: a session's close
/// reason is a `&'static str`, and a close reason has at most 123 bytes.)
const BUSY_REASONS: [&str; 17] = [
    "server busy: retry_after=1000",
    "server busy: retry_after=1250",
    "server busy: retry_after=1500",
    "server busy: retry_after=1750",
    "server busy: retry_after=2000",
    "server busy: retry_after=2250",
    "server busy: retry_after=2500",
    "server busy: retry_after=2750",
    "server busy: retry_after=3000",
    "server busy: retry_after=3250",
    "server busy: retry_after=3500",
    "server busy: retry_after=3750",
    "server busy: retry_after=4000",
    "server busy: retry_after=4250",
    "server busy: retry_after=4500",
    "server busy: retry_after=4750",
    "server busy: retry_after=5000",
];

/// A 1013 close reason with a jittered `retry_after` (see `BUSY_REASONS`).
pub fn busy_reason() -> &'static str {
    use rand::Rng;
    BUSY_REASONS[rand::rng().random_range(0..BUSY_REASONS.len())]
}

/// The `retry_after=<ms>` a close reason names, if any (clients: `notifyd listen`, tests).
pub fn retry_after_ms(reason: &str) -> Option<u64> {
    let rest = &reason[reason.find("retry_after=")? + "retry_after=".len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Close codes (RFC 6455 §7.4.1, and notifyd's own 4xxx): docs/websocket.md lists them.
pub mod close {
    pub const GOING_AWAY_RESTART: u16 = 1012;
    /// A violation of the WebSocket protocol itself (unmasked frame, reserved bits or opcodes,
    /// a continuation without a start, a fragmented or over-long control frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message that is not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A message over `MAX_CLIENT_FRAME` bytes or `MAX_CLIENT_FRAGMENTS` fragments.
    pub const TOO_BIG: u16 = 1009;
    pub const UNSUPPORTED: u16 = 1003;
    /// Missed heartbeats (the client stopped reading).
    pub const POLICY: u16 = 1008;
    /// The server cannot take the session now (its user's mailbox is full): retry with backoff.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The token's `exp` passed without an in-band `auth`: reconnect with a fresh token.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The session could not keep up: resume with `since`.
    pub const SLOW_CONSUMER: u16 = 4008;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sync frames split by bytes, keep order, never drop or repeat an event, and carry the
    /// counts after their last event.
    #[test]
    fn busy_reasons_name_a_retry_after_between_1_and_5_s() {
        for r in BUSY_REASONS {
            let ms = retry_after_ms(r).unwrap();
            assert!((1000..=5000).contains(&ms), "{r}");
            assert!(r.len() <= 123);
        }
        assert!(retry_after_ms(busy_reason()).is_some());
        assert_eq!(retry_after_ms("server busy: retry"), None);
    }

    #[test]
    fn sync_frames_split_by_bytes_in_order() {
        let events: Vec<StoredFrame> = (1..=10)
            .map(|i| StoredFrame::from_json(&json!({"type": "message.created", "seq": i, "unread": i, "unseen": 1, "pad": "x".repeat(100)})))
            .collect();
        let one = events[0].text().len();
        let frames = sync_frames(&events, one * 3 + 3);
        assert_eq!(frames.len(), 4);
        let mut seqs = vec![];
        for (last, text) in &frames {
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(v["type"], "sync");
            assert_eq!(v["seq"], *last);
            assert_eq!(v["unread"], *last);
            seqs.extend(
                v["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["seq"].as_i64().unwrap()),
            );
        }
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        // An event larger than the limit still goes, alone.
        assert_eq!(sync_frames(&events[..2], 1).len(), 2);
        assert!(sync_frames(&[], 100).is_empty());
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(
            parse(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping { r#ref: Value::Null }
        );
        assert!(matches!(
            parse(r#"{"type":"read","ids":["a"],"ref":"c1"}"#).unwrap(),
            ClientFrame::Read { .. }
        ));
        assert!(matches!(
            parse(r#"{"type":"subscribe","topics":["product:1"]}"#).unwrap(),
            ClientFrame::Subscribe { .. }
        ));
    }

    #[test]
    fn rejects_garbage_with_codes() {
        assert_eq!(parse("nope").unwrap_err().code, "bad_frame");
        assert_eq!(
            parse(r#"{"type":"dance","ref":7}"#).unwrap_err(),
            FrameError {
                r#ref: json!(7),
                code: "unknown_type",
                message: "unknown frame type \"dance\"".into()
            }
        );
        assert_eq!(parse(r#"{"type":"read"}"#).unwrap_err().code, "bad_frame");
        assert_eq!(
            parse(r#"{"type":"subscribe","topics":[]}"#)
                .unwrap_err()
                .code,
            "bad_frame"
        );
        assert_eq!(parse(r#"[1,2]"#).unwrap_err().code, "bad_frame");
        let big_ref = json!({"type": "ping", "ref": "r".repeat(MAX_REF_BYTES)}).to_string();
        assert_eq!(parse(&big_ref).unwrap_err().r#ref, Value::Null);
        assert_eq!(
            parse(r#"{"type":"auth","ref":1}"#).unwrap_err().code,
            "bad_frame"
        );
        assert!(matches!(
            parse(r#"{"type":"auth","token":"t","ref":1}"#).unwrap(),
            ClientFrame::Auth { .. }
        ));
        assert!(matches!(
            parse(r#"{"type":"publish","topic":"group:7","data":{"x":1},"ref":"p"}"#).unwrap(),
            ClientFrame::Publish { .. }
        ));
        for bad in [
            r#"{"type":"publish","data":{}}"#,
            r#"{"type":"publish","topic":"group:7"}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().code, "bad_frame", "{bad}");
        }
        assert_eq!(
            parse(r#"{"type":"publish","topic":"a b","data":{}}"#)
                .unwrap_err()
                .code,
            "validation_failed",
            "a bad name is not a bad frame shape"
        );
    }

    /// The `error` a client gets for each way a frame can be wrong: its code and its exact
    /// message (clients and docs/websocket.md read them), with the frame's `ref` echoed.
    #[test]
    fn every_refusal_has_its_code_and_message() {
        let ids = json!({"type": "read", "ids": vec![1; crate::inbox::commands::MAX_READ_IDS + 1], "ref": "r"});
        let data = json!({"type": "publish", "topic": "group:7", "ref": "r",
            "data": "x".repeat(crate::model::input::MAX_DATA_BYTES)});
        let topics = json!({"type": "subscribe", "topics": vec!["a:1"; MAX_TOPICS_PER_FRAME + 1], "ref": "r"});
        let shape = |m: &str| ("bad_frame", m.to_string());
        let token = format!("\"token\" must be a string of 1 to {MAX_TOKEN_BYTES} bytes");
        let cases: Vec<(String, (&str, String))> = vec![
            (
                r#"{"type":"read","ref":"r"}"#.into(),
                shape("\"ids\" must be an array"),
            ),
            (
                r#"{"type":"read","ids":{},"ref":"r"}"#.into(),
                shape("\"ids\" must be an array"),
            ),
            (
                ids.to_string(),
                shape(&format!(
                    "at most {} ids per read",
                    crate::inbox::commands::MAX_READ_IDS
                )),
            ),
            (
                r#"{"type":"subscribe","ref":"r"}"#.into(),
                shape("\"topics\" must be an array of strings"),
            ),
            (
                r#"{"type":"unsubscribe","topics":"a:1","ref":"r"}"#.into(),
                shape("\"topics\" must be an array of strings"),
            ),
            (
                r#"{"type":"subscribe","topics":[],"ref":"r"}"#.into(),
                shape(&format!(
                    "\"topics\" must hold 1 to {MAX_TOPICS_PER_FRAME} topics"
                )),
            ),
            (
                topics.to_string(),
                shape(&format!(
                    "\"topics\" must hold 1 to {MAX_TOPICS_PER_FRAME} topics"
                )),
            ),
            (
                r#"{"type":"subscribe","topics":["a:1",7,"a b"],"ref":"r"}"#.into(),
                shape(&format!(
                    "a topic is a string of 1 to {MAX_TOPIC_CHARS} characters"
                )),
            ),
            (r#"{"type":"auth","ref":"r"}"#.into(), shape(&token)),
            (
                r#"{"type":"auth","token":"","ref":"r"}"#.into(),
                shape(&token),
            ),
            (
                r#"{"type":"auth","token":7,"ref":"r"}"#.into(),
                shape(&token),
            ),
            (
                json!({"type": "auth", "token": "t".repeat(MAX_TOKEN_BYTES + 1), "ref": "r"})
                    .to_string(),
                shape(&token),
            ),
            (
                r#"{"type":"send","to_user":"7","message":null,"ref":"r"}"#.into(),
                shape("\"message\" must be an object"),
            ),
            (
                r#"{"type":"publish","data":{},"ref":"r"}"#.into(),
                shape("\"topic\" must be a string"),
            ),
            (
                r#"{"type":"publish","topic":7,"data":{},"ref":"r"}"#.into(),
                shape("\"topic\" must be a string"),
            ),
            (
                r#"{"type":"publish","topic":"group:7","ref":"r"}"#.into(),
                shape("\"data\" is required"),
            ),
            (
                data.to_string(),
                shape(&crate::model::topic::check_data(&data["data"]).unwrap_err()),
            ),
            (
                r#"{"ref":"r"}"#.into(),
                shape("a frame needs a string \"type\""),
            ),
            (
                r#"{"type":7,"ref":"r"}"#.into(),
                shape("a frame needs a string \"type\""),
            ),
            (
                r#"{"type":"Ping","ref":"r"}"#.into(),
                ("unknown_type", "unknown frame type \"Ping\"".into()),
            ),
        ];
        for (frame, (code, message)) in cases {
            let e = parse(&frame).unwrap_err();
            assert_eq!(
                (e.code, e.message, e.r#ref),
                (code, message, json!("r")),
                "{frame}"
            );
        }
        // A name that breaks the rule is reported before anything else wrong in the frame.
        for frame in [
            r#"{"type":"subscribe","topics":["a b",7],"ref":"r"}"#,
            r#"{"type":"publish","topic":"a b","ref":"r"}"#,
        ] {
            assert_eq!(
                parse(frame).unwrap_err().code,
                "validation_failed",
                "{frame}"
            );
        }
        // Not an object: no `type` to read (serde alone would take an array's first element).
        for frame in [r#"["ping"]"#, r#""ping""#, "7"] {
            let e = parse(frame).unwrap_err();
            assert_eq!(
                (e.code, e.message.as_str()),
                ("bad_frame", "a frame needs a string \"type\""),
                "{frame}"
            );
        }
        // `null` fields read as absent where a field is optional; unknown fields are ignored.
        assert_eq!(
            parse(r#"{"type":"send","to_user":null,"message":{},"key":null,"ref":null,"x":1}"#)
                .unwrap(),
            ClientFrame::Send {
                to_user: Value::Null,
                message: json!({}),
                key: None,
                r#ref: Value::Null
            }
        );
    }

    #[test]
    fn send_needs_a_message_object() {
        assert_eq!(
            parse(r#"{"type":"send","to_user":"7","message":{"title":"t"},"ref":"d1"}"#).unwrap(),
            ClientFrame::Send {
                to_user: json!("7"),
                message: json!({"title": "t"}),
                key: None,
                r#ref: json!("d1")
            }
        );
        for bad in [
            r#"{"type":"send","to_user":"7","ref":"d1"}"#,
            r#"{"type":"send","to_user":"7","message":"hi","ref":"d1"}"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!((e.code, e.r#ref), ("bad_frame", json!("d1")), "{bad}");
        }
    }

    /// A topic that breaks the name rule is `validation_failed` in every frame that names one
    /// (also when it is too long); a frame of the wrong shape stays `bad_frame`.
    #[test]
    fn topic_names_are_checked_by_the_name_rule_in_every_frame() {
        let long = "x".repeat(MAX_TOPIC_CHARS + 1);
        for name in [
            "a\u{0}b",
            " a",
            "a\r\n",
            "a\u{85}",
            "a\u{202e}b",
            "\u{feff}a",
            "",
            &long,
        ] {
            for frame in [
                json!({"type": "subscribe", "topics": ["ok:1", name], "ref": "r"}),
                json!({"type": "unsubscribe", "topics": [name], "ref": "r"}),
                json!({"type": "publish", "topic": name, "data": {}, "ref": "r"}),
            ] {
                let e = parse(&frame.to_string()).unwrap_err();
                assert_eq!(
                    (e.code, e.r#ref),
                    ("validation_failed", json!("r")),
                    "{frame}"
                );
            }
        }
        let e = parse(r#"{"type": "subscribe", "topics": [7], "ref": "r"}"#).unwrap_err();
        assert_eq!(e.code, "bad_frame");
        assert!(parse(r#"{"type": "subscribe", "topics": ["product:\u00e9"]}"#).is_ok());
    }
}
