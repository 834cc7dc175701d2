//! The event log's and the inbox's size under a steady write load: shows that `user_event`
//! (partitioned by `created_at`, expired partitions dropped whole) and `t_message_real_time`
//! (messages past `NOTIFYD_MESSAGE_RETENTION` removed by the housekeeper) stay flat while
//! messages keep coming.
//!
//! Days are simulated: the node runs with `NOTIFYD_EVENT_PARTITION_WIDTH` = 20 s partitions
//! ("days") and a 60 s retention, so several "days" pass and are dropped within a few minutes.
//! The code path is the production one (the same housekeeper, DDL and locks); only the width and
//! the retention are short. One node runs in this process (single-node mode: in-process broker,
//! its relay and housekeeper), fed by a writer POSTing batches at a fixed rate; every 10 s the
//! bench records the total size (heap + indexes + TOAST) of `user_event` (all partitions),
//! `outbox` and `t_message_real_time`, the event rows, partitions and dead rows.
//!
//! Run: `cargo bench --bench eventlog` (release), or `cargo test --bench eventlog` (debug; sizes do
//! not depend on the build, the write rate is fixed). Env: BENCH_EVENTLOG_SECS (240),
//! BENCH_EVENTLOG_RATE (messages/s, 500), BENCH_EVENTLOG_WIDTH (s, 20), BENCH_EVENTLOG_RETENTION
//! (s, 60), BENCH_EVENTLOG_MESSAGE_RETENTION (s, 60). Needs PostgreSQL (TEST_DATABASE_ADMIN_URL); rewrites only its own section of
//! docs/benchmarks.md.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel_async::AsyncConnection;
use notifyd::config::Settings;
use notifyd::startup::Application;
use serde_json::json;
use support::{env_num, scalar, write_section, BenchDb, KEY, SECRET};

const HEADING: &str = "## Event log size under steady writes";
const USERS: u64 = 1000;

struct Sample {
    t: u64,
    created: u64,
    event_bytes: i64,
    event_rows: i64,
    partitions: i64,
    dead: i64,
    outbox_bytes: i64,
    outbox_rows: i64,
    outbox_dead: i64,
    outbox_vacuums: i64,
    messages_bytes: i64,
}

async fn sample(db: &str, t: u64, created: u64) -> anyhow::Result<Sample> {
    let tree = "(SELECT relid FROM pg_partition_tree('user_event') WHERE isleaf)";
    Ok(Sample {
        t,
        created,
        event_bytes: scalar(
            db,
            &format!("SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::bigint AS v FROM {tree} p"),
        )
        .await?,
        event_rows: scalar(db, "SELECT count(*) AS v FROM user_event").await?,
        partitions: scalar(
            db,
            "SELECT count(*) AS v FROM pg_inherits WHERE inhparent = 'user_event'::regclass",
        )
        .await?
            - 1,
        dead: scalar(
            db,
            &format!("SELECT coalesce(sum(n_dead_tup), 0)::bigint AS v FROM pg_stat_user_tables WHERE relid IN {tree}"),
        )
        .await?,
        outbox_bytes: scalar(db, "SELECT pg_total_relation_size('outbox') AS v").await?,
        outbox_rows: scalar(db, "SELECT count(*) AS v FROM outbox").await?,
        outbox_dead: scalar(
            db,
            "SELECT n_dead_tup AS v FROM pg_stat_user_tables WHERE relname = 'outbox'",
        )
        .await?,
        outbox_vacuums: scalar(
            db,
            "SELECT (vacuum_count + autovacuum_count) AS v FROM pg_stat_user_tables WHERE relname = 'outbox'",
        )
        .await?,
        messages_bytes: scalar(
            db,
            "SELECT pg_total_relation_size('t_message_real_time') AS v",
        )
        .await?,
    })
}

/// POSTs `rate` messages per second, in 10 batches a second, until `stop`; counts them.
async fn writer(base: String, rate: u64, created: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let per_tick = rate.div_ceil(10).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let content = "x".repeat(300);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let messages: Vec<_> = (0..per_tick)
            .map(|i| {
                n += 1;
                json!({"to_user": format!("u{}", (n * 7919 + i) % USERS), "title": format!("m{n}"),
                       "content": content, "type": "bench", "data": {"n": n}})
            })
            .collect();
        let ok = http
            .post(format!("{base}/api/v1/messages"))
            .bearer_auth(KEY)
            .json(&json!({ "messages": messages }))
            .send()
            .await
            .is_ok_and(|r| r.status() == 201);
        if ok {
            created.fetch_add(per_tick, Ordering::Relaxed);
        } else {
            failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn mib(b: i64) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let secs = env_num("BENCH_EVENTLOG_SECS", 240);
    let rate = env_num("BENCH_EVENTLOG_RATE", 500);
    let width = env_num("BENCH_EVENTLOG_WIDTH", 20);
    let retention = env_num("BENCH_EVENTLOG_RETENTION", 60);
    let message_retention = env_num("BENCH_EVENTLOG_MESSAGE_RETENTION", 60);
    let db = BenchDb::create("eventlog").await?;
    let mut s = Settings::new(db.url.clone());
    s.bind = "127.0.0.1:0".into();
    s.jwt_secret = SECRET.into();
    s.service_keys = vec![("bench".into(), KEY.into())];
    s.event_partition_width = Duration::from_secs(width);
    s.event_retention = Duration::from_secs(retention);
    s.message_retention = Duration::from_secs(message_retention);
    s.housekeeping_interval = Duration::from_secs(2);
    let app = Application::build(s, None).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let stopper = app.stopper();
    let server = tokio::spawn(app.run_until_stopped());

    let created = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let w = tokio::spawn(writer(base, rate, created.clone(), failed.clone()));
    // The outbox is insert-then-delete: its size is flat only if (auto)vacuum reclaims the
    // deleted rows. Where the server runs without autovacuum (this machine's does), the bench
    // stands in for it with a plain VACUUM of `outbox` every sample, and says so in the report.
    let autovacuum = scalar(
        &db.url,
        "SELECT (current_setting('autovacuum') = 'on')::int::bigint AS v",
    )
    .await?
        == 1;
    let mut vac = diesel_async::AsyncPgConnection::establish(&db.url).await?;
    let started = Instant::now();
    let mut samples = vec![];
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let t = started.elapsed().as_secs();
        if !autovacuum {
            for table in ["outbox", "t_message_real_time"] {
                diesel_async::RunQueryDsl::execute(
                    diesel::sql_query(format!("VACUUM {table}")),
                    &mut vac,
                )
                .await?;
            }
        }
        let s = sample(&db.url, t, created.load(Ordering::Relaxed)).await?;
        println!(
            "t={:>4}s created={:>7} user_event={:>6} MiB ({} rows, {} partitions, {} dead) outbox={} MiB ({} rows, {} dead, {} vacuums) messages={} MiB",
            s.t, s.created, mib(s.event_bytes), s.event_rows, s.partitions, s.dead,
            mib(s.outbox_bytes), s.outbox_rows, s.outbox_dead, s.outbox_vacuums, mib(s.messages_bytes)
        );
        samples.push(s);
        if t >= secs {
            break;
        }
    }
    w.abort();
    stopper.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    db.drop_db().await?;

    // Steady state: once the first partition has been dropped (after retention + 2 widths, by
    // which time a partition wholly past retention exists), the log holds between retention and
    // retention + one width of events.
    let steady_from = retention + 2 * width;
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.t >= steady_from).collect();
    let (lo, hi) = steady.iter().fold((i64::MAX, 0), |(lo, hi), s| {
        (lo.min(s.event_bytes), hi.max(s.event_bytes))
    });
    let first = steady.first().map(|s| s.event_bytes).unwrap_or(0);
    // Messages: steady once the first ones have expired and a housekeeping round or two ran.
    let msg_steady_from = message_retention + 20;
    let (mlo, mhi) = samples
        .iter()
        .filter(|s| s.t >= msg_steady_from)
        .fold((i64::MAX, 0), |(lo, hi), s| {
            (lo.min(s.messages_bytes), hi.max(s.messages_bytes))
        });
    let last = samples.last();
    let rows: String = samples
        .iter()
        .map(|s| {
            format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} |\n",
                s.t,
                s.created,
                mib(s.event_bytes),
                s.event_rows,
                s.partitions,
                s.dead,
                mib(s.outbox_bytes),
                s.outbox_rows,
                s.outbox_dead,
                s.outbox_vacuums,
                mib(s.messages_bytes)
            )
        })
        .collect();
    let m = support::machine();
    let section = format!(
        "{HEADING}\n\n\
Measured on {date} (commit {commit}) by `cargo test --bench eventlog` (benches/eventlog.rs; \
`cargo bench --bench eventlog` runs the same in release), {cores} cores ({cpu}), {pg}. \
**Days are simulated**: the node runs with `NOTIFYD_EVENT_PARTITION_WIDTH={width}s` partitions \
and `NOTIFYD_EVENT_RETENTION={retention}s`, `NOTIFYD_MESSAGE_RETENTION={message_retention}s`, \
housekeeping every 2 s, so a \"day\" lasts {width} s; \
the partitioning, the housekeeper and its DDL are the production code paths. One node in the \
bench's process (single-node mode, its own relay and housekeeper) receives {rate} messages/s \
(10 batch POSTs a second, {USERS} users, ~300-byte contents); sizes are \
`pg_total_relation_size` (heap, indexes, TOAST) summed over `user_event`'s partitions, of \
`outbox` and of `t_message_real_time`; dead rows are `n_dead_tup` over `user_event`'s \
partitions. {vacuum} {failed} POSTs failed.\n\n\
| t (s) | messages created | `user_event` (MiB) | event rows | partitions | dead event rows | `outbox` (MiB) | `outbox` rows / dead rows / vacuums | `t_message_real_time` (MiB) |\n\
|---|---|---|---|---|---|---|---|---|\n{rows}\n\
From t = {steady_from} s (retention + 2 widths: the first expired partition exists and is \
dropped) `user_event` stays between **{lo} and {hi} MiB** (first steady sample {first} MiB, \
last {last_ev} MiB) while {last_created} messages were written in all: it saw-tooths by one \
partition's worth as each expired \"day\" is dropped, and never holds dead rows (nothing is \
deleted from it). `outbox` holds only unpublished rows; its size is flat once vacuum reuses its pages. \
From t = {msg_steady_from} s (message retention + 20 s) `t_message_real_time` {messages_verdict}\n\n",
        date = chrono::Utc::now().format("%Y-%m-%d"),
        commit = support::git_commit(),
        cores = m.cores,
        cpu = m.cpu,
        pg = m.pg,
        failed = failed.load(Ordering::Relaxed),
        vacuum = if autovacuum {
            "Autovacuum is on (server default settings)."
        } else {
            "**This server runs with `autovacuum = off`**, so the bench runs `VACUUM outbox` \
             and `VACUUM t_message_real_time` itself every 10 s, standing in for autovacuum \
             (nothing vacuums `user_event`: nothing is deleted from it)."
        },
        lo = mib(if lo == i64::MAX { 0 } else { lo }),
        messages_verdict = messages_verdict(mlo, mhi),
        hi = mib(hi),
        first = mib(first),
        last_ev = mib(last.map(|s| s.event_bytes).unwrap_or(0)),
        last_created = last.map(|s| s.created).unwrap_or(0),
    );
    write_section("docs/benchmarks.md", HEADING, &section)?;
    Ok(())
}

/// What the messages' sizes from their steady point on say: flat (within a quarter of the
/// smallest) or not. Written from the figures, so the page never claims a flat line it did not see.
fn messages_verdict(lo: i64, hi: i64) -> String {
    if lo == i64::MAX {
        return "was not sampled long enough to tell (run longer than the message retention + 20 s)."
            .into();
    }
    if hi as f64 <= lo as f64 * 1.25 {
        format!(
            "stays between **{} and {} MiB**: the housekeeper removes messages past retention \
             (user by user, each told by a `message.deleted`) as fast as they arrive, and vacuum \
             reuses their pages.",
            mib(lo),
            mib(hi)
        )
    } else {
        format!(
            "is **not flat**: it went from {} to {} MiB, so the housekeeper's expiry (one \
             transaction per user) did not keep up with this write rate on this machine.",
            mib(lo),
            mib(hi)
        )
    }
}
