//! The announcement worker: one per node. It works batch after batch while a running broadcast
//! is free, then waits for a wake (a broadcast accepted on this node) or the poll interval
//! (one accepted elsewhere, or left behind by a node that died).

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::batch;
use super::Wake;
use crate::db::{self, DbPool};
use crate::outbox::Waker;
use crate::store::broadcasts;

/// How often an idle worker looks for running broadcasts.
pub const POLL: Duration = Duration::from_secs(1);

pub struct Worker {
    pub pool: DbPool,
    /// Recipients per batch (`NOTIFYD_BROADCAST_BATCH`).
    pub batch: i64,
    /// Bound on one batch's transaction, on our side (`NOTIFYD_DB_REQUEST_TIMEOUT`).
    pub timeout: Duration,
    /// The relay, woken after each batch so online users get it at once.
    pub relay: Waker,
    pub wake: Wake,
    /// This node's hub, for the batches' events to sessions here (`inbox::local`).
    pub local: crate::inbox::local::LocalDelivery,
}

impl Worker {
    /// Runs until `shutdown` turns true. A batch in flight is never cut short (its transaction
    /// finishes or times out); shutdown is checked between batches.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            self.drain(&shutdown).await;
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = self.wake.woken() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Batches until no running broadcast is free (or an error, retried at the next poll).
    async fn drain(&self, shutdown: &watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let started = Instant::now();
            let limit = self.batch;
            match db::run(&self.pool, self.timeout, async |conn| {
                batch::run_one(conn, &self.local, limit).await
            })
            .await
            {
                Ok(Some(b)) => {
                    metrics::histogram!("notifyd_broadcast_batch_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!("notifyd_broadcast_batches_total").increment(1);
                    if b.created > 0 {
                        self.relay.wake();
                        metrics::counter!("notifyd_broadcast_rows_created_total")
                            .increment(b.created as u64);
                        metrics::counter!("notifyd_messages_created_total", "service" => b.service.clone())
                            .increment(b.created as u64);
                    }
                    if b.skipped > 0 {
                        metrics::counter!("notifyd_messages_skipped_total", "reason" => crate::inbox::create::MUTED)
                            .increment(b.skipped as u64);
                    }
                    if b.done {
                        tracing::info!(broadcast = %b.broadcast, "broadcast done");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    metrics::counter!("notifyd_errors_total", "kind" => "broadcast").increment(1);
                    tracing::warn!(error = ?e, "broadcast batch failed; retrying at the next poll");
                    break;
                }
            }
        }
        match db::run(&self.pool, self.timeout, async |conn| {
            Ok(broadcasts::running(conn).await?)
        })
        .await
        {
            Ok(n) => metrics::gauge!("notifyd_broadcasts_running").set(n as f64),
            Err(e) => tracing::debug!(error = %e, "counting running broadcasts"),
        }
    }
}
