//! What a user's actor is told: by the registry (joins, committed changes, the audit, shutdown),
//! by the broker's hub (the user's relayed events) and by the user's sessions (inbox commands,
//! departures), all in one mailbox. Topics do not pass through it (`topics::router`).

use std::sync::Arc;

pub use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::broker::hub::{self, HubMsg};
use crate::broker::Envelope;
use crate::wire::outbound::SessionTx;
use crate::wire::protocol::ClientFrame;
use crate::wire::queue::{Queue, Shared};

/// Messages waiting for one user's actor. Everything that enqueues uses `try_send` (a full
/// mailbox answers `busy`, refuses a join, or drops an event that the seq-gap repair and the
/// audit recover from PostgreSQL) except a session's departure and the node's shutdown, which
/// are always taken (`send_always`: one per session, one per node, so they stay bounded).
pub const ACTOR_MAILBOX: usize = 1024;

// Every variant is at most a word of payload: a mailbox allocates its slots in blocks of 32
// messages of the largest variant's size, one block per connected user even when idle (16-byte
// messages: a 512-byte block; before boxing, the largest frames made it ~5 KiB, then 2 KiB).
pub enum ActorMsg {
    Join(Box<Join>),
    Leave {
        session: u64,
    },
    Command(Box<SessionCommand>),
    /// An envelope on the user's channel: relayed by the broker, or handed over by this node
    /// right after its commit (`inbox::local`), ahead of the relay's copy.
    Event(Box<Envelope>),
    /// The broker connection was re-established: events may have been missed meanwhile.
    Resync,
    /// The audit read the user's inbox from the database: repair if anything is missing.
    Audit(Box<Seen>),
    /// The node is stopping: close every session with 1012.
    Shutdown,
}

/// A user's seq and inbox epoch as the database has them (0, 0: no inbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub seq: i64,
    pub epoch: i64,
}

pub struct Join {
    pub session: SessionTx,
    pub since: Option<i64>,
    /// The inbox epoch the client's `since` belongs to (from its `hello`), if it said.
    pub epoch: Option<i64>,
    /// The handshake's admission turn (`gateway::admission`), given back as soon as the join's
    /// catch-up read is queued: the turn bounds the handshakes' CPU work, and a join waiting
    /// for the database costs none (see `UserActor::join`).
    pub turn: Option<OwnedSemaphorePermit>,
    /// Fired once `hello` (and `sync`) are queued for the session.
    pub joined: oneshot::Sender<()>,
}

pub struct SessionCommand {
    pub session: u64,
    pub frame: ClientFrame,
    /// One of the session's command slots, released when the command is answered.
    pub slot: OwnedSemaphorePermit,
}

/// A user actor's mailbox: the edge's one queue primitive (`queue::Queue`), bounded in messages
/// (each is at most a word: there are no bytes to account), with a `closed` flag beside them.
/// One receiver, the actor; once it is gone every send is refused as `Closed`, so the registry
/// starts a fresh actor.
pub fn mailbox() -> (MailboxSender, MailboxReceiver) {
    let queue = Queue::new(false);
    (MailboxSender(queue.clone()), MailboxReceiver(queue))
}

/// The mailbox's queue (its state: whether the actor is gone).
type Inbox = Shared<ActorMsg, bool>;

fn put(inbox: &Inbox, msg: ActorMsg, bounded: bool) -> Result<(), TrySendError<ActorMsg>> {
    {
        let mut q = inbox.lock();
        if q.state {
            return Err(TrySendError::Closed(msg));
        }
        if bounded && q.len() >= ACTOR_MAILBOX {
            return Err(TrySendError::Full(msg));
        }
        q.push(msg, 0);
    }
    inbox.wake();
    Ok(())
}

#[derive(Clone)]
pub struct MailboxSender(Queue<ActorMsg, bool>);

impl MailboxSender {
    /// Queues `msg` unless the mailbox holds `ACTOR_MAILBOX` messages or the actor is gone.
    pub fn try_send(&self, msg: ActorMsg) -> Result<(), TrySendError<ActorMsg>> {
        put(&self.0, msg, true)
    }

    /// Queues `msg` past the bound (departures and shutdown only); refused once the actor is
    /// gone.
    pub fn send_always(&self, msg: ActorMsg) -> Result<(), TrySendError<ActorMsg>> {
        put(&self.0, msg, false)
    }
}

pub struct MailboxReceiver(Queue<ActorMsg, bool>);

impl MailboxReceiver {
    /// The next message, waiting for one.
    pub async fn recv(&self) -> ActorMsg {
        loop {
            if let Some(msg) = self.0.lock().pop(|_| 0) {
                return msg;
            }
            self.0.changed().await;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }
}

impl Drop for MailboxReceiver {
    fn drop(&mut self) {
        let msgs = {
            let mut q = self.0.lock();
            q.state = true;
            q.take_all()
        };
        // Dropped outside the lock: a queued join's `joined` sender tells its session no.
        drop(msgs);
    }
}

/// The actor's mailbox is also its hub listener: the user's channel delivers into it, so a
/// connected user costs one queue, not two, and relayed events, local deliveries and commands
/// meet the actor in one order.
impl hub::Mailbox for Inbox {
    fn offer(&self, msg: HubMsg) -> Result<(), hub::Refused> {
        let msg = match msg {
            HubMsg::Message { envelope, .. } => ActorMsg::Event(Box::new(envelope)),
            HubMsg::Resync => ActorMsg::Resync,
        };
        put(self, msg, true).map_err(|e| match e {
            TrySendError::Full(_) => hub::Refused::Full,
            TrySendError::Closed(_) => hub::Refused::Closed,
        })
    }
}

impl MailboxSender {
    /// This mailbox as the hub's listener (the same queue, no second allocation).
    pub fn hub_listener(&self) -> Arc<dyn hub::Mailbox> {
        self.0.arc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leave(session: u64) -> ActorMsg {
        ActorMsg::Leave { session }
    }

    fn audit(seq: i64) -> ActorMsg {
        ActorMsg::Audit(Box::new(Seen { seq, epoch: 1 }))
    }

    #[tokio::test]
    async fn a_full_mailbox_refuses_sends_but_always_takes_departures_in_order() {
        let (tx, rx) = mailbox();
        for i in 0..ACTOR_MAILBOX as u64 {
            assert!(tx.try_send(audit(i as i64)).is_ok());
        }
        assert!(matches!(tx.try_send(audit(-1)), Err(TrySendError::Full(_))));
        assert!(tx.send_always(leave(7)).is_ok());
        for i in 0..ACTOR_MAILBOX as i64 {
            assert!(matches!(rx.recv().await, ActorMsg::Audit(s) if s.seq == i));
        }
        assert!(matches!(rx.recv().await, ActorMsg::Leave { session: 7 }));
        assert!(rx.is_empty());
    }

    #[tokio::test]
    async fn a_message_sent_while_the_actor_waits_wakes_it() {
        let (tx, rx) = mailbox();
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        assert!(tx.try_send(ActorMsg::Resync).is_ok());
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert!(matches!(got, Ok(Ok(ActorMsg::Resync))));
    }

    #[tokio::test]
    async fn once_the_actor_is_gone_every_send_is_refused_and_waiting_joins_are_told_no() {
        let (tx, rx) = mailbox();
        let (joined_tx, joined) = oneshot::channel();
        let session =
            crate::wire::outbound::SessionTx::new(1, crate::wire::outbound::Transport::Ws);
        let join = Join {
            session,
            since: None,
            epoch: None,
            turn: None,
            joined: joined_tx,
        };
        assert!(tx.try_send(ActorMsg::Join(Box::new(join))).is_ok());
        drop(rx);
        assert!(joined.await.is_err(), "the queued join's session hears no");
        assert!(matches!(
            tx.try_send(ActorMsg::Resync),
            Err(TrySendError::Closed(_))
        ));
        assert!(matches!(
            tx.send_always(leave(1)),
            Err(TrySendError::Closed(_))
        ));
        assert!(matches!(
            tx.hub_listener().offer(HubMsg::Resync),
            Err(hub::Refused::Closed)
        ));
    }
}
