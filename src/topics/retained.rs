//! The node's cache of retained values, kept inside the router's topic entries (only topics
//! with a local subscriber are cached). What it knows of a topic comes from two places: a live
//! retained event (the newest there is) and a PostgreSQL read on a subscriber's cache miss.
//! Event ids are UUIDv7 strings, which sort by creation: whichever arrives last, the newer
//! value stays.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::broker::envelope::retained_frame;

/// A retained event ready to send: its frame with `"retained": true`.
#[derive(Debug, Clone)]
pub struct Retained {
    pub id: Arc<str>,
    pub frame: Arc<str>,
    pub expires_at: DateTime<Utc>,
}

impl Retained {
    /// A live event's frame, as its envelope carried it.
    pub fn live(id: Arc<str>, frame: &str, expires_at: DateTime<Utc>) -> Self {
        Retained {
            id,
            frame: retained_frame(frame),
            expires_at,
        }
    }

    /// From an event frame as PostgreSQL keeps it (`topic_retained`).
    pub fn of(id: String, mut frame: Value, expires_at: DateTime<Utc>) -> Self {
        if let Some(obj) = frame.as_object_mut() {
            obj.insert("retained".into(), Value::Bool(true));
        }
        Retained {
            id: id.into(),
            frame: Arc::from(frame.to_string()),
            expires_at,
        }
    }
}

/// What this node knows of a topic's retained value.
#[derive(Debug, Clone, Default)]
pub enum Cached {
    /// Not read yet (or forgotten after a broker reconnect): the next subscribe reads it.
    #[default]
    Unknown,
    /// Read: the topic has none.
    Nothing,
    Value(Retained),
}

impl Cached {
    /// Takes `new` unless what is cached is newer (see the module comment).
    pub fn offer(&mut self, new: Retained) {
        match self {
            Cached::Value(cur) if cur.id >= new.id => {}
            _ => *self = Cached::Value(new),
        }
    }

    /// The value to send now (its id and frame), if any; an expired one is forgotten.
    pub fn current(&mut self, now: DateTime<Utc>) -> Option<(Arc<str>, Arc<str>)> {
        match self {
            Cached::Value(r) if r.expires_at > now => Some((r.id.clone(), r.frame.clone())),
            Cached::Value(_) => {
                *self = Cached::Nothing;
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(id: &str) -> Retained {
        Retained::live(
            id.into(),
            &serde_json::json!({"type": "topic.event", "id": id}).to_string(),
            Utc::now() + chrono::Duration::hours(1),
        )
    }

    #[test]
    fn the_newer_value_stays_whatever_the_order() {
        let mut c = Cached::Unknown;
        c.offer(value("b"));
        c.offer(value("a"));
        let (id, frame) = c.current(Utc::now()).expect("cached");
        assert_eq!(&*id, "b");
        assert!(
            frame.contains("\"b\"") && frame.contains("\"retained\":true"),
            "{frame}"
        );
        c.offer(value("c"));
        assert!(c.current(Utc::now()).expect("cached").1.contains("\"c\""));
    }

    #[test]
    fn an_expired_value_is_not_sent() {
        let mut c = Cached::Unknown;
        c.offer(Retained::of(
            "a".into(),
            serde_json::json!({}),
            Utc::now() - chrono::Duration::seconds(1),
        ));
        assert!(c.current(Utc::now()).is_none());
        assert!(matches!(c, Cached::Nothing));
    }
}
