//! Housekeeping: removes notifications past `NOTIFYD_MESSAGE_RETENTION` and soft-deleted ones,
//! and prunes the event log past retention, expired idempotency keys and retained topic values.
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
//! retry every round. A round deletes in large batches (`NOTIFYD_HOUSEKEEPING_BATCH`, each one
//! short autocommit DELETE walking the `created_at` index) until nothing expired is left, so its
//! throughput is the database's delete rate, not a fixed number of rows per interval.

use std::time::{Duration, Instant};

use diesel_async::AsyncPgConnection;
use tokio::sync::watch;

use super::Waker;
use crate::config::Settings;
use crate::db;
use crate::inbox::commands::{self, Command};
use crate::store::{events, idempotency, messages, session, topic_retained};

/// The housekeeper's advisory lock key ("notifyd" + 01), beside the relay's `LEADER_LOCK`.
pub const HOUSEKEEPER_LOCK: i64 = 0x6e6f_7469_6679_6401;
/// Expired notifications read per batch. Small: the batch is removed user by user, and no
/// user's counter row is held for more than one `DELETE` of at most this many of their rows.
pub const EXPIRE_BATCH: i64 = 1_000;
/// How long a stand-by waits before it tries again after losing its connection.
const RETRY: Duration = Duration::from_secs(1);

/// What one round removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pruned {
    /// Live notifications past retention (each user told by a `message.deleted`).
    pub expired_messages: usize,
    /// Soft-deleted notifications purged.
    pub deleted_messages: usize,
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
        let mut conn = db::connect(&s.database_url, &limits).await?;
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
                if pruned.expired_messages
                    + pruned.deleted_messages
                    + pruned.events
                    + pruned.idempotency_keys
                    > 0
                {
                    tracing::info!(
                        expired_messages = pruned.expired_messages,
                        deleted_messages = pruned.deleted_messages,
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

/// Removes, batch after batch, every notification past retention, every soft-deleted one, every
/// event older than the retention window and every expired idempotency key, until none is left
/// (or shutdown). Each batch is its own short statement or transaction, bounded by the statement
/// timeout (server side) and a client-side timeout a little longer.
pub async fn prune_expired(
    conn: &mut AsyncPgConnection,
    s: &Settings,
    waker: &Waker,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Pruned> {
    let mut pruned = Pruned {
        expired_messages: expire_messages(conn, s, waker, shutdown).await?,
        ..Pruned::default()
    };
    let batch = s.housekeeping_batch;
    let bound = s.db_statement_timeout + s.relay_db_timeout;
    loop {
        let n = bounded(bound, messages::purge_deleted(conn, batch)).await?;
        pruned.deleted_messages += n;
        metrics::counter!("notifyd_housekeeping_pruned_total", "table" => "t_message_real_time")
            .increment(n as u64);
        if (n as i64) < batch || *shutdown.borrow() {
            break;
        }
    }
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(s.event_retention).unwrap_or(chrono::Duration::days(7));
    loop {
        let n = bounded(bound, events::prune(conn, cutoff, batch)).await?;
        pruned.events += n;
        metrics::counter!("notifyd_housekeeping_pruned_total", "table" => "user_event")
            .increment(n as u64);
        if (n as i64) < batch || *shutdown.borrow() {
            break;
        }
    }
    loop {
        let n = bounded(bound, idempotency::prune(conn, batch)).await?;
        pruned.idempotency_keys += n;
        metrics::counter!("notifyd_housekeeping_pruned_total", "table" => "idempotency_key")
            .increment(n as u64);
        if (n as i64) < batch || *shutdown.borrow() {
            break;
        }
    }
    // Expired retained topic values are never sent (reads filter them); this frees the rows.
    loop {
        let n = bounded(bound, topic_retained::prune(conn, batch)).await?;
        pruned.retained_topics += n;
        metrics::counter!("notifyd_housekeeping_pruned_total", "table" => "topic_retained")
            .increment(n as u64);
        if (n as i64) < batch || *shutdown.borrow() {
            break;
        }
    }
    Ok(pruned)
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
            if let Some(ev) = out.event {
                removed += ev.frame["ids"].as_array().map_or(0, Vec::len);
            }
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

async fn bounded<T, E: std::error::Error + Send + Sync + 'static>(
    t: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(t, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!("a housekeeping database call took longer than {t:?}"),
    }
}
