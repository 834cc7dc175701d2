//! Snooze wake-ups (contract §10): when a snooze's `until` passes, its messages come back into
//! the inbox, unread and unseen, as a `message.unsnoozed` event of their user.
//!
//! The pending wake-ups are the rows themselves (`snoozed_until`, indexed where set), so a
//! node's death loses none. Every node runs a waker: each tick it reads which users have a
//! due snooze, takes those users' counter rows with `FOR UPDATE SKIP LOCKED` (in user order)
//! and wakes their due messages in that one transaction, through the same `commands::apply` as
//! any inbox change, so the event gets the next seq and goes out through the outbox like every
//! other. Two nodes never emit one wake-up twice: a counter row is held by one of them, and the
//! other, once it has it, finds the rows already woken (`snoozed_until` cleared) and emits
//! nothing. A user held elsewhere (a command, a create) is skipped, never waited for, and
//! comes back at the next tick.

use std::time::Duration;

use diesel_async::AsyncConnection;
use tokio::sync::watch;

use super::commands::{self, Command};
use super::local::LocalDelivery;
use super::CommittedEvent;
use crate::db::{self, DbPool};
use crate::error::ApiError;
use crate::outbox::Waker;
use crate::store::{inbox_state, message_states, Conn};

/// How often a waker looks for due snoozes: a snooze wakes at most this late (plus the time a
/// round takes), on whichever node gets there first.
pub const TICK: Duration = Duration::from_secs(1);
/// Users woken per transaction (each user's event names at most `MAX_READ_IDS` messages; more
/// due at once come back in the next round).
pub const USERS_PER_ROUND: i64 = 100;

/// What one round did.
#[derive(Debug, Default)]
pub struct Round {
    /// Users found with a due snooze (at most `USERS_PER_ROUND`).
    pub due_users: usize,
    /// Messages woken.
    pub woken: usize,
    /// The committed `message.unsnoozed` events, one per user woken.
    pub events: Vec<CommittedEvent>,
}

/// One round in one transaction: users with a due snooze, those whose counter row is free,
/// their due messages woken.
pub async fn wake_round(conn: &mut Conn, users: i64) -> Result<Round, ApiError> {
    conn.transaction::<_, ApiError, _>(async |conn| {
        let due = message_states::due_users(conn, users).await?;
        if due.is_empty() {
            return Ok(Round::default());
        }
        let mut round = Round {
            due_users: due.len(),
            ..Round::default()
        };
        for (user, before) in inbox_state::lock_free(conn, &due).await? {
            let out = commands::apply(conn, &user, before, Command::Wake).await?;
            round.woken += out.changed;
            round.events.extend(out.event);
        }
        Ok(round)
    })
    .await
}

/// The waker task of one node.
pub struct SnoozeWaker {
    pub pool: DbPool,
    /// Bound on one round's transaction, on our side (`NOTIFYD_DB_REQUEST_TIMEOUT`).
    pub timeout: Duration,
    /// The relay, woken after a round that committed events.
    pub relay: Waker,
    /// This node's hub, for the events to sessions here at once.
    pub local: LocalDelivery,
}

impl SnoozeWaker {
    /// Runs until `shutdown` turns true. A round in flight is never cut short (its transaction
    /// finishes or times out); shutdown is checked between rounds.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            self.drain(&shutdown).await;
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Rounds while they find more due users than one round takes and wake some of them.
    async fn drain(&self, shutdown: &watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let round = db::run(&self.pool, self.timeout, async |conn| {
                wake_round(conn, USERS_PER_ROUND).await
            })
            .await;
            match round {
                Ok(r) => {
                    if r.events.is_empty() {
                        return;
                    }
                    self.relay.wake();
                    metrics::counter!("notifyd_snoozes_woken_total").increment(r.woken as u64);
                    for e in r.events {
                        self.local.deliver(&e.user, e.envelope);
                    }
                    if (r.due_users as i64) < USERS_PER_ROUND {
                        return;
                    }
                }
                Err(e) => {
                    metrics::counter!("notifyd_errors_total", "kind" => "snooze").increment(1);
                    tracing::warn!(error = %e, "waking snoozed messages failed; retrying at the next tick");
                    return;
                }
            }
        }
    }
}
