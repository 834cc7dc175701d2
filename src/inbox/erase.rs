//! Erasing a user (contract §9, GDPR): every row that holds their inbox goes in ONE transaction
//! — messages (live and soft-deleted), events, counters, queued outbox entries, the idempotency
//! keys they used as a sender, their entries in stored create answers, their preferences — and a reset notice is
//! queued for their open sockets on every node.
//!
//! The transaction takes the user's counter row first, like every change, so it is ordered
//! with them: a change that committed before is erased; a create waiting on the row inserts a
//! fresh one once the erase commits, and the user starts again as a new, empty inbox at seq 1.
//!
//! The new inbox gets a new epoch (`user_inbox_state.epoch`, see `broker::envelope`): its seqs
//! 1, 2, ... are never taken for the old inbox's, by a gateway (an event of another epoch resets
//! the sessions) or by a client that resumes with the old `since` and `epoch` (it gets a reset).
//! The notice (`Envelope::erased`) resets the sessions that are open now, whether or not the new
//! inbox ever has an event: relayed on the user's channel in order with their events (see
//! `outbox::enqueue_user_notice`), after the old inbox's last.

use diesel_async::AsyncConnection;
use serde_json::{json, Value};

use super::direct::SERVICE_PREFIX;
use crate::error::ApiError;
use crate::store::{events, idempotency, inbox_state, messages, outbox, preferences, push, Conn};

/// What one erasure removed, per table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Erased {
    /// Whether the user had an inbox (a counter row): only then are their sockets told.
    pub had_inbox: bool,
    pub messages: usize,
    pub events: usize,
    pub outbox: usize,
    pub idempotency_keys: usize,
}

/// The notice as versions before the envelope relayed it, for their relays during a rolling
/// upgrade (`outbox::enqueue_user_notice`): the `sync` reset of an empty inbox.
pub fn legacy_notice() -> Value {
    json!({"type": "sync", "reset": true, "seq": 0, "unread": 0, "unseen": 0})
}

pub async fn erase(conn: &mut Conn, user: &str) -> Result<Erased, ApiError> {
    conn.transaction::<_, ApiError, _>(async |conn| {
        let had_inbox = inbox_state::lock(conn, user).await?.is_some();
        let erased = Erased {
            had_inbox,
            messages: messages::erase_user(conn, user).await?,
            events: events::erase_user(conn, user).await?,
            outbox: outbox::erase_user(conn, user).await?,
            idempotency_keys: idempotency::erase_user(
                conn,
                user,
                &format!("{SERVICE_PREFIX}{user}"),
            )
            .await?,
        };
        inbox_state::erase(conn, user).await?;
        // Their browsers' push subscriptions (and pushes waiting) go with them.
        push::erase_user(conn, user).await?;
        // So are their preferences: a user who comes back starts with none.
        preferences::erase_user(conn, user).await?;
        if had_inbox {
            outbox::enqueue_user_notice(conn, user, &legacy_notice()).await?;
        }
        Ok(erased)
    })
    .await
}
