//! Pruning throughput of expired events, the relay's old schedule against the housekeeper,
//! with a writer appending fresh events at full speed meanwhile (the write path the pruning must
//! keep up with). `user_event` holds BENCH_HOUSEKEEPING_ROWS (1,000,000) events that expired a
//! day ago, with ~500-byte payloads like real `message.created` frames.
//!
//! - old: the relay's former housekeeping, 20 batches of 5,000 (then nothing for 30 s);
//! - new: one round of the housekeeper (`prune_expired`), until no expired event is left.
//!
//! Run: `cargo bench --bench housekeeping` (release), or `cargo test --bench housekeeping`
//! (debug). Needs PostgreSQL (TEST_DATABASE_ADMIN_URL). Prints its figures; the Housekeeping
//! section of docs/benchmarks.md is copied from them by hand.

mod support;

use std::time::Instant;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use notifyd::config::Settings;
use support::{env_num, BenchDb};

/// Appends 1,000-event batches of fresh events until told to stop; returns how many it wrote.
async fn writer(url: String, stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<i64> {
    let mut c = AsyncPgConnection::establish(&url).await?;
    let mut written = 0;
    while !*stop.borrow() {
        diesel::sql_query(format!(
            "INSERT INTO user_event (user_id, seq, payload) \
             SELECT 'new' || (g % 1000), g, \
             jsonb_build_object('type', 'message.created', 'pad', repeat('x', 480)) \
             FROM generate_series({}, {}) g",
            written + 1,
            written + 1000
        ))
        .execute(&mut c)
        .await?;
        written += 1000;
    }
    Ok(written)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n = env_num("BENCH_HOUSEKEEPING_ROWS", 1_000_000) as i64;
    let db = BenchDb::create("housekeeping").await?;
    notifyd::db::migrate(&db.url).await?;
    let mut conn = AsyncPgConnection::establish(&db.url).await?;
    let settings = Settings::new(db.url.clone());
    let cutoff = chrono::Utc::now() - chrono::Duration::days(7);
    let fill = format!(
        "INSERT INTO user_event (user_id, seq, created_at, payload) \
         SELECT 'old' || (g % 1000), g, now() - interval '8 days', \
         jsonb_build_object('type', 'message.created', 'pad', repeat('x', 480)) \
         FROM generate_series(1, {n}) g"
    );
    for (label, old) in [("old", true), ("new", false)] {
        for sql in [
            "TRUNCATE user_event",
            fill.as_str(),
            "VACUUM ANALYZE user_event",
        ] {
            diesel::sql_query(sql).execute(&mut conn).await?;
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let w = tokio::spawn(writer(db.url.clone(), stop_rx));
        let started = Instant::now();
        let pruned = if old {
            let mut pruned = 0;
            for _ in 0..20 {
                pruned += notifyd::store::event_partitions::prune_default(&mut conn, cutoff, 5000)
                    .await?;
            }
            pruned
        } else {
            let (_tx, rx) = tokio::sync::watch::channel(false);
            notifyd::outbox::housekeeping::prune_expired(
                &mut conn,
                &settings,
                &notifyd::outbox::Waker::new(),
                &rx,
            )
            .await?
            .events
        };
        let secs = started.elapsed().as_secs_f64();
        let _ = stop_tx.send(true);
        let written = w.await??;
        let wsecs = started.elapsed().as_secs_f64();
        println!(
            "{label}: pruned {pruned} rows in {secs:.2} s = {:.0} rows/s; concurrent writer {:.0} events/s",
            pruned as f64 / secs,
            written as f64 / wsecs
        );
        if !old && pruned as i64 != n {
            anyhow::bail!("the housekeeper's round pruned {pruned} of {n} expired events");
        }
    }
    println!("old schedule ceiling: 20 x 5,000 rows per 30 s = 3,333 rows/s");
    drop(conn);
    db.drop_db().await?;
    Ok(())
}
