//! POST /api/v1/messages: one transaction per request, exact seq/unread, all-or-nothing batches.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_commits_row_seq_and_counters() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let r = app.post_messages(&json!({"to_user": u, "title": "Hello", "content": "World", "type": "comment", "send_user": "7", "skip_url": "/p/1", "data": {"k": 1}})).await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let m = &body["messages"][0];
    assert_eq!(
        (m["to_user"].as_str(), m["seq"].as_i64()),
        (Some(u.as_str()), Some(1))
    );
    assert_eq!(
        scalar_i64(
            &db.url,
            &format!("SELECT count(*) AS v FROM t_message_real_time WHERE to_user = '{u}'")
        )
        .await,
        1
    );
    assert_eq!(
        scalar_i64(
            &db.url,
            &format!("SELECT unread AS v FROM user_inbox_state WHERE user_id = '{u}'")
        )
        .await,
        1
    );
    let counts: Value = app
        .user_get(&u, "/api/v1/me/unread-count")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(counts, json!({"unread": 1, "unseen": 1, "seq": 1}));
    app.stop().await;
}
