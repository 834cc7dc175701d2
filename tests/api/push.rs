//! Web Push (contract §10): a `message.created` that no live session acknowledged within
//! `NOTIFYD_PUSH_DELAY` is pushed, encrypted for the subscription (RFC 8291) and signed (VAPID,
//! RFC 8292), once per subscription, surviving the node that took the create; acknowledged,
//! read or deleted ones are not; endpoints are checked against SSRF.

use std::time::Duration;

use serde_json::{json, Value};

use crate::binary::{free_port, node_env, Notifyd};
use crate::helpers::*;

/// Deadline for anything that should happen "now" (never a measure of speed).
const T: Duration = Duration::from_secs(15);
const SUBJECT: &str = "mailto:ops@example.com";

fn vapid_private() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| notifyd::push::vapid::generate().0)
}

/// Web Push on, with a 1 s delay and the local (plain HTTP) push service allowed.
fn with_push(s: &mut notifyd::config::Settings) {
    s.vapid_private_key = Some(vapid_private().to_string());
    s.vapid_subject = Some(SUBJECT.into());
    s.push_delay = Duration::from_secs(1);
    s.push_allow_insecure = true;
}

async fn subscribe(app: &TestApp, user: &str, sub: &Value) -> reqwest::Response {
    app.user_post(user, "/api/v1/me/push-subscriptions", sub.clone())
        .await
}

async fn public_key(app: &TestApp) -> String {
    let r = app
        .http
        .get(format!("{}/api/v1/push/key", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["public_key"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_message_is_pushed_once_encrypted_and_signed() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), with_push).await;
    let service = PushService::start().await;
    let u = new_user();
    let sub = service.subscription();
    let r = subscribe(&app, &u, &sub.json()).await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].clone();
    // The same endpoint again: the same subscription.
    let again = subscribe(&app, &u, &sub.json()).await;
    assert_eq!(again.json::<Value>().await.unwrap()["id"], id);

    let r = app
        .post_messages(&json!({"to_user": u, "title": "Hi", "content": "there", "type": "comment", "skip_url": "/inbox/1"}))
        .await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let got = service.wait_for(1, T).await;
    let p = &got[0];
    assert_eq!(
        p.payload,
        json!({"id": created["messages"][0]["id"], "seq": 1, "title": "Hi", "content": "there",
               "type": "comment", "skip_url": "/inbox/1", "unseen": 1})
    );
    assert_eq!(p.header("ttl"), Some("86400"));
    assert_eq!(p.header("urgency"), Some("normal"));
    assert_eq!(p.header("content-encoding"), Some("aes128gcm"));
    assert_eq!(
        p.vapid_key,
        public_key(&app).await,
        "signed with the server's VAPID key"
    );
    assert_eq!(p.vapid_aud, "http://127.0.0.1");
    assert_eq!(p.vapid_sub, SUBJECT);
    // Once: nothing more comes for it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(service.got().len(), 1);
    assert_eq!(service.undecryptable(), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_live_session_acknowledged_or_the_user_read_is_never_pushed() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), with_push).await;
    let service = PushService::start().await;
    let u = new_user();
    let sub = service.subscription();
    assert_eq!(subscribe(&app, &u, &sub.json()).await.status(), 201);

    // A WebSocket that hands the event to its app and says so.
    let mut ws = app.ws(&u, None).await;
    ws.expect("hello", T).await;
    app.send(&u, "seen live").await;
    let ev = ws.expect("message.created", T).await;
    ws.send(&json!({"type": "received", "seq": ev["seq"]}))
        .await;

    // An SSE client does the same over REST.
    let mut sse = app.sse(&u, "").await;
    app.send(&u, "seen over sse").await;
    let mut last = 0;
    while last < 2 {
        last = sse.expect("message.created", T).await.seq_id().unwrap();
    }
    let r = app
        .user_post(&u, "/api/v1/me/received", json!({"seq": last}))
        .await;
    assert_eq!(r.status(), 204);

    // Read before its delay passed: no push either.
    drop(ws);
    drop(sse);
    let unread = app.send(&u, "read in time").await;
    let r = app
        .user_post(
            &u,
            "/api/v1/me/messages/read",
            json!({"ids": [unread["id"]]}),
        )
        .await;
    assert_eq!(r.status(), 200);

    // One that nobody saw: pushed, and it is the only one.
    app.send(&u, "missed").await;
    let got = service.wait_for(1, T).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let titles: Vec<Value> = service
        .got()
        .iter()
        .map(|p| p.payload["title"].clone())
        .collect();
    assert_eq!(titles, vec![json!("missed")], "{got:?}");

    // Bad acknowledgements are 422, never 5xx.
    for body in [
        json!({}),
        json!({"seq": -1}),
        json!({"seq": "3"}),
        json!({"seq": 1.5}),
    ] {
        let r = app.user_post(&u, "/api/v1/me/received", body).await;
        assert_eq!(r.status(), 422);
    }
    // An integer written as a number with no fraction is an integer (JSON Schema says so).
    let r = app
        .user_post(&u, "/api/v1/me/received", json!({"seq": 2.0, "other": 1}))
        .await;
    assert_eq!(r.status(), 204);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_subscription_is_removed_and_a_busy_service_is_retried_after_its_retry_after() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), with_push).await;
    let service = PushService::start().await;
    let (gone, busy) = (new_user(), new_user());
    let gone_sub = service.subscription();
    assert_eq!(subscribe(&app, &gone, &gone_sub.json()).await.status(), 201);
    service.answer(410, None);
    app.send(&gone, "to a closed browser").await;
    service.wait_for(1, T).await;
    eventually(T, "the gone subscription is removed", || async {
        (scalar_i64(&db.url, "SELECT count(*) AS v FROM push_subscription").await == 0)
            .then_some(())
    })
    .await;

    let busy_sub = service.subscription();
    assert_eq!(subscribe(&app, &busy, &busy_sub.json()).await.status(), 201);
    service.answer(429, Some("2"));
    let start = std::time::Instant::now();
    app.send(&busy, "later").await;
    let got = service.wait_for(3, T).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "the retry honoured Retry-After: {waited:?}"
    );
    let busy_pushes = got
        .iter()
        .filter(|p| p.path == busy_sub.endpoint.trim_start_matches(&service.base))
        .count();
    assert_eq!(busy_pushes, 2, "refused once, accepted once");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(service.got().len(), 3, "nothing after it was accepted");
    assert_eq!(
        scalar_i64(&db.url, "SELECT count(*) AS v FROM push_pending").await,
        0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_must_be_https_and_outside_and_keys_must_be_keys() {
    let db = TestDb::new().await;
    let strict = |s: &mut notifyd::config::Settings| {
        with_push(s);
        s.push_allow_insecure = false;
    };
    let app = spawn_app_with(&db, Opts::default(), strict).await;
    let u = new_user();
    let service = PushService::start().await;
    let good = service.subscription().json();
    for endpoint in [
        "http://push.example.com/x",
        "https://127.0.0.1/x",
        "https://10.0.0.8/x",
        "https://169.254.169.254/latest",
        "https://[::1]/x",
        "https://localhost/x",
        "https://user:pw@push.example.com/x",
        "not a url",
    ] {
        let mut sub = good.clone();
        sub["endpoint"] = json!(endpoint);
        let r = subscribe(&app, &u, &sub).await;
        assert_eq!(r.status(), 422, "{endpoint}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["field"], "endpoint", "{endpoint}");
    }
    let mut bad_key = good.clone();
    bad_key["endpoint"] = json!("https://8.8.8.8/push/1");
    bad_key["keys"]["p256dh"] = json!("AAAA");
    let r = subscribe(&app, &u, &bad_key).await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["field"],
        "keys.p256dh"
    );
    for body in [json!({}), json!([]), json!({"endpoint": 1})] {
        assert_eq!(subscribe(&app, &u, &body).await.status(), 422);
    }
    // Unsubscribing: 204 for any id, and the subscription is gone.
    let mut ok = good.clone();
    ok["endpoint"] = json!("https://8.8.8.8/push/2");
    let r = subscribe(&app, &u, &ok).await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = new_user();
    assert_eq!(
        app.user_delete(&other, &format!("/api/v1/me/push-subscriptions/{id}"))
            .await
            .status(),
        204
    );
    assert_eq!(
        scalar_i64(&db.url, "SELECT count(*) AS v FROM push_subscription").await,
        1,
        "not another user's"
    );
    assert_eq!(
        app.user_delete(&u, &format!("/api/v1/me/push-subscriptions/{id}"))
            .await
            .status(),
        204
    );
    assert_eq!(
        scalar_i64(&db.url, "SELECT count(*) AS v FROM push_subscription").await,
        0
    );
    app.stop().await;

    // Without a VAPID key there is no Web Push: the key and subscribing are 404.
    let off = spawn_app(&db, Opts::default()).await;
    let r = off
        .http
        .get(format!("{}/api/v1/push/key", off.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(subscribe(&off, &u, &good).await.status(), 404);
    off.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_between_the_create_and_the_push_loses_nothing_and_nothing_goes_twice() {
    let db = TestDb::new().await;
    let service = PushService::start().await;
    let port = free_port();
    let mut env = node_env(&db, port);
    for (k, v) in [
        ("NOTIFYD_VAPID_PRIVATE_KEY", vapid_private()),
        ("NOTIFYD_VAPID_SUBJECT", SUBJECT),
        ("NOTIFYD_PUSH_DELAY", "3s"),
        ("NOTIFYD_PUSH_ALLOW_INSECURE", "1"),
    ] {
        env.push((k.into(), v.into()));
    }
    let mut a = Notifyd::start(&["serve"], &env, port);
    a.healthy().await;
    let http = reqwest::Client::new();
    let users: Vec<String> = (0..5).map(|_| new_user()).collect();
    for u in &users {
        let r = http
            .post(format!("{}/api/v1/me/push-subscriptions", a.base))
            .bearer_auth(token(u))
            .json(&service.subscription().json())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let messages: Vec<Value> = users
        .iter()
        .map(|u| json!({"to_user": u, "title": "while a node dies", "content": "c"}))
        .collect();
    let r = http
        .post(format!("{}/api/v1/messages", a.base))
        .bearer_auth(SERVICE_KEY)
        .json(&json!({ "messages": messages }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // kill -9 before the delay passed: node A never pushes.
    a.child.start_kill().unwrap();
    let _ = a.child.wait().await;
    assert!(service.got().is_empty());

    let b = spawn_app_with(&db, Opts::default(), |s| {
        with_push(s);
        s.push_delay = Duration::from_secs(3);
    })
    .await;
    let got = service.wait_for(users.len(), T).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(service.got().len(), users.len(), "each once: {got:?}");
    let mut paths: Vec<String> = got.iter().map(|p| p.path.clone()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), users.len(), "one per subscription");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_belongs_to_its_last_user_and_a_user_holds_at_most_20_subscriptions_even_racing()
{
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), with_push).await;
    let service = PushService::start().await;
    let (a, b) = (new_user(), new_user());
    // A logs out without unsubscribing; B subscribes the same browser: A's is gone.
    let browser = service.subscription().json();
    assert_eq!(subscribe(&app, &a, &browser).await.status(), 201);
    assert_eq!(subscribe(&app, &b, &browser).await.status(), 201);
    let owners = query_json(&db.url, "SELECT user_id FROM push_subscription").await;
    assert_eq!(owners, vec![json!({"user_id": b})]);
    // 40 subscriptions at once: 20 (B's one included) are taken, the rest refused.
    let c = new_user();
    let tries = (0..40).map(|_| {
        let sub = service.subscription().json();
        let (app, c) = (&app, &c);
        async move { subscribe(app, c, &sub).await.status().as_u16() }
    });
    let statuses = futures_util::future::join_all(tries).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        20,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 429),
        "{statuses:?}"
    );
    let held = scalar_i64(
        &db.url,
        &format!("SELECT count(*) AS v FROM push_subscription WHERE user_id = '{c}'"),
    )
    .await;
    assert_eq!(held, 20);
    app.stop().await;
}
