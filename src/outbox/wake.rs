//! Waking the relay after a commit, without `NOTIFY` inside the business transaction.
//!
//! `NOTIFY` in a transaction takes a database-wide lock at commit that serialises every committing
//! transaction. Instead, after a commit the handler calls [`Waker::wake`]: the local relay gets an
//! in-process signal, and, when the relay leader may be another process, a background task sends
//! one coalesced `NOTIFY` on its own connection (many wakes between two sends become one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use tokio::sync::{watch, Notify};

use crate::db::DbPool;

pub const CHANNEL: &str = "notifyd_outbox";
/// Bound on getting a pooled connection, and on the `NOTIFY` itself.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
pub struct Waker {
    local: Arc<Notify>,
    remote: Arc<Notify>,
    /// True while this process's relay is the leader: then no NOTIFY is needed.
    local_leader: Arc<AtomicBool>,
}

impl Waker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Called after a commit that wrote outbox entries.
    pub fn wake(&self) {
        self.local.notify_one();
        if !std::sync::atomic::AtomicBool::load(&self.local_leader, Ordering::Relaxed) {
            self.remote.notify_one();
        }
    }

    /// Wakes only this process's relay (a NOTIFY from another node arrived).
    pub fn wake_local(&self) {
        self.local.notify_one();
    }

    /// The relay waits here (a stored permit makes a wake before the wait count).
    pub async fn woken(&self) {
        self.local.notified().await
    }

    pub fn set_local_leader(&self, leader: bool) {
        self.local_leader.store(leader, Ordering::Relaxed);
    }

    /// Sends coalesced `NOTIFY`s for other processes' relays until shutdown.
    pub async fn run_notifier(self, pool: DbPool, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.remote.notified() => {}
                _ = shutdown.changed() => return,
            }
            if std::sync::atomic::AtomicBool::load(&self.local_leader, Ordering::Relaxed) {
                continue;
            }
            // Bounded: a wake that cannot be sent only delays delivery to the leader's next poll.
            match tokio::time::timeout(NOTIFY_TIMEOUT, pool.get()).await {
                Ok(Ok(mut conn)) => {
                    match tokio::time::timeout(
                        NOTIFY_TIMEOUT,
                        diesel::sql_query(format!("NOTIFY {CHANNEL}")).execute(&mut conn),
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
