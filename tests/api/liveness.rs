//! Broker and database liveness: a peer that stops answering WITHOUT closing (a half-open
//! connection, made by freezing a `Cuttable` proxy) must never block joins, hold the relay's
//! leadership, or leave `/readyz` saying ready.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

async fn readyz(app: &TestApp) -> u16 {
    // Generous: the canary takes a few seconds at most even when it fails.
    match app
        .http
        .get(format!("{}/readyz", app.base))
        .timeout(Duration::from_secs(30))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_redis_never_blocks_a_join_and_the_hub_recovers_with_a_resync() {
    let db = TestDb::new().await;
    let (proxy, a, b) = nodes_with_a_cuttable_redis(&db).await;
    eventually(Duration::from_secs(20), "node A ready", || async {
        (readyz(&a).await == 200).then_some(())
    })
    .await;
    let u1 = new_user();
    let mut c1 = a.ws(&u1, None).await;
    c1.expect("hello", Duration::from_secs(10)).await;

    proxy.freeze();
    // A join needs a SUBSCRIBE that a frozen Redis never confirms: it must still get `hello`
    // within a short bound (the hub waits at most LISTEN_WAIT = 2 s), not hang.
    let u2 = new_user();
    let mut c2 = a.ws(&u2, None).await;
    let hello = c2.next(Duration::from_secs(8)).await;
    assert_eq!(
        hello.as_ref().map(|h| h["type"].clone()),
        Some(json!("hello")),
        "a join behind a half-open Redis got no hello in time: {hello:?}"
    );
    // The subscriber notices the silent peer (PING / SUBSCRIBE timeout) and the node says so.
    eventually(Duration::from_secs(30), "node A unready", || async {
        (readyz(&a).await == 503).then_some(())
    })
    .await;
    // Committed meanwhile (through B): A hears nothing of it on the frozen connection.
    b.send(&u1, "missed").await;
    b.send(&u2, "missed").await;

    proxy.restore();
    eventually(Duration::from_secs(30), "node A ready again", || async {
        (readyz(&a).await == 200).then_some(())
    })
    .await;
    // The reconnect resubscribed both users and `Resync` repaired what was missed...
    assert_eq!(
        c1.expect("message.created", Duration::from_secs(20)).await["seq"],
        1
    );
    assert_eq!(
        c2.expect("message.created", Duration::from_secs(20)).await["seq"],
        1
    );
    // ...and live delivery works again for the user who joined during the outage.
    b.send(&u2, "live").await;
    assert_eq!(
        c2.expect("message.created", Duration::from_secs(20)).await["seq"],
        2
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_subscribers_get_events_again_after_a_half_open_redis_recovers() {
    let db = TestDb::new().await;
    let (proxy, a, b) = nodes_with_a_cuttable_redis(&db).await;
    let u = new_user();
    let mut c = WsClient::connect(&a.ws_url(&token_with_topics(&u, &["product:*"]), None))
        .await
        .expect("ws connect");
    c.expect("hello", Duration::from_secs(10)).await;

    proxy.freeze();
    // Subscribing while Redis is silent: answered in bounded time, not hung.
    c.send(&json!({"type": "subscribe", "topics": ["product:7"], "ref": "s1"}))
        .await;
    let ack = c.next(Duration::from_secs(8)).await;
    assert_eq!(
        ack.as_ref().map(|f| f["type"].clone()),
        Some(json!("ack")),
        "subscribe behind a half-open Redis: {ack:?}"
    );
    eventually(Duration::from_secs(30), "node A unready", || async {
        (readyz(&a).await == 503).then_some(())
    })
    .await;
    proxy.restore();
    eventually(Duration::from_secs(30), "node A ready again", || async {
        (readyz(&a).await == 200).then_some(())
    })
    .await;
    b.publish_topic("product:7", json!({"stock": 3})).await;
    let ev = c.expect("topic.event", Duration::from_secs(20)).await;
    assert_eq!(ev["topic"], "product:7");
    assert_eq!(ev["data"]["stock"], 3);
    a.stop().await;
    b.stop().await;
}

/// The application name of the session holding the relay's leader lock, if any.
async fn leader_name(db_url: &str) -> Option<String> {
    query_json(
        db_url,
        &format!(
            "SELECT a.application_name AS name {} ",
            crate::relay::LEADER_LOCKS.replace(
                "FROM pg_locks l",
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            )
        ),
    )
    .await
    .into_iter()
    .next()
    .and_then(|r| r["name"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_behind_a_half_open_database_connection_loses_the_outbox_in_bounded_time() {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let proxy = Cuttable::start("127.0.0.1:5432").await;
    let via_proxy = proxy.pg_url(&db.url);
    let short = Duration::from_secs(2);
    // Node A reaches PostgreSQL only through the proxy; it starts first and leads.
    let a = spawn_app_with(&db, Opts::in_cluster(&prefix), |s| {
        s.database_url = via_proxy.clone();
        s.relay_db_timeout = short;
    })
    .await;
    let a_name = format!("notifyd relay {}", a.stopper.state().settings.node_id);
    eventually(Duration::from_secs(20), "node A leads", || async {
        (leader_name(&db.url).await.as_deref() == Some(a_name.as_str())).then_some(())
    })
    .await;
    let b = spawn_app_with(&db, Opts::in_cluster(&prefix), |s| {
        s.relay_db_timeout = short
    })
    .await;
    let b_name = format!("notifyd relay {}", b.stopper.state().settings.node_id);
    let u = new_user();
    let mut tap = RedisTap::subscribe(&b.user_channel(&u)).await;
    b.send(&u, "before").await;
    assert_eq!(
        seqs_of(&tap.collect(1, Duration::from_secs(10)).await),
        vec![1]
    );

    // A's every database connection now swallows bytes and never answers, without closing.
    proxy.freeze();
    for i in 0..3 {
        b.send(&u, &format!("during {i}")).await;
    }
    // PostgreSQL ends A's silent session (idle_session_timeout = relay timeout + back-off +
    // poll, 7.5 s here), the leader lock goes with it, and B publishes. Generous bound.
    // At-least-once: the batch A had claimed when its connection froze (seq 1, already
    // published, never committed) is published again by B; receivers drop it by seq.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut first_arrivals = vec![1];
    while first_arrivals.len() < 4 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(p) = tap.next(left).await else { break };
        let seq = p["seq"].as_i64().expect("seq");
        if !first_arrivals.contains(&seq) {
            first_arrivals.push(seq);
        }
    }
    assert_eq!(
        first_arrivals,
        vec![1, 2, 3, 4],
        "events committed while the leader's connection was half-open, in order"
    );
    assert_eq!(leader_name(&db.url).await.as_deref(), Some(b_name.as_str()));
    b.stop().await;
    proxy.cut();
    a.stop().await;
}

/// Inserts `n` events that expired a day ago, spread over 1,000 users.
async fn insert_expired_events(db_url: &str, n: i64) {
    let mut c = db_conn(db_url).await;
    diesel::sql_query(format!(
        "INSERT INTO user_event (user_id, seq, created_at, payload) \
         SELECT 'old' || (g % 1000), g, now() - interval '8 days', '{{\"type\":\"x\"}}'::jsonb \
         FROM generate_series(1, {n}) g"
    ))
    .execute(&mut c)
    .await
    .expect("insert expired events");
}

async fn db_conn(db_url: &str) -> diesel_async::AsyncPgConnection {
    use diesel_async::AsyncConnection;
    diesel_async::AsyncPgConnection::establish(db_url)
        .await
        .expect("conn")
}

use diesel_async::RunQueryDsl;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_keeps_up_with_a_large_backlog_while_delivery_goes_on() {
    let db = TestDb::new().await;
    // Migrations first (the node runs them), then a backlog of 250,000 expired events: more
    // than the old schedule (20 x 5,000 rows every 30 s) could prune in 60 s. How fast the
    // housekeeper prunes is measured by `cargo bench --bench housekeeping`; here, that it
    // clears the backlog at all while deliveries go on, with a deadline that only turns a
    // housekeeper that stopped into a failure.
    let app = spawn_app_with(&db, Opts::default(), |s| {
        s.housekeeping_interval = Duration::from_secs(1);
    })
    .await;
    let u = new_user();
    let mut client = app.ws(&u, None).await;
    client.expect("hello", Duration::from_secs(10)).await;
    insert_expired_events(&db.url, 250_000).await;

    // Deliveries go on, in order, while the housekeeper deletes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut seq = 0;
    loop {
        seq += 1;
        app.send(&u, &format!("m{seq}")).await;
        let f = client
            .expect("message.created", Duration::from_secs(10))
            .await;
        assert_eq!(f["seq"], seq, "delivery during housekeeping");
        let left = scalar_i64(
            &db.url,
            "SELECT count(*) AS v FROM user_event WHERE user_id LIKE 'old%'",
        )
        .await;
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} expired events still there after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Live events are kept.
    assert_eq!(
        scalar_i64(
            &db.url,
            &format!("SELECT count(*) AS v FROM user_event WHERE user_id = '{u}'")
        )
        .await,
        seq
    );
    app.stop().await;
}

/// Found by the chaos harness: requests on a pooled connection whose PostgreSQL went silent
/// (half-open) waited for as long as the silence lasted, and the connection went back to the
/// pool. Each request's database work is bounded (here 2 s), and a connection that timed out is
/// discarded. The silence lasts for the rest of the test, so any answer within the generous
/// deadline came from the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_silent_database_connection_answers_503_in_bounded_time() {
    let db = TestDb::new().await;
    let proxy = Cuttable::start("127.0.0.1:5432").await;
    let via_proxy = proxy.pg_url(&db.url);
    let app = spawn_app_with(
        &db,
        Opts {
            relay: false,
            ..Default::default()
        },
        |s| {
            s.database_url = via_proxy.clone();
            s.db_request_timeout = Duration::from_secs(2);
        },
    )
    .await;
    let u = new_user();
    // A pooled connection exists (and is idle) before the freeze.
    assert_eq!(
        app.user_get(&u, "/api/v1/me/unread-count").await.status(),
        200
    );
    proxy.freeze();
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        app.user_get(&u, "/api/v1/me/unread-count"),
    )
    .await
    .expect("a request on a silent database connection never answered");
    assert_eq!(r.status(), 503);
    // Once PostgreSQL answers again, requests succeed on fresh connections.
    proxy.restore();
    eventually(
        Duration::from_secs(30),
        "requests succeed again",
        || async {
            (app.user_get(&u, "/api/v1/me/unread-count").await.status() == 200).then_some(())
        },
    )
    .await;
    app.stop().await;
}
