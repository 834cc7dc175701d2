//! Housekeeping: removes notifications past `NOTIFYD_MESSAGE_RETENTION` and soft-deleted ones,
//! keeps the event log's partitions (creates them ahead, drops those past retention), and
//! prunes expired idempotency keys and retained topic values.
//!
//! Expiring a live notification is an inbox change like any other (its unread count must go):
//! each batch of expired rows goes user by user through `inbox::commands` (`Command::Expire`),
//! one short transaction per user that takes their counter row, removes at most
//! `EXPIRE_BATCH` of their rows and emits one `message.deleted` with the corrected counts.
//! Soft-deleted rows are already out of every count: they are simply deleted in batches.
//!
//! It runs apart from the relay's publish loop — its own task, its own connection — so pruning
//! never pauses delivery. One housekeeper works at a time across the cluster: it holds its own
//! session advisory lock (`HOUSEKEEPER_LOCK`, not the relay's) on its connection; the others
//! retry every round. The event log costs nothing to prune: a partition wholly past retention is
//! dropped (one short DDL statement whatever it holds). Row-by-row deletes remain for the small
//! tables and for the event log's DEFAULT partition (normally empty), in large batches
//! (`NOTIFYD_HOUSEKEEPING_BATCH`, each one short autocommit DELETE) until nothing expired is left.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::Waker;
use crate::config::Settings;
use crate::db;
use crate::inbox::commands::{self, Command};
use crate::store::event_partitions::{self, Partition};
use crate::store::{idempotency, messages, session, topic_retained};

/// The housekeeper's advisory lock key ("notifyd" + 01), beside the relay's `LEADER_LOCK`.
pub const HOUSEKEEPER_LOCK: i64 = 0x6e6f_7469_6679_6401;
/// Expired notifications read per batch. Small: the batch is removed user by user, and no
/// user's counter row is held for more than one `DELETE` of at most this many of their rows.
pub const EXPIRE_BATCH: i64 = 1_000;
/// How long a stand-by waits before it tries again after losing its connection.
const RETRY: Duration = Duration::from_secs(1);

/// Partitions kept ahead of the current one, so a housekeeper down for that long still leaves
/// every write a partition of its own (after that, the DEFAULT partition takes them).
pub const PARTITIONS_AHEAD: u32 = 2;
/// How long partition DDL may wait for its lock. Waiting DDL queues every later reader and
/// writer of `user_event` behind it, so it gives up quickly and is retried the next round.
pub const DDL_LOCK_TIMEOUT: Duration = Duration::from_millis(250);
/// Bound on the default partition's drain per round (each step creates one partition).
const MAX_DRAIN_STEPS: usize = 64;

/// What one round removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pruned {
    /// Live notifications past retention (each user told by a `message.deleted`).
    pub expired_messages: usize,
    /// Soft-deleted notifications purged.
    pub deleted_messages: usize,
    pub event_log: EventLogRound,
    /// Expired rows deleted from the event log's DEFAULT partition.
    pub events: usize,
    pub idempotency_keys: usize,
    pub retained_topics: usize,
}

pub struct Housekeeper {
    pub settings: Settings,
    /// Woken after expiring messages: their `message.deleted` events are in the outbox.
    pub waker: Waker,
}

impl Housekeeper {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            if let Err(e) = self.session(&mut shutdown).await {
                metrics::counter!("notifyd_errors_total", "kind" => "housekeeping").increment(1);
                tracing::warn!(error = %format!("{e:#}"), "housekeeper lost its connection; reconnecting");
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One connection's life: every interval, take (or keep) the housekeeper lock and, while
    /// it is ours, run a round. `Ok` at shutdown, `Err` when the connection is lost.
    async fn session(&self, shutdown: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
        let s = &self.settings;
        // The holder runs at least once per interval; after a longer silence PostgreSQL ends
        // its session (a half-open client) and the lock moves to another node.
        let limits = db::Limits {
            idle_session_timeout: Some(s.housekeeping_interval + s.relay_db_timeout * 2),
            ..db::Limits::from_settings(s)
        };
        let mut conn = db::connect(s.direct_database_url(), &limits).await?;
        let name = format!("notifyd housekeeper {}", s.node_id);
        bounded(s.relay_db_timeout, session::set_name(&mut conn, &name)).await?;
        bounded(s.relay_db_timeout, session::asynchronous_commit(&mut conn)).await?;
        // Session advisory locks stack: once ours, it is not taken again.
        let mut held = false;
        loop {
            if !held {
                held = bounded(
                    s.relay_db_timeout,
                    session::try_lock(&mut conn, HOUSEKEEPER_LOCK),
                )
                .await?;
            }
            if held {
                let started = Instant::now();
                let pruned = prune_expired(&mut conn, s, &self.waker, shutdown).await?;
                metrics::histogram!("notifyd_housekeeping_round_seconds")
                    .record(started.elapsed().as_secs_f64());
                let log = pruned.event_log;
                if pruned.expired_messages
                    + pruned.deleted_messages
                    + pruned.events
                    + pruned.idempotency_keys
                    + log.created
                    + log.dropped
                    > 0
                {
                    tracing::info!(
                        expired_messages = pruned.expired_messages,
                        deleted_messages = pruned.deleted_messages,
                        partitions_created = log.created,
                        partitions_dropped = log.dropped,
                        moved_from_default = log.moved,
                        events = pruned.events,
                        idempotency_keys = pruned.idempotency_keys,
                        seconds = started.elapsed().as_secs_f64(),
                        "housekeeping pruned"
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(s.housekeeping_interval) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }
}

/// One round: expired and soft-deleted notifications, the event log's partitions
/// (`maintain_event_log`, at the current time), then, batch after batch, every expired row of
/// the DEFAULT partition, idempotency key and retained topic value, until none is left (or
/// shutdown). Each batch is its own short statement or transaction, bounded by the statement
/// timeout (server side) and a client-side timeout a little longer.
pub async fn prune_expired(
    conn: &mut AsyncPgConnection,
    s: &Settings,
    waker: &Waker,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Pruned> {
    let now = Utc::now();
    let batch = s.housekeeping_batch;
    let bound = s.db_statement_timeout + s.relay_db_timeout;
    let mut pruned = Pruned {
        expired_messages: expire_messages(conn, s, waker, shutdown).await?,
        ..Pruned::default()
    };
    // Soft-deleted rows are already out of every count: plain batched deletes.
    pruned.deleted_messages = drain(conn, bound, batch, "t_message_real_time", shutdown, |c| {
        Box::pin(messages::purge_deleted(c, batch))
    })
    .await?;
    pruned.event_log = maintain_event_log(conn, s, now).await?;
    let cutoff = retention_cutoff(s, now);
    pruned.events = drain(conn, bound, batch, "user_event", shutdown, |c| {
        Box::pin(event_partitions::prune_default(c, cutoff, batch))
    })
    .await?;
    pruned.idempotency_keys = drain(conn, bound, batch, "idempotency_key", shutdown, |c| {
        Box::pin(idempotency::prune(c, batch))
    })
    .await?;
    // Expired retained topic values are never sent (reads filter them); this frees the rows.
    pruned.retained_topics = drain(conn, bound, batch, "topic_retained", shutdown, |c| {
        Box::pin(topic_retained::prune(c, batch))
    })
    .await?;
    Ok(pruned)
}

/// Runs `step` (one batched DELETE of at most `batch` rows) until a batch comes back short
/// (nothing more to remove) or shutdown; each step bounded by `bound`. Counts the rows in
/// `notifyd_housekeeping_pruned_total{table}` and returns how many went.
async fn drain(
    conn: &mut AsyncPgConnection,
    bound: Duration,
    batch: i64,
    table: &'static str,
    shutdown: &watch::Receiver<bool>,
    mut step: impl for<'c> FnMut(
        &'c mut AsyncPgConnection,
    ) -> BoxFuture<'c, Result<usize, diesel::result::Error>>,
) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let n = bounded(bound, step(conn)).await?;
        total += n;
        metrics::counter!("notifyd_housekeeping_pruned_total", "table" => table)
            .increment(n as u64);
        if (n as i64) < batch || *shutdown.borrow() {
            return Ok(total);
        }
    }
}

/// Expires live notifications sent before `NOTIFYD_MESSAGE_RETENTION`, oldest first,
/// `EXPIRE_BATCH` at a time, each batch user by user through the inbox's own removal path (one
/// short transaction per user: counters corrected, one `message.deleted`). Returns how many.
async fn expire_messages(
    conn: &mut AsyncPgConnection,
    s: &Settings,
    waker: &Waker,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<usize> {
    // A retention too large for a date (years beyond chrono's range) expires nothing.
    let Some(cutoff) = chrono::Duration::from_std(s.message_retention)
        .ok()
        .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
    else {
        return Ok(0);
    };
    let bound = s.db_statement_timeout + s.relay_db_timeout;
    let limit = EXPIRE_BATCH.min(s.housekeeping_batch);
    let mut total = 0;
    loop {
        let rows = bounded(bound, messages::expired(conn, cutoff, limit)).await?;
        let mut by_user: std::collections::BTreeMap<String, Vec<uuid::Uuid>> = Default::default();
        for (id, user) in &rows {
            by_user.entry(user.clone()).or_default().push(*id);
        }
        let mut removed = 0;
        for (user, ids) in by_user {
            let out = bounded(bound, commands::run(conn, &user, Command::Expire(ids))).await?;
            removed += out.changed;
        }
        if removed > 0 {
            waker.wake();
        }
        total += removed;
        metrics::counter!("notifyd_housekeeping_pruned_total", "table" => "t_message_real_time")
            .increment(removed as u64);
        metrics::counter!("notifyd_messages_expired_total").increment(removed as u64);
        // `removed == 0` with rows read: none could be removed (a user changed them meanwhile);
        // the next round looks again rather than spinning on them now.
        if (rows.len() as i64) < limit || removed == 0 || *shutdown.borrow() {
            break;
        }
    }
    Ok(total)
}

/// What one round did to the event log's partitions.
#[derive(Debug, Default, Clone, Copy)]
pub struct EventLogRound {
    pub created: usize,
    pub dropped: usize,
    /// Rows moved out of the DEFAULT partition into a partition created for them.
    pub moved: usize,
    /// Range partitions attached after the round.
    pub partitions: usize,
}

/// Events created before this are past retention.
fn retention_cutoff(s: &Settings, now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::from_std(s.event_retention).unwrap_or(chrono::Duration::days(7))
}

/// The partition range (`NOTIFYD_EVENT_PARTITION_WIDTH` long, aligned on multiples of the width
/// since the Unix epoch: UTC midnights for days) that holds `t`.
pub fn slot_of(t: DateTime<Utc>, width: Duration) -> (DateTime<Utc>, DateTime<Utc>) {
    let w = width.as_secs().max(1) as i64;
    let start = t.timestamp().div_euclid(w) * w;
    let from = DateTime::from_timestamp(start, 0).unwrap_or(t);
    (from, from + chrono::Duration::seconds(w))
}

/// The event log's upkeep as of `now` (passed in so tests can move the clock):
/// 1. the partitions for `now`'s range and the `PARTITIONS_AHEAD` after it exist;
/// 2. rows the DEFAULT partition took (written while no partition covered their time) and still
///    within retention move into partitions created for their ranges;
/// 3. every partition whose whole range is older than `now - retention` is dropped. The part of a
///    partition that passed retention stays until the whole partition has: events are kept up
///    to one partition width (a day) longer than `NOTIFYD_EVENT_RETENTION`, never shorter.
///
/// Each DDL step is its own transaction with `DDL_LOCK_TIMEOUT`; a step that fails (a lock not
/// granted in time, a partition another node created first) is logged, counted and retried the
/// next round; the round goes on with the other steps.
pub async fn maintain_event_log(
    conn: &mut AsyncPgConnection,
    s: &Settings,
    now: DateTime<Utc>,
) -> anyhow::Result<EventLogRound> {
    let bound = s.db_statement_timeout + s.relay_db_timeout;
    let mut round = EventLogRound {
        created: create_ahead(conn, s, now).await?,
        ..Default::default()
    };
    let cutoff = retention_cutoff(s, now);
    // 2. Drain the DEFAULT partition, oldest range first.
    let mut floor = cutoff;
    for _ in 0..MAX_DRAIN_STEPS {
        let Some(at) = bounded(bound, event_partitions::oldest_in_default(conn, floor)).await?
        else {
            break;
        };
        let (from, to) = slot_of(at, s.event_partition_width);
        let parts = bounded(bound, event_partitions::list(conn)).await?;
        // A range partly covered by a partition of another width (the width was changed) cannot
        // get its own: those rows stay in DEFAULT until they expire and are deleted.
        if !parts.iter().any(|p| p.overlaps(from, to)) {
            if let Some(moved) = ddl(conn, bound, Ddl::Create(from, to)).await? {
                round.created += 1;
                round.moved += moved;
                metrics::counter!("notifyd_event_partitions_created_total").increment(1);
                metrics::counter!("notifyd_event_default_rows_moved_total").increment(moved as u64);
            }
        }
        floor = to;
    }
    // 3. Drop the partitions wholly past retention.
    let parts = bounded(bound, event_partitions::list(conn)).await?;
    for p in parts.iter().filter(|p| p.to <= cutoff) {
        if ddl(conn, bound, Ddl::Drop(p)).await?.is_some() {
            round.dropped += 1;
            metrics::counter!("notifyd_event_partitions_dropped_total").increment(1);
        }
    }
    round.partitions = bounded(bound, event_partitions::list(conn)).await?.len();
    metrics::gauge!("notifyd_event_partitions").set(round.partitions as f64);
    Ok(round)
}

/// Creates the partitions for `now`'s range and the `PARTITIONS_AHEAD` after it where no
/// partition covers that range yet; returns how many it created.
async fn create_ahead(
    conn: &mut AsyncPgConnection,
    s: &Settings,
    now: DateTime<Utc>,
) -> anyhow::Result<usize> {
    let bound = s.db_statement_timeout + s.relay_db_timeout;
    let parts = bounded(bound, event_partitions::list(conn)).await?;
    let mut created = 0;
    let mut at = now;
    for _ in 0..=PARTITIONS_AHEAD {
        let (from, to) = slot_of(at, s.event_partition_width);
        at = to;
        if parts.iter().any(|p: &Partition| p.overlaps(from, to)) {
            continue;
        }
        if let Some(moved) = ddl(conn, bound, Ddl::Create(from, to)).await? {
            created += 1;
            metrics::counter!("notifyd_event_partitions_created_total").increment(1);
            metrics::counter!("notifyd_event_default_rows_moved_total").increment(moved as u64);
        }
    }
    Ok(created)
}

/// Creates the event log's partitions ahead of time, at start-up and by `notifyd migrate`, right
/// after the migrations: on its own connection, without the housekeeper's lock (two nodes racing
/// here both end well: one creates, the other's attempt fails and is logged).
pub async fn create_partitions_ahead(s: &Settings) -> anyhow::Result<usize> {
    let mut conn = db::connect(s.direct_database_url(), &db::Limits::from_settings(s)).await?;
    create_ahead(&mut conn, s, Utc::now()).await
}

/// One DDL step on the event log's partitions.
#[derive(Clone, Copy)]
enum Ddl<'a> {
    /// Create (and attach) the partition for `[from, to)`; answers the rows moved from DEFAULT.
    Create(DateTime<Utc>, DateTime<Utc>),
    Drop(&'a Partition),
}

impl Ddl<'_> {
    fn name(&self) -> &'static str {
        match self {
            Ddl::Create(..) => "create",
            Ddl::Drop(_) => "drop",
        }
    }
}

/// Runs one DDL step in its own transaction with `DDL_LOCK_TIMEOUT`. `Ok(None)`: the database
/// refused it (rolled back, logged and counted; the round goes on). `Err`: no answer in `bound`
/// (the connection's state is unknown, so the session ends and reconnects).
async fn ddl(
    conn: &mut AsyncPgConnection,
    bound: Duration,
    step: Ddl<'_>,
) -> anyhow::Result<Option<usize>> {
    let tx = conn.transaction::<usize, diesel::result::Error, _>(async |c| {
        event_partitions::set_local_lock_timeout(c, DDL_LOCK_TIMEOUT).await?;
        match step {
            Ddl::Create(from, to) => event_partitions::create(c, from, to).await,
            Ddl::Drop(p) => event_partitions::drop(c, p).await.map(|()| 0),
        }
    });
    let op = step.name();
    match tokio::time::timeout(bound, tx).await {
        Ok(Ok(v)) => Ok(Some(v)),
        Ok(Err(e)) => {
            metrics::counter!("notifyd_errors_total", "kind" => "event_partition").increment(1);
            tracing::warn!(op, error = %format!("{e:#}"), "event log partition step failed; retried next round");
            Ok(None)
        }
        Err(_) => anyhow::bail!("an event log partition {op} took longer than {bound:?}"),
    }
}

async fn bounded<T, E: std::error::Error + Send + Sync + 'static>(
    t: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    crate::timed::timed(t, "a housekeeping database call", || {}, fut).await
}
