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
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::broker::{Redis, COMMAND_TIMEOUT};

pub const REFRESH: Duration = Duration::from_secs(15);
pub const STALE: Duration = Duration::from_secs(45);
/// How long the first retry after a failed write to Redis waits; each further failure doubles
/// the wait, up to `REFRESH` (a Redis that is slow or failing over is not sent the whole set
/// again every second by every node).
const RETRY: Duration = Duration::from_secs(1);
/// Users who left whose entries one round trip reads (bounded: the replies are buffered whole).
const DEPARTURES_PER_READ: usize = 1000;

pub struct Presence {
    node_id: String,
    prefix: String,
    redis: Option<Redis>,
    local: Mutex<HashMap<String, usize>>,
    /// Users whose count changed since the last write to Redis that succeeded: a set, so it holds
    /// each user once however often they come and go. While writes fail it keeps what they owe,
    /// bounded by the users connected plus those who left within `STALE` (`owe`).
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
        let (mut retry, mut failing_since) = (RETRY, None::<Instant>);
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
            let Err(e) = self.write(&pool, &users).await else {
                if failing_since.take().is_some() {
                    tracing::info!("presence writes to Redis resumed");
                }
                retry = RETRY;
                continue;
            };
            metrics::counter!("notifyd_presence_write_failures_total").increment(1);
            match failing_since {
                None => tracing::warn!(error = %e, "presence write to Redis failed; retrying"),
                Some(_) => tracing::debug!(error = %e, "presence write to Redis failed again"),
            }
            let since = *failing_since.get_or_insert_with(Instant::now);
            self.owe(users, since.elapsed() > STALE);
            tokio::select! {
                _ = tokio::time::sleep(retry) => self.changed.notify_one(),
                _ = shutdown.changed() => return self.leave_all(&pool).await,
            }
            retry = (retry * 2).min(REFRESH);
        }
    }

    /// Keeps what a failed write carried for the next one: a refresh would rewrite the users
    /// still here, but never the leaves, which would count as online until their entries went
    /// stale. Once writes have failed for longer than `STALE`, the leaves owed are dropped:
    /// readers already ignore the entries they would remove (and the next write's sweep takes
    /// them off the online set), and the set stays bounded however long Redis is away.
    fn owe(&self, users: Vec<String>, failing_past_stale: bool) {
        let mut dirty = self.dirty.lock();
        dirty.extend(users);
        if failing_past_stale {
            // `add` never holds both locks, so taking `local` under `dirty` cannot deadlock.
            let local = self.local();
            dirty.retain(|u| local.contains_key(u));
        }
    }

    /// On shutdown: this node's users leave, with the leaves still owed, in one last write
    /// (best effort: a node that cannot reach Redis now has its entries go stale instead).
    async fn leave_all(&self, pool: &Redis) {
        let mut users = std::mem::take(&mut *self.dirty.lock());
        users.extend(self.local().drain().map(|(u, _)| u));
        let users: Vec<String> = users.into_iter().collect();
        let _ = self.write(pool, &users).await;
    }

    /// Writes the counts of `users` (each once) as `local` holds them now.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn owed(p: &Presence) -> Vec<String> {
        let mut v: Vec<String> = p.dirty.lock().iter().cloned().collect();
        v.sort();
        v
    }

    #[test]
    fn a_failed_write_keeps_its_leaves_and_joins_for_the_next() {
        let p = Presence::new("n".into(), "p:".into(), None);
        p.add("here", 1);
        p.owe(vec!["here".into(), "left".into()], false);
        assert_eq!(owed(&p), ["here", "left"]);
    }

    #[test]
    fn writes_failing_past_staleness_drop_the_leaves_but_keep_who_is_here() {
        let p = Presence::new("n".into(), "p:".into(), None);
        p.add("here", 1);
        p.owe(vec!["left".into(), "gone".into()], false);
        p.owe(vec!["here".into()], true);
        assert_eq!(owed(&p), ["here"]);
    }
}
