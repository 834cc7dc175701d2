//! The faults, injected in rounds while messages flow.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::task::JoinHandle;

use crate::clients::{Client, Transport};
use crate::cluster::Cluster;
use crate::producer::Producer;
use crate::proxy::RoleCounts;
use crate::redis_cluster::channels_by_master;
use crate::util::{lock, note, wait_for, Clock};
use crate::{Config, FLOOD_BATCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum FaultKind {
    NodeKill,
    RelayKill,
    TcpDrop,
    RedisRestart,
    PostgresRestart,
    SlowClient,
    HalfOpenRedis,
    HalfOpenPostgres,
    /// The Redis Cluster run's one fault (not in `ALL_FAULTS`: the default run has one Redis).
    RedisMasterKill,
}

pub(crate) const ALL_FAULTS: [FaultKind; 8] = [
    FaultKind::NodeKill,
    FaultKind::RelayKill,
    FaultKind::TcpDrop,
    FaultKind::RedisRestart,
    FaultKind::PostgresRestart,
    FaultKind::SlowClient,
    FaultKind::HalfOpenRedis,
    FaultKind::HalfOpenPostgres,
];

/// The connections a node must give up on by itself while its peer is silent, per half-open
/// fault: the Redis subscriber (or it delivers nothing and still calls itself ready), and the
/// relay's connection (or a leader that cannot lead keeps the lock, or a stand-by hangs).
/// Pooled connections are not required: an idle one is only found out when next used.
pub(crate) fn must_notice(kind: FaultKind) -> Option<&'static str> {
    match kind {
        FaultKind::HalfOpenRedis => Some("subscriber"),
        FaultKind::HalfOpenPostgres => Some("relay"),
        _ => None,
    }
}

/// What a half-open fault's outcome says is wrong: a node that did not notice by itself.
fn half_open_problems(f: &Fault) -> Vec<String> {
    let (Some(role), Some(by_role)) = (must_notice(f.kind), &f.half_open) else {
        return vec![];
    };
    match by_role.iter().find(|r| r.0 == role) {
        None => vec![format!(
            "{} at {:.1} s: no {role} connection was open to freeze (the proxy saw none)",
            f.kind.label(),
            f.start / 1000.0
        )],
        Some((_, n, closed)) if closed < n => vec![format!(
            "{} at {:.1} s: the nodes noticed only {closed} of {n} silent {role} connections \
             by themselves before the reset",
            f.kind.label(),
            f.start / 1000.0
        )],
        Some(_) => vec![],
    }
}

impl FaultKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            FaultKind::NodeKill => "kill -9 of the node holding a client's socket",
            FaultKind::RelayKill => "kill -9 of the node running the active relay",
            FaultKind::TcpDrop => "client TCP connection dropped (no close frame)",
            FaultKind::RedisRestart => "Redis killed and restarted",
            FaultKind::PostgresRestart => "PostgreSQL restarted (pg_ctl restart -m fast)",
            FaultKind::SlowClient => "slow client (stops reading)",
            FaultKind::HalfOpenRedis => "half-open Redis (connections silent, then reset)",
            FaultKind::HalfOpenPostgres => "half-open PostgreSQL (connections silent, then reset)",
            FaultKind::RedisMasterKill => {
                "kill -9 of a Redis Cluster master (its replica takes over)"
            }
        }
    }
}

pub(crate) struct Fault {
    pub(crate) kind: FaultKind,
    /// Injected at, and over at (the node back up, the client reconnected, ...), run clock ms.
    pub(crate) start: f64,
    pub(crate) end: f64,
    pub(crate) detail: String,
    /// Relay kill: from the kill to another node holding the leader lock.
    pub(crate) takeover_ms: Option<f64>,
    /// Redis master kill: from the kill to the cluster serving every slot again (its replica
    /// promoted, `cluster_state:ok` on every live node).
    pub(crate) failover_ms: Option<f64>,
    /// Slow client: did the server close a slow consumer (notifyd_slow_consumer_closed_total)?
    pub(crate) slow_closed: Option<bool>,
    /// Half-open: per kind of connection, (frozen, of which the nodes closed on their own).
    pub(crate) half_open: Option<RoleCounts>,
    /// What this fault showed to be wrong (the run fails on any).
    pub(crate) problems: Vec<String>,
}

/// Injects the faults in turn, `cfg.gap` apart, for `cfg.rounds` rounds or (long runs)
/// until the producer is done.
pub(crate) struct FaultInjector<'a> {
    pub(crate) cfg: &'a Config,
    pub(crate) cluster: &'a mut Cluster,
    pub(crate) clients: &'a [Client],
    pub(crate) producer: &'a Producer,
    pub(crate) clock: Clock,
    pub(crate) faults: Vec<Fault>,
}

impl FaultInjector<'_> {
    pub(crate) async fn run(&mut self, producer_done: &JoinHandle<()>) -> anyhow::Result<()> {
        for round in 0..self.cfg.rounds {
            for kind in ALL_FAULTS {
                // After one full round, faults stop with the messages: a fault with nothing
                // flowing proves little.
                if round > 0 && producer_done.is_finished() {
                    return Ok(());
                }
                tokio::time::sleep(self.cfg.gap).await;
                let fault = match kind {
                    FaultKind::NodeKill => self.kill_node_of_a_client(round).await?,
                    FaultKind::RelayKill => self.kill_relay_leader().await?,
                    FaultKind::TcpDrop => self.drop_client_tcp(round).await?,
                    FaultKind::RedisRestart => self.restart_redis().await?,
                    FaultKind::PostgresRestart => self.restart_postgres().await?,
                    FaultKind::SlowClient => self.slow_client(round).await?,
                    FaultKind::HalfOpenRedis | FaultKind::HalfOpenPostgres => {
                        self.half_open(kind).await?
                    }
                    FaultKind::RedisMasterKill => bail!("not a fault of the default run"),
                };
                note(format!(
                    "{:>7.1}s  {} ({:.1}s): {}",
                    fault.start / 1000.0,
                    kind.label(),
                    (fault.end - fault.start) / 1000.0,
                    fault.detail
                ));
                self.faults.push(fault);
            }
        }
        Ok(())
    }

    pub(crate) fn fault(&self, kind: FaultKind, start: f64, detail: String) -> Fault {
        Fault {
            kind,
            start,
            end: self.clock.ms(),
            detail,
            takeover_ms: None,
            failover_ms: None,
            slow_closed: None,
            half_open: None,
            problems: vec![],
        }
    }

    /// A connected client, chosen by `round` among those that qualify: on `transport` if one
    /// is connected, else on either.
    pub(crate) fn pick_client(
        &self,
        round: usize,
        with_upstream: bool,
        transport: Transport,
    ) -> anyhow::Result<usize> {
        let candidates: Vec<usize> = (0..self.clients.len())
            .filter(|&i| self.clients[i].ctl.connected.load(Ordering::SeqCst))
            .filter(|&i| !with_upstream || lock(&self.clients[i].ctl.upstream).is_some())
            .collect();
        let on: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| self.clients[i].transport == transport)
            .collect();
        let pool = if on.is_empty() { &candidates } else { &on };
        if pool.is_empty() {
            bail!("no connected client to inject a fault into");
        }
        Ok(pool[(round * 7 + 3) % pool.len()])
    }

    /// A connected client on `transport` that is its user's only one. The flood goes to every
    /// socket of the user, and a burst bigger than the outbound budget may get a *reading*
    /// socket closed with 4008 too (that is the documented behaviour); the slow-consumer metric
    /// could then rise for that socket while the stalled one is never closed. With one socket
    /// per user, a rise of the metric during the fault is the stalled socket's close.
    pub(crate) fn pick_sole_client(
        &self,
        round: usize,
        transport: Transport,
    ) -> anyhow::Result<usize> {
        let candidates: Vec<usize> = (0..self.clients.len())
            .filter(|&i| self.clients[i].transport == transport)
            .filter(|&i| self.clients[i].ctl.connected.load(Ordering::SeqCst))
            .filter(|&i| {
                let user = &self.clients[i].user;
                self.clients.iter().filter(|c| &c.user == user).count() == 1
            })
            .collect();
        if candidates.is_empty() {
            bail!(
                "no connected {} client that is its user's only one",
                transport.label()
            );
        }
        Ok(candidates[(round * 7 + 3) % candidates.len()])
    }

    /// `notifyd_slow_consumer_closed_total` of each node (0 for one that does not answer).
    async fn slow_closes_by_node(&self) -> Vec<f64> {
        let mut out = vec![];
        for n in &self.cluster.nodes {
            out.push(n.slow_consumers_closed(&self.cluster.http).await);
        }
        out
    }

    /// Connections, of every client, that ended with a 4008 close frame so far.
    fn slow_closes_seen(&self) -> usize {
        self.clients
            .iter()
            .map(|c| {
                lock(&c.log)
                    .ends
                    .iter()
                    .filter(|(_, how)| how == "close 4008")
                    .count()
            })
            .sum()
    }

    pub(crate) async fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.cluster.nodes[i].launch()?;
        self.cluster.nodes[i].wait_ready(&self.cluster.http).await
    }

    /// Kills the node holding a client's connection: an SSE client's in even rounds, a
    /// WebSocket's in odd ones (the node holds both kinds either way).
    pub(crate) async fn kill_node_of_a_client(&mut self, round: usize) -> anyhow::Result<Fault> {
        let want = if round.is_multiple_of(2) {
            Transport::Sse
        } else {
            Transport::WebSocket
        };
        let c = self.pick_client(round, true, want)?;
        let addr = lock(&self.clients[c].ctl.upstream)
            .clone()
            .unwrap_or_default();
        let i = self
            .cluster
            .node_index(&addr)
            .with_context(|| format!("X-Upstream {addr:?} is not one of our nodes"))?;
        let on_node = |t: Transport| {
            self.clients
                .iter()
                .filter(|c| c.transport == t && c.ctl.connected.load(Ordering::SeqCst))
                .filter(|c| lock(&c.ctl.upstream).as_deref() == Some(addr.as_str()))
                .count()
        };
        let (ws, sse) = (on_node(Transport::WebSocket), on_node(Transport::Sse));
        let start = self.clock.ms();
        self.cluster.nodes[i].kill9();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.restart_node(i).await?;
        let detail = format!(
            "{} ({} connection of {}; {ws} WebSocket + {sse} SSE connections on it), \
             restarted after 1.5 s",
            self.cluster.nodes[i].name,
            self.clients[c].transport.label(),
            self.clients[c].user
        );
        Ok(self.fault(FaultKind::NodeKill, start, detail))
    }

    pub(crate) async fn kill_relay_leader(&mut self) -> anyhow::Result<Fault> {
        let mut leader = None;
        for _ in 0..150 {
            if let Ok(Some(l)) = self.cluster.relay_leader().await {
                leader = Some(l);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let leader = leader.context("no relay holds the leader lock")?;
        let i = self
            .cluster
            .node_index(&leader)
            .with_context(|| format!("relay leader {leader:?} is not one of our nodes"))?;
        let start = self.clock.ms();
        self.cluster.nodes[i].kill9();
        let mut successor = None;
        while self.clock.ms() - start < 30_000.0 {
            if let Ok(Some(l)) = self.cluster.relay_leader().await {
                if l != leader {
                    successor = Some(l);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let takeover = self.clock.ms() - start;
        let successor = successor.context("no relay took over within 30 s")?;
        self.restart_node(i).await?;
        let mut f = self.fault(
            FaultKind::RelayKill,
            start,
            format!(
                "{leader} killed; {successor} leads after {:.2} s",
                takeover / 1000.0
            ),
        );
        f.takeover_ms = Some(takeover);
        Ok(f)
    }

    /// Cuts one WebSocket client's and one SSE client's TCP connection at once (no close
    /// frame, no end of stream); both must come back.
    pub(crate) async fn drop_client_tcp(&mut self, round: usize) -> anyhow::Result<Fault> {
        let mut picked = vec![];
        for t in [Transport::WebSocket, Transport::Sse] {
            let c = self.pick_client(round + 1, false, t)?;
            if !picked.contains(&c) {
                picked.push(c);
            }
        }
        let before: Vec<usize> = picked
            .iter()
            .map(|&c| self.clients[c].ctl.connects.load(Ordering::SeqCst))
            .collect();
        let start = self.clock.ms();
        for &c in &picked {
            self.clients[c].ctl.drop_socket.notify_one();
        }
        let ctls: Vec<_> = picked
            .iter()
            .map(|&c| self.clients[c].ctl.clone())
            .collect();
        wait_for(
            "the dropped clients to reconnect",
            Duration::from_secs(30),
            || {
                let (ctls, before) = (&ctls, &before);
                async move {
                    ctls.iter().zip(before).all(|(ctl, b)| {
                        ctl.connects.load(Ordering::SeqCst) > *b
                            && ctl.connected.load(Ordering::SeqCst)
                    })
                }
            },
        )
        .await?;
        let who: Vec<String> = picked
            .iter()
            .map(|&c| {
                format!(
                    "{} client of {}",
                    self.clients[c].transport.a(),
                    self.clients[c].user
                )
            })
            .collect();
        let detail = format!(
            "{} cut their connections and reconnected",
            who.join(" and ")
        );
        Ok(self.fault(FaultKind::TcpDrop, start, detail))
    }

    pub(crate) async fn restart_redis(&mut self) -> anyhow::Result<Fault> {
        let start = self.clock.ms();
        let redis = self.cluster.single_redis()?;
        redis.kill();
        tokio::time::sleep(Duration::from_secs(1)).await;
        redis.launch().await?;
        Ok(self.fault(
            FaultKind::RedisRestart,
            start,
            "killed, down for 1 s, started empty on the same port".into(),
        ))
    }

    pub(crate) async fn restart_postgres(&mut self) -> anyhow::Result<Fault> {
        let start = self.clock.ms();
        self.cluster.pg.restart()?;
        let took = (self.clock.ms() - start) / 1000.0;
        Ok(self.fault(
            FaultKind::PostgresRestart,
            start,
            format!("pg_ctl restart -m fast took {took:.1} s"),
        ))
    }

    /// Stops one client reading (its user's only client; an SSE stream in even rounds, a
    /// WebSocket in odd ones), floods its user with large messages until the server closes it
    /// as a slow consumer (its queue is full once the socket buffers on the way are), then lets
    /// it read again: it drains, sees 4008 (WebSocket) or the end of its stream (SSE) and
    /// resumes (with `since`, or `Last-Event-ID`). The code takes several stalled clients at
    /// once (each flooded until its node's metric shows its close).
    pub(crate) async fn slow_client(&mut self, round: usize) -> anyhow::Result<Fault> {
        // One slow client a round (two at once take twice the floods, and the run's time):
        // an SSE stream in even rounds, a WebSocket in odd ones.
        let mut problems = vec![];
        let (want, other) = if round.is_multiple_of(2) {
            (Transport::Sse, Transport::WebSocket)
        } else {
            (Transport::WebSocket, Transport::Sse)
        };
        let picked = match self.pick_sole_client(round + 2, want) {
            Ok(c) => vec![c],
            Err(e) => {
                problems.push(format!("slow client: {e}"));
                vec![self.pick_sole_client(round + 2, other)?]
            }
        };
        let users: Vec<String> = picked
            .iter()
            .map(|&c| self.clients[c].user.clone())
            .collect();
        let ctls: Vec<_> = picked
            .iter()
            .map(|&c| self.clients[c].ctl.clone())
            .collect();
        // Which node holds each stalled connection: a rise of that node's slow-consumer metric
        // by as many stalled connections as it holds is their close (without an upstream,
        // the sum over the nodes must rise by all of them).
        let nodes: Vec<Option<usize>> = picked
            .iter()
            .map(|&c| {
                let addr = lock(&self.clients[c].ctl.upstream).clone();
                addr.and_then(|a| self.cluster.node_index(&a))
            })
            .collect();
        let before = self.slow_closes_by_node().await;
        let closes_before = self.slow_closes_seen();
        let connects: Vec<usize> = ctls
            .iter()
            .map(|c| c.connects.load(Ordering::SeqCst))
            .collect();
        let start = self.clock.ms();
        for ctl in &ctls {
            ctl.stall.notify_one();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut done = vec![false; picked.len()];
        let mut batches = 0;
        // Every stalled client's user flooded at once, each until its own connection is
        // closed: the stall lasts at most a minute (the liveness window is 75 s).
        while batches < 40 && done.contains(&false) {
            let floods = users
                .iter()
                .zip(&done)
                .filter(|(_, d)| !**d)
                .map(|(user, _)| {
                    self.producer
                        .flood(user, format!("flood-{round}-{batches}-{user}"))
                });
            futures_util::future::join_all(floods).await;
            batches += 1;
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let now = self.slow_closes_by_node().await;
                let rise: Vec<f64> = now.iter().zip(&before).map(|(a, b)| a - b).collect();
                if nodes.iter().all(Option::is_some) {
                    for (k, n) in nodes.iter().enumerate() {
                        let n = n.unwrap_or_default();
                        let held = nodes.iter().filter(|m| **m == Some(n)).count() as f64;
                        done[k] = done[k] || rise[n] >= held;
                    }
                } else if rise.iter().sum::<f64>() >= picked.len() as f64 {
                    done.iter_mut().for_each(|d| *d = true);
                }
                if !done.contains(&false) {
                    break;
                }
            }
        }
        let closed = !done.contains(&false);
        let stalled = (self.clock.ms() - start) / 1000.0;
        let resumed = Instant::now();
        for ctl in &ctls {
            ctl.resume.notify_one();
        }
        for (k, &c) in picked.iter().enumerate() {
            let ctl = ctls[k].clone();
            let connects = connects[k];
            let resumed_ok = wait_for("the slow client to resume", Duration::from_secs(60), || {
                let ctl = ctl.clone();
                async move {
                    ctl.connects.load(Ordering::SeqCst) > connects
                        && ctl.connected.load(Ordering::SeqCst)
                }
            })
            .await;
            if let Err(e) = resumed_ok {
                // Say what the client saw: how its connections ended, and whether it ever got
                // a close, so a failure here can be told apart from a harness mistake.
                let log = lock(&self.clients[c].log);
                bail!(
                    "{e}: {}'s {} client stalled {stalled:.1} s over {batches} flood batches; \
                     slow-consumer metric rose enough: {closed}; connected now: {}; connects \
                     {} -> {}; its last connection ends: {:?}; handshake failures: {:?}",
                    users[k],
                    self.clients[c].transport.label(),
                    ctl.connected.load(Ordering::SeqCst),
                    connects,
                    ctl.connects.load(Ordering::SeqCst),
                    log.ends.iter().rev().take(3).collect::<Vec<_>>(),
                    log.handshake_failures
                        .iter()
                        .rev()
                        .take(3)
                        .collect::<Vec<_>>(),
                );
            }
        }
        // Caught up: each has applied everything its user had when it started reading again.
        let seqs = self.cluster.inbox_seqs().await?;
        for (k, &c) in picked.iter().enumerate() {
            let target = seqs.get(&users[k]).map(|s| s.0).unwrap_or(0);
            let log = self.clients[c].log.clone();
            wait_for(
                "the slow client to catch up",
                Duration::from_secs(60),
                || {
                    let log = log.clone();
                    async move { lock(&log).last_seq >= target }
                },
            )
            .await?;
        }
        let caught_up = resumed.elapsed().as_secs_f64();
        let who: Vec<String> = picked
            .iter()
            .map(|&c| {
                let log = lock(&self.clients[c].log);
                let ended = log
                    .ends
                    .iter()
                    .find(|(t, _)| *t >= start)
                    .map(|(_, how)| how.clone())
                    .unwrap_or_default();
                format!(
                    "{} client of {} (its stalled connection: {ended})",
                    self.clients[c].transport.a(),
                    self.clients[c].user
                )
            })
            .collect();
        let mut f = self.fault(
            FaultKind::SlowClient,
            start,
            format!(
                "{} stopped reading for {stalled:.1} s while {} large messages came; server \
                 closed it: {closed}; caught up {caught_up:.1} s after reading again; 4008 \
                 closes seen by all WebSocket clients during the fault: {}",
                who.join(" and "),
                batches * FLOOD_BATCH * users.len(),
                self.slow_closes_seen() - closes_before
            ),
        );
        f.slow_closed = Some(closed);
        f.problems = problems;
        Ok(f)
    }

    /// Every connection the nodes have to Redis or PostgreSQL at this moment goes silent both
    /// ways (not closed) for `cfg.half_open_*`, longer than the service's timeouts; new
    /// connections go through. Then the frozen ones are reset (see `proxy.rs` for why reset,
    /// not resume). Over once every client has applied what its user had at the reset.
    pub(crate) async fn half_open(&mut self, kind: FaultKind) -> anyhow::Result<Fault> {
        let (proxy, what, freeze) = match kind {
            FaultKind::HalfOpenRedis => (
                self.cluster.redis_proxy()?,
                "Redis",
                self.cfg.half_open_redis,
            ),
            _ => (&self.cluster.pg_proxy, "PostgreSQL", self.cfg.half_open_pg),
        };
        let start = self.clock.ms();
        let frozen = proxy.freeze();
        let reset_deadline = tokio::time::Instant::now() + freeze;
        // Near the end of the freeze: does each node still call itself ready?
        let probe_at = freeze.saturating_sub(Duration::from_secs(4));
        tokio::time::sleep(probe_at).await;
        let readyz = self.cluster.readyz_all(Duration::from_secs(3)).await;
        tokio::time::sleep_until(reset_deadline).await;
        let out = proxy.reset(frozen);
        let reset_at = self.clock.ms();
        let caught_up = self.wait_for_clients_to_catch_up().await;
        let roles: Vec<String> = out
            .by_role
            .iter()
            .map(|(role, n, closed)| format!("{closed}/{n} {role}"))
            .collect();
        let closed = match out.slowest_close {
            Some(d) => format!(
                "the nodes closed {} of them on their own ({}), the last {:.1} s into the freeze",
                out.closed_by_node,
                roles.join(", "),
                d.as_secs_f64()
            ),
            None => format!(
                "the nodes closed none of them on their own ({})",
                roles.join(", ")
            ),
        };
        let detail = format!(
            "{} connections of the nodes to {what} silent for {:.0} s, then reset; {closed}; \
             /readyz {:.0} s into it: {}; {}",
            out.frozen,
            freeze.as_secs_f64(),
            probe_at.as_secs_f64(),
            readyz.join(", "),
            match caught_up {
                Some(t) => format!(
                    "every client caught up {:.1} s after the reset, {:.1} s after the fault",
                    (t - reset_at) / 1000.0,
                    (t - start) / 1000.0
                ),
                None => "clients had NOT caught up 60 s after the reset".into(),
            }
        );
        let mut f = self.fault(kind, start, detail);
        f.half_open = Some(out.by_role);
        f.problems = half_open_problems(&f);
        if caught_up.is_none() {
            f.problems.push(format!(
                "{} at {:.1} s: clients had not caught up 60 s after the reset",
                kind.label(),
                start / 1000.0
            ));
        }
        Ok(f)
    }

    /// `kill -9` of the Redis Cluster master that serves the most of `user_channels` (the
    /// clients' users' channels; `topic_channels` are only counted), mid-load. Over once its
    /// replica serves its slots and every client has applied what its user had then.
    pub(crate) async fn kill_redis_master(
        &mut self,
        user_channels: &[String],
        topic_channels: &[String],
    ) -> anyhow::Result<Fault> {
        const SHARD_EVENTS: &str = "notifyd_redis_shard_events_total";
        const CONNECTS: &str = "notifyd_hub_connects_total";
        let mut before = vec![];
        for n in &self.cluster.nodes {
            let http = &self.cluster.http;
            before.push((
                n.metric_sum(http, SHARD_EVENTS).await,
                n.metric_sum(http, CONNECTS).await,
            ));
        }
        let redis = self.cluster.redis_cluster()?;
        let users_by_master = channels_by_master(redis, user_channels).await?;
        let topics_by_master = channels_by_master(redis, topic_channels).await?;
        let (victim, users_on) = users_by_master
            .iter()
            .max_by_key(|(_, chs)| chs.len())
            .map(|(port, chs)| (*port, chs.len()))
            .context("the cluster has no master")?;
        let topics_on = topics_by_master.get(&victim).map_or(0, Vec::len);
        let masters = redis.masters().await?;
        let slots = masters
            .iter()
            .find(|m| m.port == victim)
            .map(|m| m.slots.clone())
            .unwrap_or_default();
        let start = self.clock.ms();
        redis.kill9(victim)?;
        let redis = &*redis;
        let failed_over = wait_for(
            "a replica to take over the killed master's slots",
            Duration::from_secs(30),
            || redis.serves_all_slots_without(victim),
        )
        .await;
        let failover = self.clock.ms() - start;
        failed_over?;
        let heir = match (slots.first(), redis.masters().await) {
            (Some((first, _)), Ok(now)) => now
                .iter()
                .find(|m| m.owns(*first))
                .map_or_else(|| "?".into(), |m| m.port.to_string()),
            _ => "?".into(),
        };
        let caught_up = self.wait_for_clients_to_catch_up().await;
        let mut reconnects = vec![];
        for (n, (events, connects)) in self.cluster.nodes.iter().zip(&before) {
            let http = &self.cluster.http;
            reconnects.push(format!(
                "{} {} / {}",
                n.name,
                n.metric_sum(http, SHARD_EVENTS).await - events,
                n.metric_sum(http, CONNECTS).await - connects
            ));
        }
        let ranges: Vec<String> = slots.iter().map(|(a, b)| format!("{a}-{b}")).collect();
        let detail = format!(
            "master :{victim} (slots {}; {users_on} of {} users' channels, {topics_on} of {} \
             topics) killed; its replica :{heir} serves them {:.2} s later; per node, shard \
             events that made its subscriber reconnect / subscriber (re)connects since: {}; {}",
            ranges.join(","),
            user_channels.len(),
            topic_channels.len(),
            failover / 1000.0,
            reconnects.join(", "),
            match caught_up {
                Some(t) => format!(
                    "every client caught up {:.1} s after the kill",
                    (t - start) / 1000.0
                ),
                None => "clients had NOT caught up 60 s after the failover".into(),
            }
        );
        let mut f = self.fault(FaultKind::RedisMasterKill, start, detail);
        f.failover_ms = Some(failover);
        if caught_up.is_none() {
            f.problems.push(format!(
                "{} at {:.1} s: clients had not caught up 60 s after the failover",
                FaultKind::RedisMasterKill.label(),
                start / 1000.0
            ));
        }
        Ok(f)
    }

    /// Waits (at most a minute) until every client has applied its user's seq as of now.
    /// Returns when (run clock ms), or None if they did not (reported, not fatal: the run goes
    /// on to its report).
    async fn wait_for_clients_to_catch_up(&self) -> Option<f64> {
        let target = self.cluster.inbox_seqs().await.ok()?;
        let clients = self.clients;
        wait_for(
            "every client to catch up after the fault",
            Duration::from_secs(60),
            || {
                let target = &target;
                async move {
                    clients.iter().all(|c| {
                        let want = target.get(&c.user).map(|s| s.0).unwrap_or(0);
                        lock(&c.log).last_seq >= want
                    })
                }
            },
        )
        .await
        .ok()?;
        Some(self.clock.ms())
    }
}
