//! The relay: publishes committed outbox entries to the broker, then deletes them in the same
//! transaction that locked them.
//!
//! The outbox is split into `NOTIFYD_RELAY_PARTITIONS` partitions by a hash of the user (topic
//! entries: of the topic), default 1. Exactly one relay publishes each partition at a time across
//! all processes: its leader holds the session-level PostgreSQL advisory lock `partition_lock(k)`
//! on the very connection it relays with, so if its process or connection dies the lock goes with
//! it and a stand-by (retrying every 250 ms) takes over. One user's (one topic's) events all live
//! in one partition and are published by one leader in id order, batch after batch, so their
//! order holds; different partitions run side by side. Every process must use the same number.
//!
//! The partitions spread over the live relays (`outbox::share`): a stand-by tries its lock only
//! while its process leads fewer than its share, and a leader over its share gives its partition
//! up between two batches. Order holds through every hand-over because a partition's new leader
//! can only start once the old one can no longer publish, and the lock is what guarantees it:
//! - a leader publishes only rows it claimed inside a transaction on the very session that holds
//!   the lock, and PUBLISHes them (waiting for Redis's answer) before that transaction commits;
//! - a leader that gives its partition up does so between batches: its last transaction has
//!   committed and its last pipeline was acknowledged by Redis, so nothing of it is in flight
//!   when `pg_advisory_unlock` returns, and the new leader's first claim sees the outbox after
//!   that commit;
//! - a leader that dies or loses its connection loses the lock only with its session; its
//!   uncommitted claim rolls back and the rows go out again (at-least-once, dropped by seq), and
//!   a leader cut off from PostgreSQL drops its batch (publish included) at its own timeout,
//!   which is shorter than the server's `leader_idle_timeout` that ends its session (below).
//!
//! One batch is one transaction and three round trips: BEGIN; claim-and-delete in one statement
//! (`store::outbox::claim_and_delete`); PUBLISH the batch in one pipeline; COMMIT. A failed
//! publish rolls the delete back (nothing lost). Delivery to the broker is at-least-once: a crash
//! between PUBLISH and COMMIT republishes the batch, and receivers drop the duplicate by seq. For
//! the same reason the relay's session commits asynchronously (`synchronous_commit = off`): a
//! database crash may forget the last deletes, which only republishes them.
//!
//! Leader loss is detected in bounded time, also on a half-open connection (the database host
//! or the path to it died without closing the socket):
//! - client side, every database call of the relay is bounded by `NOTIFYD_RELAY_DB_TIMEOUT`
//!   (a batch by that plus the publish timeout); on a timeout the connection is dropped, the node
//!   stops publishing at once (it only publishes rows it claimed on that connection) and stands
//!   by again on a fresh connection;
//! - server side, the leader's session has `idle_session_timeout` (a live leader never idles
//!   longer than its poll or broker back-off), `idle_in_transaction_session_timeout` and TCP
//!   keepalive, so PostgreSQL ends a session whose client went silent and the advisory lock and
//!   claimed rows go with it; a stand-by takes over within `leader_idle_timeout` + its retry.
//!
//! Batches follow each other at once while entries wait (a backlog drains at full speed); after a
//! batch that did not fill `NOTIFYD_RELAY_BATCH`, the next starts no sooner than
//! `NOTIFYD_RELAY_COALESCE` after the last batch that published began, so commits arriving one
//! by one share transactions (see `lead`).
//!
//! Pruning is not done here: see `outbox::housekeeping` (its own task and connection).

use std::future::Future;
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::share::Share;
use super::wake::{Waker, CHANNEL};
use crate::broker::{Broker, PUBLISH_TIMEOUT};
use crate::config::Settings;
use crate::db;
use crate::store::outbox::{self, Partition};
use crate::store::session;

/// The advisory lock key ("notifyd relay"); scoped to the database, so deployments on separate
/// databases never contend.
pub const LEADER_LOCK: i64 = 0x6e6f_7469_6679_6400;
/// Partition `k`'s leader lock: `LEADER_LOCK` for partition 0 (so one partition is the lock of
/// old), then steps of 2^16 (`LEADER_LOCK + 1` is the housekeeper's lock).
pub fn partition_lock(k: u32) -> i64 {
    LEADER_LOCK + (i64::from(k) << 16)
}
const STANDBY_RETRY: Duration = Duration::from_millis(250);
/// A stand-by at its share tries no lock; it runs `SELECT 1` this often instead, well inside
/// its session's `leader_idle_timeout`.
const STANDBY_PING: Duration = Duration::from_secs(2);
/// The longest the leader waits between two steps while the broker fails.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the LISTEN connection is checked with a bounded `SELECT 1`.
const LISTEN_CHECK_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Relay {
    pub database_url: String,
    pub broker: Broker,
    pub waker: Waker,
    pub settings: Settings,
}

#[derive(Debug)]
enum StepError {
    /// The broker refused or timed out: the batch stays in the outbox; back off and retry.
    Broker(anyhow::Error),
    /// The database failed: the connection (and with it the leadership) is gone.
    Db(diesel::result::Error),
}

impl From<diesel::result::Error> for StepError {
    fn from(e: diesel::result::Error) -> Self {
        StepError::Db(e)
    }
}

/// How a leader's turn ended without losing its connection.
enum Turn {
    Shutdown,
    /// Its process leads more than its share: the partition is handed on.
    Released,
}

impl Relay {
    /// Runs every partition, and the heartbeat that spreads them, until `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let count = self.settings.relay_partitions.max(1);
        self.waker.set_partitions(count as usize);
        let share = Share::new(&self.settings.node_id, count);
        let heartbeat = tokio::spawn(share.clone().run(self.settings.clone(), shutdown.clone()));
        let tasks: Vec<_> = (0..count)
            .map(|index| {
                let part = Partition { index, count };
                tokio::spawn(
                    self.clone()
                        .run_partition(part, share.clone(), shutdown.clone()),
                )
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        let _ = heartbeat.await;
    }

    /// One partition until `shutdown` turns true: stand by, lead, and stand by again after any
    /// loss.
    async fn run_partition(
        self,
        part: Partition,
        share: Share,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            if let Err(e) = self.session(part, &share, &mut shutdown).await {
                tracing::warn!(error = %format!("{e:#}"), partition = part.index, "relay lost its database connection; reconnecting");
            }
            tokio::select! {
                _ = tokio::time::sleep(STANDBY_RETRY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One database connection's life: stand by on it, retrying the leader lock every
    /// `STANDBY_RETRY` while this process leads fewer partitions than its share, and lead on it
    /// once the lock is ours, until the share says to hand the partition on (then stand by again
    /// on the same connection). Returns `Ok` at shutdown, `Err` when the connection (and with it
    /// any leadership) is lost.
    async fn session(
        &self,
        part: Partition,
        share: &Share,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let t = self.settings.relay_db_timeout;
        let mut conn = db::connect(self.settings.direct_database_url(), &self.limits()).await?;
        // Named so operators (and the chaos harness) can see which node holds the leader lock.
        let name = if part.count > 1 {
            format!("notifyd relay {} p{}", self.settings.node_id, part.index)
        } else {
            format!("notifyd relay {}", self.settings.node_id)
        };
        bounded(t, session::set_name(&mut conn, &name)).await?;
        bounded(t, outbox::tune_relay_session(&mut conn)).await?;
        let lock = partition_lock(part.index);
        let mut last_call = Instant::now();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            if !share.reserve() {
                // At its share: no lock to try, but the session must not sit idle past its
                // `idle_session_timeout` (PostgreSQL would end it, and this stand-by reconnect).
                if last_call.elapsed() >= STANDBY_PING {
                    bounded(t, diesel::sql_query("SELECT 1").execute(&mut conn)).await?;
                    last_call = Instant::now();
                }
            } else {
                let locked = bounded(t, session::try_lock(&mut conn, lock)).await;
                last_call = Instant::now();
                if !matches!(locked, Ok(true)) {
                    share.unreserve();
                }
                if locked? {
                    match self.turn(&mut conn, part, share, shutdown).await {
                        Ok(Turn::Shutdown) => return Ok(()),
                        Ok(Turn::Released) => last_call = Instant::now(),
                        Err(e) => return Err(e),
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(STANDBY_RETRY) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// A turn as the partition's leader, the lock just taken on `conn` (with its place in the
    /// share reserved): lead until shutdown, loss, or a hand-over, and give the place back.
    async fn turn(
        &self,
        conn: &mut AsyncPgConnection,
        part: Partition,
        share: &Share,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Turn> {
        tracing::info!(node = %self.settings.node_id, partition = part.index, "relay is now the leader");
        metrics::counter!("notifyd_relay_leadership_acquired_total").increment(1);
        share.started(part.index);
        self.waker.set_local_leader(true);
        let listener = tokio::spawn(listen_for_wakes(self.settings.clone(), self.waker.clone()));
        let result = self.lead(conn, part, share, shutdown).await;
        listener.abort();
        self.waker.set_local_leader(false);
        match result {
            Ok(Turn::Released) => {
                // `release_surplus` already gave the place back. Between batches: the last
                // transaction committed after Redis acknowledged its pipeline, so this leader has
                // nothing in flight, and once the lock is free the next leader starts from the
                // outbox as that commit left it. If the unlock fails, the caller drops the
                // connection and the lock goes with the session.
                let unlocked = bounded(
                    self.settings.relay_db_timeout,
                    session::unlock(conn, partition_lock(part.index)),
                )
                .await;
                share.stopped(part.index);
                unlocked?;
                tracing::info!(node = %self.settings.node_id, partition = part.index, "relay handed its partition on (over its share)");
                metrics::counter!("notifyd_relay_partitions_released_total").increment(1);
                Ok(Turn::Released)
            }
            other => {
                share.stopped(part.index);
                share.unreserve();
                other
            }
        }
    }

    async fn lead(
        &self,
        conn: &mut AsyncPgConnection,
        part: Partition,
        share: &Share,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Turn> {
        let mut wakes = self.waker.subscribe();
        let mut targets = share.target_changes();
        let mut backoff = Duration::from_millis(50);
        let coalesce = self.settings.relay_coalesce;
        // When the last batch that published something started (the coalescing window's start).
        let mut last_published: Option<Instant> = None;
        // A batch may take one database bound plus one publish bound.
        let step_bound = self.settings.relay_db_timeout + PUBLISH_TIMEOUT;
        loop {
            if *shutdown.borrow() {
                return Ok(Turn::Shutdown);
            }
            // Only here, between batches, is a partition handed on (see the module's comment).
            if share.release_surplus() {
                return Ok(Turn::Released);
            }
            targets.borrow_and_update();
            // A wake from here on means "look again" after this batch.
            wakes.borrow_and_update();
            let started = Instant::now();
            // On a timeout the whole transaction future is dropped with its connection (the
            // caller drops `conn`): nothing is published from that connection again.
            let stepped = match tokio::time::timeout(step_bound, self.step(conn, part)).await {
                Ok(r) => r,
                Err(_) => {
                    metrics::counter!("notifyd_relay_db_timeouts_total").increment(1);
                    anyhow::bail!("a relay batch took longer than {step_bound:?}");
                }
            };
            match stepped {
                Ok(n) => {
                    backoff = Duration::from_millis(50);
                    if n > 0 {
                        last_published = Some(started);
                    }
                    if n as i64 >= self.settings.relay_batch {
                        continue; // more is waiting
                    }
                    tokio::select! {
                        _ = wakes.changed() => {}
                        _ = tokio::time::sleep(self.settings.relay_poll) => {}
                        _ = targets.changed() => continue, // maybe over its share now
                        _ = shutdown.changed() => return Ok(Turn::Shutdown),
                    }
                    // Every commit wakes the relay. At a steady rate of single-message commits
                    // each would otherwise get a transaction of its own (claim, delete, publish,
                    // commit: ~1,000 relay transactions a second at 1,000 POSTs a second, measured),
                    // costing the database as much as the creates; waiting out the rest of the
                    // window (from the last batch that published) lets the commits made meanwhile
                    // share one. A commit more than a window after the last publish (the first
                    // after a quiet spell, whatever polls found nothing since) goes at once. What
                    // waits: creates' and commands' frames for sockets on other nodes (a node
                    // delivers its own commits itself), and topic events, erase notices and
                    // expiries for every node, which only ever travel through the relay.
                    let rest = last_published.and_then(|t| coalesce.checked_sub(t.elapsed()));
                    if let Some(rest) = rest {
                        tokio::select! {
                            _ = tokio::time::sleep(rest) => {}
                            _ = shutdown.changed() => return Ok(Turn::Shutdown),
                        }
                    }
                }
                Err(StepError::Broker(e)) => {
                    metrics::counter!("notifyd_errors_total", "kind" => "relay_publish")
                        .increment(1);
                    tracing::warn!(error = %format!("{e:#}"), "relay cannot publish; events stay in the outbox, retrying in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = targets.changed() => {}
                        _ = shutdown.changed() => return Ok(Turn::Shutdown),
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(StepError::Db(e)) => return Err(e.into()),
            }
        }
    }

    /// One batch: claim-and-delete the partition's oldest entries, publish them, commit.
    async fn step(
        &self,
        conn: &mut AsyncPgConnection,
        part: Partition,
    ) -> Result<usize, StepError> {
        let started = Instant::now();
        let limit = self.settings.relay_batch;
        let n = conn
            .transaction::<_, StepError, _>(async |conn| {
                let batch = outbox::claim_and_delete(conn, limit, part).await?;
                if batch.is_empty() {
                    return Ok(0);
                }
                let claimed = Instant::now();
                let n = batch.len();
                let commit_to_claim =
                    metrics::histogram!("notifyd_stage_seconds", "stage" => "commit_to_claim");
                let mut items = Vec::with_capacity(n);
                for entry in batch {
                    commit_to_claim.record(entry.age_s.max(0.0));
                    let channel = match (&entry.user_id, &entry.topic) {
                        (Some(u), _) => self.settings.user_channel(u),
                        (None, Some(t)) => self.settings.topic_channel(t),
                        (None, None) => continue,
                    };
                    // A user entry whose event was pruned has nothing left to say.
                    if let Some(p) = entry.payload {
                        items.push((channel, p));
                    }
                }
                self.broker
                    .publish(&items)
                    .await
                    .map_err(StepError::Broker)?;
                metrics::histogram!("notifyd_stage_seconds", "stage" => "claim_to_published")
                    .record(claimed.elapsed().as_secs_f64());
                Ok(n)
            })
            .await?;
        if n > 0 {
            // The batch first, then its events: a scrape that sees the events sees their batch.
            metrics::histogram!("notifyd_relay_batch_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("notifyd_events_published_total").increment(n as u64);
        }
        Ok(n)
    }

    /// Server-side limits of the relay's session: the pool's, plus short idle timeouts, so
    /// PostgreSQL ends a leader session whose client went silent (and frees the leader lock and
    /// any claimed rows), whether it was idle or inside a batch's transaction (a batch is idle
    /// in transaction at most while it publishes).
    fn limits(&self) -> db::Limits {
        let idle = leader_idle_timeout(&self.settings);
        db::Limits {
            idle_session_timeout: Some(idle),
            idle_in_transaction_timeout: Some(idle),
            ..db::Limits::from_settings(&self.settings)
        }
    }
}

/// The longest a live relay session is ever idle is its poll interval, its coalescing window or
/// the broker back-off (one of them at a time); PostgreSQL ends the session after this much
/// silence.
pub fn leader_idle_timeout(s: &Settings) -> Duration {
    s.relay_db_timeout + MAX_BACKOFF + s.relay_poll.max(s.relay_coalesce)
}

/// Runs one relay database call within `t`; a timeout is an error like a broken connection
/// (the caller drops the connection).
async fn bounded<T>(
    t: Duration,
    fut: impl Future<Output = Result<T, diesel::result::Error>>,
) -> anyhow::Result<T> {
    let late = || metrics::counter!("notifyd_relay_db_timeouts_total").increment(1);
    crate::timed::timed(t, "a relay database call", late, fut).await
}

/// While leading: LISTEN on a separate connection so commits on other nodes wake this relay.
/// The connection is idle by nature, so it is checked with a bounded `SELECT 1` every
/// `LISTEN_CHECK_EVERY` (notifications arriving meanwhile are buffered by the client, never
/// lost); a failed check reconnects. Missing wakes only delay delivery to the next poll.
async fn listen_for_wakes(settings: Settings, waker: Waker) {
    let t = settings.relay_db_timeout;
    let limits = db::Limits::from_settings(&settings);
    loop {
        match db::connect(settings.direct_database_url(), &limits).await {
            Ok(mut conn) => {
                if let Err(e) = listen_on(&mut conn, &waker, t).await {
                    tracing::debug!(error = %format!("{e:#}"), "LISTEN connection lost; reconnecting");
                }
            }
            Err(e) => tracing::debug!(error = %e, "LISTEN connection failed; relying on polling"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen_on(conn: &mut AsyncPgConnection, waker: &Waker, t: Duration) -> anyhow::Result<()> {
    bounded(
        t,
        diesel::sql_query(format!("LISTEN {CHANNEL}")).execute(conn),
    )
    .await?;
    loop {
        {
            let stream = conn.notifications_stream();
            let mut stream = std::pin::pin!(stream);
            let check = tokio::time::sleep(LISTEN_CHECK_EVERY);
            tokio::pin!(check);
            loop {
                tokio::select! {
                    n = stream.next() => match n {
                        Some(Ok(_)) => waker.wake_local(),
                        Some(Err(e)) => return Err(e.into()),
                        None => anyhow::bail!("notification stream ended"),
                    },
                    _ = &mut check => break,
                }
            }
        }
        bounded(t, diesel::sql_query("SELECT 1").execute(conn)).await?;
    }
}
