//! Live topics (contract §8) over real sockets: event ids and dedupe, per-topic order, fan-out
//! straight from the node's router (no user actor), retained values (PostgreSQL and the node's
//! cache), anonymous viewers of public topics, and group publish from clients.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// Deadline for anything that should happen "now" (never a measure of speed).
const T: Duration = Duration::from_secs(15);
/// How long a test waits to be sure something does NOT arrive.
const QUIET: Duration = Duration::from_millis(800);

fn public(patterns: &[&str]) -> impl FnOnce(&mut notifyd::config::Settings) {
    let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    move |s| s.public_topics = patterns
}

async fn hello(c: &mut WsClient) -> Value {
    c.expect("hello", T).await
}

/// A session of `user` (token allowing `topics`) subscribed to `subscribe`, past its ack.
async fn subscriber(app: &TestApp, user: &str, topics: &[&str], subscribe: &[&str]) -> WsClient {
    let mut c = WsClient::connect(&app.ws_url(&token_with_topics(user, topics), None))
        .await
        .expect("connect");
    hello(&mut c).await;
    c.send(&json!({"type": "subscribe", "topics": subscribe, "ref": "s"}))
        .await;
    assert_eq!(c.next_of("ack", T).await["ref"], "s");
    c
}

async fn anonymous(app: &TestApp) -> WsClient {
    let mut c = WsClient::connect(&format!("{}/ws", app.ws_base))
        .await
        .expect("anonymous connect");
    let h = hello(&mut c).await;
    assert_eq!(h["user"], Value::Null, "{h}");
    c
}

/// Waits until the relay has published everything committed (it runs asynchronously), so a
/// later subscriber cannot also get those events live.
async fn published(app: &TestApp) {
    eventually(T, "the outbox published", || async {
        (count_rows(&app.db_url, "outbox").await == 0).then_some(())
    })
    .await;
}

/// Every frame that arrives within `window`.
async fn drain(c: &mut WsClient, window: Duration) -> Vec<Value> {
    let mut out = vec![];
    while let Some(f) = c.next(window).await {
        out.push(f);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_post_answers_the_event_id_that_the_frame_carries() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut c = subscriber(&app, &new_user(), &["product:*"], &["product:1"]).await;
    let id = app.publish_topic("product:1", json!({"stock": 3})).await;
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "id {id}");
    assert_eq!(
        c.next_of("topic.event", T).await,
        json!({"type": "topic.event", "topic": "product:1", "id": id, "data": {"stock": 3}})
    );
    let r = app
        .http
        .post(format!("{}/api/v1/topics/product:1/events", app.base))
        .bearer_auth(SERVICE_KEY)
        .json(&json!({"data": {}, "retain": "yes"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 422, "a non-boolean retain is refused");
    app.stop().await;
}

/// The relay is at-least-once: the same event published twice reaches a client once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_twice_reaches_a_client_once() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::no_relay()).await;
    let mut c = subscriber(&app, &new_user(), &["product:*"], &["product:1"]).await;
    let event = |id: &str| {
        json!({"type": "topic.event", "topic": "product:1", "id": id, "data": {"stock": 1}})
            .to_string()
    };
    let channel = app.topic_channel("product:1");
    redis_publish(&channel, &event("e1")).await;
    redis_publish(&channel, &event("e1")).await;
    redis_publish(&channel, &event("e2")).await;
    let got = drain(&mut c, QUIET).await;
    let ids: Vec<&Value> = got.iter().map(|f| &f["id"]).collect();
    assert_eq!(ids, vec!["e1", "e2"], "{got:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_rapid_events_of_a_topic_arrive_in_order() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut c = subscriber(&app, &new_user(), &["product:*"], &["product:9"]).await;
    let mut ids = vec![];
    for i in 0..200 {
        ids.push(app.publish_topic("product:9", json!({ "i": i })).await);
    }
    let mut got = vec![];
    while got.len() < 200 {
        let f = c.next_of("topic.event", T).await;
        got.push((f["data"]["i"].as_i64().expect("i"), f["id"].clone()));
    }
    let expected: Vec<(i64, Value)> = (0..200).zip(ids.into_iter().map(Value::from)).collect();
    assert_eq!(got, expected);
    app.stop().await;
}

/// The router pushes the one frame to every subscribed session on the node, users' and
/// anonymous ones alike: an anonymous session has no actor, so delivery cannot depend on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_event_reaches_fifty_users_sessions_and_an_actorless_anonymous_one() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), public(&["product:*"])).await;
    let mut sessions = vec![];
    for _ in 0..50 {
        sessions.push(subscriber(&app, &new_user(), &[], &["product:5"]).await);
    }
    let mut anon = anonymous(&app).await;
    anon.send(&json!({"type": "subscribe", "topics": ["product:5"], "ref": "a"}))
        .await;
    assert_eq!(anon.next_of("ack", T).await["ref"], "a");
    assert_eq!(app.stopper.state().topics.subscribers("product:5"), 51);
    let id = app.publish_topic("product:5", json!({"price": 10})).await;
    for c in sessions.iter_mut().chain(std::iter::once(&mut anon)) {
        let f = c.next_of("topic.event", T).await;
        assert_eq!((&f["id"], &f["data"]["price"]), (&json!(id), &json!(10)));
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_the_ack_then_the_retained_value_then_live_events() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let retained = app
        .publish_topic_body("product:1", json!({"data": {"stock": 7}, "retain": true}))
        .await;
    // Not retained: live only.
    app.publish_topic("product:1", json!({"stock": 6})).await;
    published(&app).await;
    let mut c =
        WsClient::connect(&app.ws_url(&token_with_topics(&new_user(), &["product:*"]), None))
            .await
            .expect("connect");
    hello(&mut c).await;
    c.send(&json!({"type": "subscribe", "topics": ["product:1", "product:2"], "ref": "s"}))
        .await;
    assert_eq!(c.next(T).await.expect("ack")["type"], "ack");
    assert_eq!(
        c.next(T).await.expect("retained"),
        json!({"type": "topic.event", "topic": "product:1", "id": retained, "data": {"stock": 7}, "retained": true})
    );
    let live = app.publish_topic("product:1", json!({"stock": 5})).await;
    let f = c.next(T).await.expect("live");
    assert_eq!((&f["id"], f.get("retained")), (&json!(live), None), "{f}");
    app.stop().await;
}

/// Node b learns a newer retained value from the live event (its cache), node a's subscriber
/// from PostgreSQL: both get the newest one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_retained_value_replaces_the_older_on_every_node() {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let a = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let b = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    a.publish_topic_body("product:3", json!({"data": {"stock": 1}, "retain": true}))
        .await;
    published(&a).await;
    let mut watcher = subscriber(&b, &new_user(), &["product:*"], &["product:3"]).await;
    assert_eq!(watcher.next_of("topic.event", T).await["data"]["stock"], 1);
    let newer = a
        .publish_topic_body("product:3", json!({"data": {"stock": 2}, "retain": true}))
        .await;
    let live = watcher.next_of("topic.event", T).await;
    assert_eq!(
        (&live["id"], live.get("retained")),
        (&json!(newer), None),
        "{live}"
    );
    for node in [&a, &b] {
        let mut c =
            WsClient::connect(&node.ws_url(&token_with_topics(&new_user(), &["product:*"]), None))
                .await
                .expect("connect");
        hello(&mut c).await;
        c.send(&json!({"type": "subscribe", "topics": ["product:3"], "ref": "s"}))
            .await;
        assert_eq!(c.next(T).await.expect("ack")["type"], "ack");
        let r = c.next(T).await.expect("retained");
        assert_eq!(
            (&r["id"], &r["retained"], &r["data"]["stock"]),
            (&json!(newer), &json!(true), &json!(2))
        );
    }
    a.stop().await;
    b.stop().await;
}

/// A subscriber that got a topic's retained value from PostgreSQL before the relay published it
/// (and the events before it) must not get that value again, nor an older event after it: what
/// it was sent is the topic as of that value, and its live events start after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_value_read_before_the_relay_published_it_is_not_sent_again_nor_anything_older()
{
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let a = spawn_app(
        &db,
        Opts {
            relay: false,
            ..Opts::in_cluster(&prefix)
        },
    )
    .await;
    // Committed, not yet published: nobody relays.
    a.publish_topic("product:9", json!({"stock": 4})).await;
    let retained = a
        .publish_topic_body("product:9", json!({"data": {"stock": 3}, "retain": true}))
        .await;
    let mut c = subscriber(&a, &new_user(), &["product:*"], &["product:9"]).await;
    let r = c.next_of("topic.event", T).await;
    assert_eq!(
        (&r["id"], &r["retained"]),
        (&json!(retained), &json!(true)),
        "{r}"
    );
    // Now a relay publishes both; then one newer event.
    let relay = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    published(&relay).await;
    let live = relay.publish_topic("product:9", json!({"stock": 2})).await;
    let got = drain(&mut c, QUIET * 2).await;
    let ids: Vec<&Value> = got.iter().map(|f| &f["id"]).collect();
    assert_eq!(
        ids,
        vec![&json!(live)],
        "only the event after the retained value: {got:?}"
    );
    a.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_retained_value_is_not_sent_and_is_pruned() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), |s| {
        s.housekeeping_interval = Duration::from_millis(300);
    })
    .await;
    app.publish_topic_body("product:4", json!({"data": {"stock": 1}, "retain": true}))
        .await;
    published(&app).await;
    let mut conn = db.conn().await;
    use diesel_async::RunQueryDsl;
    diesel::sql_query("UPDATE topic_retained SET expires_at = now() - interval '1 second'")
        .execute(&mut conn)
        .await
        .expect("expire");
    let mut c = subscriber(&app, &new_user(), &["product:*"], &["product:4"]).await;
    let after = drain(&mut c, QUIET).await;
    assert!(
        after.is_empty(),
        "an expired retained value was sent: {after:?}"
    );
    eventually(T, "expired retained rows pruned", || async {
        (count_rows(&app.db_url, "topic_retained").await == 0).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retained_value_survives_a_node_restart() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let id = app
        .publish_topic_body("product:8", json!({"data": {"stock": 4}, "retain": true}))
        .await;
    published(&app).await;
    app.stop().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut c =
        WsClient::connect(&app.ws_url(&token_with_topics(&new_user(), &["product:*"]), None))
            .await
            .expect("connect");
    hello(&mut c).await;
    c.send(&json!({"type": "subscribe", "topics": ["product:8"], "ref": "s"}))
        .await;
    assert_eq!(c.next(T).await.expect("ack")["type"], "ack");
    let r = c.next(T).await.expect("retained");
    assert_eq!((&r["id"], &r["retained"]), (&json!(id), &json!(true)));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_viewer_may_watch_public_topics_and_nothing_else() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), public(&["product:*"])).await;
    let mut c = WsClient::connect(&format!("{}/ws", app.ws_base))
        .await
        .expect("anonymous connect");
    let h = hello(&mut c).await;
    assert_eq!(h, json!({"type": "hello", "user": null, "heartbeat_s": 25}));

    c.send(&json!({"type": "subscribe", "topics": ["group:1"], "ref": "g"}))
        .await;
    let e = c.next_of("error", T).await;
    assert_eq!(
        (&e["ref"], &e["error"]["code"]),
        (&json!("g"), &json!("forbidden"))
    );
    for (frame, r) in [
        (json!({"type": "read_all", "ref": "r"}), "r"),
        (json!({"type": "read", "ids": [], "ref": "r2"}), "r2"),
        (json!({"type": "seen_all", "ref": "r3"}), "r3"),
        (
            json!({"type": "publish", "topic": "product:1", "data": {}, "ref": "p"}),
            "p",
        ),
    ] {
        c.send(&frame).await;
        let e = c.next_of("error", T).await;
        assert_eq!(
            (&e["ref"], &e["error"]["code"]),
            (&json!(r), &json!("unauthorized")),
            "{frame}"
        );
    }
    c.send(&json!({"type": "subscribe", "topics": ["product:1"], "ref": "s"}))
        .await;
    assert_eq!(c.next_of("ack", T).await["ref"], "s");
    let id = app.publish_topic("product:1", json!({"stock": 2})).await;
    assert_eq!(c.next_of("topic.event", T).await["id"], id);

    // A token holder may watch public topics its token does not name.
    let mut u = subscriber(&app, &new_user(), &[], &["product:1"]).await;
    let id = app.publish_topic("product:1", json!({"stock": 1})).await;
    assert_eq!(u.next_of("topic.event", T).await["id"], id);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_handshake_is_401_unless_public_topics_are_set_and_a_bad_token_always_is(
) {
    let db = TestDb::new().await;
    let closed = spawn_app(&db, Opts::default()).await;
    let r = WsClient::connect(&format!("{}/ws", closed.ws_base)).await;
    assert_eq!(refused_status(r), 401);
    closed.stop().await;

    let open = spawn_app_with(&db, Opts::default(), public(&["product:*"])).await;
    let r = WsClient::connect(&open.ws_url("not-a-token", None)).await;
    assert_eq!(
        refused_status(r),
        401,
        "an invalid token is never anonymous"
    );
    // Neither are other credentials that cannot be read (found by an attacker's review: they
    // were taken as no credentials at all, so the socket became an anonymous viewer).
    let url = format!("{}/ws", open.ws_base);
    let basic = ws_connect_with(&url, &[("authorization", "Basic dXNlcjpwYXNz")]).await;
    assert_eq!(refused_status(basic), 401, "a Basic Authorization header");
    let empty = WsClient::connect(&format!("{url}?token=")).await;
    assert_eq!(refused_status(empty), 401, "an empty ?token=");
    let garbled = WsClient::connect(&format!("{url}?token=%ZZ")).await;
    assert_eq!(
        refused_status(garbled),
        401,
        "a query string that cannot be read"
    );
    open.stop().await;
}

/// A node with public topics and at most 2 anonymous sockets per client address.
async fn two_anonymous_sockets_per_address(db: &TestDb) -> TestApp {
    spawn_app_with(db, Opts::default(), |s| {
        s.public_topics = vec!["product:*".into()];
        s.max_anon_sockets_per_ip = 2;
    })
    .await
}

/// An anonymous socket from client address `ip`: the test connects from 127.0.0.1, a trusted
/// proxy by default, so the last X-Forwarded-For hop is the client.
async fn anonymous_from(
    app: &TestApp,
    ip: &str,
) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
    ws_connect_with(&format!("{}/ws", app.ws_base), &[("x-forwarded-for", ip)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_sockets_are_capped_per_client_address() {
    let db = TestDb::new().await;
    let app = two_anonymous_sockets_per_address(&db).await;
    let from = |ip| anonymous_from(&app, ip);
    let _a = from("6.6.6.6, 10.0.0.1").await.expect("first");
    let _b = from("10.0.0.1").await.expect("second");
    let (status, body) = refused_with_body(from("10.0.0.1").await);
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &json!("too_many_connections")),
        "{body}"
    );
    let other = from("10.0.0.2")
        .await
        .expect("another address has its own count");
    drop(other);
    // A token holder is not counted as anonymous.
    let u = new_user();
    let _t = ws_connect_with(
        &app.ws_url(&token(&u), None),
        &[("x-forwarded-for", "10.0.0.1")],
    )
    .await
    .expect("token holder");
    drop(_a);
    eventually(T, "a freed anonymous slot", || async {
        from("10.0.0.1").await.ok().map(|_| ())
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_publish_is_stamped_with_the_sender_and_acked_with_the_event_id() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut member = subscriber(&app, &new_user(), &["group:*"], &["group:7"]).await;
    let sender = new_user();
    let mut s =
        WsClient::connect(&app.ws_url(&token_with_grants(&sender, &[], &["group:7"]), None))
            .await
            .expect("connect");
    hello(&mut s).await;
    s.send(&json!({"type": "publish", "topic": "group:7", "data": {"text": "hi"}, "from": "admin", "ref": "p1"}))
        .await;
    let ack = s.next_of("ack", T).await;
    assert_eq!(ack["ref"], "p1");
    let id = ack["id"].as_str().expect("id in the ack").to_string();
    assert_eq!(
        member.next_of("topic.event", T).await,
        json!({"type": "topic.event", "topic": "group:7", "id": id, "from": sender, "data": {"text": "hi"}})
    );

    s.send(&json!({"type": "publish", "topic": "group:8", "data": {}, "ref": "p2"}))
        .await;
    let e = s.next_of("error", T).await;
    assert_eq!(
        (&e["ref"], &e["error"]["code"]),
        (&json!("p2"), &json!("forbidden"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_past_the_burst_is_rate_limited() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut s = WsClient::connect(&app.ws_url(&token_with_grants(&u, &[], &["group:*"]), None))
        .await
        .expect("connect");
    hello(&mut s).await;
    // One at a time (never `busy`): the burst (20) passes, then the rate (10/s) holds.
    let mut acked = 0;
    let mut limited = None;
    for i in 0..200 {
        s.send(&json!({"type": "publish", "topic": "group:1", "data": {"i": i}, "ref": i}))
            .await;
        let f = s.next(T).await.expect("an answer");
        if f["type"] == "ack" {
            acked += 1;
        } else {
            limited = Some(f);
            break;
        }
    }
    let e = limited.expect("never rate limited");
    assert_eq!(e["error"]["code"], "rate_limited", "{e}");
    assert!(acked >= 20, "only {acked} publishes before the limit");
    app.stop().await;
}

/// Anonymous sessions have no actor to close them: the node closes them itself with 1012.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_node_closes_anonymous_sessions_with_1012() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), public(&["product:*"])).await;
    let mut c = anonymous(&app).await;
    app.stopper.stop().await;
    assert_eq!(c.expect_close(T).await, Some(1012));
}

/// One IPv6 client holds a whole /64 (its ISP hands out prefixes, privacy addresses rotate
/// within it): counted per /128, the per-address cap would let it open sockets without end.
/// IPv6 clients are counted per /64, and an IPv4 client seen as `::ffff:a.b.c.d` is the same
/// client as `a.b.c.d`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anonymous_cap_counts_an_ipv6_client_by_its_64_prefix() {
    let db = TestDb::new().await;
    let app = two_anonymous_sockets_per_address(&db).await;
    let from = |ip| anonymous_from(&app, ip);
    let _a = from("2001:db8:1:2::1").await.expect("first");
    let _b = from("2001:db8:1:2::2").await.expect("second");
    let (status, body) = refused_with_body(from("2001:db8:1:2:ffff::3").await);
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &json!("too_many_connections")),
        "a third address of the same /64: {body}"
    );
    let _c = from("2001:db8:1:3::1")
        .await
        .expect("another /64 has its own count");

    let _d = from("10.9.9.9").await.expect("IPv4 first");
    let _e = from("::ffff:10.9.9.9").await.expect("IPv4 second");
    let (status, _) = refused_with_body(from("10.9.9.9").await);
    assert_eq!(status, 429, "an IPv4-mapped address is the same client");
    app.stop().await;
}

/// A topic named twice in one `subscribe` is one subscription: its retained value follows the
/// ack once (not once per mention: 100 mentions of a topic with a 16 KiB value would queue
/// 1.6 MB and close the session as a slow consumer), and the ack lists it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_named_twice_in_one_subscribe_gets_its_retained_value_once() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let id = app
        .publish_topic_body("product:5", json!({"data": {"stock": 9}, "retain": true}))
        .await;
    published(&app).await;
    let mut c =
        WsClient::connect(&app.ws_url(&token_with_topics(&new_user(), &["product:*"]), None))
            .await
            .expect("connect");
    hello(&mut c).await;
    c.send(&json!({"type": "subscribe", "topics": ["product:5", "product:5", "product:5"], "ref": "s"}))
        .await;
    let ack = c.next_of("ack", T).await;
    assert_eq!(ack["topics"], json!(["product:5"]), "{ack}");
    let frames = drain(&mut c, QUIET).await;
    let retained: Vec<&Value> = frames.iter().filter(|f| f["id"] == id.as_str()).collect();
    assert_eq!(retained.len(), 1, "{frames:?}");
    app.stop().await;
}

/// Subscribes `c` to `n` topics `{prefix}{i}` in frames of 100, each acked.
async fn subscribe_many(c: &mut WsClient, prefix: &str, n: usize) {
    let topics: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    for (f, chunk) in topics.chunks(100).enumerate() {
        c.send(&json!({"type": "subscribe", "topics": chunk, "ref": f}))
            .await;
        let a = c.next_of("ack", T).await;
        assert_eq!(a["ref"], f, "{a}");
    }
}

/// The answer to a subscribe of `topics` (the ack or an error; retained values are skipped).
async fn subscribe_answer(c: &mut WsClient, topics: &[&str], r#ref: &str) -> Value {
    c.send(&json!({"type": "subscribe", "topics": topics, "ref": r#ref}))
        .await;
    loop {
        let f = c.next(T).await.expect("an answer to the subscribe");
        if f["ref"] == r#ref {
            return f;
        }
    }
}

/// Contract §7, anonymous load: the distinct topics held by one client address's anonymous
/// sessions on a node are capped (default 1,000; each distinct topic is one Redis channel).
/// Before the cap, 64 anonymous sockets of one address held 32,000 channels. A topic the address
/// already holds costs nothing more; another address and a token holder have their own counts;
/// topics free up when a session leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_topics_are_capped_per_client_address() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), public(&["product:*"])).await;
    let from = |ip| anonymous_from(&app, ip);
    let mut a = from("10.0.0.1").await.expect("a");
    let mut b = from("10.0.0.1").await.expect("b");
    let mut c = from("10.0.0.1").await.expect("c");
    for s in [&mut a, &mut b, &mut c] {
        hello(s).await;
    }
    // 500 per session (the session cap), 1,000 for the address.
    subscribe_many(&mut a, "product:a", 500).await;
    subscribe_many(&mut b, "product:b", 500).await;
    let e = subscribe_answer(&mut c, &["product:c0"], "over").await;
    assert_eq!(
        (&e["type"], &e["error"]["code"]),
        (&json!("error"), &json!("too_many_topics")),
        "the 1,001st topic of one address: {e}"
    );
    let held = subscribe_answer(&mut c, &["product:a0", "product:b499"], "held").await;
    assert_eq!(held["type"], "ack", "topics the address holds: {held}");

    let mut other = from("10.0.0.2").await.expect("another address");
    hello(&mut other).await;
    let e = subscribe_answer(&mut other, &["product:c0"], "other").await;
    assert_eq!(e["type"], "ack", "another address has its own count: {e}");
    let mut user = ws_connect_with(
        &app.ws_url(&token(&new_user()), None),
        &[("x-forwarded-for", "10.0.0.1")],
    )
    .await
    .expect("token holder");
    hello(&mut user).await;
    let e = subscribe_answer(&mut user, &["product:c0"], "user").await;
    assert_eq!(e["type"], "ack", "a token holder is not anonymous: {e}");

    // The session's leave runs after its close: the freed topics show within moments.
    a.close().await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let f = subscribe_answer(&mut c, &["product:c1"], "again").await;
        if f["type"] == "ack" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed session's topics still count: {f}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
}

/// Contract §7: `subscribe` and `unsubscribe` are rate-limited per session, anonymous or not
/// (default 10 a second, burst 20; beyond: `error` `rate_limited`). Before the limit, 8 sockets
/// churned ~50,000 subscribes and unsubscribes a second through Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_unsubscribe_are_rate_limited_per_session() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), public(&["product:*"])).await;
    let u = new_user();
    let url = app.ws_url(&token_with_topics(&u, &["product:*"]), None);
    let mut user = WsClient::connect(&url).await.expect("connect");
    hello(&mut user).await;
    let mut anon = anonymous(&app).await;
    for c in [&mut user, &mut anon] {
        // One at a time (never `busy`), alternating: each frame is answered before the next.
        let mut acked = 0;
        let mut limited = None;
        let started = std::time::Instant::now();
        for i in 0..200 {
            let kind = if i % 2 == 0 {
                "subscribe"
            } else {
                "unsubscribe"
            };
            c.send(&json!({"type": kind, "topics": ["product:1"], "ref": i}))
                .await;
            let f = loop {
                let f = c.next(T).await.expect("an answer");
                if f["ref"] == i {
                    break f;
                }
            };
            if f["type"] == "ack" {
                acked += 1;
            } else {
                limited = Some(f);
                break;
            }
        }
        let e = limited.expect("200 subscribes and unsubscribes, never rate limited");
        assert_eq!(e["error"]["code"], "rate_limited", "{e}");
        // The burst, plus what refilled meanwhile at 10 a second.
        let refilled = (started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
        assert!(
            (20..=20 + refilled).contains(&acked),
            "{acked} acked before the limit ({refilled} refilled)"
        );
        // A token comes back every 100 ms.
        tokio::time::sleep(Duration::from_millis(250)).await;
        c.send(&json!({"type": "unsubscribe", "topics": ["product:1"], "ref": "later"}))
            .await;
        assert_eq!(c.next_of("ack", T).await["ref"], "later");
    }
    // Per session: another session of the same user is not limited.
    let mut second = WsClient::connect(&url).await.expect("connect");
    hello(&mut second).await;
    let f = subscribe_answer(&mut second, &["product:2"], "fresh").await;
    assert_eq!(f["type"], "ack", "{f}");
    app.stop().await;
}

/// The limits through the real binary: the settings read from the environment, each refusal
/// counted on `/metrics`, and a NUL topic (which once failed the retained-value read in
/// PostgreSQL) leaving no warning or error in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_counts_topic_refusals_and_logs_no_error_for_a_bad_name() {
    use crate::binary::{free_port, node_env, sample, Notifyd};
    let db = TestDb::new().await;
    let port = free_port();
    let mut env = node_env(&db, port);
    for (k, v) in [
        ("NOTIFYD_PUBLIC_TOPICS", "product:*"),
        ("NOTIFYD_MAX_ANON_TOPICS_PER_IP", "2"),
        ("NOTIFYD_SUBSCRIBE_BURST", "5"),
        ("NOTIFYD_SUBSCRIBE_RATE", "1"),
        ("RUST_LOG", "info"),
    ] {
        env.push((k.into(), v.into()));
    }
    let mut node = Notifyd::start(&["serve"], &env, port);
    node.healthy().await;
    // Start-up warns about the test's short secret and unset origins: only what follows counts.
    let (out_from, err_from) = (node.stdout().len(), node.stderr().len());
    let mut c = WsClient::connect(&format!("ws://127.0.0.1:{port}/ws"))
        .await
        .expect("anonymous connect");
    hello(&mut c).await;
    let nul = subscribe_answer(&mut c, &["product:\u{0}1"], "nul").await;
    assert_eq!(nul["error"]["code"], "validation_failed", "{nul}");
    // The burst of 5 at 1 a second: "over" is the first, 4 more pass, the next is limited.
    // Sent back to back, answers read after: a client's round trips on a loaded machine must
    // not give the limiter time to refill (it did at 10 a second, one frame per round trip).
    let frames = [
        ("over", vec!["product:1", "product:2", "product:3"]),
        ("s0", vec!["product:1"]),
        ("s1", vec!["product:1"]),
        ("s2", vec!["product:1"]),
        ("s3", vec!["product:1"]),
        ("limited", vec!["product:1"]),
    ];
    for (r, topics) in &frames {
        c.send(&json!({"type": "subscribe", "topics": topics, "ref": r}))
            .await;
    }
    let mut answers = std::collections::HashMap::new();
    while answers.len() < frames.len() {
        let f = c.next(T).await.expect("an answer to each subscribe");
        if let Some(r) = f["ref"].as_str() {
            answers.insert(r.to_string(), f.clone());
        }
    }
    let over = &answers["over"];
    assert_eq!(over["error"]["code"], "too_many_topics", "{over}");
    for i in 0..4 {
        let f = &answers[&format!("s{i}")];
        assert_eq!(f["type"], "ack", "{f}");
    }
    let limited = &answers["limited"];
    assert_eq!(limited["error"]["code"], "rate_limited", "{limited}");

    let metrics = reqwest::get(format!("{}/metrics", node.base))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    for series in [
        r#"notifyd_topics_refused_total{limit="address"}"#,
        r#"notifyd_rate_limited_total{what="subscribe"}"#,
        r#"notifyd_ws_bad_frames_total{code="validation_failed"}"#,
    ] {
        assert_eq!(sample(&metrics, series), Some(1.0), "{series}");
    }
    let (stdout, stderr) = node.stop().await;
    let log = format!("{}{}", &stdout[out_from..], &stderr[err_from..]);
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(loud.is_empty(), "warnings or errors in the log: {loud:#?}");
}
