//! Direct messages, user to user (contract §8), over real sockets: the `send` frame and
//! `POST /api/v1/me/send` create an ordinary notification for the recipient, stamped with the
//! sender's `sub`, allowed by the token's `send_to` claim, validated like the service API and
//! limited per sender; whatever is refused writes nothing.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

/// Deadline for anything that should happen "now" (never a measure of speed).
const T: Duration = Duration::from_secs(15);
/// Sends one sender may make at once (`ratelimit::DIRECT_BURST`) and per second after that.
const BURST: usize = 20;
const PER_SECOND: f64 = 5.0;

fn chat(title: &str) -> Value {
    json!({"title": title, "content": "hi there", "type": "chat", "skip_url": null, "data": {}})
}

/// `POST /api/v1/me/send` with `token`, an optional `Idempotency-Key`, and `body` as is.
async fn rest_send(
    app: &TestApp,
    token: &str,
    key: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut req = app
        .http
        .post(format!("{}/api/v1/me/send", app.base))
        .bearer_auth(token)
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    req.send().await.expect("POST /api/v1/me/send")
}

/// A socket of `user` holding `token`, past its `hello`.
async fn socket(app: &TestApp, token: &str) -> WsClient {
    let mut c = WsClient::connect(&app.ws_url(token, None))
        .await
        .expect("ws connect");
    c.next_of("hello", T).await;
    c
}

/// Sends a `send` frame and returns the answer to its `ref` (an `ack` or an `error`).
async fn ws_send(c: &mut WsClient, r#ref: &str, to_user: Value, message: Value) -> Value {
    c.send(&json!({"type": "send", "to_user": to_user, "message": message, "ref": r#ref}))
        .await;
    c.answer_to(r#ref, T).await
}

async fn rows_from(app: &TestApp, sender: &str) -> i64 {
    scalar_i64(
        &app.db_url,
        &format!("SELECT count(*) AS v FROM t_message_real_time WHERE send_user = '{sender}'"),
    )
    .await
}

async fn error_body(r: reqwest::Response) -> Value {
    r.json::<Value>().await.expect("an error body in JSON")["error"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_frame_reaches_the_recipient_online_stamped_with_the_sender_and_is_acked_with_its_id(
) {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (sender, to) = (new_user(), new_user());
    let mut recipient = app.ws(&to, None).await;
    recipient.next_of("hello", T).await;
    let mut s = socket(&app, &token_send_to(&sender, &["*"])).await;

    let ack = ws_send(&mut s, "d1", json!(to), chat("Lunch?")).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let id = ack["id"].as_str().expect("the ack carries the message id");

    let f = recipient.next_of("message.created", T).await;
    assert_eq!(
        (&f["seq"], &f["unread"], &f["unseen"]),
        (&json!(1), &json!(1), &json!(1))
    );
    let m = &f["message"];
    assert_eq!(m["id"], id);
    assert_eq!(m["send_user"], sender.as_str());
    assert_eq!(
        (&m["title"], &m["content"], &m["type"]),
        (&json!("Lunch?"), &json!("hi there"), &json!("chat"))
    );
    // The row is an ordinary notification, created by "user:<sender>".
    let service = scalar_text(
        &app.db_url,
        &format!("SELECT service AS v FROM t_message_real_time WHERE id = '{id}'"),
    )
    .await;
    assert_eq!(service, format!("user:{sender}"));
    // The sender's own inbox is untouched.
    let counts = app.user_json(&sender, "/api/v1/me/unread-count").await;
    assert_eq!(counts["seq"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_send_answers_201_with_the_id_and_the_recipient_gets_it_live() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (sender, to) = (new_user(), new_user());
    let mut recipient = app.ws(&to, None).await;
    recipient.next_of("hello", T).await;

    let r = rest_send(
        &app,
        &token_send_to(&sender, &["*"]),
        None,
        &json!({"to_user": to, "message": chat("Ping")}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let id = body["id"].as_str().expect("201 {\"id\"}");
    assert_eq!(body, json!({ "id": id }));

    let f = recipient.next_of("message.created", T).await;
    assert_eq!((&f["seq"], &f["unread"]), (&json!(1), &json!(1)));
    assert_eq!(
        (&f["message"]["id"], &f["message"]["send_user"]),
        (&json!(id), &json!(sender))
    );
}

/// Sending to yourself is allowed when the claim matches your own id: it is just a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_may_send_to_themselves_when_the_claim_allows_it() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let me = new_user();
    let r = rest_send(
        &app,
        &token_send_to(&me, &[&me]),
        None,
        &json!({"to_user": me, "message": chat("note to self")}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let listed = app.user_json(&me, "/api/v1/me/messages").await;
    assert_eq!(listed["messages"][0]["send_user"], me.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_cannot_be_spoofed() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (sender, to) = (new_user(), new_user());
    let tok = token_send_to(&sender, &["*"]);
    let mut spoofed = chat("from the boss");
    spoofed["send_user"] = json!("boss");

    // Inside the message: refused, naming the field, on both paths.
    let r = rest_send(
        &app,
        &tok,
        None,
        &json!({"to_user": to, "message": spoofed}),
    )
    .await;
    assert_eq!(r.status(), 422);
    let e = error_body(r).await;
    assert_eq!(
        (&e["code"], &e["field"]),
        (&json!("validation_failed"), &json!("message.send_user"))
    );
    let mut s = socket(&app, &tok).await;
    let e = ws_send(&mut s, "d1", json!(to), spoofed).await;
    assert_eq!(e["type"], "error");
    assert_eq!(
        (&e["error"]["code"], &e["error"]["field"]),
        (&json!("validation_failed"), &json!("message.send_user"))
    );
    let boss = scalar_i64(
        &app.db_url,
        "SELECT count(*) AS v FROM t_message_real_time WHERE send_user = 'boss'",
    )
    .await;
    assert_eq!(boss, 0);

    // Beside the message (not a field of the request): ignored, the token's sub is the sender.
    let r = rest_send(
        &app,
        &tok,
        None,
        &json!({"to_user": to, "send_user": "boss", "message": chat("hi")}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let listed = app.user_json(&to, "/api/v1/me/messages").await;
    assert_eq!(listed["messages"][0]["send_user"], sender.as_str());
    assert_eq!(listed["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_matching_send_to_claim_the_send_is_forbidden_and_writes_nothing() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let sender = new_user();
    let team = format!("team-{}", new_user());
    let outsider = new_user();
    let body = |to: &str| json!({"to_user": to, "message": chat("hello")});

    // No claim at all, and a claim whose pattern the recipient does not match.
    for tok in [token(&sender), token_send_to(&sender, &["team-*"])] {
        let r = rest_send(&app, &tok, None, &body(&outsider)).await;
        assert_eq!(r.status(), 403);
        assert_eq!(error_body(r).await["code"], "forbidden");
        let mut s = socket(&app, &tok).await;
        let e = ws_send(&mut s, "d1", json!(outsider), chat("hello")).await;
        assert_eq!(
            (&e["type"], &e["error"]["code"]),
            (&json!("error"), &json!("forbidden"))
        );
    }
    assert_eq!(rows_from(&app, &sender).await, 0);

    // The pattern does allow its own ids.
    let r = rest_send(
        &app,
        &token_send_to(&sender, &["team-*"]),
        None,
        &body(&team),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(rows_from(&app, &sender).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_are_refused_with_their_field_and_write_nothing() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (sender, to) = (new_user(), new_user());
    let tok = token_send_to(&sender, &["*"]);
    let mut s = socket(&app, &tok).await;
    let cases = [
        (json!(to), json!({"content": "no title"}), "message.title"),
        (
            json!(to),
            json!({"title": "t", "content": "x".repeat(8 * 1024 + 1)}),
            "message.content",
        ),
        (
            json!(to),
            json!({"title": "t", "skip_url": "javascript:alert(1)"}),
            "message.skip_url",
        ),
        (json!("a\u{0}b"), chat("t"), "to_user"),
        (Value::Null, chat("t"), "to_user"),
    ];
    for (i, (to_user, message, field)) in cases.into_iter().enumerate() {
        let r = rest_send(
            &app,
            &tok,
            None,
            &json!({"to_user": to_user, "message": message}),
        )
        .await;
        assert_eq!(r.status(), 422, "{field}");
        let e = error_body(r).await;
        assert_eq!(
            (&e["code"], &e["field"]),
            (&json!("validation_failed"), &json!(field))
        );
        let e = ws_send(&mut s, &format!("v{i}"), to_user, message).await;
        assert_eq!(
            (&e["type"], &e["error"]["code"], &e["error"]["field"]),
            (&json!("error"), &json!("validation_failed"), &json!(field)),
            "{e}"
        );
    }
    // A frame whose message is not an object is malformed, as a frame.
    s.send(&json!({"type": "send", "to_user": to, "message": "hi", "ref": "b1"}))
        .await;
    let e = s.answer_to("b1", T).await;
    assert_eq!(e["error"]["code"], "bad_frame");
    // Malformed REST bodies.
    let r = rest_send(&app, &tok, None, &json!({"to_user": to, "message": "hi"})).await;
    assert_eq!(r.status(), 422);
    let r = rest_send(&app, &tok, None, &json!(["not", "an", "object"])).await;
    assert_eq!(r.status(), 422);

    assert_eq!(rows_from(&app, &sender).await, 0);
    assert_eq!(count_rows(&app.db_url, "t_message_real_time").await, 0);
    assert_eq!(count_rows(&app.db_url, "outbox").await, 0);
}

/// Sends until the first refusal; `(accepted, the refusal, seconds taken)`.
async fn until_limited<F, Fut>(mut one: F) -> (usize, Value, f64)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), Value>>,
{
    let start = Instant::now();
    for i in 0..(BURST * 5) {
        if let Err(refusal) = one(i).await {
            return (i, refusal, start.elapsed().as_secs_f64());
        }
    }
    panic!("{} sends in a row were all accepted", BURST * 5);
}

/// Accepted sends are the burst plus what refilled meanwhile: never fewer, never many more.
fn assert_burst(accepted: usize, secs: f64) {
    let most = BURST + (secs * PER_SECOND).ceil() as usize;
    assert!(
        (BURST..=most).contains(&accepted),
        "{accepted} accepted in {secs:.2}s; expected {BURST}..={most}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_burst_rest_sends_get_429_with_retry_after_and_write_nothing() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (sender, to) = (new_user(), new_user());
    let tok = token_send_to(&sender, &["*"]);
    let (app_, tok_, to_) = (&app, &tok, &to);
    let (accepted, refusal, secs) = until_limited(move |i| {
        let (app, tok, to) = (app_, tok_, to_);
        async move {
            let r = rest_send(
                app,
                tok,
                None,
                &json!({"to_user": to, "message": chat(&format!("m{i}"))}),
            )
            .await;
            if r.status() == 201 {
                return Ok(());
            }
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            Err(json!({"status": status, "retry_after": retry_after, "error": error_body(r).await}))
        }
    })
    .await;
    assert_burst(accepted, secs);
    assert_eq!(refusal["status"], 429, "{refusal}");
    assert_eq!(refusal["error"]["code"], "rate_limited");
    let retry = refusal["retry_after"]
        .as_u64()
        .expect("a Retry-After in seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(rows_from(&app, &sender).await, accepted as i64);

    // Another sender has a bucket of its own.
    let r = rest_send(
        &app,
        &token_send_to(&new_user(), &["*"]),
        None,
        &json!({"to_user": to, "message": chat("other")}),
    )
    .await;
    assert_eq!(r.status(), 201);
    // After Retry-After the first sender may send again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = rest_send(
        &app,
        &tok,
        None,
        &json!({"to_user": to, "message": chat("later")}),
    )
    .await;
    assert_eq!(r.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_burst_send_frames_get_rate_limited_and_write_nothing() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (sender, to) = (new_user(), new_user());
    let mut s = socket(&app, &token_send_to(&sender, &["*"])).await;
    let s = &mut s;
    let to = &to;
    let (accepted, refusal, secs) = {
        let start = Instant::now();
        let mut outcome = None;
        for i in 0..(BURST * 5) {
            let f = ws_send(s, &format!("d{i}"), json!(to), chat(&format!("m{i}"))).await;
            if f["type"] != "ack" {
                outcome = Some((i, f, start.elapsed().as_secs_f64()));
                break;
            }
        }
        outcome.expect("a refusal within five bursts")
    };
    assert_burst(accepted, secs);
    assert_eq!(refusal["error"]["code"], "rate_limited", "{refusal}");
    assert_eq!(rows_from(&app, &sender).await, accepted as i64);
    // The socket stays open and usable.
    s.send(&json!({"type": "ping", "ref": "p"})).await;
    assert_eq!(s.answer_to("p", T).await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_replays_the_first_send_per_sender() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (sender, to) = (new_user(), new_user());
    let tok = token_send_to(&sender, &["*"]);
    let body = json!({"to_user": to, "message": chat("once")});

    let first = rest_send(&app, &tok, Some("k1"), &body).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let id = first.json::<Value>().await.unwrap()["id"].clone();
    let again = rest_send(&app, &tok, Some("k1"), &body).await;
    assert_eq!(again.status(), 201);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(again.json::<Value>().await.unwrap()["id"], id);
    assert_eq!(rows_from(&app, &sender).await, 1);

    // The same key with another body is a conflict.
    let other = json!({"to_user": to, "message": chat("twice")});
    let r = rest_send(&app, &tok, Some("k1"), &other).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_body(r).await["code"], "idempotency_conflict");

    // Keys are per sender: another user's "k1" is a send of its own.
    let someone = new_user();
    let r = rest_send(&app, &token_send_to(&someone, &["*"]), Some("k1"), &body).await;
    assert_eq!(r.status(), 201);
    assert_ne!(r.json::<Value>().await.unwrap()["id"], id);
    assert_eq!(rows_from(&app, &someone).await, 1);
    assert_eq!(rows_from(&app, &sender).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_who_was_offline_gets_the_message_on_connect() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (sender, to) = (new_user(), new_user());
    let mut s = socket(&app, &token_send_to(&sender, &["*"])).await;
    let ack = ws_send(&mut s, "d1", json!(to), chat("while you were out")).await;
    let id = ack["id"].clone();
    assert!(id.is_string(), "{ack}");

    let mut r = app.ws(&to, Some(0)).await;
    let hello = r.next_of("hello", T).await;
    assert_eq!((&hello["seq"], &hello["unread"]), (&json!(1), &json!(1)));
    let sync = r.next_of("sync", T).await;
    let ev = &sync["events"][0];
    assert_eq!(ev["type"], "message.created");
    assert_eq!(
        (&ev["message"]["id"], &ev["message"]["send_user"]),
        (&id, &json!(sender))
    );
}

/// Browsers on another origin may send, with an `Idempotency-Key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_route_answers_cors_preflights_with_the_idempotency_key_header() {
    let db = TestDb::new().await;
    let origin = "https://app.example";
    let opts = Opts {
        allowed_origins: Some(vec![origin.into()]),
        ..Opts::default()
    };
    let app = spawn_app(&db, opts).await;
    let r = app
        .http
        .request(Method::OPTIONS, format!("{}/api/v1/me/send", app.base))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type,idempotency-key",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some(origin)
    );
    // Only POST: anything else is a 405 with the error body.
    let r = app
        .http
        .get(format!("{}/api/v1/me/send", app.base))
        .bearer_auth(token(&new_user()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

/// A `send` frame may carry `key` (an idempotency key, scoped to the sender like
/// `Idempotency-Key` on REST): a client that lost the `ack` and sends again gets the first
/// message's id (`replayed: true`) and the recipient gets one message. A bad key is a
/// validation error naming `key`, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_frame_with_a_key_sent_twice_creates_one_message() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (sender, to) = (new_user(), new_user());
    let mut c = WsClient::connect(&app.ws_url(&token_send_to(&sender, &["*"]), None))
        .await
        .expect("connect");
    c.next_of("hello", T).await;
    let frame = |r: &str, key: Value| json!({"type": "send", "to_user": to, "message": chat("once"), "key": key, "ref": r});
    c.send(&frame("d1", json!("resend-1"))).await;
    let first = c.answer_to("d1", T).await;
    assert_eq!(first["type"], "ack", "{first}");
    c.send(&frame("d2", json!("resend-1"))).await;
    let again = c.answer_to("d2", T).await;
    assert_eq!(
        (&again["type"], &again["id"], &again["replayed"]),
        (&json!("ack"), &first["id"], &json!(true)),
        "{again}"
    );
    assert_eq!(rows_from(&app, &sender).await, 1);
    for bad in [json!(""), json!(7), json!("a b")] {
        c.send(&frame("d3", bad.clone())).await;
        let e = c.answer_to("d3", T).await;
        assert_eq!(
            (&e["type"], &e["error"]["field"]),
            (&json!("error"), &json!("key")),
            "{bad}: {e}"
        );
    }
    assert_eq!(rows_from(&app, &sender).await, 1);
    app.stop().await;
}
