//! `SseClient`, an SSE client that parses the stream as a browser's `EventSource` does (fields
//! `id`, `event`, `data`, `retry`, comment lines), and the ticket and URL helpers around it.

use std::time::Duration;

use serde_json::Value;

use super::app::TestApp;
use super::tokens::token;

/// One dispatched event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("the event's data is JSON")
    }

    pub fn seq_id(&self) -> Option<i64> {
        self.id.as_deref().map(|i| i.parse().expect("numeric id"))
    }
}

/// An open stream and everything read from it so far.
pub struct SseClient {
    resp: reqwest::Response,
    buf: String,
    pending: SseEvent,
    pub headers: reqwest::header::HeaderMap,
    pub events: Vec<SseEvent>,
    pub comments: usize,
    pub retry: Option<u64>,
    /// The server ended the stream.
    pub ended: bool,
}

impl SseClient {
    /// Opens `url` with `headers`; a status other than 200 comes back as `Err(response)`.
    pub async fn open(url: &str, headers: &[(&str, String)]) -> Result<Self, reqwest::Response> {
        let mut req = reqwest::Client::new()
            .get(url)
            .header("Accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.expect("GET /sse");
        if resp.status() != 200 {
            return Err(resp);
        }
        Ok(SseClient {
            headers: resp.headers().clone(),
            resp,
            buf: String::new(),
            pending: SseEvent {
                id: None,
                event: None,
                data: String::new(),
            },
            events: vec![],
            comments: 0,
            retry: None,
            ended: false,
        })
    }

    /// The next event, or `None` when the stream ended or nothing came within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(ev) = self.parse_one() {
                self.events.push(ev.clone());
                return Some(ev);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(bytes))) => self
                    .buf
                    .push_str(std::str::from_utf8(&bytes).expect("UTF-8 stream")),
                Ok(Ok(None)) | Ok(Err(_)) => self.ended = true,
            }
        }
    }

    /// The next event of type `ty`, skipping others; panics after `timeout`.
    pub async fn expect(&mut self, ty: &str, timeout: Duration) -> SseEvent {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(ev) if ev.event.as_deref() == Some(ty) => return ev,
                Some(_) => continue,
                None => panic!(
                    "no {ty} event (ended: {}); got {:?}",
                    self.ended, self.events
                ),
            }
        }
    }

    /// Reads until the server ends the stream (`true`) or `timeout` passes (`false`).
    pub async fn until_end(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.ended {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            self.next(left).await;
        }
        true
    }

    /// One complete event from the buffer (lines ended by `\n`, an empty line dispatches).
    fn parse_one(&mut self) -> Option<SseEvent> {
        while let Some(end) = self.buf.find('\n') {
            let line: String = self.buf.drain(..=end).collect();
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if line.is_empty() {
                let ev = std::mem::replace(
                    &mut self.pending,
                    SseEvent {
                        id: None,
                        event: None,
                        data: String::new(),
                    },
                );
                if !ev.data.is_empty() {
                    return Some(ev);
                }
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match field {
                "id" => self.pending.id = Some(value),
                "event" => self.pending.event = Some(value),
                "data" => {
                    if !self.pending.data.is_empty() {
                        self.pending.data.push('\n');
                    }
                    self.pending.data.push_str(&value);
                }
                "retry" => self.retry = value.parse().ok(),
                other => panic!("unknown SSE field {other:?}"),
            }
        }
        None
    }
}

impl TestApp {
    /// `POST /api/v1/me/tickets` with `jwt`: the ticket.
    pub async fn ticket_for(&self, jwt: &str) -> String {
        let r = self
            .http
            .post(format!("{}/api/v1/me/tickets", self.base))
            .bearer_auth(jwt)
            .send()
            .await
            .expect("POST /me/tickets");
        assert_eq!(r.status(), 201, "ticket");
        let body: Value = r.json().await.expect("json");
        body["ticket"].as_str().expect("ticket").to_string()
    }

    /// A ticket for `user`'s default token.
    pub async fn ticket(&self, user: &str) -> String {
        self.ticket_for(&token(user)).await
    }

    /// `/sse?<query>` on this node.
    pub fn sse_url(&self, query: &str) -> String {
        format!("{}/sse?{query}", self.base)
    }

    /// `user`'s stream (a fresh ticket), after `hello`; `query` adds to the URL.
    pub async fn sse(&self, user: &str, query: &str) -> SseClient {
        let ticket = self.ticket(user).await;
        let url = self.sse_url(&format!("ticket={ticket}&{query}"));
        let mut c = SseClient::open(&url, &[])
            .await
            .unwrap_or_else(|r| panic!("GET /sse: {}", r.status()));
        c.expect("hello", Duration::from_secs(10)).await;
        c
    }
}
