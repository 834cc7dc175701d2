//! The per-user event frames, exactly as the WebSocket sends them (contract §5). The same JSON is
//! stored in `user_event`, published to Redis and replayed by `sync` / `changes`.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::store::inbox_state::Counters;
use crate::store::messages::Message;

pub fn created(seq: i64, unread: i64, unseen: i64, message: &Message) -> Value {
    json!({"type": "message.created", "seq": seq, "unread": unread, "unseen": unseen, "message": message})
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
