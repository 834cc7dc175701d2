//! SSE beside the WebSocket (issue 23: "Benchmarks beside the WebSocket in one run"), both
//! transports measured in ONE run, on one release binary, the same way, and written to
//! docs/benchmarks.md (section `sse`) as ratios to the WebSocket:
//! 1. server RSS per idle connection: a fresh node for each measurement, 20 connections opened
//!    and closed (one-off allocations into the baseline), then `n` authenticated connections,
//!    one user each, ready (WebSocket: `hello`; SSE: the `hello` event) and idle; RSS after
//!    settling minus RSS before, divided by `n`. WebSocket and SSE alternate, `rounds` times,
//!    so a change in the machine's load weighs on both;
//! 2. send → frame latency: one node holding `users` WebSocket users and `users` SSE users at
//!    once; single-message POSTs at a fixed offered rate, alternating between a WebSocket user
//!    and an SSE user, so both transports see the same load at the same moments; latency = the
//!    POST's send time (in `data.t`) → the `message.created` frame (WebSocket) or event (SSE).
//!
//! SSE connections authenticate with `Authorization: Bearer` (what a ticket carries, without
//! the extra POST per connection; the session is the same). Needs a release binary (`cargo
//! build --release`), PostgreSQL and Redis. Run: `cargo bench --bench sse`. Sizes (env):
//! BENCH_SSE_CONNS (2000), BENCH_SSE_ROUNDS (2), BENCH_SSE_RATES ("200,1000"), BENCH_SSE_SECS
//! (10), BENCH_SSE_WARM_SECS (2), BENCH_SSE_USERS (50 per transport), BENCH_SSE_SETTLE_SECS (3).
//! BENCH_WRITE_DOC=0: print only. Timing never fails the run.

mod support;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use support::{env_num, BenchDb, Node, KEY, SECRET};

type Ws = WebSocketStream<tokio::net::TcpStream>;

/// Every wait for a connection or an event is bounded by this.
const WAIT: Duration = Duration::from_secs(30);
/// Connections opened at once.
const CONCURRENCY: usize = 100;
/// A latency phase ends when every frame arrived, or none arrived for this long.
const STALL: Duration = Duration::from_secs(10);
const BEGIN: &str = "<!-- sse:begin -->";
const END: &str = "<!-- sse:end -->";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Ws,
    Sse,
}

impl Transport {
    /// In user names: the latency scenario's POSTs address `l<rate><tag>-<i>`.
    fn tag(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Transport::Ws => "WebSocket",
            Transport::Sse => "SSE",
        }
    }
}

/// One open, ready connection, read by a task of its own until dropped.
struct Held(tokio::task::JoinHandle<()>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The integer after `key` in a frame's text (cheaper than parsing the JSON: this client's CPU
/// shares the cores with the node it measures).
fn field(text: &str, key: &str) -> Option<u64> {
    let rest = text[text.find(key)? + key.len()..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn token(user: &str) -> anyhow::Result<String> {
    notifyd::auth::jwt::JwtKeys::new(SECRET).mint(user, 3600, &[])
}

async fn open_ws(port: u16, user: &str) -> anyhow::Result<Ws> {
    let path = format!("ws://127.0.0.1:{port}/ws?token={}", token(user)?);
    let (ws, _) = support::until_hello(|| {
        let path = path.clone();
        async move {
            let stream =
                tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(("127.0.0.1", port)))
                    .await
                    .context("connect timed out")??;
            let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(path, stream))
                .await
                .context("handshake timed out")??;
            Ok(ws)
        }
    })
    .await?;
    Ok(ws)
}

/// `GET /sse` for `user` until the `hello` event; a busy node's `503` is retried after its
/// `Retry-After`, as `EventSource` retries. Returns the response and what was read past `hello`.
async fn open_sse(
    http: &reqwest::Client,
    port: u16,
    user: &str,
) -> anyhow::Result<(reqwest::Response, String)> {
    let jwt = token(user)?;
    for _ in 0..30 {
        let sent = http
            .get(format!("http://127.0.0.1:{port}/sse"))
            .bearer_auth(&jwt)
            .header("Accept", "text/event-stream")
            .send();
        let mut resp = tokio::time::timeout(WAIT, sent)
            .await
            .context("GET /sse timed out")??;
        if resp.status() == 503 {
            let secs = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(secs)).await;
            continue;
        }
        if resp.status() != 200 {
            bail!("GET /sse: {}", resp.status());
        }
        let mut seen = String::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let chunk = tokio::time::timeout_at(deadline, resp.chunk())
                .await
                .context("no hello event within 30 s")??
                .context("the stream ended before hello")?;
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(at) = seen.find("event: hello\n") {
                let rest = seen[at..].split_once("\n\n").map(|(_, r)| r.to_string());
                return Ok((resp, rest.unwrap_or_default()));
            }
        }
    }
    bail!("refused 30 times (503)")
}

/// Opens `n` ready connections on `transport` (users `{prefix}{i}`). Each is read from the
/// moment it is open (WebSocket pings answered, SSE comments taken), and `on_text` sees every
/// text frame (WebSocket) or chunk (SSE) read after `hello`.
async fn open_many<F>(
    transport: Transport,
    port: u16,
    n: usize,
    prefix: &str,
    on_text: F,
) -> (Vec<Held>, usize)
where
    F: Fn(&str) + Clone + Send + Sync + 'static,
{
    let http = reqwest::Client::new();
    let results: Vec<anyhow::Result<Held>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (user, http, on_text) = (format!("{prefix}{i}"), http.clone(), on_text.clone());
            async move {
                let task = match transport {
                    Transport::Ws => {
                        let mut ws = open_ws(port, &user).await?;
                        tokio::spawn(async move {
                            while let Some(Ok(m)) = ws.next().await {
                                if let Message::Text(t) = m {
                                    on_text(&t);
                                }
                            }
                        })
                    }
                    Transport::Sse => {
                        let (mut resp, rest) = open_sse(&http, port, &user).await?;
                        tokio::spawn(async move {
                            // Events arrive whole in one chunk (the node writes them so), but
                            // TCP may split them: a line is only looked at once complete.
                            let mut buf = rest;
                            loop {
                                let lines =
                                    buf.rfind('\n').map(|e| buf.drain(..=e).collect::<String>());
                                if let Some(lines) = lines {
                                    for l in lines.lines().filter(|l| l.starts_with("data: ")) {
                                        on_text(l);
                                    }
                                }
                                match resp.chunk().await {
                                    Ok(Some(c)) => buf.push_str(&String::from_utf8_lossy(&c)),
                                    _ => break,
                                }
                            }
                        })
                    }
                };
                Ok(Held(task))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut held = vec![];
    let mut failed = 0;
    for r in results {
        match r {
            Ok(h) => held.push(h),
            Err(e) => {
                if failed == 0 {
                    eprintln!("    first failed {} connect: {e:#}", transport.label());
                }
                failed += 1;
            }
        }
    }
    (held, failed)
}

struct Mem {
    transport: Transport,
    round: usize,
    ready: usize,
    failed: usize,
    before_kib: u64,
    after_kib: u64,
}

impl Mem {
    fn per_conn(&self) -> f64 {
        self.after_kib.saturating_sub(self.before_kib) as f64 / self.ready.max(1) as f64
    }
}

/// One fresh node: warm-up, baseline, `n` idle connections on `transport`, RSS again.
async fn memory(
    bin: &str,
    db: &str,
    prefix: &str,
    transport: Transport,
    round: usize,
    n: usize,
    settle: Duration,
) -> anyhow::Result<Mem> {
    let node = Node::start(bin, db, prefix, true, &["serve"]).await?;
    let (warm, _) = open_many(transport, node.port, 20, &format!("w{round}-"), |_| {}).await;
    drop(warm);
    tokio::time::sleep(settle).await;
    let before_kib = node.rss_kib();
    let tag = format!("m{round}{}-", transport.tag());
    let (held, failed) = open_many(transport, node.port, n, &tag, |_| {}).await;
    tokio::time::sleep(settle).await;
    let after_kib = node.rss_kib();
    let m = Mem {
        transport,
        round,
        ready: held.len(),
        failed,
        before_kib,
        after_kib,
    };
    println!(
        "    round {round} {}: {} ready ({failed} failed), RSS {before_kib} → {after_kib} KiB = {:.1} KiB per connection",
        transport.label(),
        m.ready,
        m.per_conn()
    );
    drop(held);
    node.stop();
    Ok(m)
}

struct Latency {
    rate: u64,
    secs: u64,
    sent: u64,
    post_errors: u64,
    /// Per transport, µs, sorted.
    ws: Vec<u32>,
    sse: Vec<u32>,
}

/// `users` WebSocket users and `users` SSE users on one node; `rate` POSTs/s alternating
/// between them, `warm` s not counted, then `secs` s measured.
async fn latency(
    bin: &str,
    db: &str,
    prefix: &str,
    users: usize,
    rate: u64,
    warm: u64,
    secs: u64,
) -> anyhow::Result<Latency> {
    let node = Node::start(bin, db, prefix, true, &["serve"]).await?;
    let samples: Arc<[Mutex<Vec<u32>>; 2]> = Arc::new([Mutex::new(vec![]), Mutex::new(vec![])]);
    let got = Arc::new(AtomicU64::new(0));
    let mut held = vec![];
    for (k, transport) in [Transport::Ws, Transport::Sse].into_iter().enumerate() {
        let (samples, got) = (samples.clone(), got.clone());
        let on_text = move |text: &str| {
            let now = now_us();
            if !text.contains("message.created") {
                return;
            }
            if let (Some(1), Some(sent)) = (field(text, "\"m\":"), field(text, "\"t\":")) {
                let l = now.saturating_sub(sent).min(u32::MAX as u64) as u32;
                if let Ok(mut s) = samples[k].lock() {
                    s.push(l);
                }
                got.fetch_add(1, Ordering::Relaxed);
            }
        };
        let prefix = format!("l{rate}{}-", transport.tag());
        let (h, failed) = open_many(transport, node.port, users, &prefix, on_text).await;
        if failed > 0 {
            bail!(
                "{failed} of {users} {} latency connections failed",
                transport.label()
            );
        }
        held.extend(h);
    }

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let url = format!("{}/api/v1/messages", node.base);
    let errors = Arc::new(AtomicU64::new(0));
    let total = rate * (warm + secs);
    let measured = rate * secs;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut posts = Vec::with_capacity(total as usize);
    for k in 0..total {
        tick.tick().await;
        let (http, url, errors) = (http.clone(), url.clone(), errors.clone());
        let m = (k >= total - measured) as u8;
        let on = if k % 2 == 0 {
            Transport::Ws.tag()
        } else {
            Transport::Sse.tag()
        };
        let to = format!("l{rate}{on}-{}", (k / 2) as usize % users);
        // Each POST on its own task: a slow answer does not lower the offered rate.
        posts.push(tokio::spawn(async move {
            let body = json!({"to_user": to, "title": "bench", "content": "latency", "type": "bench",
                "data": {"m": m, "t": now_us()}});
            let sent = http.post(url).bearer_auth(KEY).json(&body).send();
            if !matches!(tokio::time::timeout(WAIT, sent).await, Ok(Ok(r)) if r.status() == 201) {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for p in posts {
        p.await?;
    }
    settle(&got, measured).await;
    drop(held);
    node.stop();
    let take = |k: usize| -> Vec<u32> {
        let mut v = samples[k]
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        v.sort_unstable();
        v
    };
    Ok(Latency {
        rate,
        secs,
        sent: measured,
        post_errors: errors.load(Ordering::Relaxed),
        ws: take(0),
        sse: take(1),
    })
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

fn pct(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

struct Run {
    started: String,
    load_before: String,
    load_after: String,
    conns: usize,
    settle: u64,
    users: usize,
    warm: u64,
    mem: Vec<Mem>,
    lat: Vec<Latency>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn section(r: &Run) -> String {
    let m = support::machine();
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN}");
    let _ = writeln!(s, "## SSE beside the WebSocket\n");
    let _ = writeln!(
        s,
        "Written by `cargo bench --bench sse` (benches/sse.rs) on {}, commit `{}`: both transports \
         of one release binary measured in this one run, the same way, so read the ratios. {}, {} \
         cores; {}; {}. Load average {} when the run began, {} when it ended: **the machine was \
         shared with other work during this run** (2 cores for the node, PostgreSQL, Redis and \
         this client, with other jobs beside them), so absolute figures are noisy and only the \
         SSE / WebSocket ratios of the same run mean much. Runs are kept short for that reason.\n",
        r.started,
        support::git_commit(),
        m.cpu,
        m.cores,
        m.pg,
        m.redis,
        r.load_before,
        r.load_after
    );
    let per = |t: Transport| {
        median(
            r.mem
                .iter()
                .filter(|x| x.transport == t)
                .map(Mem::per_conn)
                .collect(),
        )
    };
    let (ws, sse) = (per(Transport::Ws), per(Transport::Sse));
    let _ = writeln!(
        s,
        "| figure | SSE | WebSocket, same run | SSE / WebSocket |\n|---|---|---|---|"
    );
    let _ = writeln!(
        s,
        "| RSS per idle connection, {} connections (median of {} rounds) | {sse:.1} KiB | {ws:.1} KiB | **{:.2}×** |",
        r.conns,
        r.mem.len() / 2,
        sse / ws
    );
    for l in &r.lat {
        let _ = writeln!(
            s,
            "| send→frame latency at {} msg/s (half to each), p50 / p99 | {:.2} / {:.2} ms | {:.2} / {:.2} ms | p50 **{:.2}×**, p99 **{:.2}×** |",
            l.rate,
            pct(&l.sse, 0.5),
            pct(&l.sse, 0.99),
            pct(&l.ws, 0.5),
            pct(&l.ws, 0.99),
            pct(&l.sse, 0.5) / pct(&l.ws, 0.5),
            pct(&l.sse, 0.99) / pct(&l.ws, 0.99)
        );
    }
    let _ = writeln!(s, "\n### Memory per idle connection\n");
    let _ = writeln!(
        s,
        "A fresh node (release build, relay on, default settings) for each row: 20 connections \
         of the row's transport opened and closed, {settle} s to settle, RSS (VmRSS) read; then \
         {n} connections, one user each (so one user actor each, on both transports), ready \
         (WebSocket: the `hello` frame; SSE: the `hello` event, Authorization: Bearer) and idle \
         but read; {settle} s to settle, RSS again. Per connection = difference ÷ connections \
         ready. The transports alternate, round by round.\n",
        settle = r.settle,
        n = r.conns
    );
    let _ = writeln!(s, "| round | transport | ready (failed) | RSS before → after | per connection |\n|---|---|---|---|---|");
    for x in &r.mem {
        let _ = writeln!(
            s,
            "| {} | {} | {} ({}) | {} → {} KiB | **{:.1} KiB** |",
            x.round + 1,
            x.transport.label(),
            x.ready,
            x.failed,
            x.before_kib,
            x.after_kib,
            x.per_conn()
        );
    }
    let _ = writeln!(s, "\n### send → frame latency\n");
    let _ = writeln!(
        s,
        "One node holding {u} WebSocket users and {u} SSE users at once; `POST /api/v1/messages` \
         (one message to one user) at the offered rate, each on its own task, alternating \
         between a WebSocket user and an SSE user (round robin within each), so both transports \
         carry half the load at the same moments. Latency = the POST's send time (in `data`) → \
         the `message.created` frame (WebSocket) or event (SSE) read by the client. {w} s of \
         warm-up not counted.\n",
        u = r.users,
        w = r.warm
    );
    let _ = writeln!(s, "| rate | transport | frames / sent | POST errors | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|---|---|");
    for l in &r.lat {
        for (t, v) in [("WebSocket", &l.ws), ("SSE", &l.sse)] {
            let _ = writeln!(
                s,
                "| {} msg/s × {} s | {t} | {} / {} | {} | {:.2} ms | {:.2} ms | **{:.2} ms** | {:.1} ms |",
                l.rate,
                l.secs,
                v.len(),
                l.sent / 2,
                l.post_errors,
                pct(v, 0.5),
                pct(v, 0.9),
                pct(v, 0.99),
                pct(v, 1.0)
            );
        }
    }
    let _ = writeln!(s, "{END}");
    s
}

async fn bench() -> anyhow::Result<()> {
    let bin = support::notifyd_bin()?;
    let conns = env_num("BENCH_SSE_CONNS", 2000) as usize;
    let rounds = env_num("BENCH_SSE_ROUNDS", 2).max(1) as usize;
    let rates: Vec<u64> = std::env::var("BENCH_SSE_RATES")
        .unwrap_or_else(|_| "200,1000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let secs = env_num("BENCH_SSE_SECS", 10);
    let warm = env_num("BENCH_SSE_WARM_SECS", 2);
    let users = env_num("BENCH_SSE_USERS", 50).max(1) as usize;
    let settle = env_num("BENCH_SSE_SETTLE_SECS", 3);
    let mut run = Run {
        started: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        load_before: loadavg(),
        load_after: String::new(),
        conns,
        settle,
        users,
        warm,
        mem: vec![],
        lat: vec![],
    };
    let db = BenchDb::create("sse").await?;
    let prefix = format!("benchsse{}:", std::process::id());
    let outcome = async {
        println!("1/2 RSS per idle connection, {conns} each, {rounds} rounds");
        for round in 0..rounds {
            for t in [Transport::Ws, Transport::Sse] {
                let m = memory(&bin, &db.url, &prefix, t, round, conns, Duration::from_secs(settle)).await?;
                run.mem.push(m);
            }
        }
        for &rate in &rates {
            println!("2/2 send → frame latency at {rate} msg/s, {users} users per transport");
            let l = latency(&bin, &db.url, &prefix, users, rate, warm, secs).await?;
            println!(
                "    WebSocket {} frames p50 {:.2} p99 {:.2} ms; SSE {} frames p50 {:.2} p99 {:.2} ms ({} POST errors)",
                l.ws.len(),
                pct(&l.ws, 0.5),
                pct(&l.ws, 0.99),
                l.sse.len(),
                pct(&l.sse, 0.5),
                pct(&l.sse, 0.99),
                l.post_errors
            );
            run.lat.push(l);
        }
        anyhow::Ok(())
    }
    .await;
    let _ = db.drop_db().await;
    outcome?;
    run.load_after = loadavg();
    let s = section(&run);
    println!("{s}");
    if std::env::var("BENCH_WRITE_DOC").as_deref() == Ok("0") {
        println!("(docs/benchmarks.md not written: BENCH_WRITE_DOC=0)");
    } else {
        support::write_marked("docs/benchmarks.md", BEGIN, END, &s)?;
        println!("wrote the sse section of docs/benchmarks.md");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}
