//! The push worker, one per node, all nodes alike: every `ROUND` it writes the acknowledgements
//! waiting here, drops the pushes no longer needed, and claims and sends the ones due. A push is
//! claimed (marked in flight) by one node in one statement, so it goes once; a node that dies
//! leaves the rest pending in PostgreSQL for the others.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use super::payload;
use super::sender::{Keys, Outcome};
use super::Push;
use crate::db::{self, DbPool};
use crate::store::push as store;

/// How often a node looks for due pushes when there were none.
pub const ROUND: Duration = Duration::from_secs(1);
/// Pushes claimed at once.
const CLAIM: i64 = 64;
/// Push requests in flight at once per node.
const CONCURRENCY: usize = 16;
/// Attempts before a push refused for now (429, 5xx, no answer) is given up.
pub const MAX_ATTEMPTS: i32 = 5;
/// The longest wait a push service's `Retry-After` gets.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// A push in flight longer than this was lost with its node (far above a request's 10 s).
const STALE: Duration = Duration::from_secs(5 * 60);

pub struct Worker {
    pub push: Arc<Push>,
    pub pool: DbPool,
    pub delay: Duration,
    pub timeout: Duration,
}

impl Worker {
    /// Runs until `shutdown`. Acknowledgements are written by a task of their own, every
    /// `FLUSH_EVERY` whatever the rounds are doing: a round waiting on a slow push service
    /// must not hold them past `NOTIFYD_PUSH_DELAY` (the pushes they prevent would go out).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let me = Arc::new(self);
        let receipts = tokio::spawn(me.clone().flush_loop(shutdown.clone()));
        loop {
            if *shutdown.borrow() {
                break;
            }
            let busy = match me.round().await {
                Ok(claimed) => claimed as i64 == CLAIM,
                Err(e) => {
                    tracing::warn!(error = %e, "push round failed");
                    false
                }
            };
            // A full claim: more may be due, the next round comes at once.
            if !busy {
                tokio::select! {
                    _ = shutdown.changed() => {}
                    _ = tokio::time::sleep(ROUND) => {}
                }
            }
        }
        let _ = receipts.await;
    }

    async fn flush_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.flush_receipts().await;
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(super::receipts::FLUSH_EVERY) => {}
            }
        }
    }

    async fn flush_receipts(&self) {
        let (users, seqs) = self.push.receipts.take();
        if users.is_empty() {
            return;
        }
        let written = db::run(&self.pool, self.timeout, async |c| {
            Ok(store::record_received(c, &users, &seqs).await?)
        })
        .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, "recording push acknowledgements failed; kept for the next flush");
            self.push.receipts.put_back(users, seqs);
        }
    }

    /// One round: settle, drop the stale, claim and send. Returns how many were claimed.
    async fn round(&self) -> Result<usize, crate::error::ApiError> {
        let delay_ms = self.delay.as_millis() as i64;
        let (settled, stale, due) = db::run(&self.pool, self.timeout, async |c| {
            let settled = store::settle(c, delay_ms).await?;
            let stale = store::drop_stale(c, STALE.as_millis() as i64).await?;
            let due = store::claim(c, delay_ms, CLAIM).await?;
            Ok((settled, stale, due))
        })
        .await?;
        for s in &settled {
            let reason = if s.acknowledged {
                "acknowledged"
            } else {
                "read_or_deleted"
            };
            metrics::counter!("notifyd_push_skipped_total", "reason" => reason).increment(1);
        }
        if stale > 0 {
            metrics::counter!("notifyd_push_failed_total", "reason" => "lost_in_flight")
                .increment(stale as u64);
        }
        let claimed = due.len();
        futures_util::stream::iter(due)
            .for_each_concurrent(CONCURRENCY, |d| self.send(d))
            .await;
        Ok(claimed)
    }

    async fn send(&self, d: store::Due) {
        let body = payload::encode(&payload::Message {
            id: d.message_id,
            seq: d.seq,
            title: &d.title,
            content: &d.content,
            kind: &d.kind,
            skip_url: d.skip_url.as_deref(),
            unseen: d.unseen,
        });
        let keys = Keys {
            p256dh: &d.p256dh,
            auth: &d.auth,
        };
        let outcome = self.push.sender.push(&d.endpoint, &keys, body).await;
        let (sub, seq) = (d.subscription_id, d.seq);
        let result = db::run(&self.pool, self.timeout, async |c| {
            match &outcome {
                Outcome::Sent => store::done(c, sub, seq).await?,
                Outcome::Gone => store::remove(c, sub).await?,
                Outcome::Retry(_) if d.attempts >= MAX_ATTEMPTS => store::done(c, sub, seq).await?,
                Outcome::Retry(after) => {
                    // A service's `Retry-After` is honoured up to an hour (a huge one would
                    // park the push for years or overflow the interval).
                    let after = after
                        .unwrap_or_else(|| backoff(d.attempts))
                        .min(MAX_RETRY_AFTER);
                    store::retry(c, sub, seq, after.as_millis() as i64).await?
                }
                Outcome::Failed(_) => store::done(c, sub, seq).await?,
            };
            Ok(())
        })
        .await;
        if let Err(e) = result {
            // Left in flight: dropped as stale later, never sent twice.
            tracing::warn!(error = %e, "recording a push's outcome failed");
        }
        match outcome {
            Outcome::Sent => {
                metrics::counter!("notifyd_push_sent_total").increment(1);
                let waited = chrono::Utc::now() - d.created_at;
                metrics::histogram!("notifyd_push_delay_seconds")
                    .record(waited.num_milliseconds().max(0) as f64 / 1000.0);
            }
            Outcome::Gone => {
                metrics::counter!("notifyd_push_subscriptions_removed_total").increment(1);
            }
            Outcome::Retry(_) if d.attempts >= MAX_ATTEMPTS => {
                metrics::counter!("notifyd_push_failed_total", "reason" => "gave_up").increment(1);
            }
            Outcome::Retry(_) => {
                metrics::counter!("notifyd_push_retries_total").increment(1);
            }
            Outcome::Failed(reason) => {
                metrics::counter!("notifyd_push_failed_total", "reason" => reason).increment(1);
            }
        }
    }
}

/// Exponential backoff with jitter when the service gave no `Retry-After`: ~2, 4, 8, 16 s.
fn backoff(attempts: i32) -> Duration {
    let base = Duration::from_secs(1u64 << attempts.clamp(1, 6));
    base + Duration::from_millis(rand::random_range(0..1000))
}
