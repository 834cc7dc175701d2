//! The per-user event frames, exactly as the WebSocket sends them (contract §5). The same JSON is
//! stored in `user_event`, published to Redis and replayed by `sync` / `changes`.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::input::MessageInput;

use crate::store::inbox_state::Counters;
use crate::store::messages::Message;

pub fn created(seq: i64, unread: i64, unseen: i64, message: &Message) -> Value {
    json!({"type": "message.created", "seq": seq, "unread": unread, "unseen": unseen, "message": message})
}

/// A new message as `Message` serialises it, minus `id` and `seq` (each row adds its own, see
/// `store::create_rows`): one per request entry, shared by all its recipients.
pub fn message_template(e: &MessageInput, send_time: DateTime<Utc>) -> Value {
    json!({"title": e.title, "content": e.content, "type": e.kind, "send_user": e.send_user,
        "send_time": send_time, "skip_url": e.skip_url, "is_read": false, "read_at": null,
        "data": e.data})
}

pub fn read(c: Counters, ids: &[Uuid]) -> Value {
    json!({"type": "message.read", "seq": c.seq, "unread": c.unread, "unseen": c.unseen, "ids": ids})
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
