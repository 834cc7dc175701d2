//! A node's single subscriber: routes broker messages to the local listeners (user actors, the
//! topic router, the readiness canary), each through the `Mailbox` it gave when it listened.
//!
//! With Redis it holds ONE pub/sub connection outside the pool. `listen`/`unlisten` only change
//! the routing table and mark the channel dirty; the subscriber task alone talks to Redis: it
//! turns every dirty channel into one batched SUBSCRIBE / UNSUBSCRIBE (so the order on the wire
//! always follows the latest routing state, without a lock that joins would wait on), PINGs the
//! connection every few seconds, and bounds every command with a timeout.
//!
//! ANY failure (a timed-out PING, SUBSCRIBE or UNSUBSCRIBE, an error reply, the stream ending)
//! tears the connection down; the task reconnects, subscribes every channel still routed, and
//! tells every listener to `Resync` (re-read from PostgreSQL whatever it may have missed).
//!
//! On a Redis Cluster (`redis+cluster://`) the same loop runs over sharded pub/sub instead: see
//! `sharded` (SSUBSCRIBE on each channel's shard; any shard lost, moved or failed over is a
//! failure like the above, with the same reconnect and `Resync`).
//!
//! Listener mailboxes are bounded: a message for a full (or closed) mailbox is dropped and
//! counted in `notifyd_hub_dropped_total`; user actors repair dropped events from PostgreSQL
//! (seq gaps, the audit), so a slow actor never makes the hub buffer without bound.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;
use tokio::sync::{watch, Notify};

use super::envelope::Envelope;

mod sharded;

/// How often the subscriber PINGs Redis, and how long an answer may take. A half-open
/// connection is thus found within `PING_EVERY + COMMAND_TIMEOUT`.
pub const PING_EVERY: Duration = Duration::from_secs(3);
/// Bound on every command on the subscriber connection (PING, SUBSCRIBE, UNSUBSCRIBE).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on connecting (TCP + handshake) to Redis.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `listen` waits for the broker to confirm a SUBSCRIBE. A join never waits longer
/// on Redis: after that the actor goes on (it reads PostgreSQL next), and if the SUBSCRIBE
/// really failed the subscriber reconnects and sends `Resync`.
pub const LISTEN_WAIT: Duration = Duration::from_secs(2);
/// Channels per SUBSCRIBE / UNSUBSCRIBE command.
const SUBSCRIBE_BATCH: usize = 1000;
/// TCP keepalive on the subscriber connection: the kernel notices a peer that vanished even
/// when the PING cannot be written (and frees the socket).
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// Unacknowledged writes older than this close the socket (Linux `TCP_USER_TIMEOUT`).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub enum HubMsg {
    /// An envelope published on `channel` (its header read once, by the hub).
    Message {
        channel: Arc<str>,
        envelope: Envelope,
    },
    /// The broker connection was (re)established: anything may have been missed before it.
    Resync,
}

/// A listener's mailbox as the hub sees it: offered a message, it takes it or refuses it at
/// once (the hub never waits on a listener). A user actor's is its own mailbox (one queue per
/// connected user, not a second one for the broker); others are a channel of `HubMsg`.
pub trait Mailbox: Send + Sync {
    fn offer(&self, msg: HubMsg) -> Result<(), Refused>;
}

/// Why a mailbox did not take a message.
pub enum Refused {
    Full,
    Closed,
}

impl Mailbox for Sender<HubMsg> {
    fn offer(&self, msg: HubMsg) -> Result<(), Refused> {
        self.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Full,
            TrySendError::Closed(_) => Refused::Closed,
        })
    }
}

/// One channel's local listeners: each listener's id and mailbox.
type Listeners = Vec<(u64, Arc<dyn Mailbox>)>;

#[derive(Default)]
struct Routes {
    map: HashMap<String, Listeners>,
    /// Channels whose first listener arrived or last listener left since the subscriber last
    /// looked: it compares them with what Redis has and (un)subscribes the difference.
    dirty: HashSet<String>,
}

pub struct Hub {
    routes: Mutex<Routes>,
    /// True while the broker subscription is live (always true in single-node mode).
    connected: AtomicBool,
    /// True once a Redis subscriber task runs (false in single-node mode: nothing to wait for).
    redis: AtomicBool,
    /// Ticket of the last `listen` that needed a SUBSCRIBE (taken under the routes lock).
    requested: AtomicU64,
    /// The highest ticket whose SUBSCRIBE Redis confirmed (or that a disconnect released).
    done: watch::Sender<u64>,
    /// Wakes the subscriber task when channels turned dirty.
    dirty_wake: Notify,
    /// Listener ids for the readiness canary, from a range of their own: `broadcast` tells
    /// listeners apart by id, and gateway ids (user actors, the topic router) count up from 1.
    canary_ids: AtomicU64,
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Hub {
            routes: Mutex::new(Routes::default()),
            connected: AtomicBool::new(false),
            redis: AtomicBool::new(false),
            requested: AtomicU64::new(0),
            done: watch::Sender::new(0),
            dirty_wake: Notify::new(),
            canary_ids: AtomicU64::new(1 << 62),
        })
    }

    /// Whether the broker subscription is live (always true in single-node mode once started).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    pub fn mark_local(&self) {
        self.connected.store(true, Ordering::SeqCst);
    }

    fn routes(&self) -> parking_lot::MutexGuard<'_, Routes> {
        self.routes.lock()
    }

    /// Routes `channel` to `tx` under `listener`. Returns once the broker confirmed the
    /// subscription, or after at most `LISTEN_WAIT`, or at once while disconnected (the
    /// reconnect will subscribe it and send `Resync`). Callers read PostgreSQL only after this
    /// returns.
    pub async fn listen(&self, channel: &str, listener: u64, tx: Arc<dyn Mailbox>) {
        if let Some(ticket) = self.listen_now(channel, listener, tx) {
            self.confirmed(ticket).await;
        }
    }

    /// The routing half of `listen`, without waiting: the route takes effect at once (in order
    /// with any `unlisten` the caller makes after it). Returns the ticket to wait for with
    /// `confirmed` when this needs a SUBSCRIBE.
    pub fn listen_now(&self, channel: &str, listener: u64, tx: Arc<dyn Mailbox>) -> Option<u64> {
        let redis = self.redis.load(Ordering::SeqCst);
        let ticket = {
            let mut r = self.routes();
            let entry = r.map.entry(channel.to_string()).or_default();
            // One slot at a time: most channels have one listener on a node (a user's actor),
            // and a Vec's first growth would make room for four.
            entry.reserve_exact(1);
            entry.push((listener, tx));
            if entry.len() == 1 && redis {
                r.dirty.insert(channel.to_string());
                Some(self.requested.fetch_add(1, Ordering::SeqCst) + 1)
            } else {
                None
            }
        };
        if ticket.is_some() {
            self.dirty_wake.notify_one();
        }
        ticket
    }

    /// Waits (at most `LISTEN_WAIT`, not at all while disconnected) until Redis confirmed the
    /// SUBSCRIBEs up to `ticket`.
    pub async fn confirmed(&self, ticket: u64) {
        if !self.is_connected() {
            return;
        }
        let mut done = self.done.subscribe();
        if tokio::time::timeout(LISTEN_WAIT, done.wait_for(|d| *d >= ticket))
            .await
            .is_err()
        {
            metrics::counter!("notifyd_hub_listen_timeouts_total").increment(1);
            tracing::warn!("SUBSCRIBE not confirmed within {LISTEN_WAIT:?}; going on without it");
        }
    }

    /// Stops routing `channel` to `listener`. Never waits on Redis: the UNSUBSCRIBE (when this
    /// was the last listener) goes out with the subscriber's next batch.
    /// Takes effect at once (it never waits: the subscriber task sends the UNSUBSCRIBE), so a
    /// listener that unlistens then listens again keeps its new route.
    pub fn unlisten(&self, channel: &str, listener: u64) {
        let redis = self.redis.load(Ordering::SeqCst);
        let last = {
            let mut r = self.routes();
            let last = match r.map.get_mut(channel) {
                Some(list) => {
                    list.retain(|(id, _)| *id != listener);
                    list.is_empty()
                }
                None => false,
            };
            if last {
                r.map.remove(channel);
                if redis {
                    r.dirty.insert(channel.to_string());
                }
            }
            last
        };
        if last && redis {
            self.dirty_wake.notify_one();
        }
    }

    /// Whether anything on this node listens on `channel` (so a caller can skip building a
    /// payload nobody here would get).
    pub fn listens(&self, channel: &str) -> bool {
        self.routes().map.contains_key(channel)
    }

    /// Hands an envelope to every local listener of `channel`, never waiting: a full or closed
    /// mailbox loses the message (counted; the listener repairs from PostgreSQL). Listeners
    /// share its frame (one allocation, however many listen).
    pub fn deliver(&self, channel: &str, envelope: Envelope) {
        let routes = self.routes();
        if let Some(list) = routes.map.get(channel) {
            let channel: Arc<str> = Arc::from(channel);
            for (_, tx) in list {
                offer(
                    tx,
                    HubMsg::Message {
                        channel: channel.clone(),
                        envelope: envelope.clone(),
                    },
                );
            }
        }
    }

    /// A payload as the broker carries it (`Envelope::encode`), to the local listeners of
    /// `channel`. One that is not an envelope is dropped and counted: nothing a listener could
    /// do with it.
    pub fn deliver_encoded(&self, channel: &str, payload: &str) {
        if !self.listens(channel) {
            return;
        }
        match Envelope::decode(payload) {
            Ok(envelope) => self.deliver(channel, envelope),
            Err(e) => {
                metrics::counter!("notifyd_hub_malformed_total").increment(1);
                tracing::debug!(error = %e, channel, "dropped a broker payload");
            }
        }
    }

    /// Hands `msg` to every listener once (a listener id routed on many channels, such as the
    /// topic router's, gets it once, not once per channel).
    fn broadcast(&self, msg: HubMsg) {
        let routes = self.routes();
        let mut seen = HashSet::new();
        for list in routes.map.values() {
            for (id, tx) in list {
                if seen.insert(*id) {
                    offer(tx, msg.clone());
                }
            }
        }
    }

    pub fn channel_count(&self) -> usize {
        self.routes().map.len()
    }

    /// A fresh listener id for a readiness probe.
    pub fn canary_listener(&self) -> u64 {
        self.canary_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks the subscription down and releases every `listen` waiting for a confirmation
    /// (the reconnect subscribes their channels and sends `Resync`).
    fn set_disconnected(&self) {
        self.connected.store(false, Ordering::SeqCst);
        self.done
            .send_replace(self.requested.load(Ordering::SeqCst));
    }

    /// The Redis subscriber loop: connect, subscribe, route, PING, and start over after any
    /// failure. Runs until `shutdown` turns true.
    pub async fn run_redis(
        self: Arc<Self>,
        target: super::RedisTarget,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.redis.store(true, Ordering::SeqCst);
        let mut backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let mut connected_at = None;
            let served = match &target {
                super::RedisTarget::Single(info) => {
                    self.serve(info, &mut shutdown, &mut connected_at).await
                }
                super::RedisTarget::Cluster { seeds, ca } => {
                    self.serve_sharded(seeds, ca.as_deref(), &mut shutdown, &mut connected_at)
                        .await
                }
            };
            match served {
                Ok(()) => return,
                Err(e) => {
                    self.set_disconnected();
                    if let Some(at) = connected_at {
                        // A connection that was healthy for a while reconnects at once; one
                        // that fails right after connecting keeps backing off.
                        if at.elapsed() > Duration::from_secs(10) {
                            backoff = Duration::from_millis(100);
                        }
                        metrics::counter!("notifyd_errors_total", "kind" => "redis_subscriber_disconnect").increment(1);
                        tracing::warn!(error = %format!("{e:#}"), "redis subscriber lost; reconnecting");
                    } else {
                        metrics::counter!("notifyd_errors_total", "kind" => "redis_subscriber_connect").increment(1);
                        tracing::warn!(error = %format!("{e:#}"), "redis subscriber cannot connect; retrying in {backoff:?}");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One connection's life. `Ok` only at shutdown; any failure is an `Err` (the caller
    /// reconnects). Dropping the stream on return closes the connection.
    async fn serve(
        &self,
        info: &redis::ConnectionInfo,
        shutdown: &mut watch::Receiver<bool>,
        connected_at: &mut Option<tokio::time::Instant>,
    ) -> anyhow::Result<()> {
        let client = redis::Client::open(info.clone())?;
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .context("connect timeout")??;
        let (mut sink, mut stream) = pubsub.split();
        // Whatever is routed now is subscribed now; later changes arrive as dirty channels.
        let (mut subscribed, ticket): (HashSet<String>, u64) = {
            let mut r = self.routes();
            r.dirty.clear();
            let ticket = self.requested.load(Ordering::SeqCst);
            (r.map.keys().cloned().collect(), ticket)
        };
        let all: Vec<&String> = subscribed.iter().collect();
        for chunk in all.chunks(SUBSCRIBE_BATCH) {
            bounded("SUBSCRIBE", sink.subscribe(chunk)).await?;
        }
        self.connected.store(true, Ordering::SeqCst);
        *connected_at = Some(tokio::time::Instant::now());
        self.done.send_replace(ticket);
        metrics::counter!("notifyd_hub_connects_total").increment(1);
        self.broadcast(HubMsg::Resync);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => {
                        let payload = String::from_utf8_lossy(msg.get_payload_bytes());
                        self.deliver_encoded(msg.get_channel_name(), &payload);
                    }
                    None => anyhow::bail!("the subscriber connection closed"),
                },
                _ = self.dirty_wake.notified() => {
                    self.sync_subscriptions(&mut sink, &mut subscribed).await?;
                }
                _ = ping.tick() => {
                    // In subscribed mode the answer is `["pong", ""]`: any answer will do.
                    bounded("PING", sink.ping::<redis::Value>()).await?;
                }
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// Takes the dirty channels: those that gained a listener and are not subscribed (to
    /// subscribe), those subscribed that lost their last (to unsubscribe), and the latest listen
    /// ticket they cover. One Redis or a cluster's shards alike.
    fn take_dirty(&self, subscribed: &HashSet<String>) -> (Vec<String>, Vec<String>, u64) {
        let mut r = self.routes();
        let dirty = std::mem::take(&mut r.dirty);
        let mut add = vec![];
        let mut remove = vec![];
        for ch in dirty {
            match (r.map.contains_key(&ch), subscribed.contains(&ch)) {
                (true, false) => add.push(ch),
                (false, true) => remove.push(ch),
                _ => {}
            }
        }
        (add, remove, self.requested.load(Ordering::SeqCst))
    }

    /// Brings Redis in line with the routing table for every dirty channel: one SUBSCRIBE for
    /// the channels that gained a listener, one UNSUBSCRIBE for those that lost their last.
    async fn sync_subscriptions(
        &self,
        sink: &mut redis::aio::PubSubSink,
        subscribed: &mut HashSet<String>,
    ) -> anyhow::Result<()> {
        let (add, remove, ticket) = self.take_dirty(subscribed);
        for chunk in remove.chunks(SUBSCRIBE_BATCH) {
            bounded("UNSUBSCRIBE", sink.unsubscribe(chunk)).await?;
            for ch in chunk {
                subscribed.remove(ch);
            }
        }
        for chunk in add.chunks(SUBSCRIBE_BATCH) {
            bounded("SUBSCRIBE", sink.subscribe(chunk)).await?;
            subscribed.extend(chunk.iter().cloned());
        }
        self.done.send_replace(ticket);
        Ok(())
    }
}

/// Offers `msg` to a listener's mailbox without waiting.
fn offer(tx: &Arc<dyn Mailbox>, msg: HubMsg) {
    match tx.offer(msg) {
        Ok(()) => {}
        Err(Refused::Full) => {
            metrics::counter!("notifyd_hub_dropped_total", "reason" => "full").increment(1)
        }
        Err(Refused::Closed) => {
            metrics::counter!("notifyd_hub_dropped_total", "reason" => "closed").increment(1)
        }
    }
}

/// Runs one subscriber command with `COMMAND_TIMEOUT`; a timeout is an error like any other.
async fn bounded<T>(
    what: &'static str,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> anyhow::Result<T> {
    let late =
        || metrics::counter!("notifyd_hub_command_timeouts_total", "command" => what).increment(1);
    crate::timed::timed(COMMAND_TIMEOUT, what, late, fut).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(msg: HubMsg) -> String {
        match msg {
            HubMsg::Message { envelope, .. } => envelope.frame.to_string(),
            HubMsg::Resync => "resync".into(),
        }
    }

    /// A full mailbox loses messages instead of blocking the hub or growing without bound; the
    /// listener gets the next ones once it has room again.
    #[tokio::test]
    async fn delivery_to_a_full_mailbox_drops_instead_of_waiting() {
        let hub = Hub::new();
        hub.mark_local();
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        hub.listen("c", 1, Arc::new(tx)).await;
        for i in 0..5 {
            hub.deliver("c", Envelope::probe(&i.to_string()));
        }
        assert_eq!(payload(rx.recv().await.expect("first")), "0");
        assert_eq!(payload(rx.recv().await.expect("second")), "1");
        assert!(rx.try_recv().is_err(), "2, 3 and 4 were dropped");
        hub.deliver("c", Envelope::probe("5"));
        assert_eq!(payload(rx.recv().await.expect("after room")), "5");
    }

    /// Without a Redis subscriber (single-node mode) `listen` never waits.
    #[tokio::test]
    async fn listen_returns_at_once_in_single_node_mode() {
        let hub = Hub::new();
        hub.mark_local();
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        tokio::time::timeout(Duration::from_millis(100), hub.listen("c", 1, Arc::new(tx)))
            .await
            .expect("listen returned");
        assert_eq!(hub.channel_count(), 1);
        hub.unlisten("c", 1);
        assert_eq!(hub.channel_count(), 0);
    }
}
