//! The HTTP edge (contract §7) over real sockets: CORS for the user API and the JS client (never
//! for the service API), 405 with `Allow` and `HEAD` on every `GET` route, 413 for over-limit
//! bodies on every route, token hygiene (odd `sub`, `nbf`, generic 401 bodies, `?token=` on `/ws`
//! only) and `to_users` duplicates.

use std::time::Duration;

use reqwest::header::{HeaderMap, ORIGIN};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// Deadline for anything that should happen "now" (never a measure of speed).
const T: Duration = Duration::from_secs(15);

const APP_ORIGIN: &str = "http://app.example";
const EVIL_ORIGIN: &str = "http://evil.example";

async fn app_with_origins(db: &TestDb, origins: Option<&[&str]>) -> TestApp {
    spawn_app(
        db,
        Opts {
            allowed_origins: origins.map(|o| o.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        },
    )
    .await
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// A comma-separated header as lower-case items.
fn items(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

async fn preflight(app: &TestApp, path: &str, origin: &str, method: &str) -> reqwest::Response {
    app.http
        .request(Method::OPTIONS, format!("{}{}", app.base, path))
        .header(ORIGIN, origin)
        .header("Access-Control-Request-Method", method)
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("OPTIONS")
}

/// The contract's error body, with its code.
async fn error_code(r: reqwest::Response) -> String {
    let body: Value = r.json().await.expect("an error body in JSON");
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_from_an_allowed_origin_gets_204_with_the_routes_methods_and_headers() {
    let db = TestDb::new().await;
    let app = app_with_origins(&db, Some(&[APP_ORIGIN])).await;
    for (path, method) in [
        ("/api/v1/me/messages/read", "POST"),
        ("/api/v1/me/messages/read-all", "POST"),
        ("/api/v1/me/messages/seen-all", "POST"),
        ("/api/v1/me/messages", "GET"),
        ("/api/v1/me/unread-count", "GET"),
        ("/api/v1/me/changes", "GET"),
        (
            "/api/v1/me/messages/0192f7a4-0000-7000-8000-000000000000",
            "DELETE",
        ),
        ("/client/notifyd-client.js", "GET"),
        ("/client/notifyd-bell.js", "GET"),
    ] {
        let r = preflight(&app, path, APP_ORIGIN, method).await;
        assert_eq!(r.status(), 204, "preflight {method} {path}");
        let h = r.headers();
        assert_eq!(
            header(h, "access-control-allow-origin"),
            Some(APP_ORIGIN),
            "{path}"
        );
        let allow_headers = items(h, "access-control-allow-headers");
        assert!(
            allow_headers.contains(&"authorization".to_string())
                && allow_headers.contains(&"content-type".to_string()),
            "{path}: {allow_headers:?}"
        );
        let methods = items(h, "access-control-allow-methods");
        assert!(
            methods.contains(&method.to_ascii_lowercase()),
            "{path}: {methods:?}"
        );
        assert_eq!(header(h, "access-control-max-age"), Some("600"), "{path}");
        // The route's methods, not every method of the API.
        for other in ["post", "delete", "get"] {
            if other != method.to_ascii_lowercase() {
                assert!(!methods.contains(&other.to_string()), "{path}: {methods:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_for_another_method_or_header_is_refused_with_the_error_body() {
    let db = TestDb::new().await;
    let app = app_with_origins(&db, Some(&[APP_ORIGIN])).await;
    let r = preflight(&app, "/api/v1/me/messages", APP_ORIGIN, "PUT").await;
    assert_eq!(r.status(), 405);
    assert_eq!(header(r.headers(), "access-control-allow-origin"), None);
    assert_eq!(items(r.headers(), "allow"), vec!["get", "head"]);
    assert_eq!(error_code(r).await, "method_not_allowed");
    let r = app
        .http
        .request(
            Method::OPTIONS,
            format!("{}/api/v1/me/unread-count", app.base),
        )
        .header(ORIGIN, APP_ORIGIN)
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization,x-secret")
        .send()
        .await
        .expect("OPTIONS");
    assert_eq!(r.status(), 403);
    assert_eq!(header(r.headers(), "access-control-allow-origin"), None);
    assert_eq!(error_code(r).await, "forbidden");
    // A plain OPTIONS (not a preflight) is just a method the route does not answer.
    let r = app
        .http
        .request(
            Method::OPTIONS,
            format!("{}/api/v1/me/unread-count", app.base),
        )
        .send()
        .await
        .expect("OPTIONS");
    assert_eq!(r.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_origins_get_allow_origin_on_the_user_api_and_the_client() {
    let db = TestDb::new().await;
    let app = app_with_origins(&db, Some(&[APP_ORIGIN])).await;
    let u = new_user();

    // Actual requests from the allowed origin: ACAO and Vary: Origin.
    let r = app
        .http
        .get(format!("{}/api/v1/me/unread-count", app.base))
        .bearer_auth(token(&u))
        .header(ORIGIN, APP_ORIGIN)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(r.headers(), "access-control-allow-origin"),
        Some(APP_ORIGIN)
    );
    assert!(items(r.headers(), "vary").contains(&"origin".to_string()));

    let r = app
        .http
        .post(format!("{}/api/v1/me/messages/read-all", app.base))
        .bearer_auth(token(&u))
        .header(ORIGIN, APP_ORIGIN)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(r.headers(), "access-control-allow-origin"),
        Some(APP_ORIGIN)
    );

    // The client and <notifyd-bell> (which imports the client by a relative path) load as
    // modules into a page of another origin.
    for file in ["notifyd-client.js", "notifyd-bell.js"] {
        let r = app
            .http
            .get(format!("{}/client/{file}", app.base))
            .header(ORIGIN, APP_ORIGIN)
            .send()
            .await
            .expect("GET client");
        assert_eq!(r.status(), 200, "{file}");
        assert_eq!(
            header(r.headers(), "access-control-allow-origin"),
            Some(APP_ORIGIN),
            "{file}"
        );
        assert_eq!(
            header(r.headers(), "content-type"),
            Some("text/javascript; charset=utf-8"),
            "{file}"
        );
    }

    // Errors from the allowed origin carry it too, so the page can read the error body.
    let r = app
        .http
        .get(format!("{}/api/v1/me/unread-count", app.base))
        .header(ORIGIN, APP_ORIGIN)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(r.headers(), "access-control-allow-origin"),
        Some(APP_ORIGIN)
    );

    // Another origin: the request is served (a browser just cannot read it), without ACAO.
    let r = app
        .http
        .get(format!("{}/api/v1/me/unread-count", app.base))
        .bearer_auth(token(&u))
        .header(ORIGIN, EVIL_ORIGIN)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    assert_eq!(header(r.headers(), "access-control-allow-origin"), None);

    // A preflight from another origin: no ACAO and a JSON error body.
    let r = preflight(&app, "/api/v1/me/messages/read", EVIL_ORIGIN, "POST").await;
    assert!(r.status().is_client_error(), "{}", r.status());
    assert_eq!(header(r.headers(), "access-control-allow-origin"), None);
    assert_eq!(error_code(r).await, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_allowed_origins_configured_any_origin_is_echoed() {
    let db = TestDb::new().await;
    let app = app_with_origins(&db, None).await;
    let r = preflight(&app, "/api/v1/me/messages", EVIL_ORIGIN, "GET").await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        header(r.headers(), "access-control-allow-origin"),
        Some(EVIL_ORIGIN)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_api_never_answers_cors() {
    let db = TestDb::new().await;
    // Even with every origin allowed.
    let app = app_with_origins(&db, None).await;
    for (path, method) in [
        ("/api/v1/messages", "POST"),
        ("/api/v1/topics/product:1/events", "POST"),
        ("/api/v1/users/42/presence", "GET"),
        ("/api/v1/presence", "GET"),
    ] {
        let r = preflight(&app, path, APP_ORIGIN, method).await;
        assert_eq!(
            header(r.headers(), "access-control-allow-origin"),
            None,
            "{path}"
        );
        assert_eq!(r.status(), 405, "preflight to {path}");
        assert_eq!(error_code(r).await, "method_not_allowed");
    }
    let r = app
        .http
        .post(format!("{}/api/v1/messages", app.base))
        .bearer_auth(SERVICE_KEY)
        .header(ORIGIN, APP_ORIGIN)
        .json(&json!({"to_user": new_user(), "title": "t"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 201);
    assert_eq!(header(r.headers(), "access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_methods_on_known_routes_get_405_with_allow_and_unknown_paths_404() {
    let db = TestDb::new().await;
    let app = app_with_origins(&db, Some(&[APP_ORIGIN])).await;
    let u = new_user();
    for (method, path, allowed) in [
        ("PUT", "/api/v1/me/messages", "GET"),
        ("POST", "/api/v1/me/unread-count", "GET"),
        ("GET", "/api/v1/me/messages/read", "POST"),
        (
            "POST",
            "/api/v1/me/messages/0192f7a4-0000-7000-8000-000000000000",
            "DELETE",
        ),
        ("DELETE", "/api/v1/messages", "POST"),
        ("GET", "/api/v1/topics/product:1/events", "POST"),
        ("POST", "/api/v1/users/42/presence", "GET"),
        ("PATCH", "/api/v1/presence", "GET"),
        ("POST", "/healthz", "GET"),
        ("DELETE", "/readyz", "GET"),
        ("POST", "/metrics", "GET"),
        ("PUT", "/api-docs/openapi.json", "GET"),
        ("POST", "/ws", "GET"),
        ("POST", "/client/notifyd-client.js", "GET"),
        ("DELETE", "/client/notifyd-bell.js", "GET"),
    ] {
        let r = app
            .http
            .request(
                Method::from_bytes(method.as_bytes()).expect("method"),
                format!("{}{}", app.base, path),
            )
            .bearer_auth(token(&u))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 405, "{method} {path}");
        let allow = items(r.headers(), "allow");
        assert!(
            allow.contains(&allowed.to_ascii_lowercase()),
            "{method} {path}: Allow {allow:?}"
        );
        // `HEAD` wherever `GET` is, but on `/ws`: a handshake is a `GET` only.
        if allowed == "GET" {
            assert_eq!(
                allow.contains(&"head".to_string()),
                path != "/ws",
                "{path}: {allow:?}"
            );
        }
        assert_eq!(error_code(r).await, "method_not_allowed", "{method} {path}");
    }
    for path in [
        "/api/v1/nope",
        "/api/v1/me/nope",
        "/nope",
        "/api/v2/messages",
    ] {
        let r = app
            .http
            .get(format!("{}{}", app.base, path))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(error_code(r).await, "not_found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_works_on_get_routes_without_a_body() {
    let db = TestDb::new().await;
    let app = app_with_origins(&db, None).await;
    let u = new_user();
    // /readyz answers 503 until the node's Redis subscriber has connected, and while a canary
    // round trip through Redis is slow (a loaded machine): this test is about HEAD, so HEAD
    // /readyz is asked until it says ready, and must then carry no body.
    let ready = eventually(T, "HEAD /readyz answers 200", || async {
        let r = app.http.head(format!("{}/readyz", app.base)).send().await;
        r.ok().filter(|r| r.status() == 200)
    })
    .await;
    assert!(
        ready.bytes().await.expect("body").is_empty(),
        "HEAD /readyz sent a body"
    );
    for (path, auth) in [
        ("/healthz", None),
        ("/metrics", None),
        ("/api-docs/openapi.json", None),
        ("/client/notifyd-client.js", None),
        ("/client/notifyd-bell.js", None),
        ("/api/v1/me/unread-count", Some(token(&u))),
        ("/api/v1/me/messages", Some(token(&u))),
        ("/api/v1/me/changes?since=0", Some(token(&u))),
        ("/api/v1/users/42/presence", Some(SERVICE_KEY.to_string())),
    ] {
        let mut req = app.http.head(format!("{}{}", app.base, path));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("HEAD");
        assert_eq!(r.status(), 200, "HEAD {path}");
        let body = r.bytes().await.expect("body");
        assert!(body.is_empty(), "HEAD {path} sent a body");
    }
    // HEAD goes through authentication like GET.
    let r = app
        .http
        .head(format!("{}/api/v1/me/unread-count", app.base))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(r.status(), 401);
}

/// Sends `request` on a new connection; returns the response's status line, its headers (names
/// lower-cased) and every byte that followed the head within a short wait (a body, or the frames
/// of a WebSocket session).
async fn raw_head(port: u16, request: &str) -> (String, Vec<(String, String)>, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tokio::time::timeout(T, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            other => panic!(
                "no response head ({other:?}): {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    };
    // Whatever comes after the head: nothing is expected, so a short wait tells.
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&got[..end]).to_string();
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, got[end..].to_vec())
}

/// Contract §7: `HEAD /ws`, with or without upgrade headers, is `405` with `Allow: GET` and the
/// error body's headers (a HEAD answer carries no body). It used to be routed as `GET` and so
/// upgraded into a real session (with a valid token), or refused as a bad handshake (400). Any
/// spelling of the path and any token change nothing; `GET /ws` still upgrades, and the other
/// methods on `/ws` say `Allow: GET` too (never `HEAD`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_ws_is_405_with_allow_get_and_never_upgrades() {
    let db = TestDb::new().await;
    let app = app_with_origins(&db, None).await;
    let user = new_user();
    let t = token(&user);
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let mut wrong = vec![];
    for target in [
        format!("/ws?token={t}"),
        format!("/%77s?token={t}"),
        format!("http://x/ws?token={t}"),
        "/ws".to_string(),
        "/ws?token=bad".to_string(),
    ] {
        for (kind, extra) in [("upgrade", upgrade), ("plain", "Connection: close\r\n")] {
            let request = format!("HEAD {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
            let (status, headers, after) = raw_head(app.port, &request).await;
            let get = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            let ok = status.starts_with("HTTP/1.1 405 ")
                && get("allow") == Some("GET")
                && get("content-type").is_some_and(|c| c.starts_with("application/json"))
                && get("upgrade").is_none()
                && after.is_empty();
            if !ok {
                wrong.push(format!(
                    "HEAD {target} ({kind}): {status}, {headers:?}, {} bytes after the head",
                    after.len()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The error body the HEAD answer's headers describe, as GET-less methods get it.
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let r = app
            .http
            .request(method.clone(), format!("{}/ws?token={t}", app.base))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 405, "{method} /ws");
        assert_eq!(header(r.headers(), "allow"), Some("GET"), "{method} /ws");
        assert_eq!(error_code(r).await, "method_not_allowed");
    }
    let mut ws = app.ws(&user, None).await;
    assert_eq!(ws.expect("hello", T).await["type"], "hello");
}

/// Contract §7 (internal surfaces): with `NOTIFYD_SERVICE_BIND` set, `/metrics` and `/readyz`
/// answer only on the service listener, and the public one says `404` with the error body (they
/// were served on both); `/healthz` answers on both. Without a service listener, its one listener
/// serves all three, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_answer_only_on_the_service_listener_when_there_is_one() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), |s| {
        s.service_bind = Some("127.0.0.1:0".into());
    })
    .await;
    let public = app.base.clone();
    let service = format!(
        "http://127.0.0.1:{}",
        app.service_port.expect("a service listener")
    );
    let mut wrong = vec![];
    for path in ["/metrics", "/readyz"] {
        for method in [Method::GET, Method::HEAD, Method::POST] {
            let r = app
                .http
                .request(method.clone(), format!("{public}{path}"))
                .send()
                .await
                .expect("request");
            let status = r.status();
            let json = header(r.headers(), "content-type")
                .is_some_and(|c| c.starts_with("application/json"));
            let code = if method == Method::HEAD {
                None
            } else {
                r.json::<Value>()
                    .await
                    .ok()
                    .map(|b| b["error"]["code"].clone())
            };
            let ok = status == 404
                && json
                && (method == Method::HEAD || code == Some(json!("not_found")));
            if !ok {
                wrong.push(format!(
                    "public {method} {path}: {status}, error code {code:?}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let metrics = app
        .http
        .get(format!("{service}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), 200, "service /metrics");
    // Ready once the node's Redis subscriber has connected.
    eventually(T, "service /readyz answers 200", || async {
        let r = app.http.get(format!("{service}/readyz")).send().await;
        r.ok().filter(|r| r.status() == 200)
    })
    .await;
    for base in [&public, &service] {
        let r = app
            .http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(r.status(), 200, "{base}/healthz");
    }
    app.stop().await;

    // One listener: everything on it.
    let single = spawn_app(&db, Opts::default()).await;
    for path in ["/metrics", "/healthz"] {
        let r = single
            .http
            .get(format!("{}{path}", single.base))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200, "{path} without a service listener");
    }
    eventually(T, "/readyz answers 200", || async {
        let r = single
            .http
            .get(format!("{}/readyz", single.base))
            .send()
            .await;
        r.ok().filter(|r| r.status() == 200)
    })
    .await;
    single.stop().await;
}

/// The WebSocket handshake and CORS compare origins the same way: scheme and host without
/// regard to case (browsers send them lowercase; an operator may not write them so), the port
/// exactly. The handshake used to compare case-sensitively, so `NOTIFYD_ALLOWED_ORIGINS=
/// https://Shop.Example:8443` let CORS through for the shop's pages and refused their sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_and_cors_accept_the_same_origins_ignoring_case() {
    let db = TestDb::new().await;
    let app = app_with_origins(
        &db,
        Some(&["http://app.example", "https://Shop.Example:8443"]),
    )
    .await;
    let u = new_user();
    let url = app.ws_url(&token(&u), None);
    let mut wrong = vec![];
    for (origin, allowed) in [
        ("http://app.example", true),
        ("HTTP://App.EXAMPLE", true),
        ("https://shop.example:8443", true),
        ("HTTPS://SHOP.EXAMPLE:8443", true),
        ("https://shop.example", false),
        ("http://shop.example:8443", false),
        ("http://app.example.evil", false),
        (EVIL_ORIGIN, false),
    ] {
        let ws = match ws_connect_with(&url, &[("Origin", origin)]).await {
            Ok(_) => true,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 403 => false,
            Err(e) => panic!("{origin}: the handshake failed otherwise: {e}"),
        };
        let r = preflight(&app, "/api/v1/me/unread-count", origin, "GET").await;
        let cors =
            r.status() == 204 && header(r.headers(), "access-control-allow-origin") == Some(origin);
        if (ws, cors) != (allowed, allowed) {
            wrong.push(format!(
                "{origin}: expected allowed={allowed}, the WebSocket said {ws}, CORS said {cors}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_bodies_get_413_with_the_error_body_on_every_route() {
    let db = TestDb::new().await;
    let app = spawn_app(
        &db,
        Opts {
            max_body_bytes: Some(256 * 1024),
            ..Default::default()
        },
    )
    .await;
    let u = new_user();
    // Valid JSON, so only its size can be the reason: {"ids": ["xxxx..."]}.
    let big = json!({ "ids": ["x".repeat(2 * 1024 * 1024)] }).to_string();
    let cases = [
        ("/api/v1/me/messages/read", token(&u)),
        ("/api/v1/messages", SERVICE_KEY.to_string()),
        ("/api/v1/topics/product:1/events", SERVICE_KEY.to_string()),
    ];
    for (path, key) in &cases {
        // With Content-Length.
        let r = app
            .http
            .post(format!("{}{}", app.base, path))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status(), 413, "{path} (content-length)");
        assert_eq!(error_code(r).await, "payload_too_large", "{path}");
        // Whatever the content type says.
        let r = app
            .http
            .post(format!("{}{}", app.base, path))
            .bearer_auth(key)
            .header("content-type", "text/plain")
            .body(big.clone())
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status(), 413, "{path} (text/plain)");
        assert_eq!(error_code(r).await, "payload_too_large", "{path}");
        // Chunked, so only counting the bytes can catch it.
        let (status, body) = chunked_post(&app, path, key, big.as_bytes()).await;
        assert!(status.contains(" 413 "), "{path} (chunked): {status}");
        let v: Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(v["error"]["code"], "payload_too_large", "{path} (chunked)");
    }
}

/// A body far larger than the server buffers at once (here ~1 MiB of JSON, padded with
/// whitespace), written by the client in one go, is read to the end and answered, with
/// `Content-Length` and chunked: actix-http reads a request's body one read at a time as its
/// handler asks for it (actix-http patch 5), and reads again after each, never waiting for a
/// client that has already sent everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_sent_in_one_go_is_read_to_the_end() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let message = json!({"to_user": new_user(), "title": "t"}).to_string();
    let body = format!("{}{message}", " ".repeat(1024 * 1024));
    let head = format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SERVICE_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (status, answer) =
        raw_request(&app, [head.as_bytes(), body.as_bytes()].concat().as_slice()).await;
    assert!(
        status.contains(" 201 "),
        "Content-Length: {status} {answer}"
    );
    let (status, answer) =
        chunked_post(&app, "/api/v1/messages", SERVICE_KEY, body.as_bytes()).await;
    assert!(status.contains(" 201 "), "chunked: {status} {answer}");
}

/// A request whose head is larger than one read of the socket (here a 40 KB header), written in
/// one go, is read whole and answered: before a request is known actix-http reads one 8 KiB
/// buffer's worth at a time (actix-http patch 5), and reads on after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_larger_than_one_read_is_answered() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\nConnection: close\r\n\r\n",
        "p".repeat(40 * 1024)
    );
    let (status, body) = raw_request(&app, request.as_bytes()).await;
    assert!(status.contains(" 200 "), "{status} {body}");
}

/// POSTs `body` with `Transfer-Encoding: chunked` over a raw socket; returns the status line and
/// the (de-chunked) body of the answer. The server may answer before the body is sent: write
/// errors are expected then and ignored.
async fn chunked_post(app: &TestApp, path: &str, bearer: &str, body: &[u8]) -> (String, String) {
    let s = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for c in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&out).await;
        wr
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(T, rd.read_to_end(&mut answer)).await;
    writer.abort();
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.lines().next().unwrap_or("").to_string();
    let (head, raw_body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(raw_body)
    } else {
        raw_body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A validly signed token with arbitrary claims.
fn signed(claims: &Value) -> String {
    sign_claims(claims, JWT_SECRET)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn get_with(app: &TestApp, path: &str, bearer: &str) -> reqwest::Response {
    app.http
        .get(format!("{}{}", app.base, path))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("GET")
}

/// The one message every refused token gets: nothing from the JWT library.
const GENERIC_401: &str = "invalid or expired token";

async fn assert_generic_401(r: reqwest::Response, what: &str) {
    assert_eq!(r.status(), 401, "{what}");
    let body: Value = r.json().await.expect("JSON 401 body");
    assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    assert_eq!(body["error"]["message"], GENERIC_401, "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validly_signed_token_with_an_odd_sub_is_a_generic_401_never_a_500() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    for sub in [
        "a\u{0}b",
        "line\nbreak",
        "tab\there",
        " leading",
        "trailing ",
        "bell\u{7}",
        "del\u{7f}",
        "",
        &"x".repeat(129),
    ] {
        let t = signed(&json!({"sub": sub, "exp": now() + 3600}));
        for path in ["/api/v1/me/unread-count", "/api/v1/me/messages"] {
            assert_generic_401(get_with(&app, path, &t).await, &format!("{sub:?} {path}")).await;
        }
        let r = app
            .http
            .post(format!("{}/api/v1/me/messages/read-all", app.base))
            .bearer_auth(&t)
            .send()
            .await
            .expect("POST");
        assert_generic_401(r, &format!("{sub:?} read-all")).await;
        // The WebSocket handshake refuses it too.
        let url = format!("{}/ws?token={t}", app.ws_base);
        match WsClient::connect(&url).await {
            Ok(_) => panic!("{sub:?}: the handshake was accepted"),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{sub:?}")
            }
            Err(e) => panic!("{sub:?}: {e}"),
        }
    }
    // Sanity: the longest allowed sub still works.
    let t = signed(&json!({"sub": "x".repeat(128), "exp": now() + 3600}));
    assert_eq!(
        get_with(&app, "/api/v1/me/unread-count", &t).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbf_is_enforced_and_401_bodies_reveal_nothing_of_the_jwt_library() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let not_yet = signed(&json!({"sub": u, "exp": now() + 3600, "nbf": now() + 600}));
    assert_generic_401(
        get_with(&app, "/api/v1/me/unread-count", &not_yet).await,
        "nbf",
    )
    .await;
    let url = format!("{}/ws?token={not_yet}", app.ws_base);
    assert!(WsClient::connect(&url).await.is_err(), "nbf on /ws");
    let ok_nbf = signed(&json!({"sub": u, "exp": now() + 3600, "nbf": now() - 5}));
    assert_eq!(
        get_with(&app, "/api/v1/me/unread-count", &ok_nbf)
            .await
            .status(),
        200
    );

    let expired = signed(&json!({"sub": u, "exp": now() - 5}));
    let wrong_key = sign_claims(&json!({"sub": u, "exp": now() + 3600}), "another secret");
    let no_exp = signed(&json!({"sub": u}));
    for (what, t) in [
        ("expired", expired.as_str()),
        ("wrong key", wrong_key.as_str()),
        ("no exp", no_exp.as_str()),
        ("garbage", "garbage"),
        ("three dots", "a.b.c"),
    ] {
        assert_generic_401(get_with(&app, "/api/v1/me/unread-count", t).await, what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_takes_only_the_authorization_header_and_the_websocket_takes_both() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let t = token(&u);
    for path in [
        format!("/api/v1/me/unread-count?token={t}"),
        format!("/api/v1/me/messages?token={t}"),
    ] {
        let r = app
            .http
            .get(format!("{}{}", app.base, path))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = app
        .http
        .post(format!(
            "{}/api/v1/me/messages/read-all?token={t}",
            app.base
        ))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 401);

    // /ws: ?token= (browsers) and the header (other clients) both work.
    let mut c = WsClient::connect(&app.ws_url(&t, None))
        .await
        .expect("ws ?token=");
    assert_eq!(c.expect("hello", T).await["user"], u.as_str());
    c.close().await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("{}/ws", app.ws_base),
    )
    .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {t}").parse().expect("header value"),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws with Authorization");
    let mut c = WsClient {
        ws,
        frames: vec![],
        closed: None,
    };
    assert_eq!(c.expect("hello", T).await["user"], u.as_str());
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_to_users_do_not_count_against_the_distinct_limit() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    // 10,000 distinct ids plus 500 repeats: within "up to 10,000 distinct ids".
    let distinct: Vec<String> = (0..10_000).map(|i| format!("d{i}")).collect();
    let mut ids = distinct.clone();
    ids.extend(distinct.iter().take(500).cloned());
    let r = app
        .post_messages(&json!({"to_users": ids, "title": "t"}))
        .await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.expect("json");
    let rows = body["messages"].as_array().expect("messages");
    assert_eq!(rows.len(), 10_000, "one row per distinct id");
    // 10,001 distinct ids are still refused.
    let too_many: Vec<String> = (0..10_001).map(|i| format!("e{i}")).collect();
    let r = app
        .post_messages(&json!({"to_users": too_many, "title": "t"}))
        .await;
    assert_eq!(r.status(), 422);
    assert_eq!(error_code(r).await, "validation_failed");
}

/// Sends raw bytes and returns the status line and the body of the answer.
async fn raw_request(app: &TestApp, bytes: &[u8]) -> (String, String) {
    raw_request_to(app.port, bytes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_values_actix_accepts_but_tokens_cannot_hold_get_the_error_body() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    // Bytes 0x80-0xFF are legal header octets (obs-text): they reach the service, which must
    // answer with the error body.
    let (status, body) = raw_request(
        &app,
        b"GET /api/v1/me/unread-count HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status.contains(" 401 "), "{status}");
    let v: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(v["error"]["code"], "unauthorized");
    let mut post = format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SERVICE_KEY}\r\nIdempotency-Key: "
    )
    .into_bytes();
    post.extend_from_slice(b"\xff\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
    let (status, body) = raw_request(&app, &post).await;
    assert!(status.contains(" 422 "), "{status}");
    let v: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(v["error"]["field"], "Idempotency-Key");
}

/// A connection that opens and never sends its request holds nothing for long: the node closes
/// it (the intake waits 1 s for its first bytes, then the HTTP layer's 5 s request timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_request_is_closed() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    let mut out = Vec::new();
    let closed = tokio::time::timeout(T, s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "still open after {T:?}");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

/// A WebSocket handshake whose request line arrives in pieces (first `GET /w`, the rest later)
/// is still read and answered: here 401, for its missing token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_arrives_in_pieces_is_answered() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    s.write_all(b"GET /w").await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(
        b"s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, s.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
}

/// The node's listener looks at each new connection's first request: a WebSocket handshake
/// (here refused for its token, in any spelling) waits for an intake turn, counted in
/// `notifyd_http_intake_wait_seconds`; REST calls and probes start at once and are not counted.
/// (A real process: the metrics recorder is one per process.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_take_an_intake_turn_and_rest_calls_do_not() {
    let db = TestDb::new().await;
    let port = crate::binary::free_port();
    let env = crate::binary::node_env(&db, port);
    let mut node = crate::binary::Notifyd::start(&["serve"], &env, port);
    node.healthy().await;
    let waited = || async move {
        let (_, metrics) = raw_request_to(
            port,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        crate::binary::sample(&metrics, "notifyd_http_intake_wait_seconds_count").unwrap_or(0.0)
    };
    assert_eq!(waited().await, 0.0, "nothing has taken a turn yet");
    let body = r#"{"to_user":"intake","title":"t"}"#;
    let post = format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SERVICE_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _) = raw_request_to(port, post.as_bytes()).await;
    assert!(status.contains(" 201 "), "{status}");
    raw_request_to(
        port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(waited().await, 0.0, "a REST call and a probe start at once");
    let upgrade = "HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    for (line, answer) in [
        ("GET /ws?token=bad", " 401 "),
        // Not a handshake (405), but its connection was looked at like one.
        ("HEAD /ws?token=bad", " 405 "),
        ("GET http://x/ws?token=bad", " 401 "),
    ] {
        let (status, _) = raw_request_to(port, format!("{line} {upgrade}").as_bytes()).await;
        assert!(status.contains(answer), "{line}: {status}");
    }
    assert_eq!(waited().await, 3.0, "each handshake took a turn");
    node.stop().await;
}

/// Sends raw bytes to a node's port on a new connection; returns the status line and the body.
async fn raw_request_to(port: u16, bytes: &[u8]) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.lines().next().unwrap_or("").to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
