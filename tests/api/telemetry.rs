//! Logs and metrics (issue 11, item 5), from the real binary: JSON lines on stdout with a span
//! per request and per WebSocket session, and metrics labelled by the calling service.

use std::time::Duration;

use serde_json::{json, Value};

use crate::binary::{free_port, node_env, sample, Notifyd};
use crate::helpers::{token, SseClient, TestDb, WsClient, OTHER_KEY, SERVICE_KEY};

async fn post(http: &reqwest::Client, base: &str, key: &str, body: Value) -> reqwest::Response {
    http.post(format!("{base}/api/v1/messages"))
        .bearer_auth(key)
        .header("X-Request-Id", "req-from-caller-1")
        .json(&body)
        .send()
        .await
        .expect("POST /api/v1/messages")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_and_session_spans_and_metrics_name_the_service() {
    let db = TestDb::new().await;
    let port = free_port();
    let mut env = node_env(&db, port);
    env.push(("NOTIFYD_LOG_FORMAT".into(), "json".into()));
    env.push(("RUST_LOG".into(), "info".into()));
    env.push(("NOTIFYD_NODE_ID".into(), "node-under-test".into()));
    let mut node = Notifyd::start(&["serve"], &env, port);
    node.healthy().await;
    let http = reqwest::Client::new();
    let msg =
        |user: &str| json!({"to_user": user, "title": "t", "content": "c", "type": "comment"});

    // A WebSocket session, one message to it from each service, a refused call.
    let mut ws = WsClient::connect(&format!(
        "ws://127.0.0.1:{port}/ws?token={}",
        token("u-span")
    ))
    .await
    .expect("ws connect");
    ws.expect("hello", Duration::from_secs(10)).await;
    let r = post(&http, &node.base, SERVICE_KEY, msg("u-span")).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-request-id"], "req-from-caller-1");
    ws.expect("message.created", Duration::from_secs(10)).await;
    let two = json!({"messages": [msg("u-a"), msg("u-b")]});
    assert_eq!(post(&http, &node.base, OTHER_KEY, two).await.status(), 201);
    let bad = json!({"to_user": "u-a", "title": "", "content": "c"});
    assert_eq!(post(&http, &node.base, OTHER_KEY, bad).await.status(), 422);
    let unnamed = http
        .get(format!("{}/healthz", node.base))
        .send()
        .await
        .expect("healthz");
    let made_up_id = unnamed.headers()["x-request-id"].to_str().expect("ascii");
    assert!(made_up_id.len() >= 16, "{made_up_id}");
    ws.close().await;

    // An SSE stream counts in the connection gauge under its own transport (contract §10).
    let mut sse = SseClient::open(
        &format!("{}/sse", node.base),
        &[("Authorization", format!("Bearer {}", token("u-sse")))],
    )
    .await
    .unwrap_or_else(|r| panic!("GET /sse: {}", r.status()));
    sse.expect("hello", Duration::from_secs(10)).await;

    // Metrics by calling service.
    let metrics = http
        .get(format!("{}/metrics", node.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert_eq!(
        sample(&metrics, "notifyd_ws_connections{transport=\"sse\"}"),
        Some(1.0),
        "{metrics}"
    );
    drop(sse);
    assert_eq!(
        sample(&metrics, "notifyd_messages_created_total{service=\"test\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "notifyd_messages_created_total{service=\"other\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "notifyd_service_errors_total{service=\"other\",code=\"validation_failed\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "notifyd_service_errors_total{service=\"test\",code=\"validation_failed\"}"
        ),
        None
    );

    // Logs: every stdout line is one JSON object; the spans carry the fields.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (stdout, stderr) = node.stop().await;
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "no JSON lines; stderr: {stderr}");
    let access = |route: &str, status: u64, service: &str| {
        lines.iter().find(|l| {
            l["target"] == "notifyd::http"
                && l["span"]["name"] == "request"
                && l["span"]["route"] == route
                && l["span"]["status"] == status
                && l["span"]["service"] == service
        })
    };
    let created = access("/api/v1/messages", 201, "test").expect("the 201's access line");
    assert_eq!(created["span"]["method"], "POST");
    assert_eq!(created["span"]["node"], "node-under-test");
    assert_eq!(created["span"]["request_id"], "req-from-caller-1");
    assert!(created["latency_ms"].is_number(), "{created}");
    assert!(access("/api/v1/messages", 422, "other").is_some());

    let session: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["name"] == "ws_session")
        .collect();
    let opened = session
        .iter()
        .find(|l| l["message"] == "websocket session opened")
        .expect("a session opened line");
    assert_eq!(opened["span"]["user"], "u-span");
    assert_eq!(opened["span"]["node"], "node-under-test");
    let id = &opened["span"]["session"];
    assert!(id.is_number(), "{opened}");
    assert!(
        session
            .iter()
            .any(|l| l["message"] == "websocket session ended" && &l["span"]["session"] == id),
        "{session:?}"
    );
}

/// Issue 11 item 5: every metric the code emits is listed in docs/operations.md.
#[test]
fn every_metric_in_the_code_is_documented() {
    fn sources(dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(std::fs::read_to_string(&path).expect("read source"));
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![];
    sources(&root.join("src"), &mut files);
    let mut names = std::collections::BTreeSet::new();
    for text in &files {
        for mac in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(mac) {
                let rest = text[at + mac.len()..].trim_start();
                // Only literal names are used; a name in a variable would be missed here.
                assert!(
                    rest.starts_with('"'),
                    "a metric named by a variable: {rest:.60}"
                );
                let name = rest[1..].split('"').next().expect("closing quote");
                names.insert(name.to_string());
            }
        }
    }
    assert!(names.len() > 40, "found only {names:?}");
    let page = std::fs::read_to_string(root.join("docs/operations.md")).expect("operations.md");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !page.contains(&format!("| `{n}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/operations.md's metrics table: {missing:?}"
    );
}
