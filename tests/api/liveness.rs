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
    let prefix = new_prefix();
    let proxy = Cuttable::start("127.0.0.1:6379").await;
    // Node A reaches Redis only through the proxy; node B relays, directly.
    let a = spawn_app(
        &db,
        Opts {
            prefix: Some(prefix.clone()),
            relay: false,
            redis_url: Some(proxy.url()),
            ..Default::default()
        },
    )
    .await;
    let b = spawn_app(&db, Opts::in_cluster(&prefix)).await;
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
    let prefix = new_prefix();
    let proxy = Cuttable::start("127.0.0.1:6379").await;
    let a = spawn_app(
        &db,
        Opts {
            prefix: Some(prefix.clone()),
            relay: false,
            redis_url: Some(proxy.url()),
            ..Default::default()
        },
    )
    .await;
    let b = spawn_app(&db, Opts::in_cluster(&prefix)).await;
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
