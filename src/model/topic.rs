//! A topic's name and a topic event's data: the rules every path applies (REST, `publish`,
//! `subscribe`, `unsubscribe`, SSE, `notifyd listen --topic`).

use serde_json::Value;

use super::input::{json_has_nul, MAX_DATA_BYTES, NUL_MESSAGE};
use super::names;

/// Longest topic name, in characters.
pub const MAX_TOPIC_CHARS: usize = 200;

/// A topic name: the one name rule (`names`) with at most `MAX_TOPIC_CHARS` characters (it
/// becomes part of a Redis channel name, a row key and log fields). The `Err` is the message
/// for the caller.
pub fn check_topic(topic: &str) -> Result<(), String> {
    match names::check(topic, MAX_TOPIC_CHARS) {
        Ok(()) => Ok(()),
        Err(names::Refused::Length) => Err(format!(
            "a topic is 1 to {MAX_TOPIC_CHARS} characters without whitespace, control or format characters"
        )),
        Err(names::Refused::Char(c)) => Err(format!(
            "a topic has no whitespace, control or format characters (found {})",
            names::describe(c)
        )),
    }
}

/// A topic event's `data`: at most `MAX_DATA_BYTES` as JSON, no U+0000 (PostgreSQL's jsonb
/// refuses it).
pub fn check_data(data: &Value) -> Result<(), String> {
    if data.to_string().len() > MAX_DATA_BYTES {
        return Err(format!(
            "\"data\" must be at most {MAX_DATA_BYTES} bytes as JSON"
        ));
    }
    if json_has_nul(data) {
        return Err(format!("\"data\": {NUL_MESSAGE}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_and_data_are_bounded() {
        assert!(check_topic("product:42").is_ok());
        for bad in [
            "",
            "a b",
            "a\u{0}",
            "a\u{202e}b",
            "\u{feff}a",
            &"x".repeat(MAX_TOPIC_CHARS + 1),
        ] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
        assert!(check_data(&serde_json::json!({"stock": 1})).is_ok());
        let big = serde_json::json!({ "x": "y".repeat(MAX_DATA_BYTES) });
        assert!(check_data(&big).is_err());
    }
}
