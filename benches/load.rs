//! Load benchmark: measures, in one run on this machine, and writes `docs/benchmarks.md`:
//! 1. messages created/s by single POSTs at 64 concurrent clients;
//! 2. messages created/s in 100-message batches;
//! 3. the same SQL transaction run by `pgbench -f` (the database's ceiling for it);
//! 4. relay throughput: outbox events/s published into Redis;
//! 5. 5,000 concurrent WebSocket connections on one node: RSS per connection, and the time to
//!    fan one `to_users` POST out to all of them;
//! 6. an announcement to 100,000 known users: rows/s, and the longest stall of single POSTs
//!    issued beside it (`announcement`, its own section; `BENCH_ONLY=announcement` runs only it).
//!
//! Needs a release binary (`cargo build --release`), PostgreSQL and Redis (scripts/services.sh).
//! Run: `cargo bench --bench load` (env BENCH_SECS, BENCH_WS_CONNS to change the sizes).

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use serde_json::json;
use support::{env_num, scalar, BenchDb, Node, KEY, SECRET};

/// Runs `clients` loops for `secs`, each POSTing `body(i)`; returns messages created per second.
async fn post_load(
    base: &str,
    clients: usize,
    secs: u64,
    per_request: u64,
    batch: bool,
) -> anyhow::Result<(f64, u64)> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let created = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = vec![];
    for c in 0..clients {
        let (http, created, errors, url) = (
            http.clone(),
            created.clone(),
            errors.clone(),
            format!("{base}/api/v1/messages"),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let body = if batch {
                    let msgs: Vec<_> = (0..per_request).map(|k| json!({"to_user": format!("b{}", (c as u64 * 7919 + i * 31 + k) % 5000), "title": "bench", "content": "x".repeat(100), "type": "bench"})).collect();
                    json!({ "messages": msgs })
                } else {
                    json!({"to_user": format!("s{}", (c as u64 * 7919 + i) % 5000), "title": "bench", "content": "x".repeat(100), "type": "bench"})
                };
                match http.post(&url).bearer_auth(KEY).json(&body).send().await {
                    Ok(r) if r.status() == 201 => {
                        created.fetch_add(per_request, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok((
        AtomicU64::load(&created, Ordering::Relaxed) as f64 / elapsed,
        AtomicU64::load(&errors, Ordering::Relaxed),
    ))
}

const PGBENCH_SCRIPT: &str = r#"\set u random(1, 5000)
BEGIN;
INSERT INTO user_inbox_state (user_id, seq, unread, unseen) VALUES ('p' || :u, 1, 1, 1)
  ON CONFLICT (user_id) DO UPDATE SET seq = user_inbox_state.seq + 1, unread = user_inbox_state.unread + 1,
  unseen = user_inbox_state.unseen + 1, updated_at = now() RETURNING seq;
INSERT INTO t_message_real_time (id, to_user, seq, title, content, type, send_time, service)
  SELECT gen_random_uuid(), 'p' || :u, seq, 'bench', repeat('x', 100), 'bench', now(), 'pgbench' FROM user_inbox_state WHERE user_id = 'p' || :u;
INSERT INTO user_event (user_id, seq, payload)
  SELECT 'p' || :u, seq, jsonb_build_object('type', 'message.created', 'seq', seq, 'content', repeat('x', 100)) FROM user_inbox_state WHERE user_id = 'p' || :u;
INSERT INTO outbox (user_id, seq) SELECT 'p' || :u, seq FROM user_inbox_state WHERE user_id = 'p' || :u;
-- NOTIFY
COMMIT;
"#;

/// `notify`: also `NOTIFY` inside the transaction, the wake-up design notifyd avoids (it takes a
/// database-wide lock at commit); measured to show what it would cost.
fn pgbench(db: &str, clients: u64, secs: u64, notify: bool) -> anyhow::Result<f64> {
    let script = std::env::temp_dir().join(format!("notifyd-bench-{}.sql", std::process::id()));
    let sql = if notify {
        PGBENCH_SCRIPT.replace("-- NOTIFY", "NOTIFY notifyd_bench;")
    } else {
        PGBENCH_SCRIPT.to_string()
    };
    std::fs::write(&script, sql)?;
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &secs.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(db)
        .output()
        .context("running pgbench (Debian: postgresql-contrib / postgresql-15)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| {
            format!(
                "no tps in pgbench output: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    Ok(tps)
}

async fn ws_conns(
    bin: &str,
    db: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<(u64, u64, f64, f64)> {
    let node = Node::start(bin, db, prefix, true, &["serve"]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = node.rss_kib();
    let keys = notifyd::auth::jwt::JwtKeys::new(SECRET);
    let mut clients = Vec::with_capacity(n);
    let start = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(250) {
        let futs = chunk.iter().map(|i| {
            let url = format!(
                "ws://127.0.0.1:{}/ws?token={}",
                node.port,
                keys.mint(&format!("w{i}"), 3600, &[]).unwrap_or_default()
            );
            async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
                let _hello = ws.next().await;
                Ok::<_, anyhow::Error>(ws)
            }
        });
        for r in futures_util::future::join_all(futs).await {
            clients.push(r?);
        }
    }
    let connect_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = node.rss_kib();
    // Fan one POST out to every connected user.
    let users: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    let http = reqwest::Client::new();
    let start = Instant::now();
    let r = http
        .post(format!("{}/api/v1/messages", node.base))
        .bearer_auth(KEY)
        .json(&json!({"to_users": users, "title": "fan-out"}))
        .send()
        .await?;
    if r.status() != 201 {
        bail!("fan-out POST failed: {}", r.status());
    }
    let waits = clients.iter_mut().map(|ws| async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))))
                    if t.contains("message.created") =>
                {
                    return true
                }
                Ok(Some(Ok(_))) => continue,
                _ => return false,
            }
        }
    });
    let got = futures_util::future::join_all(waits)
        .await
        .into_iter()
        .filter(|ok| *ok)
        .count();
    let fanout_s = start.elapsed().as_secs_f64();
    if got != n {
        bail!("fan-out reached {got} of {n} sockets");
    }
    drop(clients);
    node.stop();
    Ok((before, after, connect_s, fanout_s))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin = std::env::var("NOTIFYD_BIN").unwrap_or_else(|_| "target/release/notifyd".into());
    if !std::path::Path::new(&bin).exists() {
        bail!("{bin} not found: run `cargo build --release` first");
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("announcement") {
        return announcement(&bin).await;
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("ws") {
        return ws_only(&bin).await;
    }
    let secs = env_num("BENCH_SECS", 15);
    let ws_n = env_num("BENCH_WS_CONNS", 5000) as usize;
    let scratch = BenchDb::create("bench").await?;
    let db = scratch.url.clone();
    let prefix = format!("bench{}:", std::process::id());

    println!("1/5 single POSTs, 64 clients, {secs}s");
    let node = Node::start(&bin, &db, &prefix, true, &["serve"]).await?;
    let (single, single_err) = post_load(&node.base, 64, secs, 1, false).await?;
    println!("    {single:.0} messages/s ({single_err} errors)");
    println!("2/5 100-message batches, 8 clients, {secs}s");
    let (batched, batch_err) = post_load(&node.base, 8, secs, 100, true).await?;
    println!("    {batched:.0} messages/s ({batch_err} errors)");
    node.stop();

    println!("3/5 pgbench, the same transaction, 64 clients, {secs}s");
    let tps = pgbench(&db, 64, secs, false)?;
    println!("    {tps:.0} transactions/s");
    let tps_notify = pgbench(&db, 64, secs, true)?;
    println!("    with NOTIFY inside the transaction: {tps_notify:.0} transactions/s");

    println!("4/5 relay throughput");
    let mut conn = AsyncPgConnection::establish(&db).await?;
    diesel::sql_query("DELETE FROM outbox")
        .execute(&mut conn)
        .await?;
    let node = Node::start(&bin, &db, &prefix, false, &["serve"]).await?;
    let http = reqwest::Client::new();
    let relay_n = 50_000u64;
    for b in 0..(relay_n / 1000) {
        let msgs: Vec<_> = (0..1000).map(|k| json!({"to_user": format!("r{}", (b * 1000 + k) % 2000), "title": "relay", "content": "x".repeat(100)})).collect();
        let r = http
            .post(format!("{}/api/v1/messages", node.base))
            .bearer_auth(KEY)
            .json(&json!({ "messages": msgs }))
            .send()
            .await?;
        if r.status() != 201 {
            bail!("seeding the outbox failed: {}", r.status());
        }
    }
    node.stop();
    let backlog = scalar(&db, "SELECT count(*)::bigint AS v FROM outbox").await?;
    let start = Instant::now();
    let relay = Node::start(&bin, &db, &prefix, true, &["relay"]).await?;
    loop {
        if scalar(&db, "SELECT count(*)::bigint AS v FROM outbox").await? == 0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("relay did not drain the outbox in 300 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let relay_s = start.elapsed().as_secs_f64();
    relay.stop();
    let relay_rate = backlog as f64 / relay_s;
    println!("    {backlog} events in {relay_s:.2}s = {relay_rate:.0} events/s");

    println!("5/5 {ws_n} WebSocket connections on one node");
    let (before, after, connect_s, fanout_s) = ws_conns(&bin, &db, &prefix, ws_n).await?;
    let per_conn = (after.saturating_sub(before)) as f64 * 1024.0 / ws_n as f64;
    println!("    RSS {before} KiB -> {after} KiB: {per_conn:.0} bytes per connection; connect {connect_s:.1}s; fan-out {fanout_s:.2}s");

    scratch.drop_db().await?;

    let support::Machine {
        cpu,
        cores,
        mem,
        pg,
        redis,
    } = support::machine();
    let doc = format!(
        "# Benchmarks\n\n\
Written by `cargo bench --bench load` (benches/load.rs) on {date}. One run, one machine; every figure\n\
below was measured in the same run, with the server, PostgreSQL, Redis and the load generator\n\
sharing the same {cores} cores, so read the ratios between figures rather than the absolutes.\n\n\
Machine: {cpu}, {cores} cores, {mem}. {pg}; {redis}. Release build, relay inside `serve`,\n\
Redis pub/sub, database pool 32, default PostgreSQL settings.\n\n\
## Creating messages\n\n\
| what | figure |\n|---|---|\n\
| single-message POSTs, 64 concurrent clients, {secs} s | **{single:.0} messages/s** ({single_err} non-201) |\n\
| 100-message batch POSTs, 8 concurrent clients, {secs} s | **{batched:.0} messages/s** ({batch_err} non-201) |\n\
| the same transaction (counter upsert + message + event + outbox rows) by `pgbench -f`, 64 clients | **{tps:.0} transactions/s** (the database's ceiling for one-message creates) |\n\
| the same, plus `NOTIFY` inside the transaction (the wake-up notifyd avoids) | **{tps_notify:.0} transactions/s** ({notify_pct:.0}% of the ceiling) |\n\n\
Single POSTs reach {ratio:.0}% of the pgbench ceiling: the remainder is HTTP, JSON, validation and\n\
the relay publishing concurrently on the same cores. Batches amortise the per-transaction cost\n\
(one commit, one fsync, one counter upsert per user per batch).\n\n\
## Relay\n\n\
| what | figure |\n|---|---|\n\
| {backlog} committed outbox events published to Redis by `notifyd relay` (batches of 500, one pipeline each) | **{relay_rate:.0} events/s** ({relay_s:.2} s) |\n\n\
## WebSocket connections\n\n\
| what | figure |\n|---|---|\n\
| connections held by one node | {ws_n} |\n\
| server RSS before / after | {before} KiB / {after} KiB |\n\
| **RSS per connection** | **{per_conn:.0} bytes** (≈ {per_conn_kib:.1} KiB) |\n\
| time to open all (250 at a time, each waiting for `hello`) | {connect_s:.1} s |\n\
| one `to_users` POST to all {ws_n} users → every socket has its `message.created` | {fanout_s:.2} s |\n\n\
A process here may hold at most ~19,900 sockets (hard open-files limit 20,000), so one node's\n\
capacity beyond that is an extrapolation from the per-connection figure, not a measurement:\n\
at {per_conn_kib:.1} KiB each, 100,000 connections would need ≈ {extrap:.0} MiB of RSS across processes.\n",
        date = chrono::Utc::now().format("%Y-%m-%d"),
        ratio = single / tps * 100.0,
        notify_pct = tps_notify / tps * 100.0,
        per_conn_kib = per_conn / 1024.0,
        extrap = per_conn * 100_000.0 / 1024.0 / 1024.0,
    );
    std::fs::write("docs/benchmarks.md", doc)?;
    println!("wrote docs/benchmarks.md");
    announcement(&bin).await
}

// ---------------------------------------------------------------------------------------------
// 6. An announcement to 100,000 known users (POST /api/v1/broadcasts).

/// Known users of the announcement scenario.
const ANNOUNCE_USERS: i64 = 100_000;
/// Batch sizes measured; the default (`NOTIFYD_BROADCAST_BATCH`) is the headline.
const ANNOUNCE_BATCHES: [i64; 3] = [500, 2000, 10_000];
/// One probe POST every this long, each on its own task (a stalled one holds up no other).
const PROBE_EVERY: Duration = Duration::from_millis(20);

/// Latencies of probe POSTs, in ms.
struct Probe {
    sent: usize,
    failed: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

struct AnnounceRun {
    batch: i64,
    rows: i64,
    secs: f64,
    quiet: Probe,
    busy: Probe,
}

/// Single-message POSTs to known users every `PROBE_EVERY` until `stop` turns true.
async fn probe(base: &str, stop: tokio::sync::watch::Receiver<bool>) -> Probe {
    let http = reqwest::Client::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let mut tasks = vec![];
    let mut i: i64 = 0;
    while !*stop.borrow() {
        tick.tick().await;
        i += 1;
        let (http, url) = (http.clone(), format!("{base}/api/v1/messages"));
        // Spread over the whole user range, so some probes hit users a batch is holding.
        let user = format!("a{:06}", (i * 7919) % ANNOUNCE_USERS);
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let r = http
                .post(url)
                .bearer_auth(KEY)
                .json(&json!({"to_user": user, "title": "probe", "content": "x".repeat(100)}))
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            let ok = matches!(r, Ok(ref r) if r.status() == 201);
            (ok, start.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut ms = vec![];
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok((true, l)) => ms.push(l),
            _ => failed += 1,
        }
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        ms.get(((ms.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Probe {
        sent: ms.len() + failed,
        failed,
        p50: at(0.5),
        p99: at(0.99),
        max: ms.last().copied().unwrap_or(0.0),
    }
}

/// Probes for `d` with nothing else running.
async fn probe_for(base: &str, d: Duration) -> Probe {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(d).await;
        let _ = tx.send(true);
    });
    let p = probe(base, rx).await;
    let _ = stopper.await;
    p
}

/// One broadcast to every known user on a node with batches of `batch`, probed meanwhile.
async fn announce_once(
    bin: &str,
    db: &str,
    prefix: &str,
    batch: i64,
) -> anyhow::Result<AnnounceRun> {
    // The child inherits the environment: this is how the node gets its batch size.
    std::env::set_var("NOTIFYD_BROADCAST_BATCH", batch.to_string());
    let node = Node::start(bin, db, prefix, true, &["serve"]).await?;
    let quiet = probe_for(&node.base, Duration::from_secs(8)).await;
    // Let the relay publish the probes' events before the broadcast starts.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (tx, rx) = tokio::sync::watch::channel(false);
    let base = node.base.clone();
    let prober = tokio::spawn(async move { probe(&base, rx).await });
    let http = reqwest::Client::new();
    let start = Instant::now();
    let r = http
        .post(format!("{}/api/v1/broadcasts", node.base))
        .bearer_auth(KEY)
        .json(&json!({"title": "Announcement", "content": "x".repeat(100), "type": "system"}))
        .send()
        .await?;
    if r.status() != 202 {
        bail!("broadcast not accepted: {}", r.status());
    }
    let id = r.json::<serde_json::Value>().await?["id"]
        .as_str()
        .context("broadcast id")?
        .to_string();
    let progress = loop {
        let p: serde_json::Value = http
            .get(format!("{}/api/v1/broadcasts/{id}", node.base))
            .bearer_auth(KEY)
            .send()
            .await?
            .json()
            .await?;
        if p["status"] == "done" {
            break p;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("the broadcast did not finish in 600 s: {p}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let secs = start.elapsed().as_secs_f64();
    let _ = tx.send(true);
    let busy = prober.await?;
    node.stop();
    let rows = progress["created"].as_i64().unwrap_or(0);
    if rows != ANNOUNCE_USERS {
        bail!("the broadcast created {rows} rows, not {ANNOUNCE_USERS}");
    }
    Ok(AnnounceRun {
        batch,
        rows,
        secs,
        quiet,
        busy,
    })
}

/// A fresh database holding `ANNOUNCE_USERS` known users (counter rows; how they got their inbox
/// does not matter here). Each batch size gets its own, so no run sees a bigger table.
async fn announce_db() -> anyhow::Result<BenchDb> {
    let db = BenchDb::create("bench_announce").await?;
    notifyd::db::migrate(&db.url).await?;
    let mut conn = AsyncPgConnection::establish(&db.url).await?;
    diesel::sql_query(format!(
        "INSERT INTO user_inbox_state (user_id) \
         SELECT 'a' || lpad(g::text, 6, '0') FROM generate_series(0, {}) g",
        ANNOUNCE_USERS - 1
    ))
    .execute(&mut conn)
    .await?;
    diesel::sql_query("VACUUM ANALYZE user_inbox_state")
        .execute(&mut conn)
        .await?;
    Ok(db)
}

/// Scenario 6: writes its own section of docs/benchmarks.md (replacing an earlier one).
async fn announcement(bin: &str) -> anyhow::Result<()> {
    let prefix = format!("bench{}a:", std::process::id());
    let mut runs = vec![];
    for batch in ANNOUNCE_BATCHES {
        println!("6/6 announcement to {ANNOUNCE_USERS} known users, batches of {batch}");
        let db = announce_db().await?;
        let r = announce_once(bin, &db.url, &prefix, batch).await?;
        db.drop_db().await?;
        println!(
            "    {:.0} rows/s ({:.1} s); probe max {:.0} ms vs {:.0} ms quiet, p99 {:.0} vs {:.0} ms",
            r.rows as f64 / r.secs,
            r.secs,
            r.busy.max,
            r.quiet.max,
            r.busy.p99,
            r.quiet.p99
        );
        runs.push(r);
    }
    let mut rows = String::new();
    for r in &runs {
        let default = if r.batch == notifyd::config::Settings::new("").broadcast_batch {
            " (default)"
        } else {
            ""
        };
        rows.push_str(&format!(
            "| {batch}{default} | **{rate:.0} rows/s** ({secs:.1} s) | {qp50:.1} / {qp99:.1} / {qmax:.1} ms ({qn}) | {bp50:.1} / {bp99:.1} / **{bmax:.1} ms** ({bn}, {bf} failed) | **{ratio:.1}×** (p99 {pratio:.1}×) |\n",
            batch = r.batch,
            rate = r.rows as f64 / r.secs,
            secs = r.secs,
            qp50 = r.quiet.p50,
            qp99 = r.quiet.p99,
            qmax = r.quiet.max,
            qn = r.quiet.sent,
            bp50 = r.busy.p50,
            bp99 = r.busy.p99,
            bmax = r.busy.max,
            bn = r.busy.sent,
            bf = r.busy.failed + r.quiet.failed,
            ratio = r.busy.max / r.quiet.max.max(0.001),
            pratio = r.busy.p99 / r.quiet.p99.max(0.001),
        ));
    }
    let section = format!(
        "## Announcements\n\n\
Measured on {date} by `BENCH_ONLY=announcement cargo bench --bench load` (scenario 6 of\n\
benches/load.rs), same machine and build as above: one release node (relay inside, pool 32),\n\
PostgreSQL and Redis on the same 2 cores. The database holds {users} known users (counter rows);\n\
`POST /api/v1/broadcasts` sends them one announcement, and rows/s is {users} over the time from\n\
the POST to `GET` showing `done` (every row, counter, event and outbox entry committed; the relay\n\
publishes them meanwhile). Beside it, a single-message `POST /api/v1/messages` to a known user\n\
(spread over all of them, so some wait for a batch's counter rows) is issued every 20 ms, each on\n\
its own task; its latency is compared with the same probe on the same node for 8 s just before,\n\
with nothing else running. Longest stall = the slowest probe.\n\n\
| batch (`NOTIFYD_BROADCAST_BATCH`) | announcement | probe p50 / p99 / max, quiet | probe p50 / p99 / max, during the announcement | longest stall vs quiet |\n\
|---|---|---|---|---|\n\
{rows}\n\
A batch holds its recipients' counter rows until it commits, so a write to one of those users\n\
waits at most one batch: larger batches amortise commits but lengthen that wait. In this run the\n\
rate ranged {rate_lo:.0}–{rate_hi:.0} rows/s across batch sizes and the longest stall\n\
{stall_lo:.0}–{stall_hi:.0} ms. Each size ran once, on a fresh database: rate differences of a few\n\
tens of percent are within this machine's run-to-run noise, the growth of the stall with the\n\
batch is not.\n",
        date = chrono::Utc::now().format("%Y-%m-%d"),
        users = ANNOUNCE_USERS,
        rate_lo = runs.iter().map(|r| r.rows as f64 / r.secs).fold(f64::MAX, f64::min),
        rate_hi = runs.iter().map(|r| r.rows as f64 / r.secs).fold(0.0, f64::max),
        stall_lo = runs.iter().map(|r| r.busy.max).fold(f64::MAX, f64::min),
        stall_hi = runs.iter().map(|r| r.busy.max).fold(0.0, f64::max),
    );
    write_section("docs/benchmarks.md", "## Announcements", &section)?;
    println!("wrote the Announcements section of docs/benchmarks.md");
    Ok(())
}

/// Replaces the section starting with `heading` (up to the next `## `) in `path`, or appends it.
fn write_section(path: &str, heading: &str, section: &str) -> anyhow::Result<()> {
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let out = match doc.find(heading) {
        Some(start) => {
            let rest = &doc[start + heading.len()..];
            let end = rest
                .find("\n## ")
                .map(|i| start + heading.len() + i + 1)
                .unwrap_or(doc.len());
            format!("{}{}{}", &doc[..start], section, &doc[end..])
        }
        None => format!("{}\n\n{}", doc.trim_end_matches('\n'), section),
    };
    std::fs::write(path, out)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5 on its own (`BENCH_ONLY=ws`): memory per idle WebSocket, and memory given back after a burst.

/// Bytes of topic data each socket receives in the burst (7 events of 16,000 bytes ≈ 100 KiB).
const BURST_EVENTS: usize = 7;
const BURST_EVENT_BYTES: usize = 16_000;

/// What the memory scenario measured (RSS in KiB).
struct WsMem {
    n: usize,
    base: u64,
    idle: u64,
    burst_peak: u64,
    after_burst: u64,
    after_close: u64,
    connect_s: f64,
    burst_s: f64,
}

type Client = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// One client socket from 127.0.0.(2 + i % 16): a single source address has ~28,000 ports.
async fn ws_client(port: u16, i: usize, token: String) -> anyhow::Result<Client> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(std::net::SocketAddr::from((
        [127, 0, 0, 2 + (i % 16) as u8],
        0,
    )))?;
    let tcp = sock
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await?;
    let url = format!("ws://127.0.0.1:{port}/ws?token={token}");
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
    Ok(ws)
}

/// Reads frames until one contains `needle`, `count` times; false on timeout or close.
async fn read_until(ws: &mut Client, needle: &str, count: usize, limit: Duration) -> bool {
    use futures_util::SinkExt;
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + limit;
    while seen < count {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                if t.contains(needle) {
                    seen += 1;
                }
            }
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(p)))) => {
                let _ = ws
                    .send(tokio_tungstenite::tungstenite::Message::Pong(p))
                    .await;
            }
            Ok(Some(Ok(_))) => {}
            _ => return false,
        }
    }
    true
}

async fn ws_memory(bin: &str, db: &str, prefix: &str, n: usize) -> anyhow::Result<WsMem> {
    use futures_util::SinkExt;
    let node = Node::start(bin, db, prefix, true, &["serve"]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = node.rss_kib();
    let keys = notifyd::auth::jwt::JwtKeys::new(SECRET);
    let topics = vec!["bench:*".to_string()];
    let mut clients = Vec::with_capacity(n);
    let start = Instant::now();
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(250) {
        let futs = chunk.iter().map(|&i| {
            let token = keys
                .mint(&format!("m{i}"), 3600, &topics)
                .unwrap_or_default();
            async move {
                let mut ws = ws_client(node.port, i, token).await?;
                if !read_until(&mut ws, "\"hello\"", 1, Duration::from_secs(30)).await {
                    bail!("socket {i}: no hello");
                }
                Ok::<_, anyhow::Error>(ws)
            }
        });
        for r in futures_util::future::join_all(futs).await {
            clients.push(r?);
        }
    }
    let connect_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = node.rss_kib();
    println!(
        "    idle: RSS {base} KiB -> {idle} KiB: {:.0} bytes per socket",
        (idle.saturating_sub(base)) as f64 * 1024.0 / n as f64
    );

    // Every socket subscribes to one topic, then gets a burst of ~100 KiB on it.
    let subs = clients.iter_mut().map(|ws| async move {
        let sub = r#"{"type":"subscribe","topics":["bench:burst"],"ref":"s"}"#;
        ws.send(tokio_tungstenite::tungstenite::Message::Text(sub.into()))
            .await
            .ok()?;
        read_until(ws, "\"ack\"", 1, Duration::from_secs(60))
            .await
            .then_some(())
    });
    let subscribed = futures_util::future::join_all(subs)
        .await
        .into_iter()
        .flatten()
        .count();
    if subscribed != n {
        bail!("{subscribed} of {n} sockets subscribed");
    }
    let pid = node.child.id();
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while std::sync::atomic::AtomicBool::load(&sampling, Ordering::Relaxed) {
                peak.fetch_max(support::rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let start = Instant::now();
    let readers = clients
        .iter_mut()
        .map(|ws| read_until(ws, "topic.event", BURST_EVENTS, Duration::from_secs(300)));
    let reading = futures_util::future::join_all(readers);
    let http = reqwest::Client::new();
    let posting = async {
        for k in 0..BURST_EVENTS {
            let data = json!({ "k": k, "pad": "x".repeat(BURST_EVENT_BYTES) });
            let r = http
                .post(format!("{}/api/v1/topics/bench:burst/events", node.base))
                .bearer_auth(KEY)
                .json(&json!({ "data": data }))
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("burst POST failed: {}", r.status());
            }
        }
        Ok(())
    };
    let (got, posted) = tokio::join!(reading, posting);
    posted?;
    let got = got.into_iter().filter(|ok| *ok).count();
    let burst_s = start.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    if got != n {
        bail!("the burst reached {got} of {n} sockets");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_burst = node.rss_kib();
    let burst_peak = AtomicU64::load(&peak, Ordering::Relaxed).max(after_burst);
    println!("    burst {burst_s:.1}s: peak {burst_peak} KiB, 5 s later {after_burst} KiB");
    drop(clients);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_close = node.rss_kib();
    println!("    all closed, 5 s later: {after_close} KiB");
    node.stop();
    Ok(WsMem {
        n,
        base,
        idle,
        burst_peak,
        after_burst,
        after_close,
        connect_s,
        burst_s,
    })
}

/// The allocator the measured binary was built with (`BENCH_ALLOCATOR` names it; the binary
/// itself cannot be asked).
fn allocator_label() -> String {
    std::env::var("BENCH_ALLOCATOR").unwrap_or_else(|_| "default build".into())
}

/// `BENCH_ONLY=ws`: runs the memory scenario for each size in BENCH_WS_CONNS (comma-separated,
/// default 5000) and writes its rows under the run's label (BENCH_WS_LABEL) into the
/// "WebSocket memory" block of docs/benchmarks.md, leaving everything else as it is.
async fn ws_only(bin: &str) -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("BENCH_WS_CONNS")
        .unwrap_or_else(|_| "5000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let label = std::env::var("BENCH_WS_LABEL").unwrap_or_else(|_| support::git_commit());
    let alloc = allocator_label();
    let mut rows = String::new();
    for n in sizes {
        let scratch = BenchDb::create("benchws").await?;
        let prefix = format!("benchws{}:", std::process::id());
        println!("WebSocket memory, {n} sockets ({label}, {alloc})");
        let m = ws_memory(bin, &scratch.url, &prefix, n).await;
        scratch.drop_db().await?;
        let m = m?;
        let per = |kib: u64| (kib.saturating_sub(m.base)) as f64 * 1024.0 / m.n as f64 / 1024.0;
        rows.push_str(&format!(
            "| {label} | {alloc} | {n} | {base} | **{idle:.1} KiB** | {peak:.0} MiB | **{after:.0} MiB** ({after_per:.1} KiB/socket) | {closed:.0} MiB | {connect:.1} s / {burst:.1} s |\n",
            n = m.n,
            base = m.base,
            idle = per(m.idle),
            peak = m.burst_peak as f64 / 1024.0,
            after = m.after_burst as f64 / 1024.0,
            after_per = per(m.after_burst),
            closed = m.after_close as f64 / 1024.0,
            connect = m.connect_s,
            burst = m.burst_s,
        ));
    }
    write_ws_rows("docs/benchmarks.md", &label, &rows)?;
    println!("wrote {label:?} into docs/benchmarks.md");
    Ok(())
}

const WS_BEGIN: &str = "<!-- ws-memory:begin -->";
const WS_END: &str = "<!-- ws-memory:end -->";

/// Replaces the rows of `label` in the WebSocket memory table (or adds them), keeping the other
/// labels' rows and everything outside the block.
fn write_ws_rows(path: &str, label: &str, rows: &str) -> anyhow::Result<()> {
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let (head, body, tail) = match (doc.find(WS_BEGIN), doc.find(WS_END)) {
        (Some(b), Some(e)) if b < e => (
            doc[..b].to_string(),
            doc[b + WS_BEGIN.len()..e].to_string(),
            doc[e + WS_END.len()..].to_string(),
        ),
        _ => (
            format!("{}\n", doc.trim_end()),
            String::new(),
            "\n".to_string(),
        ),
    };
    let prefix = format!("| {label} |");
    let mut kept: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| run ") && !l.starts_with(&prefix))
        .collect();
    kept.extend(rows.lines());
    let block = format!(
        "{WS_BEGIN}\n### WebSocket memory (`BENCH_ONLY=ws cargo bench --bench load`)\n\n\
Each row is one run of `BENCH_ONLY=ws BENCH_WS_CONNS=<n> BENCH_WS_LABEL=<label> cargo bench --bench load`\n\
(benches/load.rs, `ws_memory`): one node, `<n>` authenticated sockets (one user each, so one user\n\
actor each) from 127.0.0.2–17, idle 3 s; then every socket subscribes to one topic and receives\n\
{BURST_EVENTS} topic events of {BURST_EVENT_BYTES} bytes of data (≈ 110 KiB per socket) as fast as the node sends them, and\n\
reads them all; RSS is read 5 s after the last frame arrived, and again 5 s after every client\n\
closed. Per-socket figures are (RSS − RSS before the first connection) / sockets. Rows of one\n\
label were measured back to back; compare rows, not absolutes (2 shared cores).\n\n\
| run | allocator | sockets | RSS before (KiB) | idle RSS per socket | burst peak | 5 s after the burst | 5 s after all closed | connect / burst |\n\
|---|---|---|---|---|---|---|---|---|\n{}\n{WS_END}",
        kept.join("\n")
    );
    std::fs::write(path, format!("{head}{block}{tail}"))?;
    Ok(())
}
