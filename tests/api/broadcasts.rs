//! Announcements (`POST /api/v1/broadcasts`, contract §8): one ordinary notification for every
//! user known when the broadcast was accepted, created in batches that survive a node dying,
//! never twice for one user.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(20);

/// A node whose announcement batches hold `batch` recipients.
async fn node_with_batch(db: &TestDb, opts: Opts, batch: i64) -> TestApp {
    spawn_app_with(db, opts, |s| s.broadcast_batch = batch).await
}

/// Makes `users` known (each gets one ordinary message).
async fn make_known(app: &TestApp, users: &[String]) {
    let r = app
        .post_messages(&json!({"to_users": users, "title": "welcome"}))
        .await;
    assert_eq!(r.status(), 201, "seeding users");
}

/// `n` user ids whose text order is their numeric order.
fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

async fn post_broadcast(
    app: &TestApp,
    service_key: &str,
    idempotency_key: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    app.post_as("/api/v1/broadcasts", service_key, idempotency_key, body)
        .await
}

/// POSTs an announcement as the test service, asserting `202 {"id","status":"running"}`; its id.
async fn announce(app: &TestApp, body: &Value) -> String {
    let r = post_broadcast(app, SERVICE_KEY, None, body).await;
    assert_eq!(r.status(), 202, "broadcast not accepted");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["status"], "running", "{v}");
    v["id"].as_str().expect("an id").to_string()
}

async fn progress(app: &TestApp, id: &str) -> Value {
    let r = app.service_get(&format!("/api/v1/broadcasts/{id}")).await;
    assert_eq!(r.status(), 200, "GET broadcast");
    r.json().await.expect("json")
}

async fn until_done(app: &TestApp, id: &str) -> Value {
    eventually(WAIT, "the broadcast to be done", || async {
        let p = progress(app, id).await;
        (p["status"] == "done").then_some(p)
    })
    .await
}

/// The users holding a notification of broadcast `id`, in order, one entry per row.
async fn recipients_in_db(db: &TestDb, id: &str) -> Vec<String> {
    query_json(
        &db.url,
        &format!(
            "SELECT to_user FROM t_message_real_time WHERE broadcast_id = '{id}' ORDER BY to_user"
        ),
    )
    .await
    .into_iter()
    .map(|r| r["to_user"].as_str().expect("to_user").to_string())
    .collect()
}

/// Sessions of this database waiting for a lock (a blocked batch or POST).
async fn lock_waiters(db: &TestDb) -> i64 {
    scalar_i64(
        &db.url,
        "SELECT count(*) AS v FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .await
}

async fn until_lock_waiters(db: &TestDb, n: i64) {
    eventually(WAIT, "sessions waiting on a lock", || async {
        (lock_waiters(db).await >= n).then_some(())
    })
    .await
}

async fn error_of(r: reqwest::Response) -> Value {
    let body: Value = r.json().await.expect("an error answer has a JSON body");
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "not the contract's error body: {body}"
    );
    body["error"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_reaches_every_known_user_once_live_and_in_the_counters() {
    let db = TestDb::new().await;
    let app = node_with_batch(&db, Opts::default(), 7).await;
    let users = numbered("k", 25);
    make_known(&app, &users).await;
    let mut online = app.ws(&users[12], None).await;
    online.expect("hello", WAIT).await;

    let id = announce(
        &app,
        &json!({"title": "Maintenance tonight", "content": "22:00-23:00 UTC", "type": "system",
                "skip_url": "/status", "data": {"window": 1}}),
    )
    .await;

    let live = online.expect("message.created", WAIT).await;
    assert_eq!(live["message"]["title"], "Maintenance tonight");
    assert_eq!(live["message"]["send_user"], Value::Null);
    assert_eq!(
        (live["seq"].as_i64(), live["unread"].as_i64()),
        (Some(2), Some(2))
    );

    let done = until_done(&app, &id).await;
    assert_eq!(
        done,
        json!({"id": id, "status": "done", "total": 25, "created": 25, "skipped": 0})
    );
    assert_eq!(
        recipients_in_db(&db, &id).await,
        users,
        "one row per known user"
    );
    // Ordinary notifications: the calling service, a seq, an event and exact counters each.
    let rows = query_json(
        &db.url,
        &format!(
            "SELECT m.to_user, m.service, m.seq, s.seq AS last_seq, s.unread, \
             (SELECT count(*) FROM t_message_real_time u WHERE u.to_user = m.to_user AND NOT u.is_read) AS unread_rows, \
             (SELECT count(*) FROM user_event e WHERE e.user_id = m.to_user AND e.seq = m.seq) AS events \
             FROM t_message_real_time m JOIN user_inbox_state s ON s.user_id = m.to_user \
             WHERE m.broadcast_id = '{id}'"
        ),
    )
    .await;
    for r in &rows {
        assert_eq!(r["service"], "test", "{r}");
        assert_eq!(
            (r["seq"].as_i64(), r["last_seq"].as_i64()),
            (Some(2), Some(2)),
            "{r}"
        );
        assert_eq!(
            (r["unread"].as_i64(), r["unread_rows"].as_i64()),
            (Some(2), Some(2)),
            "{r}"
        );
        assert_eq!(r["events"], 1, "{r}");
    }
    let page = app.user_json(&users[3], "/api/v1/me/messages").await;
    assert_eq!(page["messages"][0]["title"], "Maintenance tonight");
    app.stop().await;
}

/// The documented rule: recipients are the users whose inbox existed (was committed) when the
/// broadcast was accepted. A first-time user whose transaction was still running then, or who
/// appears afterwards, does not get it, even though both are committed before the worker
/// reaches their place in the user order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_who_were_not_yet_known_at_acceptance_do_not_get_it() {
    let db = TestDb::new().await;
    let app = node_with_batch(&db, Opts::default(), 1).await;
    let known: Vec<String> = ["b", "d", "f", "g"].map(String::from).to_vec();
    make_known(&app, &known).await;

    // A first-time user "c" in flight: its row is inserted, then the same POST waits for "d".
    let hold_d = hold_counters(&db, "d").await;
    let in_flight = {
        let (http, base) = (app.http.clone(), app.base.clone());
        tokio::spawn(async move {
            http.post(format!("{base}/api/v1/messages"))
                .bearer_auth(SERVICE_KEY)
                .json(&json!({"to_users": ["c", "d"], "title": "first"}))
                .send()
                .await
                .expect("POST")
                .status()
        })
    };
    until_lock_waiters(&db, 1).await;
    // The worker's first batch ("b") waits too, so nothing is created before both commit.
    let hold_b = hold_counters(&db, "b").await;

    let id = announce(&app, &json!({"title": "Hello everyone"})).await;
    assert_eq!(progress(&app, &id).await["total"], 4, "b, d, f, g");
    until_lock_waiters(&db, 2).await;

    app.send("e", "appears after acceptance").await;
    release(hold_d).await;
    assert_eq!(in_flight.await.expect("task"), 201);
    release(hold_b).await;

    let done = until_done(&app, &id).await;
    assert_eq!(
        (done["total"].as_i64(), done["created"].as_i64()),
        (Some(4), Some(4))
    );
    assert_eq!(recipients_in_db(&db, &id).await, known);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_and_body_give_the_same_broadcast_once() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let users = numbered("i", 5);
    make_known(&app, &users).await;
    let body = json!({"title": "New terms", "content": "Please read them"});

    let first = post_broadcast(&app, SERVICE_KEY, Some("terms-2026"), &body).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.expect("json");
    let again = post_broadcast(&app, SERVICE_KEY, Some("terms-2026"), &body).await;
    assert_eq!(again.status(), 202);
    assert_eq!(
        again
            .headers()
            .get("Idempotent-Replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["id"], first["id"]);

    let other = post_broadcast(
        &app,
        SERVICE_KEY,
        Some("terms-2026"),
        &json!({"title": "Something else"}),
    )
    .await;
    assert_eq!(other.status(), 409);
    assert_eq!(error_of(other).await["code"], "idempotency_conflict");
    // A key is per service: another service's use of it is its own broadcast.
    let theirs = post_broadcast(&app, OTHER_KEY, Some("terms-2026"), &body).await;
    assert_eq!(theirs.status(), 202);

    let id = first["id"].as_str().expect("id");
    until_done(&app, id).await;
    assert_eq!(count_rows(&db.url, "broadcast").await, 2);
    assert_eq!(recipients_in_db(&db, id).await, users, "one set of rows");
    app.stop().await;
}

/// A node dies while a batch is in flight (its transaction is cut off by the database): the
/// committed batches stay, the cut one leaves nothing, and another node finishes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_left_mid_way_by_a_dead_node_is_finished_by_another_without_duplicates() {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let first = node_with_batch(&db, Opts::in_cluster(&prefix), 10).await;
    let users = numbered("r", 100);
    make_known(&first, &users).await;
    // The fifth batch (r040..r049) will wait for r045's counter row.
    let hold = hold_counters(&db, "r045").await;
    let id = announce(&first, &json!({"title": "Resumable"})).await;
    until_lock_waiters(&db, 1).await;
    assert_eq!(progress(&first, &id).await["created"], 40);

    // The node goes away with that batch in flight: stopped, and its connection killed.
    first.stop().await;
    let killed = scalar_i64(
        &db.url,
        "SELECT count(pg_terminate_backend(pid)) AS v FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .await;
    assert_eq!(killed, 1);
    release(hold).await;
    let row = query_json(
        &db.url,
        &format!("SELECT created, cursor_user, done_at FROM broadcast WHERE id = '{id}'"),
    )
    .await;
    assert_eq!(
        row,
        vec![json!({"created": 40, "cursor_user": "r039", "done_at": null})]
    );
    assert_eq!(recipients_in_db(&db, &id).await, users[..40].to_vec());

    let second = node_with_batch(&db, Opts::in_cluster(&prefix), 10).await;
    let done = until_done(&second, &id).await;
    assert_eq!(
        (done["total"].as_i64(), done["created"].as_i64()),
        (Some(100), Some(100))
    );
    assert_eq!(
        recipients_in_db(&db, &id).await,
        users,
        "each user exactly once"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_working_the_same_broadcasts_create_no_duplicates() {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let a = node_with_batch(&db, Opts::in_cluster(&prefix), 5).await;
    let b = node_with_batch(&db, Opts::in_cluster(&prefix), 5).await;
    let users = numbered("t", 150);
    make_known(&a, &users).await;
    // One accepted on each node: both workers are woken and both claim batches of both.
    let (body_one, body_two) = (json!({"title": "one"}), json!({"title": "two"}));
    let (one, two) = tokio::join!(announce(&a, &body_one), announce(&b, &body_two));
    for id in [&one, &two] {
        let done = until_done(&a, id).await;
        assert_eq!(
            (done["total"].as_i64(), done["created"].as_i64()),
            (Some(150), Some(150))
        );
        assert_eq!(recipients_in_db(&db, id).await, users);
    }
    // Every user's stream stayed gap-free: 1 welcome + 2 announcements.
    let bad = scalar_i64(
        &db.url,
        "SELECT count(*) AS v FROM user_inbox_state s WHERE s.seq <> 3 OR s.unread <> 3 \
         OR (SELECT count(*) FROM user_event e WHERE e.user_id = s.user_id) <> 3",
    )
    .await;
    assert_eq!(bad, 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_broadcasts_are_refused_with_the_error_body_and_record_nothing() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    make_known(&app, &numbered("v", 3)).await;
    for (body, field) in [
        (json!({"to_user": "1", "title": "t"}), "to_user"),
        (json!({"to_users": ["1"], "title": "t"}), "to_users"),
        (json!({"content": "no title"}), "title"),
        (json!({"title": "x".repeat(201)}), "title"),
        (
            json!({"title": "t", "content": "x".repeat(8193)}),
            "content",
        ),
        (
            json!({"title": "t", "skip_url": "javascript:alert(1)"}),
            "skip_url",
        ),
        (
            json!({"title": "t", "data": {"k": "x".repeat(16 * 1024)}}),
            "data",
        ),
    ] {
        let r = post_broadcast(&app, SERVICE_KEY, None, &body).await;
        assert_eq!(r.status(), 422, "{body}");
        let e = error_of(r).await;
        assert_eq!(
            (e["code"].as_str(), e["field"].as_str()),
            (Some("validation_failed"), Some(field))
        );
    }
    let r = app
        .post_raw("/api/v1/broadcasts", Some(SERVICE_KEY), &[], "{nope")
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_of(r).await["code"], "malformed_json");
    let r = app
        .post_raw(
            "/api/v1/broadcasts",
            Some(SERVICE_KEY),
            &[],
            "x".repeat(200 * 1024),
        )
        .await;
    assert_eq!(r.status(), 413);
    error_of(r).await;
    let r = post_broadcast(&app, "wrong-key", None, &json!({"title": "t"})).await;
    assert_eq!(r.status(), 401);
    error_of(r).await;
    assert_eq!(count_rows(&db.url, "broadcast").await, 0);
    assert_eq!(count_rows(&db.url, "t_message_real_time").await, 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_is_visible_only_to_the_service_that_created_it() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let id = announce(&app, &json!({"title": "nobody known yet"})).await;
    let done = until_done(&app, &id).await;
    assert_eq!(
        (done["total"].as_i64(), done["created"].as_i64()),
        (Some(0), Some(0))
    );

    let theirs = app
        .http
        .get(format!("{}/api/v1/broadcasts/{id}", app.base))
        .bearer_auth(OTHER_KEY)
        .send()
        .await
        .expect("GET");
    assert_eq!(theirs.status(), 404);
    assert_eq!(error_of(theirs).await["code"], "not_found");
    for unknown in [uuid::Uuid::now_v7().to_string(), "not-an-id".to_string()] {
        let r = app
            .service_get(&format!("/api/v1/broadcasts/{unknown}"))
            .await;
        assert_eq!(r.status(), 404, "{unknown}");
        error_of(r).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_has_a_bounded_number_of_broadcasts_running() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), |s| s.max_running_broadcasts = 1).await;
    make_known(&app, &numbered("m", 3)).await;
    // The first broadcast's batch waits for m001: it stays running.
    let hold = hold_counters(&db, "m001").await;
    let id = announce(&app, &json!({"title": "first"})).await;
    until_lock_waiters(&db, 1).await;

    let r = post_broadcast(&app, SERVICE_KEY, None, &json!({"title": "second"})).await;
    assert_eq!(r.status(), 429);
    assert_eq!(error_of(r).await["code"], "too_many_broadcasts");
    // Another service's limit is its own.
    let r = post_broadcast(&app, OTHER_KEY, None, &json!({"title": "theirs"})).await;
    assert_eq!(r.status(), 202);

    release(hold).await;
    until_done(&app, &id).await;
    let r = post_broadcast(&app, SERVICE_KEY, None, &json!({"title": "second"})).await;
    assert_eq!(r.status(), 202, "room again once the first is done");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_answer_other_methods_with_405_and_head_like_get() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let id = announce(&app, &json!({"title": "t"})).await;
    for (method, path, allowed) in [
        (
            reqwest::Method::GET,
            "/api/v1/broadcasts".to_string(),
            "POST",
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/v1/broadcasts/{id}"),
            "GET, HEAD",
        ),
    ] {
        let r = app
            .http
            .request(method.clone(), format!("{}{path}", app.base))
            .bearer_auth(SERVICE_KEY)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(
            r.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allowed)
        );
        assert_eq!(error_of(r).await["code"], "method_not_allowed");
    }
    let head = app
        .http
        .head(format!("{}/api/v1/broadcasts/{id}", app.base))
        .bearer_auth(SERVICE_KEY)
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 200);
    app.stop().await;
}
