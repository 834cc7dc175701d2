//! `GET /sse` (contract §10): the same frames as the WebSocket as Server-Sent Events, opened with
//! a short ticket (never a JWT in the URL) or a bearer header, resumed by `Last-Event-ID` on any
//! node, topics from the URL, the same per-user cap, liveness and token expiry.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// Deadline for anything that should happen "now" (never a measure of speed).
const T: Duration = Duration::from_secs(15);

fn public(patterns: &[&str]) -> impl FnOnce(&mut notifyd::config::Settings) {
    let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    move |s| s.public_topics = patterns
}

async fn status_of(url: &str, headers: &[(&str, String)]) -> (u16, Value) {
    match SseClient::open(url, headers).await {
        Ok(_) => (200, Value::Null),
        Err(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_opens_a_stream_of_the_websockets_frames_each_user_frame_with_its_seq_as_id() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    app.send(&u, "before").await;
    let ticket = app.ticket(&u).await;
    let mut s = SseClient::open(&app.sse_url(&format!("ticket={ticket}")), &[])
        .await
        .unwrap_or_else(|r| panic!("{}", r.status()));
    assert_eq!(s.headers["content-type"], "text/event-stream");
    assert_eq!(s.headers["x-accel-buffering"], "no");
    assert_eq!(s.headers["cache-control"], "no-cache");
    let hello = s.next(T).await.expect("hello");
    assert_eq!(hello.event.as_deref(), Some("hello"), "hello comes first");
    assert_eq!(hello.seq_id(), Some(1));
    assert_eq!(hello.json()["unread"], 1);
    assert!(
        s.retry.is_some(),
        "the stream sets EventSource's reconnect delay"
    );

    let created = app.send(&u, "live").await;
    let ev = s.expect("message.created", T).await;
    assert_eq!(ev.seq_id(), Some(2));
    assert_eq!(ev.json()["message"]["id"], created["id"]);
    assert_eq!(ev.json()["unread"], 2);
    // Commands go over REST; their events come back on the stream.
    let r = app
        .user_post(
            &u,
            "/api/v1/me/messages/read",
            json!({"ids": [created["id"]]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let read = s.expect("message.read", T).await;
    assert_eq!(read.seq_id(), Some(3));
    assert_eq!(read.json()["unread"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_jwt_never_opens_a_stream_from_the_url_and_a_ticket_is_never_a_jwt() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let jwt = token(&u);
    let valid_ticket = app.ticket(&u).await;
    for q in [
        format!("token={jwt}"),
        format!("access_token={jwt}"),
        // Beside a valid ticket, under a name of the client's own: refused all the same.
        format!("ticket={valid_ticket}&jwt={jwt}"),
        format!("ticket={jwt}"),
        "ticket=".into(),
        String::new(),
    ] {
        let (status, body) = status_of(&app.sse_url(&q), &[]).await;
        assert_eq!(status, 401, "{q}");
        assert_eq!(body["error"]["code"], "unauthorized", "{q}");
    }
    // A ticket opens the stream but is no user token for the REST API.
    let ticket = app.ticket(&u).await;
    let r = app
        .http
        .get(format!("{}/api/v1/me/messages", app.base))
        .bearer_auth(&ticket)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The bearer header works (clients that can set headers need no ticket).
    let mut s = SseClient::open(
        &app.sse_url(""),
        &[("Authorization", format!("Bearer {jwt}"))],
    )
    .await
    .unwrap_or_else(|r| panic!("{}", r.status()));
    assert_eq!(s.expect("hello", T).await.json()["user"], u.as_str());
    // Another deployment's ticket, or one minted from an expired token, is refused.
    let other = Token::user(&u)
        .secret("another-secret-0123456789abcdef-x")
        .sign();
    let r = app
        .http
        .post(format!("{}/api/v1/me/tickets", app.base))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_on_any_node_with_exactly_the_missed_events() {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let a = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let b = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let u = new_user();
    let mut s = a.sse(&u, "").await;
    a.send(&u, "one").await;
    let last = s.expect("message.created", T).await.seq_id().unwrap();
    drop(s);
    for i in 0..3 {
        a.send(&u, &format!("missed {i}")).await;
    }
    // What a browser's EventSource sends when it reconnects, to whichever node.
    let ticket = b.ticket(&u).await;
    let mut s = SseClient::open(
        &b.sse_url(&format!("ticket={ticket}")),
        &[("Last-Event-ID", last.to_string())],
    )
    .await
    .unwrap_or_else(|r| panic!("{}", r.status()));
    let hello = s.expect("hello", T).await;
    // Until the sync is applied, the stream's last id is where the client resumed from.
    assert_eq!(hello.seq_id(), Some(last));
    assert_eq!(hello.json()["seq"], last + 3);
    let sync = s.expect("sync", T).await;
    let seqs: Vec<i64> = sync.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![last + 1, last + 2, last + 3]);
    assert_eq!(sync.seq_id(), Some(last + 3));
    // `?since=` does the same for clients that build the URL themselves.
    let mut s2 = b.sse(&u, &format!("since={}", last + 2)).await;
    let sync = s2.expect("sync", T).await;
    assert_eq!(sync.json()["events"].as_array().unwrap().len(), 1);
    for (q, h) in [("since=x", None), ("", Some("-1"))] {
        let headers: Vec<(&str, String)> = h
            .map(|h| ("Last-Event-ID", h.to_string()))
            .into_iter()
            .collect();
        let (status, body) = status_of(&b.sse_url(&format!("ticket={ticket}&{q}")), &headers).await;
        assert_eq!(status, 422, "{q} {h:?}");
        assert_eq!(body["error"]["code"], "validation_failed");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_in_the_url_are_followed_from_the_start_and_only_those_allowed() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), public(&["news:*"])).await;
    let u = new_user();
    let jwt = Token::user(&u).topics(&["product:*"]).sign();
    let ticket = app.ticket_for(&jwt).await;
    app.publish_topic_body("product:1", json!({"data": {"stock": 3}, "retain": true}))
        .await;
    let mut s = SseClient::open(
        &app.sse_url(&format!("ticket={ticket}&topics=product:1,news:1")),
        &[],
    )
    .await
    .unwrap_or_else(|r| panic!("{}", r.status()));
    s.expect("hello", T).await;
    let retained = s.expect("topic.event", T).await;
    assert_eq!(retained.json()["data"]["stock"], 3);
    assert_eq!(
        retained.id, None,
        "topic events carry no id: they are not in the user's seq"
    );
    app.publish_topic("news:1", json!({"headline": "x"})).await;
    // (The retained event may also come live, relayed after the stream subscribed.)
    let live = loop {
        let e = s.expect("topic.event", T).await;
        if e.json()["topic"] != "product:1" {
            break e;
        }
    };
    assert_eq!(live.json()["topic"], "news:1");
    assert!(
        !s.events.iter().any(|e| e.event.as_deref() == Some("ack")),
        "no command, no ack"
    );

    // Not in the token and not public: 403. A bad name: 422.
    let (status, _) = status_of(
        &app.sse_url(&format!("ticket={ticket}&topics=group:1")),
        &[],
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = status_of(
        &app.sse_url(&format!("ticket={ticket}&topics=product:%20x")),
        &[],
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].clone()),
        (422, json!("topics"))
    );

    // Anonymous: public topics only, and something to follow.
    let mut anon = SseClient::open(&app.sse_url("topics=news:2"), &[])
        .await
        .unwrap_or_else(|r| panic!("{}", r.status()));
    let hello = anon.expect("hello", T).await;
    assert_eq!(
        (hello.id.clone(), hello.json()["user"].clone()),
        (None, Value::Null)
    );
    app.publish_topic("news:2", json!({"n": 1})).await;
    assert_eq!(anon.expect("topic.event", T).await.json()["data"]["n"], 1);
    assert_eq!(
        status_of(&app.sse_url("topics=product:1"), &[]).await.0,
        403
    );
    assert_eq!(status_of(&app.sse_url(""), &[]).await.0, 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_and_websockets_share_the_users_cap() {
    let db = TestDb::new().await;
    let opts = Opts {
        max_sockets_per_user: Some(2),
        ..Default::default()
    };
    let app = spawn_app(&db, opts).await;
    let u = new_user();
    let mut ws = app.ws(&u, None).await;
    ws.expect("hello", T).await;
    let _s = app.sse(&u, "").await;
    let ticket = app.ticket(&u).await;
    let (status, body) = status_of(&app.sse_url(&format!("ticket={ticket}")), &[]).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (429, json!("too_many_connections"))
    );
    assert_eq!(
        app.presence(&u).await,
        json!({"online": true, "connections": 2})
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_ends_at_the_jwts_exp_with_a_token_expired_error_and_its_ticket_with_it() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let jwt = Token::user(&u).ttl(3).sign();
    let ticket = app.ticket_for(&jwt).await;
    let url = app.sse_url(&format!("ticket={ticket}"));
    let mut s = SseClient::open(&url, &[])
        .await
        .unwrap_or_else(|r| panic!("{}", r.status()));
    s.expect("hello", T).await;
    let err = s.expect("error", T).await;
    assert_eq!(err.json()["error"]["code"], "token_expired");
    assert!(s.until_end(T).await, "the stream ends after the error");
    // EventSource's own reconnect, with the same URL: the ticket expired with the token.
    assert_eq!(status_of(&url, &[]).await.0, 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_gets_a_comment_every_heartbeat_and_head_opens_nothing() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::fast_heartbeat()).await;
    let u = new_user();
    let mut s = app.sse(&u, "").await;
    // Nothing happens to the user: only the heartbeat's comments come (1 s apart here).
    let deadline = tokio::time::Instant::now() + T;
    while s.comments < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no heartbeat comments"
        );
        assert!(s.next(Duration::from_millis(200)).await.is_none());
        assert!(!s.ended);
    }
    // HEAD: the checks and the stream's headers, no session.
    let ticket = app.ticket(&u).await;
    let r = app
        .http
        .head(app.sse_url(&format!("ticket={ticket}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(app.presence(&u).await["connections"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_goes_offline() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::fast_heartbeat()).await;
    let u = new_user();
    let ticket = app.ticket(&u).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut c = sock
        .connect(([127, 0, 0, 1], app.port).into())
        .await
        .unwrap();
    let client_port = c.local_addr().unwrap().port();
    c.write_all(format!("GET /sse?ticket={ticket} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 512];
    let n = c.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    eventually(T, "online", || async {
        (app.presence(&u).await["online"] == true).then_some(())
    })
    .await;
    // From here on the client reads nothing while its inbox fills (7 MB of events: more than
    // the kernel's buffers and the session's queue hold).
    let content = "x".repeat(8000);
    let data = json!({ "pad": "z".repeat(16_000) });
    for b in 0..6 {
        let messages: Vec<Value> = (0..50)
            .map(|i| json!({"to_user": u, "title": format!("b{b} {i}"), "content": content, "data": data}))
            .collect();
        assert_eq!(
            app.post_messages(&json!({ "messages": messages }))
                .await
                .status(),
            201
        );
    }
    eventually(T, "the stalled stream shows as offline", || async {
        (app.presence(&u).await == json!({"online": false, "connections": 0})).then_some(())
    })
    .await;
    eventually(T, "the server dropped the TCP connection", || async {
        (!server_side_established(app.port, client_port)).then_some(())
    })
    .await;
    drop(c);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_leaves_within_seconds_not_a_heartbeat() {
    let db = TestDb::new().await;
    // The default 25 s heartbeat: the session must not wait for its next ping to notice (a
    // browser that reconnects would otherwise hold two sessions, and show online, meanwhile).
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let s = app.sse(&u, "").await;
    // Presence is mirrored into Redis by a task of its own after the join, so it may trail the
    // `hello` the client holds by a moment (CI once read 0 here straight after `hello`).
    eventually(T, "online after the join", || async {
        (app.presence(&u).await["connections"] == 1).then_some(())
    })
    .await;
    drop(s);
    eventually(
        Duration::from_secs(8),
        "offline after the client left",
        || async { (app.presence(&u).await["connections"] == 0).then_some(()) },
    )
    .await;
    app.stop().await;
}
