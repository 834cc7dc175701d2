//! The simulated users' clients: connect through nginx, apply, dedupe by seq, reconnect with
//! `since` (WebSocket) or `Last-Event-ID` (SSE, `sse_client.rs`), obey the faults. What both
//! transports share is here: the log the checker reads, the controls the faults use.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::sse_client::SseChaosClient;
use crate::util::{lock, Clock};
use crate::{Config, CLIENT_SILENCE, JWT_SECRET};

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How the harness steers a client (faults) and sees its connection state.
#[derive(Default)]
pub(crate) struct ClientCtl {
    /// Fault: drop the TCP connection now, without a WebSocket close frame.
    pub(crate) drop_socket: Notify,
    /// Fault: stop reading until `resume`, for less than the liveness window (75 s with the
    /// harness's 30 s heartbeat), so only the full queue may close the session, with 4008.
    pub(crate) stall: Notify,
    pub(crate) resume: Notify,
    pub(crate) connected: AtomicBool,
    pub(crate) connects: AtomicUsize,
    /// The node nginx sent the current connection to (from `X-Upstream`).
    pub(crate) upstream: Mutex<Option<String>>,
}

/// One received frame: when, what, which seq.
pub(crate) struct FrameRec {
    pub(crate) t: f64,
    pub(crate) kind: String,
    pub(crate) seq: Option<i64>,
}

/// One `topic.event` as it came (duplicates included): when, which topic, its id, and the
/// publisher's counter (`data.i`, per topic, in publish order).
pub(crate) struct TopicRec {
    pub(crate) t: f64,
    pub(crate) topic: String,
    pub(crate) id: String,
    pub(crate) i: i64,
}

/// The `ref` of a WebSocket client's `subscribe` to its topics.
pub(crate) const SUBSCRIBE_REF: &str = "topics";

/// Everything a client saw, for the checker.
#[derive(Default)]
pub(crate) struct ClientLog {
    pub(crate) user: String,
    /// Seqs in the order they were applied (after dedupe by seq).
    pub(crate) applied: Vec<i64>,
    pub(crate) applied_set: HashSet<i64>,
    /// seq -> when it was applied (ms on the run clock).
    pub(crate) applied_at: HashMap<i64, f64>,
    /// (seq, message id) of every applied `message.created`.
    pub(crate) created: Vec<(i64, String)>,
    /// The highest applied seq: what the client resumes from.
    pub(crate) last_seq: i64,
    /// `unread` of the event with the highest seq applied.
    pub(crate) last_unread: Option<i64>,
    /// Frames whose seq was already applied (before dedupe). The server promises none.
    pub(crate) raw_duplicates: usize,
    pub(crate) resets: usize,
    pub(crate) error_frames: usize,
    pub(crate) frames: Vec<FrameRec>,
    /// How each connection ended, and when.
    pub(crate) ends: Vec<(f64, String)>,
    pub(crate) handshake_failures: Vec<(f64, String)>,
    pub(crate) stalls: Vec<(f64, f64)>,
    pub(crate) violations: Vec<String>,
    /// Live topic events (not the retained ones a subscribe is answered with).
    pub(crate) topic_events: Vec<TopicRec>,
    /// When the client's first subscription to its topics took effect (WebSocket: the `ack`
    /// of its `subscribe`; SSE: the `hello` of a stream opened with `?topics=`).
    pub(crate) topics_from: Option<f64>,
}

impl ClientLog {
    /// Applies an event with a seq, deduping by seq. Returns the id of a newly created message.
    pub(crate) fn apply(&mut self, ev: &Value, t: f64) -> Option<String> {
        let Some(seq) = ev["seq"].as_i64() else {
            self.violations.push(format!("event without seq: {ev}"));
            return None;
        };
        if !self.applied_set.insert(seq) {
            self.raw_duplicates += 1;
            return None;
        }
        self.applied.push(seq);
        self.applied_at.insert(seq, t);
        if seq > self.last_seq {
            self.last_seq = seq;
            self.last_unread = ev["unread"].as_i64();
        }
        if ev["type"] == "message.created" {
            let id = ev["message"]["id"].as_str().unwrap_or_default().to_string();
            self.created.push((seq, id.clone()));
            return Some(id);
        }
        None
    }
}

pub(crate) enum Ended {
    Stopped,
    Closed(Option<u16>),
    Eof,
    Error(String),
    Silent,
    Dropped,
    /// SSE: the server ended the response (a slow consumer, a restart): the stream's close.
    EndOfStream,
}

impl Ended {
    pub(crate) fn label(&self) -> String {
        match self {
            Ended::Stopped => "stopped".into(),
            Ended::Closed(Some(c)) => format!("close {c}"),
            Ended::Closed(None) => "close (no code)".into(),
            Ended::Eof => "eof without close frame".into(),
            Ended::Error(e) => format!("error: {e}"),
            Ended::Silent => "silent (no frame for 12 s)".into(),
            Ended::Dropped => "dropped by the harness".into(),
            Ended::EndOfStream => "SSE stream ended by the server".into(),
        }
    }
}

/// One client: connects through nginx, applies what it gets, reconnects with back-off and
/// `since=<last applied seq>` whatever happened, and obeys the harness's faults.
pub(crate) struct ChaosClient {
    pub(crate) ws_base: String,
    pub(crate) token: String,
    pub(crate) log: Arc<Mutex<ClientLog>>,
    pub(crate) ctl: Arc<ClientCtl>,
    pub(crate) clock: Clock,
    pub(crate) stop: watch::Receiver<bool>,
    /// This client marks some of the messages it gets read (`{"type":"read"}`).
    pub(crate) sends_reads: bool,
    pub(crate) salt: u64,
    /// Topics it subscribes to after every `hello` (a subscription lives as long as its
    /// socket); none in the default run.
    pub(crate) topics: Vec<String>,
}

impl ChaosClient {
    pub(crate) async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            if *self.stop.borrow() {
                return;
            }
            let since = lock(&self.log).last_seq;
            let url = format!("{}/ws?token={}&since={since}", self.ws_base, self.token);
            let connect = tokio_tungstenite::connect_async(url);
            match tokio::time::timeout(Duration::from_secs(10), connect).await {
                Ok(Ok((ws, response))) => {
                    // With retries nginx lists every address it tried; the last one answered.
                    let upstream = response
                        .headers()
                        .get("x-upstream")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.rsplit(", ").next())
                        .map(str::to_string);
                    *lock(&self.ctl.upstream) = upstream;
                    self.ctl.connected.store(true, Ordering::SeqCst);
                    self.ctl.connects.fetch_add(1, Ordering::SeqCst);
                    let (ended, healthy) = self.session(ws).await;
                    self.ctl.connected.store(false, Ordering::SeqCst);
                    lock(&self.log).ends.push((self.clock.ms(), ended.label()));
                    if let Ended::Stopped = ended {
                        return;
                    }
                    attempt = if healthy { 0 } else { attempt + 1 };
                }
                Ok(Err(e)) => {
                    lock(&self.log)
                        .handshake_failures
                        .push((self.clock.ms(), e.to_string()));
                    attempt += 1;
                }
                Err(_) => {
                    lock(&self.log)
                        .handshake_failures
                        .push((self.clock.ms(), "handshake timed out".into()));
                    attempt += 1;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff(attempt)) => {}
                _ = self.stop.changed() => return,
            }
        }
    }

    /// Reads one connection until it ends. Returns how, and whether it got its `hello`.
    pub(crate) async fn session(&mut self, ws: Ws) -> (Ended, bool) {
        let (mut sink, mut stream) = ws.split();
        let mut healthy = false;
        loop {
            let mut read_cmd = None;
            tokio::select! {
                _ = self.stop.changed() => {
                    let _ = sink.send(WsMessage::Close(None)).await;
                    return (Ended::Stopped, healthy);
                }
                _ = self.ctl.drop_socket.notified() => {
                    // Both halves dropped here: the TCP connection closes, no close frame.
                    return (Ended::Dropped, healthy);
                }
                _ = self.ctl.stall.notified() => self.stall(&mut sink).await,
                msg = tokio::time::timeout(CLIENT_SILENCE, stream.next()) => match msg {
                    Err(_) => return (Ended::Silent, healthy),
                    Ok(None) => return (Ended::Eof, healthy),
                    Ok(Some(Err(e))) => return (Ended::Error(e.to_string()), healthy),
                    Ok(Some(Ok(WsMessage::Close(c)))) => {
                        return (Ended::Closed(c.map(|c| u16::from(c.code))), healthy)
                    }
                    Ok(Some(Ok(WsMessage::Text(text)))) => {
                        let (hello, id) = self.on_frame(&text);
                        healthy |= hello;
                        read_cmd = id.map(|id| json!({"type": "read", "ids": [id], "ref": "r"}));
                        if hello && !self.topics.is_empty() {
                            let sub = json!({"type": "subscribe", "topics": self.topics, "ref": SUBSCRIBE_REF});
                            if sink.send(WsMessage::text(sub.to_string())).await.is_err() {
                                return (Ended::Error("sending subscribe".into()), healthy);
                            }
                        }
                    }
                    Ok(Some(Ok(_))) => {} // pings are answered by tungstenite itself
                }
            }
            if let Some(cmd) = read_cmd {
                let _ = sink.send(WsMessage::text(cmd.to_string())).await;
            }
        }
    }

    /// The slow client: reads nothing until resumed (at most a minute), but keeps writing
    /// application pings so only its queue filling up can get it closed.
    pub(crate) async fn stall(&mut self, sink: &mut SplitSink<Ws, WsMessage>) {
        let started = self.clock.ms();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            tokio::select! {
                _ = self.ctl.resume.notified() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if Instant::now() > deadline {
                        break;
                    }
                    let ping = WsMessage::text(r#"{"type":"ping"}"#);
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(ping)).await;
                }
            }
        }
        lock(&self.log).stalls.push((started, self.clock.ms()));
    }

    /// Records and applies one text frame. Returns (was it `hello`, a message id to mark read).
    pub(crate) fn on_frame(&self, text: &str) -> (bool, Option<String>) {
        let t = self.clock.ms();
        let mut log = lock(&self.log);
        let (hello, created) = log.on_frame(text, t);
        // Some clients mark about a fifth of what they get read: more events, from every node.
        let pick = created.filter(|_| {
            self.sends_reads
                && (log.last_seq as u64).wrapping_mul(2_654_435_761) % 5 == self.salt % 5
        });
        (hello, pick)
    }
}

impl ClientLog {
    /// Records and applies one frame's JSON, whatever carried it. Returns (was it `hello`, the
    /// id of a message it created).
    pub(crate) fn on_frame(&mut self, text: &str, t: f64) -> (bool, Option<String>) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            let head: String = text.chars().take(80).collect();
            self.violations
                .push(format!("a frame that is not JSON: {head}"));
            return (false, None);
        };
        let kind = v["type"].as_str().unwrap_or_default().to_string();
        self.frames.push(FrameRec {
            t,
            kind: kind.clone(),
            seq: v["seq"].as_i64(),
        });
        let mut created = None;
        match kind.as_str() {
            "hello" => return (true, None),
            "sync" if v["reset"] == true => {
                // Cannot happen in this run (never 1,000 events behind): it would hide losses.
                self.resets += 1;
                self.violations.push(format!(
                    "sync reset at seq {}",
                    v["seq"].as_i64().unwrap_or(-1)
                ));
                if let Some(s) = v["seq"].as_i64() {
                    self.last_seq = s;
                }
            }
            "sync" => {
                for ev in v["events"].as_array().into_iter().flatten() {
                    created = self.apply(ev, t).or(created);
                }
            }
            "error" => self.error_frames += 1,
            "ack" => {
                if v["ref"] == SUBSCRIBE_REF && self.topics_from.is_none() {
                    self.topics_from = Some(t);
                }
            }
            "topic.event" if v.get("retained").is_none() => self.topic_events.push(TopicRec {
                t,
                topic: v["topic"].as_str().unwrap_or_default().to_string(),
                id: v["id"].as_str().unwrap_or_default().to_string(),
                i: v["data"]["i"].as_i64().unwrap_or(-1),
            }),
            "pong" | "topic.event" => {}
            _ => created = self.apply(&v, t),
        }
        (false, created)
    }
}

/// Full jitter, capped at 2 s: the first retry after a healthy connection is almost immediate.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ceiling = (100u64 << attempt.min(5)).min(2000);
    Duration::from_millis((rand::random::<f64>() * ceiling as f64) as u64)
}

/// How a client reaches the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    WebSocket,
    Sse,
}

impl Transport {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "WebSocket",
            Transport::Sse => "SSE",
        }
    }

    /// "a WebSocket", "an SSE".
    pub(crate) fn a(self) -> &'static str {
        match self {
            Transport::WebSocket => "a WebSocket",
            Transport::Sse => "an SSE",
        }
    }
}

/// The harness's view of one client.
pub(crate) struct Client {
    pub(crate) user: String,
    pub(crate) transport: Transport,
    pub(crate) log: Arc<Mutex<ClientLog>>,
    pub(crate) ctl: Arc<ClientCtl>,
    pub(crate) task: JoinHandle<()>,
}

/// Client `k` of user `i` is on SSE when `(i / 3 + k) % 3 == 1`: about a third of the clients,
/// spread over users with one, two and three clients (so some users have tabs on both
/// transports, and some sole clients, which the slow-client fault needs, are on SSE).
pub(crate) fn transport_of(user: usize, k: usize) -> Transport {
    if (user / 3 + k) % 3 == 1 {
        Transport::Sse
    } else {
        Transport::WebSocket
    }
}

/// Users `user-000`.. with 1, 2 or 3 clients each (`1 + i % 3`), on either transport
/// (`transport_of`), all through nginx (`base`: `http://host:port`). Every client subscribes
/// to `topics` (its token grants them), if any.
pub(crate) fn start_clients(
    cfg: &Config,
    base: &str,
    clock: Clock,
    stop: &watch::Receiver<bool>,
    topics: &[String],
) -> (Vec<String>, Vec<Client>) {
    let keys = notifyd::auth::jwt::JwtKeys::new(JWT_SECRET);
    let users: Vec<String> = (0..cfg.users).map(|i| format!("user-{i:03}")).collect();
    let ws_base = base.replacen("http://", "ws://", 1);
    let mut clients = vec![];
    for (i, user) in users.iter().enumerate() {
        let token = keys
            .mint(user, 24 * 3600, topics)
            .expect("mint a user token");
        for k in 0..1 + i % 3 {
            let n = clients.len();
            let log = Arc::new(Mutex::new(ClientLog {
                user: user.clone(),
                ..Default::default()
            }));
            let ctl = Arc::new(ClientCtl::default());
            let transport = transport_of(i, k);
            let task = match transport {
                Transport::WebSocket => tokio::spawn(
                    ChaosClient {
                        ws_base: ws_base.clone(),
                        token: token.clone(),
                        log: log.clone(),
                        ctl: ctl.clone(),
                        clock,
                        stop: stop.clone(),
                        sends_reads: n % 3 == 1,
                        salt: n as u64,
                        topics: topics.to_vec(),
                    }
                    .run(),
                ),
                Transport::Sse => tokio::spawn(
                    SseChaosClient::new(
                        base,
                        &token,
                        log.clone(),
                        ctl.clone(),
                        clock,
                        stop.clone(),
                        topics,
                    )
                    .run(),
                ),
            };
            clients.push(Client {
                user: user.clone(),
                transport,
                log,
                ctl,
                task,
            });
        }
    }
    (users, clients)
}

/// Tells every client to stop (each sends its close) and waits for it, at most 5 s each.
pub(crate) async fn stop_clients(stop: &watch::Sender<bool>, clients: &[Client]) {
    let _ = stop.send(true);
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while !c.task.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        c.task.abort();
    }
}
