//! `notifyd listen --topic`: which topics to subscribe to, subscribing after every `hello`, and
//! dropping topic events already printed (the relay is at-least-once, and a subscribe is followed
//! by the topic's retained event, which the listener may have printed before a reconnect).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::topics::router::MAX_TOPICS_PER_SESSION;
use crate::wire::protocol::MAX_TOPICS_PER_FRAME;

/// Event ids remembered per topic: a duplicate comes soon after the original (a relay retry,
/// the retained copy after a resubscribe), so a short memory suffices and stays bounded.
pub const RECENT_IDS_PER_TOPIC: usize = 256;
/// A subscribe not answered by then: the connection is presumed broken.
const SUBSCRIBE_REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// A subscribe answered `busy` is sent again this many times, then the connection is replaced.
const BUSY_RETRIES: u32 = 3;
const BUSY_RETRY_BASE: Duration = Duration::from_millis(200);

/// The `--topic` values (each may be a comma list) as the list to subscribe to: trimmed, without
/// repeats, each a topic the server accepts, at most as many as one session may hold.
pub fn topic_list(raw: &[String]) -> Result<Vec<String>, String> {
    let mut seen = HashSet::new();
    let mut topics = Vec::new();
    for t in raw.iter().flat_map(|r| r.split(',')).map(str::trim) {
        if t.is_empty() {
            continue;
        }
        // The server's rule, so a name it would refuse fails here, before any connection.
        crate::model::topic::check_topic(t).map_err(|m| format!("{t:?}: {m}"))?;
        if seen.insert(t.to_string()) {
            topics.push(t.to_string());
        }
    }
    if topics.len() > MAX_TOPICS_PER_SESSION {
        return Err(format!(
            "at most {MAX_TOPICS_PER_SESSION} topics (the server's limit per connection)"
        ));
    }
    Ok(topics)
}

/// The ids of the topic events printed lately, per subscribed topic. Bounded: only the listener's
/// own topics (bounded by `topic_list`), `RECENT_IDS_PER_TOPIC` ids each.
pub struct Seen {
    topics: HashMap<String, Recent>,
}

#[derive(Default)]
struct Recent {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Seen {
    pub fn new(topics: &[String]) -> Self {
        Seen {
            topics: topics
                .iter()
                .map(|t| (t.clone(), Recent::default()))
                .collect(),
        }
    }

    /// Whether to print this `topic.event`: no to an id already printed for its topic. Events
    /// without an id (older servers) and of topics not asked for are printed, and not remembered.
    pub fn first_time(&mut self, frame: &Value) -> bool {
        let id = match &frame["id"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return true,
        };
        let Some(recent) = frame["topic"].as_str().and_then(|t| self.topics.get_mut(t)) else {
            return true;
        };
        if recent.ids.contains(&id) {
            return false;
        }
        if recent.order.len() >= RECENT_IDS_PER_TOPIC {
            if let Some(old) = recent.order.pop_front() {
                recent.ids.remove(&old);
            }
        }
        recent.order.push_back(id.clone());
        recent.ids.insert(id);
        true
    }
}

/// One connection's subscribing: the topics go out in frames of up to `MAX_TOPICS_PER_FRAME`,
/// one frame at a time (a session has few commands in flight). The server refuses a frame as a
/// whole when one topic is not allowed, so a refused frame of several topics is sent again one
/// topic per frame: every topic that can be had is subscribed, each refused one is named.
pub struct Subscribing {
    queue: VecDeque<Vec<String>>,
    waiting: Option<Waiting>,
    pub accepted: usize,
    pub refused: usize,
}

struct Waiting {
    reference: String,
    topics: Vec<String>,
    deadline: Instant,
    busy_retries: u32,
    resend_at: Option<Instant>,
}

impl Waiting {
    fn frame(&self) -> String {
        json!({"type": "subscribe", "topics": self.topics, "ref": self.reference}).to_string()
    }
}

impl Subscribing {
    pub fn new(topics: &[String]) -> Self {
        Subscribing {
            queue: topics
                .chunks(MAX_TOPICS_PER_FRAME)
                .map(<[String]>::to_vec)
                .collect(),
            waiting: None,
            accepted: 0,
            refused: 0,
        }
    }

    /// Nothing left to send or to wait for.
    pub fn done(&self) -> bool {
        self.queue.is_empty() && self.waiting.is_none()
    }

    /// The next frame to send, if none is awaiting its answer. `next_ref` numbers the frames.
    pub fn next_frame(&mut self, next_ref: &mut u64) -> Option<String> {
        if self.waiting.is_some() {
            return None;
        }
        let topics = self.queue.pop_front()?;
        *next_ref += 1;
        let w = Waiting {
            reference: format!("s{next_ref}"),
            topics,
            deadline: Instant::now() + SUBSCRIBE_REPLY_TIMEOUT,
            busy_retries: 0,
            resend_at: None,
        };
        let frame = w.frame();
        self.waiting = Some(w);
        Some(frame)
    }

    pub fn is_reply(&self, frame: &Value) -> bool {
        self.waiting
            .as_ref()
            .is_some_and(|w| frame["ref"].as_str() == Some(w.reference.as_str()))
    }

    /// Takes the answer to the awaited frame. Returns a status line to report, or Err when the
    /// connection should be replaced (the server stayed busy).
    pub fn on_reply(&mut self, frame: &Value) -> Result<String, String> {
        let Some(w) = self.waiting.as_mut() else {
            return Ok(String::new());
        };
        if frame["type"] != "error" {
            let w = self.waiting.take().map(|w| w.topics).unwrap_or_default();
            self.accepted += w.len();
            return Ok(format!("subscribed: {}", w.join(", ")));
        }
        let code = frame["error"]["code"].as_str().unwrap_or("error");
        let message = frame["error"]["message"].as_str().unwrap_or("");
        if code == "busy" {
            if w.busy_retries >= BUSY_RETRIES {
                return Err(format!("subscribe: the server stayed busy: {message}"));
            }
            w.resend_at = Some(Instant::now() + BUSY_RETRY_BASE * 2u32.pow(w.busy_retries));
            w.busy_retries += 1;
            return Ok(String::new());
        }
        let topics = self.waiting.take().map(|w| w.topics).unwrap_or_default();
        if topics.len() > 1 {
            for t in topics.into_iter().rev() {
                self.queue.push_front(vec![t]);
            }
            return Ok(String::new());
        }
        self.refused += topics.len();
        Ok(format!(
            "subscribe refused: {}: {code}: {message}",
            topics.join(", ")
        ))
    }

    /// When `on_timer` has something to do.
    pub fn timer(&self) -> Option<Instant> {
        self.waiting
            .as_ref()
            .map(|w| w.resend_at.unwrap_or(w.deadline))
    }

    /// A busy frame's time to go again (Ok: the frame to send), or no answer in time (Err).
    pub fn on_timer(&mut self) -> Result<Option<String>, String> {
        let Some(w) = self.waiting.as_mut() else {
            return Ok(None);
        };
        if w.resend_at.take().is_some() {
            w.deadline = Instant::now() + SUBSCRIBE_REPLY_TIMEOUT;
            return Ok(Some(w.frame()));
        }
        Err(format!(
            "no answer to subscribe within {SUBSCRIBE_REPLY_TIMEOUT:?}: connection presumed dead"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn topic_lists_take_repeats_and_commas() {
        assert_eq!(
            topic_list(&strings(&["product:1", " product:2 ,product:1", ","])),
            Ok(strings(&["product:1", "product:2"]))
        );
        assert!(topic_list(&["x".repeat(crate::model::topic::MAX_TOPIC_CHARS + 1)]).is_err());
        assert!(topic_list(&strings(&["product:\u{200b}1"])).is_err());
        let many: Vec<String> = (0..=MAX_TOPICS_PER_SESSION)
            .map(|i| format!("t:{i}"))
            .collect();
        assert!(topic_list(&many).is_err());
        assert_eq!(topic_list(&many[1..]).map(|l| l.len()), Ok(500));
    }

    #[test]
    fn an_id_is_printed_once_per_topic_and_memory_is_bounded() {
        let mut seen = Seen::new(&strings(&["a", "b"]));
        let ev = |topic: &str, id: Value| json!({"type": "topic.event", "topic": topic, "id": id});
        assert!(seen.first_time(&ev("a", json!("1"))));
        assert!(!seen.first_time(&ev("a", json!("1"))));
        assert!(seen.first_time(&ev("b", json!("1"))), "ids are per topic");
        assert!(seen.first_time(&ev("a", json!(2))));
        assert!(!seen.first_time(&ev("a", json!(2))));
        // No id, or a topic not subscribed to: printed every time, not remembered.
        let no_id = json!({"type": "topic.event", "topic": "a", "data": {}});
        assert!(seen.first_time(&no_id) && seen.first_time(&no_id));
        assert!(seen.first_time(&ev("c", json!("1"))) && seen.first_time(&ev("c", json!("1"))));
        assert!(!seen.topics.contains_key("c"));
        // The oldest id is forgotten once RECENT_IDS_PER_TOPIC newer ones were printed.
        for i in 0..RECENT_IDS_PER_TOPIC {
            assert!(seen.first_time(&ev("a", json!(format!("n{i}")))));
        }
        assert_eq!(seen.topics["a"].order.len(), RECENT_IDS_PER_TOPIC);
        assert_eq!(seen.topics["a"].ids.len(), RECENT_IDS_PER_TOPIC);
        assert!(seen.first_time(&ev("a", json!("1"))));
        assert!(!seen.first_time(&ev("a", json!(format!("n{}", RECENT_IDS_PER_TOPIC - 1)))));
    }

    fn reply_to(s: &Subscribing, err: Option<&str>) -> Value {
        let r = s.waiting.as_ref().expect("waiting").reference.clone();
        match err {
            None => json!({"type": "ack", "ref": r}),
            Some(code) => {
                json!({"type": "error", "ref": r, "error": {"code": code, "message": "m"}})
            }
        }
    }

    #[test]
    fn a_refused_frame_is_retried_topic_by_topic_and_each_refusal_is_named() {
        let mut s = Subscribing::new(&strings(&["ok:1", "no:1", "ok:2"]));
        let mut n = 0;
        let f: Value = serde_json::from_str(&s.next_frame(&mut n).expect("frame")).expect("json");
        assert_eq!(f["topics"], json!(["ok:1", "no:1", "ok:2"]));
        assert!(s.next_frame(&mut n).is_none(), "one frame at a time");
        assert_eq!(
            s.on_reply(&reply_to(&s, Some("forbidden"))),
            Ok(String::new())
        );
        let mut lines = vec![];
        while let Some(f) = s.next_frame(&mut n) {
            let f: Value = serde_json::from_str(&f).expect("json");
            let refuse = f["topics"][0] == "no:1";
            let reply = reply_to(&s, refuse.then_some("forbidden"));
            assert!(s.is_reply(&reply));
            lines.push(s.on_reply(&reply).expect("go on"));
        }
        assert!(s.done());
        assert_eq!(
            lines,
            vec![
                "subscribed: ok:1",
                "subscribe refused: no:1: forbidden: m",
                "subscribed: ok:2"
            ]
        );
        assert_eq!((s.accepted, s.refused), (2, 1));
    }

    #[test]
    fn busy_is_retried_a_few_times_and_silence_gives_up() {
        let mut s = Subscribing::new(&strings(&["a"]));
        let mut n = 0;
        let first = s.next_frame(&mut n).expect("frame");
        let started = Instant::now();
        for i in 0..BUSY_RETRIES {
            assert_eq!(s.on_reply(&reply_to(&s, Some("busy"))), Ok(String::new()));
            let wait = s.timer().expect("timer") - started;
            assert!(wait >= BUSY_RETRY_BASE * 2u32.pow(i) && wait < SUBSCRIBE_REPLY_TIMEOUT);
            // (the caller calls on_timer once the timer fires)
            assert_eq!(
                s.on_timer(),
                Ok(Some(first.clone())),
                "the same frame again"
            );
        }
        assert!(s.on_reply(&reply_to(&s, Some("busy"))).is_err());
        let mut s = Subscribing::new(&strings(&["a"]));
        s.next_frame(&mut n);
        assert!(s.timer().expect("timer") - Instant::now() > SUBSCRIBE_REPLY_TIMEOUT / 2);
        assert!(s.on_timer().is_err(), "no answer by the deadline");
    }
}
