//! Waking the relay after a commit, without `NOTIFY` inside the business transaction.
//!
//! `NOTIFY` in a transaction takes a database-wide lock at commit that serialises every committing
//! transaction. Instead, after a commit the handler calls [`Waker::wake`]: the local relay gets an
//! in-process signal, and, when the relay leader may be another process, a background task sends
//! one coalesced `NOTIFY` on its own connection (many wakes between two sends become one).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::db::DbPool;

pub const CHANNEL: &str = "notifyd_outbox";
/// Bound on getting a pooled connection, and on the `NOTIFY` itself.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(2);

/// A wake for every relay partition of this process: a counter each partition watches (a
/// `Notify` would wake only one of them).
#[derive(Clone)]
pub struct Waker {
    local: Arc<watch::Sender<u64>>,
    remote: Arc<Notify>,
    /// How many relay partitions this process leads, and how many there are: when it leads them
    /// all, no NOTIFY is needed.
    led: Arc<AtomicUsize>,
    partitions: Arc<AtomicUsize>,
}

impl Default for Waker {
    fn default() -> Self {
        Self {
            local: Arc::new(watch::channel(0).0),
            remote: Arc::default(),
            led: Arc::default(),
            partitions: Arc::new(AtomicUsize::new(1)),
        }
    }
}

impl Waker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Called after a commit that wrote outbox entries.
    pub fn wake(&self) {
        self.wake_local();
        if !self.leads_all() {
            self.remote.notify_one();
        }
    }

    /// Wakes only this process's relay partitions (a NOTIFY from another node arrived).
    pub fn wake_local(&self) {
        self.local.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A relay partition waits on this with `changed()`; a wake since its last
    /// `borrow_and_update()` counts (like a stored permit).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.local.subscribe()
    }

    /// The relay says how many partitions exist (all processes use the same number).
    pub fn set_partitions(&self, n: usize) {
        self.partitions.store(n.max(1), Ordering::Relaxed);
    }

    /// A partition of this process became leader (`true`) or stopped leading (`false`).
    pub fn set_local_leader(&self, leader: bool) {
        if leader {
            self.led.fetch_add(1, Ordering::Relaxed);
        } else {
            // Saturating: a stand-by that never led may report a loss too.
            let _ = self
                .led
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    fn leads_all(&self) -> bool {
        // Fully qualified: diesel's `RunQueryDsl::load` is in scope too.
        AtomicUsize::load(&self.led, Ordering::Relaxed)
            >= AtomicUsize::load(&self.partitions, Ordering::Relaxed)
    }

    /// Sends coalesced `NOTIFY`s for other processes' relays until shutdown.
    pub async fn run_notifier(self, pool: DbPool, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.remote.notified() => {}
                _ = shutdown.changed() => return,
            }
            if self.leads_all() {
                continue;
            }
            // Bounded: a wake that cannot be sent only delays delivery to the leader's next poll.
            match tokio::time::timeout(NOTIFY_TIMEOUT, pool.get()).await {
                Ok(Ok(mut conn)) => {
                    match tokio::time::timeout(
                        NOTIFY_TIMEOUT,
                        // The simple protocol: no prepared statement (a transaction pooler could not carry
                        // one); NOTIFY in its own implicit transaction.
                        diesel_async::SimpleAsyncConnection::batch_execute(
                            &mut *conn,
                            &format!("NOTIFY {CHANNEL}"),
                        ),
                    )
                    .await
                    {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "NOTIFY failed; the relay's poll will pick the events up")
                        }
                        Err(_) => {
                            // A late answer must not reach the next user of this connection,
                            // and a half-open one must not be handed out again: discard it.
                            metrics::counter!("notifyd_errors_total", "kind" => "notify_timeout")
                                .increment(1);
                            drop(deadpool::managed::Object::take(conn));
                        }
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "no connection for NOTIFY"),
                Err(_) => tracing::debug!("no connection for NOTIFY within {NOTIFY_TIMEOUT:?}"),
            }
            // Coalesce: wakes that arrive during this pause become one NOTIFY.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
