//! Housekeeping: prunes the event log past retention and expired idempotency keys.
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

use crate::config::Settings;
use crate::db;
use crate::store::{events, idempotency, session, topic_retained};

/// The housekeeper's advisory lock key ("notifyd" + 01), beside the relay's `LEADER_LOCK`.
pub const HOUSEKEEPER_LOCK: i64 = 0x6e6f_7469_6679_6401;
/// How long a stand-by waits before it tries again after losing its connection.
const RETRY: Duration = Duration::from_secs(1);

/// What one round removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pruned {
    pub events: usize,
    pub idempotency_keys: usize,
    pub retained_topics: usize,
}

pub struct Housekeeper {
    pub settings: Settings,
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
                let pruned = prune_expired(&mut conn, s, shutdown).await?;
                metrics::histogram!("notifyd_housekeeping_round_seconds")
                    .record(started.elapsed().as_secs_f64());
                if pruned.events + pruned.idempotency_keys > 0 {
                    tracing::info!(
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

/// Deletes, batch after batch, every event older than the retention window and every expired
/// idempotency key, until none is left (or shutdown). Each batch is its own short statement,
/// bounded by the statement timeout (server side) and a client-side timeout a little longer.
pub async fn prune_expired(
    conn: &mut AsyncPgConnection,
    s: &Settings,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Pruned> {
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(s.event_retention).unwrap_or(chrono::Duration::days(7));
    let batch = s.housekeeping_batch;
    let bound = s.db_statement_timeout + s.relay_db_timeout;
    let mut pruned = Pruned::default();
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

async fn bounded<T>(
    t: Duration,
    fut: impl std::future::Future<Output = Result<T, diesel::result::Error>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(t, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!("a housekeeping database call took longer than {t:?}"),
    }
}
