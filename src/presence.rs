//! Who is online, across the cluster.
//!
//! Each node keeps its own per-user connection counts and mirrors them into Redis: a hash per
//! user (`presence:{user}`, field = node id, value = `count|unix_ts`) and a sorted set of online
//! users (`online`, score = last refresh). Nodes refresh their entries every `REFRESH`; readers
//! ignore entries older than `STALE`, so a node that dies without cleaning up stops counting
//! within a minute. Without Redis the local counts are the whole truth.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::broker::{Redis, COMMAND_TIMEOUT};

pub const REFRESH: Duration = Duration::from_secs(15);
pub const STALE: Duration = Duration::from_secs(45);
/// How long a failed write to Redis waits before the next try (which takes what is still owed).
const RETRY: Duration = Duration::from_secs(1);
/// Users who left whose entries one round trip reads (bounded: the replies are buffered whole).
const DEPARTURES_PER_READ: usize = 1000;

pub struct Presence {
    node_id: String,
    prefix: String,
    redis: Option<Redis>,
    local: Mutex<HashMap<String, usize>>,
    /// Users whose count changed since the last write to Redis: a set, so it holds each user
    /// once however often they come and go (bounded by the users this node serves).
    dirty: Mutex<HashSet<String>>,
    changed: Notify,
}

/// A user's presence across the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct UserPresence {
    pub online: bool,
    pub connections: u64,
}

impl Presence {
    pub fn new(node_id: String, prefix: String, redis: Option<Redis>) -> Arc<Self> {
        Arc::new(Presence {
            node_id,
            prefix,
            redis,
            local: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            changed: Notify::new(),
        })
    }

    fn local(&self) -> parking_lot::MutexGuard<'_, HashMap<String, usize>> {
        self.local.lock()
    }

    /// One more (`+1`) or one fewer (`-1`) connection of `user` on this node. Counted by deltas,
    /// not set from an actor's own count, so an actor that is exiting can never mark offline a
    /// user whose new session already joined a fresh actor.
    pub fn add(&self, user: &str, delta: isize) {
        {
            let mut l = self.local();
            let n = l
                .get(user)
                .copied()
                .unwrap_or(0)
                .saturating_add_signed(delta);
            if n == 0 {
                l.remove(user);
            } else {
                l.insert(user.to_string(), n);
            }
        }
        if self.redis.is_some() {
            self.dirty.lock().insert(user.to_string());
            self.changed.notify_one();
        }
    }

    fn key(&self, user: &str) -> String {
        format!("{}presence:{}", self.prefix, user)
    }

    fn online_key(&self) -> String {
        format!("{}online", self.prefix)
    }

    pub async fn user(&self, user: &str) -> anyhow::Result<UserPresence> {
        let Some(pool) = &self.redis else {
            let n = self.local().get(user).copied().unwrap_or(0) as u64;
            return Ok(UserPresence {
                online: n > 0,
                connections: n,
            });
        };
        // Bounded, and a connection whose command timed out is discarded (see broker::query).
        let fields: HashMap<String, String> = pool
            .cmd(redis::cmd("HGETALL").arg(self.key(user)), COMMAND_TIMEOUT)
            .await?;
        let n = fresh_total(&fields);
        Ok(UserPresence {
            online: n > 0,
            connections: n,
        })
    }

    /// Distinct users online anywhere in the cluster.
    pub async fn online_users(&self) -> anyhow::Result<u64> {
        let Some(pool) = &self.redis else {
            return Ok(self.local().len() as u64);
        };
        let min = now() - STALE.as_secs() as i64;
        pool.cmd(
            redis::cmd("ZCOUNT")
                .arg(self.online_key())
                .arg(min)
                .arg("+inf"),
            COMMAND_TIMEOUT,
        )
        .await
    }

    /// Mirrors local changes into Redis and refreshes every entry periodically, until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(pool) = self.redis.clone() else {
            return;
        };
        let mut refresh = tokio::time::interval(REFRESH);
        loop {
            let users: Vec<String> = tokio::select! {
                _ = self.changed.notified() => {
                    std::mem::take(&mut *self.dirty.lock())
                        .into_iter()
                        .collect()
                }
                _ = refresh.tick() => self.local().keys().cloned().collect(),
                _ = shutdown.changed() => return self.leave_all(&pool).await,
            };
            if let Err(e) = self.write(&pool, &users).await {
                // Kept, not dropped: a refresh would rewrite the users still here, but never
                // the leaves, which would count as online until their entries went stale.
                tracing::debug!(error = %e, "presence update failed");
                metrics::counter!("notifyd_presence_write_failures_total").increment(1);
                self.dirty.lock().extend(users);
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => self.changed.notify_one(),
                    _ = shutdown.changed() => return self.leave_all(&pool).await,
                }
            }
        }
    }

    /// On shutdown: this node's users leave, in one last write (best effort: a node that
    /// cannot reach Redis now has its entries go stale instead).
    async fn leave_all(&self, pool: &Redis) {
        let users: Vec<String> = self.local().keys().cloned().collect();
        self.local().clear();
        let _ = self.write(pool, &users).await;
    }

    async fn write(&self, pool: &Redis, users: &[String]) -> anyhow::Result<()> {
        let ts = now();
        // One key for the set, not one `format!` per user (a storm writes 15,000 at once).
        let online = self.online_key();
        let mut pipe = redis::pipe();
        let mut gone = vec![];
        for u in users {
            let count = self.local().get(u).copied().unwrap_or(0);
            let key = self.key(u);
            if count > 0 {
                pipe.hset(&key, &self.node_id, format!("{count}|{ts}"))
                    .ignore();
                pipe.expire(&key, STALE.as_secs() as i64 * 2).ignore();
                pipe.zadd(&online, u, ts).ignore();
            } else {
                pipe.hdel(&key, &self.node_id).ignore();
                gone.push(u.clone());
            }
        }
        pipe.zrembyscore(&online, "-inf", ts - STALE.as_secs() as i64)
            .ignore();
        // On a cluster the keys live on many shards: `exec` splits the pipeline by slot (no
        // command here spans two keys, so no hash tag is needed).
        pool.exec(&pipe, COMMAND_TIMEOUT).await?;
        // A user who left this node may still be online on another: read every leaver's
        // entries in one go (a node's clients often leave together, e.g. when a proxy or the
        // network drops them: one round trip each used to hold this loop for seconds), then
        // take those online nowhere off the set, in bounded batches.
        for chunk in gone.chunks(DEPARTURES_PER_READ) {
            let reads = chunk
                .iter()
                .map(|u| {
                    let mut read = redis::cmd("HGETALL");
                    read.arg(self.key(u));
                    read
                })
                .collect();
            let entries: Vec<HashMap<String, String>> = pool.each(reads, COMMAND_TIMEOUT).await?;
            let mut offline = redis::pipe();
            let mut any = false;
            for (u, fields) in chunk.iter().zip(&entries) {
                if fresh_total(fields) == 0 {
                    offline.zrem(&online, u).ignore();
                    any = true;
                }
            }
            if any {
                pool.exec(&offline, COMMAND_TIMEOUT).await?;
            }
        }
        Ok(())
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn fresh_total(fields: &HashMap<String, String>) -> u64 {
    let min = now() - STALE.as_secs() as i64;
    fields
        .values()
        .filter_map(|v| v.split_once('|'))
        .filter_map(|(n, ts)| Some((n.parse::<u64>().ok()?, ts.parse::<i64>().ok()?)))
        .filter(|(_, ts)| *ts >= min)
        .map(|(n, _)| n)
        .sum()
}
