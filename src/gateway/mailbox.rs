//! What a user's actor is told: by the registry (joins, committed changes, the audit, shutdown)
//! and by the user's sessions (inbox commands, departures). Topics do not pass through it
//! (`topics::router`).

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::outbound::SessionTx;
use super::protocol::ClientFrame;
use crate::inbox::CommittedEvent;

/// Messages waiting for one user's actor. Everything that enqueues uses `try_send` (a full
/// mailbox answers `busy`, refuses a join, or drops an event that the seq-gap repair and the
/// audit recover from PostgreSQL) except a session's departure, which waits for room.
pub const ACTOR_MAILBOX: usize = 256;

// Every variant is at most a word of payload: a mailbox allocates its slots in blocks of 32
// messages of the largest variant's size, one block per connected user even when idle (16-byte
// messages: a 512-byte block; before boxing, the largest frames made it ~5 KiB, then 2 KiB).
pub enum ActorMsg {
    Join(Box<Join>),
    Leave {
        session: u64,
    },
    Command(Box<SessionCommand>),
    /// A change this node just committed: delivered at once, ahead of the relay's copy.
    Committed(Box<CommittedEvent>),
    /// The user was erased by a request on this node: reset the sessions now, before the
    /// node's next committed change of the new inbox (the relayed notice follows for the rest).
    Erased,
    /// The audit read the user's current seq from the database: repair if anything is missing.
    Audit(i64),
    /// The node is stopping: close every session with 1012.
    Shutdown,
}

pub struct Join {
    pub session: SessionTx,
    pub since: Option<i64>,
    /// Fired once `hello` (and `sync`) are queued for the session.
    pub joined: oneshot::Sender<()>,
}

pub struct SessionCommand {
    pub session: u64,
    pub frame: ClientFrame,
    /// One of the session's command slots, released when the command is answered.
    pub slot: OwnedSemaphorePermit,
}
