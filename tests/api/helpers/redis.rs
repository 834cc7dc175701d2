//! The test Redis: a tap on a channel (what the relay published) and a PUBLISH by hand.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A Redis subscriber the test reads directly, to see exactly what the relay published.
pub struct RedisTap {
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    pub task: tokio::task::JoinHandle<()>,
}

impl RedisTap {
    pub async fn subscribe(channel: &str) -> Self {
        let client = redis::Client::open(redis_url()).expect("redis url");
        let mut pubsub = client.get_async_pubsub().await.expect("redis pubsub");
        pubsub.subscribe(channel).await.expect("subscribe");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(m) = stream.next().await {
                let _ = tx.send(String::from_utf8_lossy(m.get_payload_bytes()).to_string());
            }
        });
        RedisTap { rx, task }
    }

    /// The next published frame. The relay publishes envelopes (a header line, then the frame:
    /// `broker::envelope`); this gives the frame, or the header alone (a JSON string) for an
    /// envelope without one (the erase notice, `"x"`).
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let s = self.next_raw(timeout).await?;
        if s.starts_with('{') {
            return Some(serde_json::from_str(&s).expect("published JSON"));
        }
        let (head, frame) = s.split_once('\n').expect("an envelope has a header line");
        if frame.is_empty() {
            return Some(Value::String(head.to_string()));
        }
        Some(serde_json::from_str(frame).expect("an envelope's frame is JSON"))
    }

    /// The next payload exactly as published.
    pub async fn next_raw(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.rx.recv()).await.ok()?
    }

    /// Collects payloads until `n` arrived or `timeout` passed.
    pub async fn collect(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = vec![];
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(v) => out.push(v),
                None => break,
            }
        }
        out
    }

    /// Whatever arrives within `window`.
    pub async fn drain(&mut self, window: Duration) -> Vec<Value> {
        let mut out = vec![];
        while let Some(v) = self.next(window).await {
            out.push(v);
        }
        out
    }
}

/// PUBLISHes `payload` on `channel` of the test Redis, exactly as the relay would.
pub async fn redis_publish(channel: &str, payload: &str) {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(&mut c)
        .await
        .expect("PUBLISH");
}

/// The `seq` of each published payload, in arrival order.
pub fn seqs_of(payloads: &[Value]) -> Vec<i64> {
    payloads
        .iter()
        .map(|p| p["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {p}")))
        .collect()
}
