//! The per-user event frames, exactly as the WebSocket sends them (contract §5). The same JSON is
//! stored in `user_event`, published to Redis and replayed by `sync` / `changes`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::model::input::MessageInput;

use crate::store::create_rows::RowCounters;
use crate::store::inbox_state::Counters;
use crate::store::messages::Message;

pub fn created(seq: i64, unread: i64, unseen: i64, message: &Message) -> Value {
    json!({"type": "message.created", "seq": seq, "unread": unread, "unseen": unseen, "message": message})
}

/// A create's `send_time` as its frames carry it: the text `DateTime<Utc>` serialises to,
/// formatted once for all of a request's messages (formatting it was a third of a template).
#[derive(Debug, Clone, Default)]
pub struct SendTime(String);

impl SendTime {
    pub fn of(t: DateTime<Utc>) -> Self {
        match serde_json::to_value(t) {
            Ok(Value::String(s)) => SendTime(s),
            _ => SendTime(t.to_rfc3339()),
        }
    }
}

/// A new message as `Message` serialises it, borrowed from its request entry. Its fields are in
/// the order a `serde_json::Value` object keeps them (sorted), so the text is the one
/// `json!`/`Value` gave before, without building a tree of maps and strings per message.
#[derive(Serialize)]
struct NewMessage<'a> {
    content: &'a str,
    data: Option<&'a Value>,
    /// Left out of the template (`store::create_rows` adds each row's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Uuid>,
    is_read: bool,
    read_at: Option<DateTime<Utc>>,
    /// As `DateTime<Utc>` serialises (`SendTime`), formatted once per request.
    send_time: &'a str,
    send_user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<i64>,
    skip_url: Option<&'a str>,
    title: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
}

impl<'a> NewMessage<'a> {
    fn of(e: &'a MessageInput, send_time: &'a SendTime, row: Option<(Uuid, i64)>) -> Self {
        NewMessage {
            content: &e.content,
            data: e.data.as_ref(),
            id: row.map(|r| r.0),
            is_read: false,
            read_at: None,
            send_time: &send_time.0,
            send_user: e.send_user.as_deref(),
            seq: row.map(|r| r.1),
            skip_url: e.skip_url.as_deref(),
            title: &e.title,
            kind: &e.kind,
        }
    }
}

/// A new message as `Message` serialises it, minus `id` and `seq` (each row adds its own, see
/// `store::create_rows`), as JSON text: one per request entry, shared by all its recipients.
pub fn message_template(e: &MessageInput, send_time: &SendTime) -> String {
    to_text(&NewMessage::of(e, send_time, None))
}

/// The `message.created` frame of one created row (fields sorted, as `created` gives them).
#[derive(Serialize)]
struct NewMessageFrame<'a> {
    message: NewMessage<'a>,
    seq: i64,
    #[serde(rename = "type")]
    kind: &'static str,
    unread: i64,
    unseen: i64,
}

/// The `message.created` frame of a row just created from entry `e`, as text: the JSON that
/// `created` gives for the row as read back (the event log holds the same, built by
/// PostgreSQL from the template).
pub fn created_text(e: &MessageInput, send_time: &SendTime, id: Uuid, c: RowCounters) -> String {
    to_text(&NewMessageFrame {
        message: NewMessage::of(e, send_time, Some((id, c.seq))),
        seq: c.seq,
        kind: "message.created",
        unread: c.unread,
        unseen: c.unseen,
    })
}

/// Plain structs of strings, numbers and JSON values always serialise.
fn to_text(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

pub fn read(c: Counters, ids: &[Uuid]) -> Value {
    json!({"type": "message.read", "seq": c.seq, "unread": c.unread, "unseen": c.unseen, "ids": ids})
}

/// An event that names the messages it changed: `message.read`, `message.unread`,
/// `message.archived`, `message.unarchived`, `message.unsnoozed` (contract §10).
pub fn changed(kind: &str, c: Counters, ids: &[Uuid]) -> Value {
    json!({"type": kind, "seq": c.seq, "unread": c.unread, "unseen": c.unseen, "ids": ids})
}

/// `message.snoozed`: the messages snoozed and until when (they come back with a
/// `message.unsnoozed` then).
pub fn snoozed(c: Counters, ids: &[Uuid], until: DateTime<Utc>) -> Value {
    json!({"type": "message.snoozed", "seq": c.seq, "unread": c.unread, "unseen": c.unseen, "ids": ids, "until": until})
}

pub fn read_all(c: Counters) -> Value {
    json!({"type": "message.read_all", "seq": c.seq, "unread": c.unread, "unseen": c.unseen})
}

pub fn seen_all(c: Counters) -> Value {
    json!({"type": "message.seen_all", "seq": c.seq, "unread": c.unread, "unseen": c.unseen})
}

pub fn deleted(c: Counters, ids: &[Uuid]) -> Value {
    json!({"type": "message.deleted", "seq": c.seq, "unread": c.unread, "unseen": c.unseen, "ids": ids})
}

/// A topic event as subscribers get it (contract §8); `from` is the publishing user's `sub` for
/// a client publish, stamped from the token.
pub fn topic_event(topic: &str, id: &str, data: &Value, from: Option<&str>) -> Value {
    match from {
        Some(from) => {
            json!({"type": "topic.event", "topic": topic, "id": id, "from": from, "data": data})
        }
        None => json!({"type": "topic.event", "topic": topic, "id": id, "data": data}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame a create serialises for its local sessions is, byte for byte, the one `created`
    /// gives for the same row read back (and the template is that message without id and seq).
    #[test]
    fn a_created_rows_frame_text_is_what_created_gives_for_the_row() {
        let now = crate::inbox::db_now();
        for (send_user, skip_url, data) in [
            (None, None, None),
            (
                Some("u\"7"),
                Some("/x?a=1&b=\u{e9}"),
                Some(json!({"z": [1, 2.5, null], "a": {"k": "v\n"}})),
            ),
        ] {
            let e = MessageInput {
                recipients: vec!["r".into()],
                title: "T \u{1F600}".into(),
                content: "c \"quoted\"".into(),
                kind: "comment".into(),
                send_user: send_user.map(str::to_string),
                skip_url: skip_url.map(str::to_string),
                data,
            };
            let id = Uuid::now_v7();
            let c = RowCounters {
                seq: 7,
                unread: 3,
                unseen: 2,
                epoch: 1,
            };
            let row = Message {
                id,
                seq: c.seq,
                title: e.title.clone(),
                content: e.content.clone(),
                kind: e.kind.clone(),
                send_user: e.send_user.clone(),
                send_time: now,
                skip_url: e.skip_url.clone(),
                is_read: false,
                read_at: None,
                data: e.data.clone(),
            };
            let time = SendTime::of(now);
            assert_eq!(
                created_text(&e, &time, id, c),
                created(c.seq, c.unread, c.unseen, &row).to_string()
            );
            let mut view = serde_json::to_value(&row).expect("a message serialises");
            if let Some(m) = view.as_object_mut() {
                m.remove("id");
                m.remove("seq");
            }
            assert_eq!(message_template(&e, &time), view.to_string());
        }
    }
}
