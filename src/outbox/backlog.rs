//! The outbox's backlog per relay partition, reported by every node whether it leads or not.
//!
//! Before partitions spread, the leader of partition 0 reported the backlog for the whole
//! outbox, so when no relay led at all nobody reported a fresh age and the alert had to rely on
//! the last value scraped. Now every node measures it from the pool every `EVERY`:
//! `notifyd_outbox_backlog{partition}` and `notifyd_outbox_oldest_age_seconds{partition}` keep
//! growing on every node while a partition has no leader, and
//! `max(notifyd_outbox_oldest_age_seconds)` (the documented alert) fires.

use std::time::Duration;

use tokio::sync::watch;

use crate::db::DbPool;
use crate::store::outbox;

/// How often each node measures the backlog.
pub const EVERY: Duration = Duration::from_secs(5);

/// Measures every `EVERY` until `shutdown`; a measurement that fails or takes longer than
/// `timeout` (checkout included) is skipped, and the gauges keep their last values.
pub async fn run(
    pool: DbPool,
    partitions: u32,
    timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match measure(&pool, partitions, timeout).await {
            Ok(parts) => {
                for p in parts {
                    let k = p.partition.to_string();
                    metrics::gauge!("notifyd_outbox_backlog", "partition" => k.clone())
                        .set(p.entries as f64);
                    metrics::gauge!("notifyd_outbox_oldest_age_seconds", "partition" => k)
                        .set(p.oldest_age_s);
                }
            }
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "could not measure the outbox backlog")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn measure(
    pool: &DbPool,
    partitions: u32,
    timeout: Duration,
) -> anyhow::Result<Vec<outbox::Backlog>> {
    let mut conn = match tokio::time::timeout(timeout, pool.get()).await {
        Ok(c) => c.map_err(|e| anyhow::anyhow!("no pooled connection: {e}"))?,
        Err(_) => anyhow::bail!("no pooled connection within {timeout:?}"),
    };
    match tokio::time::timeout(timeout, outbox::backlog(&mut conn, partitions)).await {
        Ok(r) => Ok(r?),
        Err(_) => {
            // A late answer must not reach the next user of this connection: discard it.
            drop(deadpool::managed::Object::take(conn));
            anyhow::bail!("measuring the outbox backlog took longer than {timeout:?}")
        }
    }
}
