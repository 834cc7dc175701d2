//! The user API (contract §4) and presence: the caller's own inbox over REST, with the same
//! per-user seq and counts as the WebSocket, and cluster-wide presence.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const T: Duration = Duration::from_secs(15);

fn seqs(page: &Value) -> Vec<i64> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_i64().expect("seq"))
        .collect()
}

fn ids(page: &Value) -> Vec<Value> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].clone())
        .collect()
}

async fn counts(app: &TestApp, user: &str) -> Value {
    app.user_json(user, "/api/v1/me/unread-count").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_list_newest_first_in_keyset_pages_with_an_unread_only_filter() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let other = new_user();
    let mut created = vec![];
    for i in 1..=5 {
        created.push(app.send(&u, &format!("m{i}")).await);
        app.send(&other, "not yours").await;
    }

    let all = app.user_json(&u, "/api/v1/me/messages").await;
    assert_eq!(seqs(&all), vec![5, 4, 3, 2, 1]);
    assert_eq!(all["next_before"], Value::Null);
    let titles: Vec<&str> = all["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["m5", "m4", "m3", "m2", "m1"]);
    assert_eq!(
        ids(&all),
        created
            .iter()
            .rev()
            .map(|c| c["id"].clone())
            .collect::<Vec<_>>()
    );

    let p1 = app.user_json(&u, "/api/v1/me/messages?limit=2").await;
    assert_eq!((seqs(&p1), &p1["next_before"]), (vec![5, 4], &json!(4)));
    let p2 = app
        .user_json(&u, "/api/v1/me/messages?limit=2&before=4")
        .await;
    assert_eq!((seqs(&p2), &p2["next_before"]), (vec![3, 2], &json!(2)));
    let p3 = app
        .user_json(&u, "/api/v1/me/messages?limit=2&before=2")
        .await;
    assert_eq!((seqs(&p3), &p3["next_before"]), (vec![1], &Value::Null));
    // A page that ends exactly at the last message has no next page either.
    let exact = app.user_json(&u, "/api/v1/me/messages?limit=5").await;
    assert_eq!(
        (seqs(&exact).len(), &exact["next_before"]),
        (5, &Value::Null)
    );

    let read = app
        .user_post_json(
            &u,
            "/api/v1/me/messages/read",
            json!({"ids": [created[1]["id"], created[3]["id"]]}),
        )
        .await;
    assert_eq!(read["unread"], 3);
    let unread = app
        .user_json(&u, "/api/v1/me/messages?unread_only=true")
        .await;
    assert_eq!(
        (seqs(&unread), &unread["next_before"]),
        (vec![5, 3, 1], &Value::Null)
    );
    let u1 = app
        .user_json(&u, "/api/v1/me/messages?unread_only=true&limit=2")
        .await;
    assert_eq!((seqs(&u1), &u1["next_before"]), (vec![5, 3], &json!(3)));
    let u2 = app
        .user_json(&u, "/api/v1/me/messages?unread_only=true&limit=2&before=3")
        .await;
    assert_eq!((seqs(&u2), &u2["next_before"]), (vec![1], &Value::Null));
    // Read messages stay in the full list, marked read.
    let all = app.user_json(&u, "/api/v1/me/messages").await;
    let m4 = &all["messages"][1];
    assert_eq!((&m4["seq"], &m4["is_read"]), (&json!(4), &json!(true)));
    assert!(m4["read_at"].is_string());

    for bad in [
        "limit=0",
        "limit=",
        "before=",
        "limit=101",
        "limit=ten",
        "before=-1",
        "unread_only=maybe",
    ] {
        let r = app
            .user_get(&u, &format!("/api/v1/me/messages?{bad}"))
            .await;
        assert_eq!(r.status(), 422, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "validation_failed", "{bad}");
        assert_eq!(
            body["error"]["field"],
            bad.split('=').next().unwrap(),
            "{bad}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_inbox_change_bumps_seq_by_exactly_one_and_a_no_op_does_not() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (u, other) = (new_user(), new_user());
    let m1 = app.send(&u, "m1").await;
    let m2 = app.send(&u, "m2").await;
    app.send(&u, "m3").await;
    let foreign = app.send(&other, "not yours").await;
    assert_eq!(
        counts(&app, &u).await,
        json!({"unread": 3, "unseen": 3, "seq": 3})
    );

    let read =
        |ids: Value| app.user_post_json(&u, "/api/v1/me/messages/read", json!({ "ids": ids }));
    assert_eq!(
        read(json!([m1["id"]])).await,
        json!({"seq": 4, "unread": 2, "unseen": 2})
    );
    // Already read: nothing changes, no new seq.
    assert_eq!(
        read(json!([m1["id"]])).await,
        json!({"seq": 4, "unread": 2, "unseen": 2})
    );
    assert_eq!(
        read(json!([foreign["id"], "not-a-uuid"])).await,
        json!({"seq": 4, "unread": 2, "unseen": 2})
    );
    assert_eq!(
        counts(&app, &u).await,
        json!({"unread": 2, "unseen": 2, "seq": 4})
    );

    let seen_all = || app.user_post_json(&u, "/api/v1/me/messages/seen-all", json!({}));
    assert_eq!(
        seen_all().await,
        json!({"seq": 5, "unread": 2, "unseen": 0})
    );
    assert_eq!(
        seen_all().await,
        json!({"seq": 5, "unread": 2, "unseen": 0})
    );

    let m4 = app.send(&u, "m4").await;
    assert_eq!(m4["seq"], 6);
    assert_eq!(
        counts(&app, &u).await,
        json!({"unread": 3, "unseen": 1, "seq": 6})
    );

    // Deleting an unread message that was seen: unread drops, unseen does not.
    let r = app
        .user_delete(
            &u,
            &format!("/api/v1/me/messages/{}", m2["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        counts(&app, &u).await,
        json!({"unread": 2, "unseen": 1, "seq": 7})
    );
    let listed = app.user_json(&u, "/api/v1/me/messages").await;
    assert!(
        !ids(&listed).contains(&m2["id"]),
        "deleted message still listed"
    );
    assert_eq!(seqs(&listed), vec![6, 3, 1]);
    // Deleting it again, or an id that is not a message, is a 204 no-op.
    for id in [
        m2["id"].as_str().unwrap(),
        "not-a-uuid",
        "00000000-0000-7000-8000-000000000000",
    ] {
        let r = app
            .user_delete(&u, &format!("/api/v1/me/messages/{id}"))
            .await;
        assert_eq!(r.status(), 204, "{id}");
    }
    assert_eq!(
        counts(&app, &u).await,
        json!({"unread": 2, "unseen": 1, "seq": 7})
    );

    // Deleting another user's message: 204, and nothing changes for anyone.
    let r = app
        .user_delete(
            &u,
            &format!("/api/v1/me/messages/{}", foreign["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        counts(&app, &other).await,
        json!({"unread": 1, "unseen": 1, "seq": 1})
    );
    assert_eq!(
        ids(&app.user_json(&other, "/api/v1/me/messages").await),
        vec![foreign["id"].clone()]
    );
    assert_eq!(
        counts(&app, &u).await,
        json!({"unread": 2, "unseen": 1, "seq": 7})
    );

    // Deleting an unread, unseen message: both drop.
    let r = app
        .user_delete(
            &u,
            &format!("/api/v1/me/messages/{}", m4["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        counts(&app, &u).await,
        json!({"unread": 1, "unseen": 0, "seq": 8})
    );

    let read_all = || app.user_post_json(&u, "/api/v1/me/messages/read-all", json!({}));
    assert_eq!(
        read_all().await,
        json!({"seq": 9, "unread": 0, "unseen": 0})
    );
    assert_eq!(
        read_all().await,
        json!({"seq": 9, "unread": 0, "unseen": 0})
    );
    let listed = app.user_json(&u, "/api/v1/me/messages").await;
    assert!(listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["is_read"] == true));

    // One stored event per change, seq 1..=9 with no holes.
    let q = |what: &str| format!("SELECT {what} AS v FROM user_event WHERE user_id = '{u}'");
    assert_eq!(scalar_i64(&db.url, &q("count(*)")).await, 9);
    assert_eq!(scalar_i64(&db.url, &q("max(seq)")).await, 9);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_since_n_are_exactly_the_frames_the_socket_received_after_n() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut ws = app.ws(&u, None).await;
    assert_eq!(ws.next_of("hello", T).await["seq"], 0);

    let m1 = app.send(&u, "m1").await;
    let m2 = app.send(&u, "m2").await;
    app.send(&u, "m3").await;
    app.user_post_json(&u, "/api/v1/me/messages/read", json!({"ids": [m1["id"]]}))
        .await;
    app.user_post_json(&u, "/api/v1/me/messages/seen-all", json!({}))
        .await;
    let r = app
        .user_delete(
            &u,
            &format!("/api/v1/me/messages/{}", m2["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(r.status(), 204);
    app.user_post_json(&u, "/api/v1/me/messages/read-all", json!({}))
        .await;

    let types = [
        "message.created",
        "message.created",
        "message.created",
        "message.read",
        "message.seen_all",
        "message.deleted",
        "message.read_all",
    ];
    let mut frames = vec![];
    for ty in types {
        frames.push(ws.next_of(ty, T).await);
    }
    let seqs: Vec<i64> = frames.iter().map(|f| f["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());

    let epoch = crate::gateway::epoch_of(&db.url, &u).await;
    assert!(
        epoch > 1,
        "a new inbox's epoch is its creation time in µs: {epoch}"
    );
    let all = app.user_json(&u, "/api/v1/me/changes?since=0").await;
    assert_eq!(
        all,
        json!({"seq": 7, "unread": 0, "unseen": 0, "epoch": epoch, "events": frames})
    );
    let tail = app.user_json(&u, "/api/v1/me/changes?since=3").await;
    assert_eq!(
        tail,
        json!({"seq": 7, "unread": 0, "unseen": 0, "epoch": epoch, "events": frames[3..]})
    );
    // The same with the epoch the client holds; another epoch is another inbox: a reset.
    let same = format!("/api/v1/me/changes?since=3&epoch={epoch}");
    assert_eq!(app.user_json(&u, &same).await, tail);
    let other = format!("/api/v1/me/changes?since=3&epoch={}", epoch - 1);
    assert_eq!(
        app.user_json(&u, &other).await,
        json!({"reset": true, "seq": 7, "unread": 0, "unseen": 0, "epoch": epoch})
    );
    let none = app.user_json(&u, "/api/v1/me/changes?since=7").await;
    assert_eq!(
        none,
        json!({"seq": 7, "unread": 0, "unseen": 0, "epoch": epoch, "events": []})
    );
    // Without since: everything (since=0).
    assert_eq!(app.user_json(&u, "/api/v1/me/changes").await, all);
    // An empty value is not the parameter left out: the document says integer (schemathesis).
    for bad in [
        "since=-1",
        "since=x",
        "since=",
        "since=1&epoch=-1",
        "since=1&epoch=x",
    ] {
        let r = app.user_get(&u, &format!("/api/v1/me/changes?{bad}")).await;
        assert_eq!(r.status(), 422, "{bad}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_a_users_sockets_across_nodes_and_drops_them_when_they_close() {
    let db = TestDb::new().await;
    let p = new_prefix();
    let opts = Opts::in_cluster(&p);
    let node_a = spawn_app(&db, opts.clone()).await;
    let node_b = spawn_app(
        &db,
        Opts {
            node_id: format!("b-{}", new_user()),
            ..opts
        },
    )
    .await;
    let u = new_user();
    let offline = json!({"online": false, "connections": 0});
    assert_eq!(node_a.presence(&u).await, offline);
    let r = node_a
        .http
        .get(format!("{}/api/v1/users/{u}/presence", node_a.base))
        .bearer_auth(token(&u))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "presence needs a service key, not a user token"
    );

    let wait_for = |node: &'static str, want: Value| {
        let app = if node == "a" { &node_a } else { &node_b };
        let user = u.clone();
        async move {
            eventually(T, &format!("presence {want} seen from node {node}"), || {
                let want = want.clone();
                let user = user.clone();
                async move { (app.presence(&user).await == want).then_some(()) }
            })
            .await
        }
    };

    let mut a1 = node_a.ws(&u, None).await;
    let mut a2 = node_a.ws(&u, None).await;
    a1.next_of("hello", T).await;
    a2.next_of("hello", T).await;
    wait_for("a", json!({"online": true, "connections": 2})).await;

    let mut b1 = node_b.ws(&u, None).await;
    b1.next_of("hello", T).await;
    wait_for("a", json!({"online": true, "connections": 3})).await;
    wait_for("b", json!({"online": true, "connections": 3})).await;

    a1.close().await;
    wait_for("b", json!({"online": true, "connections": 2})).await;
    a2.close().await;
    b1.close().await;
    wait_for("a", offline.clone()).await;
    wait_for("b", offline).await;
    node_a.stop().await;
    node_b.stop().await;
}

/// Found by schemathesis: `{"ids": [{}]}` answered 200 and did nothing. An id that names none of
/// the caller's messages is ignored (never revealed), but an entry that is not a string at all
/// is the client's mistake: 422 naming it, and nothing is marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ids_that_are_not_strings_are_refused() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let m = app.send(&u, "m").await;
    for bad in [json!({}), json!(7), json!(null), json!([m["id"]])] {
        let r = app
            .user_post(
                &u,
                "/api/v1/me/messages/read",
                json!({"ids": [m["id"], bad]}),
            )
            .await;
        assert_eq!(r.status(), 422, "{bad}");
        let body: Value = r.json().await.expect("error body");
        assert_eq!(body["error"]["code"], "validation_failed");
        assert_eq!(body["error"]["field"], "ids[1]");
    }
    assert_eq!(
        app.user_json(&u, "/api/v1/me/unread-count").await["unread"],
        1,
        "nothing was marked read"
    );
    // Strings that are not message ids still change nothing and reveal nothing.
    let r = app
        .user_post(
            &u,
            "/api/v1/me/messages/read",
            json!({"ids": ["not-an-id", "00000000-0000-0000-0000-000000000000"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.stop().await;
}

/// Found by schemathesis: JSON does not tell `42` from `42.0` (nor does the OpenAPI document's
/// `integer`), but a user id written `42.0` was refused while `42` was accepted. Both are user
/// "42"; a fraction is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integral_user_id_is_the_same_user_however_it_is_written() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let r = app
        .post_messages(&json!({"to_users": [4242, 4242.0, -7.0], "title": "t", "send_user": 9.0}))
        .await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.expect("body");
    let to: Vec<&str> = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["to_user"].as_str().expect("to_user"))
        .collect();
    assert_eq!(to, ["4242", "-7"], "4242 and 4242.0 are one user");
    let page = app.user_json("4242", "/api/v1/me/messages").await;
    assert_eq!(page["messages"][0]["send_user"], "9");
    let r = app
        .post_messages(&json!({"to_user": 42.5, "title": "t"}))
        .await;
    assert_eq!(r.status(), 422);
    app.stop().await;
}
