//! Local delivery at once (issue 10, item 3a): after a create commits, its events go straight to
//! the sessions on the committing node; the relay's copy (for other nodes) is dropped by seq.

use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use serde_json::{json, Value};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(5);

/// A socket of `user` on `app`, past its `hello`.
async fn socket(app: &TestApp, user: &str) -> WsClient {
    let mut c = app.ws(user, None).await;
    c.expect("hello", WAIT).await;
    c
}

/// Every `message.created` frame `c` reads within `window`.
async fn created_frames(c: &mut WsClient, window: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + window;
    let mut out = vec![];
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next(left).await {
            Some(f) if f["type"] == "message.created" => out.push(f),
            Some(_) => {}
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_reaches_a_socket_on_the_committing_node_without_the_relay() {
    // No relay anywhere: only the local hand-off can bring the frames.
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::no_relay()).await;
    let (u, other) = (new_user(), new_user());
    let mut c = socket(&app, &u).await;
    app.send(&u, "one").await;
    let r = app
        .post_messages(&json!({"messages": [
            {"to_user": u, "title": "two", "send_user": "7", "skip_url": "/p/2", "data": {"k": [1, "x"]}},
            {"to_users": [other, u], "title": "three", "content": "c3", "type": "comment"},
        ]}))
        .await;
    assert_eq!(r.status(), 201);
    let frames = created_frames(&mut c, Duration::from_secs(2)).await;
    assert_eq!(seqs_of(&frames), vec![1, 2, 3], "{frames:?}");
    assert_eq!(
        frames
            .iter()
            .map(|f| (f["unread"].clone(), f["unseen"].clone()))
            .collect::<Vec<_>>(),
        vec![
            (json!(1), json!(1)),
            (json!(2), json!(2)),
            (json!(3), json!(3))
        ]
    );
    // Exactly the frames stored in the event log (what the relay and `sync` send).
    let stored = query_json(
        &db.url,
        &format!("SELECT payload FROM user_event WHERE user_id = '{u}' ORDER BY seq"),
    )
    .await;
    let stored: Vec<Value> = stored.into_iter().map(|r| r["payload"].clone()).collect();
    assert_eq!(frames, stored);
    assert_eq!(frames[1]["message"]["data"], json!({"k": [1, "x"]}));
    assert_eq!(frames[1]["message"]["send_user"], "7");
    assert_eq!(frames[2]["message"]["type"], "comment");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_relay_the_committing_node_sends_each_frame_once_and_a_second_node_still_gets_it()
{
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let a = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let b = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let u = new_user();
    let mut on_a = socket(&a, &u).await;
    let mut on_b = socket(&b, &u).await;
    for k in 0..20 {
        a.send(&u, &format!("m{k}")).await;
    }
    let want: Vec<i64> = (1..=20).collect();
    // The relay's copies arrive within the window and must be dropped on node a.
    let got_a = created_frames(&mut on_a, Duration::from_secs(3)).await;
    let got_b = created_frames(&mut on_b, Duration::from_secs(1)).await;
    assert_eq!(seqs_of(&got_a), want, "node a: once each, in order");
    assert_eq!(seqs_of(&got_b), want, "node b: through the relay");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_fails_in_the_database_delivers_nothing() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::no_relay()).await;
    let u = new_user();
    let mut c = socket(&app, &u).await;
    let mut conn = db.conn().await;
    conn.batch_execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           RAISE EXCEPTION 'injected failure'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await
    .expect("install the failing trigger");
    let r = app
        .post_messages(&json!({"to_user": u, "title": "never"}))
        .await;
    assert_eq!(r.status(), 500);
    assert!(created_frames(&mut c, Duration::from_secs(1))
        .await
        .is_empty());
    conn.batch_execute("DROP TRIGGER refuse ON outbox")
        .await
        .unwrap();
    app.send(&u, "after").await;
    let frames = created_frames(&mut c, Duration::from_secs(1)).await;
    assert_eq!(seqs_of(&frames), vec![1]);
    assert_eq!(frames[0]["message"]["title"], "after");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_reaches_the_recipient_on_the_committing_node_without_the_relay() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::no_relay()).await;
    let (from, to) = (new_user(), new_user());
    let mut c = socket(&app, &to).await;
    let r = app
        .http
        .post(format!("{}/api/v1/me/send", app.base))
        .bearer_auth(token_send_to(&from, &[&to]))
        .json(&json!({"to_user": to, "message": {"title": "hi"}}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);
    let frames = created_frames(&mut c, Duration::from_secs(2)).await;
    assert_eq!(seqs_of(&frames), vec![1]);
    assert_eq!(frames[0]["message"]["send_user"], from.as_str());
    app.stop().await;
}
