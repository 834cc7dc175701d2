//! The node's map from user id to that user's actor. Creating an actor and an actor deciding to
//! stop both happen under the registry lock, so a session joining at the moment the last one
//! leaves is never handed to an actor that is about to exit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::mpsc;

use super::session::SessionTx;
use super::user_actor::{self, ActorMsg};
use crate::auth::jwt::UserClaims;
use crate::state::AppState;

struct Entry {
    id: u64,
    tx: mpsc::UnboundedSender<ActorMsg>,
}

pub struct Gateway {
    actors: Mutex<HashMap<String, Entry>>,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    /// Actors and other long-lived tasks run on the main runtime, not on an HTTP worker's.
    runtime: tokio::runtime::Handle,
}

impl Gateway {
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        Gateway {
            actors: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            runtime,
        }
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn actors(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.actors.lock().unwrap_or_else(|p| p.into_inner())
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
            let users: Vec<(String, mpsc::UnboundedSender<ActorMsg>)> = self
                .actors()
                .iter()
                .map(|(u, e)| (u.clone(), e.tx.clone()))
                .collect();
            for chunk in users.chunks(1000) {
                let names: Vec<String> = chunk.iter().map(|(u, _)| u.clone()).collect();
                let seqs = async {
                    let mut conn = state.pool.get().await?;
                    Ok::<_, crate::error::ApiError>(
                        crate::store::inbox_state::seqs(&mut conn, &names).await?,
                    )
                };
                match seqs.await {
                    Ok(seqs) => {
                        let by_user: HashMap<String, i64> = seqs.into_iter().collect();
                        for (user, tx) in chunk {
                            if let Some(seq) = by_user.get(user) {
                                let _ = tx.send(ActorMsg::Audit(*seq));
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "audit skipped"),
                }
            }
        }
    }

    /// Hands a new session to the user's actor (starting one if needed); returns the actor's mailbox.
    pub fn join(
        &self,
        state: &AppState,
        claims: UserClaims,
        session: SessionTx,
        since: Option<i64>,
    ) -> mpsc::UnboundedSender<ActorMsg> {
        let mut actors = self.actors();
        let user = claims.user.clone();
        let mut msg = ActorMsg::Join {
            session,
            claims,
            since,
        };
        if let Some(entry) = actors.get(&user) {
            match entry.tx.send(msg) {
                Ok(()) => return entry.tx.clone(),
                Err(mpsc::error::SendError(back)) => msg = back, // the actor died: start a fresh one
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_id();
        let _ = tx.send(msg);
        actors.insert(user.clone(), Entry { id, tx: tx.clone() });
        self.runtime
            .spawn(user_actor::run(state.clone(), user, id, tx.clone(), rx));
        tx
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

    /// Hands a change committed on this node straight to the user's actor, if the user is
    /// connected here (the relay's copy follows and is dropped as a duplicate).
    pub fn committed(&self, ev: crate::inbox::CommittedEvent) {
        if let Some(entry) = self.actors().get(&ev.user) {
            let _ = entry.tx.send(ActorMsg::Committed(ev));
        }
    }

    /// Closes every session with 1012 so clients reconnect elsewhere, and refuses new ones.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        for entry in self.actors().values() {
            let _ = entry.tx.send(ActorMsg::Shutdown);
        }
    }
}
