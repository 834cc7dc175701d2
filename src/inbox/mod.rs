//! Inbox changes and reads. Each change runs in ONE transaction: message rows, the user's
//! counters, the event-log row and the outbox entry commit together or not at all.

pub mod changes;
pub mod commands;
pub mod create;
pub mod direct;
pub mod erase;
pub mod frames;
pub mod local;
pub mod snooze;

use serde::Serialize;
use utoipa::ToSchema;

use crate::store::inbox_state::Counters;

/// What a user-facing change answers with (contract §4): the user's last `seq` and counts.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
pub struct CountsView {
    pub seq: i64,
    pub unread: i64,
    pub unseen: i64,
}

impl From<Counters> for CountsView {
    fn from(c: Counters) -> Self {
        CountsView {
            seq: c.seq,
            unread: c.unread,
            unseen: c.unseen,
        }
    }
}

/// An event that was committed with a user's seq: handed to local sessions at once (the relay
/// delivers it too; the duplicate is dropped by seq).
#[derive(Debug, Clone)]
pub struct CommittedEvent {
    pub user: String,
    pub envelope: crate::broker::Envelope,
}

/// How long a WebSocket command (an inbox command, a direct message) waits for one of the node's
/// database command permits.
pub const COMMAND_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// "Now" at PostgreSQL's precision (microseconds), so a timestamp in an event frame is exactly
/// the one the row stores.
pub fn db_now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}
