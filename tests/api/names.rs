//! Names (contract §7): topic names and user ids are checked by one rule wherever they come in:
//! no whitespace, no control (Unicode Cc) and no format (Cf: bidi overrides, zero-width)
//! characters, and the documented length. A bad topic is `422` on REST and an `error` frame
//! `validation_failed` on the socket (subscribe, unsubscribe, publish); a bad user id is `401` as
//! a token's `sub`, `422` in a body or a path. Nothing of it reaches PostgreSQL or Redis.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// Deadline for anything that should happen "now" (never a measure of speed).
const T: Duration = Duration::from_secs(15);

/// Longest topic and user id (docs/topics.md, docs/api.md).
const MAX_TOPIC_CHARS: usize = 200;
const MAX_ID_CHARS: usize = 128;

/// What is wrong with a name, then the odd part; `bad_names` puts it inside a name.
const ODD: &[(&str, &str)] = &[
    ("NUL", "\u{0}"),
    ("a newline", "\n"),
    ("CR LF", "\r\n"),
    ("a tab", "\t"),
    ("NEL (U+0085, Cc)", "\u{85}"),
    ("a no-break space (U+00A0)", "\u{a0}"),
    ("RIGHT-TO-LEFT OVERRIDE (U+202E, Cf)", "\u{202e}"),
    ("ZERO WIDTH SPACE (U+200B, Cf)", "\u{200b}"),
    ("ZERO WIDTH JOINER (U+200D, Cf)", "\u{200d}"),
    ("BOM (U+FEFF, Cf)", "\u{feff}"),
    ("LEFT-TO-RIGHT ISOLATE (U+2066, Cf)", "\u{2066}"),
    ("POP DIRECTIONAL ISOLATE (U+2069, Cf)", "\u{2069}"),
    ("SOFT HYPHEN (U+00AD, Cf)", "\u{ad}"),
    ("LANGUAGE TAG (U+E0001, Cf)", "\u{e0001}"),
];

/// Names built on `base` that the rule refuses: `base` with each odd character inside it, a
/// leading space, a trailing CR LF, and one character too many.
fn bad_names(base: &str, max_chars: usize) -> Vec<(String, String)> {
    let (head, tail) = base.split_at(base.len() / 2);
    let mut names: Vec<(String, String)> = ODD
        .iter()
        .map(|(why, odd)| (why.to_string(), format!("{head}{odd}{tail}")))
        .collect();
    names.push(("a leading space".into(), format!(" {base}")));
    names.push(("a trailing CR LF".into(), format!("{base}\r\n")));
    names.push((
        format!("{} characters", max_chars + 1),
        "é".repeat(max_chars + 1),
    ));
    names
}

/// Percent-encodes every byte but unreserved ASCII, so a name reaches the server's path as is.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body["error"].clone())
}

async fn socket(app: &TestApp, token: &str) -> WsClient {
    let mut c = WsClient::connect(&app.ws_url(token, None))
        .await
        .expect("connect");
    c.next_of("hello", T).await;
    c
}

fn assert_validation_failed(f: &Value, why: &str) {
    assert_eq!(
        (&f["type"], &f["error"]["code"]),
        (&json!("error"), &json!("validation_failed")),
        "a topic with {why}: {f}"
    );
}

/// Every socket command that names a topic refuses a bad name with `validation_failed` (before
/// this, `subscribe` and `unsubscribe` took any name: a NUL topic was acked, registered in
/// Redis, and failed the retained-value read in PostgreSQL); the REST publish refuses it with
/// `422` naming `topic`. Nothing is written, and the session goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_topic_name_is_refused_on_every_path() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let names = bad_names("product:1", MAX_TOPIC_CHARS);
    // Any topic is allowed by the token, so only the name can be wrong.
    let tok = token_with_grants(&new_user(), &["*"], &["*"]);
    for kind in ["subscribe", "unsubscribe", "publish"] {
        let mut c = socket(&app, &tok).await;
        for (i, (why, name)) in names.iter().enumerate() {
            let r#ref = format!("{kind}{i}");
            let frame = match kind {
                "publish" => json!({"type": kind, "topic": name, "data": {}, "ref": r#ref}),
                _ => json!({"type": kind, "topics": ["product:ok", name], "ref": r#ref}),
            };
            c.send(&frame).await;
            assert_validation_failed(&c.answer_to(&r#ref, T).await, &format!("{why} ({kind})"));
        }
        // The session still works, and none of the bad names was subscribed.
        c.send(&json!({"type": "subscribe", "topics": ["product:ok"], "ref": "fine"}))
            .await;
        assert_eq!(c.answer_to("fine", T).await["type"], "ack", "{kind}");
        for (why, name) in &names {
            assert_eq!(app.stopper.state().topics.subscribers(name), 0, "{why}");
        }
    }
    for (why, name) in &names {
        let r = app
            .http
            .post(format!(
                "{}/api/v1/topics/{}/events",
                app.base,
                encode(name)
            ))
            .bearer_auth(SERVICE_KEY)
            .json(&json!({"data": {}}))
            .send()
            .await
            .expect("POST");
        let (status, e) = error_of(r).await;
        assert_eq!(
            (status, &e["code"], &e["field"]),
            (422, &json!("validation_failed"), &json!("topic")),
            "a topic with {why}"
        );
    }
    assert_eq!(
        count_rows(&app.db_url, "outbox").await,
        0,
        "nothing written"
    );
    app.stop().await;
}

/// A token whose `sub` breaks the rule is refused (`401`, REST and handshake alike), although it
/// is validly signed: a bidi override or a zero-width character in a user id would make two
/// users look alike in logs and UIs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_sub_is_not_a_user_id_is_401() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    for (why, sub) in bad_names("u42", MAX_ID_CHARS) {
        let tok = token(&sub);
        let r = app
            .http
            .get(format!("{}/api/v1/me/unread-count", app.base))
            .bearer_auth(&tok)
            .send()
            .await
            .expect("GET");
        let (status, e) = error_of(r).await;
        assert_eq!(
            (status, &e["code"]),
            (401, &json!("unauthorized")),
            "REST, a sub with {why}"
        );
        let ws = WsClient::connect(&app.ws_url(&encode(&tok), None)).await;
        assert_eq!(refused_status(ws), 401, "handshake, a sub with {why}");
    }
    app.stop().await;
}

/// User ids in bodies (`to_user`, `to_users`, `send_user`, a direct message's `to_user`) and in
/// paths (presence, erase) follow the same rule: `422` naming the field, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_user_id_in_a_body_or_a_path_is_422_naming_it() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let names = bad_names("u42", MAX_ID_CHARS);
    let sender = new_user();
    let tok = token_send_to(&sender, &["*"]);
    let mut s = socket(&app, &tok).await;
    let message = json!({"title": "t", "content": "c", "type": "chat"});
    for (i, (why, id)) in names.iter().enumerate() {
        for (body, field) in [
            (json!({"to_user": id, "title": "t"}), "to_user"),
            (json!({"to_users": ["u1", id], "title": "t"}), "to_users[1]"),
            (
                json!({"to_user": "u1", "send_user": id, "title": "t"}),
                "send_user",
            ),
        ] {
            let (status, e) = error_of(app.post_messages(&body).await).await;
            assert_eq!(
                (status, &e["code"], &e["field"]),
                (422, &json!("validation_failed"), &json!(field)),
                "{field} with {why}"
            );
        }
        let r = app
            .http
            .post(format!("{}/api/v1/me/send", app.base))
            .bearer_auth(&tok)
            .json(&json!({"to_user": id, "message": message}))
            .send()
            .await
            .expect("POST /me/send");
        let (status, e) = error_of(r).await;
        assert_eq!(
            (status, &e["field"]),
            (422, &json!("to_user")),
            "a direct message to a user id with {why}"
        );
        let r#ref = format!("d{i}");
        s.send(&json!({"type": "send", "to_user": id, "message": message, "ref": r#ref}))
            .await;
        let f = s.answer_to(&r#ref, T).await;
        assert_eq!(
            (&f["error"]["code"], &f["error"]["field"]),
            (&json!("validation_failed"), &json!("to_user")),
            "a send frame to a user id with {why}: {f}"
        );
        for (method, path) in [
            (
                reqwest::Method::GET,
                format!("/api/v1/users/{}/presence", encode(id)),
            ),
            (
                reqwest::Method::DELETE,
                format!("/api/v1/users/{}", encode(id)),
            ),
        ] {
            let r = app
                .http
                .request(method.clone(), format!("{}{path}", app.base))
                .bearer_auth(SERVICE_KEY)
                .send()
                .await
                .expect("service call");
            let (status, e) = error_of(r).await;
            assert_eq!(
                (status, &e["code"], &e["field"]),
                (422, &json!("validation_failed"), &json!("id")),
                "{method} {path}: an id with {why}"
            );
        }
    }
    assert_eq!(
        count_rows(&app.db_url, "t_message_real_time").await,
        0,
        "nothing written"
    );
    app.stop().await;
}
