//! Web Push throughput (issue 23: "pushes per second to a local endpoint"), beside a ceiling
//! measured in the same run, written to docs/benchmarks.md (section `push`):
//! 1. pushes/s: a release node with Web Push on (`NOTIFYD_PUSH_DELAY=1s`, insecure endpoints
//!    allowed) and `users` users, each with one subscription whose endpoint is on a local push
//!    endpoint of this bench (plain HTTP/1.1 on 127.0.0.1, keep-alive, answers 201, counts the
//!    requests and their body sizes; it does not decrypt: throughput only). One message for
//!    each user, created in batches; pushes/s = pushes received ÷ (last push − first push).
//!    Push delay = the batch's POST sent → its push received (it includes the 1 s delay a live
//!    session has to acknowledge, and the worker's 1 s round when idle);
//! 2. the ceiling: the same endpoint driven directly by a plain HTTP client built as the node's
//!    push client is (reqwest, `pool_max_idle_per_host(4)`, the same headers and body size),
//!    16 requests in flight (what src/push/worker.rs sends at once), no notifyd. The ratio is
//!    what notifyd's claim / encrypt / sign / record costs per push;
//! 3. the create rate of the same batches for users without a subscription and for users with
//!    one (the create statement's `p` CTE joins `push_subscription` and writes a `push_pending`
//!    row per subscription).
//!
//! Rounds alternate the three, so a change in the machine's load weighs on all. Needs a release
//! binary (`cargo build --release`), PostgreSQL and Redis. Run: `cargo bench --bench push`.
//! Sizes (env): BENCH_PUSH_USERS (2000), BENCH_PUSH_ROUNDS (3), BENCH_PUSH_BATCH (100 messages
//! a POST), BENCH_PUSH_CLIENTS (4 POSTs in flight). BENCH_WRITE_DOC=0: print only. Timing
//! never fails the run.

mod support;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use base64ct::{Base64UrlUnpadded, Encoding};
use futures_util::StreamExt;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{env_num, BenchDb, Node, KEY, SECRET};

/// Every request's wait is bounded by this.
const WAIT: Duration = Duration::from_secs(30);
/// Pushes are awaited until all arrived, or none arrived for this long.
const STALL: Duration = Duration::from_secs(15);
/// What src/push/worker.rs sends at once (its `CONCURRENCY`).
const IN_FLIGHT: usize = 16;
/// A push message's body limit (RFC 8030 §7.2: push services must accept at least 4096 bytes;
/// 3,072 is what the contract allows a payload).
const BODY_LIMIT: usize = 3072;
/// The endpoint's bound on one request's head and body (far above a push's).
const MAX_REQUEST: usize = 64 * 1024;
const BEGIN: &str = "<!-- push:begin -->";
const END: &str = "<!-- push:end -->";

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What the local push endpoint saw.
#[derive(Default)]
struct Seen {
    /// (path, arrival µs) of every request.
    arrivals: Vec<(String, u64)>,
    over_limit: u64,
    body_bytes: u64,
    /// The first request's headers that matter for the ceiling's requests.
    first_headers: Option<Vec<(String, String)>>,
    first_body_len: usize,
}

/// The local push endpoint: HTTP/1.1 with keep-alive on 127.0.0.1, 201 to every request.
struct Endpoint {
    base: String,
    seen: Arc<Mutex<Seen>>,
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Endpoint {
    async fn start() -> anyhow::Result<Endpoint> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let count = Arc::new(AtomicU64::new(0));
        let (s, c) = (seen.clone(), count.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, s.clone(), c.clone()));
            }
        });
        Ok(Endpoint {
            base,
            seen,
            count,
            task,
        })
    }

    fn take(&self) -> Seen {
        self.seen
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

/// One connection: requests read one after another (keep-alive) until the client closes.
async fn serve(mut sock: tokio::net::TcpStream, seen: Arc<Mutex<Seen>>, count: Arc<AtomicU64>) {
    let _ = sock.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_REQUEST {
                return;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let path = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("")
            .to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        if len > MAX_REQUEST {
            return;
        }
        while buf.len() < head_end + len {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let at = now_us();
        if let Ok(mut s) = seen.lock() {
            s.arrivals.push((path, at));
            s.body_bytes += len as u64;
            if len > BODY_LIMIT {
                s.over_limit += 1;
            }
            if s.first_headers.is_none() {
                let keep = [
                    "ttl",
                    "urgency",
                    "content-encoding",
                    "content-type",
                    "authorization",
                ];
                s.first_headers = Some(
                    headers
                        .iter()
                        .filter(|(k, _)| keep.contains(&k.as_str()))
                        .cloned()
                        .collect(),
                );
                s.first_body_len = len;
            }
        }
        count.fetch_add(1, Ordering::Relaxed);
        buf.drain(..head_end + len);
        let resp = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        if sock.write_all(resp).await.is_err() {
            return;
        }
    }
}

/// A browser's subscription keys, as `PushSubscription.toJSON()` gives them.
fn browser_keys() -> (String, String) {
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let point = secret.public_key().to_encoded_point(false);
    let auth: [u8; 16] = rand::random();
    (
        Base64UrlUnpadded::encode_string(point.as_bytes()),
        Base64UrlUnpadded::encode_string(&auth),
    )
}

fn token(user: &str) -> anyhow::Result<String> {
    notifyd::auth::jwt::JwtKeys::new(SECRET).mint(user, 3600, &[])
}

/// Subscribes users `{prefix}{i}` with endpoints `{endpoint}/{prefix}{i}`; returns the failures.
async fn subscribe(
    http: &reqwest::Client,
    base: &str,
    endpoint: &str,
    prefix: &str,
    n: usize,
) -> usize {
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let user = format!("{prefix}{i}");
            let (http, url) = (http.clone(), format!("{base}/api/v1/me/push-subscriptions"));
            let endpoint = format!("{endpoint}/{user}");
            async move {
                let (p256dh, auth) = browser_keys();
                let body = json!({"endpoint": endpoint, "expirationTime": null,
                    "keys": {"p256dh": p256dh, "auth": auth}});
                let sent = http.post(url).bearer_auth(token(&user)?).json(&body).send();
                let r = tokio::time::timeout(WAIT, sent)
                    .await
                    .context("timed out")??;
                if r.status() != 201 {
                    bail!(
                        "subscribe: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                }
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let failed: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    if let Some(e) = failed.first() {
        eprintln!("    first failed subscription: {e:#}");
    }
    failed.len()
}

struct Created {
    /// Messages created per second over the whole phase.
    rate: f64,
    errors: u64,
    /// Per user index: when its batch's POST was sent (µs).
    sent_at: Vec<u64>,
}

/// One message to each of `{prefix}0 .. {prefix}{n-1}`, `batch` per POST, `clients` POSTs in flight.
async fn create(
    http: &reqwest::Client,
    base: &str,
    prefix: &str,
    n: usize,
    batch: usize,
    clients: usize,
) -> Created {
    let sent_at = Arc::new(Mutex::new(vec![0u64; n]));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    futures_util::stream::iter((0..n).step_by(batch.max(1)))
        .for_each_concurrent(clients.max(1), |from| {
            let (http, sent_at, errors) = (http.clone(), sent_at.clone(), errors.clone());
            let url = format!("{base}/api/v1/messages");
            let to = (from + batch).min(n);
            let msgs: Vec<_> = (from..to)
                .map(|i| {
                    json!({"to_user": format!("{prefix}{i}"), "title": "bench",
                    "content": "x".repeat(100), "type": "bench"})
                })
                .collect();
            async move {
                let t = now_us();
                let sent = http
                    .post(url)
                    .bearer_auth(KEY)
                    .json(&json!({"messages": msgs}))
                    .send();
                match tokio::time::timeout(WAIT, sent).await {
                    Ok(Ok(r)) if r.status() == 201 => {
                        if let Ok(mut s) = sent_at.lock() {
                            s[from..to].fill(t);
                        }
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
    let secs = start.elapsed().as_secs_f64();
    let sent_at = sent_at.lock().map(|s| s.clone()).unwrap_or_default();
    Created {
        rate: n as f64 / secs,
        errors: errors.load(Ordering::Relaxed),
        sent_at,
    }
}

/// Waits until `count` reaches `target`, or nothing arrived for `STALL`.
async fn settle(count: &AtomicU64, target: u64) {
    let mut last = count.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = count.load(Ordering::Relaxed);
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

/// Pushes per second from first to last arrival.
fn per_sec(arrivals: &[(String, u64)]) -> f64 {
    let first = arrivals.iter().map(|a| a.1).min().unwrap_or(0);
    let last = arrivals.iter().map(|a| a.1).max().unwrap_or(0);
    if arrivals.len() < 2 || last <= first {
        return f64::NAN;
    }
    (arrivals.len() - 1) as f64 / ((last - first) as f64 / 1e6)
}

fn pct(sorted: &[u64], q: f64) -> f64 {
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

struct Round {
    create_without: f64,
    create_with: f64,
    create_errors: u64,
    pushes: usize,
    push_rate: f64,
    push_secs: f64,
    /// created → received, µs, sorted.
    delays: Vec<u64>,
    over_limit: u64,
    mean_body: f64,
    ceiling_rate: f64,
    ceiling_got: usize,
    ceiling_errors: u64,
}

/// The ceiling: `n` requests, `IN_FLIGHT` at once, from a client built as the node's push client
/// (src/push/sender.rs), with the headers and body size the node's first push had.
async fn ceiling(
    ep: &Endpoint,
    n: usize,
    round: usize,
    headers: &[(String, String)],
    body_len: usize,
) -> anyhow::Result<(f64, usize, u64)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(4)
        .user_agent("notifyd")
        .build()?;
    let body = bytes::Bytes::from(vec![0x5au8; body_len]);
    let errors = Arc::new(AtomicU64::new(0));
    futures_util::stream::iter(0..n)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let mut req = client
                .post(format!("{}/c{round}-{i}", ep.base))
                .body(body.clone());
            for (k, v) in headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let errors = errors.clone();
            async move {
                if !matches!(req.send().await, Ok(r) if r.status() == 201) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
    let seen = ep.take();
    Ok((
        per_sec(&seen.arrivals),
        seen.arrivals.len(),
        errors.load(Ordering::Relaxed),
    ))
}

#[allow(clippy::too_many_arguments)]
async fn round(
    http: &reqwest::Client,
    node: &Node,
    ep: &Endpoint,
    r: usize,
    users: usize,
    batch: usize,
    clients: usize,
    sub_prefix: &str,
) -> anyhow::Result<Round> {
    // Users without a subscription: nothing joins, nothing is pushed.
    let without = create(http, &node.base, &format!("q{r}-"), users, batch, clients).await;
    ep.count.store(0, Ordering::Relaxed);
    ep.take();
    let with = create(http, &node.base, sub_prefix, users, batch, clients).await;
    settle(&ep.count, users as u64).await;
    let seen = ep.take();
    let index = |path: &str| -> Option<usize> {
        path.strip_prefix(&format!("/{sub_prefix}"))?.parse().ok()
    };
    let mut delays: Vec<u64> = seen
        .arrivals
        .iter()
        .filter_map(|(p, at)| {
            let sent = *with.sent_at.get(index(p)?)?;
            (sent > 0).then(|| at.saturating_sub(sent))
        })
        .collect();
    delays.sort_unstable();
    let first = seen.arrivals.iter().map(|a| a.1).min().unwrap_or(0);
    let last = seen.arrivals.iter().map(|a| a.1).max().unwrap_or(0);
    let mean_body = seen.body_bytes as f64 / seen.arrivals.len().max(1) as f64;
    let headers = seen.first_headers.clone().unwrap_or_default();
    let body_len = seen.first_body_len.max(1);
    let (ceiling_rate, ceiling_got, ceiling_errors) =
        ceiling(ep, users, r, &headers, body_len).await?;
    Ok(Round {
        create_without: without.rate,
        create_with: with.rate,
        create_errors: without.errors + with.errors,
        pushes: seen.arrivals.len(),
        push_rate: per_sec(&seen.arrivals),
        push_secs: last.saturating_sub(first) as f64 / 1e6,
        delays,
        over_limit: seen.over_limit,
        mean_body,
        ceiling_rate,
        ceiling_got,
        ceiling_errors,
    })
}

struct Run {
    started: String,
    load_before: String,
    load_after: String,
    users: usize,
    subscribe_failed: usize,
    batch: usize,
    clients: usize,
    rounds: Vec<Round>,
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
    let _ = writeln!(s, "## Web Push to a local endpoint\n");
    let _ = writeln!(
        s,
        "Written by `cargo bench --bench push` (benches/push.rs) on {}, commit `{}`: one release \
         node and its ceiling measured in this one run, round by round, so read the ratios. {}, \
         {} cores; {}; {}. Load average {} when the run began, {} when it ended: **the machine \
         was shared with other work during this run** (2 cores for the node, PostgreSQL, Redis, \
         the local push endpoint and this client, with other jobs beside them), so absolute \
         figures are noisy and only the ratios of the same run mean much. Runs are kept short \
         (well under 2 minutes) for that reason.\n",
        r.started,
        support::git_commit(),
        m.cpu,
        m.cores,
        m.pg,
        m.redis,
        r.load_before,
        r.load_after
    );
    let med = |f: &dyn Fn(&Round) -> f64| median(r.rounds.iter().map(f).collect());
    let push = med(&|x| x.push_rate);
    let ceil = med(&|x| x.ceiling_rate);
    let without = med(&|x| x.create_without);
    let with = med(&|x| x.create_with);
    // Each round's two phases ran back to back: the ratio is taken within a round.
    let create_ratio = med(&|x| x.create_with / x.create_without);
    let mut all: Vec<u64> = r
        .rounds
        .iter()
        .flat_map(|x| x.delays.iter().copied())
        .collect();
    all.sort_unstable();
    let _ = writeln!(
        s,
        "| figure (median of {} rounds) | notifyd | reference, same run | ratio |\n|---|---|---|---|",
        r.rounds.len()
    );
    let _ = writeln!(
        s,
        "| pushes/s to a local endpoint, {} subscriptions, first push → last | {push:.0}/s | \
         the same endpoint driven directly, 16 in flight, same body size: {ceil:.0}/s | **{:.3}×** the ceiling |",
        r.users,
        push / ceil
    );
    let _ = writeln!(
        s,
        "| push delay, created → received, p50 / p99 (`NOTIFYD_PUSH_DELAY=1s`; all rounds) | {:.0} / {:.0} ms | the configured delay: 1000 ms | p50 {:.2}× |",
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&all, 0.5) / 1000.0
    );
    let _ = writeln!(
        s,
        "| messages created/s, {}-message batches, {} POSTs in flight, each recipient with one push subscription | {with:.0}/s | the same batches, recipients without one: {without:.0}/s | **{create_ratio:.2}×** (median of the rounds' ratios) |",
        r.batch,
        r.clients
    );
    let _ = writeln!(
        s,
        "\nOne node (release build, relay on, default settings but Web Push on: a generated VAPID \
         key, `NOTIFYD_PUSH_DELAY=1s`, `NOTIFYD_PUSH_ALLOW_INSECURE=1`) and {u} users, each with \
         one push subscription ({failed} failed) whose endpoint is a path on a local push \
         endpoint in the bench process: plain HTTP/1.1 on 127.0.0.1 with keep-alive, 201 to \
         every request, counting requests and body sizes (bodies over 3,072 bytes counted \
         apart); it does not decrypt. Each round: one message to each of {u} users *without* a \
         subscription, then one to each of the {u} subscribed users, the same batches ({b} \
         messages a POST, {c} in flight), nothing connected, so every message is pushed when \
         its 1 s is up; then the pushes are awaited (until all arrived, or none for 15 s). \
         Pushes/s = pushes ÷ (last arrival − first); delay = the batch's POST sent → its push \
         received, so it holds the 1 s delay and the worker's 1 s round when idle. The ceiling, \
         after each round: {u} requests to the same endpoint from a reqwest client built as the \
         node's push client (`pool_max_idle_per_host(4)`, the headers and body size of the \
         node's first push), 16 in flight as the node's worker, no notifyd; what the node adds \
         is the worker's pacing (src/push/worker.rs: claim 64, send them 16 at a time, record \
         each outcome, then the next claim), the encryption (RFC 8291) \
         and VAPID signature (RFC 8292) per push, and a statement per outcome. The create \
         phases are short ({u} messages each, a fraction of a second), so their ratio is noisy; \
         it is the median of the rounds' own ratios.\n",
        u = r.users,
        failed = r.subscribe_failed,
        b = r.batch,
        c = r.clients
    );
    let _ = writeln!(
        s,
        "| round | created/s without → with subscriptions (ratio) | pushes received / expected | over 3,072 B | mean body | first → last push | pushes/s | delay p50 / p99 / max | ceiling pushes/s (received, errors) |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (i, x) in r.rounds.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:.0} → {:.0} ({:.2}×; {} POST errors) | {} / {} | {} | {:.0} B | {:.2} s | **{:.0}/s** | {:.0} / {:.0} / {:.0} ms | **{:.0}/s** ({}, {}) |",
            i + 1,
            x.create_without,
            x.create_with,
            x.create_with / x.create_without,
            x.create_errors,
            x.pushes,
            r.users,
            x.over_limit,
            x.mean_body,
            x.push_secs,
            x.push_rate,
            pct(&x.delays, 0.5),
            pct(&x.delays, 0.99),
            pct(&x.delays, 1.0),
            x.ceiling_rate,
            x.ceiling_got,
            x.ceiling_errors
        );
    }
    let _ = writeln!(s, "{END}");
    s
}

async fn bench() -> anyhow::Result<()> {
    let bin = support::notifyd_bin()?;
    let users = env_num("BENCH_PUSH_USERS", 2000).max(2) as usize;
    let rounds = env_num("BENCH_PUSH_ROUNDS", 3).max(1) as usize;
    let batch = env_num("BENCH_PUSH_BATCH", 100).max(1) as usize;
    let clients = env_num("BENCH_PUSH_CLIENTS", 4).max(1) as usize;
    let mut run = Run {
        started: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        load_before: loadavg(),
        load_after: String::new(),
        users,
        subscribe_failed: 0,
        batch,
        clients,
        rounds: vec![],
    };
    let ep = Endpoint::start().await?;
    let db = BenchDb::create("push").await?;
    let prefix = format!("benchpush{}:", std::process::id());
    let outcome = async {
        let (vapid, _public) = notifyd::push::vapid::generate();
        let env = [
            ("NOTIFYD_VAPID_PRIVATE_KEY", vapid),
            ("NOTIFYD_VAPID_SUBJECT", "mailto:bench@example.com".to_string()),
            ("NOTIFYD_PUSH_DELAY", "1s".to_string()),
            ("NOTIFYD_PUSH_ALLOW_INSECURE", "1".to_string()),
        ];
        let node = Node::start_with(&bin, &db.url, &prefix, true, &["serve"], &env).await?;
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
        println!("subscribing {users} users");
        run.subscribe_failed = subscribe(&http, &node.base, &ep.base, "p", users).await;
        // Warm-up, not counted: the statements prepared, the pool's connections open.
        let _ = create(&http, &node.base, "w", 200, batch, clients).await;
        for r in 0..rounds {
            println!("round {}/{rounds}", r + 1);
            let x = round(&http, &node, &ep, r, users, batch, clients, "p").await?;
            println!(
                "    created/s {:.0} without, {:.0} with subscriptions ({} errors); {} pushes at {:.0}/s, delay p50 {:.0} p99 {:.0} ms; ceiling {:.0}/s ({} received, {} errors)",
                x.create_without,
                x.create_with,
                x.create_errors,
                x.pushes,
                x.push_rate,
                pct(&x.delays, 0.5),
                pct(&x.delays, 0.99),
                x.ceiling_rate,
                x.ceiling_got,
                x.ceiling_errors
            );
            run.rounds.push(x);
        }
        node.stop();
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
        println!("wrote the push section of docs/benchmarks.md");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}
