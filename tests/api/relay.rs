//! The outbox relay: committed events reach Redis once, in seq order, only after commit, and keep
//! flowing through long transactions, Redis outages and relay hand-overs.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use notifyd::error::ApiError;
use notifyd::inbox::create::create_messages;
use notifyd::model::input::parse_create;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::binary::sample;
use crate::helpers::*;

/// Asserts the payloads are the seqs 1..=n, each exactly once, in order.
fn assert_exactly_once_in_order(payloads: &[Value], n: i64, who: &str) {
    assert_eq!(
        seqs_of(payloads),
        (1..=n).collect::<Vec<_>>(),
        "{who}: each seq exactly once, in order"
    );
}

/// At-least-once delivery: every seq 1..=n arrived and their first arrivals are in seq order.
/// Returns how many payloads were repeats.
fn assert_complete_in_order(payloads: &[Value], n: i64, who: &str) -> usize {
    let seqs = seqs_of(payloads);
    let mut seen = HashSet::new();
    let first: Vec<i64> = seqs.iter().copied().filter(|s| seen.insert(*s)).collect();
    assert_eq!(
        first,
        (1..=n).collect::<Vec<_>>(),
        "{who}: every seq, first arrivals in order (all arrivals: {seqs:?})"
    );
    seqs.len() - first.len()
}

/// Appends to `got` until it holds `n` distinct seqs (repeats are kept) or `timeout` passed.
async fn collect_distinct(tap: &mut RedisTap, got: &mut Vec<Value>, n: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut seen: HashSet<Option<i64>> = got.iter().map(|v| v["seq"].as_i64()).collect();
    while (seen.len() as i64) < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tap.next(left).await {
            Some(v) => {
                seen.insert(v["seq"].as_i64());
                got.push(v);
            }
            None => break,
        }
    }
}

/// The relay's leader lock (`LEADER_LOCK`, a bigint key: classid = high 32 bits, objid = low
/// 32 bits), not the housekeeper's.
pub const LEADER_LOCKS: &str = "FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
     WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() \
     AND l.classid = 1852798057 AND l.objid = 1719231488 AND l.objsubid = 1";

async fn advisory_lock_holders(db_url: &str) -> i64 {
    scalar_i64(db_url, &format!("SELECT count(*) AS v {LEADER_LOCKS}")).await
}

/// The backend pid of the connection holding the relay's leader lock, if any.
async fn leader_pid(db_url: &str) -> Option<i64> {
    query_json(db_url, &format!("SELECT l.pid {LEADER_LOCKS}"))
        .await
        .into_iter()
        .next()
        .and_then(|r| r["pid"].as_i64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_reaches_the_users_channel_exactly_once_in_seq_order() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut tap = RedisTap::subscribe(&app.user_channel(&u)).await;

    for i in 1..=30 {
        assert_eq!(app.send(&u, &format!("m{i}")).await["seq"], i);
    }
    let got = tap.collect(30, Duration::from_secs(30)).await;
    assert_exactly_once_in_order(&got, 30, &u);
    assert_eq!(
        tap.drain(Duration::from_secs(1)).await,
        Vec::<Value>::new(),
        "no extra copies"
    );

    // What is published is the stored event, byte for byte the frame clients replay.
    let mut stored = query_json(
        &db.url,
        &format!("SELECT seq, payload FROM user_event WHERE user_id = '{u}'"),
    )
    .await;
    stored.sort_by_key(|r| r["seq"].as_i64());
    assert_eq!(stored.len(), 30);
    for (i, (p, s)) in got.iter().zip(&stored).enumerate() {
        assert_eq!(p, &s["payload"]);
        assert_eq!(p["type"], "message.created");
        assert_eq!(p["unread"], json!(i + 1));
        assert_eq!(p["message"]["title"], json!(format!("m{}", i + 1)));
    }
    assert_eq!(count_rows(&db.url, "outbox").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_only_after_commit_and_never_after_rollback() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (u, v) = (new_user(), new_user());
    let mut tap = RedisTap::subscribe(&app.user_channel(&u)).await;
    let mut witness = RedisTap::subscribe(&app.user_channel(&v)).await;

    // The relay is live: another user's event goes through.
    app.send(&v, "before").await;
    assert_eq!(
        seqs_of(&witness.collect(1, Duration::from_secs(10)).await),
        vec![1]
    );

    let req = parse_create(
        json!({"to_user": u, "title": "never committed", "type": "system"})
            .to_string()
            .as_bytes(),
    )
    .expect("a valid request");
    let mut conn = db.conn().await;
    let outcome = conn
        .transaction::<(), ApiError, _>(async |conn| {
            // Runs as a savepoint inside this transaction.
            let created = create_messages(conn, "test", &req, None).await?;
            let body: serde_json::Value =
                serde_json::from_str(&created.body).expect("the body is JSON");
            assert_eq!(body["messages"][0]["seq"], 1);
            // Longer than the relay's 500 ms poll: it runs several times meanwhile.
            assert_eq!(
                tap.next(Duration::from_millis(1500)).await,
                None,
                "an uncommitted event was published"
            );
            // Committed events of other transactions keep flowing meanwhile.
            app.send(&v, "during").await;
            assert_eq!(
                seqs_of(&witness.collect(1, Duration::from_secs(10)).await),
                vec![2]
            );
            assert_eq!(tap.next(Duration::from_millis(500)).await, None);
            Err(ApiError::BadRequest("roll back".into()))
        })
        .await;
    assert!(
        matches!(&outcome, Err(ApiError::BadRequest(m)) if m == "roll back"),
        "{outcome:?}"
    );

    assert_eq!(
        tap.drain(Duration::from_millis(1500)).await,
        Vec::<Value>::new(),
        "a rolled-back event was published"
    );
    assert_eq!(count_rows(&db.url, "outbox").await, 0);
    assert_eq!(
        scalar_i64(
            &db.url,
            &format!("SELECT count(*) AS v FROM user_event WHERE user_id = '{u}'")
        )
        .await,
        0
    );

    // The rolled-back seq was not consumed; the next real event takes it and is delivered.
    assert_eq!(app.send(&u, "committed").await["seq"], 1);
    let got = tap.collect(1, Duration::from_secs(10)).await;
    assert_exactly_once_in_order(&got, 1, &u);
    assert_eq!(got[0]["message"]["title"], "committed");
    app.stop().await;
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_running_transaction_elsewhere_does_not_stop_delivery() {
    const HOLD: Duration = Duration::from_secs(60);
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut tap = RedisTap::subscribe(&app.user_channel(&u)).await;
    app.send(&u, "before").await;
    assert_exactly_once_in_order(&tap.collect(1, Duration::from_secs(10)).await, 1, &u);

    // A report-style REPEATABLE READ transaction on its own connection, open for the whole run.
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<i64>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let mut conn = AsyncPgConnection::establish(&db.url).await.expect("conn");
    let holder = tokio::spawn(async move {
        conn.build_transaction()
            .repeatable_read()
            .run(async move |conn| {
                let count = "SELECT count(*) AS n FROM t_message_real_time";
                let first: Count = diesel::sql_query(count).get_result(conn).await?;
                let _ = opened_tx.send(first.n);
                let _ = done_rx.await;
                let last: Count = diesel::sql_query(count).get_result(conn).await?;
                Ok::<_, diesel::result::Error>((first.n, last.n))
            })
            .await
    });
    let seen_by_holder = opened_rx.await.expect("the long transaction opened");
    assert_eq!(seen_by_holder, 1);

    let started = Instant::now();
    let mut seq = 1;
    let mut max_latency = Duration::ZERO;
    while started.elapsed() < HOLD {
        let sent_at = Instant::now();
        seq += 1;
        assert_eq!(app.send(&u, &format!("m{seq}")).await["seq"], seq);
        // A generous deadline (the latency is only reported): delivery that the open
        // transaction stopped would never come.
        let got = tap.next(Duration::from_secs(30)).await.unwrap_or_else(|| {
            panic!(
                "event {seq} not delivered while a long transaction is open ({:?} in)",
                started.elapsed()
            )
        });
        assert_eq!(got["seq"], seq, "in order, no repeats");
        max_latency = max_latency.max(sent_at.elapsed());
        tokio::time::sleep_until(sent_at + Duration::from_millis(500)).await;
    }
    // A wait to show that something does NOT happen: no repeat of an event follows.
    assert_eq!(tap.drain(Duration::from_secs(1)).await, Vec::<Value>::new());

    done_tx
        .send(())
        .expect("the long transaction is still open");
    let (first, last) = holder.await.unwrap().expect("the long transaction");
    assert_eq!(
        (first, last),
        (1, 1),
        "the transaction kept its snapshot for the whole run"
    );
    println!(
        "{} events delivered during a {HOLD:?} REPEATABLE READ transaction; max POST-to-Redis latency {max_latency:?}",
        seq - 1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_while_redis_is_unreachable_are_published_when_it_returns() {
    let db = TestDb::new().await;
    let proxy = Cuttable::start("127.0.0.1:6379").await;
    let app = spawn_app(
        &db,
        Opts {
            redis_url: Some(proxy.url()),
            ..Default::default()
        },
    )
    .await;
    let u = new_user();
    // The tap talks to the real Redis directly.
    let mut tap = RedisTap::subscribe(&app.user_channel(&u)).await;

    for i in 1..=20 {
        app.send(&u, &format!("m{i}")).await;
    }
    let mut got = tap.collect(20, Duration::from_secs(30)).await;
    assert_exactly_once_in_order(&got, 20, "before the cut");

    proxy.cut();
    // The node's open Redis connections are torn down before the next commit.
    eventually(
        Duration::from_secs(10),
        "the proxy closed every connection",
        || async { (proxy.forwarding() == 0).then_some(()) },
    )
    .await;
    for i in 21..=50 {
        // The API does not need Redis to accept notifications.
        assert_eq!(app.send(&u, &format!("m{i}")).await["seq"], i);
    }
    let leaked = tap.drain(Duration::from_secs(3)).await;
    assert_eq!(
        seqs_of(&leaked),
        Vec::<i64>::new(),
        "published through a cut connection"
    );
    assert_eq!(
        count_rows(&db.url, "outbox").await,
        30,
        "the events wait in the outbox"
    );

    proxy.restore();
    collect_distinct(&mut tap, &mut got, 50, Duration::from_secs(60)).await;
    got.extend(tap.drain(Duration::from_secs(1)).await);
    let repeats = assert_complete_in_order(&got, 50, &u);
    println!("{repeats} repeated payloads after the outage");
    eventually(Duration::from_secs(10), "outbox drained", || async {
        (count_rows(&db.url, "outbox").await == 0).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stand_by_relay_takes_over_when_the_leader_stops() {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let opts = Opts::in_cluster(&prefix);
    let a = spawn_app(&db, opts.clone()).await;
    let users: Vec<String> = (0..3).map(|_| new_user()).collect();
    let mut taps = vec![];
    for u in &users {
        taps.push(RedisTap::subscribe(&a.user_channel(u)).await);
    }
    // A is the only relay, so once it has published it is the leader.
    a.send(&users[0], "warm-up").await;
    let warm_up = taps[0].collect(1, Duration::from_secs(10)).await;
    assert_exactly_once_in_order(&warm_up, 1, "warm-up");
    let mut received = vec![warm_up, vec![], vec![]];
    let pid_a = leader_pid(&db.url).await.expect("A holds the leader lock");
    let b = spawn_app(&db, opts.clone()).await;
    assert_eq!(b.user_channel(&users[0]), a.user_channel(&users[0]));

    let mut sent = vec![0i64; users.len()];
    sent[0] = 1;
    let mut stopping = None;
    for i in 0..90 {
        if i == 30 {
            let stopper = a.stopper.clone();
            stopping = Some(tokio::spawn(async move { stopper.stop().await }));
        }
        let k = i % users.len();
        sent[k] += 1;
        assert_eq!(b.send(&users[k], &format!("m{i}")).await["seq"], sent[k]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stopping.expect("A was stopped").await.unwrap();

    for (((u, tap), n), got) in users.iter().zip(&mut taps).zip(&sent).zip(&mut received) {
        collect_distinct(tap, got, *n, Duration::from_secs(60)).await;
        got.extend(tap.drain(Duration::from_millis(500)).await);
        let repeats = assert_complete_in_order(got, *n, u);
        println!("{u}: {n} events, {repeats} repeats across the hand-over");
    }
    // A's leader connection is gone and B's relay holds the lock.
    let pid_b = leader_pid(&db.url).await.expect("B holds the leader lock");
    assert_ne!(pid_b, pid_a);
    assert_eq!(
        scalar_i64(
            &db.url,
            &format!("SELECT count(*) AS v FROM pg_stat_activity WHERE pid = {pid_a}")
        )
        .await,
        0,
        "A's relay connection closed"
    );
    assert_eq!(advisory_lock_holders(&db.url).await, 1);
    assert_eq!(count_rows(&db.url, "outbox").await, 0);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_at_once_publish_each_event_exactly_once() {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let opts = Opts::in_cluster(&prefix);
    let apps = [
        Arc::new(spawn_app(&db, opts.clone()).await),
        Arc::new(spawn_app(&db, opts.clone()).await),
    ];
    let users: Vec<String> = (0..4).map(|_| new_user()).collect();
    let mut taps = vec![];
    for u in &users {
        taps.push(RedisTap::subscribe(&apps[0].user_channel(u)).await);
    }

    // 200 messages from 4 concurrent callers, alternating between the two nodes.
    let mut workers = vec![];
    for w in 0..4 {
        let apps = apps.clone();
        let users = users.clone();
        workers.push(tokio::spawn(async move {
            let mut created = vec![];
            for k in 0..50 {
                let app = &apps[(w + k) % 2];
                let u = &users[(w * 50 + k) % users.len()];
                let m = app.send(u, &format!("w{w}k{k}")).await;
                created.push((u.clone(), m["seq"].as_i64().unwrap()));
            }
            created
        }));
    }
    let mut per_user: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for w in workers {
        for (u, s) in w.await.unwrap() {
            per_user.entry(u).or_default().push(s);
        }
    }
    assert_eq!(per_user.values().map(Vec::len).sum::<usize>(), 200);

    for (u, tap) in users.iter().zip(&mut taps) {
        let mut seqs = per_user[u].clone();
        seqs.sort_unstable();
        let n = seqs.len() as i64;
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{u}: gap-free seqs");
        let mut got = tap.collect(n as usize, Duration::from_secs(60)).await;
        got.extend(tap.drain(Duration::from_secs(1)).await);
        assert_exactly_once_in_order(&got, n, u);
    }
    assert_eq!(
        advisory_lock_holders(&db.url).await,
        1,
        "one leader at a time"
    );
    for app in &apps {
        app.stop().await;
    }
}

/// `NOTIFYD_RELAY_PARTITIONS=4`: four leaders relay side by side (small batches, so each user's
/// events span many batches); every user's events still reach its channel exactly once and in seq
/// order, and each partition holds its own leader lock (`partition_lock(k)`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_relays_keep_each_users_order() {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let app = spawn_app(
        &db,
        Opts {
            relay: false,
            ..Opts::in_cluster(&prefix)
        },
    )
    .await;
    let users: Vec<String> = (0..8).map(|_| new_user()).collect();
    let mut taps = vec![];
    for u in &users {
        taps.push(RedisTap::subscribe(&app.user_channel(u)).await);
    }
    // Committed before any relay runs: a backlog the partitions drain concurrently.
    for k in 0..20 {
        for u in &users {
            app.send(u, &format!("k{k}")).await;
        }
    }
    let mut settings = notifyd::config::Settings::new(db.url.clone());
    settings.redis_prefix = prefix.clone();
    settings.relay_partitions = 4;
    settings.relay_batch = 7;
    let relay = notifyd::outbox::Relay {
        database_url: db.url.clone(),
        broker: notifyd::broker::Broker::Redis(notifyd::broker::Redis::Single(
            notifyd::broker::redis_pool(&redis_url()).expect("redis pool"),
        )),
        waker: notifyd::outbox::Waker::new(),
        settings,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(relay.run(stopped));
    for (u, tap) in users.iter().zip(&mut taps) {
        let mut got = tap.collect(20, Duration::from_secs(60)).await;
        got.extend(tap.drain(Duration::from_millis(300)).await);
        assert_exactly_once_in_order(&got, 20, u);
    }
    assert_eq!(count_rows(&db.url, "outbox").await, 0);
    let locks = scalar_i64(
        &db.url,
        "SELECT count(*) AS v FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE d.datname = current_database() AND l.locktype = 'advisory' AND l.granted \
         AND l.classid = 1852798057 AND l.objid IN (1719231488, 1719297024, 1719362560, 1719428096)",
    )
    .await;
    assert_eq!(locks, 4, "one leader lock per partition");
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    app.stop().await;
}

/// Entries queued by older versions, still waiting during a rolling upgrade, are published in
/// order with the rest: one that only points at its event (before frames were carried in the
/// outbox) with the frame from `user_event`, one with its frame as `payload` jsonb (before the
/// `frame` text column) with that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_queued_by_older_versions_are_published_in_order() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut tap = RedisTap::subscribe(&app.user_channel(&u)).await;
    assert_eq!(app.send(&u, "new shape").await["seq"], 1);
    let frame = json!({"type": "message.created", "seq": 2, "unread": 2, "unseen": 2,
        "message": {"id": "old-shape", "seq": 2}});
    let jsonb_frame = json!({"type": "message.created", "seq": 3, "unread": 3, "unseen": 3,
        "message": {"id": "jsonb-shape", "seq": 3}});
    // Two creates as those versions queued them: both events in the log, the outbox entries in
    // seq order (one VALUES list, so ids follow its rows), the counters moved on to seq 3.
    let mut conn = db.conn().await;
    diesel::sql_query(format!(
        "WITH e AS (INSERT INTO user_event (user_id, seq, payload) \
           VALUES ('{u}', 2, '{frame}'), ('{u}', 3, '{jsonb_frame}')), \
         o AS (INSERT INTO outbox (user_id, seq, payload) \
           VALUES ('{u}', 2, NULL), ('{u}', 3, '{jsonb_frame}')) \
         UPDATE user_inbox_state SET seq = 3, unread = 3, unseen = 3 WHERE user_id = '{u}'"
    ))
    .execute(&mut conn)
    .await
    .expect("queue an old-shape and a jsonb-shape entry");
    assert_eq!(app.send(&u, "after them").await["seq"], 4);
    let got = tap.collect(4, Duration::from_secs(30)).await;
    assert_exactly_once_in_order(&got, 4, &u);
    assert_eq!(got[1], frame);
    assert_eq!(got[2], jsonb_frame);
    assert_eq!(got[3]["message"]["title"], "after them");
    assert_eq!(count_rows(&db.url, "outbox").await, 0);
    app.stop().await;
}

/// Relay transactions a node has committed (`notifyd_relay_batch_seconds` counts one per batch
/// that published something) and the events they published, from its `/metrics`.
async fn relay_batches_and_events(http: &reqwest::Client, base: &str) -> (f64, f64) {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    (
        sample(&text, "notifyd_relay_batch_seconds_count").unwrap_or(0.0),
        sample(&text, "notifyd_events_published_total").unwrap_or(0.0),
    )
}

/// Every commit wakes the relay; `NOTIFYD_RELAY_COALESCE` keeps a steady trickle of single
/// commits from costing a relay transaction each. The first commit after a quiet spell goes out
/// in a batch of its own, at once; commits made within the window after it share the next one.
/// (Each POST below commits before the next is sent, 20 ms apart: without the window the relay,
/// idle again after a few milliseconds, would take each in a transaction of its own.) Whether
/// all five fell within one window is measured, not assumed: on a machine so loaded that they
/// took longer than the window, they may take one more transaction per window they spanned, and
/// never one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_within_the_coalescing_window_share_one_relay_transaction() {
    let db = TestDb::new().await;
    // The metrics recorder is one per process, so a process of its own, on a port chosen before
    // it starts (see `binary::free_port`).
    const WINDOW: Duration = Duration::from_secs(1); // the largest the setting allows
    let port = crate::binary::free_port();
    let mut env = crate::binary::node_env(&db, port);
    env.push(("NOTIFYD_RELAY_COALESCE".into(), "1s".into()));
    let mut node = crate::binary::Notifyd::start(&["serve"], &env, port);
    node.healthy().await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let post = |title: String| {
        http.post(format!("{base}/api/v1/messages"))
            .bearer_auth(SERVICE_KEY)
            .json(&json!({"to_user": "coalesced", "title": title, "content": "c", "type": "t"}))
            .send()
    };
    let published = |events: f64| {
        let (http, base) = (&http, &base);
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (batches, published) = relay_batches_and_events(http, base).await;
                if published >= events || Instant::now() > deadline {
                    return (batches, published);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // The first commit's batch cannot start before its POST is sent: its window ends after
    // `started + WINDOW`.
    let started = Instant::now();
    assert_eq!(post("first".into()).await.expect("POST").status(), 201);
    assert_eq!(published(1.0).await, (1.0, 1.0), "the first commit, alone");
    for i in 2..=6 {
        assert_eq!(post(format!("m{i}")).await.expect("POST").status(), 201);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let span = started.elapsed();
    let (batches, events) = published(6.0).await;
    assert_eq!(events, 6.0, "every commit published");
    if span < WINDOW {
        assert_eq!(
            batches, 2.0,
            "the five commits made within the window share one transaction"
        );
    } else {
        // Each batch after the first waits out a window from the one before it, and the last
        // commit waits at most one window: at most one batch per window spanned, plus one.
        let windows = (span.as_secs_f64() / WINDOW.as_secs_f64()).ceil();
        assert!(
            batches <= 2.0 + windows,
            "{batches} transactions for 6 commits made over {span:?} ({windows} windows)"
        );
    }
    assert_eq!(count_rows(&db.url, "outbox").await, 0);
    node.stop().await;
}
