//! Relay partitions spread over the live relays (contract §11): with `NOTIFYD_RELAY_PARTITIONS=4`
//! two relay processes lead two each within 10 s, the survivor of one that dies leads all four
//! within 10 s with every user's events delivered once and in order, and a third that joins gets
//! its share within 10 s. The relays are real `notifyd serve` processes on one test database (each
//! process has its own `/metrics`); who leads what is read from PostgreSQL itself (which session
//! holds which partition lock) and checked against each node's `notifyd_relay_partitions_led`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::binary::{free_port, node_env, sample, Notifyd};
use crate::helpers::*;

const PARTITIONS: u32 = 4;
/// The contract's bound for spreading after a join and for taking over after a death.
const WITHIN: Duration = Duration::from_secs(10);

/// A relay process (`notifyd serve`, relay on) of the cluster `prefix`, named `name`.
async fn start_relay(db: &TestDb, prefix: &str, name: &str) -> Notifyd {
    let port = free_port();
    let mut env = node_env(db, port);
    env.retain(|(k, _)| k != "NOTIFYD_REDIS_PREFIX");
    env.push(("NOTIFYD_REDIS_PREFIX".into(), prefix.into()));
    env.push(("NOTIFYD_NODE_ID".into(), name.into()));
    env.push(("NOTIFYD_RELAY_PARTITIONS".into(), PARTITIONS.to_string()));
    env.push(("RUST_LOG".into(), "notifyd=info".into()));
    let mut node = Notifyd::start(&["serve"], &env, port);
    node.healthy().await;
    node
}

/// Which partitions each node leads, from PostgreSQL: the sessions holding a granted relay
/// partition lock (`partition_lock(k)`: classid = its high 32 bits), named
/// `notifyd relay <node> p<k>` by the relay.
async fn leaders(db_url: &str) -> BTreeMap<String, Vec<u32>> {
    let rows = query_json(
        db_url,
        "SELECT a.application_name AS name FROM pg_locks l \
           JOIN pg_stat_activity a ON a.pid = l.pid \
           JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() \
           AND l.classid = 1852798057 AND l.objsubid = 1 \
           AND a.application_name LIKE 'notifyd relay %'",
    )
    .await;
    let mut led: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for r in rows {
        let name = r["name"].as_str().unwrap_or_default();
        let rest = name.trim_start_matches("notifyd relay ");
        if let Some((node, p)) = rest.rsplit_once(" p") {
            if let Ok(k) = p.parse() {
                led.entry(node.to_string()).or_default().push(k);
            }
        }
    }
    for v in led.values_mut() {
        v.sort_unstable();
    }
    led
}

/// How many partitions each of `names` leads (0 for a node that leads none), in that order.
fn counts(led: &BTreeMap<String, Vec<u32>>, names: &[&str]) -> Vec<usize> {
    names
        .iter()
        .map(|n| led.get(*n).map_or(0, Vec::len))
        .collect()
}

/// The process's `/metrics` page, if it answers.
async fn metrics_of(node: &Notifyd) -> Option<String> {
    reqwest::get(format!("{}/metrics", node.base))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The node's own `notifyd_relay_partitions_led` gauge.
async fn gauge_led(node: &Notifyd) -> Option<f64> {
    sample(&metrics_of(node).await?, "notifyd_relay_partitions_led ")
}

/// Polls until the leaders per node, in the order of `names`, are `want` (and every partition
/// has exactly one leader), panicking with what was seen after `WITHIN` from `since`.
async fn wait_for_counts(db_url: &str, names: &[&str], want: &[usize], since: Instant, what: &str) {
    loop {
        let led = leaders(db_url).await;
        let all: Vec<u32> = led.values().flatten().copied().collect();
        let mut sorted = all.clone();
        sorted.sort_unstable();
        if counts(&led, names) == want && sorted == (0..PARTITIONS).collect::<Vec<_>>() {
            println!("{what}: {led:?} after {:?}", since.elapsed());
            return;
        }
        assert!(
            since.elapsed() < WITHIN,
            "{what}: not within {WITHIN:?}; leaders now {led:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each node's own gauge says what PostgreSQL says it leads.
async fn assert_gauges(db_url: &str, nodes: &[(&str, &Notifyd)]) {
    let names: Vec<&str> = nodes.iter().map(|(n, _)| *n).collect();
    let led = counts(&leaders(db_url).await, &names);
    for ((name, node), n) in nodes.iter().zip(led) {
        assert_eq!(
            gauge_led(node).await,
            Some(n as f64),
            "{name}'s notifyd_relay_partitions_led"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_split_the_partitions_and_the_survivor_takes_over_in_order() {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let a = start_relay(&db, &prefix, "relay-a").await;
    wait_for_counts(&db.url, &["relay-a"], &[4], Instant::now(), "a alone").await;

    let joined = Instant::now();
    let mut b = start_relay(&db, &prefix, "relay-b").await;
    wait_for_counts(
        &db.url,
        &["relay-a", "relay-b"],
        &[2, 2],
        joined,
        "b joined",
    )
    .await;
    assert_gauges(&db.url, &[("relay-a", &a), ("relay-b", &b)]).await;
    // The public table says the same at the next heartbeat (every second).
    let want = vec![("relay-a".to_string(), 2), ("relay-b".to_string(), 2)];
    eventually(
        Duration::from_secs(5),
        "relay_node shows 2 and 2",
        || async {
            let rows = query_json(
                &db.url,
                "SELECT split_part(id, '/', 1) AS node, led FROM relay_node ORDER BY 1",
            )
            .await;
            let table: Vec<(String, usize)> = rows
                .iter()
                .map(|r| {
                    let led = r["led"].as_array().map_or(0, Vec::len);
                    (r["node"].as_str().unwrap_or_default().to_string(), led)
                })
                .collect();
            (table == want).then_some(())
        },
    )
    .await;

    // Events flow through the hand-over: created on a node that relays nothing, watched on
    // Redis (what the relays published) and on WebSockets of another node that relays nothing
    // (what users get; a node also hands its own commits to its own sockets, hence not the
    // creating node).
    let creator = spawn_app(
        &db,
        Opts {
            relay: false,
            ..Opts::in_cluster(&prefix)
        },
    )
    .await;
    let viewer = spawn_app(
        &db,
        Opts {
            relay: false,
            ..Opts::in_cluster(&prefix)
        },
    )
    .await;
    let users: Vec<String> = (0..8).map(|_| new_user()).collect();
    let mut taps = vec![];
    let mut sockets = vec![];
    for u in &users {
        taps.push(RedisTap::subscribe(&creator.user_channel(u)).await);
        let mut ws = viewer.ws(u, None).await;
        ws.expect("hello", Duration::from_secs(10)).await;
        sockets.push(ws);
    }
    let mut sent = vec![0i64; users.len()];
    let mut killed_at = None;
    let mut takeover = None;
    let mut a = Some(a);
    for i in 0..160 {
        if i == 40 {
            // SIGKILL: no clean shutdown, no row deleted; its sessions (and locks) end with it.
            let mut dead = a.take().expect("a runs");
            dead.child.kill().await.expect("kill relay-a");
            let at = Instant::now();
            killed_at = Some(at);
            // Watched while the events keep coming.
            let url = db.url.clone();
            takeover = Some(tokio::spawn(async move {
                wait_for_counts(&url, &["relay-b"], &[4], at, "a died").await
            }));
        }
        let k = i % users.len();
        sent[k] += 1;
        assert_eq!(
            creator.send(&users[k], &format!("m{i}")).await["seq"],
            sent[k]
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(killed_at.is_some(), "relay-a was killed");
    takeover
        .expect("watched")
        .await
        .expect("relay-b leads all four within 10 s of relay-a's death");
    assert_gauges(&db.url, &[("relay-b", &b)]).await;

    for (((u, tap), ws), n) in users.iter().zip(&mut taps).zip(&mut sockets).zip(&sent) {
        // Redis: every event, first arrivals in seq order (a batch published by relay-a but not
        // committed before it died goes out again: at-least-once).
        let mut got: Vec<Value> = vec![];
        let mut seen = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while (seen.len() as i64) < *n {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(v) = tap.next(left).await else { break };
            seen.insert(v["seq"].as_i64());
            got.push(v);
        }
        got.extend(tap.drain(Duration::from_millis(300)).await);
        let seqs = seqs_of(&got);
        let mut firsts = HashSet::new();
        let first: Vec<i64> = seqs.iter().copied().filter(|s| firsts.insert(*s)).collect();
        assert_eq!(
            first,
            (1..=*n).collect::<Vec<_>>(),
            "{u}: every event published, first arrivals in order (all: {seqs:?})"
        );
        // The user: each event exactly once, in order.
        let mut frames = vec![];
        let deadline = Instant::now() + Duration::from_secs(30);
        while (frames.len() as i64) < *n {
            let left = deadline.saturating_duration_since(Instant::now());
            match ws.next(left).await {
                Some(f) if f["type"] == "message.created" => frames.push(f["seq"].as_i64()),
                Some(_) => {}
                None => break,
            }
        }
        assert_eq!(
            frames,
            (1..=*n).map(Some).collect::<Vec<_>>(),
            "{u}: each event once, in order, on the socket"
        );
    }
    assert_eq!(count_rows(&db.url, "outbox").await, 0);
    creator.stop().await;
    viewer.stop().await;
    let _ = b.child.start_kill();
    let _ = b.exit_within(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_relay_takes_its_share_within_10_s_and_hands_it_back_when_it_stops() {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let a = start_relay(&db, &prefix, "relay-a").await;
    let b = start_relay(&db, &prefix, "relay-b").await;
    wait_for_counts(
        &db.url,
        &["relay-a", "relay-b"],
        &[2, 2],
        Instant::now(),
        "two",
    )
    .await;

    let joined = Instant::now();
    let c = start_relay(&db, &prefix, "relay-c").await;
    let names = ["relay-a", "relay-b", "relay-c"];
    // ⌈4/3⌉ = 2 at most each, and with three relays the one ranked first keeps 2.
    loop {
        let led = leaders(&db.url).await;
        let mut n = counts(&led, &names);
        let total: usize = n.iter().sum();
        n.sort_unstable();
        if n == [1, 1, 2] && total == PARTITIONS as usize {
            println!("c joined: {led:?} after {:?}", joined.elapsed());
            break;
        }
        assert!(
            joined.elapsed() < WITHIN,
            "not spread over three within {WITHIN:?}: {led:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_gauges(
        &db.url,
        &[("relay-a", &a), ("relay-b", &b), ("relay-c", &c)],
    )
    .await;

    // A clean stop (SIGTERM) deletes its row: the others take its partitions back at once.
    let stopped = Instant::now();
    c.stop().await;
    wait_for_counts(&db.url, &names, &[2, 2, 0], stopped, "c stopped").await;
    assert_gauges(&db.url, &[("relay-a", &a), ("relay-b", &b)]).await;
    a.stop().await;
    b.stop().await;
}

/// Every node reports the age of the oldest unpublished entry of each partition, leading or not:
/// with no relay running anywhere, a node that relays nothing shows the age growing, so the
/// documented alert (`max(notifyd_outbox_oldest_age_seconds) > 5`) fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leads_nothing_reports_the_backlog_of_each_partition() {
    let db = TestDb::new().await;
    let port = free_port();
    let mut env = node_env(&db, port);
    env.push(("NOTIFYD_RELAY".into(), "off".into()));
    env.push(("NOTIFYD_RELAY_PARTITIONS".into(), PARTITIONS.to_string()));
    let mut node = Notifyd::start(&["serve"], &env, port);
    node.healthy().await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/v1/messages", node.base))
        .bearer_auth(SERVICE_KEY)
        .json(&serde_json::json!({"to_user": "waiting", "title": "t", "content": "c", "type": "t"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 201);
    // The partition of user "waiting", as the relay computes it.
    let k = scalar_i64(
        &db.url,
        &format!("SELECT mod(hashtext('waiting')::bigint + 2147483648, {PARTITIONS}) AS v"),
    )
    .await;
    let metrics = || metrics_of(&node);
    let age = format!("notifyd_outbox_oldest_age_seconds{{partition=\"{k}\"}} ");
    // Measured every 5 s: an age over 1 s shows within two rounds.
    let seen = eventually(
        Duration::from_secs(15),
        "the age grows on a node that leads nothing",
        || async {
            let text = metrics().await?;
            let a = sample(&text, &age)?;
            (a > 1.0).then_some(text)
        },
    )
    .await;
    assert_eq!(
        sample(
            &seen,
            &format!("notifyd_outbox_backlog{{partition=\"{k}\"}} ")
        ),
        Some(1.0)
    );
    for other in (0..PARTITIONS as i64).filter(|p| *p != k) {
        assert_eq!(
            sample(
                &seen,
                &format!("notifyd_outbox_oldest_age_seconds{{partition=\"{other}\"}} ")
            ),
            Some(0.0),
            "partition {other} has nothing waiting"
        );
    }
    assert_eq!(
        sample(&seen, "notifyd_relay_partitions_led "),
        None,
        "no relay here"
    );
    node.stop().await;
}

/// `notifyd relay` (the relay alone) serves `/healthz` and `/metrics` on `NOTIFYD_SERVICE_BIND`,
/// the internal listener: what it leads and each partition's backlog, like a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_alone_serves_its_metrics_on_the_service_listener() {
    let db = TestDb::new().await;
    let port = free_port();
    let mut env = node_env(&db, free_port());
    env.push(("NOTIFYD_SERVICE_BIND".into(), format!("127.0.0.1:{port}")));
    env.push(("NOTIFYD_RELAY_PARTITIONS".into(), "2".into()));
    let mut relay = Notifyd::start(&["relay"], &env, port);
    relay.healthy().await;
    let metrics = || metrics_of(&relay);
    // The backlog is measured every 5 s; leading starts within the spread bound.
    let text = eventually(
        Duration::from_secs(15),
        "the relay reports what it leads and each partition's backlog",
        || async {
            let t = metrics().await?;
            let led = sample(&t, "notifyd_relay_partitions_led ") == Some(2.0);
            let backlog = (0..2).all(|p| {
                sample(&t, &format!("notifyd_outbox_backlog{{partition=\"{p}\"}} ")) == Some(0.0)
            });
            (led && backlog).then_some(t)
        },
    )
    .await;
    assert!(text.contains("notifyd_outbox_oldest_age_seconds"), "{text}");
}
