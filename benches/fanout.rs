//! Fan-out benchmark (issue 9, "Must show"): measures, in one run on this machine, and writes its
//! section of `docs/benchmarks.md`:
//! 1. topic fan-out: N WebSockets (N users, token claim `topics`) all subscribed to one topic;
//!    `POST /api/v1/topics/{topic}/events` at a steady rate, then a burst; frames/s delivered in
//!    total and p50/p99 publish -> frame latency (the send time rides in `data`);
//! 2. its ceiling, measured the same way in the same run: a trivial WebSocket fan-out server (this
//!    binary started again as a separate process: one broadcast channel, no auth, no database)
//!    feeding the same N client sockets, so notifyd's figure is read as a ratio of what this load
//!    client can receive at all;
//! 3. one `to_users` POST to N online users: time to the `201` (commit), time until every socket
//!    has its `message.created`, p50/p99 across sockets; beside it, the same rows (counters,
//!    messages, events, outbox) inserted by plain set-based SQL in one transaction.
//!
//! Needs a release binary (`cargo build --release`), PostgreSQL and Redis (scripts/services.sh).
//! Run: `BENCH_FANOUT_CONNS=10000 cargo bench --bench fanout`. Sizes (env): BENCH_FANOUT_CONNS
//! (default 1000, fast), BENCH_FANOUT_RATE events/s (20), BENCH_FANOUT_SECS (10),
//! BENCH_FANOUT_BURST events (100). The doc is written only for runs of 10,000 sockets or more
//! (BENCH_WRITE_DOC=1 forces it, =0 prevents it); each run is kept under its label
//! (BENCH_FANOUT_LABEL, default the commit), so a "before" and an "after" stand side by side.
//! Timing never fails the run: only a broken set-up does.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{broadcast, Mutex};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use support::{env_num, BenchDb, Node, KEY, SECRET};

type Ws = WebSocketStream<TcpStream>;

const TOPIC: &str = "bench:fanout";
/// Client sockets are spread over 127.0.0.1..=SOURCES so no source address runs short of ports.
const SOURCES: usize = 4;
/// Sockets opened at once.
const CONNECT_CONCURRENCY: usize = 250;
/// Every wait for a frame or a connection is bounded by this.
const WAIT: Duration = Duration::from_secs(30);
/// A phase ends when every frame arrived, or when none arrived for this long.
const STALL: Duration = Duration::from_secs(10);
/// Phases of the topic run, as tagged in each event's `data.p`.
const STEADY: usize = 0;
const BURST: usize = 1;
/// Env var that turns this binary into the trivial fan-out server (the ceiling).
const TRIVIAL_BIND: &str = "BENCH_FANOUT_TRIVIAL_BIND";

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Client sockets

async fn open_ws(i: usize, server: SocketAddr, path: &str) -> anyhow::Result<Ws> {
    let src = SocketAddr::from(([127, 0, 0, 1 + (i % SOURCES) as u8], 0));
    let sock = TcpSocket::new_v4()?;
    sock.bind(src)
        .with_context(|| format!("binding a client socket to {src}"))?;
    let stream = tokio::time::timeout(WAIT, sock.connect(server))
        .await
        .context("connect timed out")??;
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(format!("ws://{server}{path}"), stream),
    )
    .await
    .context("WebSocket handshake timed out")??;
    Ok(ws)
}

/// The next text frame whose text contains `needle` (other frames are skipped).
async fn wait_text(ws: &mut Ws, needle: &str) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => bail!("no {needle} frame within {WAIT:?}"),
            Ok(Some(Ok(Message::Text(t)))) if t.contains(needle) => return Ok(t.to_string()),
            Ok(Some(Ok(Message::Close(c)))) => bail!("closed while waiting for {needle}: {c:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => bail!("socket error waiting for {needle}: {e}"),
            Ok(None) => bail!("socket ended waiting for {needle}"),
        }
    }
}

/// Opens `n` sockets, `CONNECT_CONCURRENCY` at a time, each made ready by `setup`.
async fn open_all<F, Fut>(n: usize, setup: F) -> anyhow::Result<(Vec<Ws>, f64)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Ws>>,
{
    let start = Instant::now();
    let socks: Vec<anyhow::Result<Ws>> = futures_util::stream::iter(0..n)
        .map(setup)
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let socks = socks.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok((socks, start.elapsed().as_secs_f64()))
}

/// The integer after `key` in a frame's text (`"t":`, `"p":`): cheaper than parsing the JSON,
/// which matters because this client's CPU is part of what is measured.
fn field(text: &str, key: &str) -> Option<u64> {
    // Servers may write `"t": 1` or `"t":1` (notifyd relays PostgreSQL's text form of jsonb).
    let rest = text[text.find(key)? + key.len()..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// What one socket saw of the topic run.
#[derive(Default)]
struct Tally {
    /// Publish -> frame latencies in µs, per phase.
    lat_us: [Vec<u32>; 2],
    /// Arrival time (µs since the epoch) of the phase's last frame.
    last_us: [u64; 2],
    /// The socket closed (or failed) before the run ended.
    closed: bool,
}

/// Reads topic frames until `expected` arrived or `stop` is set; then holds the socket open
/// until `stop` (closing early would add close handling to the server's work mid-run).
async fn read_events(
    mut ws: Ws,
    expected: u64,
    stop: Arc<AtomicBool>,
    got: Arc<AtomicU64>,
) -> Tally {
    let mut t = Tally::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(Message::Text(text)))) if n < expected => {
                let (Some(p), Some(sent)) = (field(&text, "\"p\":"), field(&text, "\"t\":")) else {
                    continue;
                };
                let p = (p as usize).min(BURST);
                let now = now_us();
                t.lat_us[p].push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                t.last_us[p] = t.last_us[p].max(now);
                n += 1;
                got.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(Ok(_))) => continue,
            Ok(_) => {
                t.closed = n < expected;
                break;
            }
        }
    }
    t
}

/// Waits until `got` reaches `target`, or nothing arrived for `STALL`.
async fn settle(got: &AtomicU64, target: u64) {
    let mut last = got.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = got.load(Ordering::Relaxed);
        if now >= target {
            return;
        }
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() > STALL {
            return;
        }
    }
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

// ---------------------------------------------------------------------------------------------
// Topic fan-out

/// How an event is published: through notifyd's REST API, or to the trivial server.
#[derive(Clone)]
enum Publisher {
    Notifyd { http: reqwest::Client, url: String },
    Trivial(Arc<Mutex<Ws>>),
}

impl Publisher {
    /// Publishes one event of `phase`, stamped with the time just before it is sent.
    async fn publish(&self, phase: usize) -> bool {
        match self {
            Publisher::Notifyd { http, url } => {
                let body = json!({"data": {"p": phase, "t": now_us()}});
                let sent = http.post(url).bearer_auth(KEY).json(&body).send();
                matches!(tokio::time::timeout(WAIT, sent).await, Ok(Ok(r)) if r.status() == 202)
            }
            Publisher::Trivial(ws) => {
                // The frame notifyd would send, serialised once, sent as is to every socket.
                let frame = json!({"type": "topic.event", "topic": TOPIC,
                    "id": uuid::Uuid::now_v7(), "data": {"p": phase, "t": now_us()}});
                let mut ws = ws.lock().await;
                matches!(
                    tokio::time::timeout(WAIT, ws.send(Message::text(frame.to_string()))).await,
                    Ok(Ok(()))
                )
            }
        }
    }
}

struct PhaseResult {
    events: u64,
    delivered: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl PhaseResult {
    fn fps(&self) -> f64 {
        self.delivered as f64 / self.secs
    }
}

struct TopicResult {
    conns: usize,
    connect_s: f64,
    steady: PhaseResult,
    burst: PhaseResult,
    rate: u64,
    secs: u64,
    closed: usize,
    publish_errors: u64,
}

async fn topic_run(
    socks: Vec<Ws>,
    connect_s: f64,
    publisher: Publisher,
    rate: u64,
    secs: u64,
    burst: u64,
) -> anyhow::Result<TopicResult> {
    let conns = socks.len();
    let n = conns as u64;
    let steady_events = rate * secs;
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = socks
        .into_iter()
        .map(|ws| {
            tokio::spawn(read_events(
                ws,
                steady_events + burst,
                stop.clone(),
                got.clone(),
            ))
        })
        .collect();
    let errors = Arc::new(AtomicU64::new(0));

    // Steady: one event every 1/rate s, each POST on its own task so a slow answer does not
    // lower the offered rate.
    let steady_start = now_us();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let mut posts = vec![];
    for _ in 0..steady_events {
        tick.tick().await;
        let (p, errors) = (publisher.clone(), errors.clone());
        posts.push(tokio::spawn(async move {
            if !p.publish(STEADY).await {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for p in posts {
        p.await?;
    }
    settle(&got, n * steady_events).await;

    // Burst: every event at once.
    let burst_start = now_us();
    let posts: Vec<_> = (0..burst)
        .map(|_| {
            let (p, errors) = (publisher.clone(), errors.clone());
            tokio::spawn(async move {
                if !p.publish(BURST).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for p in posts {
        p.await?;
    }
    settle(&got, n * (steady_events + burst)).await;
    stop.store(true, Ordering::Relaxed);

    let mut lat: [Vec<u32>; 2] = [vec![], vec![]];
    let mut last = [0u64; 2];
    let mut closed = 0;
    for r in readers {
        let t = r.await?;
        for p in [STEADY, BURST] {
            lat[p].extend_from_slice(&t.lat_us[p]);
            last[p] = last[p].max(t.last_us[p]);
        }
        closed += t.closed as usize;
    }
    let mut phase = |p: usize, events: u64, start: u64| {
        let l = &mut lat[p];
        l.sort_unstable();
        PhaseResult {
            events,
            delivered: l.len() as u64,
            secs: last[p].saturating_sub(start).max(1) as f64 / 1e6,
            p50_ms: percentile(l, 0.50),
            p99_ms: percentile(l, 0.99),
            max_ms: l.last().map(|v| *v as f64 / 1000.0).unwrap_or(f64::NAN),
        }
    };
    let steady = phase(STEADY, steady_events, steady_start);
    let burst = phase(BURST, burst, burst_start);
    Ok(TopicResult {
        conns,
        connect_s,
        steady,
        burst,
        rate,
        secs,
        closed,
        publish_errors: errors.load(Ordering::Relaxed),
    })
}

async fn topic_notifyd(
    node: &Node,
    n: usize,
    rate: u64,
    secs: u64,
    burst: u64,
) -> anyhow::Result<TopicResult> {
    let keys = notifyd::auth::jwt::JwtKeys::new(SECRET);
    let server = SocketAddr::from(([127, 0, 0, 1], node.port));
    let grant = vec!["bench:*".to_string()];
    let (socks, connect_s) = open_all(n, |i| {
        let token = keys.mint(&format!("f{i}"), 3600, &grant);
        async move {
            let path = format!("/ws?token={}", token?);
            let (mut ws, _) = support::until_hello(|| open_ws(i, server, &path)).await?;
            let sub = json!({"type": "subscribe", "topics": [TOPIC], "ref": "s"});
            ws.send(Message::text(sub.to_string())).await?;
            wait_text(&mut ws, "\"ack\"").await?;
            Ok(ws)
        }
    })
    .await?;
    let publisher = Publisher::Notifyd {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?,
        url: format!("{}/api/v1/topics/{TOPIC}/events", node.base),
    };
    topic_run(socks, connect_s, publisher, rate, secs, burst).await
}

async fn topic_trivial(n: usize, rate: u64, secs: u64, burst: u64) -> anyhow::Result<TopicResult> {
    let server = TrivialServer::start().await?;
    let addr = server.addr;
    let (socks, connect_s) = open_all(n, |i| async move {
        let mut ws = open_ws(i, addr, "/").await?;
        wait_text(&mut ws, "\"hello\"").await?;
        Ok(ws)
    })
    .await?;
    let control = open_ws(0, addr, "/pub").await?;
    let r = topic_run(
        socks,
        connect_s,
        Publisher::Trivial(Arc::new(Mutex::new(control))),
        rate,
        secs,
        burst,
    )
    .await;
    server.stop();
    r
}

// ---------------------------------------------------------------------------------------------
// The ceiling: a trivial WebSocket fan-out server, run as a separate process like notifyd.

struct TrivialServer {
    child: Child,
    addr: SocketAddr,
}

impl TrivialServer {
    async fn start() -> anyhow::Result<TrivialServer> {
        let addr = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
        let child = Command::new(std::env::current_exe()?)
            .env(TRIVIAL_BIND, addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the trivial fan-out server")?;
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(TrivialServer { child, addr });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the trivial fan-out server did not listen on {addr}");
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every text frame received on `/pub` goes, unchanged, to every other socket.
async fn trivial_server(bind: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(bind).await?;
    let (tx, _) = broadcast::channel::<Utf8Bytes>(4096);
    loop {
        let (stream, _) = listener.accept().await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = trivial_conn(stream, tx).await;
        });
    }
}

// The handshake callback's error type is tungstenite's own (large) `ErrorResponse`.
#[allow(clippy::result_large_err)]
async fn trivial_conn(stream: TcpStream, tx: broadcast::Sender<Utf8Bytes>) -> anyhow::Result<()> {
    let mut path = String::new();
    let mut ws = tokio_tungstenite::accept_hdr_async(
        stream,
        |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            path = req.uri().path().to_string();
            Ok(resp)
        },
    )
    .await?;
    if path == "/pub" {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m {
                let _ = tx.send(t);
            }
        }
        return Ok(());
    }
    let mut rx = tx.subscribe();
    ws.send(Message::text(r#"{"type":"hello"}"#)).await?;
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                // Whatever is queued goes out in one write, as a well-built server would do.
                Ok(t) => {
                    ws.feed(Message::Text(t)).await?;
                    while let Ok(t) = rx.try_recv() {
                        ws.feed(Message::Text(t)).await?;
                    }
                    ws.flush().await?;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            m = ws.next() => match m {
                Some(Ok(_)) => {}
                _ => return Ok(()),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One POST to N recipients

struct ToUsersResult {
    conns: usize,
    connect_s: f64,
    commit_s: f64,
    all_s: f64,
    p50_s: f64,
    p99_s: f64,
    reached: usize,
    sql_s: f64,
}

async fn to_users(node: &Node, db: &str, n: usize) -> anyhow::Result<ToUsersResult> {
    let keys = notifyd::auth::jwt::JwtKeys::new(SECRET);
    let server = SocketAddr::from(([127, 0, 0, 1], node.port));
    let (socks, connect_s) = open_all(n, |i| {
        let token = keys.mint(&format!("u{i}"), 3600, &[]);
        async move {
            let path = format!("/ws?token={}", token?);
            let (ws, _) = support::until_hello(|| open_ws(i, server, &path)).await?;
            Ok(ws)
        }
    })
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = socks
        .into_iter()
        .map(|mut ws| {
            let (stop, got) = (stop.clone(), got.clone());
            tokio::spawn(async move {
                let mut at = None;
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                        Err(_) => continue,
                        Ok(Some(Ok(Message::Text(t))))
                            if at.is_none() && t.contains("\"message.created\"") =>
                        {
                            at = Some(now_us());
                            got.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Some(Ok(_))) => continue,
                        Ok(_) => break,
                    }
                }
                at
            })
        })
        .collect();
    let users: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let body =
        json!({"to_users": users, "title": "fan-out", "content": "x".repeat(100), "type": "bench"});
    let http = reqwest::Client::new();
    let t0 = now_us();
    let r = tokio::time::timeout(
        Duration::from_secs(120),
        http.post(format!("{}/api/v1/messages", node.base))
            .bearer_auth(KEY)
            .json(&body)
            .send(),
    )
    .await
    .context("the to_users POST timed out")??;
    let commit_s = now_us().saturating_sub(t0) as f64 / 1e6;
    if r.status() != 201 {
        bail!("the to_users POST answered {}", r.status());
    }
    settle(&got, n as u64).await;
    stop.store(true, Ordering::Relaxed);
    let mut arrivals = vec![];
    for r in readers {
        if let Some(at) = r.await? {
            arrivals.push(at.saturating_sub(t0).min(u32::MAX as u64) as u32);
        }
    }
    arrivals.sort_unstable();
    let sql_s = plain_sql_insert(db, n).await?;
    Ok(ToUsersResult {
        conns: n,
        connect_s,
        commit_s,
        all_s: arrivals.last().map(|v| *v as f64 / 1e6).unwrap_or(f64::NAN),
        p50_s: percentile(&arrivals, 0.50) / 1000.0,
        p99_s: percentile(&arrivals, 0.99) / 1000.0,
        reached: arrivals.len(),
        sql_s,
    })
}

/// The rows one `to_users` POST writes for `n` new users (counter upsert, message, event with a
/// `message.created`-sized payload, outbox entry carrying the frame as text, the frame built by
/// concatenation as `store::create_rows` builds it), as one set-based SQL statement (one
/// transaction): the database's own time for the write, with no HTTP, JSON or bind parameters.
async fn plain_sql_insert(db: &str, n: usize) -> anyhow::Result<f64> {
    let sql = format!(
        r#"WITH s AS (
  INSERT INTO user_inbox_state (user_id, seq, unread, unseen)
    SELECT 'sql' || g, 1, 1, 1 FROM generate_series(1, {n}) g ORDER BY 1
    ON CONFLICT (user_id) DO UPDATE SET seq = user_inbox_state.seq + 1,
      unread = user_inbox_state.unread + 1, unseen = user_inbox_state.unseen + 1, updated_at = now()
    RETURNING user_id, seq, gen_random_uuid() AS id
), m AS (
  INSERT INTO t_message_real_time (id, to_user, seq, title, content, type, send_time, service)
    SELECT id, user_id, seq, 'fan-out', repeat('x', 100), 'bench', now(), 'bench' FROM s
), f AS MATERIALIZED (
  SELECT user_id, seq, '{{"message":{{"id":"' || id || '","seq":' || seq
    || ',"content":"' || repeat('x', 100) || '","data":null,"is_read":false,"read_at":null,"send_time":"'
    || now() || '","send_user":null,"skip_url":null,"title":"fan-out","type":"bench"}},"seq":' || seq
    || ',"type":"message.created","unread":1,"unseen":1}}' AS frame FROM s
), e AS (
  INSERT INTO user_event (user_id, seq, payload) SELECT user_id, seq, frame::jsonb FROM f
)
INSERT INTO outbox (user_id, seq, frame) SELECT user_id, seq, frame FROM f"#
    );
    let mut c = AsyncPgConnection::establish(db).await?;
    let start = Instant::now();
    c.batch_execute(&sql).await?;
    Ok(start.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Report

fn topic_rows(label: &str, r: &TopicResult) -> String {
    let s = &r.steady;
    let b = &r.burst;
    format!(
        "| {label}: steady, {rate} events/s for {secs} s | {se} × {n} = {sexp} | {sd} | **{sf:.0}** | {s50:.1} / **{s99:.1}** / {smax:.1} |\n\
| {label}: burst of {be} events at once | {be} × {n} = {bexp} | {bd} | **{bf:.0}** | {b50:.1} / **{b99:.1}** / {bmax:.1} |\n",
        rate = r.rate,
        secs = r.secs,
        n = r.conns,
        se = s.events,
        sexp = s.events * r.conns as u64,
        sd = s.delivered,
        sf = s.fps(),
        s50 = s.p50_ms,
        s99 = s.p99_ms,
        smax = s.max_ms,
        be = b.events,
        bexp = b.events * r.conns as u64,
        bd = b.delivered,
        bf = b.fps(),
        b50 = b.p50_ms,
        b99 = b.p99_ms,
        bmax = b.max_ms,
    )
}

fn run_block(
    label: &str,
    note: &str,
    load: &str,
    n: &TopicResult,
    c: Option<&TopicResult>,
    t: &TopicResult,
    u: &ToUsersResult,
) -> String {
    // The Redis Cluster's rows, when the run had one (BENCH_REDIS_CLUSTER).
    let crows = c.map_or(String::new(), |c| {
        topic_rows(
            "notifyd on a Redis Cluster (3 masters, SPUBLISH/SSUBSCRIBE)",
            c,
        )
    });
    let cline = c.map_or(String::new(), |c| {
        format!(
            "On the Redis Cluster notifyd delivers **{:.0}%** of its single-Redis frames/s at the \
             steady rate and **{:.0}%** in the burst; burst p99 **{:.1}×** the single Redis's. \
             Sockets closed early: {}; failed publishes: {}.\n\n",
            c.steady.fps() / n.steady.fps() * 100.0,
            c.burst.fps() / n.burst.fps() * 100.0,
            c.burst.p99_ms / n.burst.p99_ms,
            c.closed,
            c.publish_errors
        )
    });
    let m = support::machine();
    format!(
        "<!-- fanout-run:{label} -->\n\
### {label}: {date}, commit `{commit}`, {conns} sockets\n\n\
{note}Machine: {cpu}, {cores} cores, {mem}; {pg}; Redis {redis_v}. notifyd release build, relay\n\
inside `serve`, Redis pub/sub, database pool 32; the load client and the trivial server are\n\
separate processes on the same cores. Load average when the run began: {load} (other work on\n\
the machine shares the cores too).\n\n\
**Topic fan-out**, {conns} sockets (one user each, claim `topics: bench:*`) subscribed to one topic:\n\n\
| what | frames expected | delivered | frames/s | latency p50 / p99 / max, ms |\n|---|---|---|---|---|\n\
{nrows}{crows}{trows}\n\
{cline}notifyd delivers **{steady_pct:.0}%** of the ceiling's frames/s at the steady rate and **{burst_pct:.0}%**\n\
in the burst; its burst p99 is **{p99_ratio:.1}×** the ceiling's. Sockets closed by the server\n\
before the end: {closed} (ceiling: {tclosed}); failed publishes: {perr} (ceiling: {tperr}). Time to\n\
open and subscribe all sockets: {nconnect:.1} s (ceiling: {tconnect:.1} s to open).\n\n\
**One `to_users` POST to {uconns} online users** (one socket each):\n\n\
| what | figure |\n|---|---|\n\
| `POST /api/v1/messages` with `to_users` of all {uconns} → `201` (committed) | **{commit_s:.2} s** |\n\
| the same rows by one plain set-based SQL statement (counters, messages, events, outbox) | **{sql:.2} s** ({sql_pct:.0}% of the POST's commit time) |\n\
| POST sent → every socket has its `message.created` | **{all:.2} s** ({reached} of {uconns} sockets) |\n\
| … across sockets, p50 / p99 | {p50:.2} s / {p99:.2} s |\n\
| time to open all sockets (each waiting for `hello`) | {uconnect:.1} s |\n\
<!-- /fanout-run:{label} -->\n",
        date = chrono::Utc::now().format("%Y-%m-%d"),
        commit = support::git_commit(),
        conns = n.conns,
        cpu = m.cpu,
        cores = m.cores,
        mem = m.mem.split_whitespace().skip(1).collect::<Vec<_>>().join(" "),
        pg = m.pg,
        redis_v = m
            .redis
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .unwrap_or("?"),
        nrows = topic_rows("notifyd", n),
        trows = topic_rows("ceiling (trivial WebSocket fan-out)", t),
        steady_pct = n.steady.fps() / t.steady.fps() * 100.0,
        burst_pct = n.burst.fps() / t.burst.fps() * 100.0,
        p99_ratio = n.burst.p99_ms / t.burst.p99_ms,
        closed = n.closed,
        tclosed = t.closed,
        perr = n.publish_errors,
        tperr = t.publish_errors,
        nconnect = n.connect_s,
        tconnect = t.connect_s,
        uconns = u.conns,
        commit_s = u.commit_s,
        sql = u.sql_s,
        sql_pct = u.sql_s / u.commit_s * 100.0,
        all = u.all_s,
        reached = u.reached,
        p50 = u.p50_s,
        p99 = u.p99_s,
        uconnect = u.connect_s,
    )
}

fn section_intro() -> String {
    "## Topic fan-out and a 10,000-recipient POST\n\n\
Written by `BENCH_FANOUT_CONNS=10000 BENCH_FANOUT_LABEL=<label> cargo bench --bench fanout`\n\
(benches/fanout.rs), one block per label: each block is one run, and its figures were all\n\
measured in that run. The topic figures stand beside a *ceiling* from the same run: the same\n\
client sockets fed by a trivial WebSocket fan-out server (a separate process: one broadcast\n\
channel, the frame serialised once, queued frames written together, no auth, no database, no\n\
Redis), i.e. roughly what this load client can receive on this machine at all: where notifyd\n\
reaches about 100% of it, the client (and the shared cores), not notifyd, set the figure. Latency is publish → frame: the publisher puts its send time\n\
in `data`, the client compares it with the arrival time. Steady = one event every 1/rate s;\n\
burst = all events posted at once; frames/s = frames delivered ÷ (last frame's arrival − first\n\
publish) of that phase.\n\n"
        .to_string()
}

/// Replaces this run's block (same label) in the fan-out section, or adds it; everything else in
/// the document, and other labels' blocks, stay as they are (benches/support/doc.rs).
fn write_doc(path: &str, label: &str, block: &str) -> anyhow::Result<()> {
    let intro = section_intro();
    let section = support::doc::Blocks {
        name: "fanout",
        intro: &intro,
    };
    support::write_block(path, &section, label, block)
}

// ---------------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Ok(bind) = std::env::var(TRIVIAL_BIND) {
        return rt.block_on(trivial_server(&bind));
    }
    rt.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let bin = support::notifyd_bin()?;
    let n = env_num("BENCH_FANOUT_CONNS", 1000) as usize;
    let rate = env_num("BENCH_FANOUT_RATE", 20).max(1);
    let secs = env_num("BENCH_FANOUT_SECS", 10);
    let burst = env_num("BENCH_FANOUT_BURST", 100);
    let label = std::env::var("BENCH_FANOUT_LABEL").unwrap_or_else(|_| support::git_commit());
    let note = std::env::var("BENCH_FANOUT_NOTE")
        .map(|s| format!("{s}\n\n"))
        .unwrap_or_default();
    let write = match std::env::var("BENCH_WRITE_DOC").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => n >= 10_000,
    };
    // Other work on the machine shares the cores: recorded beside the figures.
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let db = BenchDb::create("fanout").await?;
    let prefix = format!("benchfan{}:", std::process::id());

    println!("1/3 topic fan-out through notifyd: {n} sockets, {rate} events/s for {secs} s, then {burst} at once");
    let node = Node::start(&bin, &db.url, &prefix, true, &["serve"]).await?;
    let nres = topic_notifyd(&node, n, rate, secs, burst).await;
    node.stop();
    let nres = nres?;
    print_topic(&nres);

    // BENCH_REDIS_CLUSTER=h1:p1,h2:p2 (scripts/redis-cluster-test.sh with NOTIFYD_KEEP_CLUSTER=1
    // prints one): the same topic fan-out with the node on a Redis Cluster (sharded pub/sub), in
    // the same run as the single Redis above.
    let cres = match std::env::var("BENCH_REDIS_CLUSTER") {
        Ok(seeds) => {
            println!("1b/3 the same with the node on the Redis Cluster {seeds}");
            let env = [("REDIS_URL", format!("redis+cluster://{seeds}"))];
            let node = Node::start_with(&bin, &db.url, &prefix, true, &["serve"], &env).await?;
            let cres = topic_notifyd(&node, n, rate, secs, burst).await;
            node.stop();
            let cres = cres?;
            print_topic(&cres);
            Some(cres)
        }
        Err(_) => None,
    };

    println!("2/3 the ceiling: the same through a trivial WebSocket fan-out server");
    let tres = topic_trivial(n, rate, secs, burst).await?;
    print_topic(&tres);

    println!("3/3 one to_users POST to {n} online users");
    let node = Node::start(&bin, &db.url, &prefix, true, &["serve"]).await?;
    let ures = to_users(&node, &db.url, n).await;
    node.stop();
    let ures = ures?;
    println!(
        "    201 after {:.2}s (plain SQL {:.2}s); all {} sockets after {:.2}s (p50 {:.2}s, p99 {:.2}s)",
        ures.commit_s, ures.sql_s, ures.reached, ures.all_s, ures.p50_s, ures.p99_s
    );
    db.drop_db().await?;

    let block = run_block(&label, &note, &load, &nres, cres.as_ref(), &tres, &ures);
    println!("{block}");
    if write {
        write_doc("docs/benchmarks.md", &label, &block)?;
        println!("wrote run {label:?} into docs/benchmarks.md");
    } else {
        println!("(docs/benchmarks.md not written: runs of fewer than 10,000 sockets are not recorded; BENCH_WRITE_DOC=1 forces it)");
    }
    Ok(())
}

fn print_topic(r: &TopicResult) {
    for (name, p) in [("steady", &r.steady), ("burst", &r.burst)] {
        println!(
            "    {name}: {} of {} frames, {:.0} frames/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            p.delivered,
            p.events * r.conns as u64,
            p.fps(),
            p.p50_ms,
            p.p99_ms,
            p.max_ms
        );
    }
    println!(
        "    closed early: {}, failed publishes: {}",
        r.closed, r.publish_errors
    );
}
