//! The Redis Cluster chaos run (issue 25 item 3, contract §11): the same nodes, nginx, clients
//! (WebSocket and SSE), producer and checker as the default run, but the nodes use a private
//! Redis Cluster (`REDIS_URL=redis+cluster://`, 3 masters + 3 replicas, `redis_cluster.rs`),
//! every client is also subscribed to live topics (two on each shard), and the one fault is
//! `kill -9` of the master serving the most users' channels, mid-load; its replica takes over.
//!
//! Checked: every user event of every client exactly once, in order, against the database
//! (0 lost / 0 duplicated / 0 reordered, the default run's checker), every client caught up
//! and kept its one connection (a node whose subscriber stayed broken shows as its clients
//! going silent and reconnecting: their resume would hide the loss from the seq checks);
//! topic events in order and live again after the failover, and the topic events lost during
//! it counted (topic events are live only, at most once: contract §8) and required to fall in
//! the fault's window. The nodes run without the periodic audit, so only the subscriber's
//! reconnect and `Resync` can repair what the failover lost.
//!
//! The load comes in two phases, so a broken repair cannot hide: every user gets messages until
//! 2 s after the kill (their events are published while the shard fails over), then only half
//! the users ("steady") go on getting them. The other half's last events fall in the failover:
//! nothing after them would reveal a gap, and the audit is off, so a client that missed one
//! ends without it. The steady users show delivery going on across and after the failover.
//!
//! Sizes: the default run's `CHAOS_USERS` (20); `CHAOS_MASTER_KILL_RATE` (10 messages/s to all
//! users, half that to the steady ones) for `CHAOS_MASTER_KILL_LOAD_S` (30 s); the kill
//! `CHAOS_MASTER_KILL_AT_S` (10) seconds into the load. About 40 s in all.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::checker::{wait_until_caught_up, Checker, Report, Run};
use crate::clients::{start_clients, stop_clients, Client};
use crate::cluster::{missing_prerequisites, Cluster, RedisKind};
use crate::faults::{FaultInjector, FaultKind};
use crate::producer::{Producer, TopicPublisher};
use crate::redis_cluster::{channels_by_master, PrivateRedisCluster};
use crate::util::{lock, note, wait_for, Clock};
use crate::{env_num, Config};

/// Each topic gets one event per this: 6 topics, 20 events/s, ~60–80 per topic before the kill.
const TOPIC_EVERY: Duration = Duration::from_millis(300);
/// Topics per shard: every master carries some, so whichever is killed takes topics with it.
const TOPICS_PER_SHARD: usize = 2;
/// Every user gets messages until this long after the kill, half of them after it.
const TAIL_AFTER_KILL_S: f64 = 2.0;

pub(crate) async fn run(cfg: Config) {
    let missing = missing_prerequisites(RedisKind::Cluster);
    assert!(
        missing.is_empty(),
        "the Redis Cluster chaos run cannot run: {}. scripts/services.sh installs what is missing.",
        missing.join("; ")
    );
    let rate: f64 = env_num("CHAOS_MASTER_KILL_RATE", 10.0_f64).max(0.1);
    let load_s: f64 = env_num("CHAOS_MASTER_KILL_LOAD_S", 30.0_f64);
    let kill_at = Duration::from_secs(env_num("CHAOS_MASTER_KILL_AT_S", 10));
    let all_until = kill_at.as_secs_f64() + TAIL_AFTER_KILL_S;
    assert!(
        load_s > all_until,
        "CHAOS_MASTER_KILL_LOAD_S must exceed CHAOS_MASTER_KILL_AT_S + {TAIL_AFTER_KILL_S}"
    );
    note(format!(
        "Redis Cluster master-kill run: {} users, {rate:.1} messages/s for {load_s:.0} s \
         (all users until {all_until:.0} s, then half), kill at {} s",
        cfg.users,
        kill_at.as_secs()
    ));
    let mut cluster = Cluster::start(&cfg, RedisKind::Cluster)
        .await
        .expect("start the cluster");
    // The nodes' own channel names (default prefix: the nodes run without one).
    let names = notifyd::config::Settings::new("postgres://unused/unused");
    let redis = cluster.redis_cluster().expect("a Redis Cluster");
    let topics = topics_on_every_shard(redis, &names)
        .await
        .expect("name topics on every shard");
    note(format!("topics {topics:?}"));
    let clock = Clock(Instant::now());
    let (stop_tx, stop_rx) = watch::channel(false);
    let base = cluster.nginx.http_base();
    let (users, clients) = start_clients(&cfg, &base, clock, &stop_rx, &topics);
    wait_for(
        "every client connected and subscribed to its topics",
        Duration::from_secs(60),
        || async {
            clients.iter().all(|c| {
                c.ctl.connected.load(Ordering::SeqCst) && lock(&c.log).topics_from.is_some()
            })
        },
    )
    .await
    .expect("clients connect and subscribe through nginx");
    note(format!(
        "{} clients connected and subscribed",
        clients.len()
    ));

    let producer = Producer::new(&cluster.nginx, clock);
    let steady: Vec<String> = users.iter().step_by(2).cloned().collect();
    let (first, then) = (
        (rate * all_until).round() as usize,
        (rate / 2.0 * (load_s - all_until)).round() as usize,
    );
    let producing = tokio::spawn({
        let (p, all, steady) = (producer.clone(), Arc::new(users.clone()), Arc::new(steady));
        async move {
            p.clone().run_from(all, 0, first, rate).await;
            p.run_from(steady, first, then, rate / 2.0).await;
        }
    });
    let publisher = TopicPublisher::new(&cluster.nginx, clock);
    let (topics_stop, topics_stopped) = watch::channel(false);
    let publishing = tokio::spawn(publisher.clone().run(
        topics.clone(),
        TOPIC_EVERY,
        topics_stopped,
    ));
    tokio::time::sleep(kill_at).await;
    let user_channels: Vec<String> = users.iter().map(|u| names.user_channel(u)).collect();
    let topic_channels: Vec<String> = topics.iter().map(|t| names.topic_channel(t)).collect();
    let mut injector = FaultInjector {
        cfg: &cfg,
        cluster: &mut cluster,
        clients: &clients,
        producer: &producer,
        clock,
        faults: vec![],
    };
    let killed = injector
        .kill_redis_master(&user_channels, &topic_channels)
        .await;
    let faults = std::mem::take(&mut injector.faults);
    let fault = killed.expect("kill a Redis master");
    note(format!(
        "{:>7.1}s  {} ({:.1}s): {}",
        fault.start / 1000.0,
        fault.kind.label(),
        (fault.end - fault.start) / 1000.0,
        fault.detail
    ));
    let mut faults = faults;
    faults.push(fault);
    producing.await.expect("the producer");
    let _ = topics_stop.send(true);
    publishing.await.expect("the topic publisher");
    note(format!("{:>7.1}s  producer done", clock.ms() / 1000.0));

    let caught_up = wait_until_caught_up(&cluster, &clients, Duration::from_secs(60)).await;
    let topic_log = std::mem::take(&mut *lock(&publisher.log));
    // The topics live again: every client gets the last event of each (the checker says
    // which did not).
    let _ = wait_for(
        "every client to get the last event of each topic",
        Duration::from_secs(20),
        || async {
            clients
                .iter()
                .all(|c| has_last_topic_events(c, &topic_log.published))
        },
    )
    .await;
    // A quiet moment: late duplicates, if any, arrive now and are counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_clients(&stop_tx, &clients).await;

    let producer_log = std::mem::take(&mut *lock(&producer.log));
    let run = Run {
        mode: "Redis Cluster, a master killed".into(),
        redis: "a private Redis Cluster (3 masters + 3 replicas, `redis+cluster://`)".into(),
        fault_kinds: vec![FaultKind::RedisMasterKill],
        users: users.len(),
        clients: clients.len(),
        duration_s: clock.ms() / 1000.0,
        caught_up,
    };
    let mut report = Report::of_run(run, &producer_log, &faults);
    let checker = Checker {
        cluster: &cluster,
        clients: &clients,
        producer: &producer_log,
        faults: &faults,
    };
    checker.check(&mut report).await.expect("read the database");
    checker.check_topics(&topic_log, &topics, &mut report);
    checker.check_connections_kept(&mut report);
    // Beside the default run's report, not over it.
    let path = cfg
        .report
        .as_ref()
        .map(|p| p.with_extension("redis-master-kill.md"));
    report.finish(
        &cluster.dir.path,
        &clients,
        path.as_deref(),
        "the Redis Cluster chaos run",
    );
}

/// `TOPICS_PER_SHARD` topics (`load:<k>`) whose channels each master serves, so the killed
/// master, whichever it is, carries some.
async fn topics_on_every_shard(
    redis: &PrivateRedisCluster,
    names: &notifyd::config::Settings,
) -> anyhow::Result<Vec<String>> {
    let candidates: Vec<String> = (0..60).map(|k| format!("load:{k}")).collect();
    let channels: Vec<String> = candidates.iter().map(|t| names.topic_channel(t)).collect();
    let by_master = channels_by_master(redis, &channels).await?;
    let mut topics = vec![];
    for chs in by_master.values() {
        anyhow::ensure!(
            chs.len() >= TOPICS_PER_SHARD,
            "a master serves fewer than {TOPICS_PER_SHARD} of {} candidate topics",
            candidates.len()
        );
        for ch in chs.iter().take(TOPICS_PER_SHARD) {
            let k = channels.iter().position(|c| c == ch).unwrap_or_default();
            topics.push(candidates[k].clone());
        }
    }
    topics.sort();
    Ok(topics)
}

/// Whether `c` has received the last published event of every topic.
fn has_last_topic_events(c: &Client, published: &[crate::producer::TopicPub]) -> bool {
    let log = lock(&c.log);
    let mut last: std::collections::HashMap<&str, &str> = Default::default();
    for p in published {
        last.insert(p.topic.as_str(), p.id.as_str());
    }
    last.values()
        .all(|id| log.topic_events.iter().any(|e| e.id == *id))
}
