//! Preferences (contract §10): `GET`/`PUT /api/v1/me/preferences`, decided inside the create.
//! A type a user set `in_app: false` for is never stored for them (no row, no seq, no event, no
//! count), on whichever node the create runs, and the `201` lists them under `skipped`; a type
//! with `push: false` is stored and delivered live but never queued for Web Push.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// Deadline for anything that should happen "now" (never a measure of speed).
const T: Duration = Duration::from_secs(15);
const PATH: &str = "/api/v1/me/preferences";

async fn put(app: &TestApp, user: &str, body: Value) -> reqwest::Response {
    app.user_put(user, PATH, body).await
}

async fn error_field(r: reqwest::Response) -> (u16, String, Value) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("an error body");
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
        v["error"]["field"].clone(),
    )
}

async fn created(app: &TestApp, body: &Value) -> Value {
    let r = app.post_messages(body).await;
    assert_eq!(r.status(), 201, "create");
    r.json().await.expect("json")
}

async fn rows_of(app: &TestApp, table: &str, column: &str, user: &str) -> i64 {
    scalar_i64(
        &app.db_url,
        &format!("SELECT count(*) AS v FROM {table} WHERE {column} = '{user}'"),
    )
    .await
}

fn seqs(body: &Value) -> Vec<(String, i64)> {
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["to_user"].as_str().expect("to_user").to_string(),
                m["seq"].as_i64().expect("seq"),
            )
        })
        .collect()
}

fn muted(users: &[&str]) -> Value {
    Value::Array(
        users
            .iter()
            .map(|u| json!({"to_user": u, "reason": "muted"}))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_put_round_trip_put_replaces_each_user_sees_only_their_own_and_bad_input_is_422() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (u, v) = (new_user(), new_user());

    let r = app.user_get(&u, PATH).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"types": {}}));

    // A flag left out is true; other fields are ignored; the answer is the stored document.
    let r = put(
        &app,
        &u,
        json!({"types": {"marketing": {"in_app": false, "push": false}, "digest": {"push": false}, "chat": {"extra": 1}}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let doc = json!({"types": {
        "marketing": {"in_app": false, "push": false},
        "digest": {"in_app": true, "push": false},
        "chat": {"in_app": true, "push": true},
    }});
    assert_eq!(r.json::<Value>().await.unwrap(), doc);
    assert_eq!(app.user_json(&u, PATH).await, doc);
    // Another user's document is their own.
    assert_eq!(app.user_json(&v, PATH).await, json!({"types": {}}));

    // PUT replaces the whole document.
    let r = put(&app, &u, json!({"types": {"review": {"in_app": false}}})).await;
    assert_eq!(r.status(), 200);
    let replaced = json!({"types": {"review": {"in_app": false, "push": true}}});
    assert_eq!(app.user_json(&u, PATH).await, replaced);
    assert_eq!(
        rows_of(&app, "user_type_preference", "user_id", &u).await,
        1
    );

    // Bad documents: 422 naming the field, and nothing changes.
    let many: serde_json::Map<String, Value> =
        (0..101).map(|i| (format!("t{i}"), json!({}))).collect();
    let long = "x".repeat(65);
    for (body, field) in [
        (json!({}), json!("types")),
        (json!({"types": []}), json!("types")),
        (json!({"types": null}), json!("types")),
        (json!([1]), json!("")),
        (json!({"types": many}), json!("types")),
        (json!({"types": {"": {}}}), json!("types.")),
        (
            json!({"types": {long.clone(): {}}}),
            json!(format!("types.{long}")),
        ),
        (json!({"types": {"m": "off"}}), json!("types.m")),
        (
            json!({"types": {"m": {"in_app": "no"}}}),
            json!("types.m.in_app"),
        ),
        (
            json!({"types": {"m": {"push": null}}}),
            json!("types.m.push"),
        ),
    ] {
        let (status, code, got) = error_field(put(&app, &u, body.clone()).await).await;
        assert_eq!(
            (status, code.as_str(), &got),
            (422, "validation_failed", &field),
            "{body}"
        );
    }
    assert_eq!(app.user_json(&u, PATH).await, replaced);
    // Exactly the cap is fine.
    let hundred: serde_json::Map<String, Value> =
        (0..100).map(|i| (format!("t{i}"), json!({}))).collect();
    assert_eq!(put(&app, &v, json!({"types": hundred})).await.status(), 200);

    // Not JSON: 400; no token: 401; another method: 405 with Allow.
    let r = app
        .http
        .put(format!("{}{PATH}", app.base))
        .bearer_auth(token(&u))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(error_field(r).await.0, 400);
    let r = app
        .http
        .get(format!("{}{PATH}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app.user_post(&u, PATH, json!({"types": {}})).await;
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.headers().get("allow").and_then(|h| h.to_str().ok()),
        Some("GET, HEAD, PUT")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_type_created_on_one_node_never_reaches_the_socket_on_another_and_seqs_stay_contiguous(
) {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let a = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let b = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let (u, v, w) = (new_user(), new_user(), new_user());
    let r = put(&a, &u, json!({"types": {"marketing": {"in_app": false}}})).await;
    assert_eq!(r.status(), 200);

    let mut ws = b.ws(&u, None).await;
    let hello = ws.expect("hello", T).await;
    assert_eq!(hello["seq"], 0);

    // Only muted rows for u: nothing of u's changes, and the answer says so.
    let body = created(
        &a,
        &json!({"to_user": u, "title": "Sale", "type": "marketing"}),
    )
    .await;
    assert_eq!(body, json!({"messages": [], "skipped": muted(&[&u])}));
    for (table, column) in [
        ("t_message_real_time", "to_user"),
        ("user_event", "user_id"),
        ("user_inbox_state", "user_id"),
    ] {
        assert_eq!(rows_of(&a, table, column, &u).await, 0, "{table}");
    }

    // A batch mixing muted and unmuted recipients and types: u's kept rows take the next seqs
    // with no gap, the others get theirs, and `skipped` lists u's muted rows in request order.
    let body = created(
        &a,
        &json!({"messages": [
            {"to_users": [v, u, w], "title": "Sale 2", "type": "marketing"},
            {"to_user": u, "title": "first", "type": "comment"},
            {"to_user": u, "title": "Sale 3", "type": "marketing"},
            {"to_users": [u, v], "title": "second", "type": "comment"},
        ]}),
    )
    .await;
    assert_eq!(
        seqs(&body),
        vec![
            (v.clone(), 1),
            (w.clone(), 1),
            (u.clone(), 1),
            (u.clone(), 2),
            (v.clone(), 2)
        ],
        "{body}"
    );
    assert_eq!(body["skipped"], muted(&[&u, &u]), "{body}");

    // The socket on the other node gets exactly u's kept messages, in seq order, with exact
    // counts, and never the muted ones.
    for (seq, title) in [(1, "first"), (2, "second")] {
        let f = ws.expect("message.created", T).await;
        assert_eq!(
            (
                &f["seq"],
                &f["unread"],
                &f["unseen"],
                &f["message"]["title"]
            ),
            (&json!(seq), &json!(seq), &json!(seq), &json!(title)),
            "{f}"
        );
    }
    // The next unmuted message has the next seq, and nothing came in between.
    let next = created(
        &a,
        &json!({"to_user": u, "title": "third", "type": "comment"}),
    )
    .await;
    assert_eq!(seqs(&next), vec![(u.clone(), 3)]);
    assert_eq!(next["skipped"], json!([]));
    let f = ws.expect("message.created", T).await;
    assert_eq!(
        (&f["seq"], &f["message"]["title"]),
        (&json!(3), &json!("third"))
    );
    let counts = b.user_json(&u, "/api/v1/me/unread-count").await;
    assert_eq!(counts, json!({"seq": 3, "unread": 3, "unseen": 3}));
    assert_eq!(rows_of(&a, "t_message_real_time", "to_user", &u).await, 3);
    assert_eq!(rows_of(&a, "user_event", "user_id", &u).await, 3);
    let changes = b.user_json(&u, "/api/v1/me/changes?since=0").await;
    let event_seqs: Vec<Value> = changes["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].clone())
        .collect();
    assert_eq!(event_seqs, vec![json!(1), json!(2), json!(3)]);

    // An idempotent retry answers the same, skipped included, and creates nothing.
    let retry = json!({"to_users": [u, w], "title": "Sale 4", "type": "marketing"});
    let first = a
        .post_as("/api/v1/messages", SERVICE_KEY, Some("mute-1"), &retry)
        .await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["skipped"], muted(&[&u]));
    let again = b
        .post_as("/api/v1/messages", SERVICE_KEY, Some("mute-1"), &retry)
        .await;
    assert_eq!(again.status(), 201);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .and_then(|h| h.to_str().ok()),
        Some("true")
    );
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(rows_of(&a, "t_message_real_time", "to_user", &w).await, 2);

    // Unmuting takes effect at the next create.
    assert_eq!(put(&b, &u, json!({"types": {}})).await.status(), 200);
    let back = created(
        &a,
        &json!({"to_user": u, "title": "Sale 5", "type": "marketing"}),
    )
    .await;
    assert_eq!(seqs(&back), vec![(u.clone(), 4)]);
    let f = ws.expect("message.created", T).await;
    assert_eq!(
        (&f["seq"], &f["message"]["title"]),
        (&json!(4), &json!("Sale 5"))
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_and_announcements_take_the_same_path_and_skip_the_muted() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (sender, to, other) = (new_user(), new_user(), new_user());
    assert_eq!(
        put(
            &app,
            &to,
            json!({"types": {"chat": {"in_app": false}, "news": {"in_app": false}}})
        )
        .await
        .status(),
        200
    );
    // A direct message of a muted type: 201, no id, the recipient under `skipped`.
    let r = app
        .http
        .post(format!("{}/api/v1/me/send", app.base))
        .bearer_auth(token_send_to(&sender, &["*"]))
        .json(&json!({"to_user": to, "message": {"title": "hi", "type": "chat"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"id": null, "skipped": muted(&[&to])})
    );
    assert_eq!(
        rows_of(&app, "t_message_real_time", "to_user", &to).await,
        0
    );
    // The socket's `send` says the same in its `ack`.
    let mut ws = WsClient::connect(&app.ws_url(&token_send_to(&sender, &["*"]), None))
        .await
        .expect("ws connect");
    ws.next_of("hello", T).await;
    ws.send(&json!({"type": "send", "to_user": to, "message": {"title": "hi", "type": "chat"}, "ref": "d1"}))
        .await;
    let ack = ws.answer_to("d1", T).await;
    assert_eq!(
        ack,
        json!({"type": "ack", "ref": "d1", "id": null, "skipped": muted(&[&to])})
    );
    assert_eq!(
        rows_of(&app, "t_message_real_time", "to_user", &to).await,
        0
    );
    // Another type goes through, with the contract's `{"id"}`.
    let r = app
        .http
        .post(format!("{}/api/v1/me/send", app.base))
        .bearer_auth(token_send_to(&sender, &["*"]))
        .json(&json!({"to_user": to, "message": {"title": "hi", "type": "comment"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let sent: Value = r.json().await.unwrap();
    assert!(sent["id"].is_string(), "{sent}");
    assert_eq!(
        sent,
        json!({"id": sent["id"]}),
        "the contract's shape when stored"
    );

    // An announcement of a muted type reaches everyone else; `skipped` counts the muted.
    created(&app, &json!({"to_user": other, "title": "welcome"})).await;
    let r = app
        .post_as(
            "/api/v1/broadcasts",
            SERVICE_KEY,
            None,
            &json!({"title": "Big news", "type": "news"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = eventually(T, "the broadcast to be done", || async {
        let p: Value = app
            .service_get(&format!("/api/v1/broadcasts/{id}"))
            .await
            .json()
            .await
            .unwrap();
        (p["status"] == "done").then_some(p)
    })
    .await;
    assert_eq!(
        (&done["total"], &done["created"], &done["skipped"]),
        (&json!(2), &json!(1), &json!(1)),
        "{done}"
    );
    let counts = app.user_json(&to, "/api/v1/me/unread-count").await;
    assert_eq!(counts["seq"], 1, "only the comment: {counts}");
    app.stop().await;
}

/// Web Push on with a delay long enough that pending pushes stay to be counted.
fn with_slow_push(s: &mut notifyd::config::Settings) {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    s.vapid_private_key = Some(
        KEY.get_or_init(|| notifyd::push::vapid::generate().0)
            .clone(),
    );
    s.vapid_subject = Some("mailto:ops@example.com".into());
    s.push_delay = Duration::from_secs(600);
    s.push_allow_insecure = true;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_false_stores_and_delivers_but_queues_no_push_while_push_true_does() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), with_slow_push).await;
    let service = PushService::start().await;
    let (quiet, loud) = (new_user(), new_user());
    for u in [&quiet, &loud] {
        let r = app
            .user_post(
                u,
                "/api/v1/me/push-subscriptions",
                service.subscription().json(),
            )
            .await;
        assert_eq!(r.status(), 201);
    }
    assert_eq!(
        put(&app, &quiet, json!({"types": {"digest": {"push": false}}}))
            .await
            .status(),
        200
    );
    let mut ws = app.ws(&quiet, None).await;
    ws.expect("hello", T).await;

    let body = created(
        &app,
        &json!({"messages": [
            {"to_users": [quiet, loud], "title": "Weekly", "type": "digest"},
            {"to_user": quiet, "title": "Reply", "type": "comment"},
        ]}),
    )
    .await;
    assert_eq!(body["skipped"], json!([]));
    assert_eq!(seqs(&body).len(), 3);
    // Stored and delivered live.
    let f = ws.expect("message.created", T).await;
    assert_eq!(f["message"]["title"], "Weekly");
    // Pending pushes: the loud user's digest and the quiet user's comment, not the quiet digest.
    let pending = query_json(
        &app.db_url,
        "SELECT p.user_id AS owner, m.title FROM push_pending p \
         JOIN t_message_real_time m ON m.id = p.message_id ORDER BY p.user_id COLLATE \"C\", m.title",
    )
    .await;
    let mut want = vec![
        json!({"owner": loud, "title": "Weekly"}),
        json!({"owner": quiet, "title": "Reply"}),
    ];
    want.sort_by_key(|v| v["owner"].as_str().unwrap_or_default().to_string());
    assert_eq!(pending, want);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_user_erases_their_preferences_and_their_place_in_stored_skipped_lists() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (u, v) = (new_user(), new_user());
    let r = put(&app, &u, json!({"types": {"marketing": {"in_app": false}}})).await;
    assert_eq!(r.status(), 200);
    created(&app, &json!({"to_user": u, "title": "welcome"})).await;
    let body = json!({"to_users": [u, v], "title": "Sale", "type": "marketing"});
    let first = app
        .post_as("/api/v1/messages", SERVICE_KEY, Some("erase-1"), &body)
        .await;
    assert_eq!(first.status(), 201);
    assert_eq!(
        first.json::<Value>().await.unwrap()["skipped"],
        muted(&[&u])
    );

    let r = app
        .http
        .delete(format!("{}/api/v1/users/{u}", app.base))
        .bearer_auth(SERVICE_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(app.user_json(&u, PATH).await, json!({"types": {}}));
    assert_eq!(
        rows_of(&app, "user_type_preference", "user_id", &u).await,
        0
    );
    // A replay no longer names the erased user anywhere.
    let again = app
        .post_as("/api/v1/messages", SERVICE_KEY, Some("erase-1"), &body)
        .await;
    assert_eq!(again.status(), 201);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["skipped"], json!([]), "{again}");
    assert!(!again.to_string().contains(&u), "{again}");
    app.stop().await;
}
