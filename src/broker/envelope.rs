//! What travels from a commit to the sessions: a small header and the frame, as the client gets
//! it. Built once, when the change commits (the create statement writes it into the outbox, a
//! command or a topic event encodes it here); the relay publishes it as it is; the hub reads
//! the header line and hands the same frame bytes to every listener. Nothing on the way parses
//! the frame's JSON.
//!
//! On the broker an envelope is text: one header line, then the frame.
//!
//! | header | meaning |
//! |---|---|
//! | `u <seq> <epoch> <at>` | an event of a user's stream: its seq, the inbox epoch, the commit time (µs since 1970) |
//! | `x` | the user's inbox was erased: sessions reset (no frame) |
//! | `t <id> r` / `t <id> -` | a topic event and whether it is the topic's retained value |
//! | `p` | a readiness probe (`broker::canary`); the "frame" is its token |
//!
//! The **epoch** says which inbox of the user a seq belongs to (`user_inbox_state.epoch`): a new
//! one when an erasure replaced the inbox, or after `notifyd reset-epochs` marked a restored
//! database. A user's actor resets its sessions when an event comes with another epoch than the
//! one they saw, and a client that resumes with `since` and the `epoch` of its `hello` gets a
//! reset, not another inbox's events, when they differ.
//!
//! A payload that starts with `{` is a plain frame, as versions before the envelope published
//! (during a rolling upgrade): its head is read from its JSON, here and nowhere else.

use std::sync::Arc;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// An event of a user's stream. `epoch` and `at` are 0 when not known (a plain frame).
    User { seq: i64, epoch: i64, at: i64 },
    /// The user's inbox was erased: whatever their sessions hold is gone.
    Erased,
    /// A topic event: its id (for dropping a second delivery) and whether it is retained.
    Topic { id: Arc<str>, retain: bool },
    /// A readiness probe's token (the frame).
    Probe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub head: Head,
    /// The frame exactly as clients get it (for `Erased`, empty; for `Probe`, the token).
    pub frame: Arc<str>,
}

/// Why a payload is not an envelope.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not an envelope: {}", self.0)
    }
}

impl Envelope {
    pub fn user(seq: i64, epoch: i64, at: i64, frame: impl Into<Arc<str>>) -> Self {
        Envelope {
            head: Head::User { seq, epoch, at },
            frame: frame.into(),
        }
    }

    pub fn erased() -> Self {
        Envelope {
            head: Head::Erased,
            frame: Arc::from(""),
        }
    }

    pub fn topic(id: &str, retain: bool, frame: impl Into<Arc<str>>) -> Self {
        Envelope {
            head: Head::Topic {
                id: Arc::from(id),
                retain,
            },
            frame: frame.into(),
        }
    }

    pub fn probe(token: &str) -> Self {
        Envelope {
            head: Head::Probe,
            frame: Arc::from(token),
        }
    }

    /// The envelope as the broker carries it (see the module comment; the create statement in
    /// `store::create_rows` writes the same text for its rows).
    pub fn encode(&self) -> String {
        let head = match &self.head {
            Head::User { seq, epoch, at } => format!("u {seq} {epoch} {at}"),
            Head::Erased => "x".to_string(),
            Head::Topic { id, retain } => format!("t {id} {}", if *retain { "r" } else { "-" }),
            Head::Probe => "p".to_string(),
        };
        let mut s = String::with_capacity(head.len() + 1 + self.frame.len());
        s.push_str(&head);
        s.push('\n');
        s.push_str(&self.frame);
        s
    }

    /// Reads a payload from the broker: its header line, or (a plain frame, `{...}`) its JSON.
    pub fn decode(payload: &str) -> Result<Envelope, Malformed> {
        if payload.starts_with('{') {
            return plain(payload);
        }
        let (head, frame) = payload
            .split_once('\n')
            .ok_or(Malformed("no header line"))?;
        let mut fields = head.split(' ');
        let kind = fields.next().unwrap_or_default();
        let mut number = || -> Result<i64, Malformed> {
            fields
                .next()
                .and_then(|f| f.parse().ok())
                .ok_or(Malformed("a number is missing"))
        };
        let head = match kind {
            "u" => Head::User {
                seq: number()?,
                epoch: number()?,
                at: number()?,
            },
            "x" => Head::Erased,
            "p" => Head::Probe,
            "t" => {
                let mut rest = head[1..].trim_start().splitn(2, ' ');
                let id = rest.next().filter(|id| !id.is_empty());
                let retain = rest.next();
                match (id, retain) {
                    (Some(id), Some(r @ ("r" | "-"))) => Head::Topic {
                        id: Arc::from(id),
                        retain: r == "r",
                    },
                    _ => return Err(Malformed("a topic header is `t <id> r|-`")),
                }
            }
            _ => return Err(Malformed("unknown kind")),
        };
        Ok(Envelope {
            head,
            frame: Arc::from(frame),
        })
    }
}

/// A plain frame's head, from its JSON (rolling upgrades only: see the module comment).
#[derive(Deserialize)]
struct PlainHead {
    #[serde(rename = "type")]
    kind: Option<String>,
    seq: Option<i64>,
    reset: Option<bool>,
    id: Option<String>,
    #[serde(default)]
    retain: bool,
}

/// The field that marked a retained topic event in a plain frame.
const PLAIN_RETAIN_MARKER: &str = "retain";

fn plain(payload: &str) -> Result<Envelope, Malformed> {
    let head: PlainHead =
        serde_json::from_str(payload).map_err(|_| Malformed("a plain frame that is not JSON"))?;
    match (head.kind.as_deref(), head.seq) {
        // The erase notice of earlier versions: the `sync` reset of an empty inbox.
        (Some("sync"), Some(0)) if head.reset == Some(true) => Ok(Envelope::erased()),
        (Some("topic.event"), _) => {
            let id = head.id.ok_or(Malformed("a topic event without id"))?;
            let frame: Arc<str> = if head.retain {
                let mut v: serde_json::Value = serde_json::from_str(payload)
                    .map_err(|_| Malformed("a plain frame that is not JSON"))?;
                if let Some(obj) = v.as_object_mut() {
                    obj.remove(PLAIN_RETAIN_MARKER);
                }
                Arc::from(v.to_string())
            } else {
                Arc::from(payload)
            };
            Ok(Envelope {
                head: Head::Topic {
                    id: Arc::from(id),
                    retain: head.retain,
                },
                frame,
            })
        }
        (_, Some(seq)) if seq >= 1 => Ok(Envelope::user(seq, 0, 0, payload)),
        _ => Err(Malformed("a plain frame without seq")),
    }
}

/// A topic event's frame as a retained value is sent (`"retained": true` first): spliced into
/// the frame's text, which is a JSON object with fields (`inbox::frames::topic_event`).
pub fn retained_frame(frame: &str) -> Arc<str> {
    match frame.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('"') => {
            Arc::from(format!("{{\"retained\":true,{rest}").as_str())
        }
        _ => Arc::from(frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_as_it_was_written() {
        for env in [
            Envelope::user(
                7,
                1_765_000_000_000_001,
                1_765_000_000_123_456,
                "{\"seq\":7}",
            ),
            Envelope::erased(),
            Envelope::topic("0190-ab", true, "{\"type\":\"topic.event\"}"),
            Envelope::topic("0190-ab", false, "{\"a\":\"line\\nbreak\"}"),
            Envelope::probe("token-1"),
        ] {
            assert_eq!(Envelope::decode(&env.encode()), Ok(env));
        }
    }

    #[test]
    fn the_frame_is_everything_after_the_first_line() {
        let env = Envelope::decode("u 3 9 10\n{\"x\":\"a\nb\"}").expect("an envelope");
        assert_eq!(&*env.frame, "{\"x\":\"a\nb\"}");
        assert_eq!(
            env.head,
            Head::User {
                seq: 3,
                epoch: 9,
                at: 10
            }
        );
    }

    #[test]
    fn broken_headers_are_refused_not_guessed() {
        for bad in [
            "",
            "u 1 2 3",
            "u 1 2\n{}",
            "u one 2 3\n{}",
            "q\n{}",
            "t\n{}",
            "t id\n{}",
            "t id yes\n{}",
            "{not json",
            "{\"type\":\"message.read\"}",
        ] {
            assert!(Envelope::decode(bad).is_err(), "{bad:?}");
        }
    }

    /// What versions before the envelope published is still read: user frames by their seq
    /// (epoch unknown), the old erase notice, topic events with their retain marker removed.
    #[test]
    fn plain_frames_of_earlier_versions_are_still_read() {
        let f = r#"{"type":"message.read","seq":4,"unread":0,"unseen":0,"ids":[]}"#;
        assert_eq!(Envelope::decode(f), Ok(Envelope::user(4, 0, 0, f)));
        let notice = r#"{"type":"sync","reset":true,"seq":0,"unread":0,"unseen":0}"#;
        assert_eq!(Envelope::decode(notice), Ok(Envelope::erased()));
        let t = r#"{"type":"topic.event","topic":"a","id":"i1","data":1,"retain":true}"#;
        let env = Envelope::decode(t).expect("a topic event");
        assert_eq!(
            env.head,
            Head::Topic {
                id: Arc::from("i1"),
                retain: true
            }
        );
        assert!(!env.frame.contains("retain"), "{}", env.frame);
    }

    #[test]
    fn a_retained_frame_says_so_and_keeps_every_field() {
        let f = r#"{"type":"topic.event","topic":"a","id":"i","data":{"n":1}}"#;
        let r: serde_json::Value = serde_json::from_str(&retained_frame(f)).expect("still JSON");
        let mut want: serde_json::Value = serde_json::from_str(f).expect("JSON");
        want["retained"] = serde_json::Value::Bool(true);
        assert_eq!(r, want);
    }
}
