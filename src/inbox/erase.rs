//! Erasing a user (contract §9, GDPR): every row that holds their inbox goes in ONE transaction
//! — messages (live and soft-deleted), events, counters, queued outbox entries, the idempotency
//! keys they used as a sender and their entries in stored create answers — and a reset notice is
//! queued for their open sockets on every node.
//!
//! The transaction takes the user's counter row first, like every change, so it is ordered
//! with them: a change that committed before is erased; a create waiting on the row inserts a
//! fresh one once the erase commits, and the user starts again as a new, empty inbox at seq 1.
//!
//! Why a notice, not silence: a gateway remembers the last seq it delivered (say 5). The new
//! inbox's events reuse seqs 1, 2, ... and, without a word, would look like duplicates (dropped)
//! and then, from seq 6 on, like the continuation of the old stream. The notice is relayed on
//! the user's channel in order with their events (see `outbox::enqueue_user_notice`): after the
//! old inbox's last event and before the new inbox's first, so every gateway resets its
//! sessions (a `sync` with `reset: true`) and then takes seq 1 as the next event.

use diesel_async::AsyncConnection;
use serde_json::{json, Value};

use super::direct::SERVICE_PREFIX;
use crate::error::ApiError;
use crate::store::{events, idempotency, inbox_state, messages, outbox, Conn};

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

/// The notice relayed to the user's sockets: exactly the `sync` reset a client gets for an empty
/// inbox. A gateway that reads it resets its sessions to the user's state at that moment.
pub fn notice() -> Value {
    json!({"type": "sync", "reset": true, "seq": 0, "unread": 0, "unseen": 0})
}

/// Whether a frame on a user's channel is the erase notice (events always have `seq >= 1`).
pub fn is_notice(kind: Option<&str>, reset: Option<bool>, seq: i64) -> bool {
    kind == Some("sync") && reset == Some(true) && seq == 0
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
        if had_inbox {
            outbox::enqueue_user_notice(conn, user, &notice()).await?;
        }
        Ok(erased)
    })
    .await
}
