//! One actor per connected user per node: it owns the user's sessions, receives the user's events
//! from the broker, and delivers them to every session in seq order with no hole and no duplicate.
//!
//! `last_seq` is the highest seq the actor has delivered. An event at `last_seq + 1` goes straight
//! out; one at or below `last_seq` is a duplicate and is dropped; one further ahead means an event
//! was lost on the way, and the actor reads the missing ones from the event log first. Every event
//! the broker carries was committed before it was published, and a user's events commit in seq
//! order, so the log always holds the missing ones.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::protocol::{self, close, ClientFrame, MAX_TOPICS_PER_SESSION};
use super::session::{Push, SessionTx};
use crate::auth::jwt::UserClaims;
use crate::broker::HubMsg;
use crate::error::ApiError;
use crate::inbox::changes::{self, Changes};
use crate::inbox::commands::{self, Command};
use crate::inbox::{CommittedEvent, CountsView};
use crate::state::AppState;
use crate::store::events;

pub enum ActorMsg {
    Join {
        session: SessionTx,
        claims: UserClaims,
        since: Option<i64>,
    },
    Leave {
        session: u64,
    },
    Command {
        session: u64,
        frame: ClientFrame,
    },
    /// A change this node just committed: delivered at once, ahead of the relay's copy.
    Committed(CommittedEvent),
    /// The audit read the user's current seq from the database: repair if anything is missing.
    Audit(i64),
    /// The node is stopping: close every session with 1012.
    Shutdown,
}

struct Session {
    tx: SessionTx,
    claims: UserClaims,
    /// Highest seq this session has been sent (its `hello`/`sync` seq, then each event).
    cursor: i64,
    topics: HashSet<String>,
}

struct Actor {
    state: AppState,
    user: String,
    id: u64,
    me: mpsc::UnboundedSender<ActorMsg>,
    hub_tx: mpsc::Sender<HubMsg>,
    channel: String,
    last_seq: i64,
    sessions: HashMap<u64, Session>,
    /// topic -> sessions subscribed to it on this node
    topics: HashMap<String, HashSet<u64>>,
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: i64,
    /// Present on `message.created`: its `send_time` gives the end-to-end delivery latency.
    message: Option<SendTime>,
}

#[derive(Deserialize)]
struct SendTime {
    send_time: chrono::DateTime<chrono::Utc>,
}

pub async fn run(
    state: AppState,
    user: String,
    id: u64,
    me: mpsc::UnboundedSender<ActorMsg>,
    mut rx: mpsc::UnboundedReceiver<ActorMsg>,
) {
    let (hub_tx, mut hub_rx) = mpsc::channel(crate::broker::hub::LISTENER_MAILBOX);
    let channel = state.settings.user_channel(&user);
    // Subscribe first, then read: whatever commits after the read arrives through the broker.
    state.hub.listen(&channel, id, hub_tx.clone()).await;
    metrics::gauge!("notifyd_users_online").increment(1.0);
    // last_seq is unknown (-1) until the first join reads the inbox.
    let mut actor = Actor {
        state,
        user,
        id,
        me,
        hub_tx,
        channel,
        last_seq: -1,
        sessions: HashMap::new(),
        topics: HashMap::new(),
    };
    loop {
        tokio::select! {
            biased;
            msg = rx.recv() => match msg {
                Some(ActorMsg::Shutdown) | None => {
                    for s in actor.sessions.values() {
                        s.tx.close_with(close::GOING_AWAY_RESTART, "server restarting");
                    }
                    metrics::gauge!("notifyd_ws_connections").decrement(actor.sessions.len() as f64);
                    actor.sessions.clear();
                }
                Some(msg) => actor.handle(msg).await,
            },
            Some(msg) = hub_rx.recv() => actor.on_hub(msg).await,
        }
        if actor.sessions.is_empty() {
            let (state, user, id) = (actor.state.clone(), actor.user.clone(), actor.id);
            if state.gateway.try_retire(&user, id, || rx.is_empty()) {
                break;
            }
        }
    }
    for topic in actor.topics.keys() {
        actor
            .state
            .hub
            .unlisten(&actor.state.settings.topic_channel(topic), actor.id)
            .await;
    }
    actor.state.hub.unlisten(&actor.channel, actor.id).await;
    actor.state.presence.set(&actor.user, 0);
    metrics::gauge!("notifyd_users_online").decrement(1.0);
}

impl Actor {
    async fn current(&self) -> Result<CountsView, ApiError> {
        let mut conn = self.state.pool.get().await?;
        Ok(changes::counts(&mut conn, &self.user).await?.into())
    }

    async fn handle(&mut self, msg: ActorMsg) {
        match msg {
            ActorMsg::Join {
                session,
                claims,
                since,
            } => self.join(session, claims, since).await,
            ActorMsg::Leave { session } => self.remove(session),
            ActorMsg::Command { session, frame } => self.command(session, frame).await,
            ActorMsg::Committed(ev) => {
                let payload: Arc<str> = Arc::from(ev.frame.to_string());
                self.on_event(ev.seq, payload).await;
            }
            ActorMsg::Audit(seq) => {
                if !self.sessions.is_empty() && seq > self.last_seq {
                    metrics::counter!("notifyd_audit_repairs_total").increment(1);
                    self.repair(seq).await;
                }
            }
            ActorMsg::Shutdown => {}
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(s) = self.sessions.remove(&id) {
            s.tx.close_with(1000, "closed");
            for t in &s.topics {
                if let Some(set) = self.topics.get_mut(t) {
                    set.remove(&id);
                }
            }
            metrics::gauge!("notifyd_ws_connections").decrement(1.0);
            self.state.presence.set(&self.user, self.sessions.len());
        }
        self.drop_idle_topics_later();
    }

    /// Topics no session wants any more are unsubscribed (in a task, so the actor never waits on it).
    fn drop_idle_topics_later(&mut self) {
        let idle: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, s)| s.is_empty())
            .map(|(t, _)| t.clone())
            .collect();
        for t in idle {
            self.topics.remove(&t);
            let hub = self.state.hub.clone();
            let channel = self.state.settings.topic_channel(&t);
            let id = self.id;
            tokio::spawn(async move { hub.unlisten(&channel, id).await });
        }
    }

    async fn join(&mut self, tx: SessionTx, claims: UserClaims, since: Option<i64>) {
        let read = async {
            let mut conn = self.state.pool.get().await?;
            match since {
                Some(n) => changes::since(&mut conn, &self.user, n).await,
                None => {
                    let c = changes::counts(&mut conn, &self.user).await?;
                    Ok(Changes::Events {
                        seq: c.seq,
                        unread: c.unread,
                        unseen: c.unseen,
                        events: vec![],
                    })
                }
            }
        };
        let snapshot = match read.await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, user = %self.user, "join failed to read the inbox");
                tx.close_with(1011, "database unavailable");
                return;
            }
        };
        let counts = match &snapshot {
            Changes::Events {
                seq,
                unread,
                unseen,
                ..
            }
            | Changes::Reset {
                seq,
                unread,
                unseen,
                ..
            } => CountsView {
                seq: *seq,
                unread: *unread,
                unseen: *unseen,
            },
        };
        // Bring the sessions already here up to the snapshot before the new one joins at it.
        if self.sessions.is_empty() {
            self.last_seq = self.last_seq.max(counts.seq);
        } else if counts.seq > self.last_seq {
            self.repair(counts.seq).await;
        }
        let heartbeat_s = self.state.settings.heartbeat.as_secs().max(1);
        if let Push::Dropped = tx.push_json(&protocol::hello(&self.user, counts, heartbeat_s)) {
            return;
        }
        if let Some(sync) = protocol::sync(&snapshot) {
            if let Push::Dropped = tx.push_json(&sync) {
                return;
            }
        }
        metrics::gauge!("notifyd_ws_connections").increment(1.0);
        self.sessions.insert(
            tx.id,
            Session {
                tx,
                claims,
                cursor: counts.seq,
                topics: HashSet::new(),
            },
        );
        self.state.presence.set(&self.user, self.sessions.len());
    }

    async fn on_hub(&mut self, msg: HubMsg) {
        match msg {
            HubMsg::Message { channel, payload } => {
                if *channel == *self.channel {
                    match serde_json::from_str::<SeqOnly>(&payload) {
                        Ok(SeqOnly { seq, message }) => {
                            if let Some(m) = message {
                                let latency = (chrono::Utc::now() - m.send_time)
                                    .num_microseconds()
                                    .unwrap_or(0);
                                metrics::histogram!("notifyd_delivery_latency_seconds")
                                    .record(latency.max(0) as f64 / 1e6);
                            }
                            self.on_event(seq, payload).await
                        }
                        Err(e) => tracing::warn!(error = %e, "event without seq on a user channel"),
                    }
                } else if let Some(topic) = self.state.settings.topic_of_channel(&channel) {
                    self.on_topic(topic, payload);
                }
            }
            HubMsg::Resync if self.sessions.is_empty() => {}
            HubMsg::Resync => match self.current().await {
                Ok(c) if c.seq > self.last_seq => self.repair(c.seq).await,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, user = %self.user, "resync failed"),
            },
        }
    }

    async fn on_event(&mut self, seq: i64, payload: Arc<str>) {
        if self.sessions.is_empty() {
            return; // nobody to deliver to; the next join reads the inbox afresh
        }
        if seq <= self.last_seq {
            metrics::counter!("notifyd_duplicate_events_dropped_total").increment(1);
            return;
        }
        if seq > self.last_seq + 1 {
            metrics::counter!("notifyd_gaps_repaired_total").increment(1);
            self.repair(seq).await;
            return;
        }
        self.deliver(seq, payload);
    }

    /// Delivers everything in `(last_seq, upto]` from the event log, in order.
    async fn repair(&mut self, upto: i64) {
        while self.last_seq < upto {
            let rows = async {
                let mut conn = self.state.pool.get().await?;
                Ok::<_, ApiError>(
                    events::range(&mut conn, &self.user, self.last_seq, Some(upto), 500).await?,
                )
            };
            match rows.await {
                Ok(rows) if rows.first().map(|r| r.0) == Some(self.last_seq + 1) => {
                    for (seq, payload) in rows {
                        self.deliver(seq, Arc::from(payload.to_string()));
                    }
                }
                Ok(_) => {
                    // The log no longer holds what these sessions missed: they must resume and reset.
                    tracing::warn!(user = %self.user, from = self.last_seq, upto, "events missing from the log; closing sessions");
                    for s in self.sessions.values() {
                        s.tx.close_with(close::SLOW_CONSUMER, "fell behind: resume with since");
                    }
                    self.sessions.clear();
                    self.last_seq = upto;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, user = %self.user, "gap repair failed; will retry on the next event or resync");
                    return;
                }
            }
        }
    }

    fn deliver(&mut self, seq: i64, payload: Arc<str>) {
        self.last_seq = seq;
        let mut dropped = vec![];
        for (id, s) in self.sessions.iter_mut() {
            if s.cursor >= seq {
                continue;
            }
            s.cursor = seq;
            if let Push::Dropped = s.tx.push(payload.clone()) {
                dropped.push(*id);
            }
        }
        for id in dropped {
            self.remove(id);
        }
    }

    fn on_topic(&mut self, topic: &str, payload: Arc<str>) {
        let Some(ids) = self.topics.get(topic) else {
            return;
        };
        let mut dropped = vec![];
        for id in ids {
            if let Some(s) = self.sessions.get(id) {
                if let Push::Dropped = s.tx.push(payload.clone()) {
                    dropped.push(*id);
                }
            }
        }
        for id in dropped {
            self.remove(id);
        }
    }

    async fn command(&mut self, session: u64, frame: ClientFrame) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let tx = s.tx.clone();
        let cmd = match frame {
            ClientFrame::Read { ids, r#ref } => match commands::parse_ids(&ids) {
                Ok(ids) => (Command::Read(ids), r#ref),
                Err(e) => {
                    tx.push_json(&protocol::error(&r#ref, e.code(), &e.to_string()));
                    return;
                }
            },
            ClientFrame::ReadAll { r#ref } => (Command::ReadAll, r#ref),
            ClientFrame::SeenAll { r#ref } => (Command::SeenAll, r#ref),
            ClientFrame::Subscribe { topics, r#ref } => {
                return self.subscribe(session, topics, r#ref).await
            }
            ClientFrame::Unsubscribe { topics, r#ref } => {
                return self.unsubscribe(session, topics, r#ref)
            }
            ClientFrame::Ping { r#ref } => {
                tx.push_json(&protocol::pong(&r#ref));
                return;
            }
        };
        // The transaction runs beside the actor so a slow database never holds up delivery.
        let (state, user, me) = (self.state.clone(), self.user.clone(), self.me.clone());
        tokio::spawn(async move {
            let (cmd, r#ref) = cmd;
            let result = async {
                let mut conn = state.pool.get().await?;
                commands::run(&mut conn, &user, cmd).await
            }
            .await;
            match result {
                Ok(out) => {
                    if let Some(ev) = out.event {
                        state.waker.wake();
                        let _ = me.send(ActorMsg::Committed(ev));
                    }
                    tx.push_json(&protocol::ack(&r#ref, json!(out.counts)));
                }
                Err(e) => {
                    tx.push_json(&protocol::error(&r#ref, e.code(), &e.to_string()));
                }
            }
        });
    }

    async fn subscribe(&mut self, session: u64, topics: Vec<String>, r#ref: Value) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if let Some(bad) = topics.iter().find(|t| !s.claims.may_subscribe(t)) {
            s.tx.push_json(&protocol::error(
                &r#ref,
                "forbidden",
                &format!("token does not allow topic {bad:?}"),
            ));
            return;
        }
        if s.topics.len() + topics.len() > MAX_TOPICS_PER_SESSION {
            s.tx.push_json(&protocol::error(
                &r#ref,
                "too_many_topics",
                &format!("at most {MAX_TOPICS_PER_SESSION} topics per session"),
            ));
            return;
        }
        let tx = s.tx.clone();
        let mut new_channels = vec![];
        for t in &topics {
            s.topics.insert(t.clone());
            let set = self.topics.entry(t.clone()).or_default();
            if set.is_empty() {
                new_channels.push(self.state.settings.topic_channel(t));
            }
            set.insert(session);
        }
        for ch in new_channels {
            self.state
                .hub
                .listen(&ch, self.id, self.hub_tx.clone())
                .await;
        }
        tx.push_json(&protocol::ack(&r#ref, json!({ "topics": topics })));
    }

    fn unsubscribe(&mut self, session: u64, topics: Vec<String>, r#ref: Value) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        for t in &topics {
            s.topics.remove(t);
            if let Some(set) = self.topics.get_mut(t) {
                set.remove(&session);
            }
        }
        let tx = s.tx.clone();
        self.drop_idle_topics_later();
        tx.push_json(&protocol::ack(&r#ref, json!({ "topics": topics })));
    }
}
