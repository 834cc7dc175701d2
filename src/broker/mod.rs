//! The broker between the relay and the gateways: Redis pub/sub across nodes, or an in-process
//! hub in single-node mode. Publishing is the relay's side; `hub` is the gateway's side.

pub mod hub;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub use hub::{Hub, HubMsg};

/// How long one pipeline of PUBLISHes may take before the relay treats Redis as down.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub enum Broker {
    Redis(deadpool_redis::Pool),
    /// Single-node mode: publishing delivers straight into this node's hub.
    Local(Arc<Hub>),
}

impl Broker {
    /// Publishes `(channel, payload)` pairs in order, in one round trip.
    pub async fn publish(&self, items: &[(String, String)]) -> anyhow::Result<()> {
        match self {
            Broker::Redis(pool) => {
                let mut conn = tokio::time::timeout(PUBLISH_TIMEOUT, pool.get())
                    .await
                    .context("redis pool timeout")??;
                let mut pipe = redis::pipe();
                for (channel, payload) in items {
                    pipe.publish(channel, payload).ignore();
                }
                tokio::time::timeout(PUBLISH_TIMEOUT, pipe.query_async::<()>(&mut conn))
                    .await
                    .context("redis publish timeout")??;
                Ok(())
            }
            Broker::Local(hub) => {
                for (channel, payload) in items {
                    hub.deliver(channel, Arc::from(payload.as_str()));
                }
                Ok(())
            }
        }
    }
}

pub fn redis_pool(url: &str) -> anyhow::Result<deadpool_redis::Pool> {
    let mut cfg = deadpool_redis::Config::from_url(url);
    cfg.pool = Some(deadpool_redis::PoolConfig {
        max_size: 16,
        timeouts: deadpool_redis::Timeouts {
            wait: Some(Duration::from_secs(5)),
            create: Some(Duration::from_secs(5)),
            recycle: Some(Duration::from_secs(5)),
        },
        ..Default::default()
    });
    cfg.create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .context("building the redis pool")
}
