//! Who is online, across the cluster.
//!
//! Each node keeps its own per-user connection counts and mirrors them into Redis: a hash per
//! user (`presence:{user}`, field = node id, value = `count|unix_ts`) and a sorted set of online
//! users (`online`, score = last refresh). Nodes refresh their entries every `REFRESH`; readers
//! ignore entries older than `STALE`, so a node that dies without cleaning up stops counting
//! within a minute. Without Redis the local counts are the whole truth.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use tokio::sync::{mpsc, watch};

pub const REFRESH: Duration = Duration::from_secs(15);
pub const STALE: Duration = Duration::from_secs(45);

pub struct Presence {
    node_id: String,
    prefix: String,
    redis: Option<deadpool_redis::Pool>,
    local: Mutex<HashMap<String, usize>>,
    dirty: mpsc::UnboundedSender<String>,
    dirty_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct UserPresence {
    pub online: bool,
    pub connections: u64,
}

impl Presence {
    pub fn new(node_id: String, prefix: String, redis: Option<deadpool_redis::Pool>) -> Arc<Self> {
        let (dirty, rx) = mpsc::unbounded_channel();
        Arc::new(Presence {
            node_id,
            prefix,
            redis,
            local: Mutex::new(HashMap::new()),
            dirty,
            dirty_rx: Mutex::new(Some(rx)),
        })
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
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
            let _ = self.dirty.send(user.to_string());
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
        let mut conn = pool.get().await?;
        let fields: HashMap<String, String> = conn.hgetall(self.key(user)).await?;
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
        let mut conn = pool.get().await?;
        let min = now() - STALE.as_secs() as i64;
        Ok(conn.zcount(self.online_key(), min, "+inf").await?)
    }

    /// Mirrors local changes into Redis and refreshes every entry periodically, until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(pool) = self.redis.clone() else {
            return;
        };
        let Some(mut rx) = self
            .dirty_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let mut refresh = tokio::time::interval(REFRESH);
        loop {
            let users: Vec<String> = tokio::select! {
                Some(u) = rx.recv() => {
                    let mut batch = vec![u];
                    while let Ok(u) = rx.try_recv() {
                        batch.push(u);
                    }
                    batch
                }
                _ = refresh.tick() => self.local().keys().cloned().collect(),
                _ = shutdown.changed() => {
                    let users: Vec<String> = self.local().keys().cloned().collect();
                    self.local().clear();
                    let _ = self.write(&pool, users).await;
                    return;
                }
            };
            if let Err(e) = self.write(&pool, users).await {
                tracing::debug!(error = %e, "presence update failed");
            }
        }
    }

    async fn write(
        &self,
        pool: &deadpool_redis::Pool,
        mut users: Vec<String>,
    ) -> anyhow::Result<()> {
        users.sort();
        users.dedup();
        let mut conn = pool.get().await?;
        let ts = now();
        let mut pipe = redis::pipe();
        let mut gone = vec![];
        for u in &users {
            let count = self.local().get(u).copied().unwrap_or(0);
            let key = self.key(u);
            if count > 0 {
                pipe.hset(&key, &self.node_id, format!("{count}|{ts}"))
                    .ignore();
                pipe.expire(&key, STALE.as_secs() as i64 * 2).ignore();
                pipe.zadd(self.online_key(), u, ts).ignore();
            } else {
                pipe.hdel(&key, &self.node_id).ignore();
                gone.push(u.clone());
            }
        }
        pipe.zrembyscore(self.online_key(), "-inf", ts - STALE.as_secs() as i64)
            .ignore();
        pipe.query_async::<()>(&mut conn).await?;
        // A user who left this node may still be online on another.
        for u in gone {
            let fields: HashMap<String, String> = conn.hgetall(self.key(&u)).await?;
            if fresh_total(&fields) == 0 {
                let _: () = conn.zrem(self.online_key(), &u).await?;
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
