//! The three scenarios, run the same way against every server: idle sockets held by child
//! processes (memory), send → frame latency of single-message POSTs, and one-topic fan-out.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::client::{self, now_us, Kind, Target, Ws, WAIT};
use crate::setup::Server;
use crate::support::KEY;

/// Env vars that turn this binary into an idle-socket holder (a child of the memory scenario).
pub const HOLD_KIND: &str = "BENCH_PEERS_HOLD";
const HOLD_ADDR: &str = "BENCH_PEERS_HOLD_ADDR";
const HOLD_FROM: &str = "BENCH_PEERS_HOLD_FROM";
const HOLD_COUNT: &str = "BENCH_PEERS_HOLD_COUNT";
const HOLD_SRC: &str = "BENCH_PEERS_HOLD_SRC";
const HOLD_PREFIX: &str = "BENCH_PEERS_HOLD_PREFIX";
/// Sockets per holder process: well under the 20,000 open files one process may have.
const PER_HOLDER: usize = 5_000;
/// Holder k binds its sockets to 127.0.0.(HOLDER_SRC + k): a source address of its own.
const HOLDER_SRC: u8 = 60;
/// The fan-out and latency clients (this process) use 127.0.0.(CLIENT_SRC ..+ CLIENT_SRCS).
const CLIENT_SRC: u8 = 50;
const CLIENT_SRCS: usize = 4;
/// Sockets opened at once by one process.
const CONNECT_CONCURRENCY: usize = 200;
/// A waiting phase ends when every frame arrived, or none arrived for this long.
const STALL: Duration = Duration::from_secs(10);

fn src(base: u8, i: usize, spread: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, base + (i % spread) as u8)
}

/// Opens `n` ready sockets (users `{prefix}{i}`), `CONNECT_CONCURRENCY` at a time.
async fn open_many(
    t: &Target,
    n: usize,
    prefix: &str,
    topic: Option<&str>,
    base: u8,
    spread: usize,
) -> (Vec<Ws>, usize, f64) {
    let start = Instant::now();
    let results: Vec<anyhow::Result<Ws>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let user = format!("{prefix}{i}");
            async move { client::connect(t, src(base, i, spread), &user, topic).await }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let mut socks = vec![];
    let mut failed = 0;
    for r in results {
        match r {
            Ok(ws) => socks.push(ws),
            Err(e) => {
                if failed == 0 {
                    eprintln!("    first failed connect: {e:#}");
                }
                failed += 1;
            }
        }
    }
    (socks, failed, start.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Memory per idle socket

/// The holder child: opens its sockets, says `READY <ok> <failed>`, keeps them open (answering
/// pings) until its stdin closes, then exits.
pub async fn hold() -> anyhow::Result<()> {
    let var = |k: &str| std::env::var(k).with_context(|| format!("{k} unset"));
    let kind = Kind::parse(&var(HOLD_KIND)?).context("unknown kind")?;
    let t = Target {
        kind,
        ws: var(HOLD_ADDR)?.parse()?,
        secret: crate::support::SECRET.to_string(),
    };
    let from: usize = var(HOLD_FROM)?.parse()?;
    let count: usize = var(HOLD_COUNT)?.parse()?;
    let base: u8 = var(HOLD_SRC)?.parse()?;
    let prefix = format!("{}{from}-", var(HOLD_PREFIX)?);
    // Each socket answers pings from the moment it is open, not once all are: while a node
    // refuses handshakes past its admission cap, opening thousands takes a while, and a socket
    // that does not answer for the server's liveness window is closed.
    let ready: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..count)
        .map(|i| {
            let (t, user) = (&t, format!("{prefix}{i}"));
            async move {
                let mut ws = client::connect(t, src(base, i, 1), &user, None).await?;
                tokio::spawn(async move {
                    while let Ok(Some(_)) = client::recv(&mut ws, kind).await {}
                });
                Ok(())
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let ok = ready.iter().filter(|r| r.is_ok()).count();
    let failed = ready.len() - ok;
    if let Some(Err(e)) = ready.iter().find(|r| r.is_err()) {
        eprintln!("    first failed connect: {e:#}");
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY {ok} {failed}")?;
        out.flush()?;
    }
    // Blocks (on a thread of its own) until the parent closes our stdin or dies.
    tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut buf = [0u8; 64];
        while std::io::stdin().read(&mut buf).unwrap_or(0) > 0 {}
    })
    .await?;
    Ok(())
}

struct Holder {
    child: tokio::process::Child,
}

impl Holder {
    async fn spawn(
        t: &Target,
        prefix: &str,
        from: usize,
        count: usize,
        k: usize,
    ) -> anyhow::Result<Holder> {
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .env(HOLD_KIND, t.kind.name())
            .env(HOLD_ADDR, t.ws.to_string())
            .env(HOLD_FROM, from.to_string())
            .env(HOLD_COUNT, count.to_string())
            .env(HOLD_SRC, (HOLDER_SRC + k as u8).to_string())
            .env(HOLD_PREFIX, prefix)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a socket holder")?;
        Ok(Holder { child })
    }

    /// Waits for `READY ok failed`.
    async fn ready(&mut self) -> anyhow::Result<(usize, usize)> {
        let out = self.child.stdout.as_mut().context("no stdout")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(300),
            BufReader::new(out).read_line(&mut line),
        )
        .await
        .context("a socket holder was not ready within 300 s")??;
        let mut w = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0));
        match (w.next(), w.next()) {
            (Some(ok), Some(failed)) => Ok((ok, failed)),
            _ => bail!("a socket holder said {line:?}"),
        }
    }
}

pub struct MemPoint {
    pub target_n: usize,
    pub ready: usize,
    pub failed: usize,
    pub before_kib: u64,
    pub after_kib: u64,
}

impl MemPoint {
    pub fn kib_per_socket(&self) -> f64 {
        self.after_kib.saturating_sub(self.before_kib) as f64 / self.ready.max(1) as f64
    }
}

/// Server RSS before any measured socket, then at each size in `sizes` (sockets added by more
/// holder processes), after `settle`.
pub async fn memory(
    server: &Server,
    sizes: &[usize],
    settle: Duration,
) -> anyhow::Result<Vec<MemPoint>> {
    let t = &server.target;
    // Warm-up: a few sockets opened and closed first, so one-off start-up allocations (pools,
    // thread stacks, caches) are in the baseline for every server alike.
    let mut warm = Holder::spawn(t, "w", 0, 20, 0).await?;
    warm.ready().await?;
    drop(warm);
    tokio::time::sleep(settle).await;
    let before = server.rss_kib();
    let mut holders = vec![];
    let (mut opened, mut ready, mut failed) = (0, 0, 0);
    let mut points = vec![];
    for &n in sizes {
        let mut new = vec![];
        while opened < n {
            let count = PER_HOLDER.min(n - opened);
            new.push(Holder::spawn(t, "m", opened, count, holders.len() + new.len()).await?);
            opened += count;
        }
        for h in &mut new {
            let (ok, bad) = h.ready().await?;
            ready += ok;
            failed += bad;
        }
        holders.extend(new);
        tokio::time::sleep(settle).await;
        let after = server.rss_kib();
        println!(
            "    {}: {ready} sockets ({failed} failed): RSS {before} → {after} KiB = {:.1} KiB per socket",
            t.kind.label(),
            after.saturating_sub(before) as f64 / ready.max(1) as f64
        );
        points.push(MemPoint {
            target_n: n,
            ready,
            failed,
            before_kib: before,
            after_kib: after,
        });
    }
    drop(holders);
    Ok(points)
}

// ---------------------------------------------------------------------------------------------
// send → frame latency

pub struct Latency {
    pub rate: u64,
    pub secs: u64,
    /// Latencies of the measured phase in µs, sorted.
    pub us: Vec<u32>,
    pub sent: u64,
    pub post_errors: u64,
}

/// `rate` single-message POSTs per second to one of `users` connected users, for `warm` s
/// (not counted) and then `secs` s; latency = the POST's send time (in `data.t`) → the
/// `message.created` frame's arrival on the recipient's socket. The POSTs go to `server`, or to
/// `post_to` (another node of the same cluster: the frame then comes through the relay).
pub async fn latency(
    server: &Server,
    post_to: Option<&str>,
    users: usize,
    rate: u64,
    warm: u64,
    secs: u64,
) -> anyhow::Result<Latency> {
    let t = &server.target;
    let (socks, failed, _) = open_many(
        t,
        users,
        &format!("l{rate}-"),
        None,
        CLIENT_SRC,
        CLIENT_SRCS,
    )
    .await;
    if failed > 0 {
        bail!("{failed} of {users} latency sockets failed to connect");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::<u32>::new()));
    let kind = t.kind;
    let readers: Vec<_> = socks
        .into_iter()
        .map(|mut ws| {
            let (stop, got, samples) = (stop.clone(), got.clone(), samples.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let text = match tokio::time::timeout(
                        Duration::from_millis(200),
                        client::recv(&mut ws, kind),
                    )
                    .await
                    {
                        Err(_) => continue,
                        Ok(Ok(Some(text))) => text,
                        Ok(_) => break,
                    };
                    let now = now_us();
                    if !text.contains("message.created") {
                        continue;
                    }
                    if let (Some(1), Some(sent)) = (
                        client::field(&text, "\"m\":"),
                        client::field(&text, "\"t\":"),
                    ) {
                        let l = now.saturating_sub(sent).min(u32::MAX as u64) as u32;
                        if let Ok(mut s) = samples.lock() {
                            s.push(l);
                        }
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let url = format!("{}/api/v1/messages", post_to.unwrap_or(&server.http));
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
        let to = format!("l{rate}-{}", k as usize % users);
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
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await?;
    }
    let mut us = std::mem::take(&mut *samples.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    us.sort_unstable();
    Ok(Latency {
        rate,
        secs,
        us,
        sent: measured,
        post_errors: errors.load(Ordering::Relaxed),
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

pub fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

// ---------------------------------------------------------------------------------------------
// One topic → N subscribers

const STEADY: usize = 0;
const BURST: usize = 1;

/// How an event reaches the server: notifyd's and Socket.IO's `POST .../topics/{t}/events`, or
/// `PUB` on NATS's TCP port.
#[derive(Clone)]
enum Publisher {
    Http { http: reqwest::Client, url: String },
    Nats(Arc<tokio::sync::Mutex<tokio::net::TcpStream>>),
}

impl Publisher {
    async fn new(server: &Server) -> anyhow::Result<Publisher> {
        let kind = server.target.kind;
        if kind == Kind::Nats {
            let addr = server.nats_tcp.context("no NATS TCP port")?;
            let mut s = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr)).await??;
            s.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
                .await?;
            // INFO, then PONG: the connection is accepted.
            let mut seen = String::new();
            let mut buf = [0u8; 4096];
            while !seen.contains("PONG") {
                let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await??;
                if n == 0 {
                    bail!("NATS closed the publisher");
                }
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            return Ok(Publisher::Nats(Arc::new(tokio::sync::Mutex::new(s))));
        }
        Ok(Publisher::Http {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(128)
                .build()?,
            url: format!("{}/api/v1/topics/{}/events", server.http, kind.topic()),
        })
    }

    async fn publish(&self, phase: usize) -> bool {
        match self {
            Publisher::Http { http, url } => {
                let body = json!({"data": {"p": phase, "t": now_us()}});
                let sent = http.post(url).bearer_auth(KEY).json(&body).send();
                matches!(tokio::time::timeout(WAIT, sent).await, Ok(Ok(r)) if r.status().is_success())
            }
            Publisher::Nats(s) => {
                let mut s = s.lock().await;
                let payload = format!("{{\"p\":{phase},\"t\":{}}}", now_us());
                let msg = format!(
                    "PUB {} {}\r\n{payload}\r\n",
                    Kind::Nats.topic(),
                    payload.len()
                );
                matches!(
                    tokio::time::timeout(WAIT, s.write_all(msg.as_bytes())).await,
                    Ok(Ok(()))
                )
            }
        }
    }
}

pub struct Phase {
    pub events: u64,
    pub delivered: u64,
    pub secs: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Phase {
    pub fn fps(&self) -> f64 {
        self.delivered as f64 / self.secs
    }
}

pub struct Fanout {
    pub conns: usize,
    pub failed: usize,
    pub connect_s: f64,
    pub rate: u64,
    pub secs: u64,
    pub steady: Phase,
    pub burst: Phase,
    pub publish_errors: u64,
}

/// `n` sockets subscribed to one topic; `rate` events/s for `secs` s, then `burst` events at
/// once; frames/s = frames delivered ÷ (last arrival − first publish) of each phase.
pub async fn fanout(
    server: &Server,
    n: usize,
    rate: u64,
    secs: u64,
    burst: u64,
) -> anyhow::Result<Fanout> {
    let t = &server.target;
    let kind = t.kind;
    let (socks, failed, connect_s) =
        open_many(t, n, "f", Some(kind.topic()), CLIENT_SRC, CLIENT_SRCS).await;
    println!(
        "    {}: {} sockets subscribed in {connect_s:.1} s ({failed} failed)",
        kind.label(),
        socks.len()
    );
    let conns = socks.len() as u64;
    let steady_events = rate * secs;
    let expected = steady_events + burst;
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = socks
        .into_iter()
        .map(|mut ws| {
            let (stop, got) = (stop.clone(), got.clone());
            tokio::spawn(async move {
                let mut lat: [Vec<u32>; 2] = [vec![], vec![]];
                let mut last = [0u64; 2];
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let text = match tokio::time::timeout(
                        Duration::from_millis(200),
                        client::recv(&mut ws, kind),
                    )
                    .await
                    {
                        Err(_) => continue,
                        Ok(Ok(Some(text))) => text,
                        Ok(_) => break,
                    };
                    let now = now_us();
                    for (p, sent) in client::events(&text) {
                        if seen >= expected {
                            break;
                        }
                        let p = (p as usize).min(BURST);
                        lat[p].push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                        last[p] = last[p].max(now);
                        seen += 1;
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                }
                (lat, last)
            })
        })
        .collect();
    let publisher = Publisher::new(server).await?;
    let errors = Arc::new(AtomicU64::new(0));

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
    settle(&got, conns * steady_events).await;

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
    settle(&got, conns * expected).await;
    stop.store(true, Ordering::Relaxed);

    let mut lat: [Vec<u32>; 2] = [vec![], vec![]];
    let mut last = [0u64; 2];
    for r in readers {
        let (l, a) = r.await?;
        for p in [STEADY, BURST] {
            lat[p].extend_from_slice(&l[p]);
            last[p] = last[p].max(a[p]);
        }
    }
    let mut phase = |p: usize, events: u64, start: u64| {
        let l = &mut lat[p];
        l.sort_unstable();
        Phase {
            events,
            delivered: l.len() as u64,
            secs: last[p].saturating_sub(start).max(1) as f64 / 1e6,
            p50_ms: percentile(l, 0.50),
            p99_ms: percentile(l, 0.99),
        }
    };
    let steady = phase(STEADY, steady_events, steady_start);
    let burst = phase(BURST, burst, burst_start);
    Ok(Fanout {
        conns: conns as usize,
        failed,
        connect_s,
        rate,
        secs,
        steady,
        burst,
        publish_errors: errors.load(Ordering::Relaxed),
    })
}
