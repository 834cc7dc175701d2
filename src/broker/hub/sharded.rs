//! The hub's subscriber on a Redis Cluster: sharded pub/sub (Redis ≥ 7). A sharded channel
//! lives on the shard that owns its slot, so SSUBSCRIBE goes to that shard's master and
//! SPUBLISH reaches only that shard (a plain PUBLISH on a cluster is copied to every node).
//!
//! The redis crate's cluster connection (RESP3, with a push sender) keeps one connection per
//! master, sends each SSUBSCRIBE to the master of its channel's slot and follows `MOVED`. What
//! it cannot tell us is which messages a shard lost: a master that dies takes the messages
//! published to it since with it, and a slot that moves (resharding, a manual failover) makes
//! its old owner drop the subscription (`sunsubscribe` pushed by the server). So any of these
//! is treated like a lost connection to a single Redis (see the parent module): this
//! connection is dropped, a new one subscribes every routed channel on the shard that owns it
//! now, and every listener gets `Resync` (user actors repair from PostgreSQL by seq):
//! - the library's `Disconnection` push (a master's connection closed: killed, failed over);
//! - a `sunsubscribe` push for a channel this node still listens on (the server moved it);
//! - the PING to every master failing or timing out (a master that vanished half-open);
//! - the push queue overflowing (messages were dropped);
//! - any SSUBSCRIBE / SUNSUBSCRIBE failing or timing out (a slot whose master is down: the
//!   reconnect keeps backing off until a replica took over).
//!
//! Sharded pub/sub has no patterns, and none is needed: the hub subscribes one channel per
//! connected user and per topic with a local subscriber, exactly as with one Redis. An
//! SSUBSCRIBE may only name channels of one slot, so a batch is split by slot and the slots'
//! commands run concurrently (at most `SUBSCRIBES_AT_ONCE`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, Slot};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::watch;

use super::{bounded, Hub, HubMsg, CONNECT_TIMEOUT, PING_EVERY};

/// Push messages (sharded messages, confirmations) waiting for the subscriber task. Past it
/// the connection is dropped and rebuilt (with `Resync`), never an unbounded buffer.
pub const PUSH_QUEUE: usize = 65_536;
/// SSUBSCRIBE / SUNSUBSCRIBE commands (one per slot) in flight at once.
const SUBSCRIBES_AT_ONCE: usize = 64;
/// Channels per SSUBSCRIBE (they all share one slot).
const SUBSCRIBE_BATCH: usize = 1000;

impl Hub {
    /// One cluster connection's life: `Ok` only at shutdown, any failure an `Err` (the caller,
    /// `run_redis`, reconnects with the same backoff as for one Redis).
    pub(super) async fn serve_sharded(
        &self,
        seeds: &[redis::ConnectionInfo],
        ca: Option<&[u8]>,
        shutdown: &mut watch::Receiver<bool>,
        connected_at: &mut Option<tokio::time::Instant>,
    ) -> anyhow::Result<()> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<PushInfo>(PUSH_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let full = overflow.clone();
        let push = Box::new(move |info: PushInfo| {
            tx.try_send(info).map_err(|_| {
                full.store(true, Ordering::SeqCst);
            })
        });
        let client = crate::broker::cluster_client(seeds, ca, Some(push))?;
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection())
            .await
            .context("connect timeout")??;
        let (mut subscribed, ticket): (HashSet<String>, u64) = {
            let mut r = self.routes();
            r.dirty.clear();
            let ticket = self.requested.load(Ordering::SeqCst);
            (r.map.keys().cloned().collect(), ticket)
        };
        let all: Vec<String> = subscribed.iter().cloned().collect();
        by_slot(&conn, all, Sharded::Subscribe).await?;
        self.connected.store(true, Ordering::SeqCst);
        *connected_at = Some(tokio::time::Instant::now());
        self.done.send_replace(ticket);
        metrics::counter!("notifyd_hub_connects_total").increment(1);
        self.broadcast(HubMsg::Resync);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    if overflow.load(Ordering::SeqCst) {
                        metrics::counter!("notifyd_hub_dropped_total", "reason" => "push_queue").increment(1);
                        anyhow::bail!("the push queue ({PUSH_QUEUE}) overflowed");
                    }
                    match msg {
                        Some(msg) => self.on_push(msg, &subscribed)?,
                        None => anyhow::bail!("the cluster connection closed"),
                    }
                }
                _ = self.dirty_wake.notified() => {
                    self.sync_sharded(&conn, &mut subscribed).await?;
                }
                _ = ping.tick() => {
                    let every_master = RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllMasters,
                        Some(ResponsePolicy::AllSucceeded),
                    ));
                    bounded("PING", conn.route_command(redis::cmd("PING"), every_master)).await?;
                }
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// One push message from the cluster connection.
    fn on_push(&self, msg: PushInfo, subscribed: &HashSet<String>) -> anyhow::Result<()> {
        match msg.kind {
            PushKind::SMessage => {
                if let [channel, payload] = msg.data.as_slice() {
                    if let (Some(channel), Some(payload)) = (text(channel), text(payload)) {
                        self.deliver_encoded(&channel, &payload);
                    }
                }
                Ok(())
            }
            PushKind::Disconnection => {
                metrics::counter!("notifyd_redis_shard_events_total", "kind" => "disconnection")
                    .increment(1);
                anyhow::bail!("a cluster node's connection closed (killed or failed over?)")
            }
            PushKind::SUnsubscribe => {
                // Our own SUNSUBSCRIBEs leave `subscribed` before they are sent: a channel still
                // in it was unsubscribed by the server (its slot moved to another shard).
                let channel = msg.data.first().and_then(text);
                match channel {
                    Some(ch) if subscribed.contains(ch.as_str()) => {
                        metrics::counter!("notifyd_redis_shard_events_total", "kind" => "sunsubscribe")
                            .increment(1);
                        anyhow::bail!("the server unsubscribed {ch} (its slot moved)")
                    }
                    _ => Ok(()),
                }
            }
            // Confirmations (and the library's own resubscriptions, which the reconnect above
            // makes moot), and kinds this connection never asks for.
            _ => Ok(()),
        }
    }

    /// `sync_subscriptions` of the parent module, sharded: the dirty channels that gained a
    /// listener are SSUBSCRIBEd, those that lost their last SUNSUBSCRIBEd, each on its shard.
    async fn sync_sharded(
        &self,
        conn: &ClusterConnection,
        subscribed: &mut HashSet<String>,
    ) -> anyhow::Result<()> {
        let (add, remove, ticket) = self.take_dirty(subscribed);
        for ch in &remove {
            subscribed.remove(ch);
        }
        by_slot(conn, remove, Sharded::Unsubscribe).await?;
        subscribed.extend(add.iter().cloned());
        by_slot(conn, add, Sharded::Subscribe).await?;
        self.done.send_replace(ticket);
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Sharded {
    Subscribe,
    Unsubscribe,
}

/// SSUBSCRIBE or SUNSUBSCRIBE `channels`: one command per slot (and per `SUBSCRIBE_BATCH`),
/// `SUBSCRIBES_AT_ONCE` at a time, each bounded like every subscriber command.
async fn by_slot(
    conn: &ClusterConnection,
    channels: Vec<String>,
    what: Sharded,
) -> anyhow::Result<()> {
    let mut slots: HashMap<Slot, Vec<String>> = HashMap::new();
    for ch in channels {
        slots
            .entry(Slot::for_key(ch.as_bytes()))
            .or_default()
            .push(ch);
    }
    let batches: Vec<Vec<String>> = slots
        .into_values()
        .flat_map(|chs| {
            chs.chunks(SUBSCRIBE_BATCH)
                .map(<[String]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    futures_util::stream::iter(batches)
        .map(|batch| {
            let mut conn = conn.clone();
            async move {
                match what {
                    Sharded::Subscribe => bounded("SSUBSCRIBE", conn.ssubscribe(batch)).await,
                    Sharded::Unsubscribe => bounded("SUNSUBSCRIBE", conn.sunsubscribe(batch)).await,
                }
            }
        })
        .buffer_unordered(SUBSCRIBES_AT_ONCE)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
