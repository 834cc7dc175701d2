//! The relay: publishes committed outbox entries to the broker, then deletes them in the same
//! transaction that locked them.
//!
//! Exactly one relay publishes at a time across all processes: the leader holds a session-level
//! PostgreSQL advisory lock on the very connection it relays with, so if its process or
//! connection dies the lock goes with it and a stand-by (retrying every second) takes over.
//! Delivery to the broker is at-least-once: a crash between PUBLISH and COMMIT republishes the
//! batch, and receivers drop the duplicate by seq.

use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Bool};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::wake::{Waker, CHANNEL};
use crate::broker::Broker;
use crate::config::Settings;
use crate::store::{events, idempotency, outbox};

/// The advisory lock key ("notifyd relay"); scoped to the database, so deployments on separate
/// databases never contend.
pub const LEADER_LOCK: i64 = 0x6e6f_7469_6679_6400;
const STANDBY_RETRY: Duration = Duration::from_millis(250);
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(30);
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

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

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

impl Relay {
    /// Runs until `shutdown` turns true: stand by, lead, and stand by again after any loss.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            if let Err(e) = self.session(&mut shutdown).await {
                self.waker.set_local_leader(false);
                tracing::warn!(error = %e, "relay lost its database connection; reconnecting");
            }
            tokio::select! {
                _ = tokio::time::sleep(STANDBY_RETRY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One database connection's life: stand by on it, retrying the leader lock every second,
    /// and lead on it once the lock is ours. Returns `Ok` at shutdown, `Err` when the connection
    /// (and with it any leadership) is lost.
    async fn session(&self, shutdown: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut conn = AsyncPgConnection::establish(&self.settings.database_url).await?;
        // Named so operators (and the chaos harness) can see which node holds the leader lock.
        let name = format!("notifyd relay {}", self.settings.node_id).replace('\'', "");
        diesel::sql_query(format!("SET application_name = '{name}'"))
            .execute(&mut conn)
            .await?;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let got: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
                .bind::<BigInt, _>(LEADER_LOCK)
                .get_result(&mut conn)
                .await?;
            if got.locked {
                tracing::info!(node = %self.settings.node_id, "relay is now the leader");
                metrics::counter!("notifyd_relay_leadership_acquired_total").increment(1);
                self.waker.set_local_leader(true);
                let listener = tokio::spawn(listen_for_wakes(
                    self.settings.database_url.clone(),
                    self.waker.clone(),
                ));
                let result = self.lead(&mut conn, shutdown).await;
                listener.abort();
                self.waker.set_local_leader(false);
                return result;
            }
            tokio::select! {
                _ = tokio::time::sleep(STANDBY_RETRY) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    async fn lead(
        &self,
        conn: &mut AsyncPgConnection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(50);
        let mut last_housekeeping = Instant::now();
        let mut last_backlog = Instant::now() - BACKLOG_EVERY;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            match self.step(conn).await {
                Ok(n) => {
                    backoff = Duration::from_millis(50);
                    if last_backlog.elapsed() >= BACKLOG_EVERY {
                        last_backlog = Instant::now();
                        let b = outbox::backlog(conn).await?;
                        metrics::gauge!("notifyd_outbox_backlog").set(b.entries as f64);
                        metrics::gauge!("notifyd_outbox_oldest_age_seconds").set(b.oldest_age_s);
                    }
                    if last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
                        last_housekeeping = Instant::now();
                        self.housekeeping(conn).await?;
                    }
                    if n as i64 >= self.settings.relay_batch {
                        continue; // more is waiting
                    }
                    tokio::select! {
                        _ = self.waker.woken() => {}
                        _ = tokio::time::sleep(self.settings.relay_poll) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
                Err(StepError::Broker(e)) => {
                    metrics::counter!("notifyd_errors_total", "kind" => "relay_publish")
                        .increment(1);
                    tracing::warn!(error = %e, "relay cannot publish; events stay in the outbox, retrying in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(StepError::Db(e)) => return Err(e.into()),
            }
        }
    }

    /// One batch: lock the oldest entries, publish them, delete them, commit.
    async fn step(&self, conn: &mut AsyncPgConnection) -> Result<usize, StepError> {
        let started = Instant::now();
        let limit = self.settings.relay_batch;
        let n = conn
            .transaction::<_, StepError, _>(async |conn| {
                let batch = outbox::claim_batch(conn, limit).await?;
                if batch.is_empty() {
                    return Ok(0);
                }
                let mut items = Vec::with_capacity(batch.len());
                for entry in &batch {
                    let channel = match (&entry.user_id, &entry.topic) {
                        (Some(u), _) => self.settings.user_channel(u),
                        (None, Some(t)) => self.settings.topic_channel(t),
                        (None, None) => continue,
                    };
                    // A user entry whose event was pruned has nothing left to say.
                    if let Some(p) = &entry.payload {
                        items.push((channel, p.to_string()));
                    }
                }
                self.broker
                    .publish(&items)
                    .await
                    .map_err(StepError::Broker)?;
                let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
                outbox::delete(conn, &ids).await?;
                Ok(batch.len())
            })
            .await?;
        if n > 0 {
            metrics::counter!("notifyd_events_published_total").increment(n as u64);
            metrics::histogram!("notifyd_relay_batch_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        Ok(n)
    }

    /// Prunes the event log past retention and expired idempotency keys, a bounded amount per call.
    async fn housekeeping(
        &self,
        conn: &mut AsyncPgConnection,
    ) -> Result<(), diesel::result::Error> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(self.settings.event_retention)
                .unwrap_or(chrono::Duration::days(7));
        let mut pruned = 0;
        for _ in 0..20 {
            let n = events::prune(conn, cutoff, 5000).await?;
            pruned += n;
            if n < 5000 {
                break;
            }
        }
        let keys = idempotency::prune(conn, 5000).await?;
        if pruned + keys > 0 {
            tracing::info!(
                events = pruned,
                idempotency_keys = keys,
                "housekeeping pruned"
            );
        }
        Ok(())
    }
}

/// While leading: LISTEN on a separate connection so commits on other nodes wake this relay.
async fn listen_for_wakes(database_url: String, waker: Waker) {
    loop {
        match AsyncPgConnection::establish(&database_url).await {
            Ok(mut conn) => {
                if diesel::sql_query(format!("LISTEN {CHANNEL}"))
                    .execute(&mut conn)
                    .await
                    .is_ok()
                {
                    let mut stream = std::pin::pin!(conn.notifications_stream());
                    while let Some(Ok(_)) = stream.next().await {
                        waker.wake_local();
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "LISTEN connection failed; relying on polling"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
