//! Static browser assets: the JS client and its SharedWorker (always) and the demo pages (`serve --dev` only: the bell
//! at `/demo`, the live product page at `/demo/products`), plus the dev-only token endpoint the
//! bell demo logs in with.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::browser;
use crate::api::cors::CorsPolicy;
use crate::api::methods::{get, only, GET};
use crate::auth::jwt::Grants;
use crate::error::ApiError;
use crate::state::AppState;

/// Lifetime of a demo token. The client asks for a fresh one on every (re)connect.
const DEMO_TOKEN_TTL_SECS: i64 = 3600;

/// The JS client, with CORS: a page of another origin imports it as a module, which browsers
/// fetch in CORS mode.
pub fn configure_client(cfg: &mut web::ServiceConfig, cors: &CorsPolicy) {
    cfg.service(browser(
        cors,
        "/client/notifyd-client.js",
        GET,
        get().to(client),
    ))
    .service(browser(
        cors,
        "/client/notifyd-sw.js",
        GET,
        get().to(service_worker),
    ))
    .service(browser(
        cors,
        "/client/notifyd-shared-worker.js",
        GET,
        get().to(shared_worker),
    ))
    .service(browser(
        cors,
        "/client/notifyd-bell.js",
        GET,
        get().to(bell),
    ));
}

/// `<notifyd-bell>` (docs/bell.md): it imports `./notifyd-client.js`, so from here it loads the
/// client next to it, from another origin too (both answer CORS).
async fn bell() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(include_str!("../web/notifyd-bell.js"))
}

/// The Web Push service worker (`docs/push.md`): served here for apps on notifyd's origin and
/// to copy from; `Service-Worker-Allowed: /` lets it control the whole origin from `/client/`.
async fn service_worker() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("Service-Worker-Allowed", "/"))
        .body(include_str!("../web/notifyd-sw.js"))
}

/// `serve --dev` only: the client, the demo page and `GET /demo/token` (no CORS: a page of
/// another origin must not mint tokens).
pub fn configure(cfg: &mut web::ServiceConfig, cors: &CorsPolicy) {
    configure_client(cfg, cors);
    cfg.service(only("/demo", GET).route(get().to(demo)))
        .service(only("/demo/products", GET).route(get().to(products)))
        .service(only("/demo/token", GET).route(get().to(demo_token)));
}

async fn client() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(include_str!("../web/notifyd-client.js"))
}

/// The SharedWorker of `shared: true` clients. An app hosts its own copy (a SharedWorker must be
/// same-origin with the page); this one serves pages on notifyd's origin (the demo, the tests).
async fn shared_worker() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(include_str!("../web/notifyd-shared-worker.js"))
}

async fn demo() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(include_str!("../web/demo.html"))
}

/// The demo shop's catalogue as its backend knows it: (product id, stock, price). The page
/// (web/products.html) names products 1 to 12; these are what they start with.
const DEMO_CATALOGUE: [(u32, i64, f64); 12] = [
    (1, 12, 89.0),
    (2, 4, 129.5),
    (3, 0, 64.0),
    (4, 25, 18.9),
    (5, 9, 34.0),
    (6, 40, 14.5),
    (7, 3, 72.0),
    (8, 7, 149.0),
    (9, 15, 59.9),
    (10, 2, 239.0),
    (11, 30, 24.0),
    (12, 18, 29.5),
];

/// The live product page: an anonymous viewer of `product:*` topics. A shop's backend publishes
/// a product's stock and price (retained) when they change; the demo has no backend, so before
/// the page goes out, every product without a retained value gets its catalogue value. Otherwise
/// a fresh server (or one past `NOTIFYD_TOPIC_RETAIN`) shows "Stock: …" until someone changes it.
async fn products(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    seed_demo_catalogue(&state).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(include_str!("../web/products.html")))
}

/// Publishes a retained `{"stock", "price"}` for each catalogue product that has no unexpired
/// retained value. The SELECT only spares the usual page view any write; each product is then
/// written only if still without a value, in one statement (`topic_event_if_unretained`), so
/// a value a service published meanwhile is never replaced and concurrent first views (on one
/// node or several) publish each product once.
async fn seed_demo_catalogue(state: &AppState) -> Result<(), ApiError> {
    let topics: Vec<String> = DEMO_CATALOGUE
        .iter()
        .map(|(id, _, _)| format!("product:{id}"))
        .collect();
    let retain_until = chrono::Utc::now()
        + chrono::Duration::from_std(state.settings.topic_retain)
            .unwrap_or(chrono::Duration::days(1));
    let published = state
        .db(async |conn| {
            let have = crate::store::topic_retained::get_many(conn, &topics).await?;
            let mut published = 0;
            for ((_, stock, price), topic) in DEMO_CATALOGUE.iter().zip(&topics) {
                if have.iter().any(|r| &r.topic == topic) {
                    continue;
                }
                let data = json!({ "stock": stock, "price": price });
                let ev = crate::inbox::create::topic_event_if_unretained(
                    conn,
                    topic,
                    &data,
                    retain_until,
                )
                .await?;
                published += usize::from(ev.is_some());
            }
            Ok(published)
        })
        .await?;
    if published > 0 {
        state.waker.wake();
    }
    Ok(())
}

#[derive(Deserialize)]
struct TokenQuery {
    user: Option<String>,
}

/// `GET /demo/token?user=42` → `{"token": "<user JWT>"}`, signed with the node's (dev) secret.
/// Registered only with `serve --dev`: anyone who can reach it can act as any user.
async fn demo_token(
    q: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raw = q.user.as_deref().unwrap_or("42");
    let user = crate::model::input::user_id(&Value::String(raw.to_string()), "user")?;
    // The demo user may watch products and groups, post to groups and message anyone.
    let grants = Grants {
        topics: vec!["product:*".into(), "group:*".into()],
        publish: vec!["group:*".into()],
        send_to: vec!["*".into()],
    };
    let token = state.jwt.mint_with(&user, DEMO_TOKEN_TTL_SECS, &grants)?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "token": token, "user": user, "expires_in": DEMO_TOKEN_TTL_SECS })))
}
