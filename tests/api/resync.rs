//! A node whose Redis subscription drops re-reads, for every connected user, what changed while
//! it was deaf, and delivers it in order once the subscription is back.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_subscriber_reconnects_missed_events_are_delivered_in_order() {
    let db = TestDb::new().await;
    // Node A holds the socket.
    let (proxy, a, b) = nodes_with_a_cuttable_redis(&db).await;
    let u = new_user();
    let mut client = a.ws(&u, None).await;
    let hello = client.expect("hello", Duration::from_secs(5)).await;
    assert_eq!(hello["seq"], 0);
    b.send(&u, "live").await;
    assert_eq!(
        client
            .expect("message.created", Duration::from_secs(10))
            .await["seq"],
        1
    );

    proxy.cut();
    for i in 0..5 {
        b.send(&u, &format!("missed {i}")).await;
    }
    // Give B's relay time to publish them into a Redis that A no longer hears.
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();

    let mut seqs = vec![];
    for _ in 0..5 {
        seqs.push(
            client
                .expect("message.created", Duration::from_secs(30))
                .await["seq"]
                .as_i64()
                .unwrap_or(-1),
        );
    }
    assert_eq!(seqs, vec![2, 3, 4, 5, 6]);
    b.send(&u, "live again").await;
    assert_eq!(
        client
            .expect("message.created", Duration::from_secs(10))
            .await["seq"],
        7
    );
    assert!(
        client.next(Duration::from_millis(500)).await.is_none(),
        "no duplicates after the repair"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_lost_on_the_broker_with_nothing_after_it_is_delivered_by_the_audit() {
    let db = TestDb::new().await;
    // No relay: the event is committed but never published, as if pub/sub had lost it.
    let app = spawn_app(
        &db,
        Opts {
            relay: false,
            audit_interval: Some(Duration::from_secs(1)),
            ..Default::default()
        },
    )
    .await;
    let u = new_user();
    let mut client = app.ws(&u, None).await;
    assert_eq!(
        client.expect("hello", Duration::from_secs(5)).await["seq"],
        0
    );
    let created = app.send(&u, "never published").await;
    let frame = client
        .expect("message.created", Duration::from_secs(15))
        .await;
    assert_eq!(frame["seq"], 1);
    assert_eq!(frame["message"]["id"], created["id"]);
    app.send(&u, "also never published").await;
    assert_eq!(
        client
            .expect("message.created", Duration::from_secs(15))
            .await["seq"],
        2
    );
    app.stop().await;
}

/// A resume after a long absence is never one huge frame: 900 missed events of about 23 KB
/// (20 MB) arrive as `sync` frames of at most 256 KiB of events (one event may exceed it alone),
/// in seq order, none missing or repeated, and the socket stays open. (Before, one 20 MB
/// `sync` frame: more than WebSocket libraries take by default — tungstenite's limit is
/// 16 MiB — so such a client could never resume.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_far_behind_comes_in_sync_frames_of_bounded_size() {
    const EVENTS: i64 = 900;
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let content = "x".repeat(8000);
    let data = serde_json::json!({ "pad": "y".repeat(15_000) });
    for b in 0..EVENTS / 100 {
        let messages: Vec<serde_json::Value> = (0..100)
            .map(|i| serde_json::json!({"to_user": u, "title": format!("{b}-{i}"), "content": content, "data": data}))
            .collect();
        let r = app
            .post_messages(&serde_json::json!({ "messages": messages }))
            .await;
        assert_eq!(r.status(), 201);
    }
    let mut c = app.ws(&u, Some(0)).await;
    c.next_of("hello", Duration::from_secs(10)).await;
    let mut seqs = vec![];
    let mut largest = 0;
    while seqs.last() != Some(&EVENTS) {
        let f = c
            .next(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("ended after {} events: {:?}", seqs.len(), c.closed));
        largest = largest.max(f.to_string().len());
        match f["type"].as_str() {
            Some("sync") => seqs.extend(
                f["events"]
                    .as_array()
                    .expect("events")
                    .iter()
                    .map(|e| e["seq"].as_i64().expect("seq")),
            ),
            _ => seqs.push(f["seq"].as_i64().expect("seq")),
        }
    }
    assert!(
        seqs.iter().copied().eq(1..=EVENTS),
        "out of order or repeated"
    );
    assert!(largest < 300 * 1024, "a frame of {largest} bytes");
    app.stop().await;
}
