//! The node's map from user id to that user's actor. Creating an actor and an actor deciding to
//! stop both happen under the registry lock, so a session joining at the moment the last one
//! leaves is never handed to an actor that is about to exit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::admission::Admission;
use super::catch_up::CatchUp;
use super::mailbox::{self, ActorMsg, Join, MailboxSender, Seen, TrySendError};
use super::sockets::SocketCounts;
use super::user_actor;
use crate::error::ApiError;
use crate::state::AppState;
use crate::wire::outbound::SessionTx;

struct Entry {
    id: u64,
    tx: MailboxSender,
}

pub struct Gateway {
    actors: Mutex<HashMap<String, Entry>>,
    /// Open WebSockets per user on this node.
    pub sockets: Arc<SocketCounts>,
    /// Open anonymous WebSockets per client IP on this node.
    pub anon_sockets: Arc<SocketCounts>,
    /// WebSocket commands running a database transaction at once on this node: fewer than the
    /// pool holds, so a flood of commands never takes every connection from REST callers.
    pub db_commands: Arc<Semaphore>,
    /// Joining sessions' reads (counters, missed events), batched across users.
    pub catch_up: CatchUp,
    /// Handshakes worked on at once and waiting for a turn (`NOTIFYD_WS_MAX_JOINING`,
    /// `NOTIFYD_WS_JOIN_QUEUE`, `NOTIFYD_WS_JOIN_WAIT`).
    pub admission: Admission,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    /// Actors and other long-lived tasks run on the main runtime, not on an HTTP worker's.
    runtime: tokio::runtime::Handle,
}

impl Gateway {
    pub fn new(
        runtime: tokio::runtime::Handle,
        db_pool_size: usize,
        catch_up: CatchUp,
        admission: Admission,
    ) -> Self {
        Gateway {
            actors: Mutex::new(HashMap::new()),
            sockets: Arc::new(SocketCounts::default()),
            anon_sockets: Arc::new(SocketCounts::default()),
            db_commands: Arc::new(Semaphore::new((db_pool_size / 2).max(1))),
            catch_up,
            admission,
            next_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            runtime,
        }
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn actors(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Entry>> {
        self.actors.lock()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    pub fn users_online(&self) -> usize {
        self.actors().len()
    }

    /// Every `audit_interval`, reads the current seq of every user connected here (1,000 per
    /// query) and hands it to their actors, which repair anything they are missing. The broker
    /// is the fast path; this bounds how long an event lost on it can stay missing when no
    /// later event for that user reveals the hole.
    pub async fn run_audit(
        self: std::sync::Arc<Self>,
        state: AppState,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(state.settings.audit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let users: Vec<(String, MailboxSender)> = self
                .actors()
                .iter()
                .map(|(u, e)| (u.clone(), e.tx.clone()))
                .collect();
            for chunk in users.chunks(1000) {
                let names: Vec<String> = chunk.iter().map(|(u, _)| u.clone()).collect();
                let seqs =
                    state.db(async |conn| Ok(crate::store::inbox_state::seqs(conn, &names).await?));
                match seqs.await {
                    Ok(seqs) => {
                        let by_user: HashMap<String, Seen> = seqs
                            .into_iter()
                            .map(|(u, seq, epoch)| (u, Seen { seq, epoch }))
                            .collect();
                        // A user without a counter row has seq 0 and epoch 0: never had a
                        // message, or was erased (then the actor resets its sessions if the
                        // erase notice was lost on the broker).
                        for (user, tx) in chunk {
                            let seen = by_user
                                .get(user)
                                .copied()
                                .unwrap_or(Seen { seq: 0, epoch: 0 });
                            let _ = tx.try_send(ActorMsg::Audit(Box::new(seen)));
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "audit skipped"),
                }
            }
        }
    }

    /// Hands a new session to the user's actor (starting one if needed); returns the actor's
    /// mailbox, and a receiver that fires once the session got its `hello`.
    pub fn join(
        &self,
        state: &Arc<AppState>,
        user: &str,
        session: SessionTx,
        since: Option<i64>,
        epoch: Option<i64>,
        turn: OwnedSemaphorePermit,
    ) -> Result<(MailboxSender, oneshot::Receiver<()>), ApiError> {
        let mut actors = self.actors();
        let user = user.to_string();
        let (joined_tx, joined) = oneshot::channel();
        let mut msg = ActorMsg::Join(Box::new(Join {
            session,
            since,
            epoch,
            turn: Some(turn),
            joined: joined_tx,
        }));
        if let Some(entry) = actors.get(&user) {
            match entry.tx.try_send(msg) {
                Ok(()) => return Ok((entry.tx.clone(), joined)),
                Err(TrySendError::Full(_)) => {
                    metrics::counter!("notifyd_ws_refused_total", "reason" => "actor_busy")
                        .increment(1);
                    return Err(ApiError::Unavailable(
                        "this user's sessions are busy; retry shortly".into(),
                    ));
                }
                // The actor died: start a fresh one.
                Err(TrySendError::Closed(back)) => msg = back,
            }
        }
        let (tx, rx) = mailbox::mailbox();
        let id = self.next_id();
        let _ = tx.try_send(msg);
        actors.insert(user.clone(), Entry { id, tx: tx.clone() });
        self.runtime
            .spawn(user_actor::run(Box::new(user_actor::Start {
                state: state.clone(),
                user,
                id,
                me: tx.clone(),
                rx,
            })));
        Ok((tx, joined))
    }

    /// Called by an actor with no sessions left: it may stop only if nothing is waiting in its
    /// mailbox (checked under the lock every `join` takes). Returns whether it was removed.
    pub fn try_retire(
        &self,
        user: &str,
        actor_id: u64,
        mailbox_empty: impl FnOnce() -> bool,
    ) -> bool {
        let mut actors = self.actors();
        match actors.get(user) {
            Some(e) if e.id == actor_id => {
                if mailbox_empty() {
                    actors.remove(user);
                    true
                } else {
                    false
                }
            }
            _ => true,
        }
    }

    /// Closes every session with 1012 so clients reconnect elsewhere, and refuses new ones.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        // Handshakes waiting for a turn are refused now, not when their wait ends.
        self.admission.close();
        for entry in self.actors().values() {
            let _ = entry.tx.send_always(ActorMsg::Shutdown);
        }
    }
}
