//! Batched catch-up reads for joining sessions. When a node dies, thousands of its clients
//! resume on another node within a second, each with `since`: one read per user would queue
//! thousands of transactions on the pool (and starve the REST callers). Instead every actor
//! hands its join's read (counters, and the events after `since`) to this node's batcher, which
//! reads many users' in ONE statement (`events::resume_many`: one snapshot, so each user's
//! counters and events agree, as in `changes::since`).
//!
//! The batcher reads on connections of its own (`BATCH_CONCURRENCY` of them, not the node's
//! pool): with services keeping the pool busy (64 POSTs in flight, closed loop), every batch
//! used to wait in the pool's queue behind the POSTs, and a 15,000-client storm took one such
//! wait per batch, ~80 of them in a row (issue 22 item 8, docs/decisions/0020). Its own
//! connections also leave the pool to the REST callers during a storm.
//!
//! A batch is what has queued by the time one of its `BATCH_CONCURRENCY` query slots is free
//! (at most `BATCH_USERS`). A lone resume (no statement running) is read at once. While another
//! statement runs, a batch also waits for more joins until `LINGER` after its first one was
//! queued: a statement for 5 users costs PostgreSQL ~70 µs a user, one for 50 ~27 µs (each
//! statement also costs a round trip and a task on this node), and a storm's joins arrive a few
//! a millisecond, so without the wait its batches stayed at ~5 users. The queue is bounded
//! (`QUEUE`): a join that finds it full is refused with 1013 and a jittered `retry_after`
//! (protocol::busy_reason) instead of waiting into a timeout.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::db::DbPool;
use crate::error::ApiError;
use crate::inbox::changes::{self, Changes, MAX_REPLAY};
use crate::store::events::{self, ResumeRow, StoredFrame};
use crate::store::inbox_state::Counters;

/// Joins waiting for their read on this node; more are refused with `retry_after`. As many as
/// the handshakes that may wait for a turn (`NOTIFYD_WS_JOIN_QUEUE`'s default): a turn ends
/// once its read is queued here, so a storm's joins pass from that queue into this one.
pub const QUEUE: usize = 16384;
/// Requests read by one statement. With at most `MAX_REPLAY` events each, this also bounds
/// what one batch holds in memory.
pub const BATCH_USERS: usize = 256;
/// Batch statements running at once, each on one of the batcher's own connections (made when
/// first needed, so a node nobody resumes on opens none).
pub const BATCH_CONCURRENCY: usize = 2;
/// How long a batch may wait for more joins after its first was queued, when another statement
/// is running (under load; a lone join never waits). A storm's joins queue a few a millisecond,
/// so this gathers tens of users per statement, and adds at most this much to a join's wait.
/// 25 ms, not 10: a storm alone took ~9% less CPU in all (fewer, larger statements: PostgreSQL
/// reads a user for less in a large batch), and 50 ms bought nothing more (decision 0020).
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(25);

pub type Reply = Result<Changes, ApiError>;

struct Request {
    user: String,
    /// `None`: counters only (a fresh session, nothing to replay).
    since: Option<i64>,
    /// The inbox epoch `since` belongs to, if the client said.
    epoch: Option<i64>,
    reply: oneshot::Sender<Reply>,
    /// When it was queued (`notifyd_catch_up_wait_seconds`).
    queued: std::time::Instant,
}

/// The queue is full: retry later.
#[derive(Debug)]
pub struct Busy;

/// The node's batcher, started on first use on the main runtime.
pub struct CatchUp {
    tx: OnceLock<mpsc::Sender<Request>>,
    runtime: tokio::runtime::Handle,
    /// The batcher's own connections (`BATCH_CONCURRENCY`).
    pool: DbPool,
    /// Each statement's bound (`NOTIFYD_DB_REQUEST_TIMEOUT`).
    limit: std::time::Duration,
}

impl CatchUp {
    /// `pool`: the batcher's own, of `BATCH_CONCURRENCY` connections; `limit`: each
    /// statement's bound.
    pub fn new(runtime: tokio::runtime::Handle, pool: DbPool, limit: std::time::Duration) -> Self {
        CatchUp {
            tx: OnceLock::new(),
            runtime,
            pool,
            limit,
        }
    }

    /// Queues `user`'s read; the receiver gets what `changes::since` (or the counters, for
    /// `since: None`) would have returned.
    pub fn read(
        &self,
        user: &str,
        since: Option<i64>,
        epoch: Option<i64>,
    ) -> Result<oneshot::Receiver<Reply>, Busy> {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            self.runtime.spawn(run(self.limit, self.pool.clone(), rx));
            tx
        });
        let (reply, rx) = oneshot::channel();
        let req = Request {
            user: user.to_string(),
            since,
            epoch,
            reply,
            queued: std::time::Instant::now(),
        };
        match tx.try_send(req) {
            Ok(()) => Ok(rx),
            Err(_) => Err(Busy),
        }
    }
}

/// The batcher: reads on `pool`, each statement bounded by `limit` (`NOTIFYD_DB_REQUEST_TIMEOUT`).
async fn run(limit: std::time::Duration, pool: DbPool, mut rx: mpsc::Receiver<Request>) {
    let slots = Arc::new(Semaphore::new(BATCH_CONCURRENCY));
    while let Some(first) = rx.recv().await {
        // Waiting for a slot is what lets a batch grow: requests queue meanwhile.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Another statement still running (our slot is not the only one taken) means joins
        // are arriving faster than single reads: gather more, until `LINGER` after the first.
        let busy = slots.available_permits() + 1 < BATCH_CONCURRENCY;
        let until = busy.then(|| tokio::time::Instant::from_std(first.queued + LINGER));
        let mut batch = gather(first, &mut rx, BATCH_USERS, until).await;
        // A session that left while queued needs no read.
        batch.retain(|r| !r.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            let _slot = slot;
            read_batch(&pool, limit, batch).await;
        });
    }
}

/// `first` and what else `rx` holds, up to `limit` in all; with `until`, also what arrives
/// before that instant.
async fn gather<T>(
    first: T,
    rx: &mut mpsc::Receiver<T>,
    limit: usize,
    until: Option<tokio::time::Instant>,
) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < limit {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => match until {
                None => break,
                Some(until) => match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(r)) => batch.push(r),
                    Ok(None) | Err(_) => break,
                },
            },
        }
    }
    batch
}

async fn read_batch(pool: &DbPool, limit: std::time::Duration, batch: Vec<Request>) {
    let users: Vec<String> = batch.iter().map(|r| r.user.clone()).collect();
    let since: Vec<i64> = batch.iter().map(|r| r.since.unwrap_or(-1)).collect();
    metrics::counter!("notifyd_catch_up_queries_total").increment(1);
    metrics::histogram!("notifyd_catch_up_batch_users").record(batch.len() as f64);
    let started = std::time::Instant::now();
    let rows = crate::db::run(pool, limit, async |conn| {
        Ok(events::resume_many(conn, &users, &since, MAX_REPLAY).await?)
    })
    .await;
    // Tells a storm's joins waiting for the database (statements slow) from joins waiting for
    // CPU (statements quick, `notifyd_catch_up_wait_seconds` long).
    metrics::histogram!("notifyd_catch_up_read_seconds").record(started.elapsed().as_secs_f64());
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            let msg = e.to_string();
            for r in batch {
                let _ = r.reply.send(Err(ApiError::Unavailable(msg.clone())));
            }
            return;
        }
    };
    let mut rows: VecDeque<ResumeRow> = rows.into();
    let mut events_read = 0u64;
    for (i, r) in batch.into_iter().enumerate() {
        let mut counts = None;
        let mut evs: Vec<(i64, StoredFrame)> = vec![];
        while rows.front().is_some_and(|row| row.i == i as i64) {
            let Some(row) = rows.pop_front() else { break };
            counts.get_or_insert(Counters {
                seq: row.seq,
                unread: row.unread,
                unseen: row.unseen,
                seen_seq: 0,
                epoch: row.epoch,
            });
            if let (Some(s), Some(p)) = (row.event_seq, row.payload) {
                evs.push((s, p));
            }
        }
        events_read += evs.len() as u64;
        metrics::histogram!("notifyd_catch_up_wait_seconds")
            .record(r.queued.elapsed().as_secs_f64());
        let reply = match counts {
            Some(c) => Ok(changes::resolve(r.since, r.epoch, c, evs)),
            // Every request has a row; none means the statement did not do what it says.
            None => Err(ApiError::Unavailable("catch-up read lost a request".into())),
        };
        let _ = r.reply.send(reply);
    }
    metrics::counter!("notifyd_catch_up_events_total").increment(events_read);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::{sleep, Instant};

    /// Sends 1, 2, .. at the given offsets (ms) from now, on a task of its own.
    fn arrivals(at_ms: &'static [u64]) -> mpsc::Receiver<u64> {
        let (tx, rx) = mpsc::channel(64);
        let start = Instant::now();
        tokio::spawn(async move {
            for (k, ms) in at_ms.iter().enumerate() {
                tokio::time::sleep_until(start + Duration::from_millis(*ms)).await;
                let _ = tx.send(k as u64 + 1).await;
            }
            // Keep the channel open: a closed one would end the wait early.
            sleep(Duration::from_secs(3600)).await;
        });
        rx
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_read_does_not_wait_for_company() {
        let mut rx = arrivals(&[0, 0, 1, 2]);
        sleep(Duration::from_micros(500)).await;
        let first = rx.recv().await.unwrap();
        let start = Instant::now();
        let batch = gather(first, &mut rx, 256, None).await;
        assert_eq!(batch, vec![1, 2], "only what had already queued");
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn under_load_a_batch_gathers_until_its_deadline() {
        // The last two arrive after the deadline (LINGER is 25 ms).
        let mut rx = arrivals(&[0, 1, 4, 24, 26, 27]);
        let first = rx.recv().await.unwrap();
        let until = Instant::now() + LINGER;
        let batch = gather(first, &mut rx, 256, Some(until)).await;
        assert_eq!(
            batch,
            vec![1, 2, 3, 4],
            "the joins within LINGER, not later ones"
        );
        assert_eq!(Instant::now(), until);
        let next = rx.recv().await.unwrap();
        assert_eq!(next, 5, "the later joins start the next batch");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_without_waiting_out_its_deadline() {
        let mut rx = arrivals(&[0, 1, 2, 3, 4, 5]);
        let first = rx.recv().await.unwrap();
        let start = Instant::now();
        let batch = gather(first, &mut rx, 3, Some(start + LINGER)).await;
        assert_eq!(batch, vec![1, 2, 3]);
        assert_eq!(start.elapsed(), Duration::from_millis(2));
    }
}
