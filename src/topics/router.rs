//! The node's topic router: topic -> the sessions subscribed to it here.
//!
//! Each topic with a local subscriber has ONE hub listener (the router's id), routed to one of
//! `SHARDS` tasks by the topic's hash, so one topic's events are handled in order by one task.
//! A shard reads an event's head once (its id, whether it is retained), drops an id it already
//! delivered for that topic (the relay is at-least-once), and pushes the SAME shared frame to
//! every subscribed session's queue: one serialisation per event, none per session.
//!
//! The router's state is split the same way: each shard holds its own topics (subscribers,
//! recent ids, retained value) under its own lock, so a shard fanning out one topic's event to
//! 10,000 sessions holds only that shard, and a subscribe to a topic of another shard, or an
//! event of another shard, does not wait for it. The sessions' own book-keeping (their topics,
//! their holders' caps) is under one more lock, `members`, which the fan-out never takes; a
//! path that needs both takes `members` first, then a shard.
//!
//! Sessions talk to the router directly (their own task, no actor, no database): subscribing
//! registers the route at once; the subscription becomes live when the session gets its `ack`
//! and, right after it, each topic's retained value (see `finish`). Events in between update
//! the retained cache, so the value sent after the `ack` is the newest there is.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};

use super::retained::{Cached, Retained};
use crate::broker::{Envelope, Head, Hub, HubMsg};
use crate::config::Settings;
use crate::db::DbPool;
use crate::store::topic_retained;
use crate::wire::outbound::SessionTx;
use crate::wire::protocol::{self, close};

/// Most topics one session may hold.
pub const MAX_TOPICS_PER_SESSION: usize = 500;
/// Most distinct topics one user's sessions on one node may hold together.
pub const MAX_TOPICS_PER_USER: usize = 1000;
/// Event ids remembered per topic to drop a second delivery of the same event.
pub const RECENT_IDS: usize = 64;
/// Tasks routing topic events (a topic always goes to the same one).
pub const SHARDS: usize = 4;
/// Each shard's hub mailbox: a burst of this many events for one shard waits; beyond it events
/// are dropped (counted in `notifyd_hub_dropped_total`): live topic delivery is at-most-once.
pub const SHARD_MAILBOX: usize = 8192;
/// How long a subscribe waits for a database permit to read retained values.
const RETAINED_WAIT: Duration = Duration::from_secs(5);

struct Sub {
    tx: SessionTx,
    /// False until the session got its `ack` (and retained values): see the module comment.
    live: bool,
    /// The id of the retained value this session was sent when it went live: the topic as of
    /// that event. An event with an id up to it is older (ids are UUIDv7, ordered by creation)
    /// and is not sent: the value may have been read from PostgreSQL before the relay published
    /// it and the events before it, which would otherwise arrive after it (an old stock shown
    /// after the current one, the current one twice). Cleared by the first newer event.
    floor: Option<Arc<str>>,
}

#[derive(Default)]
struct Topic {
    subs: HashMap<u64, Sub>,
    recent: VecDeque<Arc<str>>,
    retained: Cached,
}

/// Whose cap a session's topics count against on this node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Holder {
    /// A token holder: at most `MAX_TOPICS_PER_USER` distinct topics per user.
    User(String),
    /// An anonymous viewer, by its client address key (`public::client_key`): at most
    /// `NOTIFYD_MAX_ANON_TOPICS_PER_IP` distinct topics per address, so one address cannot make
    /// the node hold a broker channel for every name it can think of.
    Address(String),
}

struct Session {
    tx: SessionTx,
    /// `None` until an anonymous session's first subscribe (`open_anonymous` does not know its
    /// address); a user's session is known from its first subscribe, with its holder.
    holder: Option<Holder>,
    topics: HashSet<String>,
}

impl Session {
    fn anonymous(&self) -> bool {
        !matches!(self.holder, Some(Holder::User(_)))
    }
}

/// One shard's topics.
type Topics = HashMap<String, Topic>;

/// The sessions known to the router and what their holders hold.
#[derive(Default)]
struct Members {
    sessions: HashMap<u64, Session>,
    /// holder -> topic -> how many of the holder's sessions here hold it (the per-user and
    /// per-address caps count its distinct topics).
    held: HashMap<Holder, HashMap<String, usize>>,
}

pub struct Router {
    members: Mutex<Members>,
    /// `SHARDS` topic maps, a topic in the one `shard_of` names.
    topics: Vec<Mutex<Topics>>,
    /// Topics in all shards together (the `notifyd_topics_local` gauge), kept beside them so
    /// that reading it locks no shard.
    local_topics: AtomicUsize,
    hub: Arc<Hub>,
    settings: Arc<Settings>,
    /// The router's listener id on the hub (the same for every topic channel).
    listener: u64,
    shards: Vec<mpsc::Sender<HubMsg>>,
    store: RetainedStore,
}

/// Where a subscribe reads the retained values this node does not know yet.
pub struct RetainedStore {
    pub pool: DbPool,
    /// The node's permits for database work on sessions' behalf (the gateway's
    /// `db_commands`, shared with inbox commands), so subscribes cannot take the whole pool.
    pub permits: Arc<Semaphore>,
}

/// A subscribe registered but not yet answered (see `Router::finish`).
pub struct Pending {
    session: u64,
    topics: Vec<String>,
    /// The hub ticket to wait for when a topic needed a SUBSCRIBE.
    ticket: Option<u64>,
}

/// Why a subscribe was refused: the `error` frame's code and message.
pub type Refusal = (&'static str, String);

impl Router {
    /// The router and its shards' mailboxes (run each with `run_shard`).
    pub fn new(
        hub: Arc<Hub>,
        settings: Arc<Settings>,
        listener: u64,
        store: RetainedStore,
    ) -> (Arc<Router>, Vec<mpsc::Receiver<HubMsg>>) {
        let (txs, rxs) = (0..SHARDS).map(|_| mpsc::channel(SHARD_MAILBOX)).unzip();
        let router = Router {
            members: Mutex::new(Members::default()),
            topics: (0..SHARDS).map(|_| Mutex::new(Topics::new())).collect(),
            local_topics: AtomicUsize::new(0),
            hub,
            settings,
            listener,
            shards: txs,
            store,
        };
        (Arc::new(router), rxs)
    }

    fn members(&self) -> MutexGuard<'_, Members> {
        self.members.lock()
    }

    /// The topics of `topic`'s shard (where `topic` is, if this node holds it).
    fn shard(&self, topic: &str) -> MutexGuard<'_, Topics> {
        self.topics[shard_of(topic)].lock()
    }

    /// Counts a topic this node starts or stops holding, and sets the gauge.
    fn count_topics(&self, added: bool) {
        let n = if added {
            self.local_topics.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.local_topics.fetch_sub(1, Ordering::Relaxed) - 1
        };
        metrics::gauge!("notifyd_topics_local").set(n as f64);
    }

    /// Routes one shard's events until shutdown.
    pub async fn run_shard(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<HubMsg>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(HubMsg::Message { channel, envelope }) => {
                        if let Some(topic) = self.settings.topic_of_channel(&channel) {
                            self.on_event(topic, envelope);
                        }
                    }
                    Some(HubMsg::Resync) => self.on_resync(),
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    }

    /// A new anonymous session: known to the router from its start, so that shutdown closes
    /// it through the router. (A user's session is known from its first `subscribe`: most
    /// never subscribe, and an idle node holds one entry per socket otherwise.)
    pub fn open_anonymous(&self, tx: &SessionTx) {
        self.members().sessions.insert(
            tx.id,
            Session {
                tx: tx.clone(),
                holder: None,
                topics: HashSet::new(),
            },
        );
    }

    /// The session ended: it leaves every topic.
    pub fn leave(&self, session: u64) {
        let mut members = self.members();
        if let Some(s) = members.sessions.get(&session) {
            let topics: Vec<String> = s.topics.iter().cloned().collect();
            self.drop_topics(&mut members, session, &topics);
        }
        members.sessions.remove(&session);
    }

    /// Closes every anonymous session with 1012 (users' sessions are closed by their actors).
    pub fn close_anonymous(&self) {
        for s in self.members().sessions.values() {
            if s.anonymous() {
                s.tx.close_with(close::GOING_AWAY_RESTART, "server restarting");
            }
        }
    }

    /// Registers the session `tx` (its topics counted against `holder`) on `topics` (the
    /// caller checked they are allowed) within the caps. Called from the session's own task,
    /// so never after its `leave`.
    pub fn subscribe(
        &self,
        tx: &SessionTx,
        holder: Holder,
        topics: &[String],
    ) -> Result<Pending, Refusal> {
        // Checked where every subscribing path ends (the socket's frames are checked when
        // parsed already): a name the rule refuses never becomes a Redis channel, a router key
        // or a retained-value lookup (a NUL failed that read in PostgreSQL).
        if let Some(Err(message)) = topics
            .iter()
            .map(|t| crate::model::topic::check_topic(t))
            .find(Result::is_err)
        {
            return Err(("validation_failed", message));
        }
        let session = tx.id;
        let mut guard = self.members();
        let members = &mut *guard;
        let s = members.sessions.entry(session).or_insert_with(|| Session {
            tx: tx.clone(),
            holder: None,
            topics: HashSet::new(),
        });
        // Set once: a session's topics are always counted against the same holder, so
        // `drop_topics` takes them off the count they were added to.
        let holder = s.holder.get_or_insert(holder);
        // Each topic once, in the order asked: it gets one ack entry and one retained value.
        let mut seen = HashSet::new();
        let topics: Vec<String> = topics
            .iter()
            .filter(|t| seen.insert(t.as_str()))
            .cloned()
            .collect();
        let fresh: Vec<&String> = topics.iter().filter(|t| !s.topics.contains(*t)).collect();
        if s.topics.len() + fresh.len() > MAX_TOPICS_PER_SESSION {
            metrics::counter!("notifyd_topics_refused_total", "limit" => "session").increment(1);
            return Err((
                "too_many_topics",
                format!("at most {MAX_TOPICS_PER_SESSION} topics per session"),
            ));
        }
        // Distinct topics: one the holder already holds (through another session) costs no
        // new channel, so it does not count again.
        let held = members.held.get(holder);
        let new = fresh
            .iter()
            .filter(|t| !held.is_some_and(|h| h.contains_key(t.as_str())))
            .count();
        let (max, limit, per) = match holder {
            Holder::User(_) => (MAX_TOPICS_PER_USER, "user", "per user"),
            Holder::Address(_) => (
                self.settings.max_anon_topics_per_ip,
                "address",
                "per client address for anonymous sessions",
            ),
        };
        if held.map_or(0, HashMap::len) + new > max {
            metrics::counter!("notifyd_topics_refused_total", "limit" => limit).increment(1);
            return Err((
                "too_many_topics",
                format!("at most {max} topics {per} on one node"),
            ));
        }
        let mut ticket = None;
        for t in fresh {
            s.topics.insert(t.clone());
            *members
                .held
                .entry(holder.clone())
                .or_default()
                .entry(t.clone())
                .or_default() += 1;
            let mut shard = self.shard(t);
            let topic = shard.entry(t.clone()).or_insert_with(|| {
                let mailbox = self.shards[shard_of(t)].clone();
                let channel = self.settings.topic_channel(t);
                ticket = ticket.max(self.hub.listen_now(
                    &channel,
                    self.listener,
                    Arc::new(mailbox),
                ));
                self.count_topics(true);
                Topic::default()
            });
            topic.subs.insert(
                session,
                Sub {
                    tx: s.tx.clone(),
                    live: false,
                    floor: None,
                },
            );
        }
        Ok(Pending {
            session,
            topics,
            ticket,
        })
    }

    /// Answers a registered subscribe: waits for Redis to confirm new topic channels (bounded),
    /// reads the retained values this node does not know yet from PostgreSQL, then sends the
    /// `ack` (unless `r#ref` is `None`: an SSE stream's topics, subscribed as it opened, get
    /// none) followed by each topic's retained event, and makes the subscriptions live.
    pub async fn finish(&self, p: Pending, r#ref: Option<Value>) {
        if let Some(ticket) = p.ticket {
            self.hub.confirmed(ticket).await;
        }
        let unknown: Vec<String> = p
            .topics
            .iter()
            .filter(|t| {
                self.shard(t)
                    .get(*t)
                    .is_some_and(|e| matches!(e.retained, Cached::Unknown))
            })
            .cloned()
            .collect();
        if !unknown.is_empty() {
            self.read_retained(unknown).await;
        }
        // `members` is held until every topic is live, as one lock was before the shards had
        // their own: nothing of this session's subscriptions changes meanwhile.
        let members = self.members();
        let Some(tx) = members.sessions.get(&p.session).map(|s| s.tx.clone()) else {
            return;
        };
        if let Some(r#ref) = r#ref {
            tx.push_json(&protocol::ack(&r#ref, json!({ "topics": p.topics })));
        }
        let now = chrono::Utc::now();
        for t in &p.topics {
            // Live and the retained value under the shard's lock: the topic's next event
            // reaches the session after its retained value, never before.
            let mut shard = self.shard(t);
            let Some(topic) = shard.get_mut(t) else {
                continue;
            };
            let Some(sub) = topic.subs.get_mut(&p.session) else {
                continue; // unsubscribed meanwhile
            };
            sub.live = true;
            if let Some((id, frame)) = topic.retained.current(now) {
                metrics::counter!("notifyd_topic_retained_sent_total").increment(1);
                sub.floor = Some(id);
                tx.push(frame);
            }
        }
    }

    async fn read_retained(&self, topics: Vec<String>) {
        let permit =
            tokio::time::timeout(RETAINED_WAIT, self.store.permits.clone().acquire_owned()).await;
        let Ok(Ok(_permit)) = permit else {
            metrics::counter!("notifyd_topic_retained_read_failures_total").increment(1);
            return;
        };
        let rows = crate::db::run(
            &self.store.pool,
            self.settings.db_request_timeout,
            async |conn| Ok(topic_retained::get_many(conn, &topics).await?),
        )
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                metrics::counter!("notifyd_topic_retained_read_failures_total").increment(1);
                tracing::warn!(error = %e, "reading retained topic values failed");
                return;
            }
        };
        let mut by_topic: HashMap<String, topic_retained::Retained> =
            rows.into_iter().map(|r| (r.topic.clone(), r)).collect();
        for t in topics {
            let mut shard = self.shard(&t);
            let Some(topic) = shard.get_mut(&t) else {
                continue;
            };
            match by_topic.remove(&t) {
                Some(row) => topic
                    .retained
                    .offer(Retained::of(row.id, row.frame, row.expires_at)),
                None => {
                    if matches!(topic.retained, Cached::Unknown) {
                        topic.retained = Cached::Nothing;
                    }
                }
            }
        }
    }

    pub fn unsubscribe(&self, session: u64, topics: &[String]) {
        let mut members = self.members();
        self.drop_topics(&mut members, session, topics);
    }

    /// A renewed token: the topics it no longer allows (`keep` false) are dropped at once and
    /// returned.
    pub fn revoke(&self, session: u64, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let mut members = self.members();
        let revoked: Vec<String> = match members.sessions.get(&session) {
            Some(s) => s.topics.iter().filter(|t| !keep(t)).cloned().collect(),
            None => vec![],
        };
        self.drop_topics(&mut members, session, &revoked);
        revoked
    }

    /// Takes `session` off `topics`; a topic left without local subscribers is unlistened at
    /// once (in order with any later subscribe: both run under `members` and the topic's shard).
    fn drop_topics(&self, members: &mut Members, session: u64, topics: &[String]) {
        let Some(s) = members.sessions.get_mut(&session) else {
            return;
        };
        for t in topics {
            if !s.topics.remove(t) {
                continue;
            }
            if let Some(holder) = &s.holder {
                if let Some(held) = members.held.get_mut(holder) {
                    if let Some(n) = held.get_mut(t) {
                        *n -= 1;
                        if *n == 0 {
                            held.remove(t);
                        }
                    }
                    if held.is_empty() {
                        members.held.remove(holder);
                    }
                }
            }
            let mut shard = self.shard(t);
            if let Some(topic) = shard.get_mut(t) {
                topic.subs.remove(&session);
                if topic.subs.is_empty() {
                    shard.remove(t);
                    self.hub
                        .unlisten(&self.settings.topic_channel(t), self.listener);
                    self.count_topics(false);
                }
            }
        }
    }

    /// One event from the broker for `topic`: dedupe, cache if retained, fan out. The envelope's
    /// header says what this needs (id, retained); the frame goes out as it came.
    fn on_event(&self, topic: &str, envelope: Envelope) {
        let Head::Topic { id, retain } = envelope.head else {
            tracing::debug!(topic, "not a topic event on a topic channel");
            return;
        };
        let frame = envelope.frame;
        let retained = retain.then(|| {
            let until = chrono::Utc::now()
                + chrono::Duration::from_std(self.settings.topic_retain)
                    .unwrap_or(chrono::Duration::days(1));
            Retained::live(id.clone(), &frame, until)
        });
        let mut shard = self.shard(topic);
        let Some(t) = shard.get_mut(topic) else {
            return;
        };
        if t.recent.iter().any(|r| *r == id) {
            metrics::counter!("notifyd_topic_duplicates_dropped_total").increment(1);
            return;
        }
        if t.recent.len() == RECENT_IDS {
            t.recent.pop_front();
        }
        t.recent.push_back(id.clone());
        if let Some(r) = retained {
            t.retained.offer(r);
        }
        let mut sent = 0u64;
        for sub in t.subs.values_mut().filter(|s| s.live) {
            if let Some(floor) = &sub.floor {
                if *id <= **floor {
                    metrics::counter!("notifyd_topic_older_than_retained_dropped_total")
                        .increment(1);
                    continue;
                }
                sub.floor = None;
            }
            // A full queue closes that session (4008); its task then leaves the topic.
            sub.tx.push(frame.clone());
            sent += 1;
        }
        metrics::counter!("notifyd_topic_events_routed_total").increment(1);
        metrics::counter!("notifyd_topic_frames_total").increment(sent);
    }

    /// The broker reconnected: retained values may have been missed; read them afresh.
    fn on_resync(&self) {
        for shard in &self.topics {
            for t in shard.lock().values_mut() {
                t.retained = Cached::Unknown;
            }
        }
    }

    /// Sessions subscribed (live or pending) to `topic` on this node.
    pub fn subscribers(&self, topic: &str) -> usize {
        self.shard(topic).get(topic).map_or(0, |t| t.subs.len())
    }
}

fn shard_of(topic: &str) -> usize {
    let mut h = DefaultHasher::new();
    topic.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each shard's state has its own lock: while one shard holds its topics (as a fan-out to
    /// 10,000 sessions does), a subscribe to a topic of another shard, and that topic's events,
    /// go ahead.
    #[test]
    fn a_shard_busy_fanning_out_holds_back_no_other_shard() {
        let settings = Settings::new("postgres://unused");
        let store = RetainedStore {
            pool: crate::db::pool(
                &settings.database_url,
                1,
                crate::db::Limits::from_settings(&settings),
            )
            .expect("a pool connects lazily"),
            permits: Arc::new(Semaphore::new(1)),
        };
        let (router, _mailboxes) = Router::new(Hub::new(), Arc::new(settings), 1, store);
        let busy = "room:0".to_string();
        let other = (1..)
            .map(|i| format!("room:{i}"))
            .find(|t| shard_of(t) != shard_of(&busy))
            .expect("topics spread over the shards");
        let held = router.topics[shard_of(&busy)].lock();
        let (done, finished) = std::sync::mpsc::channel();
        let r = router.clone();
        std::thread::spawn(move || {
            let tx = SessionTx::new(7, crate::wire::outbound::Transport::Ws);
            let subscribed = r
                .subscribe(&tx, Holder::User("u".into()), std::slice::from_ref(&other))
                .is_ok();
            r.on_event(&other, Envelope::topic("e1", false, r#"{"id":"e1"}"#));
            let _ = done.send((subscribed, r.subscribers(&other)));
        });
        let got = finished.recv_timeout(Duration::from_secs(5));
        drop(held);
        assert_eq!(got, Ok((true, 1)));
    }
}
