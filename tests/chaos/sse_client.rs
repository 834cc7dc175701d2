//! The simulated SSE clients: what a browser's `EventSource` does behind a proxy that strips
//! `Upgrade`. A ticket from `POST /api/v1/me/tickets` (minted again when it nears its 5 minutes
//! or is refused), `GET /sse?ticket=..&since=0` through nginx, and on every reconnect the same
//! URL plus `Last-Event-ID`: the last `id:` the stream gave, kept as `EventSource` keeps it (an
//! event without `id:` leaves it as it was). The server's ids are what the resume trusts, so a
//! wrong one shows up in the checker as a lost or repeated seq.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use crate::clients::{backoff, ClientCtl, ClientLog, Ended};
use crate::util::{lock, Clock};
use crate::CLIENT_SILENCE;

/// A ticket is good for 5 minutes (reconnects included): a fresh one well before that.
const TICKET_REUSE: Duration = Duration::from_secs(240);

/// One SSE event as `EventSource` dispatches it.
#[derive(Default)]
struct Pending {
    event: Option<String>,
    data: String,
}

pub(crate) struct SseChaosClient {
    base: String,
    token: String,
    http: reqwest::Client,
    log: Arc<Mutex<ClientLog>>,
    ctl: Arc<ClientCtl>,
    clock: Clock,
    stop: watch::Receiver<bool>,
    ticket: Option<(String, Instant)>,
    /// `EventSource`'s last event ID: sent as `Last-Event-ID` on every reconnect.
    last_event_id: Option<String>,
    /// `?topics=` of every stream (subscribed before its `hello`); none in the default run.
    topics: Vec<String>,
}

impl SseChaosClient {
    pub(crate) fn new(
        base: &str,
        token: &str,
        log: Arc<Mutex<ClientLog>>,
        ctl: Arc<ClientCtl>,
        clock: Clock,
        stop: watch::Receiver<bool>,
        topics: &[String],
    ) -> Self {
        SseChaosClient {
            base: base.to_string(),
            token: token.to_string(),
            // No overall timeout: it would cut the stream. Each wait has its own below.
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .expect("http client"),
            log,
            ctl,
            clock,
            stop,
            ticket: None,
            last_event_id: None,
            topics: topics.to_vec(),
        }
    }

    pub(crate) async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            if *self.stop.borrow() {
                return;
            }
            match self.open().await {
                Ok(resp) => {
                    let upstream = resp
                        .headers()
                        .get("x-upstream")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.rsplit(", ").next())
                        .map(str::to_string);
                    *lock(&self.ctl.upstream) = upstream;
                    self.ctl.connected.store(true, Ordering::SeqCst);
                    self.ctl.connects.fetch_add(1, Ordering::SeqCst);
                    let (ended, healthy) = self.session(resp).await;
                    self.ctl.connected.store(false, Ordering::SeqCst);
                    lock(&self.log).ends.push((self.clock.ms(), ended.label()));
                    if let Ended::Stopped = ended {
                        return;
                    }
                    attempt = if healthy { 0 } else { attempt + 1 };
                }
                Err(e) => {
                    lock(&self.log)
                        .handshake_failures
                        .push((self.clock.ms(), e));
                    attempt += 1;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff(attempt)) => {}
                _ = self.stop.changed() => return,
            }
        }
    }

    /// A ticket (the cached one while young enough), then the stream's response headers.
    async fn open(&mut self) -> Result<reqwest::Response, String> {
        let ticket = match &self.ticket {
            Some((t, at)) if at.elapsed() < TICKET_REUSE => t.clone(),
            _ => {
                let t = self.mint().await?;
                self.ticket = Some((t.clone(), Instant::now()));
                t
            }
        };
        let topics = if self.topics.is_empty() {
            String::new()
        } else {
            format!("&topics={}", self.topics.join(","))
        };
        let mut req = self
            .http
            .get(format!("{}/sse?ticket={ticket}&since=0{topics}", self.base))
            .header("Accept", "text/event-stream");
        if let Some(id) = &self.last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = tokio::time::timeout(Duration::from_secs(10), req.send())
            .await
            .map_err(|_| "GET /sse: no response headers within 10 s".to_string())?
            .map_err(|e| format!("GET /sse: {e}"))?;
        match resp.status().as_u16() {
            200 => Ok(resp),
            s => {
                if s == 401 {
                    self.ticket = None;
                }
                Err(format!("GET /sse: {s}"))
            }
        }
    }

    async fn mint(&self) -> Result<String, String> {
        let sent = self
            .http
            .post(format!("{}/api/v1/me/tickets", self.base))
            .bearer_auth(&self.token)
            .send();
        let resp = tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .map_err(|_| "POST /me/tickets timed out".to_string())?
            .map_err(|e| format!("POST /me/tickets: {e}"))?;
        if resp.status() != 201 {
            return Err(format!("POST /me/tickets: {}", resp.status()));
        }
        let body: Value = tokio::time::timeout(Duration::from_secs(10), resp.json())
            .await
            .map_err(|_| "POST /me/tickets: body timed out".to_string())?
            .map_err(|e| format!("POST /me/tickets: {e}"))?;
        body["ticket"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("POST /me/tickets: no ticket in {body}"))
    }

    /// Reads one stream until it ends. Returns how, and whether it got its `hello`.
    async fn session(&mut self, mut resp: reqwest::Response) -> (Ended, bool) {
        let mut buf: Vec<u8> = vec![];
        let mut pending = Pending::default();
        let mut healthy = false;
        loop {
            tokio::select! {
                _ = self.stop.changed() => return (Ended::Stopped, healthy),
                // The response dropped here: hyper closes the connection, nothing more is said.
                _ = self.ctl.drop_socket.notified() => return (Ended::Dropped, healthy),
                _ = self.ctl.stall.notified() => self.stall().await,
                chunk = tokio::time::timeout(CLIENT_SILENCE, resp.chunk()) => match chunk {
                    Err(_) => return (Ended::Silent, healthy),
                    Ok(Ok(None)) => return (Ended::EndOfStream, healthy),
                    Ok(Err(e)) => return (Ended::Error(e.to_string()), healthy),
                    Ok(Ok(Some(bytes))) => {
                        buf.extend_from_slice(&bytes);
                        healthy |= self.parse(&mut buf, &mut pending);
                    }
                }
            }
        }
    }

    /// The slow client: takes nothing from the stream until resumed (at most a minute). There
    /// is nothing to write on this transport: only the server's full queue may end the stream.
    async fn stall(&mut self) {
        let started = self.clock.ms();
        tokio::select! {
            _ = self.ctl.resume.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        lock(&self.log).stalls.push((started, self.clock.ms()));
    }

    /// Dispatches every complete event in `buf` as `EventSource` does (lines end with `\n`, an
    /// empty line dispatches, `:` starts a comment). Returns whether a `hello` came.
    fn parse(&mut self, buf: &mut Vec<u8>, pending: &mut Pending) -> bool {
        let mut hello = false;
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if line.is_empty() {
                let ev = std::mem::take(pending);
                if !ev.data.is_empty() {
                    hello |= self.dispatch(ev);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.last_event_id = Some(value.to_string()),
                "event" => pending.event = Some(value.to_string()),
                "data" => {
                    if !pending.data.is_empty() {
                        pending.data.push('\n');
                    }
                    pending.data.push_str(value);
                }
                "retry" => {}
                other => lock(&self.log)
                    .violations
                    .push(format!("unknown SSE field {other:?}")),
            }
        }
        hello
    }

    /// One event: its data is the frame; its `event:` name must be the frame's `type`.
    fn dispatch(&mut self, ev: Pending) -> bool {
        let t = self.clock.ms();
        let mut log = lock(&self.log);
        let kind = serde_json::from_str::<Value>(&ev.data)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_string));
        if ev.event.is_some() && ev.event != kind {
            log.violations.push(format!(
                "event: {:?} carries a frame of type {kind:?}",
                ev.event
            ));
        }
        let (hello, _) = log.on_frame(&ev.data, t);
        if hello && !self.topics.is_empty() && log.topics_from.is_none() {
            log.topics_from = Some(t);
        }
        // An id the stream gave beyond what it delivered would skip events on the next resume.
        if let Some(id) = self
            .last_event_id
            .as_deref()
            .and_then(|i| i.parse::<i64>().ok())
        {
            let applied = log.last_seq;
            if id > applied {
                log.violations.push(format!(
                    "Last-Event-ID would be {id} with seq {applied} the highest applied"
                ));
            }
        }
        hello
    }
}
