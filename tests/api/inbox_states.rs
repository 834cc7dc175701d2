//! Inbox states (contract §10): mark unread, archive, unarchive, snooze and a snooze's wake-up.
//! Each is a per-user seq event like read, with exact counts (archived and snoozed messages do
//! not count; unarchive, unsnooze and mark unread count them as unread and unseen again), over
//! REST and the WebSocket alike; the listing hides archived and snoozed messages unless asked
//! for them; a snooze wakes on whichever node survives.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const T: Duration = Duration::from_secs(15);

fn counts_of(v: &Value) -> (i64, i64, i64) {
    (
        v["seq"].as_i64().expect("seq"),
        v["unread"].as_i64().expect("unread"),
        v["unseen"].as_i64().expect("unseen"),
    )
}

fn listed_ids(page: &Value) -> Vec<Value> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].clone())
        .collect()
}

/// A verb over REST: its answer's counts, which the event on the user's socket carries too.
async fn verb(
    app: &TestApp,
    ws: &mut WsClient,
    user: &str,
    path: &str,
    body: Value,
    event: &str,
) -> (i64, i64, i64) {
    let answer = app
        .user_post_json(user, &format!("/api/v1/me/messages/{path}"), body)
        .await;
    let frame = ws.expect(event, T).await;
    assert_eq!(counts_of(&frame), counts_of(&answer), "{event}: {frame}");
    counts_of(&answer)
}

/// The ground truth behind the counters, from the rows: live, unread, neither archived nor
/// snoozed; unseen if it arrived after the bell was last opened.
async fn truth(app: &TestApp, user: &str) -> (i64, i64) {
    let unread = scalar_i64(
        &app.db_url,
        &format!(
            "SELECT count(*) AS v FROM t_message_real_time WHERE to_user = '{user}' \
             AND deleted_at IS NULL AND NOT is_read AND archived_at IS NULL AND snoozed_until IS NULL"
        ),
    )
    .await;
    let unseen = scalar_i64(
        &app.db_url,
        &format!(
            "SELECT count(*) AS v FROM t_message_real_time m, user_inbox_state s \
             WHERE s.user_id = m.to_user AND m.to_user = '{user}' AND m.deleted_at IS NULL \
             AND NOT m.is_read AND m.archived_at IS NULL AND m.snoozed_until IS NULL \
             AND coalesce(m.arrived_seq, m.seq) > s.seen_seq"
        ),
    )
    .await;
    (unread, unseen)
}

fn in_an_hour() -> String {
    (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_state_over_rest_is_a_seq_event_with_exact_counts_and_the_listing_follows() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (u, other) = (new_user(), new_user());
    let a = app.send(&u, "a").await["id"].clone();
    let b = app.send(&u, "b").await["id"].clone();
    let c = app.send(&u, "c").await["id"].clone();
    let foreign = app.send(&other, "not yours").await["id"].clone();
    let mut ws = app.ws(&u, None).await;
    assert_eq!(counts_of(&ws.expect("hello", T).await), (3, 3, 3));

    // Archived: out of the counts and the inbox listing, in the archived one.
    let archived = verb(
        &app,
        &mut ws,
        &u,
        "archive",
        json!({"ids": [a, foreign]}),
        "message.archived",
    )
    .await;
    assert_eq!(archived, (4, 2, 2));
    assert_eq!(ws.frames.last().expect("event")["ids"], json!([a]));
    let inbox = app.user_json(&u, "/api/v1/me/messages").await;
    assert_eq!(listed_ids(&inbox), vec![c.clone(), b.clone()]);
    assert!(inbox["messages"][0].get("archived_at").is_none());
    let shelf = app.user_json(&u, "/api/v1/me/messages?archived=true").await;
    assert_eq!(listed_ids(&shelf), vec![a.clone()]);
    assert!(shelf["messages"][0]["archived_at"].is_string());

    // The bell is opened; unarchived, `a` is unread and unseen again.
    assert_eq!(
        counts_of(
            &app.user_post_json(&u, "/api/v1/me/messages/seen-all", json!({}))
                .await
        ),
        (5, 2, 0)
    );
    let unarchived = verb(
        &app,
        &mut ws,
        &u,
        "unarchive",
        json!({"ids": [a]}),
        "message.unarchived",
    )
    .await;
    assert_eq!(unarchived, (6, 3, 1));
    assert!(
        app.user_json(&u, "/api/v1/me/messages?archived=true").await["messages"]
            .as_array()
            .expect("messages")
            .is_empty()
    );

    // Read then marked unread: unread and unseen again.
    let read = verb(
        &app,
        &mut ws,
        &u,
        "read",
        json!({"ids": [b]}),
        "message.read",
    )
    .await;
    assert_eq!(read, (7, 2, 1));
    let unread = verb(
        &app,
        &mut ws,
        &u,
        "unread",
        json!({"ids": [b, foreign]}),
        "message.unread",
    )
    .await;
    assert_eq!(unread, (8, 3, 2));
    assert_eq!(ws.frames.last().expect("event")["ids"], json!([b]));
    let page = app.user_json(&u, "/api/v1/me/messages").await;
    let listed_b = &page["messages"].as_array().expect("messages")[1];
    assert_eq!(
        (listed_b["id"].clone(), listed_b["is_read"].clone()),
        (b.clone(), json!(false))
    );

    // Snoozed: `c` (seen before) leaves `unread` only; the event says until when.
    let until = in_an_hour();
    let snoozed = verb(
        &app,
        &mut ws,
        &u,
        "snooze",
        json!({"ids": [c], "until": until}),
        "message.snoozed",
    )
    .await;
    assert_eq!(snoozed, (9, 2, 2));
    let frame = ws.frames.last().expect("event").clone();
    assert_eq!(frame["ids"], json!([c]));
    let said: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(frame["until"].clone()).expect("until");
    // Kept to the microsecond, as PostgreSQL stores it.
    let asked: chrono::DateTime<chrono::Utc> = until.parse().expect("until");
    assert_eq!(said, chrono::SubsecRound::trunc_subsecs(asked, 6));
    assert_eq!(
        listed_ids(&app.user_json(&u, "/api/v1/me/messages").await),
        vec![b.clone(), a.clone()]
    );
    let shelf = app.user_json(&u, "/api/v1/me/messages?snoozed=true").await;
    assert_eq!(listed_ids(&shelf), vec![c.clone()]);
    assert!(shelf["messages"][0]["snoozed_until"].is_string());

    // Archiving a snoozed message drops its snooze; counts unchanged (it did not count).
    let archived = verb(
        &app,
        &mut ws,
        &u,
        "archive",
        json!({"ids": [c]}),
        "message.archived",
    )
    .await;
    assert_eq!(archived, (10, 2, 2));
    // Both filters: everything out of the inbox (`a` is back in it, `b` never left).
    let aside = app
        .user_json(&u, "/api/v1/me/messages?archived=true&snoozed=true")
        .await;
    assert_eq!(listed_ids(&aside), vec![c.clone()]);
    assert!(
        app.user_json(&u, "/api/v1/me/messages?snoozed=true").await["messages"]
            .as_array()
            .expect("messages")
            .is_empty()
    );

    // Nothing to change (already archived, already unread, someone else's): no event, same seq.
    for (path, body) in [
        ("archive", json!({"ids": [c]})),
        ("unread", json!({"ids": [a]})),
        ("unarchive", json!({"ids": [b, foreign]})),
        ("snooze", json!({"ids": [foreign], "until": in_an_hour()})),
    ] {
        let answer = app
            .user_post_json(&u, &format!("/api/v1/me/messages/{path}"), body)
            .await;
        assert_eq!(counts_of(&answer), (10, 2, 2), "{path}");
    }
    assert!(
        ws.next(Duration::from_millis(500)).await.is_none(),
        "an event for no change"
    );
    assert_eq!(
        counts_of(&app.user_json(&u, "/api/v1/me/unread-count").await),
        (10, 2, 2)
    );
    assert_eq!(truth(&app, &u).await, (2, 2));
    assert_eq!(
        truth(&app, &other).await,
        (1, 1),
        "another user's message was changed"
    );

    // Deleting an archived unread message leaves the counts alone: it did not count.
    let r = app
        .user_delete(
            &u,
            &format!("/api/v1/me/messages/{}", c.as_str().expect("id")),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        counts_of(&ws.expect("message.deleted", T).await),
        (11, 2, 2)
    );
    assert_eq!(truth(&app, &u).await, (2, 2));

    // The change stream replays every one of them, gap-free.
    let changes = app.user_json(&u, "/api/v1/me/changes?since=3").await;
    let types: Vec<Value> = changes["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(
        types,
        json!([
            "message.archived",
            "message.seen_all",
            "message.unarchived",
            "message.read",
            "message.unread",
            "message.snoozed",
            "message.archived",
            "message.deleted"
        ])
        .as_array()
        .expect("list")
        .clone()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_state_over_the_websocket_is_acked_with_the_counts_and_reaches_every_session() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let a = app.send(&u, "a").await["id"].clone();
    let b = app.send(&u, "b").await["id"].clone();
    let mut ws = app.ws(&u, None).await;
    let mut other_tab = app.ws(&u, None).await;
    ws.expect("hello", T).await;
    other_tab.expect("hello", T).await;

    let steps = [
        (
            json!({"type": "archive", "ids": [a], "ref": "c1"}),
            "message.archived",
            (3, 1, 1),
        ),
        (
            json!({"type": "unarchive", "ids": [a], "ref": "c2"}),
            "message.unarchived",
            (4, 2, 2),
        ),
        (
            json!({"type": "read", "ids": [b], "ref": "c3"}),
            "message.read",
            (5, 1, 1),
        ),
        (
            json!({"type": "unread", "ids": [b], "ref": "c4"}),
            "message.unread",
            (6, 2, 2),
        ),
        (
            json!({"type": "snooze", "ids": [a, b], "until": in_an_hour(), "ref": "c5"}),
            "message.snoozed",
            (7, 0, 0),
        ),
    ];
    for (command, event, counts) in steps {
        ws.send(&command).await;
        let ack = ws.expect("ack", T).await;
        assert_eq!(ack["ref"], command["ref"]);
        assert_eq!(counts_of(&ack), counts, "{command}");
        for socket in [&mut ws, &mut other_tab] {
            let frame = socket.expect(event, T).await;
            assert_eq!(counts_of(&frame), counts, "{event}");
        }
    }
    assert_eq!(ws.frames.last().expect("event")["ids"], json!([a, b]));
    assert_eq!(truth(&app, &u).await, (0, 0));

    // A bad `until` or `ids` is refused with the frame's ref, changing nothing.
    for (command, code) in [
        (
            json!({"type": "snooze", "ids": [a], "until": "tomorrow", "ref": "e1"}),
            "validation_failed",
        ),
        (
            json!({"type": "snooze", "ids": [a], "ref": "e2"}),
            "validation_failed",
        ),
        (
            json!({"type": "archive", "ids": "x", "ref": "e3"}),
            "bad_frame",
        ),
        (
            json!({"type": "unread", "ids": [1], "ref": "e4"}),
            "validation_failed",
        ),
    ] {
        ws.send(&command).await;
        let error = ws.expect("error", T).await;
        assert_eq!(error["ref"], command["ref"], "{command}");
        assert_eq!(error["error"]["code"], code, "{command}: {error}");
    }
    assert_eq!(
        counts_of(&app.user_json(&u, "/api/v1/me/unread-count").await),
        (7, 0, 0)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_and_filters_are_refused_with_422() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let a = app.send(&u, "a").await["id"].clone();
    for (path, body, field) in [
        ("archive", json!({}), "ids"),
        ("unarchive", json!({"ids": null}), "ids"),
        ("unread", json!({"ids": vec![a.clone(); 1001]}), "ids"),
        ("snooze", json!({"ids": [a]}), "until"),
        ("snooze", json!({"ids": [a], "until": 5}), "until"),
        (
            "snooze",
            json!({"ids": [a], "until": "2026-13-01T00:00:00Z"}),
            "until",
        ),
    ] {
        let r = app
            .user_post(&u, &format!("/api/v1/me/messages/{path}"), body.clone())
            .await;
        assert_eq!(r.status(), 422, "{path} {body}");
        let err: Value = r.json().await.expect("json");
        assert_eq!(err["error"]["field"], field, "{path} {body}: {err}");
    }
    let r = app.user_get(&u, "/api/v1/me/messages?archived=maybe").await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        counts_of(&app.user_json(&u, "/api/v1/me/unread-count").await),
        (1, 1, 1)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snooze_comes_back_unread_and_unseen_when_its_time_passes() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let a = app.send(&u, "a").await["id"].clone();
    let b = app.send(&u, "b").await["id"].clone();
    app.user_post_json(&u, "/api/v1/me/messages/read", json!({"ids": [a]}))
        .await;
    app.user_post_json(&u, "/api/v1/me/messages/seen-all", json!({}))
        .await;
    let mut ws = app.ws(&u, None).await;
    assert_eq!(counts_of(&ws.expect("hello", T).await), (4, 1, 0));

    let until = (chrono::Utc::now() + chrono::TimeDelta::seconds(2)).to_rfc3339();
    let snoozed = verb(
        &app,
        &mut ws,
        &u,
        "snooze",
        json!({"ids": [a, b], "until": until}),
        "message.snoozed",
    )
    .await;
    assert_eq!(snoozed, (5, 0, 0));
    assert!(listed_ids(&app.user_json(&u, "/api/v1/me/messages").await).is_empty());

    let woken = ws.expect("message.unsnoozed", T).await;
    assert!(
        chrono::Utc::now()
            >= until
                .parse::<chrono::DateTime<chrono::Utc>>()
                .expect("until")
    );
    assert_eq!(
        counts_of(&woken),
        (6, 2, 2),
        "both back unread and unseen: {woken}"
    );
    let mut ids: Vec<Value> = woken["ids"].as_array().expect("ids").clone();
    ids.sort_by_key(|v| v.to_string());
    let mut want = vec![a.clone(), b.clone()];
    want.sort_by_key(|v| v.to_string());
    assert_eq!(ids, want);
    let page = app.user_json(&u, "/api/v1/me/messages").await;
    assert_eq!(listed_ids(&page), vec![b.clone(), a.clone()]);
    assert!(page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .all(|m| m["is_read"] == false && m.get("snoozed_until").is_none()));
    assert_eq!(truth(&app, &u).await, (2, 2));
    assert!(
        ws.next(Duration::from_millis(1500)).await.is_none(),
        "woken twice"
    );
    app.stop().await;
}

/// The node that took the snooze is a real `notifyd serve` process, killed with SIGKILL before
/// the snooze is due (no shutdown, no goodbye). The other node, sharing the database, wakes it:
/// the user's socket there gets exactly one `message.unsnoozed`, in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snooze_wakes_on_the_surviving_node_after_the_one_that_took_it_is_killed() {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let port = crate::binary::free_port();
    let mut env = crate::binary::node_env(&db, port);
    for (k, v) in env.iter_mut() {
        if k == "NOTIFYD_REDIS_PREFIX" {
            *v = prefix.clone();
        }
    }
    let mut first = crate::binary::Notifyd::start(&["serve"], &env, port);
    first.healthy().await;
    let second = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let u = new_user();
    let a = second.send(&u, "a").await["id"].clone();
    let mut ws = second.ws(&u, None).await;
    assert_eq!(counts_of(&ws.expect("hello", T).await), (1, 1, 1));

    let until = (chrono::Utc::now() + chrono::TimeDelta::seconds(3)).to_rfc3339();
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/api/v1/me/messages/snooze", first.base))
        .bearer_auth(token(&u))
        .json(&json!({"ids": [a], "until": until}))
        .send()
        .await
        .expect("snooze on the first node")
        .json()
        .await
        .expect("json");
    assert_eq!(counts_of(&answer), (2, 0, 0));
    first.child.kill().await.expect("kill -9 the first node");
    assert_eq!(counts_of(&ws.expect("message.snoozed", T).await), (2, 0, 0));

    let woken = ws.expect("message.unsnoozed", T).await;
    assert!(
        chrono::Utc::now()
            >= until
                .parse::<chrono::DateTime<chrono::Utc>>()
                .expect("until")
    );
    assert_eq!(counts_of(&woken), (3, 1, 1));
    assert_eq!(woken["ids"], json!([a]));
    assert!(
        ws.next(Duration::from_secs(2)).await.is_none(),
        "woken twice"
    );
    assert_eq!(truth(&second, &u).await, (1, 1));
    let changes = second.user_json(&u, "/api/v1/me/changes?since=0").await;
    let seqs: Vec<i64> = changes["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    second.stop().await;
}

/// Read, archive, unarchive, mark unread and snooze of the same messages from several callers
/// at once: every change is serialised on the user's counter row, so the counters equal what
/// the rows say and the seqs have no holes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_when_states_of_the_same_messages_race() {
    let db = TestDb::new().await;
    let app = std::sync::Arc::new(spawn_app(&db, Opts::default()).await);
    let u = new_user();
    let mut ids = vec![];
    for i in 0..8 {
        ids.push(app.send(&u, &format!("m{i}")).await["id"].clone());
    }
    let verbs = [
        "read",
        "archive",
        "unread",
        "unarchive",
        "snooze",
        "seen-all",
    ];
    let mut callers = vec![];
    for caller in 0..4usize {
        let (app, u, ids) = (app.clone(), u.clone(), ids.clone());
        callers.push(tokio::spawn(async move {
            for step in 0..30usize {
                let verb = verbs[(caller * 7 + step * 5) % verbs.len()];
                let pick = vec![
                    ids[(caller + step) % 8].clone(),
                    ids[(caller * 3 + step * 2) % 8].clone(),
                ];
                let body = match verb {
                    "snooze" => json!({"ids": pick, "until": in_an_hour()}),
                    _ => json!({ "ids": pick }),
                };
                let r = app
                    .user_post(&u, &format!("/api/v1/me/messages/{verb}"), body)
                    .await;
                assert_eq!(r.status(), 200, "{verb}");
            }
        }));
    }
    for c in callers {
        c.await.expect("caller");
    }
    let counts = counts_of(&app.user_json(&u, "/api/v1/me/unread-count").await);
    assert_eq!(
        (counts.1, counts.2),
        truth(&app, &u).await,
        "counters drifted from the rows"
    );
    let changes = app.user_json(&u, "/api/v1/me/changes?since=0").await;
    let events = changes["events"].as_array().expect("events");
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=counts.0).collect::<Vec<_>>());
    assert_eq!(counts_of(events.last().expect("an event")), counts);
    app.stop().await;
}

/// The SSE transport carries the same events: each state change is an `event:` of its type with
/// `id: <seq>`, and the stream resumes past it like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_events_reach_an_sse_stream_with_their_seq_as_id() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let a = app.send(&u, "a").await["id"].clone();
    let mut s = app.sse(&u, "").await; // after its `hello`
    for (path, body, event, seq) in [
        ("archive", json!({"ids": [a]}), "message.archived", 2),
        ("unarchive", json!({"ids": [a]}), "message.unarchived", 3),
        (
            "snooze",
            json!({"ids": [a], "until": in_an_hour()}),
            "message.snoozed",
            4,
        ),
    ] {
        let answer = app
            .user_post_json(&u, &format!("/api/v1/me/messages/{path}"), body)
            .await;
        let ev = s.expect(event, T).await;
        assert_eq!(ev.seq_id(), Some(seq), "{event}");
        assert_eq!(counts_of(&ev.json()), counts_of(&answer), "{event}");
    }
    app.stop().await;
}
