//! POST /api/v1/messages: one transaction per request, exact seq/unread, all-or-nothing batches.

use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
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

/// Which of `n` users entry `i` of a mixed batch goes to: uneven, interleaved, deterministic.
fn mixed_recipient(i: usize, n: usize) -> usize {
    (i * 7 + i / 3 + (i * i) % 5) % n
}

async fn error_of(r: reqwest::Response) -> Value {
    let body: Value = r.json().await.expect("an error answer has a JSON body");
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "not the contract's error body: {body}"
    );
    body["error"].clone()
}

async fn spine_counts(db_url: &str) -> [i64; 4] {
    [
        count_rows(db_url, "t_message_real_time").await,
        count_rows(db_url, "user_inbox_state").await,
        count_rows(db_url, "user_event").await,
        count_rows(db_url, "outbox").await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1000_message_batch_commits_every_row_with_gap_free_seqs_in_request_order() {
    let db = TestDb::new().await;
    // No relay: the outbox must still hold what the transaction queued.
    let app = spawn_app(&db, Opts::no_relay()).await;
    let users: Vec<String> = (0..4).map(|_| new_user()).collect();
    let batch: Vec<Value> = (0..1000)
        .map(|i| {
            json!({"to_user": users[mixed_recipient(i, users.len())], "title": format!("batch #{i}"),
                   "content": "c", "type": "system", "data": {"i": i}})
        })
        .collect();
    let r = app.post_messages(&json!({ "messages": batch })).await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let answer = body["messages"].as_array().expect("messages array");
    assert_eq!(answer.len(), 1000);

    // The answer lists the rows in request order; each user's seqs count 1, 2, 3, ...
    let mut per_user = vec![0i64; users.len()];
    let mut expected: std::collections::HashMap<String, (String, i64, String)> =
        std::collections::HashMap::new();
    for (i, m) in answer.iter().enumerate() {
        let u = mixed_recipient(i, users.len());
        per_user[u] += 1;
        assert_eq!(m["to_user"], json!(users[u]), "entry {i}");
        assert_eq!(m["seq"], json!(per_user[u]), "entry {i}");
        let id = m["id"].as_str().expect("id is a string").to_string();
        let prev = expected.insert(id, (users[u].clone(), per_user[u], format!("batch #{i}")));
        assert!(prev.is_none(), "duplicate id in the answer");
    }
    assert!(
        per_user.iter().all(|&n| n > 100),
        "the batch mixes users: {per_user:?}"
    );

    // The database holds exactly those rows: same id, recipient, seq and content.
    let rows = query_json(
        &db.url,
        "SELECT id::text AS id, to_user, seq, title FROM t_message_real_time",
    )
    .await;
    assert_eq!(rows.len(), 1000);
    for row in &rows {
        let (u, seq, title) = expected
            .get(row["id"].as_str().unwrap())
            .unwrap_or_else(|| panic!("row not in the answer: {row}"));
        assert_eq!(
            (&row["to_user"], &row["seq"], &row["title"]),
            (&json!(u), &json!(seq), &json!(title))
        );
    }
    for (u, n) in users.iter().zip(&per_user) {
        let mut seqs: Vec<i64> = rows
            .iter()
            .filter(|r| r["to_user"] == json!(u))
            .map(|r| r["seq"].as_i64().unwrap())
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=*n).collect::<Vec<_>>(), "no holes for {u}");
        let state = query_json(
            &db.url,
            &format!("SELECT seq, unread, unseen FROM user_inbox_state WHERE user_id = '{u}'"),
        )
        .await;
        assert_eq!(state, vec![json!({"seq": n, "unread": n, "unseen": n})]);
    }

    // One event per row, each carrying the counters right after it, and one outbox entry each.
    assert_eq!(count_rows(&db.url, "user_event").await, 1000);
    assert_eq!(
        scalar_i64(
            &db.url,
            "SELECT count(*) AS v FROM user_event e JOIN t_message_real_time m \
             ON m.to_user = e.user_id AND m.seq = e.seq \
             WHERE e.payload->>'type' = 'message.created' AND (e.payload->>'seq')::bigint = e.seq \
             AND (e.payload->>'unread')::bigint = e.seq AND (e.payload->>'unseen')::bigint = e.seq \
             AND e.payload->'message'->>'id' = m.id::text"
        )
        .await,
        1000
    );
    assert_eq!(count_rows(&db.url, "outbox").await, 1000);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_users_creates_one_row_per_distinct_recipient() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (a, b, c) = (new_user(), new_user(), new_user());
    assert_eq!(app.send(&a, "earlier").await["seq"], 1);

    let r = app
        .post_messages(
            &json!({"to_users": [a, b, a, c, b, c, a], "title": "to many", "type": "system"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let got = recipients_and_seqs(&body);
    assert_eq!(
        got,
        vec![
            (json!(a), json!(2)),
            (json!(b), json!(1)),
            (json!(c), json!(1))
        ]
    );
    for (u, n) in [(&a, 2), (&b, 1), (&c, 1)] {
        assert_eq!(
            scalar_i64(
                &db.url,
                &format!(
                    "SELECT count(*) AS v FROM t_message_real_time WHERE to_user = '{u}' AND title = 'to many'"
                )
            )
            .await,
            1,
            "one row for {u}"
        );
        let state = query_json(
            &db.url,
            &format!("SELECT seq, unread, unseen FROM user_inbox_state WHERE user_id = '{u}'"),
        )
        .await;
        assert_eq!(state, vec![json!({"seq": n, "unread": n, "unseen": n})]);
    }
    assert_eq!(count_rows(&db.url, "t_message_real_time").await, 4);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_invalid_entry_is_refused_whole_and_writes_nothing() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::no_relay()).await;
    let (a, b) = (new_user(), new_user());
    app.send(&a, "before").await;
    let before = spine_counts(&db.url).await;
    assert_eq!(before, [1, 1, 1, 1]);

    let cases: [(&str, Value, &str); 5] = [
        ("title", json!("x".repeat(201)), "messages[3].title"),
        (
            "skip_url",
            json!("javascript:alert(1)"),
            "messages[3].skip_url",
        ),
        ("to_user", json!(""), "messages[3].to_user"),
        // PostgreSQL cannot store U+0000: refused up front, not a failed insert.
        ("content", json!("nul \u{0} here"), "messages[3].content"),
        ("data", json!({"k": "nul \u{0}"}), "messages[3].data"),
    ];
    for (key, bad, field) in cases {
        let mut batch: Vec<Value> = (0..6)
            .map(|i| json!({"to_user": if i % 2 == 0 { &a } else { &b }, "title": format!("m{i}")}))
            .collect();
        batch[3][key] = bad;
        let r = app.post_messages(&json!({ "messages": batch })).await;
        assert_eq!(r.status(), 422, "{field}");
        let err = error_of(r).await;
        assert_eq!(err["code"], "validation_failed");
        assert_eq!(err["field"], field);
        assert_eq!(
            spine_counts(&db.url).await,
            before,
            "rows, counters, events, outbox after {field}"
        );
    }
    // No seq was consumed by the refused batches.
    assert_eq!(app.send(&a, "after").await["seq"], 2);
    assert_eq!(app.send(&b, "after").await["seq"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_inside_the_database_leaves_no_trace() {
    // Every entry is valid, but the database refuses the outbox entry of user b (an injected
    // trigger), after the rows, counters and events of the whole batch were written.
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::no_relay()).await;
    let (a, b) = (new_user(), new_user());
    app.send(&a, "before").await;
    let before = spine_counts(&db.url).await;
    let mut conn = db.conn().await;
    conn.batch_execute(&format!(
        "CREATE FUNCTION refuse_b() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.user_id = '{b}' THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_b BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse_b();"
    ))
    .await
    .expect("install the failing trigger");

    let batch: Vec<Value> = [&a, &a, &a, &b, &a]
        .iter()
        .enumerate()
        .map(|(i, u)| json!({"to_user": u, "title": format!("m{i}")}))
        .collect();
    let r = app.post_messages(&json!({ "messages": batch })).await;
    assert_eq!(r.status(), 500);
    assert_eq!(error_of(r).await["code"], "internal");
    assert_eq!(spine_counts(&db.url).await, before);
    assert_eq!(
        query_json(
            &db.url,
            &format!("SELECT seq, unread, unseen FROM user_inbox_state WHERE user_id = '{a}'")
        )
        .await,
        vec![json!({"seq": 1, "unread": 1, "unseen": 1})]
    );

    conn.batch_execute("DROP TRIGGER refuse_b ON outbox")
        .await
        .unwrap();
    assert_eq!(app.send(&a, "after").await["seq"], 2);
    assert_eq!(app.send(&b, "after").await["seq"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_the_first_result_per_service() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let (a, b) = (new_user(), new_user());
    let body = json!({"messages": [
        {"to_user": a, "title": "one"}, {"to_user": b, "title": "two"}, {"to_user": a, "title": "three"}
    ]});
    let key = "order-42-shipped";

    let r1 = app.post_messages_as(SERVICE_KEY, Some(key), &body).await;
    assert_eq!(r1.status(), 201);
    let first: Value = r1.json().await.unwrap();
    let r2 = app.post_messages_as(SERVICE_KEY, Some(key), &body).await;
    assert_eq!(r2.status(), 201);
    let second: Value = r2.json().await.unwrap();
    assert_eq!(second, first, "the replay answers with the first result");
    assert_eq!(count_rows(&db.url, "t_message_real_time").await, 3);
    assert_eq!(count_rows(&db.url, "user_event").await, 3);

    // Same key, different body: refused, nothing written.
    let other_body = json!({"to_user": a, "title": "something else"});
    let r = app
        .post_messages_as(SERVICE_KEY, Some(key), &other_body)
        .await;
    assert_eq!(r.status(), 409);
    let err = error_of(r).await;
    assert_eq!(err["code"], "idempotency_conflict");
    assert_eq!(count_rows(&db.url, "t_message_real_time").await, 3);

    // The same key from another service is another key.
    let r = app.post_messages_as(OTHER_KEY, Some(key), &body).await;
    assert_eq!(r.status(), 201);
    let theirs: Value = r.json().await.unwrap();
    let seqs = recipients_and_seqs(&theirs);
    assert_eq!(
        seqs,
        vec![
            (json!(a), json!(3)),
            (json!(b), json!(2)),
            (json!(a), json!(4))
        ]
    );
    assert_ne!(theirs["messages"][0]["id"], first["messages"][0]["id"]);
    assert_eq!(count_rows(&db.url, "t_message_real_time").await, 6);
    let again: Value = app
        .post_messages_as(OTHER_KEY, Some(key), &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again, theirs);

    // Two concurrent first uses of one key: one set of rows, both answered with it.
    let key2 = "concurrent-key";
    let body2 = json!({"to_user": b, "title": "raced"});
    let (x, y) = tokio::join!(
        app.post_messages_as(SERVICE_KEY, Some(key2), &body2),
        app.post_messages_as(SERVICE_KEY, Some(key2), &body2)
    );
    assert_eq!((x.status().as_u16(), y.status().as_u16()), (201, 201));
    let (x, y): (Value, Value) = (x.json().await.unwrap(), y.json().await.unwrap());
    assert_eq!(x, y);
    assert_eq!(
        scalar_i64(
            &db.url,
            "SELECT count(*) AS v FROM t_message_real_time WHERE title = 'raced'"
        )
        .await,
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_calls_without_a_valid_key_are_401_with_error_body() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let body = json!({"to_user": new_user(), "title": "t"}).to_string();
    for path in ["/api/v1/messages", "/api/v1/topics/product:1/events"] {
        for key in [None, Some("wrong-key"), Some("")] {
            let r = app.post_raw(path, key, &[], body.clone()).await;
            assert_eq!(r.status(), 401, "{path} with {key:?}");
            assert_eq!(error_of(r).await["code"], "unauthorized");
        }
    }
    assert_eq!(count_rows(&db.url, "t_message_real_time").await, 0);
    assert_eq!(count_rows(&db.url, "outbox").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_with_error_body() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    for raw in [&b"{\"to_user\": \"1\", "[..], b"not json", b"\xff\xfe"] {
        let r = app
            .post_raw("/api/v1/messages", Some(SERVICE_KEY), &[], raw.to_vec())
            .await;
        assert_eq!(r.status(), 400, "{raw:?}");
        assert_eq!(error_of(r).await["code"], "malformed_json");
    }
    assert_eq!(count_rows(&db.url, "t_message_real_time").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_size_limit_is_413_with_error_body() {
    let db = TestDb::new().await;
    let app = spawn_app(
        &db,
        Opts {
            max_body_bytes: Some(10_000),
            ..Default::default()
        },
    )
    .await;
    let u = new_user();
    let small = json!({"to_user": u, "title": "t", "content": "x".repeat(5_000), "data": {"pad": "y".repeat(4_000)}});
    assert!(small.to_string().len() < 10_000);
    assert_eq!(app.post_messages(&small).await.status(), 201);

    let big = json!({"to_user": u, "title": "t", "content": "x".repeat(8_000), "data": {"pad": "y".repeat(8_000)}});
    assert!(big.to_string().len() > 10_000);
    let r = app.post_messages(&big).await;
    assert_eq!(r.status(), 413);
    assert_eq!(error_of(r).await["code"], "payload_too_large");
    assert_eq!(
        scalar_i64(
            &db.url,
            &format!("SELECT count(*) AS v FROM t_message_real_time WHERE to_user = '{u}'")
        )
        .await,
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_limits_are_enforced_with_422_naming_the_field() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::no_relay()).await;
    let u = new_user();
    let msg = |extra: Value| {
        let mut m = json!({"to_user": u, "title": "t"});
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        m
    };
    // {"s":"..."} is 8 bytes of JSON around the string.
    let data_of = |len: usize| json!({ "s": "d".repeat(len - 8) });
    assert_eq!(data_of(16 * 1024).to_string().len(), 16 * 1024);
    let many = |n: usize| json!({ "messages": (0..n).map(|i| json!({"to_user": format!("{u}-{}", i % 3), "title": "t"})).collect::<Vec<_>>() });
    let ids = |n: usize| (0..n).map(|i| format!("{u}-{i}")).collect::<Vec<_>>();

    let refused: Vec<(Value, &str)> = vec![
        (msg(json!({"content": "c".repeat(8193)})), "content"),
        (msg(json!({"content": "é".repeat(4097)})), "content"),
        (msg(json!({ "data": data_of(16 * 1024 + 1) })), "data"),
        (msg(json!({"title": "t".repeat(201)})), "title"),
        (many(1001), "messages"),
        (json!({"to_users": ids(10_001), "title": "t"}), "to_users"),
    ];
    for (body, field) in refused {
        let r = app.post_messages(&body).await;
        assert_eq!(r.status(), 422, "{field}");
        let err = error_of(r).await;
        assert_eq!(
            (err["code"].as_str(), err["field"].as_str()),
            (Some("validation_failed"), Some(field))
        );
    }
    assert_eq!(count_rows(&db.url, "t_message_real_time").await, 0);
    assert_eq!(count_rows(&db.url, "user_inbox_state").await, 0);

    // Exactly at each limit is accepted.
    let accepted: Vec<(Value, i64)> = vec![
        (msg(json!({"content": "c".repeat(8192)})), 1),
        (msg(json!({ "data": data_of(16 * 1024) })), 1),
        (msg(json!({"title": "é".repeat(200)})), 1),
        (many(1000), 1000),
        (json!({"to_users": ids(10_000), "title": "t"}), 10_000),
    ];
    let mut total = 0;
    for (body, rows) in accepted {
        let r = app.post_messages(&body).await;
        assert_eq!(r.status(), 201, "{rows} rows");
        let got: Value = r.json().await.unwrap();
        assert_eq!(got["messages"].as_array().unwrap().len() as i64, rows);
        total += rows;
    }
    assert_eq!(count_rows(&db.url, "t_message_real_time").await, total);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_event_is_accepted_and_published_on_the_topic_channel() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let topic = "product:42";
    let mut tap = RedisTap::subscribe(&app.topic_channel(topic)).await;
    let mut other = RedisTap::subscribe(&app.topic_channel("product:43")).await;

    let data = json!({"stock": 3, "price": {"eur": "9.90"}});
    let r = app
        .post_raw(
            &format!("/api/v1/topics/{topic}/events"),
            Some(SERVICE_KEY),
            &[],
            json!({ "data": data }).to_string(),
        )
        .await;
    assert_eq!(r.status(), 202);
    let answer: Value = r.json().await.expect("json");

    let got = tap
        .next(Duration::from_secs(10))
        .await
        .expect("the topic event is published");
    assert_eq!(
        got,
        json!({"type": "topic.event", "topic": topic, "id": answer["id"], "data": data})
    );
    assert_eq!(tap.drain(Duration::from_secs(1)).await, Vec::<Value>::new());
    assert_eq!(
        other.drain(Duration::from_millis(200)).await,
        Vec::<Value>::new()
    );

    // What PostgreSQL cannot store is refused up front (422), not a failed insert.
    let r = app
        .post_raw(
            &format!("/api/v1/topics/{topic}/events"),
            Some(SERVICE_KEY),
            &[],
            json!({"data": {"k": "nul \u{0}"}}).to_string(),
        )
        .await;
    assert_eq!(r.status(), 422);
    assert_eq!(error_of(r).await["field"], "data");
    eventually(Duration::from_secs(10), "outbox drained", || async {
        (count_rows(&db.url, "outbox").await == 0).then_some(())
    })
    .await;
    app.stop().await;
}

/// The `(to_user, seq)` pairs of a `201` answer, in answer order.
fn recipients_and_seqs(answer: &Value) -> Vec<(Value, Value)> {
    answer["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| (m["to_user"].clone(), m["seq"].clone()))
        .collect()
}
