//! The gateway against abusive, buggy and half-dead clients (contract §7): frame size checked at
//! the frame header, liveness that a full socket cannot block, per-client limits (sockets per
//! user, commands in flight, `ref` size, topics per user, outbound bytes), token lifetime, and
//! the smaller ordering and bookkeeping rules (hello first, presence, database restore).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::helpers::*;

/// Deadline for anything that should happen "now" (never a measure of speed).
const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_with_full_buffers_is_dropped_and_goes_offline() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::fast_heartbeat()).await;
    let u = new_user();
    let (ws, client_port) = small_buffer_ws(&app, &u).await;
    assert!(server_side_established(app.port, client_port));
    // From here on the client reads nothing; the server keeps sending: 300 frames of about
    // 25 KB (7 MB, more than the kernel's socket buffers hold, fewer frames than the queue).
    send_big(&app, &u, 6).await;
    eventually(T, "the silent client shows as offline", || async {
        (app.presence(&u).await == json!({"online": false, "connections": 0})).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "the server dropped the TCP connection",
        || async { (!server_side_established(app.port, client_port)).then_some(()) },
    )
    .await;
    drop(ws);
    app.stop().await;
}

/// POSTs `batches` × 50 messages of about 25 KB each to `user`.
async fn send_big(app: &TestApp, user: &str, batches: usize) {
    let content = "x".repeat(8000);
    let data = json!({ "pad": "z".repeat(16_000) });
    for b in 0..batches {
        let messages: Vec<Value> = (0..50)
            .map(|i| json!({"to_user": user, "title": format!("b{b} {i}"), "content": content, "data": data}))
            .collect();
        let r = app.post_messages(&json!({ "messages": messages })).await;
        assert_eq!(r.status(), 201);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_queues_are_bounded_in_bytes_not_only_in_frames() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let (mut ws, _) = small_buffer_ws(&app, &u).await;
    // 400 frames (fewer than the 512-frame queue) of about 25 KB: 10 MB, far more than the
    // socket buffers hold. The client reads nothing meanwhile: the server queues events up to
    // the 1 MiB budget and no more (the rest stays in the event log), and a session that stays
    // behind for BEHIND_LIMIT (10 s) has fallen too far behind: the node lets it go (the user
    // leaves presence; the default heartbeat, 25 s, is too slow to be what closed it).
    send_big(&app, &u, 8).await;
    eventually(
        Duration::from_secs(60),
        "the session that stayed behind was let go",
        || async {
            (app.presence(&u).await == json!({"online": false, "connections": 0})).then_some(())
        },
    )
    .await;
    // Then it reads what was sent: it must end in a 4008 close, before all 400 arrived.
    let mut created = 0;
    let code = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                tokio_tungstenite::tungstenite::Message::Close(c) => {
                    return c.map(|c| u16::from(c.code))
                }
                tokio_tungstenite::tungstenite::Message::Text(t)
                    if t.contains("message.created") =>
                {
                    created += 1
                }
                _ => {}
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    assert_eq!(
        code,
        Some(4008),
        "a session holding megabytes it could not send was not closed as a slow consumer ({created} frames read)"
    );
    assert!(created < 400);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_per_user_are_capped_with_429_and_freed_when_one_closes() {
    let db = TestDb::new().await;
    let app = spawn_app(
        &db,
        Opts {
            max_sockets_per_user: Some(3),
            ..Default::default()
        },
    )
    .await;
    let u = new_user();
    let mut open = vec![];
    for _ in 0..3 {
        let mut c = app.ws(&u, None).await;
        c.next_of("hello", T).await;
        open.push(c);
    }
    let refused = WsClient::connect(&app.ws_url(&token(&u), None)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("body");
            assert_eq!(body["error"]["code"], "too_many_connections");
        }
        Ok(_) => panic!("a 4th socket for one user was accepted"),
        Err(e) => panic!("refused without an HTTP answer: {e}"),
    }
    // Another user is not affected.
    app.ws(&new_user(), None).await.next_of("hello", T).await;
    // Closing one frees its slot.
    open.pop().expect("one").close().await;
    eventually(T, "a freed slot is usable again", || async {
        let mut c = WsClient::connect(&app.ws_url(&token(&u), None))
            .await
            .ok()?;
        c.next(T).await.filter(|f| f["type"] == "hello").map(|_| ())
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_flood_gets_busy_and_never_starves_other_clients_of_the_database() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (u, other) = (new_user(), new_user());
    app.send(&u, "one").await;
    app.send(&other, "two").await;
    let mut c = app.ws(&u, None).await;
    c.next_of("hello", T).await;
    // Hold the user's counter row so every read_all of this user blocks in the database.
    let holder = hold_counters(&db, &u).await;
    for i in 0..40 {
        c.send(&json!({"type": "read_all", "ref": i})).await;
    }
    // Commands that cannot run now are answered `busy` at once.
    let mut busy = 0;
    while busy < 30 {
        let f = c.next_of("error", T).await;
        assert_eq!(f["error"]["code"], "busy", "{f}");
        busy += 1;
    }
    // Meanwhile another user's REST calls get a database connection.
    let r = tokio::time::timeout(T, app.user_get(&other, "/api/v1/me/unread-count"))
        .await
        .expect("another user's request waited for the flood");
    assert_eq!(r.status(), 200);
    release(holder).await;
    // Every frame got exactly one answer: acks for the ones that ran, busy for the rest.
    let mut answers: Vec<Value> = c
        .frames
        .iter()
        .filter(|f| f["type"] == "ack" || f["type"] == "error")
        .cloned()
        .collect();
    while answers.len() < 40 {
        match c.next(T).await {
            Some(f) if f["type"] == "ack" || f["type"] == "error" => answers.push(f),
            Some(_) => {}
            None => panic!("only {} of 40 commands were answered", answers.len()),
        }
    }
    let mut refs: Vec<i64> = answers
        .iter()
        .map(|f| f["ref"].as_i64().expect("ref"))
        .collect();
    refs.sort();
    assert_eq!(refs, (0..40).collect::<Vec<_>>());
    assert!(answers.iter().any(|f| f["type"] == "ack"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_ref_is_refused_not_echoed() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut c = app.ws(&new_user(), None).await;
    c.next_of("hello", T).await;
    c.send(&json!({"type": "ping", "ref": "r".repeat(10_000)}))
        .await;
    let e = c.next(T).await.expect("an answer");
    assert_eq!(e["type"], "error", "{}", &e.to_string()[..100]);
    assert_eq!(e["error"]["code"], "bad_frame");
    assert_eq!(e["ref"], Value::Null);
    c.send(&json!({"type": "ping", "ref": "ok"})).await;
    assert_eq!(c.next_of("pong", T).await["ref"], "ok");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_capped_per_user_across_sessions() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let url = app.ws_url(&token_with_topics(&u, &["t:*"]), None);
    let mut sessions = vec![];
    for s in 0..3 {
        let mut c = WsClient::connect(&url).await.expect("connect");
        c.next_of("hello", T).await;
        if s < 2 {
            for f in 0..5 {
                let topics: Vec<String> = (0..100).map(|i| format!("t:{s}-{f}-{i}")).collect();
                c.send(&json!({"type": "subscribe", "topics": topics, "ref": f}))
                    .await;
                assert_eq!(c.next_of("ack", T).await["ref"], f);
            }
        }
        sessions.push(c);
    }
    // 1,000 distinct topics are held by this user: one more is refused, an old one is not.
    let c = &mut sessions[2];
    c.send(&json!({"type": "subscribe", "topics": ["t:one-more"], "ref": "x"}))
        .await;
    let e = c.next(T).await.expect("an answer");
    assert_eq!(
        (&e["type"], &e["error"]["code"]),
        (&json!("error"), &json!("too_many_topics")),
        "{e}"
    );
    c.send(&json!({"type": "subscribe", "topics": ["t:0-0-0"], "ref": "y"}))
        .await;
    assert_eq!(c.next_of("ack", T).await["ref"], "y");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_is_closed_with_4001_when_its_token_expires() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let short = token_signed(JWT_SECRET, &u, 2);
    let mut c = WsClient::connect(&app.ws_url(&short, None))
        .await
        .expect("connect");
    c.next_of("hello", T).await;
    assert_eq!(c.expect_close(T).await, Some(4001));
    let reason = c.closed.as_ref().map(|c| c.1.clone()).unwrap_or_default();
    assert!(reason.contains("token expired"), "{reason}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_token_sent_in_band_keeps_the_socket_open_past_the_old_exp() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut c = WsClient::connect(&app.ws_url(&token_signed(JWT_SECRET, &u, 2), None))
        .await
        .expect("connect");
    c.next_of("hello", T).await;
    // Someone else's token, or a bad one, is refused and changes nothing.
    c.send(&json!({"type": "auth", "token": token(&new_user()), "ref": "a0"}))
        .await;
    let e = c.next_of("error", T).await;
    assert_eq!(
        (&e["ref"], &e["error"]["code"]),
        (&json!("a0"), &json!("unauthorized"))
    );
    c.send(&json!({"type": "auth", "token": "garbage", "ref": "a1"}))
        .await;
    assert_eq!(c.next_of("error", T).await["ref"], "a1");
    let fresh = token_signed(JWT_SECRET, &u, 3600);
    c.send(&json!({"type": "auth", "token": fresh, "ref": "a2"}))
        .await;
    let ack = c.next_of("ack", T).await;
    assert_eq!(ack["ref"], "a2");
    assert!(ack["exp"].as_i64().expect("exp") > chrono::Utc::now().timestamp() + 3000);
    // A sleep to show that something does NOT happen: the old token's exp (2 s) passes, and the
    // socket is not closed for it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    app.send(&u, "after the old exp").await;
    assert_eq!(
        c.next_of("message.created", T).await["message"]["title"],
        "after the old exp"
    );
    assert_eq!(c.closed, None);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_is_always_the_first_frame_even_when_the_client_speaks_first() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    for _ in 0..20 {
        let u = new_user();
        let mut c = WsClient::connect(&app.ws_url(&token(&u), None))
            .await
            .expect("connect");
        c.send(&json!({"type": "ping", "ref": "early"})).await;
        let first = c.next(T).await.expect("a frame");
        assert_eq!(first["type"], "hello", "first frame: {first}");
        assert_eq!(c.next_of("pong", T).await["ref"], "early");
        c.close().await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_racing_the_old_actors_exit_stays_online() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut c = app.ws(&u, None).await;
    c.next_of("hello", T).await;
    for _ in 0..50 {
        // Drop the only socket and open a new one at the same time: the old actor exits as the
        // new session joins.
        let (mut next, ()) = tokio::join!(app.ws(&u, None), c.close());
        next.next_of("hello", T).await;
        c = next;
    }
    // A sleep to show that something does NOT happen: the old actors' exits, each a few
    // milliseconds after its socket closed, do not take the user offline under the live socket.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.presence(&u).await,
        json!({"online": true, "connections": 1})
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_the_log_cannot_repair_are_closed_and_leave_presence() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut c = app.ws(&u, None).await;
    c.next_of("hello", T).await;
    app.send(&u, "one").await;
    c.next_of("message.created", T).await;
    // An event far ahead whose predecessors are not in the log (pruned): the gateway cannot
    // repair the hole, so it closes the session for a resume, and the user is offline here.
    redis_publish(
        &app.user_channel(&u),
        &json!({"type": "message.read_all", "seq": 50, "unread": 0, "unseen": 0}).to_string(),
    )
    .await;
    assert_eq!(c.expect_close(T).await, Some(4008));
    eventually(T, "presence is updated", || async {
        (app.presence(&u).await == json!({"online": false, "connections": 0})).then_some(())
    })
    .await;
    app.stop().await;
}

/// A restored backup: the user's inbox as it was at seq 2, while the sessions saw 5.
async fn restore_to_seq_2(db: &TestDb, u: &str) {
    let mut conn = db.conn().await;
    for sql in [
        format!("DELETE FROM t_message_real_time WHERE to_user = '{u}' AND seq > 2"),
        format!("DELETE FROM user_event WHERE user_id = '{u}' AND seq > 2"),
        format!(
            "UPDATE user_inbox_state SET seq = 2, unread = 2, unseen = 2 WHERE user_id = '{u}'"
        ),
    ] {
        diesel_async::RunQueryDsl::execute(diesel::sql_query(sql), &mut conn)
            .await
            .expect("restore");
    }
}

async fn five_messages_seen(app: &TestApp, u: &str) -> WsClient {
    let mut c = app.ws(u, None).await;
    c.next_of("hello", T).await;
    for i in 0..5 {
        app.send(u, &format!("m{i}")).await;
    }
    for _ in 0..5 {
        c.next_of("message.created", T).await;
    }
    c
}

/// After a restore the operator runs `notifyd reset-epochs` (docs/operations.md): every inbox
/// gets a new epoch, and live sessions are reset at their user's next event, whose seq (3)
/// the sessions had already seen in the lost future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_database_restore_and_reset_epochs_live_sessions_get_a_reset_not_silence() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut c = five_messages_seen(&app, &u).await;
    restore_to_seq_2(&db, &u).await;
    assert!(
        notifyd::db::reset_epochs(&db.url)
            .await
            .expect("reset-epochs")
            >= 1
    );
    app.send(&u, "after the restore").await;
    let f = c.next(T).await.expect("a frame after the restore");
    assert_eq!(
        (&f["type"], &f["reset"], &f["seq"]),
        (&json!("sync"), &json!(true), &json!(3)),
        "{f}"
    );
    assert_eq!(f["epoch"], crate::gateway::epoch_of(&db.url, &u).await);
    app.stop().await;
}

/// Without `reset-epochs` the audit still finds the seq that went back and resets the
/// sessions within `NOTIFYD_AUDIT_INTERVAL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restore_without_reset_epochs_the_audit_resets_live_sessions() {
    let db = TestDb::new().await;
    let app = spawn_app(
        &db,
        Opts {
            audit_interval: Some(Duration::from_secs(1)),
            ..Opts::default()
        },
    )
    .await;
    let u = new_user();
    let mut c = five_messages_seen(&app, &u).await;
    restore_to_seq_2(&db, &u).await;
    let f = c.next(T).await.expect("a frame after the restore");
    assert_eq!(
        (&f["type"], &f["reset"], &f["seq"]),
        (&json!("sync"), &json!(true), &json!(2)),
        "{f}"
    );
    app.stop().await;
}

/// Found by an attacker's review: liveness trusted any pong, and the server's pings were
/// empty, so a client that never reads stayed online by sending pongs blindly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsolicited_pongs_do_not_count_as_reading() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::fast_heartbeat()).await;
    let u = new_user();
    let mut s = raw_ws(&app, &u).await;
    let client_port = s.local_addr().expect("local addr").port();
    // Pongs every 300 ms, without reading a byte, until the node lets the client go (2.5 s of
    // liveness at this heartbeat); had the pongs counted, the client would stay online for as
    // long as it sends them, past the generous deadline.
    let offline = json!({"online": false, "connections": 0});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while app.presence(&u).await != offline {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a client sending only pongs stayed online for 60 s"
        );
        if s.write_all(&client_frame(0xA, b"")).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eventually(T, "the client goes offline", || async {
        (app.presence(&u).await == offline).then_some(())
    })
    .await;
    eventually(T, "the server dropped the TCP connection", || async {
        (!server_side_established(app.port, client_port)).then_some(())
    })
    .await;
    app.stop().await;
}

/// Found by an attacker's review: renewing the token with narrower `topics` kept the topics
/// the old token allowed streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_token_that_no_longer_allows_a_topic_unsubscribes_it() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut c = WsClient::connect(&app.ws_url(&token_with_topics(&u, &["secret:*"]), None))
        .await
        .expect("connect");
    c.next_of("hello", T).await;
    c.send(&json!({"type": "subscribe", "topics": ["secret:1"], "ref": "s"}))
        .await;
    assert_eq!(c.next_of("ack", T).await["ref"], "s");
    c.send(&json!({"type": "auth", "token": token(&u), "ref": "a"}))
        .await;
    assert_eq!(c.next_of("ack", T).await["ref"], "a");
    let e = c.next_of("error", T).await;
    assert_eq!(e["error"]["code"], "forbidden", "{e}");
    redis_publish(
        &app.topic_channel("secret:1"),
        &json!({"type": "topic.event", "topic": "secret:1", "data": {"x": 1}}).to_string(),
    )
    .await;
    c.send(&json!({"type": "ping", "ref": "after"})).await;
    let next = c.next(T).await.expect("a frame");
    assert_eq!(
        (&next["type"], &next["ref"]),
        (&json!("pong"), &json!("after")),
        "a topic the renewed token does not allow was delivered: {next}"
    );
    app.stop().await;
}

/// Found by an attacker's review: one user's sockets could hold every node-wide database
/// command permit (their commands queue on that user's row lock), stalling other users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_command_flood_does_not_hold_up_another_users_commands() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (u, victim) = (new_user(), new_user());
    app.send(&u, "one").await;
    app.send(&victim, "two").await;
    // The flooding user's commands all block on its counter row, held here.
    let holder = hold_counters(&db, &u).await;
    let mut flood = vec![];
    for _ in 0..8 {
        let mut c = app.ws(&u, None).await;
        c.next_of("hello", T).await;
        for i in 0..4 {
            c.send(&json!({"type": "read_all", "ref": i})).await;
        }
        flood.push(c);
    }
    // The flood is under way: one of its commands waits on the held row in the database.
    eventually(T, "a flooding command waits on the held row", || async {
        (scalar_i64(
            &db.url,
            "SELECT count(*) AS v FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
            > 0)
        .then_some(())
    })
    .await;
    let mut v = app.ws(&victim, None).await;
    v.next_of("hello", T).await;
    v.send(&json!({"type": "seen_all", "ref": "v"})).await;
    let answer = v.next(T).await.expect("an answer");
    assert_eq!(
        (&answer["type"], &answer["ref"]),
        (&json!("ack"), &json!("v")),
        "{answer}"
    );
    release(holder).await;
    app.stop().await;
}

/// Found by the chaos harness: the byte budget refused any single frame over 1 MiB, so a
/// resume whose `sync` was larger closed with 4008 every time and the client never caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_whose_sync_is_larger_than_the_byte_budget_is_delivered() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    // 100 messages of about 25 KB: 2.5 MB to resume, more than twice the 1 MiB budget.
    send_big(&app, &u, 2).await;
    let mut c = app.ws(&u, Some(0)).await;
    c.next_of("hello", T).await;
    let events = c.resumed_events(100, T).await;
    assert!(events
        .iter()
        .map(|e| e["seq"].as_i64())
        .eq((1..=100).map(Some)));
    assert_eq!(c.closed, None);
    app.stop().await;
}

/// Found by an attacker's review: the unlisten of a topic's last subscriber ran in a task, so a
/// quick resubscribe (or a page reload) could have its new route removed by the old unlisten:
/// the subscribe was acked and no event of that topic ever came again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_resubscribe_keeps_getting_the_topics_events() {
    let db = TestDb::new().await;
    // 81 subscribes and unsubscribes as fast as events go round: far past the per-session
    // limit (10 a second, burst 20), which is not what this test is about.
    let app = spawn_app_with(&db, Opts::default(), |s| {
        s.subscribe_rate = 10_000;
        s.subscribe_burst = 100;
    })
    .await;
    let u = new_user();
    let mut c = WsClient::connect(&app.ws_url(&token_with_topics(&u, &["product:*"]), None))
        .await
        .expect("connect");
    c.next_of("hello", T).await;
    c.send(&json!({"type": "subscribe", "topics": ["product:1"], "ref": "s"}))
        .await;
    assert_eq!(c.next_of("ack", T).await["ref"], "s");
    for i in 0..40 {
        c.send(&json!({"type": "unsubscribe", "topics": ["product:1"], "ref": "u"}))
            .await;
        c.send(&json!({"type": "subscribe", "topics": ["product:1"], "ref": "s"}))
            .await;
        assert_eq!(c.next_of("ack", T).await["ref"], "u");
        assert_eq!(c.next_of("ack", T).await["ref"], "s");
        app.publish_topic("product:1", json!({ "stock": i })).await;
        let f = c.next(T).await;
        assert_eq!(
            f.as_ref().map(|f| f["data"]["stock"].clone()),
            Some(json!(i)),
            "round {i}: the acked subscription got no event"
        );
    }
    app.stop().await;
}

/// Found by an attacker's review: refused `auth` frames were answered without limit (each one
/// an HMAC check); they now count as bad frames, so the 21st closes the socket with 1003.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_tokens_closes_the_socket_like_other_bad_frames() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut c = app.ws(&u, None).await;
    c.next_of("hello", T).await;
    let forged = token_signed("not-the-secret", &u, 3600);
    for i in 0..200 {
        c.send_raw(tokio_tungstenite::tungstenite::Message::text(
            json!({"type": "auth", "token": forged, "ref": i}).to_string(),
        ))
        .await;
    }
    assert_eq!(c.expect_close(T).await, Some(1003));
    let refused = c.frames.iter().filter(|f| f["type"] == "error").count();
    assert!(refused <= 21, "{refused} refused tokens answered");
    app.stop().await;
}
