//! What the transaction-pooler discipline (`db::Pooler::Transaction`, docs/operations.md
//! "PgBouncer") costs a request, measured in one run: the create path of a single message
//! (`inbox::create::create_messages` through `db::run`, as `POST /api/v1/messages` runs it) by
//! `BENCH_CLIENTS` (16) concurrent callers for `BENCH_SECS` (5) each, three ways, alternated over
//! two rounds:
//! 1. straight to PostgreSQL, limits as startup `options`, statements cached (the default);
//! 2. straight to PostgreSQL with the pooler discipline (a transaction per call beginning with
//!    `SET LOCAL`, no statement cache): the discipline's own cost;
//! 3. through PgBouncer in transaction mode with that discipline.
//!
//! Needs `BENCH_PGBOUNCER_URL` (`postgres://postgres@127.0.0.1:PORT`: a PgBouncer in
//! `pool_mode = transaction` in front of the PostgreSQL of `TEST_DATABASE_ADMIN_URL`, as
//! scripts/tls-pooler-test.sh starts one). Prints its table; writes no document.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use notifyd::db::{self, Limits, Pooler};
use support::{env_num, BenchDb};

async fn calls_per_second(pool: &db::DbPool, clients: u64, secs: u64) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = vec![];
    for c in 0..clients {
        let (pool, done, failed) = (pool.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let body = format!(r#"{{"to_user": "bench-{c}", "title": "pooler bench"}}"#);
            let req = notifyd::model::input::parse_create(body.as_bytes()).expect("request");
            while Instant::now() < until {
                let r = db::run(&pool, Duration::from_secs(10), async |conn| {
                    notifyd::inbox::create::create_messages(conn, "bench", &req, None).await
                })
                .await;
                match r {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let failed = failed.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} calls failed");
    Ok(done.load(Ordering::Relaxed) as f64 / secs as f64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let pgbouncer = std::env::var("BENCH_PGBOUNCER_URL")
        .context("BENCH_PGBOUNCER_URL: a PgBouncer in transaction mode (see the header)")?;
    let clients = env_num("BENCH_CLIENTS", 16);
    let secs = env_num("BENCH_SECS", 5);
    let db = BenchDb::create("pooler").await?;
    db::migrate(&db.url).await?;
    let limits = Limits {
        statement_timeout: Some(Duration::from_secs(30)),
        lock_timeout: Some(Duration::from_secs(10)),
        idle_in_transaction_timeout: Some(Duration::from_secs(60)),
        idle_session_timeout: None,
    };
    let via = format!("{}/{}", pgbouncer.trim_end_matches('/'), db.name);
    let ways = [
        (
            "PostgreSQL, startup options, cached statements",
            &db.url,
            Pooler::None,
        ),
        (
            "PostgreSQL, transaction discipline",
            &db.url,
            Pooler::Transaction,
        ),
        (
            "PgBouncer (transaction mode), transaction discipline",
            &via,
            Pooler::Transaction,
        ),
    ];
    println!("creates/s of one message, {clients} callers, {secs} s each, 2 rounds");
    let mut results: Vec<Vec<f64>> = vec![vec![]; ways.len()];
    for _round in 0..2 {
        for (i, (_, url, pooler)) in ways.iter().enumerate() {
            let pool = db::pool_with(url, clients as usize, limits.clone(), *pooler)?;
            calls_per_second(&pool, clients, 1).await?; // warm the pool
            results[i].push(calls_per_second(&pool, clients, secs).await?);
        }
    }
    println!("| way | creates/s (round 1, round 2) | vs. the first |");
    println!("|---|---|---|");
    let base: f64 = results[0].iter().sum::<f64>() / 2.0;
    for (i, (label, _, _)) in ways.iter().enumerate() {
        let mean = results[i].iter().sum::<f64>() / 2.0;
        println!(
            "| {label} | {:.0}, {:.0} | {:.2}× |",
            results[i][0],
            results[i][1],
            mean / base
        );
    }
    db.drop_db().await
}
