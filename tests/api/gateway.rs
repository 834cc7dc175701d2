//! The WebSocket gateway (contract §5) over real sockets: hello, live events on every session of
//! a user on every node, resume with `since`, resets, gap repair from the event log, auth and
//! origin checks, garbage frames, slow consumers, heartbeats, shutdown and topics.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::helpers::*;

/// Deadline for anything that should happen "now" (never a measure of speed).
const T: Duration = Duration::from_secs(15);

fn seq(f: &Value) -> i64 {
    f["seq"]
        .as_i64()
        .unwrap_or_else(|| panic!("frame without seq: {f}"))
}

/// The `hello` frame, which must be the first thing a session receives.
async fn hello(c: &mut WsClient) -> Value {
    c.next_of("hello", T).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_of_one_user_both_get_each_event_and_a_read_from_one_reaches_both() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut a = app.ws(&u, None).await;
    let mut b = app.ws(&u, None).await;
    for c in [&mut a, &mut b] {
        let h = hello(c).await;
        assert_eq!(
            h,
            json!({"type": "hello", "user": u, "seq": 0, "unread": 0, "unseen": 0, "epoch": 0, "heartbeat_s": 25})
        );
    }

    let r = app
        .post_messages(
            &json!({"to_user": u, "title": "New comment", "content": "Bob replied",
            "type": "comment", "send_user": "7", "skip_url": "/posts/9#c3", "data": {"post": 9}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["messages"][0]["id"].clone();
    let listed = app.user_json(&u, "/api/v1/me/messages").await["messages"][0].clone();
    assert_eq!(listed["id"], id);
    for c in [&mut a, &mut b] {
        let f = c.next_of("message.created", T).await;
        assert_eq!(
            (seq(&f), &f["unread"], &f["unseen"]),
            (1, &json!(1), &json!(1))
        );
        // The full message object, exactly as the REST list shows it.
        assert_eq!(f["message"], listed);
        let keys: Vec<&str> = f["message"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for k in [
            "id",
            "seq",
            "title",
            "content",
            "type",
            "send_user",
            "send_time",
            "skip_url",
            "is_read",
            "read_at",
            "data",
        ] {
            assert!(
                keys.contains(&k),
                "message object lacks {k}: {}",
                f["message"]
            );
        }
        assert_eq!(f["message"]["title"], "New comment");
        assert_eq!(f["message"]["data"], json!({"post": 9}));
        assert_eq!(f["message"]["is_read"], false);
    }

    a.send(&json!({"type": "read", "ids": [id], "ref": "r1"}))
        .await;
    let got = a.next_set(&["ack", "message.read"], T).await;
    let (ack, read_a) = (&got[0], &got[1]);
    assert_eq!(ack["ref"], "r1");
    assert_eq!(
        (seq(ack), &ack["unread"], &ack["unseen"]),
        (2, &json!(0), &json!(0))
    );
    let read_b = b.next_of("message.read", T).await;
    for f in [read_a, &read_b] {
        assert_eq!(
            f,
            &json!({"type": "message.read", "seq": 2, "unread": 0, "unseen": 0, "ids": [id]})
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_nodes_sharing_a_database_and_redis_prefix() {
    let db = TestDb::new().await;
    let p = new_prefix();
    let node_a = spawn_app(&db, Opts::in_cluster(&p)).await;
    let node_b = spawn_app(&db, Opts::in_cluster(&p)).await;
    let u = new_user();
    let mut on_a = node_a.ws(&u, None).await;
    assert_eq!(seq(&hello(&mut on_a).await), 0);

    let created = node_b.send(&u, "posted on B").await;
    let f = on_a.next_of("message.created", T).await;
    assert_eq!(seq(&f), 1);
    assert_eq!(f["message"]["id"], created["id"]);
    assert_eq!(f["message"]["title"], "posted on B");

    let mut on_b = node_b.ws(&u, None).await;
    let h = hello(&mut on_b).await;
    assert_eq!((seq(&h), &h["unread"]), (1, &json!(1)));

    on_a.send(&json!({"type": "read", "ids": [created["id"]], "ref": "r"}))
        .await;
    let got = on_a.next_set(&["ack", "message.read"], T).await;
    assert_eq!(seq(&got[1]), 2);
    let f = on_b.next_of("message.read", T).await;
    assert_eq!(
        f,
        json!({"type": "message.read", "seq": 2, "unread": 0, "unseen": 0, "ids": [created["id"]]})
    );

    // And the other way round: a command on the tab on B reaches the tab on A.
    node_a.send(&u, "second").await;
    assert_eq!(seq(&on_b.next_of("message.created", T).await), 3);
    assert_eq!(seq(&on_a.next_of("message.created", T).await), 3);
    on_b.send(&json!({"type": "seen_all", "ref": "s"})).await;
    let f = on_a.next_of("message.seen_all", T).await;
    assert_eq!(
        f,
        json!({"type": "message.seen_all", "seq": 4, "unread": 1, "unseen": 0})
    );
    node_a.stop().await;
    node_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_since_replays_the_missed_events_in_one_sync_then_continues_live() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    app.send(&u, "before 1").await;
    app.send(&u, "before 2").await;
    let mut c = app.ws(&u, None).await;
    let last = seq(&hello(&mut c).await);
    assert_eq!(last, 2);
    c.close().await;

    let created = app.send_batch(&u, 50, "missed ", "c").await;
    let mut c = app.ws(&u, Some(last)).await;
    let h = hello(&mut c).await;
    assert_eq!(
        (seq(&h), &h["unread"], &h["unseen"]),
        (52, &json!(52), &json!(52))
    );
    let sync = c.next_of("sync", T).await;
    assert_eq!(sync.get("reset"), None);
    assert_eq!(
        (seq(&sync), &sync["unread"], &sync["unseen"]),
        (52, &json!(52), &json!(52))
    );
    let events = sync["events"].as_array().expect("events");
    assert_eq!(
        events.iter().map(seq).collect::<Vec<_>>(),
        (3..=52).collect::<Vec<_>>()
    );
    for (e, m) in events.iter().zip(&created) {
        assert_eq!(e["type"], "message.created");
        assert_eq!(e["message"]["id"], m["id"]);
    }
    // The sync frame holds exactly what GET /me/changes answers for the same since.
    let changes = app
        .user_json(&u, &format!("/api/v1/me/changes?since={last}"))
        .await;
    assert_eq!(&changes["events"], &sync["events"]);

    // Live from here on: the next frame is the next seq (no duplicate or hole at the seam).
    let live = app.send(&u, "live").await;
    let f = c.next_of("message.created", T).await;
    assert_eq!((seq(&f), &f["message"]["id"]), (53, &live["id"]));
    let live = app.send(&u, "live 2").await;
    let f = c.next_of("message.created", T).await;
    assert_eq!((seq(&f), &f["message"]["id"]), (54, &live["id"]));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_ahead_of_the_stream_or_more_than_1000_behind_is_a_reset_on_ws_and_rest() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    app.send(&u, "one").await;
    app.send(&u, "two").await;

    // Ahead of the stream (the database was restored): reset.
    let epoch = epoch_of(&db.url, &u).await;
    let mut c = app.ws(&u, Some(3)).await;
    assert_eq!(seq(&hello(&mut c).await), 2);
    let sync = c.next_of("sync", T).await;
    assert_eq!(
        sync,
        json!({"type": "sync", "reset": true, "seq": 2, "unread": 2, "unseen": 2, "epoch": epoch})
    );
    c.close().await;
    assert_eq!(
        app.user_json(&u, "/api/v1/me/changes?since=3").await,
        json!({"reset": true, "seq": 2, "unread": 2, "unseen": 2, "epoch": epoch})
    );

    // 1,005 events in all: since=1 is 1,004 behind (reset), since=5 exactly 1,000 (replayed).
    app.send_batch(&u, 1000, "bulk ", "c").await;
    app.send_batch(&u, 3, "more ", "c").await;
    let mut c = app.ws(&u, Some(1)).await;
    assert_eq!(seq(&hello(&mut c).await), 1005);
    assert_eq!(
        c.next_of("sync", T).await,
        json!({"type": "sync", "reset": true, "seq": 1005, "unread": 1005, "unseen": 1005, "epoch": epoch})
    );
    c.close().await;
    assert_eq!(
        app.user_json(&u, "/api/v1/me/changes?since=1").await,
        json!({"reset": true, "seq": 1005, "unread": 1005, "unseen": 1005, "epoch": epoch})
    );

    let mut c = app.ws(&u, Some(5)).await;
    hello(&mut c).await;
    // 1,000 events: several sync frames (at most 256 KiB of events each), in order.
    let events = c.resumed_events(1005, T).await;
    let seqs: Vec<i64> = events.iter().map(seq).collect();
    assert_eq!(seqs, (6..=1005).collect::<Vec<_>>());
    let rest = app.user_json(&u, "/api/v1/me/changes?since=5").await;
    assert_eq!(rest.get("reset"), None);
    assert_eq!(rest["events"], Value::Array(events));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_in_the_published_seqs_is_repaired_from_the_database_in_order_without_duplicates() {
    let db = TestDb::new().await;
    // No relay: nothing reaches Redis unless this test publishes it.
    let app = spawn_app(
        &db,
        Opts {
            // No audit either: only the hole below may make the gateway read the database.
            audit_interval: Some(std::time::Duration::from_secs(3600)),
            ..Opts::no_relay()
        },
    )
    .await;
    eventually(T, "the node's Redis subscriber is connected", || async {
        app.hub_connected().then_some(())
    })
    .await;
    let u = new_user();
    let mut c = app.ws(&u, None).await;
    assert_eq!(seq(&hello(&mut c).await), 0);

    app.send(&u, "first").await;
    app.send(&u, "second").await;
    let outbox = format!("SELECT count(*) AS v FROM outbox WHERE user_id = '{u}'");
    assert_eq!(
        scalar_i64(&db.url, &outbox).await,
        2,
        "with the relay off both events wait in the outbox"
    );
    let payload = |s: i64| {
        let sql = format!(
            "SELECT payload::text AS v FROM user_event WHERE user_id = '{u}' AND seq = {s}"
        );
        let url = db.url.clone();
        async move { scalar_text(&url, &sql).await }
    };
    let p1: Value = serde_json::from_str(&payload(1).await).unwrap();
    let p2 = payload(2).await;

    // Only seq 2 is published: the gateway sees the hole and reads seq 1 from the log first.
    redis_publish(&app.user_channel(&u), &p2).await;
    assert_eq!(c.next_of("message.created", T).await, p1);
    assert_eq!(
        c.next_of("message.created", T).await,
        serde_json::from_str::<Value>(&p2).unwrap()
    );

    // A duplicate of seq 2 is dropped: the next frame is seq 3.
    redis_publish(&app.user_channel(&u), &p2).await;
    app.send(&u, "third").await;
    redis_publish(&app.user_channel(&u), &payload(3).await).await;
    let f = c.next_of("message.created", T).await;
    assert_eq!(seq(&f), 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_or_foreign_tokens_are_refused_with_401_on_ws_and_rest() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let expired = token_signed(JWT_SECRET, &u, -60);
    let foreign = token_signed("some-other-secret", &u, 3600);
    for (what, tok) in [
        ("garbage", "not-a-jwt"),
        ("expired", expired.as_str()),
        ("wrong secret", foreign.as_str()),
        ("missing", ""),
    ] {
        let r = WsClient::connect(&app.ws_url(tok, None)).await;
        assert_eq!(refused_status(r), 401, "{what} token on /ws");
        let r = ws_connect_with(
            &format!("{}/ws", app.ws_base),
            &[("Authorization", &format!("Bearer {tok}"))],
        )
        .await;
        assert_eq!(refused_status(r), 401, "{what} bearer token on /ws");
        let r = app
            .http
            .get(format!("{}/api/v1/me/unread-count", app.base))
            .bearer_auth(tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what} token on REST");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let r = app
        .http
        .get(format!("{}/api/v1/me/unread-count", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no Authorization header on REST");

    // The same user with a good token gets in, by query or by header.
    let mut c = app.ws(&u, None).await;
    assert_eq!(hello(&mut c).await["user"], json!(u));
    let mut c = ws_connect_with(
        &format!("{}/ws", app.ws_base),
        &[("Authorization", &format!("Bearer {}", token(&u)))],
    )
    .await
    .expect("bearer header accepted");
    assert_eq!(hello(&mut c).await["user"], json!(u));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_another_users_message_changes_nothing_and_reveals_nothing() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (a, b) = (new_user(), new_user());
    let ma = app.send(&a, "for a").await;
    app.send(&b, "for b").await;
    let unchanged = json!({"unread": 1, "unseen": 1, "seq": 1});

    let mut wb = app.ws(&b, None).await;
    assert_eq!(seq(&hello(&mut wb).await), 1);
    wb.send(&json!({"type": "read", "ids": [ma["id"]], "ref": "x"}))
        .await;
    let ack = wb.next_of("ack", T).await;
    assert_eq!(
        ack,
        json!({"type": "ack", "ref": "x", "seq": 1, "unread": 1, "unseen": 1})
    );
    // No message.read for B: the next event B sees is its next message, at seq 2.
    app.send(&b, "sentinel").await;
    assert_eq!(seq(&wb.next_of("message.created", T).await), 2);

    assert_eq!(
        app.user_json(&a, "/api/v1/me/unread-count").await,
        unchanged
    );
    let r = app
        .user_post_json(&b, "/api/v1/me/messages/read", json!({"ids": [ma["id"]]}))
        .await;
    assert_eq!(r, json!({"seq": 2, "unread": 2, "unseen": 2}));
    assert_eq!(
        app.user_json(&a, "/api/v1/me/unread-count").await,
        unchanged
    );
    let listed = app.user_json(&a, "/api/v1/me/messages").await;
    assert_eq!(listed["messages"][0]["id"], ma["id"]);
    assert_eq!(listed["messages"][0]["is_read"], false);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_get_error_frames_and_an_oversized_frame_closes_with_1009() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut c = app.ws(&u, None).await;
    hello(&mut c).await;

    c.send_raw(WsMessage::text("this is not json")).await;
    let e = c.next_of("error", T).await;
    assert_eq!(e["error"]["code"], "bad_frame");
    c.send(&json!({"type": "ping"})).await;
    assert_eq!(c.next_of("pong", T).await, json!({"type": "pong"}));

    c.send(&json!({"type": "dance", "ref": "d1"})).await;
    let e = c.next_of("error", T).await;
    assert_eq!(
        (&e["ref"], &e["error"]["code"]),
        (&json!("d1"), &json!("unknown_type"))
    );

    c.send_raw(WsMessage::binary(vec![1u8, 2, 3])).await;
    let e = c.next_of("error", T).await;
    assert_eq!(e["error"]["code"], "bad_frame");
    c.send(&json!({"type": "ping", "ref": "p"})).await;
    assert_eq!(
        c.next_of("pong", T).await,
        json!({"type": "pong", "ref": "p"})
    );

    // Valid JSON, but larger than 64 KiB: refused by size, not answered.
    let big = json!({"type": "ping", "ref": "big", "pad": "x".repeat(64 * 1024)});
    c.send(&big).await;
    assert_eq!(c.expect_close(T).await, Some(1009));
    assert!(
        !c.frames.iter().any(|f| f["ref"] == "big"),
        "the oversized frame was processed: {:?}",
        c.frames
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_stops_reading_is_closed_with_4008_while_its_sibling_tab_keeps_going() {
    // The slow tab's socket has a 4 KiB receive buffer (loopback buffers here grow to 32 MB,
    // which would hold the whole test): its queue fills, it stays behind, and after
    // BEHIND_LIMIT (10 s) it is cut off. The reading tab takes every burst, each far over the
    // 1 MiB budget, and is never cut off.
    const BATCHES: i64 = 8;
    const PER_BATCH: i64 = 400;
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let (slow, _) = small_buffer_ws(&app, &u).await;
    let mut normal = app.ws(&u, None).await;
    hello(&mut normal).await;

    // The normal tab reads everything, in its own task.
    let total = BATCHES * PER_BATCH;
    let reader = tokio::spawn(async move {
        let mut seqs = vec![];
        while seqs.last() != Some(&total) {
            match normal.next(Duration::from_secs(60)).await {
                Some(f) => seqs.push(seq(&f)),
                None => break,
            }
        }
        (seqs, normal.closed)
    });
    let content = "x".repeat(8000);
    for b in 0..BATCHES {
        app.send_batch(&u, PER_BATCH as usize, &format!("b{b} "), &content)
            .await;
    }
    let (seqs, closed) = reader.await.unwrap();
    assert_eq!(closed, None, "the reading tab was closed");
    assert!(
        seqs.iter().copied().eq(1..=total),
        "the reading tab got {} frames, first gap near {:?}",
        seqs.len(),
        seqs.windows(2).find(|w| w[1] != w[0] + 1)
    );

    // The slow tab, still not reading when it has been behind for BEHIND_LIMIT: whatever was
    // buffered, then a 4008 close (resume with since).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (got, code) = read_until_close(slow, Duration::ZERO).await;
    assert_eq!(code, Some(4008));
    assert!(got.len() < total as usize, "the slow tab was never cut off");
    assert!(got.iter().copied().eq(1..=got.len() as i64));
    app.stop().await;
}

/// A tab that reads, only slower than a burst arrives (a small receive buffer, a pause per
/// frame), is not a slow consumer: when its queue is over the byte budget the actor stops
/// queueing for it, refills it from the event log as it drains, and it gets every event in
/// order without a close. (Before, any burst larger than the budget closed it with 4008.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_reading_slower_than_a_burst_arrives_catches_up_instead_of_being_closed() {
    const PER_BATCH: i64 = 500;
    const BATCHES: i64 = 2;
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let (ws, _) = small_buffer_ws(&app, &u).await;

    // 1,000 events of 8 KB (8 MB) in two commits: each one alone is 4x the 1 MiB budget.
    let content = "x".repeat(8000);
    for b in 0..BATCHES {
        app.send_batch(&u, PER_BATCH as usize, &format!("b{b} "), &content)
            .await;
    }
    let total = BATCHES * PER_BATCH;
    // About 4 MB/s: slower than the burst, far faster than "not reading".
    let (seqs, closed) = read_until_seq(ws, total, Duration::from_millis(2)).await;
    assert_eq!(closed, None, "closed after {} events", seqs.len());
    assert!(
        seqs.iter().copied().eq(1..=total),
        "got {} events, first gap near {:?}",
        seqs.len(),
        seqs.windows(2).find(|w| w[1] != w[0] + 1)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_pings_is_closed_and_one_that_reads_stays_open() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::fast_heartbeat()).await;
    let (quiet_user, live_user) = (new_user(), new_user());
    // Never read from, so it never sees (or answers) a ping.
    let mut quiet = app.ws(&quiet_user, None).await;
    let mut live = app.ws(&live_user, None).await;
    let reader = tokio::spawn(async move {
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut frames = 0;
        while tokio::time::Instant::now() < end {
            if live
                .next(end.saturating_duration_since(tokio::time::Instant::now()))
                .await
                .is_some()
            {
                frames += 1;
            }
            if live.closed.is_some() {
                break;
            }
        }
        (live, frames)
    });

    let connected = json!({"online": true, "connections": 1});
    let gone = json!({"online": false, "connections": 0});
    eventually(T, "the quiet client shows as connected", || async {
        (app.presence(&quiet_user).await == connected).then_some(())
    })
    .await;
    eventually(T, "the quiet client is dropped", || async {
        (app.presence(&quiet_user).await == gone).then_some(())
    })
    .await;
    assert_eq!(quiet.expect_close(T).await, Some(1008));

    let (mut live, frames) = reader.await.unwrap();
    assert_eq!(live.closed, None, "the reading client was closed");
    assert_eq!(frames, 1, "only hello");
    assert_eq!(app.presence(&live_user).await, connected);
    live.send(&json!({"type": "ping"})).await;
    live.next_of("pong", T).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_node_closes_sessions_with_1012() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut a = app.ws(&u, None).await;
    let mut b = app.ws(&new_user(), None).await;
    hello(&mut a).await;
    hello(&mut b).await;
    app.stop().await;
    assert_eq!(a.expect_close(T).await, Some(1012));
    assert_eq!(b.expect_close(T).await, Some(1012));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_events_reach_subscribers_the_token_allows_until_they_unsubscribe() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut c = WsClient::connect(&app.ws_url(&token_with_topics(&u, &["product:*"]), None))
        .await
        .unwrap();
    hello(&mut c).await;

    c.send(&json!({"type": "subscribe", "topics": ["product:1"], "ref": "s1"}))
        .await;
    assert_eq!(c.next_of("ack", T).await["ref"], "s1");
    let id = app.publish_topic("product:1", json!({"stock": 3})).await;
    assert_eq!(
        c.next_of("topic.event", T).await,
        json!({"type": "topic.event", "topic": "product:1", "id": id, "data": {"stock": 3}})
    );

    c.send(&json!({"type": "subscribe", "topics": ["group:7"], "ref": "s2"}))
        .await;
    let e = c.next_of("error", T).await;
    assert_eq!(
        (&e["ref"], &e["error"]["code"]),
        (&json!("s2"), &json!("forbidden"))
    );

    c.send(&json!({"type": "unsubscribe", "topics": ["product:1"], "ref": "u1"}))
        .await;
    assert_eq!(c.next_of("ack", T).await["ref"], "u1");
    c.send(&json!({"type": "subscribe", "topics": ["product:2"], "ref": "s3"}))
        .await;
    assert_eq!(c.next_of("ack", T).await["ref"], "s3");
    // Events go out in order: had product:1 still been delivered, it would come first.
    app.publish_topic("product:1", json!({"stock": 2})).await;
    let id = app.publish_topic("product:2", json!({"stock": 9})).await;
    assert_eq!(
        c.next_of("topic.event", T).await,
        json!({"type": "topic.event", "topic": "product:2", "id": id, "data": {"stock": 9}})
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_allowed_origins_set_a_handshake_from_another_origin_is_refused_with_403() {
    let db = TestDb::new().await;
    let app = spawn_app(
        &db,
        Opts {
            allowed_origins: Some(vec!["https://app.example".into()]),
            ..Default::default()
        },
    )
    .await;
    let u = new_user();
    let url = app.ws_url(&token(&u), None);
    let r = ws_connect_with(&url, &[("Origin", "https://evil.example")]).await;
    assert_eq!(refused_status(r), 403);
    let mut c = ws_connect_with(&url, &[("Origin", "https://app.example")])
        .await
        .expect("allowed origin accepted");
    assert_eq!(hello(&mut c).await["user"], json!(u));
    app.stop().await;
}

type RawWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Reads event frames (pausing `pause` after each) until one has seq `last`, or the socket
/// closes: the seqs read and the close code, if any.
async fn read_until_seq(mut ws: RawWs, last: i64, pause: Duration) -> (Vec<i64>, Option<u16>) {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seqs = vec![];
    while seqs.last() != Some(&last) {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                seqs.push(seq(&v));
                tokio::time::sleep(pause).await;
            }
            Ok(Some(Ok(WsMessage::Close(c)))) => {
                return (seqs, Some(c.map(|c| u16::from(c.code)).unwrap_or(1005)))
            }
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "the socket ended without a close after {} events: {other:?}",
                seqs.len()
            ),
        }
    }
    (seqs, None)
}

/// Reads every frame until the close: the seqs read and the close code.
async fn read_until_close(ws: RawWs, pause: Duration) -> (Vec<i64>, Option<u16>) {
    read_until_seq(ws, i64::MAX, pause).await
}

/// Reads of the event log (scans of `user_event`'s partitions: the partitioned parent has no
/// statistics of its own) PostgreSQL has counted for this database.
async fn event_log_scans(db_url: &str) -> i64 {
    scalar_i64(
        db_url,
        "SELECT (coalesce(sum(seq_scan), 0) + coalesce(sum(idx_scan), 0))::bigint AS v \
         FROM pg_stat_user_tables WHERE relid IN \
           (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'user_event'::regclass)",
    )
    .await
}

/// A tab that stopped reading with many SMALL events queued is behind because its frame queue
/// is at its limit, not its byte budget. The actor must not read the event log for it while
/// the queue has no room: nothing it reads can be queued. (Before, it read a page of 200 events
/// every 50 ms for the whole 10 s before the 4008: ~200 useless queries per stalled tab.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tab_full_of_small_events_costs_no_event_log_reads_until_it_drains() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let (stalled, _) = small_buffer_ws(&app, &u).await;
    // 10,000 events of about 800 bytes: far more than the socket buffers hold (up to 4 MB
    // here), and the 448 the queue takes before its frame limit are under half the byte budget.
    let content = "x".repeat(500);
    for b in 0..10 {
        app.send_batch(&u, 1000, &format!("b{b} "), &content).await;
    }
    eventually(T, "the outbox published", || async {
        (count_rows(&app.db_url, "outbox").await == 0).then_some(())
    })
    .await;
    // Let the queue fill and the session fall behind, then count log reads for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = event_log_scans(&app.db_url).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let reads = event_log_scans(&app.db_url).await - before;
    assert!(
        reads < 5,
        "{reads} event log reads in 4 s for a tab whose queue had no room"
    );
    // It was behind all along: cut off after BEHIND_LIMIT like any tab that does not read.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (_, code) = read_until_close(stalled, Duration::ZERO).await;
    assert_eq!(code, Some(4008));
    app.stop().await;
}

/// The user's inbox epoch as PostgreSQL has it (0: no inbox).
pub async fn epoch_of(db_url: &str, user: &str) -> i64 {
    scalar_i64(
        db_url,
        &format!("SELECT coalesce((SELECT epoch FROM user_inbox_state WHERE user_id = '{user}'), 0) AS v"),
    )
    .await
}
