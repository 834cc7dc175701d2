//! What a gateway spends reading one relayed user event, before and after the envelope
//! (docs/decisions/0009-event-envelope.md): the frame's JSON head as the user actor parsed it
//! (seq, type, the message's id and send_time, ids, reset; then a fingerprint hashed from them
//! and the send_time parsed for the latency histogram), against the envelope's header line.
//! Same frames, same process, alternated rounds; prints ns per event. A comparison for a
//! decision record, not a figure of docs/benchmarks.md.
//!
//! `cargo bench --bench envelope`

use std::hash::{Hash, Hasher};
use std::hint::black_box;
use std::time::Instant;

use notifyd::broker::envelope::{Envelope, Head};
use serde::Deserialize;

/// The head the actor read from every relayed frame before the envelope.
#[derive(Deserialize, Hash)]
struct EventHead {
    seq: i64,
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<MessageHead>,
    ids: Option<Vec<String>>,
    reset: Option<bool>,
}

#[derive(Deserialize, Hash)]
struct MessageHead {
    id: Option<String>,
    send_time: Option<String>,
}

fn frame(seq: i64) -> String {
    format!(
        r#"{{"message":{{"id":"01a24d76-bcce-7241-ac49-d606fb86677a","seq":{seq},"content":"Bob replied to your post about the quarterly planning meeting and asked whether the numbers are final","data":{{"post":9,"thread":[1,2,3]}},"is_read":false,"read_at":null,"send_time":"2026-12-06T22:25:56.942946Z","send_user":"7","skip_url":"/posts/9","title":"New comment","type":"comment"}},"seq":{seq},"type":"message.created","unread":4,"unseen":2}}"#
    )
}

/// Both ways copy the payload once into the shared frame the sessions get (the hub did
/// `Arc::from(payload)` before; `Envelope::decode` does it for the frame now).
fn old_way(payload: &str) -> (i64, u64, i64) {
    black_box(std::sync::Arc::<str>::from(payload));
    let head: EventHead = serde_json::from_str(payload).expect("a frame");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    head.kind.hash(&mut h);
    head.message.as_ref().map(|m| &m.id).hash(&mut h);
    head.ids.hash(&mut h);
    let at = head
        .message
        .as_ref()
        .and_then(|m| m.send_time.as_deref())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0, |t| t.timestamp_micros());
    (head.seq, h.finish(), at)
}

fn new_way(payload: &str) -> (i64, i64, i64) {
    match Envelope::decode(payload).expect("an envelope").head {
        Head::User { seq, epoch, at } => (seq, epoch, at),
        _ => (0, 0, 0),
    }
}

fn main() {
    const N: usize = 200_000;
    let plain: Vec<String> = (1..=N as i64).map(frame).collect();
    let enveloped: Vec<String> = plain
        .iter()
        .enumerate()
        .map(|(i, f)| {
            Envelope::user(
                i as i64 + 1,
                1_765_000_000_000_001,
                1_765_059_956_942_946,
                f.as_str(),
            )
            .encode()
        })
        .collect();
    println!("frame bytes: {}", plain[0].len());
    for round in 1..=3 {
        let t = Instant::now();
        for p in &plain {
            black_box(old_way(black_box(p)));
        }
        let old = t.elapsed().as_nanos() as f64 / N as f64;
        let t = Instant::now();
        for p in &enveloped {
            black_box(new_way(black_box(p)));
        }
        let new = t.elapsed().as_nanos() as f64 / N as f64;
        println!(
            "round {round}: JSON head + fingerprint + send_time {old:.0} ns/event, envelope header {new:.0} ns/event ({:.1}x)",
            old / new
        );
    }
}
