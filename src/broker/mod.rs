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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::IntoConnectionInfo;
use std::collections::HashMap;

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
    Redis(Redis),
    /// Single-node mode: publishing delivers straight into this node's hub.
    Local(Arc<Hub>),
}

impl Broker {
    /// Publishes `(channel, envelope text)` pairs in order (per channel), in one round trip per
    /// Redis (per slot on a cluster: see [`Redis::exec`]).
    pub async fn publish(&self, items: &[(String, String)]) -> anyhow::Result<()> {
        match self {
            Broker::Redis(redis) => {
                let mut pipe = redis::pipe();
                for (channel, payload) in items {
                    pipe.add_command(redis.publish_cmd(channel, payload))
                        .ignore();
                }
                redis.exec(&pipe, PUBLISH_TIMEOUT).await
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

/// The Redis every command of this node goes to: one server through a pool, or a Redis Cluster
/// through the redis crate's cluster connection (it multiplexes one connection per node, routes
/// each command to its key's slot, follows `MOVED`/`ASK` and refreshes the slot map after a
/// failover by itself; a pool of them would only multiply connections, and deadpool-redis's
/// cluster manager cannot take a private CA), replaced when it stops answering
/// ([`ClusterCommands`]). See docs/decisions/0016-redis-cluster.md.
#[derive(Clone)]
pub enum Redis {
    Single(deadpool_redis::Pool),
    Cluster(Arc<ClusterCommands>),
}

/// The node's one cluster connection for commands (the relay's SPUBLISHes, presence, the
/// readiness canary), and how to make another.
///
/// A command on it that times out (neither answered nor failed within its bound) makes a fresh
/// connection from the seeds take its place: with redis 1.8.1 under tokio 1.54 the cluster
/// connection can stop answering for good. After a `MOVED` or a lost node it refreshes its
/// slot map under the write half of its connection map's lock, and while that refresh runs it
/// polls none of its in-flight requests; tokio 1.54's lock hands a request its read permit
/// before the task's cooperative budget makes it yield, so a request that yielded there holds
/// a permit it releases only when polled again, and the refresh waits for it forever (seen
/// after a master was killed: every publish timed out for the 60 s the test waited;
/// `redis_cluster::the_command_connection_keeps_answering_while_slots_move_under_load`). The
/// old connection's task ends once the commands still holding it return.
pub struct ClusterCommands {
    seeds: Vec<redis::ConnectionInfo>,
    ca: Option<Vec<u8>>,
    /// The connection, and how many times it was replaced (so that the timeouts of many
    /// commands on one stalled connection replace it once).
    current: parking_lot::Mutex<(u64, ClusterConnection)>,
    /// A replacement is being made (one at a time).
    replacing: AtomicBool,
    /// Where replacements are made: the runtime the node connected on (the one its
    /// background tasks run on), whichever task's command noticed the stall.
    runtime: tokio::runtime::Handle,
}

impl ClusterCommands {
    /// The connection now, and its generation.
    fn get(&self) -> (u64, ClusterConnection) {
        let current = self.current.lock();
        (current.0, current.1.clone())
    }

    /// A command's result on the connection of `generation`. The crate's own bound on a
    /// command (its response timeout, the same 5 s as the relay's) may pass before ours: that
    /// is a stall as well.
    fn check<T>(self: &Arc<Self>, generation: u64, r: redis::RedisResult<T>) -> anyhow::Result<T> {
        if let Err(e) = &r {
            if e.is_timeout() {
                self.stalled(generation);
            }
        }
        r.context("redis command failed")
    }

    /// Runs `run` on the connection now, within `timeout`: a command that neither answered nor
    /// failed by then (or that the crate timed out, `check`) has the connection replaced.
    async fn bounded<T, F>(
        self: &Arc<Self>,
        timeout: Duration,
        run: impl FnOnce(ClusterConnection) -> F,
    ) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (generation, conn) = self.get();
        match tokio::time::timeout(timeout, run(conn)).await {
            Ok(r) => self.check(generation, r),
            Err(_) => {
                self.stalled(generation);
                anyhow::bail!("redis command timed out after {timeout:?}")
            }
        }
    }

    /// A command on the connection of `generation` timed out: unless it was replaced already
    /// (or is being replaced), a fresh one from the seeds takes its place in the background.
    /// The command that noticed still fails (its caller retries, as the relay does).
    fn stalled(self: &Arc<Self>, generation: u64) {
        if self.current.lock().0 != generation || self.replacing.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        self.runtime.spawn(async move {
            match connect_cluster(&me.seeds, me.ca.as_deref()).await {
                Ok(fresh) => {
                    let old = {
                        let mut current = me.current.lock();
                        let old = std::mem::replace(&mut current.1, fresh);
                        current.0 = generation + 1;
                        old
                    };
                    drop(old);
                    metrics::counter!("notifyd_redis_cluster_reconnects_total", "outcome" => "replaced")
                        .increment(1);
                    tracing::warn!("a command on the Redis Cluster connection timed out; replaced it with a fresh one from the seeds");
                }
                Err(e) => {
                    metrics::counter!("notifyd_redis_cluster_reconnects_total", "outcome" => "failed")
                        .increment(1);
                    tracing::warn!(error = %format!("{e:#}"), "a command on the Redis Cluster connection timed out, and a fresh connection could not be made; keeping the old one");
                }
            }
            me.replacing.store(false, Ordering::SeqCst);
        });
    }
}

/// A cluster connection for commands from `seeds`, within the connect bound.
async fn connect_cluster(
    seeds: &[redis::ConnectionInfo],
    ca: Option<&[u8]>,
) -> anyhow::Result<ClusterConnection> {
    let client = cluster_client(seeds, ca, None)?;
    tokio::time::timeout(POOL_WAIT, client.get_async_connection())
        .await
        .context("connecting to the Redis Cluster: timed out")
        .and_then(|r| r.context("connecting to the Redis Cluster"))
}

impl Redis {
    /// Connects to what `url` names. A cluster's connection is made at once (it needs the slot
    /// map): a cluster that cannot be reached yet is retried in the background, so this never
    /// blocks start-up for longer than the connect timeout.
    pub async fn connect(target: &RedisTarget) -> anyhow::Result<Redis> {
        match target {
            RedisTarget::Single(info) => Ok(Redis::Single(redis_pool_for(info.clone())?)),
            RedisTarget::Cluster { seeds, ca } => {
                match connect_cluster(seeds, ca.as_deref()).await {
                    Ok(conn) => Ok(Redis::Cluster(Arc::new(ClusterCommands {
                        seeds: seeds.clone(),
                        ca: ca.clone(),
                        current: parking_lot::Mutex::new((0, conn)),
                        replacing: AtomicBool::new(false),
                        runtime: tokio::runtime::Handle::current(),
                    }))),
                    Err(e) => Err(explain_certificate_refusal(
                        seed_certificate_refusal(seeds).await.unwrap_or(e),
                    )),
                }
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Redis::Cluster(_))
    }

    /// PUBLISH on one Redis, SPUBLISH (sharded pub/sub: the message stays on the channel's
    /// shard) on a cluster, where a plain PUBLISH would be copied to every node of the cluster.
    pub fn publish_cmd(&self, channel: &str, payload: &str) -> redis::Cmd {
        let name = if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let mut cmd = redis::cmd(name);
        cmd.arg(channel).arg(payload);
        cmd
    }

    /// Runs one command within `timeout` (see [`query_cmd`]).
    pub async fn cmd<T: redis::FromRedisValue>(
        &self,
        q: &redis::Cmd,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        match self {
            Redis::Single(pool) => query_cmd(pool, q, timeout).await,
            Redis::Cluster(cluster) => {
                cluster
                    .bounded(timeout, |mut conn| async move {
                        q.query_async::<T>(&mut conn).await
                    })
                    .await
            }
        }
    }

    /// Runs each of `cmds` within `timeout` and returns their replies in order. On one Redis
    /// they are one pipeline, one round trip; on a cluster, whose shards may hold their keys
    /// apart, each runs on its own, `CLUSTER_PIPELINES_AT_ONCE` at a time.
    pub async fn each<T: redis::FromRedisValue + Send>(
        &self,
        cmds: Vec<redis::Cmd>,
        timeout: Duration,
    ) -> anyhow::Result<Vec<T>> {
        let cluster = match self {
            Redis::Single(pool) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                return query::<Vec<T>>(pool, &pipe, timeout).await;
            }
            Redis::Cluster(cluster) => cluster,
        };
        cluster
            .bounded(timeout, |conn| {
                futures_util::stream::iter(cmds)
                    .map(move |cmd| {
                        let mut conn = conn.clone();
                        async move { cmd.query_async::<T>(&mut conn).await }
                    })
                    .buffered(CLUSTER_PIPELINES_AT_ONCE)
                    .try_collect::<Vec<T>>()
            })
            .await
    }

    /// Runs a pipeline whose replies are all ignored, within `timeout`. On one Redis it is one
    /// round trip. A cluster refuses a pipeline whose keys live in several slots, so there the
    /// pipeline is split by the slot of each command's key (its first argument), keeping the
    /// order within a slot (so within a key, a channel), and the slots' pipelines run at once.
    pub async fn exec(&self, q: &redis::Pipeline, timeout: Duration) -> anyhow::Result<()> {
        let cluster = match self {
            Redis::Single(pool) => return query::<()>(pool, q, timeout).await,
            Redis::Cluster(cluster) => cluster,
        };
        let run = |conn: ClusterConnection| async move {
            let mut slots: Vec<redis::Pipeline> = vec![];
            let mut index: HashMap<Slot, usize> = HashMap::new();
            for cmd in q.cmd_iter() {
                let slot = match cmd.args_iter().nth(1) {
                    Some(redis::Arg::Simple(key)) => Slot::for_key(key),
                    _ => Slot::for_key(b""),
                };
                let i = *index.entry(slot).or_insert_with(|| {
                    slots.push(redis::pipe());
                    slots.len() - 1
                });
                slots[i].add_command(cmd.clone()).ignore();
            }
            futures_util::stream::iter(slots)
                .map(|pipe| {
                    let mut conn = conn.clone();
                    async move { pipe.query_async::<()>(&mut conn).await }
                })
                .buffer_unordered(CLUSTER_PIPELINES_AT_ONCE)
                .try_collect::<Vec<()>>()
                .await
        };
        cluster.bounded(timeout, run).await.map(drop)
    }
}

/// Per-slot pipelines of one [`Redis::exec`] in flight at once on a cluster.
const CLUSTER_PIPELINES_AT_ONCE: usize = 64;

/// What `REDIS_URL` names, parsed, with this service's TCP (and TLS) settings.
#[derive(Clone, Debug)]
pub enum RedisTarget {
    Single(redis::ConnectionInfo),
    /// A Redis Cluster's seed nodes (`redis+cluster://h1:p1,h2:p2`), and the private CA
    /// (`NOTIFYD_REDIS_CA_FILE`) for `rediss+cluster://`.
    Cluster {
        seeds: Vec<redis::ConnectionInfo>,
        ca: Option<Vec<u8>>,
    },
}

impl RedisTarget {
    pub fn parse(url: &str, ca_file: Option<&std::path::Path>) -> anyhow::Result<RedisTarget> {
        match crate::config::values::cluster_seeds(url.trim()) {
            None => Ok(RedisTarget::Single(connection_info_with_ca(url, ca_file)?)),
            Some(seeds) => {
                let seeds = seeds.map_err(|e| anyhow::anyhow!("REDIS_URL {e}"))?;
                let infos = seeds
                    .iter()
                    .map(|s| connection_info_with_ca(s, ca_file))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                // Read twice (once per seed above): small, and only at start-up.
                let ca = match ca_file {
                    Some(path) => Some(std::fs::read(path).with_context(|| {
                        format!("reading NOTIFYD_REDIS_CA_FILE {}", path.display())
                    })?),
                    None => None,
                };
                Ok(RedisTarget::Cluster { seeds: infos, ca })
            }
        }
    }

    /// The first server's address, to tell a `rediss` target from a plain one.
    pub fn first(&self) -> &redis::ConnectionInfo {
        match self {
            RedisTarget::Single(info) => info,
            RedisTarget::Cluster { seeds, .. } => &seeds[0],
        }
    }
}

/// Where a RESP3 cluster connection hands its push messages; `Err` when it could not take one.
pub type PushSink = Box<dyn Fn(redis::PushInfo) -> Result<(), ()> + Send + Sync>;

/// A cluster client for `seeds` (their credentials, TLS and TCP settings: the redis crate takes
/// them from the first seed for every node it discovers). `push` makes it a RESP3 client that
/// hands every push message (sharded pub/sub messages, subscription confirmations, the
/// library's own `Disconnection`) to `push`: the hub's sharded subscriber.
pub fn cluster_client(
    seeds: &[redis::ConnectionInfo],
    ca: Option<&[u8]>,
    push: Option<PushSink>,
) -> anyhow::Result<redis::cluster::ClusterClient> {
    let mut builder = redis::cluster::ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(POOL_WAIT)
        .response_timeout(PUBLISH_TIMEOUT)
        .tcp_settings(tcp_settings());
    if let Some(pem) = ca {
        // The seeds carry it already, but the nodes the client discovers get the builder's.
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        });
    }
    if let Some(push) = push {
        builder = builder
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push);
    }
    builder.build().context("building the Redis Cluster client")
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
    Ok(info.set_tcp_settings(tcp_settings()))
}

fn tcp_settings() -> TcpSettings {
    let keepalive = TcpKeepalive::new()
        .with_time(hub::TCP_KEEPALIVE_IDLE)
        .with_interval(hub::TCP_KEEPALIVE_INTERVAL)
        .with_retries(hub::TCP_KEEPALIVE_RETRIES);
    TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(hub::TCP_USER_TIMEOUT)
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
///
/// On a `rediss+cluster://` cluster, a PING to every master at the address the cluster announces
/// for it (see [`ping_announced_masters`]): the seeds answering proves nothing about those.
pub async fn check_tls(redis: &Redis, target: &RedisTarget) -> anyhow::Result<()> {
    if !matches!(target.first().addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return Ok(());
    }
    let result = match target {
        RedisTarget::Single(_) => redis
            .cmd::<String>(&redis::cmd("PING"), CONNECT_CHECK)
            .await
            .map(drop),
        RedisTarget::Cluster { seeds, .. } => {
            tokio::time::timeout(CONNECT_CHECK, ping_announced_masters(seeds))
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "the cluster's masters did not answer within {CONNECT_CHECK:?}"
                    ))
                })
        }
    };
    match result {
        Ok(_) => Ok(()),
        Err(e) if certificate_refused(&e) => Err(explain_certificate_refusal(e)),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "Redis over TLS is not reachable yet; starting anyway");
            Ok(())
        }
    }
}

/// A PING to every master of the cluster at the address the cluster announces for it (`CLUSTER
/// SLOTS`, asked of the first seed that answers), each over a connection of its own with the
/// seeds' TLS settings and credentials. The cluster client connects to every node at that
/// address, not at the seeds' names, so a certificate that does not name it (a node certificate
/// for a DNS name while the nodes announce their IP) is refused there only; and the cluster
/// client retries such a node in the background, a PING routed through it waiting instead of
/// failing. A plain connection says why.
async fn ping_announced_masters(seeds: &[redis::ConnectionInfo]) -> anyhow::Result<()> {
    let mut slots = Err(anyhow::anyhow!("no seed"));
    for seed in seeds {
        slots = ask(seed.clone(), redis::cmd("CLUSTER").arg("SLOTS"))
            .await
            .with_context(|| format!("CLUSTER SLOTS of the seed {}", seed.addr()));
        match &slots {
            Ok(_) => break,
            Err(e) if certificate_refused(e) => break,
            Err(_) => {}
        }
    }
    let masters = announced_masters(&slots?);
    let pings = masters.into_iter().map(|(host, port)| {
        let seed = &seeds[0];
        async move {
            let addr = match seed.addr().clone() {
                redis::ConnectionAddr::TcpTls {
                    insecure,
                    tls_params,
                    ..
                } => redis::ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port,
                    insecure,
                    tls_params,
                },
                _ => return Ok(()),
            };
            ask(seed.clone().set_addr(addr), &redis::cmd("PING"))
                .await
                .map(drop)
                .with_context(|| format!("the master {host}:{port}, as the cluster announces it"))
        }
    });
    futures_util::future::try_join_all(pings).await?;
    Ok(())
}

/// When a cluster's seeds could not be connected to: a seed's certificate refusal, if any seed
/// gives one (each asked on a connection of its own, at once, within [`CONNECT_CHECK`]). The
/// cluster client reports only the last of its seeds' errors, so a wrong CA could read as
/// another seed's `Connection refused` or timeout; the refusal is the reason to give.
async fn seed_certificate_refusal(seeds: &[redis::ConnectionInfo]) -> Option<anyhow::Error> {
    if !matches!(seeds.first()?.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return None;
    }
    let mut asks: futures_util::stream::FuturesUnordered<_> = seeds
        .iter()
        .map(|seed| async move {
            ask(seed.clone(), &redis::cmd("PING"))
                .await
                .with_context(|| format!("connecting to the Redis Cluster's seed {}", seed.addr()))
        })
        .collect();
    while let Some(answer) = asks.next().await {
        if let Err(e) = answer {
            if certificate_refused(&e) {
                return Some(e);
            }
        }
    }
    None
}

/// `cmd` on a connection of its own to `info`, within [`CONNECT_CHECK`] (connect included).
async fn ask(info: redis::ConnectionInfo, cmd: &redis::Cmd) -> anyhow::Result<redis::Value> {
    let run = async {
        let client = redis::Client::open(info)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_CHECK))
            .set_response_timeout(Some(CONNECT_CHECK));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        cmd.query_async::<redis::Value>(&mut conn).await
    };
    tokio::time::timeout(CONNECT_CHECK, run)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {CONNECT_CHECK:?}"))?
        .map_err(anyhow::Error::from)
}

/// The masters' `(host, port)` in a `CLUSTER SLOTS` reply (`[[start, end, [host, port, id, ..],
/// replicas..], ..]`), each once. An empty host means the answering node's own (Redis leaves it
/// empty when it does not know its address): that is a seed, already checked, so skipped, as is
/// `?` (an unknown endpoint).
fn announced_masters(slots: &redis::Value) -> Vec<(String, u16)> {
    use redis::Value;
    let Value::Array(ranges) = slots else {
        return vec![];
    };
    let mut out: Vec<(String, u16)> = vec![];
    for range in ranges {
        let Value::Array(range) = range else { continue };
        let Some(Value::Array(master)) = range.get(2) else {
            continue;
        };
        let (Some(Value::BulkString(host)), Some(Value::Int(port))) =
            (master.first(), master.get(1))
        else {
            continue;
        };
        let host = String::from_utf8_lossy(host).into_owned();
        let Ok(port) = u16::try_from(*port) else {
            continue;
        };
        if host.is_empty() || host == "?" || out.contains(&(host.clone(), port)) {
            continue;
        }
        out.push((host, port));
    }
    out
}

/// Whether `e` is the TLS client refusing the server's certificate (not Redis being down).
fn certificate_refused(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    e.chain().any(crate::tls::is_certificate_error)
        || text.contains("invalid peer certificate")
        || text.contains("CertificateError")
        || text.contains("certificate")
}

/// A refused certificate, said as such with the settings to check, the same for one `rediss://`
/// server ([`check_tls`]) and a `rediss+cluster://` cluster (whose client fails at its first
/// connection, in [`Redis::connect`]). Any other error is returned as it is.
fn explain_certificate_refusal(e: anyhow::Error) -> anyhow::Error {
    if !certificate_refused(&e) {
        return e;
    }
    e.context(
        "Redis over TLS: the server's certificate was refused (check NOTIFYD_REDIS_CA_FILE and \
         the host name in REDIS_URL)",
    )
}

/// Bound on [`check_tls`]'s PING (connect and TLS handshake included).
const CONNECT_CHECK: Duration = Duration::from_secs(5);

/// Bound on each leg of the readiness canary (PUBLISH, then seeing it arrive).
pub const CANARY_TIMEOUT: Duration = Duration::from_secs(2);

/// The end-to-end readiness check: PUBLISH (SPUBLISH on a cluster) a unique token on `channel` (this node's own canary
/// channel) and see it come back through this node's hub. Fails when Redis does not take the
/// PUBLISH, or the subscriber does not deliver it in time (a stuck or half-open subscription).
/// Takes at most `hub::LISTEN_WAIT + 2 × CANARY_TIMEOUT`.
pub async fn canary(hub: &Hub, redis: &Redis, channel: &str) -> bool {
    if !hub.is_connected() {
        return false;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let id = hub.canary_listener();
    hub.listen(channel, id, Arc::new(tx)).await;
    let token = uuid::Uuid::new_v4().to_string();
    let published = redis
        .cmd::<i64>(
            &redis.publish_cmd(channel, &Envelope::probe(&token).encode()),
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

#[cfg(test)]
mod tests {
    use super::announced_masters;
    use redis::Value;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    fn range(start: i64, end: i64, nodes: Vec<Value>) -> Value {
        let mut r = vec![Value::Int(start), Value::Int(end)];
        r.extend(nodes);
        Value::Array(r)
    }

    #[test]
    fn the_masters_of_cluster_slots_once_each_without_replicas_or_unknown_hosts() {
        let slots = Value::Array(vec![
            range(0, 100, vec![node("10.0.0.1", 7000), node("10.0.0.4", 7003)]),
            range(101, 200, vec![node("10.0.0.2", 7001)]),
            range(201, 300, vec![node("10.0.0.1", 7000)]),
            range(301, 400, vec![node("", 7002)]),
            range(401, 500, vec![node("?", 7005)]),
            range(501, 600, vec![node("10.0.0.3", 70_000)]),
        ]);
        assert_eq!(
            announced_masters(&slots),
            [
                ("10.0.0.1".to_string(), 7000),
                ("10.0.0.2".to_string(), 7001)
            ]
        );
        assert!(announced_masters(&Value::Nil).is_empty());
    }
}
