//! A private Redis Cluster for the master-kill scenario: three masters and three replicas of
//! `redis-server` (7+), child processes on free ports under the run directory, joined with
//! `redis-cli --cluster create --cluster-replicas 1`, so the harness may `kill -9` a master.
//!
//! What scripts/redis-cluster-test.sh learnt, kept here: a short `cluster-node-timeout` (2 s)
//! so a replica takes over within a few seconds; `repl-diskless-sync-delay 0` so the replicas'
//! first sync starts at once (the default waits 5 s); and the cluster is only ready once every
//! replica reports `master_link_status:up` (`cluster_state:ok` comes before the first sync,
//! and a replica that never synced cannot take over: the failover would never come).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cluster::redis_pings;
use crate::util::{command, kill9, log_to, run, wait_for};

/// How long a master may be unreachable before the cluster calls it failed and its replica
/// takes over (the failover then needs about twice this, measured ~3.5–4.5 s).
pub(crate) const NODE_TIMEOUT_MS: u32 = 2000;
/// A bound on every command the harness sends a cluster node: a killed one must not hang it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// One `redis-server` of the cluster.
pub(crate) struct ClusterNode {
    pub(crate) port: u16,
    pub(crate) child: Option<Child>,
}

/// A master as the cluster describes it now (from `CLUSTER NODES` of a live node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Master {
    pub(crate) port: u16,
    /// Inclusive slot ranges it serves.
    pub(crate) slots: Vec<(u16, u16)>,
}

impl Master {
    pub(crate) fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }

    pub(crate) fn slot_count(&self) -> usize {
        self.slots.iter().map(|(a, b)| usize::from(b - a) + 1).sum()
    }
}

pub(crate) struct PrivateRedisCluster {
    pub(crate) nodes: Vec<ClusterNode>,
}

impl PrivateRedisCluster {
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<Self> {
        let dir = dir.join("redis-cluster");
        let mut cluster = PrivateRedisCluster { nodes: vec![] };
        // Pushed one by one, so a failure half-way still kills what was started (Drop).
        for _ in 0..6 {
            let port = free_cluster_port()?;
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir)?;
            let (out, err) = log_to(&node_dir.join("redis.log"))?;
            let child = command("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(node_dir.join("nodes.conf"))
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(out)
                .stderr(err)
                .spawn()
                .context("starting redis-server (cluster node)")?;
            cluster.nodes.push(ClusterNode {
                port,
                child: Some(child),
            });
        }
        for n in &cluster.nodes {
            let port = n.port;
            wait_for("redis cluster node", Duration::from_secs(20), || {
                redis_pings(port)
            })
            .await?;
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        run(Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"]))?;
        let c = &cluster;
        wait_for(
            "cluster_state:ok on every node",
            Duration::from_secs(30),
            || async move {
                let mut ok = 0;
                for n in &c.nodes {
                    ok += usize::from(cluster_ok(n.port).await);
                }
                ok == c.nodes.len()
            },
        )
        .await?;
        wait_for(
            "every replica's first sync (master_link_status:up)",
            Duration::from_secs(30),
            || async move { c.synced_replicas().await == c.nodes.len() / 2 },
        )
        .await?;
        Ok(cluster)
    }

    /// The seed list of `redis+cluster://`: three of the nodes (any one is enough to find the
    /// rest; three so a seed that died does not stop a node from starting).
    pub(crate) fn seeds(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .take(3)
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        seeds.join(",")
    }

    /// Replicas whose link to their master is up (a replica that never synced cannot take
    /// over).
    pub(crate) async fn synced_replicas(&self) -> usize {
        let mut up = 0;
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            up += usize::from(
                info(n.port, "replication")
                    .await
                    .lines()
                    .any(|l| l.trim_end() == "master_link_status:up"),
            );
        }
        up
    }

    /// The masters serving slots now, as a live node sees them (`CLUSTER NODES`): not failed,
    /// with at least one slot.
    pub(crate) async fn masters(&self) -> anyhow::Result<Vec<Master>> {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            if let Ok(text) = query::<String>(n.port, redis::cmd("CLUSTER").arg("NODES")).await {
                return Ok(parse_masters(&text));
            }
        }
        bail!("no live cluster node answered CLUSTER NODES")
    }

    /// The slot of a key (or channel), as the cluster computes it (`CLUSTER KEYSLOT`).
    pub(crate) async fn slot_of(&self, key: &str) -> anyhow::Result<u16> {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            if let Ok(slot) =
                query::<u16>(n.port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await
            {
                return Ok(slot);
            }
        }
        bail!("no live cluster node answered CLUSTER KEYSLOT")
    }

    /// Whether every live node says `cluster_state:ok` and the live masters serve all 16,384
    /// slots without `dead` among them: a failover is over.
    pub(crate) async fn serves_all_slots_without(&self, dead: u16) -> bool {
        let Ok(masters) = self.masters().await else {
            return false;
        };
        let served: usize = masters
            .iter()
            .filter(|m| m.port != dead)
            .map(Master::slot_count)
            .sum();
        if masters.iter().any(|m| m.port == dead) || served != 16_384 {
            return false;
        }
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            if !cluster_ok(n.port).await {
                return false;
            }
        }
        true
    }

    /// `kill -9` of the node on `port`: no FAILOVER command, no goodbye on the cluster bus.
    pub(crate) fn kill9(&mut self, port: u16) -> anyhow::Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .with_context(|| format!("no cluster node on port {port}"))?;
        kill9(&mut node.child);
        Ok(())
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            kill9(&mut n.child);
        }
    }
}

/// The masters in a `CLUSTER NODES` answer: `<id> <ip:port@bus> <flags> <master> <ping>
/// <pong> <epoch> <link> <slot or range>...`; failed ones (`fail`, `fail?`) and slot-less
/// ones left out, importing/migrating entries (`[...]`) ignored.
pub(crate) fn parse_masters(text: &str) -> Vec<Master> {
    let mut out = vec![];
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 {
            continue;
        }
        let flags: Vec<&str> = f[2].split(',').collect();
        if !flags.contains(&"master") || flags.iter().any(|x| x.starts_with("fail")) {
            continue;
        }
        let Some(port) = f[1]
            .split('@')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        let slots: Vec<(u16, u16)> = f[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|x| (x, x)),
            })
            .collect();
        if !slots.is_empty() {
            out.push(Master { port, slots });
        }
    }
    out.sort_by_key(|m| m.port);
    out
}

/// A port free on loopback whose cluster-bus port (port + 10,000) is free too.
fn free_cluster_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let a = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = a.local_addr()?.port();
        if port > 55_535 {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port p with p + 10000 free too, in 200 tries")
}

/// One command to one node, connection and answer bounded.
async fn query<T: redis::FromRedisValue>(port: u16, cmd: &mut redis::Cmd) -> anyhow::Result<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = tokio::time::timeout(COMMAND_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .context("connect timeout")??;
    Ok(
        tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async(&mut conn))
            .await
            .context("command timeout")??,
    )
}

/// `CLUSTER INFO` of one node says `cluster_state:ok` (`INFO cluster` does not say it).
async fn cluster_ok(port: u16) -> bool {
    query::<String>(port, redis::cmd("CLUSTER").arg("INFO"))
        .await
        .is_ok_and(|i| i.lines().any(|l| l.trim_end() == "cluster_state:ok"))
}

/// `INFO <section>` of one node, or "" if it does not answer.
async fn info(port: u16, section: &str) -> String {
    query::<String>(port, redis::cmd("INFO").arg(section))
        .await
        .unwrap_or_default()
}

/// How many of `channels` each master serves now: `port -> [channels]`.
pub(crate) async fn channels_by_master(
    cluster: &PrivateRedisCluster,
    channels: &[String],
) -> anyhow::Result<BTreeMap<u16, Vec<String>>> {
    let masters = cluster.masters().await?;
    let mut out: BTreeMap<u16, Vec<String>> = masters.iter().map(|m| (m.port, vec![])).collect();
    for ch in channels {
        let slot = cluster.slot_of(ch).await?;
        let m = masters
            .iter()
            .find(|m| m.owns(slot))
            .with_context(|| format!("no master serves slot {slot} ({ch})"))?;
        out.entry(m.port).or_default().push(ch.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let text = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 [5461->-c]
c 127.0.0.1:7002@17002 master,fail - 0 0 3 disconnected 10923-16383
d 127.0.0.1:7003@17003 slave a 0 0 1 connected
e 127.0.0.1:7004@17004 master - 0 0 4 connected 10923-16382 16383
f 127.0.0.1:7005@17005 master - 0 0 0 connected
";
        let m = parse_masters(text);
        assert_eq!(
            m,
            vec![
                Master {
                    port: 7000,
                    slots: vec![(0, 5460)]
                },
                Master {
                    port: 7001,
                    slots: vec![(5461, 10922)]
                },
                Master {
                    port: 7004,
                    slots: vec![(10923, 16382), (16383, 16383)]
                },
            ]
        );
        assert_eq!(m.iter().map(Master::slot_count).sum::<usize>(), 16_384);
        assert!(m[2].owns(16383) && !m[0].owns(5461));
    }
}
