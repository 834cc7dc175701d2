//! Data lifecycle (contract §9): a service retracts a message it created, a user is erased, and
//! notifications past `NOTIFYD_MESSAGE_RETENTION` (and soft-deleted ones) are removed by the
//! housekeeper — each seen by real clients over real sockets.

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{json, Value};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(10);

async fn exec(db_url: &str, sql: &str) {
    let mut c = AsyncPgConnection::establish(db_url).await.expect("conn");
    diesel::sql_query(sql)
        .execute(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Two nodes of one cluster and a user with three messages (seq 3).
async fn two_nodes_and_a_user_at_seq_3() -> (TestDb, TestApp, TestApp, String) {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let a = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let b = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let u = new_user();
    for t in ["one", "two", "three"] {
        a.send(&u, t).await;
    }
    (db, a, b, u)
}

/// `n` messages to `u` in one request: their seqs are given in one statement.
async fn batch_to(app: &TestApp, u: &str, n: usize) {
    let batch: Vec<Value> = (1..=n)
        .map(|i| json!({"to_user": u, "title": format!("new {i}"), "type": "comment"}))
        .collect();
    assert_eq!(
        app.post_messages(&json!({"messages": batch}))
            .await
            .status(),
        201
    );
}

async fn delete_as(app: &TestApp, key: &str, path: &str) -> reqwest::Response {
    app.http
        .delete(format!("{}{path}", app.base))
        .bearer_auth(key)
        .send()
        .await
        .expect("DELETE")
}

/// Rows of `user` left in every per-user table.
async fn rows_of(db_url: &str, user: &str) -> Vec<(&'static str, i64)> {
    let mut left = vec![];
    for (table, column) in [
        ("t_message_real_time", "to_user"),
        ("user_event", "user_id"),
        ("user_inbox_state", "user_id"),
        ("outbox", "user_id"),
    ] {
        let sql = format!("SELECT count(*) AS v FROM {table} WHERE {column} = '{user}'");
        left.push((table, scalar_i64(db_url, &sql).await));
    }
    left
}

fn ids_of(frame: &Value) -> Vec<String> {
    frame["ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Retract: DELETE /api/v1/messages/{id}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_retracts_its_message_and_the_recipients_socket_gets_message_deleted() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let first = app.send(&u, "first").await;
    app.send(&u, "second").await;
    let mut client = app.ws(&u, None).await;
    let hello = client.expect("hello", WAIT).await;
    assert_eq!(
        (hello["seq"].clone(), hello["unread"].clone()),
        (json!(2), json!(2))
    );

    let id = first["id"].as_str().expect("id");
    let r = delete_as(&app, SERVICE_KEY, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(r.status(), 204);

    let f = client.expect("message.deleted", WAIT).await;
    assert_eq!(f["seq"], 3, "{f}");
    assert_eq!(
        (f["unread"].clone(), f["unseen"].clone()),
        (json!(1), json!(1)),
        "{f}"
    );
    assert_eq!(ids_of(&f), vec![id.to_string()]);
    assert_eq!(
        app.user_json(&u, "/api/v1/me/unread-count").await,
        json!({"unread": 1, "unseen": 1, "seq": 3})
    );
    let listed = app.user_json(&u, "/api/v1/me/messages").await;
    assert_eq!(
        listed["messages"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_ne!(listed["messages"][0]["id"], id);

    // Retracting it again (a retry, or a create replayed by its Idempotency-Key answering the
    // same id): done already, 204 again, and no second event.
    let r = delete_as(&app, SERVICE_KEY, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(r.status(), 204);
    assert!(
        client.next(Duration::from_millis(500)).await.is_none(),
        "no second event"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_service_cannot_retract_and_learns_nothing() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let m = app.send(&u, "mine").await;
    let id = m["id"].as_str().expect("id");
    let mut client = app.ws(&u, None).await;
    client.expect("hello", WAIT).await;

    // "other" did not create it: the same 404 body as an unknown id and as a malformed one.
    let foreign = delete_as(&app, OTHER_KEY, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(foreign.status(), 404);
    let foreign: Value = foreign.json().await.expect("json");
    let unknown = delete_as(
        &app,
        SERVICE_KEY,
        &format!("/api/v1/messages/{}", uuid::Uuid::now_v7()),
    )
    .await;
    assert_eq!(unknown.status(), 404);
    let unknown: Value = unknown.json().await.expect("json");
    let malformed = delete_as(&app, SERVICE_KEY, "/api/v1/messages/not-a-uuid").await;
    assert_eq!(malformed.status(), 404);
    let malformed: Value = malformed.json().await.expect("json");
    assert_eq!(foreign, unknown);
    assert_eq!(foreign, malformed);
    assert_eq!(foreign["error"]["code"], "not_found", "{foreign}");

    // The message stays, counts unchanged, the socket heard nothing.
    assert_eq!(
        app.user_json(&u, "/api/v1/me/unread-count").await,
        json!({"unread": 1, "unseen": 1, "seq": 1})
    );
    assert_eq!(
        scalar_i64(
            &db.url,
            &format!("SELECT count(*) AS v FROM t_message_real_time WHERE id = '{id}' AND deleted_at IS NULL")
        )
        .await,
        1
    );
    assert!(client.next(Duration::from_millis(500)).await.is_none());

    // A message the user already deleted: gone already, so its own service's retract is done
    // (204) and changes nothing; another service still learns nothing (404).
    assert_eq!(
        app.user_delete(&u, &format!("/api/v1/me/messages/{id}"))
            .await
            .status(),
        204
    );
    client.expect("message.deleted", WAIT).await;
    let r = delete_as(&app, SERVICE_KEY, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(r.status(), 204);
    assert!(
        client.next(Duration::from_millis(500)).await.is_none(),
        "no second event"
    );
    let r = delete_as(&app, OTHER_KEY, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(r.status(), 404);

    // Service-key auth and methods like every service route.
    assert_eq!(
        delete_as(&app, "nope", &format!("/api/v1/messages/{id}"))
            .await
            .status(),
        401
    );
    assert_eq!(
        delete_as(&app, "nope", &format!("/api/v1/users/{u}"))
            .await
            .status(),
        401
    );
    assert_eq!(
        app.service_get(&format!("/api/v1/messages/{id}"))
            .await
            .status(),
        405
    );
    assert_eq!(
        app.service_get(&format!("/api/v1/users/{u}"))
            .await
            .status(),
        405
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Erase: DELETE /api/v1/users/{id}

/// The erasure's reset notice is queued as an envelope (`x`, what this version's relay
/// publishes) and as `payload` jsonb, the form relays of every earlier version read: such a
/// relay, still leading during a rolling upgrade (or after a roll-back), reads only `frame` or
/// `payload` and, with no event at seq 0 to fall back on, would drop the notice, leaving the
/// user's sessions unreset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_erasure_notice_is_queued_in_the_form_every_relay_version_reads() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::no_relay()).await;
    let u = new_user();
    app.send(&u, "one").await;
    let r = delete_as(&app, SERVICE_KEY, &format!("/api/v1/users/{u}")).await;
    assert_eq!(r.status(), 204);
    let queued = query_json(
        &db.url,
        &format!("SELECT seq, payload, envelope FROM outbox WHERE user_id = '{u}' ORDER BY id"),
    )
    .await;
    assert_eq!(
        queued,
        vec![
            json!({"seq": 0, "payload": {"type": "sync", "reset": true, "seq": 0, "unread": 0, "unseen": 0}, "envelope": "x\n"})
        ]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_user_removes_every_row_and_resets_their_sockets_on_every_node() {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let a = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let b = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let (u, v) = (new_user(), new_user());
    let one = a.send(&u, "one").await;
    a.send(&u, "two").await;
    a.send(&v, "for v").await;
    // One request for both users, under an Idempotency-Key: its stored answer names u.
    let r = a
        .http
        .post(format!("{}/api/v1/messages", a.base))
        .bearer_auth(SERVICE_KEY)
        .header("Idempotency-Key", "both-1")
        .json(&json!({"to_users": [u, v], "title": "both", "type": "system"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 201);
    a.user_post_json(&u, "/api/v1/me/messages/read", json!({"ids": [one["id"]]}))
        .await;
    // u's stream: 3 created + 1 read = seq 4.
    let mut on_a = a.ws(&u, None).await;
    let mut on_b = b.ws(&u, None).await;
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(c.expect("hello", WAIT).await["seq"], 4);
    }

    let r = delete_as(&a, SERVICE_KEY, &format!("/api/v1/users/{u}")).await;
    assert_eq!(r.status(), 204);
    for c in [&mut on_a, &mut on_b] {
        let f = c.expect("sync", WAIT).await;
        assert_eq!(
            f,
            json!({"type": "sync", "reset": true, "seq": 0, "unread": 0, "unseen": 0, "epoch": 0})
        );
    }
    // Every row of u is gone; v's are all there.
    for (table, n) in rows_of(&db.url, &u).await {
        assert_eq!(n, 0, "{table} still holds rows of the erased user");
    }
    let kept = rows_of(&db.url, &v).await;
    assert_eq!(kept[0], ("t_message_real_time", 2));
    assert_eq!(kept[2], ("user_inbox_state", 1));
    let answer = scalar_text(
        &db.url,
        "SELECT response::text AS v FROM idempotency_key WHERE key = 'both-1'",
    )
    .await;
    assert!(
        !answer.contains(&u),
        "the stored answer still names u: {answer}"
    );
    assert!(answer.contains(&v), "v's entry was kept: {answer}");
    assert_eq!(
        a.user_json(&u, "/api/v1/me/unread-count").await,
        json!({"unread": 0, "unseen": 0, "seq": 0})
    );
    // Erasing again (nothing left) is fine.
    assert_eq!(
        delete_as(&b, SERVICE_KEY, &format!("/api/v1/users/{u}"))
            .await
            .status(),
        204
    );

    // A client that reconnects with the old inbox's seq is reset too.
    let mut back = b.ws(&u, Some(4)).await;
    assert_eq!(back.expect("hello", WAIT).await["seq"], 0);
    assert_eq!(back.expect("sync", WAIT).await["reset"], true);

    // The user comes back as a new inbox: seq 1 everywhere, on the still-open sockets too.
    let m = a.send(&u, "welcome back").await;
    assert_eq!(m["seq"], 1);
    for c in [&mut on_a, &mut on_b, &mut back] {
        let f = c.expect("message.created", WAIT).await;
        assert_eq!(
            (f["seq"].clone(), f["unread"].clone()),
            (json!(1), json!(1)),
            "{f}"
        );
    }
    a.stop().await;
    b.stop().await;
}

/// The subtle race: a gateway remembers the old inbox at seq 3 and the new inbox gets four
/// messages at once (seqs 1-4). Without the erase notice, seqs 1-3 would look like duplicates
/// and seq 4 like the next event of the old stream. Every socket must instead be reset before
/// it sees any event of the new inbox, then go on from the reset's seq with no hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_remembers_the_old_seq_resets_before_the_new_inbox_overtakes_it() {
    let (_db, a, b, u) = two_nodes_and_a_user_at_seq_3().await;
    // One socket on the node that takes the requests (local delivery), one on the other.
    let mut on_a = a.ws(&u, None).await;
    let mut on_b = b.ws(&u, None).await;
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(c.expect("hello", WAIT).await["seq"], 3);
    }
    assert_eq!(
        delete_as(&a, SERVICE_KEY, &format!("/api/v1/users/{u}"))
            .await
            .status(),
        204
    );
    batch_to(&a, &u, 4).await;

    for (name, c) in [("a", &mut on_a), ("b", &mut on_b)] {
        // Read until the new inbox's last event (seq 4) has been applied.
        let mut applied: Option<i64> = None;
        let deadline = tokio::time::Instant::now() + WAIT;
        while applied != Some(4) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(f) = c.next(left).await else {
                panic!(
                    "node {name}: stream ended at {applied:?}; saw {:?}",
                    c.frames
                );
            };
            let seq = f["seq"].as_i64().expect("seq");
            match (f["type"].as_str(), applied) {
                (Some("sync"), _) if f["reset"] == true => applied = Some(seq),
                (Some("message.created"), Some(at)) => {
                    assert_eq!(
                        seq,
                        at + 1,
                        "node {name}: hole or repeat; saw {:?}",
                        c.frames
                    );
                    applied = Some(seq);
                }
                _ => panic!("node {name}: {f} before the reset; saw {:?}", c.frames),
            }
        }
        assert_eq!(c.frames.last().map(|f| f["unread"].clone()), Some(json!(4)));
    }
    a.stop().await;
    b.stop().await;
}

/// The hole the inbox epoch closes: a client offline while its user was erased comes back with
/// the old inbox's `since`, which the new inbox has already passed. Its seqs 1..since are not
/// the new inbox's, so replaying what follows would leave the client with a list that mixes two
/// inboxes: with the `epoch` of its `hello` it gets a reset instead, on the socket and on REST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offline_during_an_erasure_resumes_into_a_reset_not_into_the_new_inbox() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    for t in ["one", "two", "three"] {
        app.send(&u, t).await;
    }
    let mut c = app.ws(&u, None).await;
    let hello = c.expect("hello", WAIT).await;
    let old_epoch = hello["epoch"]
        .as_i64()
        .expect("hello carries the inbox epoch");
    assert_eq!(
        (hello["seq"].as_i64(), old_epoch > 0),
        (Some(3), true),
        "{hello}"
    );
    c.close().await;

    let r = delete_as(&app, SERVICE_KEY, &format!("/api/v1/users/{u}")).await;
    assert_eq!(r.status(), 204);
    for i in 1..=5 {
        app.send(&u, &format!("new {i}")).await;
    }
    let new_epoch = crate::gateway::epoch_of(&db.url, &u).await;
    assert!(new_epoch > old_epoch, "{new_epoch} after {old_epoch}");

    let url = format!("{}&epoch={old_epoch}", app.ws_url(&token(&u), Some(3)));
    let mut back = WsClient::connect(&url).await.expect("connect");
    assert_eq!(back.expect("hello", WAIT).await["epoch"], new_epoch);
    assert_eq!(
        back.expect("sync", WAIT).await,
        json!({"type": "sync", "reset": true, "seq": 5, "unread": 5, "unseen": 5, "epoch": new_epoch})
    );
    assert_eq!(
        app.user_json(&u, &format!("/api/v1/me/changes?since=3&epoch={old_epoch}"))
            .await,
        json!({"reset": true, "seq": 5, "unread": 5, "unseen": 5, "epoch": new_epoch})
    );
    // With the new inbox's epoch the same `since` is a plain resume.
    let url = format!("{}&epoch={new_epoch}", app.ws_url(&token(&u), Some(3)));
    let mut same = WsClient::connect(&url).await.expect("connect");
    same.expect("hello", WAIT).await;
    let sync = same.expect("sync", WAIT).await;
    let seqs: Vec<i64> = sync["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![4, 5]);
    app.stop().await;
}

/// The erase notice lost on the way (here: an inbox replaced behind the service's back, with
/// no notice at all) and the new inbox overtaking the old seq in one batch: the gateway tells
/// the new inbox by the epoch its events carry and resets the sessions, instead of taking seqs
/// 4 and 5 of the new inbox for the continuation of the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_of_a_newer_inbox_resets_the_sessions_even_without_the_notice() {
    let (db, a, b, u) = two_nodes_and_a_user_at_seq_3().await;
    let mut on_b = b.ws(&u, None).await;
    assert_eq!(on_b.expect("hello", WAIT).await["seq"], 3);
    for table in [
        "t_message_real_time WHERE to_user",
        "user_event WHERE user_id",
        "user_inbox_state WHERE user_id",
    ] {
        exec(&db.url, &format!("DELETE FROM {table} = '{u}'")).await;
    }
    batch_to(&a, &u, 5).await;
    let f = on_b.next(WAIT).await.expect("a frame");
    assert_eq!(
        (&f["type"], &f["reset"], &f["seq"]),
        (&json!("sync"), &json!(true), &json!(5)),
        "the first frame after the new inbox's batch must be a reset; saw {:?}",
        on_b.frames
    );
    // Nothing of the new inbox follows as if it continued the old one (a wait that proves an
    // absence: the relayed copies of seqs 1-5 come within it, and must be dropped).
    let more = on_b.next(Duration::from_millis(700)).await;
    assert!(more.is_none(), "after the reset: {more:?}");
    a.stop().await;
    b.stop().await;
}

/// Found by an attacker's review: after an erasure's reset the gateway held no inbox (epoch 0)
/// and adopted the next event's epoch, so a late copy of the ERASED inbox's event (a relayed
/// copy, a local delivery that lost the race with the erasure's) reached the reset socket, or,
/// at a seq the log no longer held, closed it with 4008. It must be dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_copy_of_an_erased_inboxs_event_never_reaches_the_reset_sockets() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    app.send(&u, "one").await;
    let mut c = app.ws(&u, None).await;
    let old_epoch = c.expect("hello", WAIT).await["epoch"]
        .as_i64()
        .expect("epoch");
    let r = delete_as(&app, SERVICE_KEY, &format!("/api/v1/users/{u}")).await;
    assert_eq!(r.status(), 204);
    assert_eq!(c.expect("sync", WAIT).await["reset"], true);
    for seq in [1, 3] {
        let late = format!(
            "u {seq} {old_epoch} 0\n{}",
            json!({"type": "message.created", "seq": seq, "unread": 1, "unseen": 1,
                   "message": {"id": "01a2", "seq": seq, "title": "erased"}})
        );
        redis_publish(&app.user_channel(&u), &late).await;
    }
    // An absence: the two late copies arrive within this wait and must be dropped, and the
    // socket must stay open (a ping still gets its pong).
    c.send(&json!({"type": "ping", "ref": "after"})).await;
    let next = c.next(WAIT).await.expect("the pong");
    assert_eq!(
        (&next["type"], &next["ref"]),
        (&json!("pong"), &json!("after")),
        "a late copy of the erased inbox reached the socket: {next}"
    );
    // The relayed erase notice may reset the socket a second time (documented, harmless);
    // nothing else may come.
    while let Some(f) = c.next(Duration::from_millis(500)).await {
        assert_eq!(
            (&f["type"], &f["reset"]),
            (&json!("sync"), &json!(true)),
            "{f}"
        );
    }
    // The new inbox's first message still arrives, at seq 1.
    app.send(&u, "new").await;
    let f = c.expect("message.created", WAIT).await;
    assert_eq!(f["seq"], 1, "{f}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_refuses_an_id_no_user_can_have() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let long = "x".repeat(200);
    for id in ["a%00b", "a%20b", long.as_str()] {
        let r = delete_as(&app, SERVICE_KEY, &format!("/api/v1/users/{id}")).await;
        assert_eq!(r.status(), 422, "{id}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["field"], "id", "{body}");
    }
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Retention: NOTIFYD_MESSAGE_RETENTION and soft-deleted rows

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_past_retention_are_removed_and_the_badge_follows() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), |s| {
        s.message_retention = Duration::from_secs(3600);
        s.housekeeping_interval = Duration::from_millis(300);
    })
    .await;
    let u = new_user();
    let old_read = app.send(&u, "old, read").await;
    let old_unread = app.send(&u, "old, unread").await;
    let fresh = app.send(&u, "fresh").await;
    let gone = app.send(&u, "deleted by the user").await;
    app.user_post_json(
        &u,
        "/api/v1/me/messages/read",
        json!({"ids": [old_read["id"]]}),
    )
    .await;
    assert_eq!(
        app.user_delete(
            &u,
            &format!("/api/v1/me/messages/{}", gone["id"].as_str().unwrap())
        )
        .await
        .status(),
        204
    );
    // seq 6: 4 created, 1 read, 1 deleted; unread: old_unread and fresh.
    let mut client = app.ws(&u, None).await;
    let hello = client.expect("hello", WAIT).await;
    assert_eq!(
        (hello["seq"].clone(), hello["unread"].clone()),
        (json!(6), json!(2))
    );

    exec(
        &db.url,
        &format!(
            "UPDATE t_message_real_time SET send_time = now() - interval '2 hours' \
             WHERE id IN ('{}', '{}')",
            old_read["id"].as_str().unwrap(),
            old_unread["id"].as_str().unwrap()
        ),
    )
    .await;

    let f = client.expect("message.deleted", WAIT).await;
    assert_eq!(f["seq"], 7, "{f}");
    assert_eq!(
        ids_of(&f),
        vec![
            old_read["id"].as_str().unwrap().to_string(),
            old_unread["id"].as_str().unwrap().to_string()
        ],
        "both expired messages, in seq order"
    );
    assert_eq!(
        (f["unread"].clone(), f["unseen"].clone()),
        (json!(1), json!(1)),
        "{f}"
    );
    assert_eq!(
        app.user_json(&u, "/api/v1/me/unread-count").await,
        json!({"unread": 1, "unseen": 1, "seq": 7})
    );
    // The soft-deleted row is kept 24 h (a retried retract still finds it), then purged.
    let kept = query_json(
        &db.url,
        &format!(
            "SELECT id::text FROM t_message_real_time WHERE id = '{}'",
            gone["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(kept.len(), 1, "a row deleted just now is kept");
    exec(
        &db.url,
        &format!(
            "UPDATE t_message_real_time SET deleted_at = now() - interval '25 hours' WHERE id = '{}'",
            gone["id"].as_str().unwrap()
        ),
    )
    .await;
    // Only the fresh message is left; the soft-deleted row was purged as well.
    let left = eventually(WAIT, "the soft-deleted row purged", || async {
        let rows = query_json(
            &db.url,
            &format!("SELECT id::text FROM t_message_real_time WHERE to_user = '{u}'"),
        )
        .await;
        (rows.len() == 1).then_some(rows)
    })
    .await;
    assert_eq!(left[0]["id"], fresh["id"]);
    assert!(
        client.next(Duration::from_millis(800)).await.is_none(),
        "one event, once"
    );
    app.stop().await;
}

/// 5,000 expired messages of 500 users (one transaction per user) are removed while a live user's messages keep being
/// delivered promptly, and every expired user's counters end at zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_expiry_never_stalls_delivery() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), |s| {
        s.message_retention = Duration::from_secs(3600);
        s.housekeeping_interval = Duration::from_millis(500);
    })
    .await;
    exec(
        &db.url,
        "INSERT INTO user_inbox_state (user_id, seq, unread, unseen) \
         SELECT 'old' || u, 10, 10, 10 FROM generate_series(1, 500) u",
    )
    .await;
    exec(
        &db.url,
        "INSERT INTO t_message_real_time (id, to_user, seq, title, content, type, send_time, service) \
         SELECT gen_random_uuid(), 'old' || u, s, 't', 'c', 'x', now() - interval '2 hours', 'test' \
         FROM generate_series(1, 500) u, generate_series(1, 10) s",
    )
    .await;
    let u = new_user();
    let mut client = app.ws(&u, None).await;
    client.expect("hello", WAIT).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut seq = 0;
    let mut slowest = Duration::ZERO;
    loop {
        seq += 1;
        let started = std::time::Instant::now();
        app.send(&u, &format!("m{seq}")).await;
        let f = client.expect("message.created", WAIT).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(f["seq"], seq, "delivery during the expiry");
        let left = scalar_i64(
            &db.url,
            "SELECT count(*) AS v FROM t_message_real_time WHERE to_user LIKE 'old%'",
        )
        .await;
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} expired messages left after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seq > 1,
        "the expiry finished before any delivery was measured"
    );
    assert!(
        slowest < Duration::from_secs(3),
        "a POST-to-frame took {slowest:?} during the expiry"
    );
    assert_eq!(
        scalar_i64(
            &db.url,
            "SELECT count(*) AS v FROM user_inbox_state \
             WHERE user_id LIKE 'old%' AND ((unread, unseen) <> (0, 0) OR seq < 11)",
        )
        .await,
        0,
        "every expired user: told by message.deleted (seq 11 on), counts at zero"
    );
    app.stop().await;
}
