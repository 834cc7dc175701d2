//! `notifyd listen`: a terminal client for non-browser consumers (desktop agents, scripts). Prints
//! every event as one JSON line on stdout, and like the browser client it reconnects with
//! exponential back-off (full jitter) and resumes with `since`, dropping duplicates by seq.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

pub struct Listener {
    /// `ws://host:port/ws` (a `?token=` is added; one already present is kept).
    pub url: String,
    pub token: String,
    /// The last seq already applied; events at or below it are not printed.
    pub since: Option<i64>,
}

/// What the listener reports to its caller: event lines for stdout, status lines for stderr.
pub enum Output<'a> {
    Event(&'a Value),
    Status(String),
}

impl Listener {
    fn url_for(&self, since: Option<i64>) -> String {
        let mut url = self.url.clone();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        if !url.contains("token=") {
            url.push(sep);
            url.push_str("token=");
            url.push_str(&self.token);
            sep = '&';
        }
        if let Some(s) = since {
            url.push(sep);
            url.push_str(&format!("since={s}"));
        }
        url
    }

    /// Runs forever (until the task is dropped), calling `out` for every event and status change.
    pub async fn run(&self, mut out: impl FnMut(Output<'_>)) {
        let mut last = self.since;
        let mut attempt: u32 = 0;
        loop {
            let url = self.url_for(last);
            out(Output::Status(format!("connecting (since={last:?})")));
            let mut request =
                match tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                    url.as_str(),
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        out(Output::Status(format!("bad url: {e}")));
                        return;
                    }
                };
            if let Ok(v) = format!("Bearer {}", self.token).parse() {
                request.headers_mut().insert("authorization", v);
            }
            match tokio_tungstenite::connect_async(request).await {
                Ok((mut ws, _)) => {
                    let mut healthy = false;
                    while let Some(msg) = ws.next().await {
                        let text = match msg {
                            Ok(Message::Text(t)) => t,
                            Ok(Message::Ping(p)) => {
                                let _ = ws.send(Message::Pong(p)).await;
                                continue;
                            }
                            Ok(Message::Close(c)) => {
                                out(Output::Status(format!(
                                    "closed by server: {:?}",
                                    c.map(|c| (u16::from(c.code), c.reason.to_string()))
                                )));
                                break;
                            }
                            Ok(_) => continue,
                            Err(e) => {
                                out(Output::Status(format!("connection error: {e}")));
                                break;
                            }
                        };
                        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                            continue;
                        };
                        match frame["type"].as_str() {
                            Some("hello") => {
                                healthy = true;
                                attempt = 0;
                                out(Output::Status(format!("connected: {text}")));
                                // A fresh start (no since) begins at the current seq.
                                if last.is_none() {
                                    last = frame["seq"].as_i64();
                                }
                            }
                            Some("sync") if frame["reset"] == true => {
                                out(Output::Event(&frame));
                                last = frame["seq"].as_i64();
                            }
                            Some("sync") => {
                                for ev in frame["events"].as_array().into_iter().flatten() {
                                    apply(ev, &mut last, &mut out);
                                }
                            }
                            Some("pong") | Some("ack") | Some("error") => {}
                            _ => apply(&frame, &mut last, &mut out),
                        }
                    }
                    if healthy {
                        attempt = 0;
                    }
                }
                Err(e) => out(Output::Status(format!("connect failed: {e}"))),
            }
            attempt = attempt.saturating_add(1);
            let delay = backoff(attempt);
            out(Output::Status(format!("reconnecting in {delay:?}")));
            tokio::time::sleep(delay).await;
        }
    }
}

fn apply(ev: &Value, last: &mut Option<i64>, out: &mut impl FnMut(Output<'_>)) {
    match ev["seq"].as_i64() {
        Some(seq) if last.is_some_and(|l| seq <= l) => {} // duplicate
        Some(seq) => {
            *last = Some(seq);
            out(Output::Event(ev));
        }
        None => out(Output::Event(ev)), // topic events have no seq
    }
}

/// Full jitter: a uniform delay in [0, min(cap, base * 2^attempt)). The first retry is quick.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    Duration::from_millis(rand::rng().random_range(0..=ceiling.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempt in 0..40 {
            assert!(backoff(attempt) <= BACKOFF_CAP);
        }
    }

    #[test]
    fn urls_carry_token_and_since() {
        let l = Listener {
            url: "ws://h/ws".into(),
            token: "t".into(),
            since: None,
        };
        assert_eq!(l.url_for(None), "ws://h/ws?token=t");
        assert_eq!(l.url_for(Some(5)), "ws://h/ws?token=t&since=5");
    }
}
