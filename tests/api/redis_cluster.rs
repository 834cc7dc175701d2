//! notifyd on a Redis Cluster (contract §11): two nodes with `REDIS_URL=redis+cluster://...`,
//! sharded pub/sub across the nodes, presence, and a master killed (`kill -9`) under load with
//! no user event lost, duplicated or reordered. The topic events lost during the failover are
//! counted and printed (documented in docs/operations.md, not asserted: topic events are live
//! only, contract §8). And the node's command connection keeps answering while slots move
//! between masters under load.
//!
//! These tests need a cluster of their own (3 masters, 3 replicas, a master they may kill, slots
//! they may move):
//! scripts/redis-cluster-test.sh starts one and runs them with `--ignored`, naming its seeds in
//! `NOTIFYD_TEST_REDIS_CLUSTER` and its directory (one `<port>/redis.pid` per node) in
//! `NOTIFYD_TEST_REDIS_CLUSTER_DIR`. The same delivery and failover checks run against a
//! TLS-only cluster from redis_tls_cluster.rs (through [`Cluster`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::helpers::*;

const T: Duration = Duration::from_secs(20);

/// A Redis Cluster that scripts/redis-cluster-test.sh started.
pub struct Cluster {
    /// `host:port,host:port,...`
    pub seeds: String,
    /// One `<port>/redis.pid` per node (the master-kill test kills one).
    pub dir: String,
    /// A TLS-only cluster: `rediss+cluster://`, with this CA as `NOTIFYD_REDIS_CA_FILE`.
    pub ca: Option<PathBuf>,
}

/// `var`'s value, or a panic that says how to run these tests.
pub fn env(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run scripts/redis-cluster-test.sh"))
}

impl Cluster {
    /// The plain cluster.
    fn plain() -> Cluster {
        Cluster {
            seeds: env("NOTIFYD_TEST_REDIS_CLUSTER"),
            dir: env("NOTIFYD_TEST_REDIS_CLUSTER_DIR"),
            ca: None,
        }
    }

    /// `REDIS_URL` for the cluster.
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() {
            "rediss+cluster"
        } else {
            "redis+cluster"
        };
        format!("{scheme}://{}", self.seeds)
    }

    /// A node of the notifyd cluster `opts.prefix` on this Redis Cluster (with the CA when it
    /// takes TLS only).
    pub async fn spawn(&self, db: &TestDb, opts: Opts) -> TestApp {
        let opts = Opts {
            redis_url: Some(self.url()),
            ..opts
        };
        let ca = self.ca.clone();
        spawn_app_with(db, opts, |s| s.redis_ca_file = ca).await
    }

    /// One node of it, by port, plainly (to read `CLUSTER NODES`).
    fn node(&self, port: u16) -> anyhow::Result<redis::Client> {
        let info = match &self.ca {
            None => notifyd::broker::connection_info(&format!("redis://127.0.0.1:{port}"))?,
            Some(ca) => notifyd::broker::connection_info_with_ca(
                &format!("rediss://localhost:{port}"),
                Some(ca),
            )?,
        };
        Ok(redis::Client::open(info)?)
    }
}

fn on_cluster(prefix: &str) -> Opts {
    Opts {
        prefix: Some(prefix.to_string()),
        ..Default::default()
    }
}

/// A WebSocket of `user` read by a task of its own (so the server never sees a slow reader),
/// every frame kept.
struct Reader {
    frames: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    async fn start(mut c: WsClient) -> Reader {
        let frames = Arc::new(Mutex::new(vec![]));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (frames.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                if let Some(v) = c.next(Duration::from_millis(200)).await {
                    f.lock().push(v);
                } else if c.closed.is_some() {
                    panic!("socket closed: {:?}", c.closed);
                }
            }
        });
        Reader { frames, stop, task }
    }

    /// The seqs of the user events read so far, in the order they came (live frames and the
    /// events of `sync` frames alike).
    fn seqs(&self) -> Vec<i64> {
        let mut out = vec![];
        for f in self.frames.lock().iter() {
            match f["type"].as_str() {
                Some("sync") => {
                    assert_eq!(f.get("reset"), None, "a reset instead of events: {f}");
                    for e in f["events"].as_array().into_iter().flatten() {
                        out.extend(e["seq"].as_i64());
                    }
                }
                Some(t) if !t.starts_with("topic") => out.extend(f["seq"].as_i64()),
                _ => {}
            }
        }
        out
    }

    /// The ids of the topic events read so far, per topic, in order.
    fn topic_events(&self) -> HashMap<String, Vec<i64>> {
        let mut out: HashMap<String, Vec<i64>> = HashMap::new();
        for f in self.frames.lock().iter() {
            if f["type"] == "topic.event" && f.get("retained").is_none() {
                let topic = f["topic"].as_str().unwrap_or_default().to_string();
                out.entry(topic)
                    .or_default()
                    .extend(f["data"]["i"].as_i64());
            }
        }
        out
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
    }
}

async fn connected(app: &TestApp, user: &str, topics: &[&str]) -> Reader {
    let mut c = if topics.is_empty() {
        app.ws(user, None).await
    } else {
        let t: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let refs: Vec<&str> = t.iter().map(String::as_str).collect();
        WsClient::connect(&app.ws_url(&token_with_topics(user, &refs), None))
            .await
            .expect("connect")
    };
    c.expect("hello", T).await;
    if !topics.is_empty() {
        c.send(&json!({"type": "subscribe", "topics": topics, "ref": "s"}))
            .await;
        c.expect("ack", T).await;
    }
    Reader::start(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a Redis Cluster: scripts/redis-cluster-test.sh"]
async fn user_and_topic_events_cross_nodes_and_presence_is_shared() {
    events_cross_nodes_and_presence_is_shared(&Cluster::plain()).await;
}

/// Users' messages created on the node that does not hold their socket, and topic events from
/// both nodes, reach their sockets through the cluster's shards; presence is read across.
pub async fn events_cross_nodes_and_presence_is_shared(cluster: &Cluster) {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let a = cluster.spawn(&db, on_cluster(&prefix)).await;
    let b = cluster.spawn(&db, on_cluster(&prefix)).await;
    eventually(T, "both hubs subscribed", || async {
        (a.hub_connected() && b.hub_connected()).then_some(())
    })
    .await;
    // Users enough that their channels land on every shard.
    let users: Vec<String> = (0..24).map(|_| new_user()).collect();
    let mut readers = vec![];
    for (i, u) in users.iter().enumerate() {
        let node = if i % 2 == 0 { &a } else { &b };
        readers.push(connected(node, u, &[]).await);
    }
    let watcher_a = connected(&a, &new_user(), &["product:1", "product:2"]).await;
    let watcher_b = connected(&b, &new_user(), &["product:1", "product:2"]).await;
    // Each user's message is created on the node that does NOT hold the socket.
    for (i, u) in users.iter().enumerate() {
        let node = if i % 2 == 0 { &b } else { &a };
        assert_eq!(node.send(u, "across").await["seq"], 1);
    }
    a.publish_topic("product:1", json!({"i": 1})).await;
    b.publish_topic("product:2", json!({"i": 2})).await;
    for (u, r) in users.iter().zip(&readers) {
        eventually(T, &format!("{u} got seq 1"), || async {
            (r.seqs() == [1]).then_some(())
        })
        .await;
    }
    for w in [&watcher_a, &watcher_b] {
        eventually(T, "both topic events on both nodes", || async {
            let t = w.topic_events();
            (t.get("product:1") == Some(&vec![1]) && t.get("product:2") == Some(&vec![2]))
                .then_some(())
        })
        .await;
    }
    // Presence: users connected on A, read through B (and the count of users online).
    for u in users.iter().step_by(2) {
        eventually(T, "presence through the other node", || async {
            let p = b.presence(u).await;
            (p["online"] == true && p["connections"] == 1).then_some(())
        })
        .await;
    }
    let ready = a
        .http
        .get(format!("{}/readyz", a.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(
        ready.status(),
        200,
        "the readiness canary works over SPUBLISH"
    );
    for r in readers {
        r.finish().await;
    }
    watcher_a.finish().await;
    watcher_b.finish().await;
    // Departures: everyone left both nodes, so everyone is offline and nobody is counted
    // (each node reads its leavers' entries across the shards at once, `Redis::each`).
    for u in &users {
        eventually(T, &format!("{u} offline"), || async {
            (a.presence(u).await == json!({"online": false, "connections": 0})).then_some(())
        })
        .await;
    }
    eventually(T, "nobody counted online", || async {
        let r = b.service_get("/api/v1/presence").await;
        let body: serde_json::Value = r.json().await.ok()?;
        (body["online_users"] == 0).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// The masters of the cluster now: `(port, slots they own)`, read from any live node.
async fn masters(cluster: &Cluster) -> Vec<(u16, usize)> {
    for entry in std::fs::read_dir(&cluster.dir)
        .expect("cluster dir")
        .flatten()
    {
        let Ok(port) = entry.file_name().to_string_lossy().parse::<u16>() else {
            continue;
        };
        let Ok(client) = cluster.node(port) else {
            continue;
        };
        let Ok(Ok(mut c)) = tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            continue;
        };
        let Ok(nodes) = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<String>(&mut c)
            .await
        else {
            continue;
        };
        return nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let port = f.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
                Some((port, f.len().saturating_sub(8)))
            })
            .collect();
    }
    panic!("no live node in {}", cluster.dir);
}

/// A producer creates messages for users connected on both nodes (and topic events) while a
/// Redis master is killed with SIGKILL and its replica takes over: every user's client ends
/// with every seq exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a Redis Cluster it may kill a master of: scripts/redis-cluster-test.sh"]
async fn a_master_killed_under_load_loses_no_user_event() {
    a_master_killed_under_load_loses_no_user_event_on(&Cluster::plain()).await;
}

pub async fn a_master_killed_under_load_loses_no_user_event_on(cluster: &Cluster) {
    let dir = &cluster.dir;
    let db = TestDb::new().await;
    let prefix = new_prefix();
    // No periodic audit: what the failover lost must be repaired by the resubscription's
    // `Resync`, not found later by the audit.
    let quiet = Opts {
        audit_interval: Some(Duration::from_secs(3600)),
        ..on_cluster(&prefix)
    };
    let a = Arc::new(cluster.spawn(&db, quiet.clone()).await);
    let b = Arc::new(
        cluster
            .spawn(
                &db,
                Opts {
                    node_id: format!("b-{}", new_user()),
                    ..quiet
                },
            )
            .await,
    );
    eventually(T, "both hubs subscribed", || async {
        (a.hub_connected() && b.hub_connected()).then_some(())
    })
    .await;
    let users: Vec<String> = (0..24).map(|_| new_user()).collect();
    let mut readers = vec![];
    for (i, u) in users.iter().enumerate() {
        let node = if i % 2 == 0 { &a } else { &b };
        readers.push(connected(node, u, &[]).await);
    }
    let topics = ["load:1", "load:2", "load:3", "load:4"];
    let watchers = [
        connected(&a, &new_user(), &topics).await,
        connected(&b, &new_user(), &topics).await,
    ];

    // The producer: one batch create per round (one message per user, on alternating nodes)
    // and one event per topic, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (a, b, stop, users) = (a.clone(), b.clone(), stop.clone(), users.clone());
        tokio::spawn(async move {
            let mut last: BTreeMap<String, i64> = BTreeMap::new();
            let mut round = 0i64;
            while !stop.load(Ordering::SeqCst) {
                round += 1;
                let node = if round % 2 == 0 { &a } else { &b };
                let messages: Vec<Value> = users
                    .iter()
                    .map(|u| json!({"to_user": u, "title": format!("r{round}"), "type": "comment"}))
                    .collect();
                let r = node.post_messages(&json!({ "messages": messages })).await;
                assert_eq!(r.status(), 201, "creates go on while Redis fails over");
                let body: Value = r.json().await.expect("json");
                for m in body["messages"].as_array().expect("messages") {
                    let u = m["to_user"].as_str().expect("to_user").to_string();
                    last.insert(u, m["seq"].as_i64().expect("seq"));
                }
                for t in topics {
                    node.publish_topic(t, json!({"i": round})).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (last, round)
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = masters(cluster).await;
    let (victim, _) = *before
        .iter()
        .find(|(_, slots)| *slots > 0)
        .expect("a master");
    let pid = std::fs::read_to_string(format!("{dir}/{victim}/redis.pid")).expect("pid file");
    let killed = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .expect("kill");
    assert!(killed.success(), "kill -9 {pid}");
    let t0 = tokio::time::Instant::now();
    println!("killed the master on port {victim} (pid {})", pid.trim());
    eventually(Duration::from_secs(60), "a replica took over", || async {
        let now = masters(cluster).await;
        (now.len() == before.len() && now.iter().all(|(p, _)| *p != victim)).then_some(())
    })
    .await;
    println!("a replica took over within {:?}", t0.elapsed());
    // Load goes on past the failover, then stops.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    let (last, rounds) = producer.await.expect("producer");

    for (u, r) in users.iter().zip(&readers) {
        let want = last[u];
        eventually(
            Duration::from_secs(60),
            &format!("{u} got seq {want}"),
            || async { (r.seqs().last() == Some(&want)).then_some(()) },
        )
        .await;
    }
    // Every user's channel is live again (on the shard that owns it now): one more message
    // each, created on the other node, arrives.
    let mut last = last;
    for (i, u) in users.iter().enumerate() {
        let node = if i % 2 == 0 { &b } else { &a };
        let seq = node.send(u, "after").await["seq"].as_i64().expect("seq");
        last.insert(u.clone(), seq);
    }
    for (u, r) in users.iter().zip(&readers) {
        let want = last[u];
        eventually(T, &format!("{u} got seq {want} live"), || async {
            (r.seqs().last() == Some(&want)).then_some(())
        })
        .await;
    }
    // Anything late (a duplicate) would come now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut total = 0;
    for (u, r) in users.iter().zip(&readers) {
        let seqs = r.seqs();
        let want: Vec<i64> = (1..=last[u]).collect();
        let lost = want.iter().filter(|s| !seqs.contains(s)).count();
        let distinct: HashSet<&i64> = seqs.iter().collect();
        assert_eq!(
            seqs,
            want,
            "{u}: every seq once, in order (lost {lost}, duplicated {})",
            seqs.len() - distinct.len()
        );
        total += seqs.len();
    }
    println!(
        "user events: {total} to {} users over {rounds} rounds, 0 lost / 0 duplicated / 0 reordered",
        users.len()
    );
    for (name, w) in ["A", "B"].iter().zip(&watchers) {
        let got = w.topic_events();
        let mut lost = 0;
        for t in topics {
            let ids = got.get(t).cloned().unwrap_or_default();
            let distinct: HashSet<i64> = ids.iter().copied().collect();
            assert_eq!(
                distinct.len(),
                ids.len(),
                "{name} {t}: no topic event twice"
            );
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, ids, "{name} {t}: topic events in order");
            lost += rounds as usize - ids.len();
        }
        println!(
            "topic events on node {name}: {} published, {lost} lost during the failover",
            rounds as usize * topics.len()
        );
    }
    for r in readers {
        r.finish().await;
    }
    for w in watchers {
        w.finish().await;
    }
    a.stop().await;
    b.stop().await;
}

/// Prints how long a node's subscriber takes to subscribe 20,000 channels from nothing (what
/// every reconnect costs it, a failover included) on the cluster and on the single Redis, in
/// one run (docs/decisions/0016-redis-cluster.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Redis Cluster: scripts/redis-cluster-test.sh"]
async fn subscribing_twenty_thousand_channels_on_the_cluster_and_on_one_redis() {
    use notifyd::broker::hub::{Hub, HubMsg, Mailbox};
    const N: usize = 20_000;
    let prefix = new_prefix();
    for (name, url) in [
        ("one Redis", redis_url()),
        ("Redis Cluster", Cluster::plain().url()),
    ] {
        let hub = Hub::new();
        let (tx, _rx) = tokio::sync::mpsc::channel::<HubMsg>(1);
        let tx: Arc<dyn Mailbox> = Arc::new(tx);
        for i in 0..N {
            hub.listen_now(&format!("{prefix}u:{i}"), 1, tx.clone());
        }
        let target = notifyd::broker::RedisTarget::parse(&url, None).expect("url");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let t0 = tokio::time::Instant::now();
        let task = tokio::spawn(hub.clone().run_redis(target, stopped));
        eventually(Duration::from_secs(120), "subscribed", || async {
            hub.is_connected().then_some(())
        })
        .await;
        println!("{name}: {N} channels subscribed in {:?}", t0.elapsed());
        let _ = stop.send(true);
        let _ = task.await;
    }
}

/// Every master of the cluster now: `(port, node id)`, read from any live node.
async fn master_ids(cluster: &Cluster) -> Vec<(u16, String)> {
    let (port, _) = masters(cluster).await[0];
    let mut c = cluster
        .node(port)
        .expect("node")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await
        .expect("CLUSTER NODES");
    nodes
        .lines()
        .filter(|l| l.contains("master") && !l.contains("fail"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = f.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
            Some((port, f.first()?.to_string()))
        })
        .collect()
}

/// Moves the (keyless) `slot` from the master `from` to the master `to` the way a resharding
/// does (`IMPORTING`, `MIGRATING`, then `NODE` on both and on every other master): clients
/// that still send its commands to `from` get `MOVED`.
async fn move_slot(cluster: &Cluster, slot: u16, from: &(u16, String), to: &(u16, String)) {
    let all = master_ids(cluster).await;
    let conn = |port: u16| async move {
        cluster
            .node(port)
            .expect("node")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    };
    let setslot = |how: &str, id: Option<&str>| {
        let mut c = redis::cmd("CLUSTER");
        c.arg("SETSLOT").arg(slot).arg(how);
        if let Some(id) = id {
            c.arg(id);
        }
        c
    };
    let (mut src, mut dst) = (conn(from.0).await, conn(to.0).await);
    let _: () = setslot("IMPORTING", Some(&from.1))
        .query_async(&mut dst)
        .await
        .expect("IMPORTING");
    let _: () = setslot("MIGRATING", Some(&to.1))
        .query_async(&mut src)
        .await
        .expect("MIGRATING");
    let _: () = setslot("NODE", Some(&to.1))
        .query_async(&mut dst)
        .await
        .expect("NODE on the target");
    let _: () = setslot("NODE", Some(&to.1))
        .query_async(&mut src)
        .await
        .expect("NODE on the source");
    for (port, _) in all.iter().filter(|(p, _)| *p != from.0 && *p != to.0) {
        let _: () = setslot("NODE", Some(&to.1))
            .query_async(&mut conn(*port).await)
            .await
            .expect("NODE on another master");
    }
}

/// The node's one connection for commands on a cluster (the relay's SPUBLISHes, presence,
/// the readiness canary) keeps answering while the cluster changes under it: a slot moves
/// between masters every 100 ms (each move makes the redis crate follow `MOVED` and rebuild
/// its slot map) while 256 publishers keep a pipeline each in flight. A publisher that fails
/// tries again, as the relay does; every one must get each of its publishes through within
/// 60 s. Publishes take milliseconds and a failed one at most 5 s (the publish bound): the 60 s
/// only turns a connection that stopped answering for good into a failure instead of a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a Redis Cluster whose slots it may move: scripts/redis-cluster-test.sh"]
async fn the_command_connection_keeps_answering_while_slots_move_under_load() {
    use notifyd::broker::{Broker, Redis, RedisTarget};
    const PUBLISHERS: usize = 256;
    const MOVES: usize = 40;
    // RUST_LOG=notifyd=warn shows each replacement of the connection (no node is spawned here,
    // and spawn_app is what installs the log subscriber).
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let cluster = Cluster::plain();
    let target = RedisTarget::parse(&cluster.url(), None).expect("url");
    let broker = Broker::Redis(Redis::connect(&target).await.expect("connect"));
    let prefix = new_prefix();
    // The channel whose slot moves, and the slot.
    let moving = format!("{prefix}u:moving");
    let ids = master_ids(&cluster).await;
    let mut c = cluster
        .node(ids[0].0)
        .expect("node")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&moving)
        .query_async(&mut c)
        .await
        .expect("CLUSTER KEYSLOT");
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await
        .expect("CLUSTER NODES");
    // The master whose slot ranges (fields 9 on) hold it.
    let owns = |line: &str| {
        line.split_whitespace().skip(8).any(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
        })
    };
    let owner_id = nodes
        .lines()
        .find(|l| l.contains("master") && owns(l))
        .and_then(|l| l.split_whitespace().next())
        .expect("the slot's owner");
    let mut owner = ids
        .iter()
        .position(|(_, id)| id == owner_id)
        .expect("the owner is a master");
    let first_owner = owner;

    let stop = Arc::new(AtomicBool::new(false));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let mut publishers = vec![];
    for p in 0..PUBLISHERS {
        let (broker, stop, slowest) = (broker.clone(), stop.clone(), slowest.clone());
        // Every fourth publisher on the moving slot, the others spread over every shard.
        let channel = if p % 4 == 0 {
            moving.clone()
        } else {
            format!("{prefix}u:p{p}")
        };
        publishers.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let started = tokio::time::Instant::now();
                loop {
                    let items = [(channel.clone(), format!("{p}:{sent}"))];
                    if broker.publish(&items).await.is_ok() {
                        break;
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "publisher {p} could not publish for 60 s: the command connection no longer answers"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let took = started.elapsed();
                let mut s = slowest.lock();
                *s = (*s).max(took);
                drop(s);
                sent += 1;
            }
            sent
        }));
    }
    for _ in 0..MOVES {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let next = (owner + 1) % ids.len();
        move_slot(&cluster, slot, &ids[owner], &ids[next]).await;
        owner = next;
    }
    // Back where it was, for the tests that run after this one.
    if owner != first_owner {
        move_slot(&cluster, slot, &ids[owner], &ids[first_owner]).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for p in publishers {
        total += tokio::time::timeout(Duration::from_secs(120), p)
            .await
            .expect("a publisher never finished: the command connection no longer answers")
            .expect("publisher");
    }
    println!(
        "{total} publishes by {PUBLISHERS} publishers over {MOVES} slot moves; the slowest took {:?}",
        *slowest.lock()
    );
}
