//! The broker between the relay and the gateways: Redis pub/sub across nodes, or an in-process
//! hub in single-node mode. Publishing is the relay's side; `hub` is the gateway's side.
//!
//! Every Redis connection (pooled or the hub's subscriber) has TCP keepalive and a
//! `TCP_USER_TIMEOUT`, and every pooled command runs through [`query`], which bounds it with a
//! timeout and takes a connection whose command timed out OUT of the pool: a late reply could
//! otherwise be read as the answer to the next command, and a half-open connection would be
//! handed to the next caller.

pub mod envelope;
pub mod hub;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::IntoConnectionInfo;

pub use envelope::{Envelope, Head};
pub use hub::{Hub, HubMsg};

/// How long one pipeline of PUBLISHes may take before the relay treats Redis as down.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// The default bound on one pooled Redis command (presence, readiness).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Waiting for a free pooled connection, and creating one.
const POOL_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub enum Broker {
    Redis(deadpool_redis::Pool),
    /// Single-node mode: publishing delivers straight into this node's hub.
    Local(Arc<Hub>),
}

impl Broker {
    /// Publishes `(channel, envelope text)` pairs in order, in one round trip.
    pub async fn publish(&self, items: &[(String, String)]) -> anyhow::Result<()> {
        match self {
            Broker::Redis(pool) => {
                let mut pipe = redis::pipe();
                for (channel, payload) in items {
                    pipe.publish(channel, payload).ignore();
                }
                query::<()>(pool, &pipe, PUBLISH_TIMEOUT).await
            }
            Broker::Local(hub) => {
                for (channel, payload) in items {
                    hub.deliver_encoded(channel, payload);
                }
                Ok(())
            }
        }
    }
}

/// Runs the pipeline `q` on a pooled connection within `timeout` (checkout included). A
/// connection whose command timed out or broke is discarded instead of going back to the pool.
pub async fn query<T: redis::FromRedisValue>(
    pool: &deadpool_redis::Pool,
    q: &redis::Pipeline,
    timeout: Duration,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut conn = checkout(pool, deadline).await?;
    let r = tokio::time::timeout_at(deadline, q.query_async::<T>(&mut conn)).await;
    settle(conn, r, timeout)
}

/// [`query`] for a single command.
pub async fn query_cmd<T: redis::FromRedisValue>(
    pool: &deadpool_redis::Pool,
    q: &redis::Cmd,
    timeout: Duration,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut conn = checkout(pool, deadline).await?;
    let r = tokio::time::timeout_at(deadline, q.query_async::<T>(&mut conn)).await;
    settle(conn, r, timeout)
}

async fn checkout(
    pool: &deadpool_redis::Pool,
    deadline: tokio::time::Instant,
) -> anyhow::Result<deadpool_redis::Connection> {
    tokio::time::timeout_at(deadline, pool.get())
        .await
        .context("redis pool timeout")?
        .context("redis pool")
}

fn settle<T>(
    conn: deadpool_redis::Connection,
    r: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> anyhow::Result<T> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            if e.is_unrecoverable_error() || e.is_timeout() || e.is_connection_dropped() {
                discard(conn);
            }
            Err(e).context("redis command failed")
        }
        Err(_) => {
            discard(conn);
            anyhow::bail!("redis command timed out after {timeout:?}")
        }
    }
}

/// Takes a connection out of the pool for good (it is closed when dropped).
fn discard(conn: deadpool_redis::Connection) {
    metrics::counter!("notifyd_redis_connections_discarded_total").increment(1);
    drop(deadpool_redis::Connection::take(conn));
}

/// `url` with this service's TCP settings: keepalive probes and `TCP_USER_TIMEOUT`, so a peer
/// that vanished is noticed by the kernel too, not only by our command timeouts. A `rediss://`
/// URL trusts the system store (which honours `SSL_CERT_FILE`); see [`connection_info_with_ca`].
pub fn connection_info(url: &str) -> anyhow::Result<redis::ConnectionInfo> {
    connection_info_with_ca(url, None)
}

/// [`connection_info`] with `NOTIFYD_REDIS_CA_FILE`: the server's certificate of a `rediss://`
/// URL must lead to this CA (and name the host: the redis crate always checks it). A CA file
/// with a `redis://` URL is an error (it would silently mean "no TLS").
pub fn connection_info_with_ca(
    url: &str,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<redis::ConnectionInfo> {
    // The redis crate builds its rustls configuration with the process's default provider.
    crate::tls::provider();
    let info = url.into_connection_info().context("parsing REDIS_URL")?;
    let info = match ca_file {
        None => info,
        Some(path) => {
            if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
                anyhow::bail!(
                    "NOTIFYD_REDIS_CA_FILE is set but REDIS_URL is not a rediss:// URL (no TLS)"
                );
            }
            let pem = std::fs::read(path)
                .with_context(|| format!("reading NOTIFYD_REDIS_CA_FILE {}", path.display()))?;
            crate::tls::roots_from_pem(&pem)
                .with_context(|| format!("NOTIFYD_REDIS_CA_FILE {}", path.display()))?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            redis::Client::build_with_tls(info, certs)
                .context("TLS for REDIS_URL")?
                .get_connection_info()
                .clone()
        }
    };
    let keepalive = TcpKeepalive::new()
        .with_time(hub::TCP_KEEPALIVE_IDLE)
        .with_interval(hub::TCP_KEEPALIVE_INTERVAL)
        .with_retries(hub::TCP_KEEPALIVE_RETRIES);
    let tcp = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(hub::TCP_USER_TIMEOUT);
    Ok(info.set_tcp_settings(tcp))
}

pub fn redis_pool(url: &str) -> anyhow::Result<deadpool_redis::Pool> {
    redis_pool_for(connection_info(url)?)
}

pub fn redis_pool_for(info: redis::ConnectionInfo) -> anyhow::Result<deadpool_redis::Pool> {
    // The response timeout is a second line behind `query`'s own timeout.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(POOL_WAIT))
        .set_response_timeout(Some(PUBLISH_TIMEOUT));
    let manager = deadpool_redis::Manager::new_with_config(info, config)
        .context("building the redis pool")?;
    deadpool_redis::Pool::builder(manager)
        .max_size(16)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .recycle_timeout(Some(COMMAND_TIMEOUT))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .context("building the redis pool")
}

/// At start-up, for a `rediss://` URL: one PING, so a certificate the client refuses (a wrong
/// CA, a host name the certificate does not carry) stops start-up with the reason instead of
/// being retried forever in the background. Redis merely being down is not a reason to stop
/// (the node starts not ready, as with `redis://`): that is only logged.
pub async fn check_tls(
    pool: &deadpool_redis::Pool,
    info: &redis::ConnectionInfo,
) -> anyhow::Result<()> {
    if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return Ok(());
    }
    let result = query_cmd::<String>(pool, &redis::cmd("PING"), CONNECT_CHECK).await;
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = format!("{e:#}");
            let refused = e.chain().any(crate::tls::is_certificate_error)
                || text.contains("invalid peer certificate")
                || text.contains("CertificateError")
                || text.contains("certificate");
            if refused {
                Err(e).context(
                    "Redis over TLS: the server's certificate was refused (check \
                     NOTIFYD_REDIS_CA_FILE and the host name in REDIS_URL)",
                )
            } else {
                tracing::warn!(error = %text, "Redis over TLS is not reachable yet; starting anyway");
                Ok(())
            }
        }
    }
}

/// Bound on [`check_tls`]'s PING (connect and TLS handshake included).
const CONNECT_CHECK: Duration = Duration::from_secs(5);

/// Bound on each leg of the readiness canary (PUBLISH, then seeing it arrive).
pub const CANARY_TIMEOUT: Duration = Duration::from_secs(2);

/// The end-to-end readiness check: PUBLISH a unique token on `channel` (this node's own canary
/// channel) and see it come back through this node's hub. Fails when Redis does not take the
/// PUBLISH, or the subscriber does not deliver it in time (a stuck or half-open subscription).
/// Takes at most `hub::LISTEN_WAIT + 2 × CANARY_TIMEOUT`.
pub async fn canary(hub: &Hub, pool: &deadpool_redis::Pool, channel: &str) -> bool {
    if !hub.is_connected() {
        return false;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let id = hub.canary_listener();
    hub.listen(channel, id, Arc::new(tx)).await;
    let token = uuid::Uuid::new_v4().to_string();
    let published = query_cmd::<i64>(
        pool,
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(Envelope::probe(&token).encode()),
        CANARY_TIMEOUT,
    )
    .await;
    let arrived = match published {
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "readiness canary: PUBLISH failed");
            false
        }
        Ok(_) => tokio::time::timeout(CANARY_TIMEOUT, async {
            while let Some(msg) = rx.recv().await {
                if let HubMsg::Message { envelope, .. } = msg {
                    if envelope.head == Head::Probe && *envelope.frame == *token {
                        return true;
                    }
                }
            }
            false
        })
        .await
        .unwrap_or(false),
    };
    hub.unlisten(channel, id);
    if !arrived {
        metrics::counter!("notifyd_readyz_canary_failures_total").increment(1);
    }
    arrived
}
